//! The application layer between HTTP and the store and model: live recommendations from the
//! active model, and training runs that build new model versions in the background and swap them in.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::revisions::{RevisionError, Revisions};
use super::training_request::TrainingRequest;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::model::{Dataset, EpochStats, ModelError, Order, Ranked, Recommender, Scratch, Side};
use crate::model_file::{ModelFile, ModelFileError};
use crate::store::{
    Item, ModelAnnouncements, NewRating, Store, StoreError, TrainingRun, UpsertCounts,
};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A request that breaks a rule; the message names the field and the value.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Revision(#[from] RevisionError),
    #[error("stored model is unreadable: {0}")]
    ModelFile(#[from] ModelFileError),
    #[error("internal task failed: {0}")]
    Task(String),
}

/// A model version being served.
pub struct ServedModel {
    pub version: i64,
    pub recommender: Recommender,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Model,
    Popular,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub item_id: String,
    pub title: Option<String>,
    /// What the list is ordered by: the relevance under `Order::Score`, else the expected rating
    /// (popular items: the number of ratings). f32, as the model computes them, so that JSON
    /// carries the shortest digits that give back the same value.
    pub score: f32,
    pub expected_rating: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecommendationPage {
    pub user_id: String,
    pub model_version: Option<i64>,
    pub source: Source,
    /// The order the list is in; "popularity" for the popular fallback.
    pub order: PageOrder,
    pub items: Vec<Recommendation>,
}

/// The order of a page: one of the model's, or the popular fallback's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PageOrder {
    Score,
    ExpectedRating,
    Popularity,
}

impl From<Order> for PageOrder {
    fn from(order: Order) -> Self {
        match order {
            Order::Score => PageOrder::Score,
            Order::ExpectedRating => PageOrder::ExpectedRating,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SimilarItem {
    pub item_id: String,
    pub title: Option<String>,
    pub similarity: f32,
}

struct ActiveRun {
    id: i64,
    cancel: Arc<AtomicBool>,
}

pub struct Service {
    pub store: Store,
    pub settings: Settings,
    pub metrics: Metrics,
    model: ArcSwapOption<ServedModel>,
    training: Mutex<Option<ActiveRun>>,
    rankings: RankingCache,
    revisions: Revisions,
    /// Titles by item id, kept for TITLE_TTL so that a page of recommendations costs one read of
    /// the database (the user's ratings) rather than two. A PUT /items through this instance
    /// takes effect at once; changes made elsewhere (another replica, an import) within the TTL.
    titles: moka::sync::Cache<String, Option<String>>,
}

/// Revision reads in flight at once; more requests than this share statements.
const REVISION_STATEMENTS: usize = 2;

const TITLE_TTL: Duration = Duration::from_secs(30);
const TITLE_CACHE_ENTRIES: u64 = 1_000_000;

/// A user's best items in one order (score desc, item id asc), rated items left out; `complete`
/// when it holds every candidate rather than the best `RANKING_DEPTH` or more.
struct RankedItems {
    entries: Vec<Ranked>,
    complete: bool,
}

type Ranking = Arc<RankedItems>;

/// (model version, order, user id, the user's revision).
type RankingKey = (i64, Order, String, i64);

/// Rankings memoised by (model version, order, user, the user's revision as read at request
/// time). A ranking depends on nothing else, and the database moves the revision with every change
/// to the user's ratings, so a hit answers exactly what scoring the current ratings would. Bounded
/// by bytes.
type RankingCache = moka::sync::Cache<RankingKey, Ranking>;

/// Entries kept per cached ranking; deeper pages are scored afresh. Small enough that the screened
/// top-n pass pays (it scores exactly only the items that can reach the list).
const RANKING_DEPTH: usize = 100;

thread_local! {
    /// Scoring buffers, reused by each blocking-pool thread from request to request.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

impl Service {
    /// Opens the service on a migrated store: marks runs a stopped process left behind as failed
    /// and loads the active model version, if any.
    pub async fn start(store: Store, settings: Settings) -> Result<Arc<Self>, ServiceError> {
        let abandoned = store.fail_abandoned_runs().await?;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "marked training runs of a previous process as failed"
            );
        }
        let rankings = moka::sync::Cache::builder()
            .max_capacity(settings.ranking_cache_mb * (1 << 20))
            .weigher(|(_, _, user, _): &RankingKey, ranking: &Ranking| {
                (user.len() + 64 + ranking.entries.len() * std::mem::size_of::<Ranked>())
                    .try_into()
                    .unwrap_or(u32::MAX)
            })
            .build();
        let revisions = Revisions::start(store.clone(), REVISION_STATEMENTS);
        let service = Arc::new(Self {
            store,
            revisions,
            settings,
            metrics: Metrics::default(),
            model: ArcSwapOption::empty(),
            training: Mutex::new(None),
            rankings,
            titles: moka::sync::Cache::builder()
                .max_capacity(TITLE_CACHE_ENTRIES)
                .time_to_live(TITLE_TTL)
                .build(),
        });
        // Subscribed before the active model is read, so no activation elsewhere falls between.
        if let Some(announcements) = service.store.model_announcements().await? {
            service.follow_announcements(announcements);
        }
        if let Some((version, blob)) = service.store.active_model().await? {
            match service.install(version, blob).await {
                Ok(()) => tracing::info!(version, "loaded the active model"),
                Err(error) => {
                    tracing::error!(version, %error, "cannot load the active model; serving popular items")
                }
            }
        }
        Ok(service)
    }

    /// Serves whichever model version another process sharing the database activates (a
    /// retrain or a rollback there), re-reading the active version after each announcement.
    fn follow_announcements(self: &Arc<Self>, mut announcements: ModelAnnouncements) {
        let service = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let heard = announcements.next().await;
                let Some(service) = service.upgrade() else {
                    return;
                };
                let followed = match heard {
                    Ok(()) => service.load_active().await,
                    Err(error) => Err(error.into()),
                };
                if let Err(error) = followed {
                    tracing::warn!(%error, "cannot follow the active model; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
    }

    /// Installs the active version unless it is already served.
    async fn load_active(&self) -> Result<(), ServiceError> {
        let Some(version) = self.store.active_version().await? else {
            return Ok(());
        };
        if self.model().is_some_and(|served| served.version == version) {
            return Ok(());
        }
        self.install_stored(version).await?;
        tracing::info!(version, "now serving the model another process activated");
        Ok(())
    }

    pub fn model(&self) -> Option<Arc<ServedModel>> {
        self.model.load_full()
    }

    /// Reads a stored model version and installs it.
    async fn install_stored(&self, version: i64) -> Result<(), ServiceError> {
        let blob = self
            .store
            .model_blob(version)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no model version {version}")))?;
        self.install(version, blob).await
    }

    /// Decodes a model blob off the async threads and swaps it in; requests already running keep
    /// the model they started with.
    async fn install(&self, version: i64, blob: Vec<u8>) -> Result<(), ServiceError> {
        let file = tokio::task::spawn_blocking(move || ModelFile::from_bytes(&blob))
            .await
            .map_err(|e| ServiceError::Task(e.to_string()))??;
        self.model.store(Some(Arc::new(ServedModel {
            version,
            recommender: file.recommender,
        })));
        self.metrics.set_model_version(version);
        Ok(())
    }

    pub async fn post_ratings(
        &self,
        ratings: Vec<NewRating>,
    ) -> Result<UpsertCounts, ServiceError> {
        let counts = self.store.upsert_ratings(&ratings).await?;
        self.metrics
            .add_ratings_written(counts.inserted + counts.updated);
        Ok(counts)
    }

    /// Titles of the given items, from the cache where it has them.
    async fn titles(&self, ids: &[&str]) -> Result<HashMap<String, String>, ServiceError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for &id in ids {
            match self.titles.get(id) {
                Some(Some(title)) => {
                    found.insert(id.to_string(), title);
                }
                Some(None) => {}
                None => missing.push(id),
            }
        }
        if !missing.is_empty() {
            let mut fetched = self.store.titles(&missing).await?;
            for id in missing {
                let title = fetched.remove(id);
                self.titles.insert(id.to_string(), title.clone());
                if let Some(title) = title {
                    found.insert(id.to_string(), title);
                }
            }
        }
        Ok(found)
    }

    /// Creates or replaces an item; true if it was created.
    pub async fn put_item(&self, item: &Item) -> Result<bool, ServiceError> {
        let created = self.store.put_item(item).await?;
        self.titles.invalidate(&item.item_id);
        Ok(created)
    }

    /// The user's top unrated items under the active model in `order` (the model's default order
    /// if None), from the user's ratings as they are in the store now; the most popular items
    /// when there is no model or the model knows none of the user's items.
    pub async fn recommendations(
        &self,
        user_id: &str,
        order: Option<Order>,
        limit: usize,
        offset: usize,
        exclude: HashSet<String>,
    ) -> Result<RecommendationPage, ServiceError> {
        let model = self.model();
        let mut ordered = None;
        let mut ratings = None;
        if let Some(served) = &model {
            let mut scored;
            let order = order.unwrap_or_else(|| served.recommender.default_order());
            // A model that did not learn choice ranks by expected rating whatever is asked.
            let order = match served.recommender.ranking_weight {
                Some(_) => order,
                None => Order::ExpectedRating,
            };
            // One indexed read tells whether a ranking computed earlier still matches the user's
            // ratings; only when it does not are they read and the catalogue scored.
            let revision = self.revisions.get(user_id).await?;
            let key = (served.version, order, user_id.to_string(), revision);
            scored = self.cached_page(served, key, limit, offset, &exclude);
            if scored.is_none() {
                let (revision, read) = self.store.user_ratings(user_id).await?;
                let key = (served.version, order, user_id.to_string(), revision);
                scored = self
                    .score(served.clone(), key, &read, limit, offset, &exclude)
                    .await?;
                ratings = Some(read);
            }
            ordered = scored.take().map(|items| (order, items));
        }
        let (source, order, mut items) = match ordered {
            Some((order, items)) => (Source::Model, PageOrder::from(order), items),
            None => {
                let ratings = match ratings {
                    Some(ratings) => ratings,
                    None => self.store.user_ratings(user_id).await?.1,
                };
                let mut skip = exclude;
                skip.extend(ratings.into_iter().map(|(item, _)| item));
                let popular = self.store.popular_items(limit, offset, &skip).await?;
                let items = popular
                    .into_iter()
                    .map(|p| Recommendation {
                        item_id: p.item_id,
                        title: None,
                        score: p.ratings as f32,
                        expected_rating: p.mean_rating as f32,
                    })
                    .collect();
                (Source::Popular, PageOrder::Popularity, items)
            }
        };
        let ids: Vec<&str> = items.iter().map(|r| r.item_id.as_str()).collect();
        let titles = self.titles(&ids).await?;
        for item in &mut items {
            item.title = titles.get(&item.item_id).cloned();
        }
        Ok(RecommendationPage {
            user_id: user_id.to_string(),
            model_version: model.map(|m| m.version),
            source,
            order,
            items,
        })
    }

    /// The items most like `item_id`: the list of a user whose one rating is its top rating.
    pub async fn similar_items(
        &self,
        item_id: &str,
        limit: usize,
    ) -> Result<Vec<SimilarItem>, ServiceError> {
        let Some(served) = self.model() else {
            return Err(ServiceError::NotFound(
                "no model has been trained yet".to_string(),
            ));
        };
        let Some(index) = served.recommender.items.get(item_id) else {
            return Err(ServiceError::NotFound(format!(
                "item {item_id:?} is not in the active model"
            )));
        };
        let model = served.clone();
        let similar = tokio::task::spawn_blocking(move || {
            model
                .recommender
                .similar_items(index, limit)
                .into_iter()
                .map(|(i, similarity)| (model.recommender.items.id(i).to_string(), similarity))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ServiceError::Task(e.to_string()))?;
        let ids: Vec<&str> = similar.iter().map(|(id, _)| id.as_str()).collect();
        let titles = self.titles(&ids).await?;
        Ok(similar
            .into_iter()
            .map(|(item_id, similarity)| SimilarItem {
                title: titles.get(&item_id).cloned(),
                item_id,
                similarity,
            })
            .collect())
    }

    /// Starts a training run in the background with `overrides` over the server's training
    /// defaults; invalid if the result breaks a rule, a conflict while another run is going.
    pub async fn start_retrain(
        self: &Arc<Self>,
        overrides: TrainingRequest,
    ) -> Result<i64, ServiceError> {
        let request = self.settings.training.overlay(&overrides);
        request
            .check()
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut active = self.training.lock().expect("training lock");
            if let Some(run) = active.as_ref() {
                return Err(ServiceError::Conflict(format!(
                    "training run {} is still going",
                    run.id
                )));
            }
            // Claim the slot before the first await so two requests cannot both start a run.
            *active = Some(ActiveRun {
                id: 0,
                cancel: cancel.clone(),
            });
        }
        let release = |error: ServiceError| {
            *self.training.lock().expect("training lock") = None;
            Err(error)
        };
        // Processes sharing a PostgreSQL database train one at a time.
        let lock = match self.store.try_training_lock().await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                return release(ServiceError::Conflict(
                    "another process sharing the database is training".to_string(),
                ));
            }
            Err(error) => return release(error.into()),
        };
        let run_id = match self.store.create_run(&json!(request)).await {
            Ok(id) => id,
            Err(error) => return release(error.into()),
        };
        if let Some(run) = self.training.lock().expect("training lock").as_mut() {
            run.id = run_id;
        }
        let service = self.clone();
        tokio::spawn(async move {
            let outcome = service.train(run_id, request, cancel).await;
            if let Err(error) = &outcome {
                tracing::error!(run_id, %error, "training run failed");
            }
            *service.training.lock().expect("training lock") = None;
            drop(lock);
            service.metrics.set_training_progress(0, 0);
        });
        Ok(run_id)
    }

    /// Asks a running training run to stop at the end of its current epoch.
    pub async fn cancel_run(&self, run_id: i64) -> Result<TrainingRun, ServiceError> {
        let run = self
            .store
            .run(run_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no training run {run_id}")))?;
        let active = self.training.lock().expect("training lock");
        match active.as_ref() {
            Some(active) if active.id == run_id => {
                active.cancel.store(true, Ordering::Relaxed);
                Ok(run)
            }
            _ => Err(ServiceError::Conflict(format!(
                "training run {run_id} is {} and cannot be cancelled",
                run.status
            ))),
        }
    }

    /// Makes a stored model version the active one (also a rollback).
    pub async fn activate(&self, version: i64) -> Result<(), ServiceError> {
        self.install_stored(version).await?;
        self.store.activate_model(version).await?;
        self.announce(version).await;
        tracing::info!(version, "activated model");
        Ok(())
    }

    async fn train(
        &self,
        run_id: i64,
        request: TrainingRequest,
        cancel: Arc<AtomicBool>,
    ) -> Result<(), ServiceError> {
        let progress = Arc::new(Mutex::new(Progress::default()));
        self.store
            .update_run(run_id, "running", &json!({}), None, None)
            .await?;
        let outcome = self
            .train_model(run_id, request, cancel, progress.clone())
            .await;
        let progress = progress.lock().expect("progress lock").to_json();
        match outcome {
            Ok(version) => {
                self.store
                    .update_run(run_id, "succeeded", &progress, None, Some(version))
                    .await?;
                tracing::info!(run_id, version, "training run succeeded; new model active");
            }
            Err(TrainError::Cancelled) => {
                self.store
                    .update_run(run_id, "cancelled", &progress, None, None)
                    .await?
            }
            Err(TrainError::Failed(message)) => {
                self.store
                    .update_run(run_id, "failed", &progress, Some(&message), None)
                    .await?;
                tracing::warn!(run_id, %message, "training run failed");
            }
        }
        Ok(())
    }

    /// Snapshot → train on the blocking pool (progress streamed to the run record) → store the
    /// model version → swap it in.
    async fn train_model(
        &self,
        run_id: i64,
        request: TrainingRequest,
        cancel: Arc<AtomicBool>,
        progress: Arc<Mutex<Progress>>,
    ) -> Result<i64, TrainError> {
        let rows = self.store.all_ratings().await.map_err(TrainError::failed)?;
        let scale = self.settings.scale;
        // Hashing every id into the data set's maps is CPU work proportional to the ratings.
        let data = tokio::task::spawn_blocking(move || {
            Dataset::from_rows(
                scale,
                rows.iter()
                    .map(|(u, i, r)| (u.as_str(), i.as_str(), *r as f32)),
            )
        })
        .await
        .map_err(TrainError::failed)?
        .map_err(TrainError::failed)?;
        if data.ratings.is_empty() {
            return Err(TrainError::Failed(
                "there are no ratings to train on".to_string(),
            ));
        }
        let config = request
            .config(data.ratings.len(), data.users.len())
            .map_err(TrainError::failed)?;
        let (sender, mut receiver) = mpsc::unbounded_channel::<(Side, EpochStats)>();
        let trainer = tokio::task::spawn_blocking({
            let config = config.clone();
            move || {
                let trained = Recommender::train(&data, &config, |side, stats| {
                    let _ = sender.send((side, stats.clone()));
                    if cancel.load(Ordering::Relaxed) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })?;
                let metrics = json!({
                    "valid_rmse": trained.valid_rmse,
                    "best_epoch": trained.user_fit.best_epoch,
                    "n_train": data.ratings.len(),
                    "users": data.users.len(),
                    "items": data.items.len(),
                });
                let file = ModelFile {
                    recommender: trained.recommender,
                    config,
                    metrics: metrics.clone(),
                };
                let blob = file.to_bytes().map_err(|e| ModelError::InvalidParameter {
                    name: "model",
                    value: e.to_string(),
                    rule: "must serialise",
                })?;
                Ok::<_, ModelError>((file.recommender, metrics, blob))
            }
        });
        while let Some((side, stats)) = receiver.recv().await {
            let snapshot = {
                let mut progress = progress.lock().expect("progress lock");
                progress.record(side, &stats);
                progress.to_json()
            };
            self.metrics
                .set_training_progress(stats.epoch, stats.epochs);
            if let Err(error) = self
                .store
                .update_run(run_id, "running", &snapshot, None, None)
                .await
            {
                tracing::warn!(run_id, %error, "cannot record training progress");
            }
        }
        let (recommender, metrics, blob) = match trainer.await {
            Ok(Ok(done)) => done,
            Ok(Err(ModelError::Cancelled)) => return Err(TrainError::Cancelled),
            Ok(Err(error)) => return Err(TrainError::failed(error)),
            Err(join) => {
                return Err(TrainError::Failed(format!(
                    "training thread failed: {join}"
                )));
            }
        };
        let params = json!(config);
        let version = self
            .store
            .insert_model(&params, &metrics, blob)
            .await
            .map_err(TrainError::failed)?;
        self.store
            .activate_model(version)
            .await
            .map_err(TrainError::failed)?;
        self.model.store(Some(Arc::new(ServedModel {
            version,
            recommender,
        })));
        self.metrics.set_model_version(version);
        self.announce(version).await;
        Ok(version)
    }

    /// Tells the other processes sharing the database to serve `version`, which is active
    /// already; if that fails they still load it when they start.
    async fn announce(&self, version: i64) {
        if let Err(error) = self.store.announce_model(version).await {
            tracing::warn!(version, %error, "cannot announce the active model to other processes");
        }
    }

    /// Retrains every `every`, skipping a tick while a run is going.
    pub fn spawn_periodic_retraining(self: &Arc<Self>, every: std::time::Duration) {
        let service = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                match service.start_retrain(TrainingRequest::default()).await {
                    Ok(run_id) => tracing::info!(run_id, "started periodic retraining"),
                    Err(error) => tracing::info!(%error, "skipped periodic retraining"),
                }
            }
        });
    }
}

