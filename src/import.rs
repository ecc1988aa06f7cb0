//! `rbm-recommender import`: ratings and item titles from MovieLens, Netflix Prize or CSV files into
//! the configured database, streamed in bounded memory. PostgreSQL loads through COPY into a staging
//! table and one upsert; SQLite through batched statements. By default the whole import is one
//! transaction and the first bad row stops it; `--skip-invalid` imports the good rows instead.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, Row};

use crate::model::RatingScale;
use crate::readers::{
    NetflixReader, RatingFormat, RatingReader, RawRating, ReadError, TitleLayout, detect_format,
    ratings_file, read_titles, titles_file,
};
use crate::store::{self, Backend, NewRating, Store, now_millis};

/// Bad rows reported by line in the summary.
const EXAMPLES: usize = 5;
/// Rows per SQLite batch, and bytes per COPY message.
const BATCH_ROWS: usize = 5_000;
const COPY_CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, Default, Serialize)]
pub struct ImportSummary {
    pub ratings_read: u64,
    pub inserted: u64,
    /// Pairs that were already stored and were written again (a re-import counts them here).
    pub updated: u64,
    pub invalid: u64,
    pub invalid_examples: Vec<String>,
    pub titles: u64,
    pub seconds: f64,
    pub ratings_per_second: f64,
}

/// Where the ratings and titles of a path come from.
struct ImportInput {
    ratings: Box<dyn Iterator<Item = Result<RawRating, ReadError>>>,
    titles: Option<(PathBuf, TitleLayout)>,
    progress: ProgressBar,
    /// The bar counts ratings (Netflix: thousands of files) rather than bytes of one file.
    counts_ratings: bool,
}

/// Counts bytes read into a progress bar.
struct Counted<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn open_input(path: &Path, format: Option<RatingFormat>) -> anyhow::Result<ImportInput> {
    if path.join("training_set").is_dir() {
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template(
                "importing {spinner} {human_pos} ratings, {per_sec} ({elapsed}) {msg}",
            )
            .expect("valid template"),
        );
        let ratings = Box::new(NetflixReader::open(path)?);
        return Ok(ImportInput {
            ratings,
            titles: titles_file(path),
            progress: bar,
            counts_ratings: true,
        });
    }
    let file = ratings_file(path)?;
    let format = match format {
        Some(format) => format,
        None => detect_format(&file)?,
    };
    let folder = if path.is_dir() {
        path.to_path_buf()
    } else {
        file.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let length = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let bar = ProgressBar::new(length);
    bar.set_style(byte_style());
    let reader =
        std::fs::File::open(&file).with_context(|| format!("failed to open {}", file.display()))?;
    let counted = Counted {
        inner: reader,
        bar: bar.clone(),
    };
    let ratings = RatingReader::new(
        &file,
        format,
        std::io::BufReader::with_capacity(1 << 16, counted),
    );
    let titles = if path.is_dir()
        || matches!(
            format,
            RatingFormat::Ml100k | RatingFormat::MlDat | RatingFormat::MlCsv
        ) {
        titles_file(&folder)
    } else {
        None
    };
    Ok(ImportInput {
        ratings: Box::new(ratings),
        titles,
        progress: bar,
        counts_ratings: false,
    })
}

fn byte_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "importing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
    )
    .expect("valid template")
    .progress_chars("=> ")
}

/// Checks one row; an error message names the file, line and problem.
fn validate(raw: &RawRating, scale: RatingScale) -> Result<(), String> {
    store::check_id(&raw.user).map_err(|m| format!("user id {m}"))?;
    store::check_id(&raw.item).map_err(|m| format!("item id {m}"))?;
    scale.class_of(raw.value).map_err(|e| e.to_string())?;
    Ok(())
}

/// Pulls the next good rating; bad rows stop the import, or with `skip_invalid` are counted.
fn next_rating(
    source: &mut ImportInput,
    scale: RatingScale,
    skip_invalid: bool,
    summary: &mut ImportSummary,
) -> anyhow::Result<Option<RawRating>> {
    for next in source.ratings.by_ref() {
        let problem = match next {
            Ok(raw) => match validate(&raw, scale) {
                Ok(()) => {
                    summary.ratings_read += 1;
                    if source.counts_ratings && summary.ratings_read.is_multiple_of(10_000) {
                        source.progress.set_position(summary.ratings_read);
                    }
                    return Ok(Some(raw));
                }
                Err(message) => format!("line {}: {message}", raw.line),
            },
            Err(ReadError::Malformed {
                path,
                line,
                message,
            }) => format!("{}:{line}: {message}", path.display()),
            Err(other) => return Err(other.into()),
        };
        if !skip_invalid {
            bail!("{problem}; nothing was imported (use --skip-invalid to import the good rows)");
        }
        summary.invalid += 1;
        if summary.invalid_examples.len() < EXAMPLES {
            summary.invalid_examples.push(problem);
        }
    }
    Ok(None)
}

pub async fn import(
    store: &Store,
    database_url: &str,
    path: &Path,
    format: Option<RatingFormat>,
    scale: RatingScale,
    skip_invalid: bool,
) -> anyhow::Result<ImportSummary> {
    let started = Instant::now();
    let mut source = open_input(path, format)?;
    let titles = match &source.titles {
        Some((file, layout)) => read_titles(file, *layout)?,
        None => Vec::new(),
    };
    let mut summary = ImportSummary {
        titles: titles.len() as u64,
        ..ImportSummary::default()
    };
    match store.backend() {
        Backend::Postgres => {
            import_postgres(
                database_url,
                &mut source,
                &titles,
                scale,
                skip_invalid,
                &mut summary,
            )
            .await?
        }
        Backend::Sqlite => {
            import_sqlite(
                store,
                &mut source,
                &titles,
                scale,
                skip_invalid,
                &mut summary,
            )
            .await?
        }
    }
    source.progress.finish_and_clear();
    summary.seconds = started.elapsed().as_secs_f64();
    summary.ratings_per_second = summary.ratings_read as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

/// Escapes a value for COPY's text format.
fn copy_escape(value: &str, out: &mut String) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            ch => out.push(ch),
        }
    }
}

