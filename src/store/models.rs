//! Model versions: stored blobs, the active one, and announcements to the other processes.

use serde::Serialize;
// Dynamic SQL below only adds generated `$n` placeholders and constants, never input.
use sqlx::{AssertSqlSafe, Row};

use super::{Backend, Store, StoreError, json_column, now_millis};

/// PostgreSQL channel on which a process announces that it activated a model version.
const MODEL_CHANNEL: &str = "rbm_models";

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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub version: i64,
    pub created_at: i64,
    pub active: bool,
    pub params: serde_json::Value,
    pub metrics: serde_json::Value,
}

impl Store {
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
}
