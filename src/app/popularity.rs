//! The most rated items, for users the model cannot rank for. Counting them is a GROUP BY over
//! every rating: about a millisecond on a small set, 20–30 s at 100 M ratings. So the list is
//! kept, and refreshed by one query at a time: after a write through this instance, or after
//! POPULAR_TTL for writes made elsewhere (another replica, an import). A request that finds the
//! list out of date waits up to REFRESH_WAIT for the new one, which on small data always arrives
//! (so a write shows at once); past that it gets the previous list while the refresh finishes in
//! the background. A count slower than REFRESH_WAIT is run again only once the list is
//! SLOW_COUNT_SPACING times as old as that count took (and at least POPULAR_TTL old without
//! writes), so that neither a steady stream of writes nor the TTL keeps the database counting more
//! than a tenth of the time. The first count starts with the service; only a
//! request that comes before it ends waits for it.

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
/// A slow count runs at most one tenth of the time.
const SLOW_COUNT_SPACING: u32 = 10;

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
    /// How long that query took.
    took: Duration,
    refresh: Option<Refresh>,
}

/// Whether a list counted `age` ago, by a query that took `took`, is still served without a new
/// count, `written` saying whether ratings were written through this instance since.
fn is_current(age: Duration, took: Duration, written: bool) -> bool {
    let spacing = took * SLOW_COUNT_SPACING;
    let throttled = took > REFRESH_WAIT && age < spacing;
    age < POPULAR_TTL.max(spacing) && (!written || throttled)
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
            let written = kept.writes != self.writes.load(Ordering::Relaxed);
            let current = kept
                .at
                .is_some_and(|at| is_current(at.elapsed(), kept.took, written));
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
                kept.took = at.elapsed();
            }
            result
        });
        async move { task.await.map_err(|e| e.to_string())? }
            .boxed()
            .shared()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_count_follows_every_write_and_a_slow_one_is_spaced_out() {
        let ms = Duration::from_millis;
        // A count that takes 2 ms: a write always means a new count.
        assert!(is_current(ms(1), ms(2), false));
        assert!(!is_current(ms(1), ms(2), true));
        assert!(is_current(POPULAR_TTL - ms(1), ms(2), false));
        assert!(!is_current(POPULAR_TTL, ms(2), false));
        // A 20 s count (100 M ratings) is counted again 200 s after it started, writes or not.
        let slow = Duration::from_secs(20);
        assert!(is_current(Duration::from_secs(30), slow, true));
        assert!(is_current(Duration::from_secs(199), slow, false));
        assert!(!is_current(Duration::from_secs(201), slow, true));
        assert!(!is_current(Duration::from_secs(201), slow, false));
        // A 3 s count: recounted 30 s after it started after a write, else at the TTL.
        let medium = Duration::from_secs(3);
        assert!(is_current(Duration::from_secs(29), medium, true));
        assert!(!is_current(Duration::from_secs(31), medium, true));
        assert!(is_current(Duration::from_secs(31), medium, false));
    }
}
