//! Training runs and the one-trainer lock.

use serde::Serialize;
use sqlx::any::AnyRow;
// Dynamic SQL below only adds generated `$n` placeholders and constants, never input.
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::{Backend, Store, StoreError, json_column, now_millis};

/// Key of the PostgreSQL advisory lock held by the one process that trains.
const TRAINING_LOCK_KEY: i64 = 0x7262_6d5f_7472_6169;

/// Held by the process that trains. On PostgreSQL it is a session advisory lock on a connection
/// of its own, so it is released when the guard drops (the connection closes), also if the
/// process dies; on SQLite, which one process owns, there is nothing to hold.
#[derive(Debug)]
pub struct TrainingLock {
    session: Option<AnyConnection>,
}

impl TrainingLock {
    /// Whether the lock is still held: on PostgreSQL, whether its connection is alive and holds
    /// it (a dropped connection, `pg_terminate_backend` say, releases it to whoever asks next).
    pub async fn is_held(&mut self) -> bool {
        let Some(session) = &mut self.session else {
            return true;
        };
        sqlx::query(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND pid = pg_backend_pid() AND objsubid = 1 \
             AND ((classid::bigint << 32) | objid::bigint) = $1",
        )
        .bind(TRAINING_LOCK_KEY)
        .fetch_one(session)
        .await
        .and_then(|row| row.try_get::<i64, _>(0))
        .is_ok_and(|held| held > 0)
    }
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

impl Store {
    /// The training lock if no other process holds it.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn try_training_lock(&self) -> Result<Option<TrainingLock>, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(Some(TrainingLock { session: None }));
        }
        // A connection taken out of the pool for good: the lock lives as long as it does.
        let mut session = self.pool.acquire().await?.detach();
        let locked: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
            .bind(TRAINING_LOCK_KEY)
            .fetch_one(&mut session)
            .await?
            .try_get(0)?;
        Ok(locked.then_some(TrainingLock {
            session: Some(session),
        }))
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

    /// Records a run's status and progress; `finished` also stamps finished_at. A run that has
    /// ended is never changed again, so its fields only move forward; returns whether the run was
    /// still going (and so was updated).
    #[tracing::instrument(level = "debug", skip_all, fields(id = id, status = %status))]
    pub async fn update_run(
        &self,
        id: i64,
        status: RunStatus,
        progress: &serde_json::Value,
        error: Option<&str>,
        model_version: Option<i64>,
    ) -> Result<bool, StoreError> {
        let now = now_millis();
        let finished = status.is_finished().then_some(now);
        let started = (status == RunStatus::Running).then_some(now);
        let result = sqlx::query(
            "UPDATE training_runs SET status = $1, progress = $2, error = $3, model_version = $4, \
             started_at = COALESCE(started_at, $5), finished_at = COALESCE(finished_at, $6) \
             WHERE id = $7 AND status IN ('queued', 'running')",
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
        Ok(result.rows_affected() == 1)
    }

    /// Ends the runs (all queued or running ones, or the one `only`) that no live process trains.
    /// The caller must know that: holding the training lock proves it for every run (a trainer
    /// holds the lock for as long as it runs), and so does training another run itself.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn end_abandoned_runs(
        &self,
        status: RunStatus,
        only: Option<i64>,
    ) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE training_runs SET status = $1, finished_at = $2, \
             error = 'abandoned: the process training it stopped' \
             WHERE status IN ('queued', 'running') AND ($3 IS NULL OR id = $3)",
        )
        .bind(status.as_str())
        .bind(now_millis())
        .bind(only)
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
