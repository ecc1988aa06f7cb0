//! Users' rankings under a served model: their revisions and ratings read as they are now, the
//! catalogue scored for those waiting together (`Scorer`), the result memoised per (model version,
//! order, user, revision), and the memo carried over to a version about to be served.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

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

/// A user's best items in one order (score desc, item id asc), rated items left out; `complete`
/// when it holds every candidate rather than only the best ones.
pub(super) struct RankedItems {
    pub entries: Vec<Ranked>,
    pub complete: bool,
}

pub(super) type Ranking = Arc<RankedItems>;

/// (model version, order, user id, the user's revision).
pub(super) type RankingKey = (i64, Order, String, i64);

/// Rankings memoised by (model version, order, user, the user's revision as read at request
/// time). A ranking depends on nothing else, and the database moves the revision with every change
/// to the user's ratings, so a hit answers exactly what scoring the current ratings would. Bounded
/// by bytes.
type RankingCache = moka::sync::Cache<RankingKey, Ranking>;

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
}

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
            .weigher(|(_, _, user, _): &RankingKey, ranking: &Ranking| {
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

    /// The ranking cached under `key`, counted as a hit or a miss.
    pub fn cached(&self, key: &RankingKey) -> Option<Ranking> {
        let ranking = self.cache.get(key);
        self.metrics.count_ranking_lookup(ranking.is_some());
        ranking
    }

    /// Scores the catalogue `depth` deep in the key's order for the user's ratings (read at the
    /// key's revision), with whoever else is waiting, and caches the ranking. None if the model
    /// knows none of the rated items.
    pub async fn rank(
        &self,
        served: Arc<ServedModel>,
        key: RankingKey,
        ratings: &[(String, f64)],
        depth: usize,
    ) -> Result<Option<Ranking>, ServiceError> {
        let model = &served.recommender;
        let (items, classes) = model.rated(
            ratings
                .iter()
                .map(|(item, value)| (item.as_str(), *value as f32)),
        );
        if items.is_empty() {
            return Ok(None);
        }
        let entries = self
            .scorer
            .rank(Job {
                user: model.users().get(&key.2),
                model: served.clone(),
                order: key.1,
                items,
                classes,
                depth,
            })
            .await?;
        let ranking = Arc::new(RankedItems {
            complete: entries.len() < depth,
            entries,
        });
        self.cache.insert(key, ranking.clone());
        Ok(Some(ranking))
    }

    /// Before `incoming` is served in place of `outgoing`: ranks under it, as deep as before, the
    /// users whose rankings under `outgoing` are cached, from their ratings as they are now. After a
    /// retrain, a rollback or another process's activation their next lists are then hits, rather
    /// than misses arriving all at once. Stops after `WARM_UP_TIME`.
    pub async fn warm_up(&self, outgoing: &ServedModel, incoming: &Arc<ServedModel>) {
        let started = Instant::now();
        // Each (order, user) once, at the depth of its newest revision's ranking.
        let mut newest: HashMap<(Order, String), (i64, usize)> = HashMap::new();
        for (key, ranking) in self.cache.iter() {
            let (version, order, ref user, revision) = *key;
            if version != outgoing.version {
                continue;
            }
            let depth = ranking.entries.len().max(RANKING_DEPTH);
            let seen = newest
                .entry((order, user.clone()))
                .or_insert((revision, depth));
            if revision > seen.0 {
                *seen = (revision, depth);
            }
        }
        if newest.is_empty() {
            return;
        }
        let wanted = newest.len();
        let mut warmed = 0;
        let warming = futures_util::stream::iter(newest)
            .map(|((order, user), (_, depth))| self.warm_up_one(incoming, order, user, depth))
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

    /// Whether the user's ranking under `incoming` is now cached.
    async fn warm_up_one(
        &self,
        incoming: &Arc<ServedModel>,
        order: Order,
        user: String,
        depth: usize,
    ) -> bool {
        let (revision, ratings) = match self.ratings(&user).await {
            Ok(read) => read,
            Err(error) => {
                tracing::debug!(%error, user, "cannot read a user's ratings to warm up");
                return false;
            }
        };
        let order = served_order(&incoming.recommender, Some(order));
        let key = (incoming.version, order, user, revision);
        matches!(
            self.rank(incoming.clone(), key, &ratings, depth).await,
            Ok(Some(_))
        )
    }
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