enum TrainError {
    Cancelled,
    Failed(String),
}

impl TrainError {
    fn failed(error: impl std::fmt::Display) -> Self {
        Self::Failed(error.to_string())
    }
}

/// Per-epoch history of a run, as stored in its `progress`.
#[derive(Default)]
struct Progress {
    side: Option<Side>,
    epoch: usize,
    epochs: usize,
    user: Vec<serde_json::Value>,
    item: Vec<serde_json::Value>,
}

impl Progress {
    fn record(&mut self, side: Side, stats: &EpochStats) {
        self.side = Some(side);
        self.epoch = stats.epoch;
        self.epochs = stats.epochs;
        let entry = json!({"epoch": stats.epoch, "train_rmse": stats.train_rmse, "valid_rmse": stats.valid_rmse});
        match side {
            Side::User => self.user.push(entry),
            Side::Item => self.item.push(entry),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({"rbm": self.side, "epoch": self.epoch, "epochs": self.epochs, "user": self.user, "item": self.item})
    }
}

impl Service {
    /// The page from the ranking cached for this (model, user, revision), if it is deep enough.
    fn cached_page(
        &self,
        served: &ServedModel,
        key: RankingKey,
        limit: usize,
        offset: usize,
        exclude: &HashSet<String>,
    ) -> Option<Vec<Recommendation>> {
        let ranking = self.rankings.get(&key);
        self.metrics.count_ranking_lookup(ranking.is_some());
        let ranking = ranking?;
        let excluded = excluded_indices(&served.recommender, exclude);
        (ranking.complete || offset + limit + excluded.len() <= ranking.entries.len())
            .then(|| page(&served.recommender, &ranking, &excluded, limit, offset))
    }

