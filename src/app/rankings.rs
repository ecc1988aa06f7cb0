//! Users' rankings under a served model: their revisions and ratings read as they are now, the
//! catalogue scored for those waiting together (`Scorer`), the result memoised per (model version,
//! order, user) with the revision it was scored at, carried over to a version about to be served,
//! and scored again when the user's ratings change through this process.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use moka::ops::compute::Op;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::ServiceError;
use super::background::ServingFirst;
use super::scoring::{Job, Scorer};
use super::serving::ServedModel;
use super::user_reads::{ReadError, UserReads};
use crate::metrics::Metrics;
use crate::model::{Order, Ranked, Recommender};
use crate::store::{Store, StoreError, UserRatings};

/// Reads of a kind in flight at once; more requests than this share statements.
const READ_STATEMENTS: usize = 2;

/// Users whose revisions one statement reads at most.
const REVISION_BATCH: usize = 64;

/// Users whose ratings one statement reads at most: a few hundred ratings each.
const RATINGS_BATCH: usize = 16;

/// Entries a ranking to be cached is scored to at least: the first two pages of the default size.
/// Shallow, since the screened top-n pass scores exactly only the items that can reach the list,
/// and every user's first request under a version that was not warmed up is a miss: at the Netflix
/// Prize's size, a service scoring misses 100 deep answered a fifth fewer requests than one
/// scoring 20 deep (see README).
pub const RANKING_DEPTH: usize = 20;

/// The longest a version waits to be served while the rankings cached under the one serving are
/// scored again under it. The one serving answers meanwhile; users not reached by then are scored
/// at their next request, as without the warm-up.
const WARM_UP_TIME: Duration = Duration::from_secs(20);

/// Users being warmed up at once: enough to keep the ratings reads and the scorer's batches full.
const WARM_UP_USERS: usize = 64;

/// Rankings being scored again at once after ratings changed (see `Rankings::refresh`); a change
/// past that leaves the user's ranking to be scored at their next request, so that a burst of
/// writes cannot queue more scoring than the requests themselves would.
const REFRESHES: usize = 64;

/// A user's best items in one order (score desc, item id asc), rated items left out, scored from
/// the ratings at `revision`; `complete` when it holds every candidate rather than only the best
/// ones.
pub(super) struct RankedItems {
    pub revision: i64,
    pub entries: Vec<Ranked>,
    pub complete: bool,
}

pub(super) type Ranking = Arc<RankedItems>;

/// Whose ranking, by what: (model version, order, user id).
pub(super) type RankingSlot = (i64, Order, String);

/// A slot and the user's revision as read at request time.
pub(super) type RankingKey = (RankingSlot, i64);

/// Each slot's latest ranking, which answers a request only at the revision it was scored at. A
/// ranking depends on nothing else, and the database moves the revision with every change to the
/// user's ratings, so a hit answers exactly what scoring the current ratings would. Bounded by
/// bytes.
type RankingCache = moka::sync::Cache<RankingSlot, Ranking>;

/// The order a model ranks by when `asked` (its default order if None): a model that did not
/// learn choice ranks by expected rating whatever is asked.
pub(super) fn served_order(model: &Recommender, asked: Option<Order>) -> Order {
    match model.ranking_weight() {
        Some(_) => asked.unwrap_or_else(|| model.default_order()),
        None => Order::ExpectedRating,
    }
}

/// Handles on the readers, the scorer and the cache; cheap to clone.
#[derive(Clone)]
pub(super) struct Rankings {
    metrics: Arc<Metrics>,
    cache: RankingCache,
    /// Whether rankings are cached: a cached one is scored past the page (see `depth_for`).
    caching: bool,
    revisions: UserReads<i64>,
    ratings: UserReads<UserRatings>,
    scorer: Scorer,
    /// A permit per ranking being refreshed (`REFRESHES`).
    refreshing: Arc<Semaphore>,
    /// The slots being refreshed, each with whether its user's ratings changed again since.
    refreshes: Arc<Mutex<HashMap<RankingSlot, bool>>>,
    /// The scorings in flight, which requests for the same ranking join (see `rank`).
    pending: Arc<Mutex<HashMap<RankingKey, Pending>>>,
    next_scoring: Arc<AtomicU64>,
}

