//! The application layer, one module per use case, each owning its state: serving the active
//! model, users' rankings under it (read, scored, cached, warmed up for the next version, and
//! scored again when the user's ratings change), recommendations from them, the catalogue of
//! ratings and items, and training runs. The HTTP handlers and the CLI talk to these; only they
//! talk to the store.

mod background;
mod batching;
mod catalogue;
mod popularity;
mod rankings;
mod recommendations;
mod scoring;
mod serving;
mod training;
mod training_request;
pub mod user_reads;

use std::sync::Arc;

use serde::Serialize;

pub use catalogue::Catalogue;
pub use rankings::RANKING_DEPTH;
pub use recommendations::{
    Because, ListSource, MAX_EXPLAINED, PageOrder, PageRequest, Recommendation, RecommendationPage,
    Recommendations, SimilarItem,
};
pub use serving::{ServedModel, Serving};
pub use training::Training;
pub use training_request::{ModelKind, TrainingRequest};
pub use user_reads::ReadError;

use crate::metrics::Metrics;
use crate::model::RatingScale;
use crate::model_file::ModelFileError;
use crate::store::{Backend, Store, StoreError};
use background::ServingFirst;
use rankings::Rankings;

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
    Read(#[from] ReadError),
    #[error("stored model is unreadable: {0}")]
    ModelFile(#[from] ModelFileError),
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Starts CPU-bound work on tokio's blocking pool inside the caller's span, so that what it logs
/// carries the request's (or the training run's) fields.
fn spawn_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
}

/// What the application needs to know beyond its store.
#[derive(Debug, Clone)]
pub struct Options {
    /// The scale every rating is on.
    pub scale: RatingScale,
    /// Training defaults; a retrain request's fields override them.
    pub training: TrainingRequest,
    /// Memory for rankings memoised per (model, user, ratings); 0 turns the cache off.
    pub ranking_cache_bytes: u64,
    /// The most a training run may take, by `TrainConfig::memory_estimate`.
    pub training_memory_bytes: u64,
}

/// How long a shutdown waits for a training run to stop and be recorded: cancelling takes
/// moments, so this is a bound, well inside the 30 s a container runtime gives before SIGKILL.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The running application: its use cases over one store.
pub struct Service {
    store: Store,
    metrics: Arc<Metrics>,
    serving: Arc<Serving>,
    catalogue: Arc<Catalogue>,
    recommendations: Recommendations,
    training: Arc<Training>,
}

/// Whether the service can answer: the database reached, and the model it serves.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub status: &'static str,
    pub database: Backend,
    pub model_loaded: bool,
    pub model_version: Option<i64>,
}

impl Service {
    /// Opens the service on a migrated store: marks runs a stopped process left behind as failed
    /// and loads the active model version, if any.
    pub async fn start(store: Store, options: Options) -> Result<Arc<Self>, ServiceError> {
        let metrics = Arc::new(Metrics::default());
        let serving_first = Arc::new(ServingFirst::default());
        let rankings = Rankings::start(
            &store,
            metrics.clone(),
            serving_first.clone(),
            options.ranking_cache_bytes,
        );
        let serving = Serving::start(store.clone(), metrics.clone(), rankings.clone()).await?;
        let training = Training::start(
            store.clone(),
            metrics.clone(),
            serving.clone(),
            serving_first,
            options.scale,
            options.training,
            options.training_memory_bytes,
        )
        .await?;
        let catalogue = Arc::new(Catalogue::new(
            store.clone(),
            metrics.clone(),
            options.scale,
            serving.clone(),
        ));
        let recommendations = Recommendations::new(serving.clone(), catalogue.clone(), rankings);
        Ok(Arc::new(Self {
            store,
            metrics,
            serving,
            catalogue,
            recommendations,
            training,
        }))
    }

    pub fn serving(&self) -> &Arc<Serving> {
        &self.serving
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    pub fn recommendations(&self) -> &Recommendations {
        &self.recommendations
    }

    pub fn training(&self) -> &Arc<Training> {
        &self.training
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics in the OpenMetrics text format, with the gauges read at scrape time brought up
    /// to date.
    pub fn metrics_text(&self) -> String {
        self.metrics
            .set_ranking_cache_bytes(self.recommendations.cache_bytes());
        self.metrics.render()
    }

    /// Unavailable when the database does not answer.
    pub async fn readiness(&self) -> Result<Readiness, StoreError> {
        self.store.ping().await?;
        let model = self.serving.current();
        Ok(Readiness {
            status: "ready",
            database: self.store.backend(),
            model_loaded: model.is_some(),
            model_version: model.map(|m| m.version),
        })
    }

    /// Closes the store's connections once requests are done.
    /// Cancels a training run that is going (recorded as cancelled, within `SHUTDOWN_GRACE`),
    /// then closes the database.
    pub async fn close(&self) {
        self.training.shutdown(SHUTDOWN_GRACE).await;
        self.store.close().await;
    }
}
