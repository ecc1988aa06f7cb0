//! Prometheus metrics: request latency histograms per route, ratings written, the active model
//! version and training progress, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    /// (method, route, status) → latency histogram.
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    ratings_written: AtomicU64,
    model_version: AtomicI64,
    training_epoch: AtomicU64,
    training_epochs: AtomicU64,
    ranking_cache_hits: AtomicU64,
    ranking_cache_misses: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut requests = self.requests.lock().expect("metrics lock");
        let histogram = requests
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        for (count, bound) in histogram.counts.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    pub fn add_ratings_written(&self, n: u64) {
        self.ratings_written.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_model_version(&self, version: i64) {
        self.model_version.store(version, Ordering::Relaxed);
    }

    pub fn count_ranking_lookup(&self, hit: bool) {
        let counter = if hit {
            &self.ranking_cache_hits
        } else {
            &self.ranking_cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_training_progress(&self, epoch: usize, epochs: usize) {
        self.training_epoch.store(epoch as u64, Ordering::Relaxed);
        self.training_epochs.store(epochs as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP http_request_duration_seconds Request latency by method, route and status.\n",
        );
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        for ((method, route, status), h) in self.requests.lock().expect("metrics lock").iter() {
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            for (count, bound) in h.counts.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        let gauges = [
            (
                "ratings_written_total",
                "counter",
                "Ratings inserted or updated through the API.",
                self.ratings_written.load(Ordering::Relaxed) as i64,
            ),
            (
                "model_active_version",
                "gauge",
                "Version of the model being served (0: none).",
                self.model_version.load(Ordering::Relaxed),
            ),
            (
                "training_epoch",
                "gauge",
                "Epoch of the running training run (0: none running).",
                self.training_epoch.load(Ordering::Relaxed) as i64,
            ),
            (
                "training_epochs",
                "gauge",
                "Epochs planned for the running training run.",
                self.training_epochs.load(Ordering::Relaxed) as i64,
            ),
            (
                "ranking_cache_hits_total",
                "counter",
                "Recommendations served from a cached ranking.",
                self.ranking_cache_hits.load(Ordering::Relaxed) as i64,
            ),
            (
                "ranking_cache_misses_total",
                "counter",
                "Recommendations that scored the catalogue.",
                self.ranking_cache_misses.load(Ordering::Relaxed) as i64,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}
