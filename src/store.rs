//! The ratings store: PostgreSQL in production, an embedded SQLite file by default. One set of
//! portable SQL runs on both through sqlx's `Any` driver; each backend has its own migrations
//! folder, kept in step, and the same API test suite runs against both so that drift fails CI.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
// Dynamic SQL below only adds generated `$n` placeholders and constants, never input.
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Row};

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Rows per multi-row INSERT: 4 parameters each stays far below both backends' bind limits.
const INSERT_CHUNK: usize = 1000;

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

/// PostgreSQL channel on which a process announces that it activated a model version.
const MODEL_CHANNEL: &str = "rbm_models";

/// Key of the PostgreSQL advisory lock held by the one process that trains.
const TRAINING_LOCK_KEY: i64 = 0x7262_6d5f_7472_6169;

/// Held by the process that trains. On PostgreSQL it is a session advisory lock on a connection
/// of its own, so it is released when the guard drops (the connection closes), also if the
/// process dies; on SQLite, which one process owns, there is nothing to hold.
#[derive(Debug)]
pub struct TrainingLock {
    _session: Option<AnyConnection>,
}

/// Announcements of newly activated model versions by any process sharing the database.
pub struct ModelAnnouncements {
    listener: sqlx::postgres::PgListener,
}

impl ModelAnnouncements {
    /// Waits for the next announcement. Also returns when the connection was lost and remade,
    /// since announcements may have been missed meanwhile; the caller re-reads the active version
    /// either way.
    pub async fn next(&mut self) -> Result<(), StoreError> {
        self.listener.try_recv().await?;
        Ok(())
    }
}

/// One rating to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRating {
    pub user_id: String,
    pub item_id: String,
    pub rating: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UpsertCounts {
    pub inserted: u64,
    pub updated: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub item_id: String,
    pub title: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PopularItem {
    pub item_id: String,
    pub mean_rating: f64,
    pub ratings: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub version: i64,
    pub created_at: i64,
    pub active: bool,
    pub params: serde_json::Value,
    pub metrics: serde_json::Value,
}

/// Where a training run is: queued, then running, then one of the three ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    const ALL: [RunStatus; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    fn parse(text: &str) -> Result<Self, sqlx::Error> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown training run status {text:?}").into())
            })
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainingRun {
    pub id: i64,
    pub status: RunStatus,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub params: serde_json::Value,
    pub progress: serde_json::Value,
    pub error: Option<String>,
    pub model_version: Option<i64>,
}