    /// Scores the catalogue in the key's order for the user's ratings (read at the key's
    /// revision) on the blocking pool, caches the ranking and returns the page. None if the model
    /// knows none of the rated items.
    async fn score(
        &self,
        served: Arc<ServedModel>,
        key: RankingKey,
        ratings: &[(String, f64)],
        limit: usize,
        offset: usize,
        exclude: &HashSet<String>,
    ) -> Result<Option<Vec<Recommendation>>, ServiceError> {
        let model = &served.recommender;
        let mut rated: Vec<(u32, u8)> = ratings
            .iter()
            .filter_map(|(item, value)| {
                let index = model.items.get(item)?;
                model
                    .scale
                    .class_of(*value as f32)
                    .ok()
                    .map(|class| (index, class))
            })
            .collect();
        if rated.is_empty() {
            return Ok(None);
        }
        rated.sort_unstable();
        let excluded = excluded_indices(model, exclude);
        let depth = RANKING_DEPTH.max(offset + limit + excluded.len());
        let user = model.users.get(&key.2);
        let scoring = served.clone();
        let order = key.1;
        let entries = tokio::task::spawn_blocking(move || {
            rank(&scoring.recommender, order, user, &rated, depth)
        })
        .await
        .map_err(|e| ServiceError::Task(e.to_string()))?;
        let ranking = Arc::new(RankedItems {
            complete: entries.len() < depth,
            entries,
        });
        self.rankings.insert(key, ranking.clone());
        Ok(Some(page(model, &ranking, &excluded, limit, offset)))
    }
}

fn excluded_indices(model: &Recommender, exclude: &HashSet<String>) -> HashSet<u32> {
    exclude
        .iter()
        .filter_map(|id| model.items.get(id))
        .collect()
}

/// Entries `offset..offset + limit` of a ranking once `excluded` items are dropped.
fn page(
    model: &Recommender,
    ranking: &RankedItems,
    excluded: &HashSet<u32>,
    limit: usize,
    offset: usize,
) -> Vec<Recommendation> {
    ranking
        .entries
        .iter()
        .filter(|r| !excluded.contains(&r.item))
        .skip(offset)
        .take(limit)
        .map(|r| Recommendation {
            item_id: model.items.id(r.item).to_string(),
            title: None,
            score: r.score,
            expected_rating: r.expected_rating,
        })
        .collect()
}

/// Scores every item for a user with these ratings and returns the best `depth`, best first, ties
/// by item id, rated items left out.
fn rank(
    model: &Recommender,
    order: Order,
    user: Option<u32>,
    rated: &[(u32, u8)],
    depth: usize,
) -> Vec<Ranked> {
    let (items, classes): (Vec<u32>, Vec<u8>) = rated.iter().copied().unzip();
    SCRATCH.with(|scratch| {
        model.top_n(
            order,
            user,
            &items,
            &classes,
            depth,
            |a, b| model.items.id(a).cmp(model.items.id(b)),
            &mut scratch.borrow_mut(),
        )
    })
}