/// A scoring's outcome, for everyone waiting on it.
type Scoring = Shared<BoxFuture<'static, Result<Ranking, String>>>;

/// A scoring in flight: its id, its depth, and its outcome.
type Pending = (u64, usize, Scoring);

impl Rankings {
    /// Starts the readers and the scorer; `cache_bytes` 0 turns the cache off.
    pub fn start(
        store: &Store,
        metrics: Arc<Metrics>,
        serving_first: Arc<ServingFirst>,
        cache_bytes: u64,
    ) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|(_, _, user): &RankingSlot, ranking: &Ranking| {
                (user.len() + 64 + ranking.entries.len() * std::mem::size_of::<Ranked>())
                    .try_into()
                    .unwrap_or(u32::MAX)
            })
            .build();
        Self {
            revisions: reads(
                store,
                &metrics,
                ("revisions", REVISION_BATCH),
                Metrics::observe_revision_batch,
                |store, users| async move { store.user_revisions(&users).await },
            ),
            ratings: reads(
                store,
                &metrics,
                ("ratings", RATINGS_BATCH),
                Metrics::observe_ratings_batch,
                |store, users| async move { store.users_ratings(&users).await },
            ),
            scorer: Scorer::start(metrics.clone(), serving_first),
            refreshing: Arc::new(Semaphore::new(REFRESHES)),
            refreshes: Arc::default(),
            pending: Arc::default(),
            next_scoring: Arc::default(),
            metrics,
            cache,
            caching: cache_bytes > 0,
        }
    }

    pub fn caching(&self) -> bool {
        self.caching
    }

    /// Memory the cache holds, as its weigher counts it (after applying the inserts it has not
    /// yet counted).
    pub fn cache_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// The user's revision as the database has it now.
    pub async fn revision(&self, user_id: &str) -> Result<i64, ReadError> {
        self.revisions.get(user_id).await
    }

    /// The user's revision and ratings as the database has them now.
    pub async fn ratings(&self, user_id: &str) -> Result<UserRatings, ReadError> {
        self.ratings.get(user_id).await
    }

    /// The depth to score a ranking to for entries up to `needed`: just those without a cache
    /// (nothing else would be read); with one, twice as many, at least `RANKING_DEPTH`, so that
    /// the next page of the same size is a hit and paging on doubles the depth (reading n entries
    /// page by page costs O(log n) scorings).
    pub fn depth_for(&self, needed: usize) -> usize {
        match self.caching {
            true => needed.saturating_mul(2).max(RANKING_DEPTH),
            false => needed,
        }
    }

    /// The ranking cached for `key`'s slot at its revision, counted as a hit or a miss.
    pub fn cached(&self, (slot, revision): &RankingKey) -> Option<Ranking> {
        let ranking = self
            .cache
            .get(slot)
            .filter(|ranking| ranking.revision == *revision);
        self.metrics.count_ranking_lookup(ranking.is_some());
        ranking
    }

    /// Scores the catalogue `depth` deep in the key's order for the user's ratings (read at the
    /// key's revision), with whoever else is waiting, and caches the ranking. None if the model
    /// knows none of the rated items.
    ///
    /// A request for a ranking already being scored as deep joins that scoring, and one scored
    /// meanwhile is taken from the cache: the request of a user whose ranking is being refreshed
    /// after a rating (see `refresh`), or a user's requests sent at once, cost one scoring.
    pub async fn rank(
        &self,
        served: Arc<ServedModel>,
        key: RankingKey,
        ratings: &[(String, f64)],
        depth: usize,
    ) -> Result<Option<Ranking>, ServiceError> {
        let Some(job) = job(&served, &key, ratings, depth) else {
            return Ok(None);
        };
        let scoring = {
            let mut pending = self.pending.lock().expect("pending lock");
            match pending.get(&key) {
                Some((_, deep, scoring)) if *deep >= depth => scoring.clone(),
                // A scoring caches its ranking before it leaves `pending`.
                _ if let Some(ranking) = self.cached_as_deep(&key, depth) => {
                    return Ok(Some(ranking));
                }
                _ => {
                    let id = self.next_scoring.fetch_add(1, Ordering::Relaxed);
                    let scoring = self.start_scoring(id, key.clone(), job);
                    // The task takes the lock to leave the map, so it finds itself there.
                    pending
                        .entry(key)
                        .or_insert_with(|| (id, depth, scoring.clone()));
                    scoring
                }
            }
        };
        scoring.await.map(Some).map_err(ServiceError::Task)
    }

    /// Scores `job` as a task of its own, which caches the ranking and leaves `pending` (if it is
    /// there as `id`); a client that gives up does not stop it.
    fn start_scoring(&self, id: u64, key: RankingKey, job: Job) -> Scoring {
        let rankings = self.clone();
        let depth = job.depth;
        let task = async move {
            let entries = rankings.scorer.rank(job).await;
            let ranking = entries.map(|entries| rankings.put(&key, entries, depth));
            let mut pending = rankings.pending.lock().expect("pending lock");
            if pending
                .get(&key)
                .is_some_and(|(pending, ..)| *pending == id)
            {
                pending.remove(&key);
            }
            ranking.map_err(|error| error.to_string())
        };
        tokio::spawn(task.in_current_span())
            .map(|joined| joined.map_err(|error| error.to_string())?)
            .boxed()
            .shared()
    }

    /// The ranking cached for `key` if it holds the first `depth` entries, without counting a
    /// lookup.
    fn cached_as_deep(&self, (slot, revision): &RankingKey, depth: usize) -> Option<Ranking> {
        self.cache.get(slot).filter(|ranking| {
            ranking.revision == *revision && (ranking.complete || ranking.entries.len() >= depth)
        })
    }

    /// Caches a ranking of `key`'s slot scored at its revision, unless one scored at a later
    /// revision is there already: revisions only grow, and of two scorings in flight the one from
    /// older ratings may finish last.
    fn put(&self, (slot, revision): &RankingKey, entries: Vec<Ranked>, depth: usize) -> Ranking {
        let ranking = Arc::new(RankedItems {
            revision: *revision,
            complete: entries.len() < depth,
            entries,
        });
        self.cache
            .entry(slot.clone())
            .and_compute_with(|cached| match cached {
                Some(cached) if cached.value().revision > *revision => Op::Nop,
                _ => Op::Put(ranking.clone()),
            });
        ranking
    }

    /// Before `incoming` is served in place of `outgoing`: ranks under it, as deep as before, the
    /// users whose rankings under `outgoing` are cached, from their ratings as they are now. After a
    /// retrain, a rollback or another process's activation their next lists are then hits, rather
    /// than misses arriving all at once. Stops after `WARM_UP_TIME`.
    pub async fn warm_up(&self, outgoing: &ServedModel, incoming: &Arc<ServedModel>) {
        let started = Instant::now();
        let cached: Vec<(Order, String, usize)> = self
            .cache
            .iter()
            .filter(|(slot, _)| slot.0 == outgoing.version)
            .map(|(slot, ranking)| (slot.1, slot.2.clone(), depth_of(&ranking)))
            .collect();
        if cached.is_empty() {
            return;
        }
        let wanted = cached.len();
        let mut warmed = 0;
        let warming = futures_util::stream::iter(cached)
            .map(|(order, user, depth)| self.rank_again(incoming, order, user, depth))
            .buffer_unordered(WARM_UP_USERS)
            .for_each(|ranked| {
                warmed += usize::from(ranked);
                std::future::ready(())
            });
        let finished = tokio::time::timeout(WARM_UP_TIME, warming).await.is_ok();
        self.metrics.add_rankings_warmed(warmed as u64);
        tracing::info!(
            version = incoming.version,
            warmed,
            wanted,
            finished,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "warmed up the ranking cache for the incoming model"
        );
    }

    /// After `users`' ratings changed through this process: ranks again under `served`, in the
    /// background and as deep as before, the rankings of theirs cached under it, so that a client
    /// who rates and then asks for a list gets a hit rather than a scoring. A slot is refreshed
    /// once at a time, and once more if its user's ratings changed again meanwhile, so that a
    /// burst of ratings costs two scorings, not one each. At most `REFRESHES` at once; the rest
    /// are scored at the user's next request, as without this. Other processes sharing the
    /// database learn of the change from the revision, and score at the next request.
    pub fn refresh(&self, served: Arc<ServedModel>, users: HashSet<&str>) {
        for user in users {
            for order in [Order::Score, Order::ExpectedRating] {
                let slot = (served.version, order, user.to_string());
                let Some(cached) = self.cache.get(&slot) else {
                    continue;
                };
                let permit = {
                    let mut refreshes = self.refreshes.lock().expect("refreshes lock");
                    if let Some(again) = refreshes.get_mut(&slot) {
                        *again = true;
                        continue;
                    }
                    let Ok(permit) = self.refreshing.clone().try_acquire_owned() else {
                        return;
                    };
                    refreshes.insert(slot.clone(), false);
                    permit
                };
                let depth = depth_of(&cached);
                tokio::spawn(
                    self.clone()
                        .refresh_slot(served.clone(), slot, depth, permit),
                );
            }
        }
    }

    /// Ranks the slot again, holding its permit, until no change to its user's ratings was told
    /// during a pass; then leaves `refreshes`.
    async fn refresh_slot(
        self,
        served: Arc<ServedModel>,
        slot: RankingSlot,
        depth: usize,
        _permit: OwnedSemaphorePermit,
    ) {
        let (_, order, ref user) = slot;
        loop {
            if self.rank_again(&served, order, user.clone(), depth).await {
                self.metrics.add_rankings_refreshed(1);
            }
            let mut refreshes = self.refreshes.lock().expect("refreshes lock");
            if !refreshes.insert(slot.clone(), false).unwrap_or(false) {
                refreshes.remove(&slot);
                return;
            }
        }
    }

    /// Ranks the user under `incoming`, as deep as `depth`, from their ratings as they are now;
    /// whether the ranking is now cached.
    async fn rank_again(
        &self,
        incoming: &Arc<ServedModel>,
        order: Order,
        user: String,
        depth: usize,
    ) -> bool {
        let (revision, ratings) = match self.ratings(&user).await {
            Ok(read) => read,
            Err(error) => {
                tracing::debug!(%error, user, "cannot read a user's ratings to rank them again");
                return false;
            }
        };
        let order = served_order(&incoming.recommender, Some(order));
        let key = ((incoming.version, order, user), revision);
        matches!(
            self.rank(incoming.clone(), key, &ratings, depth).await,
            Ok(Some(_))
        )
    }
}

