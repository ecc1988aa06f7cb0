//! Ratings and items: writes in one transaction, reads by user, titles, popularity, the training
//! snapshot.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use serde::Serialize;
// Dynamic SQL below only adds generated `$n` placeholders and constants, never input.
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::{Backend, Store, StoreError, now_millis};
use crate::model::DataShape;

/// Rows per multi-row INSERT: 4 parameters each stays far below both backends' bind limits.
const INSERT_CHUNK: usize = 1000;

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

fn placeholders(start: usize, count: usize) -> String {
    (start..start + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
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
    insert_items_in(conn, &items, now).await?;
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

/// Creates the items that do not exist yet, inside the caller's transaction.
pub async fn insert_items_in(
    conn: &mut AnyConnection,
    items: &[&str],
    now: i64,
) -> Result<(), StoreError> {
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
    Ok(())
}

/// Moves the revisions of `users` on (creating them at 1), inside the caller's transaction: what
/// the triggers do row by row, for a bulk load that went without them.
pub async fn bump_revisions_in(conn: &mut AnyConnection, users: &[&str]) -> Result<(), StoreError> {
    let mut users = users.to_vec();
    users.sort_unstable();
    for chunk in users.chunks(INSERT_CHUNK) {
        let values: Vec<String> = (0..chunk.len())
            .map(|n| format!("(${}, 1)", n + 1))
            .collect();
        let sql = format!(
            "INSERT INTO user_revisions (user_id, revision) VALUES {} \
             ON CONFLICT (user_id) DO UPDATE SET revision = user_revisions.revision + 1",
            values.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for user in chunk {
            query = query.bind(user.to_string());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
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

/// A user's revision and ratings as (item id, rating), by item id.
pub type UserRatings = (i64, Vec<(String, f64)>);

/// The ratings `users_ratings` aggregated into one text, by item id.
fn parse_ratings(text: &str, user_id: &str) -> Result<Vec<(String, f64)>, StoreError> {
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
    Ok(ratings)
}

impl Store {
    /// Writes ratings in one transaction (all or nothing), creating unknown items. When a
    /// (user, item) pair repeats, the last one wins.
    #[tracing::instrument(level = "debug", skip_all, fields(ratings = ratings.len()))]
    pub async fn upsert_ratings(&self, ratings: &[NewRating]) -> Result<UpsertCounts, StoreError> {
        let mut tx = self.begin_write().await?;
        let counts = upsert_ratings_in(&mut tx, ratings).await?;
        tx.commit().await?;
        Ok(counts)
    }

    /// The revisions of `users`: numbers that change whenever any of a user's ratings changes
    /// (triggers in migration 0003 maintain them). Users who never rated anything are absent.
    #[tracing::instrument(level = "debug", skip_all, fields(users = users.len()))]
    pub async fn user_revisions(
        &self,
        users: &[impl AsRef<str>],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let mut unique: Vec<&str> = users.iter().map(AsRef::as_ref).collect();
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

    /// The user's revision and ratings (ordered by item id): `users_ratings` for one user.
    pub async fn user_ratings(&self, user_id: &str) -> Result<UserRatings, StoreError> {
        let mut read = self.users_ratings(&[user_id]).await?;
        Ok(read.remove(user_id).unwrap_or_default())
    }

    /// Each user's revision and ratings (ordered by item id), all read by one statement so that
    /// they agree; users who never rated anything are absent. Each user's ratings come back as
    /// one aggregated value: per-row decoding through the Any driver dominated the cost of a
    /// recommendation. Ids cannot contain control characters, so unit (0x1f) and record (0x1e)
    /// separators split the text unambiguously.
    #[tracing::instrument(level = "debug", skip_all, fields(users = users.len()))]
    pub async fn users_ratings(
        &self,
        users: &[impl AsRef<str>],
    ) -> Result<HashMap<String, UserRatings>, StoreError> {
        let mut unique: Vec<&str> = users.iter().map(AsRef::as_ref).collect();
        unique.sort_unstable();
        unique.dedup();
        if unique.is_empty() {
            return Ok(HashMap::new());
        }
        let aggregate = match self.backend {
            Backend::Postgres => "string_agg(item_id || chr(31) || rating::text, chr(30))",
            Backend::Sqlite => "group_concat(item_id || char(31) || rating, char(30))",
        };
        // Placeholders padded to a power of two (repeating the last id, which DISTINCT drops), so
        // that a handful of statement texts cover every batch size and stay prepared.
        let slots = unique.len().next_power_of_two();
        let values = (1..=slots)
            .map(|n| format!("(${n})"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "WITH asked(user_id) AS (SELECT DISTINCT column1 FROM (VALUES {values}) AS v) \
             SELECT asked.user_id, \
             (SELECT revision FROM user_revisions WHERE user_id = asked.user_id), \
             (SELECT {aggregate} FROM ratings WHERE user_id = asked.user_id) FROM asked"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for n in 0..slots {
            query = query.bind(unique[n.min(unique.len() - 1)].to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut read = HashMap::with_capacity(rows.len());
        for row in rows {
            let user_id: String = row.try_get(0)?;
            let revision = row.try_get::<Option<i64>, _>(1)?;
            let text = row.try_get::<Option<String>, _>(2)?;
            if revision.is_none() && text.is_none() {
                continue;
            }
            let ratings = match text {
                Some(text) => parse_ratings(&text, &user_id)?,
                None => Vec::new(),
            };
            read.insert(user_id, (revision.unwrap_or(0), ratings));
        }
        Ok(read)
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
        let mut tx = self.begin_write().await?;
        // Of concurrent requests for a new id exactly one inserts (the others see the conflict
        // once it commits) and is told it created the item; the rest update it.
        let created = sqlx::query(
            "INSERT INTO items (item_id, title, metadata, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (item_id) DO NOTHING",
        )
        .bind(item.item_id.clone())
        .bind(item.title.clone())
        .bind(metadata.clone())
        .bind(now_millis())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !created {
            sqlx::query("UPDATE items SET title = $2, metadata = $3 WHERE item_id = $1")
                .bind(item.item_id.clone())
                .bind(item.title.clone())
                .bind(metadata)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(created)
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

    /// How many ratings, users who ever rated, and items there are, about: what a training run's
    /// memory is estimated from before it starts. Counting 100 M ratings takes seconds, past a
    /// request's timeout, so the ratings are PostgreSQL's planner estimate (kept by ANALYZE, which
    /// a first import runs) or SQLite's largest rowid (never below the count). The users and
    /// items, a few hundred thousand rows at most, are counted.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn data_size(&self) -> Result<DataShape, StoreError> {
        let ratings = match self.backend {
            Backend::Postgres => {
                "SELECT CAST(CASE WHEN reltuples >= 0 THEN reltuples ELSE -1 END AS BIGINT) \
                 FROM pg_class WHERE oid = 'ratings'::regclass"
            }
            Backend::Sqlite => "SELECT COALESCE(MAX(rowid), 0) FROM ratings",
        };
        let estimate: i64 = sqlx::query(ratings)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        // A table never analysed has no estimate.
        let ratings = if estimate >= 0 {
            estimate
        } else {
            sqlx::query("SELECT COUNT(*) FROM ratings")
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?
        };
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM user_revisions), (SELECT COUNT(*) FROM items)",
        )
        .fetch_one(&self.pool)
        .await?;
        let count = |n: usize| -> Result<usize, StoreError> {
            Ok(row.try_get::<i64, _>(n)?.max(0) as usize)
        };
        Ok(DataShape {
            ratings: ratings.max(0) as usize,
            users: count(0)?,
            items: count(1)?,
        })
    }

    /// Calls `each` with every rating (user id, item id, value), read by one statement (a
    /// consistent snapshot on both backends) and streamed: nothing per rating is kept here, so
    /// the caller decides what a snapshot of 100 M ratings costs. PostgreSQL sends it by COPY,
    /// parsed here without a per-row allocation. An error from `each` stops the read.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn for_each_rating(
        &self,
        mut each: impl FnMut(&str, &str, f64) -> Result<(), String>,
    ) -> Result<u64, StoreError> {
        use futures_util::TryStreamExt;
        let mut count = 0u64;
        if self.backend == Backend::Postgres {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&self.url).await?;
            let mut chunks = conn
                .copy_out_raw("COPY (SELECT user_id, item_id, rating FROM ratings) TO STDOUT")
                .await?;
            let mut carry: Vec<u8> = Vec::new();
            while let Some(chunk) = chunks.try_next().await? {
                carry.extend_from_slice(&chunk);
                let complete = match carry.iter().rposition(|&b| b == b'\n') {
                    Some(end) => end + 1,
                    None => continue,
                };
                for line in carry[..complete].split(|&b| b == b'\n') {
                    if line.is_empty() {
                        continue;
                    }
                    let (user, item, value) = parse_copy_line(line)?;
                    each(&user, &item, value).map_err(StoreError::Corrupt)?;
                    count += 1;
                }
                carry.drain(..complete);
            }
            drop(chunks);
            conn.close().await?;
        } else {
            let mut rows =
                sqlx::query("SELECT user_id, item_id, rating FROM ratings").fetch(&self.pool);
            while let Some(row) = rows.try_next().await? {
                let user: &str = row.try_get(0)?;
                let item: &str = row.try_get(1)?;
                each(user, item, row.try_get(2)?).map_err(StoreError::Corrupt)?;
                count += 1;
            }
        }
        Ok(count)
    }
}

/// One line of `COPY … TO STDOUT` text: user id, item id and rating, tab-separated. Ids only need
/// unescaping if they hold a backslash (COPY escapes it, and control characters, which ids
/// cannot hold).
fn parse_copy_line(line: &[u8]) -> Result<(Cow<'_, str>, Cow<'_, str>, f64), StoreError> {
    fn field<'a>(fields: &mut impl Iterator<Item = &'a [u8]>) -> Option<Cow<'a, str>> {
        let field = std::str::from_utf8(fields.next()?).ok()?;
        Some(if field.contains('\\') {
            Cow::Owned(field.replace("\\\\", "\\"))
        } else {
            Cow::Borrowed(field)
        })
    }
    let mut fields = line.split(|&b| b == b'\t');
    let parsed = (|| {
        let (user, item) = (field(&mut fields)?, field(&mut fields)?);
        let value = field(&mut fields)?.parse().ok()?;
        Some((user, item, value))
    })();
    parsed.ok_or_else(|| {
        StoreError::Corrupt(format!("rating row {:?}", String::from_utf8_lossy(line)))
    })
}
