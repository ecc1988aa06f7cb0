//! The ratings store: PostgreSQL in production, an embedded SQLite file by default. One set of
//! portable SQL runs on both through sqlx's `Any` driver; each backend has its own migrations
//! folder, kept in step, and the same API test suite runs against both so that drift fails CI.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

mod models;
mod ratings;
mod runs;

pub use models::{MODEL_CHUNK_BYTES, ModelAnnouncements, ModelInfo};
pub use ratings::{
    Item, MAX_ID_CHARS, NewRating, PopularItem, UpsertCounts, UserRatings, bump_revisions_in,
    check_id, insert_items_in, upsert_ratings_in, upsert_titles_in,
};
pub use runs::{RunStatus, TrainingLock, TrainingRun};

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported DATABASE_URL {0:?}: use postgres://… or sqlite://…")]
    UnsupportedUrl(String),
    #[error("unexpected data in the database: {0}")]
    Corrupt(String),
    #[error("cannot create the database folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn json_column(row: &AnyRow, column: &str) -> Result<serde_json::Value, sqlx::Error> {
    let text: String = row.try_get(column)?;
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

impl Store {
    /// Connects to `postgres://…` or `sqlite://…` (the SQLite file and its folder are created).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            let file = path.split('?').next().unwrap_or_default();
            if let Some(folder) = Path::new(file)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                std::fs::create_dir_all(folder).map_err(|source| StoreError::Folder {
                    path: folder.display().to_string(),
                    source,
                })?;
            }
            Backend::Sqlite
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    // PostgreSQL compiles a plan with LLVM once its estimated cost passes
                    // `jit_above_cost`, and the padded batch read of users' ratings passes it from
                    // about 9 users at 100 M ratings (the planner guesses thousands of ratings a
                    // user): 7 ms of compiling, and 26 ms in all, for a read that takes 1.5 ms
                    // without. Every query here is a short lookup or a plain scan.
                    if backend == Backend::Postgres {
                        sqlx::query("SET jit = off").execute(connection).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite {
            // Readers never wait for the writer; one writer at a time, waiting up to 5 s for the lock.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        Ok(Self { pool, backend, url })
    }

    /// A transaction that will write. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`), waiting for another writer up to the busy timeout: a deferred transaction that
    /// reads first cannot take the lock later while another writer holds it, and fails with
    /// "database is locked" instead of waiting. PostgreSQL's row locks need no such care.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}
