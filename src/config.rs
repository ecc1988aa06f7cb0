//! Service configuration: one struct filled from flags and environment variables (the only place
//! the environment is read), with defaults that run on a fresh machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::app::{Options, TrainingRequest};
use crate::model::RatingScale;

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// postgres://… for PostgreSQL; without it an embedded SQLite file under --data-dir is used.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Folder of the embedded SQLite database.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[arg(long = "bind", env = "BIND_ADDR", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Bearer token for /admin routes; without it they answer 403.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// Rating scale as min:max:step.
    #[arg(long, env = "RATING_SCALE", default_value = "0.5:5:0.5", value_parser = parse_scale)]
    pub scale: RatingScale,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
    /// Retrain periodically, e.g. 6h, 30m, 90s.
    #[arg(long, env = "RETRAIN_EVERY", value_parser = parse_duration)]
    pub retrain_every: Option<Duration>,
    /// Requests taking longer than this are answered 408.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// How long a client may take to send a request's headers before the connection is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// How long a connection may stay silent before it is closed; keep it above REQUEST_TIMEOUT.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Open HTTP connections at most (more wait to be accepted); keep it below `ulimit -n`.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1000)]
    pub http_max_connections: usize,
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub max_connections: u32,
    /// Memory for rankings memoised per (model, user, ratings); 0 turns the cache off.
    #[arg(long, env = "RANKING_CACHE_MB", default_value_t = 256)]
    pub ranking_cache_mb: u64,
    /// Memory a training run may take, by the estimate made before it starts (a retrain over it
    /// is refused with 422); 0 means half of the machine's memory (or of the cgroup's limit).
    #[arg(long, env = "TRAINING_MEMORY_MB", default_value_t = 0)]
    pub training_memory_mb: u64,
    /// Training defaults for retraining; a retrain request's body overrides them.
    #[command(flatten)]
    pub training: TrainingRequest,
}

impl Settings {
    /// What the application needs of these settings.
    pub fn options(&self) -> Options {
        Options {
            scale: self.scale,
            training: self.training.clone(),
            ranking_cache_bytes: self.ranking_cache_mb.saturating_mul(1 << 20),
            training_memory_bytes: match self.training_memory_mb {
                0 => machine_memory() / 2,
                mb => mb.saturating_mul(1 << 20),
            },
        }
    }

    /// The database URL: DATABASE_URL, or the embedded SQLite file.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.data_dir.join("rbm-recommender.db").display()
            )
        })
    }
}

/// The memory this process may use: the cgroup's limit if one is set, else the machine's.
fn machine_memory() -> u64 {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|limit| limit.trim().parse::<u64>().ok());
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    // Neither readable (not Linux): assume a small server.
    match (cgroup, total) {
        (Some(limit), Some(total)) => limit.min(total),
        (limit, total) => limit.or(total).unwrap_or(8 << 30),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A secret whose value never appears in logs or Debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            Err("the admin token must not be empty or blank".to_string())
        } else if s.trim() != s {
            // Header values arrive trimmed, so such a token could never match.
            Err("the admin token must not begin or end with whitespace".to_string())
        } else {
            Ok(Self(s.to_string()))
        }
    }
}

pub fn parse_scale(text: &str) -> Result<RatingScale, String> {
    RatingScale::parse(text).map_err(|e| e.to_string())
}

/// A positive duration such as `90s`, `30m`, `6h`, `2d` or `1h 30m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}): expected e.g. 90s, 30m, 6h"))?;
    if duration.is_zero() {
        return Err(format!("duration {text:?} must be positive"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("6h").unwrap(), Duration::from_secs(21_600));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(
            parse_duration("0s").is_err()
                && parse_duration("5x").is_err()
                && parse_duration("h").is_err()
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let secret: Secret = "hunter2".parse().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn a_token_that_could_never_match_is_refused_at_start() {
        for token in ["", "   ", " hunter2", "hunter2\t"] {
            assert!(token.parse::<Secret>().is_err(), "{token:?}");
        }
    }
}
