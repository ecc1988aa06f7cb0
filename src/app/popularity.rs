//! The most rated items, for users the model cannot rank for. Counting them is a GROUP BY over
//! every rating: about a millisecond on a small set, 20–30 s at 100 M ratings. So the list is
//! kept, and refreshed by one query at a time: after a write through this instance, or after
//! POPULAR_TTL for writes made elsewhere (another replica, an import). A request that finds the
//! list out of date waits up to REFRESH_WAIT for the new one, which on small data always arrives
//! (so a write shows at once); past that it gets the previous list while the refresh finishes in
//! the background. The first count starts with the service; only a request that comes before it
//! ends waits for it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use super::ServiceError;
use crate::store::{PopularItem, Store};

/// How many of the most rated items are kept, and so listed: pages past them are empty rather
/// than a count over every rating per request.
const KEPT: usize = 10_000;
const POPULAR_TTL: Duration = Duration::from_secs(60);
const REFRESH_WAIT: Duration = Duration::from_millis(50);

type Refresh = Shared<BoxFuture<'static, Result<Arc<[PopularItem]>, String>>>;

pub(super) struct Popularity {
    store: Store,
    /// Bumped by every write through this instance.
    writes: AtomicU64,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    list: Option<Arc<[PopularItem]>>,
    /// `writes` when the query that produced `list` started, and when it started.
    writes: u64,
    at: Option<Instant>,
    refresh: Option<Refresh>,
}

impl Popularity {
    /// Starts counting at once, in the background, so that the first page need not wait for a
    /// count over every rating (which at 100 M outlasts a request's timeout).
    pub fn start(store: Store) -> Arc<Self> {
        let popularity = Arc::new(Self {
            store,
            writes: AtomicU64::new(0),
            kept: Mutex::new(Kept::default()),
        });
        // Under the lock, so that the count cannot finish (and clear `refresh`) before it is set.
        let mut kept = popularity.kept.lock().expect("popularity lock");
        kept.refresh = Some(popularity.start_refresh());
        drop(kept);
        popularity
    }

    /// Marks the kept list out of date.
    pub fn rated(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Items by number of ratings (ties by id), skipping `exclude`, from position `offset`.
    pub async fn page(
        self: &Arc<Self>,
        limit: usize,
        offset: usize,
        exclude: &HashSet<String>,
    ) -> Result<Vec<PopularItem>, ServiceError> {
        let list = self.list().await?;
        Ok(list
            .iter()
            .filter(|p| !exclude.contains(&p.item_id))
            .skip(offset)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn list(self: &Arc<Self>) -> Result<Arc<[PopularItem]>, ServiceError> {
        let (previous, refresh) = {
            let mut kept = self.kept.lock().expect("popularity lock");
            let current = kept.at.is_some_and(|at| at.elapsed() < POPULAR_TTL)
                && kept.writes == self.writes.load(Ordering::Relaxed);
            if let (true, Some(list)) = (current, &kept.list) {
                return Ok(list.clone());
            }
            let refresh = kept
                .refresh
                .get_or_insert_with(|| self.start_refresh())
                .clone();
            (kept.list.clone(), refresh)
        };
        let fresh = match previous {
            Some(previous) => match tokio::time::timeout(REFRESH_WAIT, refresh).await {
                Ok(fresh) => fresh,
                Err(_) => return Ok(previous),
            },
            None => refresh.await,
        };
        fresh.map_err(|e| ServiceError::Task(format!("counting the most rated items: {e}")))
    }

    /// Runs the query in a task of its own, so that it completes (and is kept) even if every
    /// request waiting for it gives up.
    fn start_refresh(self: &Arc<Self>) -> Refresh {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let (writes, at) = (this.writes.load(Ordering::Relaxed), Instant::now());
            let result = this
                .store
                .popular_items(KEPT, 0, &Default::default())
                .await
                .map(Arc::<[PopularItem]>::from)
                .map_err(|e| e.to_string());
            let mut kept = this.kept.lock().expect("popularity lock");
            kept.refresh = None;
            if let Ok(list) = &result {
                kept.list = Some(list.clone());
                kept.writes = writes;
                kept.at = Some(at);
            }
            result
        });
        async move { task.await.map_err(|e| e.to_string())? }
            .boxed()
            .shared()
    }
}
