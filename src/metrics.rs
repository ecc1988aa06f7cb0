//! Prometheus metrics, one registry per service (so that services in one process, as in the
//! tests, count apart), rendered in the OpenMetrics text format by `prometheus-client`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::model::{EpochStats, Side};

/// The content type of `render`'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Upper bounds of the users-per-statement buckets of revision reads (at most 64 per statement).
const BATCH_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Labels of a request: static strings, so that counting one allocates nothing.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    /// The route's pattern (`/users/{id}/recommendations`), or "unmatched".
    pub route: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RbmLabels {
    rbm: &'static str,
}

type F64Gauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
    ratings_written: Counter,
    model_version: Gauge,
    model_bytes: Gauge,
    training_epoch: Gauge,
    training_epochs: Gauge,
    training_train_rmse: Family<RbmLabels, F64Gauge>,
    training_valid_rmse: Family<RbmLabels, F64Gauge>,
    ranking_cache_hits: Counter,
    ranking_cache_misses: Counter,
    ranking_cache_bytes: Gauge,
    rankings_warmed: Counter,
    rankings_refreshed: Counter,
    revision_batch_users: Histogram,
    ratings_batch_users: Histogram,
    scoring_batch_users: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self {
            registry: Registry::default(),
            requests: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            ratings_written: Counter::default(),
            model_version: Gauge::default(),
            model_bytes: Gauge::default(),
            training_epoch: Gauge::default(),
            training_epochs: Gauge::default(),
            training_train_rmse: Family::default(),
            training_valid_rmse: Family::default(),
            ranking_cache_hits: Counter::default(),
            ranking_cache_misses: Counter::default(),
            ranking_cache_bytes: Gauge::default(),
            rankings_warmed: Counter::default(),
            rankings_refreshed: Counter::default(),
            revision_batch_users: Histogram::new(BATCH_BUCKETS),
            ratings_batch_users: Histogram::new(BATCH_BUCKETS),
            scoring_batch_users: Histogram::new(BATCH_BUCKETS),
        };
        let mut registry = Registry::default();
        registry.register(
            "http_request_duration_seconds",
            "Request latency by method, route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "ratings_written",
            "Ratings inserted or updated through the API",
            metrics.ratings_written.clone(),
        );
        registry.register(
            "model_active_version",
            "Version of the model being served (0: none)",
            metrics.model_version.clone(),
        );
        registry.register(
            "model_bytes",
            "Size of the served model version as stored",
            metrics.model_bytes.clone(),
        );
        registry.register(
            "training_epoch",
            "Epoch of the running training run (0: none running)",
            metrics.training_epoch.clone(),
        );
        registry.register(
            "training_epochs",
            "Epochs planned for the running training run",
            metrics.training_epochs.clone(),
        );
        registry.register(
            "training_train_rmse",
            "Training RMSE of the last epoch, per RBM",
            metrics.training_train_rmse.clone(),
        );
        registry.register(
            "training_valid_rmse",
            "Validation RMSE of the last epoch, per RBM",
            metrics.training_valid_rmse.clone(),
        );
        registry.register(
            "ranking_cache_hits",
            "Recommendations served from a cached ranking",
            metrics.ranking_cache_hits.clone(),
        );
        registry.register(
            "ranking_cache_misses",
            "Recommendations that scored the catalogue",
            metrics.ranking_cache_misses.clone(),
        );
        registry.register(
            "ranking_cache_bytes",
            "Memory held by cached rankings, as the cache weighs it",
            metrics.ranking_cache_bytes.clone(),
        );
        registry.register(
            "rankings_warmed",
            "Rankings scored for a model version before it was served, from those cached under the one before",
            metrics.rankings_warmed.clone(),
        );
        registry.register(
            "rankings_refreshed",
            "Cached rankings scored again after the user's ratings changed through this process",
            metrics.rankings_refreshed.clone(),
        );
        registry.register(
            "revision_batch_users",
            "Users whose revisions one database statement read",
            metrics.revision_batch_users.clone(),
        );
        registry.register(
            "ratings_batch_users",
            "Users whose ratings one database statement read",
            metrics.ratings_batch_users.clone(),
        );
        registry.register(
            "scoring_batch_users",
            "Users whose uncached rankings one pass over the model's weights scored",
            metrics.scoring_batch_users.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    pub fn observe(&self, labels: &RequestLabels, elapsed: Duration) {
        self.requests
            .get_or_create(labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn add_ratings_written(&self, n: u64) {
        self.ratings_written.inc_by(n);
    }

    pub fn set_model(&self, version: i64, bytes: usize) {
        self.model_version.set(version);
        self.model_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn count_ranking_lookup(&self, hit: bool) {
        if hit {
            self.ranking_cache_hits.inc();
        } else {
            self.ranking_cache_misses.inc();
        }
    }

    pub fn set_ranking_cache_bytes(&self, bytes: u64) {
        self.ranking_cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn add_rankings_warmed(&self, n: u64) {
        self.rankings_warmed.inc_by(n);
    }

    pub fn add_rankings_refreshed(&self, n: u64) {
        self.rankings_refreshed.inc_by(n);
    }

    pub fn observe_revision_batch(&self, users: usize) {
        self.revision_batch_users.observe(users as f64);
    }

    pub fn observe_ratings_batch(&self, users: usize) {
        self.ratings_batch_users.observe(users as f64);
    }

    pub fn observe_scoring_batch(&self, users: usize) {
        self.scoring_batch_users.observe(users as f64);
    }

    /// Records a finished epoch of the running training run.
    pub fn record_epoch(&self, side: Side, stats: &EpochStats) {
        self.training_epoch.set(stats.epoch as i64);
        self.training_epochs.set(stats.epochs as i64);
        let labels = RbmLabels {
            rbm: match side {
                Side::User => "user",
                Side::Item => "item",
            },
        };
        self.training_train_rmse
            .get_or_create(&labels)
            .set(stats.train_rmse);
        if let Some(valid) = stats.valid_rmse {
            self.training_valid_rmse.get_or_create(&labels).set(valid);
        }
    }

    /// No run is going.
    pub fn training_stopped(&self) {
        self.training_epoch.set(0);
        self.training_epochs.set(0);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// This process's peak resident memory so far, in MiB (Linux's VmHWM); None where /proc does
/// not tell. Commands that handle data of any size report it, to plan capacity by.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