/// The scorer's job for `key`'s ranking from the user's ratings; None if the model knows none of
/// the rated items.
fn job(
    served: &Arc<ServedModel>,
    key: &RankingKey,
    ratings: &[(String, f64)],
    depth: usize,
) -> Option<Job> {
    let model = &served.recommender;
    let ((_, order, user), _) = key;
    let (items, classes) = model.rated(
        ratings
            .iter()
            .map(|(item, value)| (item.as_str(), *value as f32)),
    );
    (!items.is_empty()).then(|| Job {
        user: model.users().get(user),
        model: served.clone(),
        order: *order,
        items,
        classes,
        depth,
    })
}

/// The depth to score a cached ranking to again.
fn depth_of(ranking: &RankedItems) -> usize {
    ranking.entries.len().max(RANKING_DEPTH)
}

/// A reader of users' `what`, up to `max_batch` a statement, each batch's size told to `observe`.
fn reads<T, Fut>(
    store: &Store,
    metrics: &Arc<Metrics>,
    (what, max_batch): (&'static str, usize),
    observe: fn(&Metrics, usize),
    read: fn(Store, Vec<String>) -> Fut,
) -> UserReads<T>
where
    T: Clone + Default + Send + 'static,
    Fut: Future<Output = Result<HashMap<String, T>, StoreError>> + Send + 'static,
{
    let (store, metrics) = (store.clone(), metrics.clone());
    UserReads::start(
        what,
        READ_STATEMENTS,
        max_batch,
        move |users| observe(&metrics, users),
        move |users| read(store.clone(), users),
    )
}