/// Longest accepted user or item id, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// Ids are opaque strings of 1 to 128 characters without control characters.
pub fn check_id(id: &str) -> Result<(), String> {
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_ID_CHARS {
        return Err(format!(
            "must be 1 to {MAX_ID_CHARS} characters, got {chars}"
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("{id:?} contains a control character"));
    }
    Ok(())
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

fn placeholders(start: usize, count: usize) -> String {
    (start..start + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
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

    /// Writes ratings in one transaction (all or nothing), creating unknown items. When a
    /// (user, item) pair repeats, the last one wins.
    #[tracing::instrument(level = "debug", skip_all, fields(ratings = ratings.len()))]
    pub async fn upsert_ratings(&self, ratings: &[NewRating]) -> Result<UpsertCounts, StoreError> {
        let mut tx = self.pool.begin().await?;
        let counts = upsert_ratings_in(&mut tx, ratings).await?;
        tx.commit().await?;
        Ok(counts)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The revisions of `users`: numbers that change whenever any of a user's ratings changes
    /// (triggers in migration 0003 maintain them). Users who never rated anything are absent.
    #[tracing::instrument(level = "debug", skip_all, fields(users = users.len()))]
    pub async fn user_revisions(&self, users: &[&str]) -> Result<HashMap<String, i64>, StoreError> {
        let mut unique: Vec<&str> = users.to_vec();
        unique.sort_unstable();
        unique.dedup();
        if unique.is_empty() {
            return Ok(HashMap::new());
        }
        // Placeholders padded to a power of two (repeating the last id), so that a handful of
        // statement texts cover every batch size and stay prepared on each connection.
        let slots = unique.len().next_power_of_two();
        let sql = format!(
            "SELECT user_id, revision FROM user_revisions WHERE user_id IN ({})",
            placeholders(1, slots)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for n in 0..slots {
            query = query.bind(unique[n.min(unique.len() - 1)].to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// The user's revision and ratings (ordered by item id), read by one statement so the two
    /// agree. The ratings come back as one aggregated row: per-row decoding through the Any driver
    /// dominated the cost of a recommendation. Ids cannot contain control characters, so unit
    /// (0x1f) and record (0x1e) separators split the text unambiguously.
    #[tracing::instrument(level = "debug", skip_all, fields(user_id = %user_id))]
    pub async fn user_ratings(
        &self,
        user_id: &str,
    ) -> Result<(i64, Vec<(String, f64)>), StoreError> {
        let sql = match self.backend {
            Backend::Postgres => {
                "SELECT (SELECT revision FROM user_revisions WHERE user_id = $1), \
                 (SELECT string_agg(item_id || chr(31) || rating::text, chr(30)) FROM ratings WHERE user_id = $1)"
            }
            Backend::Sqlite => {
                "SELECT (SELECT revision FROM user_revisions WHERE user_id = $1), \
                 (SELECT group_concat(item_id || char(31) || rating, char(30)) FROM ratings WHERE user_id = $1)"
            }
        };
        let row = sqlx::query(sql)
            .bind(user_id.to_string())
            .fetch_one(&self.pool)
            .await?;
        let revision = row.try_get::<Option<i64>, _>(0)?.unwrap_or(0);
        let Some(text) = row.try_get::<Option<String>, _>(1)? else {
            return Ok((revision, Vec::new()));
        };
        let mut ratings = Vec::new();
        for record in text.split('\u{1e}') {
            let parsed = record
                .split_once('\u{1f}')
                .and_then(|(item, rating)| Some((item.to_string(), rating.parse().ok()?)));
            ratings.push(parsed.ok_or_else(|| {
                StoreError::Corrupt(format!("rating record {record:?} of user {user_id:?}"))
            })?);
        }
        ratings.sort_by(|a: &(String, f64), b| a.0.cmp(&b.0));
        Ok((revision, ratings))
    }

    /// Deletes one rating; false if there was none.
    #[tracing::instrument(level = "debug", skip_all, fields(user_id = %user_id, item_id = %item_id))]
    pub async fn delete_rating(&self, user_id: &str, item_id: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM ratings WHERE user_id = $1 AND item_id = $2")
            .bind(user_id.to_string())
            .bind(item_id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Creates or replaces an item's title and metadata; true if it was created.
    #[tracing::instrument(level = "debug", skip_all, fields(item_id = %item.item_id))]
    pub async fn put_item(&self, item: &Item) -> Result<bool, StoreError> {
        let metadata = item.metadata.as_ref().map(|m| m.to_string());
        let mut tx = self.pool.begin().await?;
        let existed = sqlx::query("SELECT 1 FROM items WHERE item_id = $1")
            .bind(item.item_id.clone())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        sqlx::query(
            "INSERT INTO items (item_id, title, metadata, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (item_id) DO UPDATE SET title = excluded.title, metadata = excluded.metadata",
        )
        .bind(item.item_id.clone())
        .bind(item.title.clone())
        .bind(metadata)
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(!existed)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(item_id = %item_id))]
    pub async fn item(&self, item_id: &str) -> Result<Option<Item>, StoreError> {
        let row = sqlx::query("SELECT item_id, title, metadata FROM items WHERE item_id = $1")
            .bind(item_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let metadata: Option<String> = row.try_get(2)?;
            Ok(Item {
                item_id: row.try_get(0)?,
                title: row.try_get(1)?,
                metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
            })
        })
        .transpose()
    }

    /// Titles of the given items (missing items and items without a title are absent).
    #[tracing::instrument(level = "debug", skip_all, fields(items = item_ids.len()))]
    pub async fn titles(&self, item_ids: &[&str]) -> Result<HashMap<String, String>, StoreError> {
        if item_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT item_id, title FROM items WHERE title IS NOT NULL AND item_id IN ({})",
            placeholders(1, item_ids.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in item_ids {
            query = query.bind(id.to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// Items by number of ratings (ties by id), skipping `exclude`, from position `offset`.
    #[tracing::instrument(level = "debug", skip_all, fields(limit = limit, offset = offset))]
    pub async fn popular_items(
        &self,
        limit: usize,
        offset: usize,
        exclude: &HashSet<String>,
    ) -> Result<Vec<PopularItem>, StoreError> {
        let fetch = (limit + offset + exclude.len()) as i64;
        let rows = sqlx::query(
            "SELECT item_id, AVG(rating) AS mean_rating, COUNT(*) AS n FROM ratings \
             GROUP BY item_id ORDER BY n DESC, item_id ASC LIMIT $1",
        )
        .bind(fetch)
        .fetch_all(&self.pool)
        .await?;
        let mut items = Vec::with_capacity(limit);
        for row in rows {
            let item_id: String = row.try_get(0)?;
            if !exclude.contains(&item_id) {
                items.push(PopularItem {
                    item_id,
                    mean_rating: row.try_get(1)?,
                    ratings: row.try_get(2)?,
                });
            }
        }
        Ok(items.into_iter().skip(offset).take(limit).collect())
    }

    /// Every rating, read by one statement (a consistent snapshot on both backends).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn all_ratings(&self) -> Result<Vec<(String, String, f64)>, StoreError> {
        let rows = sqlx::query("SELECT user_id, item_id, rating FROM ratings")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn insert_model(
        &self,
        params: &serde_json::Value,
        metrics: &serde_json::Value,
        blob: Vec<u8>,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO models (created_at, params, metrics, blob) VALUES ($1, $2, $3, $4) RETURNING version",
        )
        .bind(now_millis())
        .bind(params.to_string())
        .bind(metrics.to_string())
        .bind(blob)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Makes `version` the active model; false if there is no such version.
    #[tracing::instrument(level = "debug", skip_all, fields(version = version))]
    pub async fn activate_model(&self, version: i64) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE models SET activated_at = $1 WHERE version = $2")
            .bind(now_millis())
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    const ACTIVE: &str = "SELECT version FROM models WHERE activated_at IS NOT NULL \
                          ORDER BY activated_at DESC, version DESC LIMIT 1";

    /// The active model's version.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn active_version(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(Self::ACTIVE).fetch_optional(&self.pool).await?;
        row.map(|row| Ok(row.try_get(0)?)).transpose()
    }

    /// Tells every process sharing the database that `version` is now active (PostgreSQL; a
    /// SQLite file has one process).
    #[tracing::instrument(level = "debug", skip_all, fields(version = version))]
    pub async fn announce_model(&self, version: i64) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(MODEL_CHANNEL)
                .bind(version.to_string())
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Subscribes to `announce_model` (PostgreSQL only; None on SQLite).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn model_announcements(&self) -> Result<Option<ModelAnnouncements>, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(MODEL_CHANNEL).await?;
        Ok(Some(ModelAnnouncements { listener }))
    }

    /// The training lock if no other process holds it.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn try_training_lock(&self) -> Result<Option<TrainingLock>, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(Some(TrainingLock { _session: None }));
        }
        // A connection taken out of the pool for good: the lock lives as long as it does.
        let mut session = self.pool.acquire().await?.detach();
        let locked: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
            .bind(TRAINING_LOCK_KEY)
            .fetch_one(&mut session)
            .await?
            .try_get(0)?;
        Ok(locked.then_some(TrainingLock {
            _session: Some(session),
        }))
    }

    /// The active model's version and blob.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn active_model(&self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        let sql = format!(
            "SELECT version, blob FROM models WHERE version = ({})",
            Self::ACTIVE
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .transpose()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(version = version))]
    pub async fn model_blob(&self, version: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT blob FROM models WHERE version = $1")
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok(row.try_get(0)?)).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn models(&self) -> Result<Vec<ModelInfo>, StoreError> {
        let sql = format!(
            "SELECT version, created_at, params, metrics, \
             CAST(CASE WHEN version = ({}) THEN 1 ELSE 0 END AS BIGINT) AS active \
             FROM models ORDER BY version DESC",
            Self::ACTIVE
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(ModelInfo {
                    version: row.try_get(0)?,
                    created_at: row.try_get(1)?,
                    params: json_column(row, "params")?,
                    metrics: json_column(row, "metrics")?,
                    active: row.try_get::<i64, _>(4)? == 1,
                })
            })
            .collect()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn create_run(&self, params: &serde_json::Value) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO training_runs (status, created_at, params, progress) VALUES ('queued', $1, $2, '{}') RETURNING id",
        )
        .bind(now_millis())
        .bind(params.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Records a run's status and progress; `finished` also stamps finished_at.
    #[tracing::instrument(level = "debug", skip_all, fields(id = id, status = %status))]
    pub async fn update_run(
        &self,
        id: i64,
        status: RunStatus,
        progress: &serde_json::Value,
        error: Option<&str>,
        model_version: Option<i64>,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let finished = status.is_finished().then_some(now);
        let started = (status == RunStatus::Running).then_some(now);
        sqlx::query(
            "UPDATE training_runs SET status = $1, progress = $2, error = $3, model_version = $4, \
             started_at = COALESCE(started_at, $5), finished_at = COALESCE(finished_at, $6) WHERE id = $7",
        )
        .bind(status.as_str())
        .bind(progress.to_string())
        .bind(error.map(str::to_string))
        .bind(model_version)
        .bind(started)
        .bind(finished)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Runs left queued or running by a process that stopped are marked failed.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn fail_abandoned_runs(&self) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE training_runs SET status = 'failed', error = 'the server stopped during training', \
             finished_at = $1 WHERE status IN ('queued', 'running')",
        )
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    const RUN_COLUMNS: &str =
        "id, status, created_at, started_at, finished_at, params, progress, error, model_version";

    fn run_of(row: &AnyRow) -> Result<TrainingRun, sqlx::Error> {
        Ok(TrainingRun {
            id: row.try_get(0)?,
            status: RunStatus::parse(&row.try_get::<String, _>(1)?)?,
            created_at: row.try_get(2)?,
            started_at: row.try_get(3)?,
            finished_at: row.try_get(4)?,
            params: json_column(row, "params")?,
            progress: json_column(row, "progress")?,
            error: row.try_get(7)?,
            model_version: row.try_get(8)?,
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(id = id))]
    pub async fn run(&self, id: i64) -> Result<Option<TrainingRun>, StoreError> {
        let sql = format!(
            "SELECT {} FROM training_runs WHERE id = $1",
            Self::RUN_COLUMNS
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(Self::run_of).transpose()?)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn runs(&self, limit: i64) -> Result<Vec<TrainingRun>, StoreError> {
        let sql = format!(
            "SELECT {} FROM training_runs ORDER BY id DESC LIMIT $1",
            Self::RUN_COLUMNS
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(Self::run_of).collect::<Result<_, _>>()?)
    }
}

/// Upserts ratings (the last of a repeated pair wins) and creates their unknown items, inside the
/// caller's transaction.
pub async fn upsert_ratings_in(
    conn: &mut AnyConnection,
    ratings: &[NewRating],
) -> Result<UpsertCounts, StoreError> {
    let mut latest: HashMap<(&str, &str), f64> = HashMap::with_capacity(ratings.len());
    for r in ratings {
        latest.insert((&r.user_id, &r.item_id), r.rating);
    }
    let mut rows: Vec<((&str, &str), f64)> = latest.into_iter().collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let now = now_millis();
    let mut counts = UpsertCounts::default();
    let mut items: Vec<&str> = rows.iter().map(|((_, item), _)| *item).collect();
    items.sort_unstable();
    items.dedup();
    for chunk in items.chunks(INSERT_CHUNK) {
        let values: Vec<String> = (0..chunk.len())
            .map(|n| format!("(${}, ${})", 2 * n + 1, 2 * n + 2))
            .collect();
        let sql = format!(
            "INSERT INTO items (item_id, created_at) VALUES {} ON CONFLICT (item_id) DO NOTHING",
            values.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for item in chunk {
            query = query.bind(item.to_string()).bind(now);
        }
        query.execute(&mut *conn).await?;
    }
    for chunk in rows.chunks(INSERT_CHUNK) {
        let values: Vec<String> = (0..chunk.len())
            .map(|n| format!("({})", placeholders(4 * n + 1, 4)))
            .collect();
        let sql = format!(
            "INSERT INTO ratings (user_id, item_id, rating, updated_at) VALUES {} \
             ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating, \
             updated_at = excluded.updated_at, revision = ratings.revision + 1 RETURNING revision",
            values.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for ((user, item), rating) in chunk {
            query = query
                .bind(user.to_string())
                .bind(item.to_string())
                .bind(*rating)
                .bind(now);
        }
        for row in query.fetch_all(&mut *conn).await? {
            if row.try_get::<i64, _>(0)? == 0 {
                counts.inserted += 1;
            } else {
                counts.updated += 1;
            }
        }
    }
    Ok(counts)
}

/// Sets item titles (creating the items), inside the caller's transaction.
pub async fn upsert_titles_in(
    conn: &mut AnyConnection,
    titles: &[(String, String)],
) -> Result<(), StoreError> {
    let now = now_millis();
    for chunk in titles.chunks(INSERT_CHUNK) {
        let values: Vec<String> = (0..chunk.len())
            .map(|n| format!("({})", placeholders(3 * n + 1, 3)))
            .collect();
        let sql = format!(
            "INSERT INTO items (item_id, title, created_at) VALUES {} \
             ON CONFLICT (item_id) DO UPDATE SET title = excluded.title",
            values.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (item, title) in chunk {
            query = query.bind(item.clone()).bind(title.clone()).bind(now);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}
