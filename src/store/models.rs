//! Model versions: stored blobs, the active one, and announcements to the other processes.

use serde::Serialize;
// Dynamic SQL below only adds generated `$n` placeholders and constants, never input.
use sqlx::{AssertSqlSafe, Row};

use super::{Backend, Store, StoreError, json_column, now_millis};

/// Bytes per stored chunk of a model version: far below the 1 GB either database allows in one
/// value, and small enough that writing one costs little memory beside the model and takes the
/// database milliseconds: a 32 MiB chunk kept a PostgreSQL backend busy 220–320 ms, at the
/// default priority, on a core that requests are scored on.
pub const MODEL_CHUNK_BYTES: usize = 1 << 20;

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
    /// Bytes of the stored model.
    pub size_bytes: i64,
}

impl Store {
    /// Stores a model version, its bytes in chunks of MODEL_CHUNK_BYTES, in one transaction;
    /// `pace` is awaited before each chunk, the caller's turn to let other work go first.
    #[tracing::instrument(level = "debug", skip_all, fields(bytes = blob.len()))]
    pub async fn insert_model<Pace: Future<Output = ()>>(
        &self,
        params: &serde_json::Value,
        metrics: &serde_json::Value,
        blob: &[u8],
        mut pace: impl FnMut() -> Pace,
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "INSERT INTO models (created_at, params, metrics, size_bytes) VALUES ($1, $2, $3, $4) \
             RETURNING version",
        )
        .bind(now_millis())
        .bind(params.to_string())
        .bind(metrics.to_string())
        .bind(blob.len() as i64)
        .fetch_one(&mut *tx)
        .await?;
        let version: i64 = row.try_get(0)?;
        for (seq, chunk) in blob.chunks(MODEL_CHUNK_BYTES).enumerate() {
            pace().await;
            sqlx::query("INSERT INTO model_chunks (version, seq, data) VALUES ($1, $2, $3)")
                .bind(version)
                .bind(seq as i32)
                .bind(chunk.to_vec())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(version)
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

    /// The active model's version and bytes.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn active_model(&self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        let Some(version) = self.active_version().await? else {
            return Ok(None);
        };
        // Versions are never deleted, so the one just read is still there.
        let blob = self.model_blob(version).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("the active model version {version} has no row"))
        })?;
        Ok(Some((version, blob)))
    }

    /// A model version's bytes, read chunk by chunk into one buffer of the recorded size.
    #[tracing::instrument(level = "debug", skip_all, fields(version = version))]
    pub async fn model_blob(&self, version: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(row) = sqlx::query("SELECT size_bytes FROM models WHERE version = $1")
            .bind(version)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let size: i64 = row.try_get(0)?;
        let mut blob = Vec::with_capacity(size.max(0) as usize);
        // One chunk per statement: a single result of every chunk would hold them all twice.
        for seq in 0.. {
            let Some(row) =
                sqlx::query("SELECT data FROM model_chunks WHERE version = $1 AND seq = $2")
                    .bind(version)
                    .bind(seq)
                    .fetch_optional(&self.pool)
                    .await?
            else {
                break;
            };
            let chunk: &[u8] = row.try_get(0)?;
            blob.extend_from_slice(chunk);
        }
        if blob.len() as i64 != size {
            return Err(StoreError::Corrupt(format!(
                "model version {version} has {} bytes in its chunks, {size} on record",
                blob.len()
            )));
        }
        Ok(Some(blob))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn models(&self) -> Result<Vec<ModelInfo>, StoreError> {
        let sql = format!(
            "SELECT version, created_at, params, metrics, \
             CAST(CASE WHEN version = ({}) THEN 1 ELSE 0 END AS BIGINT) AS active, size_bytes \
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
                    size_bytes: row.try_get(5)?,
                })
            })
            .collect()
    }
}