async fn import_postgres(
    url: &str,
    source: &mut ImportInput,
    titles: &[(String, String)],
    scale: RatingScale,
    skip_invalid: bool,
    summary: &mut ImportSummary,
) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("failed to connect to PostgreSQL")?;
    let mut tx = conn.begin().await?;
    tx.execute(
        "CREATE TEMP TABLE import_ratings (line BIGINT, user_id TEXT COLLATE \"C\", item_id TEXT COLLATE \"C\", \
         rating DOUBLE PRECISION) ON COMMIT DROP",
    )
    .await?;
    let mut copy = tx
        .copy_in_raw("COPY import_ratings (line, user_id, item_id, rating) FROM STDIN")
        .await?;
    let mut buffer = String::with_capacity(COPY_CHUNK_BYTES + 1024);
    let mut sequence = 0u64;
    loop {
        let next = match next_rating(source, scale, skip_invalid, summary) {
            Ok(next) => next,
            Err(error) => {
                let _ = copy.abort("bad row").await;
                return Err(error);
            }
        };
        let Some(raw) = next else { break };
        sequence += 1;
        buffer.push_str(&sequence.to_string());
        buffer.push('\t');
        copy_escape(&raw.user, &mut buffer);
        buffer.push('\t');
        copy_escape(&raw.item, &mut buffer);
        buffer.push('\t');
        buffer.push_str(&raw.value.to_string());
        buffer.push('\n');
        if buffer.len() >= COPY_CHUNK_BYTES {
            copy.send(buffer.as_bytes()).await?;
            buffer.clear();
        }
    }
    if !buffer.is_empty() {
        copy.send(buffer.as_bytes()).await?;
    }
    copy.finish().await?;
    source.progress.set_message("merging");
    let now = now_millis();
    // The last line of a repeated (user, item) pair wins. Existing pairs are updated (only when
    // the table has any: on a first import that pass is skipped), then new pairs inserted with a
    // plain INSERT, which is much cheaper than INSERT … ON CONFLICT for a million rows.
    tx.execute("SET LOCAL work_mem = '256MB'").await?;
    const LATEST: &str = "(SELECT DISTINCT ON (user_id, item_id) user_id, item_id, rating FROM import_ratings \
                          ORDER BY user_id, item_id, line DESC) l";
    let has_ratings: bool = sqlx::query("SELECT EXISTS (SELECT 1 FROM ratings)")
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    if has_ratings {
        let update = format!(
            "UPDATE ratings r SET rating = l.rating, updated_at = $1, revision = r.revision + 1 FROM {LATEST} \
             WHERE r.user_id = l.user_id AND r.item_id = l.item_id"
        );
        summary.updated = sqlx::query(AssertSqlSafe(update))
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    let insert = format!(
        "INSERT INTO ratings (user_id, item_id, rating, updated_at) SELECT l.user_id, l.item_id, l.rating, $1 FROM {LATEST} \
         WHERE NOT EXISTS (SELECT 1 FROM ratings r WHERE r.user_id = l.user_id AND r.item_id = l.item_id)"
    );
    summary.inserted = sqlx::query(AssertSqlSafe(insert))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query(
        "INSERT INTO items (item_id, created_at) SELECT DISTINCT item_id, $1 FROM import_ratings ON CONFLICT (item_id) DO NOTHING",
    )
    .bind(now)
    .execute(&mut *tx)
    .await?;
    for chunk in titles.chunks(BATCH_ROWS) {
        let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
        let names: Vec<&str> = chunk.iter().map(|(_, title)| title.as_str()).collect();
        sqlx::query(AssertSqlSafe(
            "INSERT INTO items (item_id, title, created_at) SELECT id, title, $3 FROM UNNEST($1::text[], $2::text[]) AS t(id, title) \
             ON CONFLICT (item_id) DO UPDATE SET title = excluded.title"
                .to_string(),
        ))
        .bind(ids)
        .bind(names)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn import_sqlite(
    store: &Store,
    source: &mut ImportInput,
    titles: &[(String, String)],
    scale: RatingScale,
    skip_invalid: bool,
    summary: &mut ImportSummary,
) -> anyhow::Result<()> {
    let mut tx = store.begin_write().await?;
    let mut batch: Vec<NewRating> = Vec::with_capacity(BATCH_ROWS);
    loop {
        let next = next_rating(source, scale, skip_invalid, summary)?;
        let done = next.is_none();
        if let Some(raw) = next {
            batch.push(NewRating {
                user_id: raw.user,
                item_id: raw.item,
                rating: f64::from(raw.value),
            });
        }
        if batch.len() >= BATCH_ROWS || (done && !batch.is_empty()) {
            let counts = store::upsert_ratings_in(&mut tx, &batch).await?;
            summary.inserted += counts.inserted;
            summary.updated += counts.updated;
            batch.clear();
        }
        if done {
            break;
        }
    }
    store::upsert_titles_in(&mut tx, titles).await?;
    tx.commit().await?;
    Ok(())
}
