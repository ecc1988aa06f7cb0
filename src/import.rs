//! `rbm-recommender import`: ratings and item titles from MovieLens, Netflix Prize or CSV files into
//! the configured database, streamed in bounded memory. PostgreSQL loads through COPY into a staging
//! table and one upsert; SQLite through batched statements. By default the whole import is one
//! transaction and the first bad row stops it; `--skip-invalid` imports the good rows instead.

use std::collections::HashSet;
use std::fmt::Write as _;
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
    /// The importing process's peak resident memory (Linux).
    pub peak_rss_mib: Option<f64>,
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
    summary.peak_rss_mib = crate::metrics::peak_rss_mib();
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

/// The distinct user and item ids of an import, gathered while streaming: a few hundred
/// thousand strings even for 100 M ratings, and far cheaper than a DISTINCT over the rows.
#[derive(Default)]
struct Seen {
    users: HashSet<String>,
    items: HashSet<String>,
}

impl Seen {
    fn add(&mut self, raw: &RawRating) {
        if !self.users.contains(&raw.user) {
            self.users.insert(raw.user.clone());
        }
        if !self.items.contains(&raw.item) {
            self.items.insert(raw.item.clone());
        }
    }
}

/// What a COPY row holds beside the user, item and value.
enum CopyRow<'a> {
    /// The line number first (the staging table's).
    Numbered,
    /// This text last (the table's own columns after the value).
    Ending(&'a str),
}

/// Streams the good ratings as COPY text rows laid out as `row` says into `copy`, noting their
/// ids in `seen`.
async fn send_rows(
    copy: &mut sqlx::postgres::PgCopyIn<&mut PgConnection>,
    source: &mut ImportInput,
    scale: RatingScale,
    skip_invalid: bool,
    summary: &mut ImportSummary,
    seen: &mut Seen,
    row: CopyRow<'_>,
) -> anyhow::Result<()> {
    let suffix = match row {
        CopyRow::Numbered => "",
        CopyRow::Ending(text) => text,
    };
    let mut buffer = String::with_capacity(COPY_CHUNK_BYTES + 1024);
    loop {
        let Some(raw) = next_rating(source, scale, skip_invalid, summary)? else {
            break;
        };
        seen.add(&raw);
        if matches!(row, CopyRow::Numbered) {
            let _ = write!(buffer, "{}\t", summary.ratings_read);
        }
        copy_escape(&raw.user, &mut buffer);
        buffer.push('\t');
        copy_escape(&raw.item, &mut buffer);
        let _ = writeln!(buffer, "\t{}{suffix}", raw.value);
        if buffer.len() >= COPY_CHUNK_BYTES {
            copy.send(buffer.as_bytes()).await?;
            buffer.clear();
        }
    }
    if !buffer.is_empty() {
        copy.send(buffer.as_bytes()).await?;
    }
    Ok(())
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
    let now = now_millis();
    let mut seen = Seen::default();
    tx.execute("SET LOCAL work_mem = '256MB'").await?;
    tx.execute("SET LOCAL maintenance_work_mem = '1GB'").await?;
    // Other writers wait until this import commits; readers go on, except during a first
    // import, whose ALTER TABLE holds them too (`load_empty_postgres`).
    tx.execute("LOCK TABLE ratings IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    let has_ratings: bool = sqlx::query("SELECT EXISTS (SELECT 1 FROM ratings)")
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    if has_ratings {
        merge_postgres(
            &mut tx,
            source,
            scale,
            skip_invalid,
            summary,
            &mut seen,
            now,
        )
        .await?;
    } else {
        load_empty_postgres(
            &mut tx,
            source,
            scale,
            skip_invalid,
            summary,
            &mut seen,
            now,
        )
        .await?;
    }
    source.progress.set_message("items");
    let items: Vec<String> = seen.items.into_iter().collect();
    for chunk in items.chunks(BATCH_ROWS) {
        sqlx::query(
            "INSERT INTO items (item_id, created_at) SELECT id, $2 FROM UNNEST($1::text[]) AS t(id) \
             ON CONFLICT (item_id) DO NOTHING",
        )
        .bind(chunk)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    for chunk in titles.chunks(BATCH_ROWS) {
        let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
        let names: Vec<&str> = chunk.iter().map(|(_, title)| title.as_str()).collect();
        sqlx::query(
            "INSERT INTO items (item_id, title, created_at) SELECT id, title, $3 FROM UNNEST($1::text[], $2::text[]) AS t(id, title) \
             ON CONFLICT (item_id) DO UPDATE SET title = excluded.title",
        )
        .bind(ids)
        .bind(names)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    source.progress.set_message("committing");
    tx.commit().await?;
    Ok(())
}

/// Into a table that has ratings: COPY into a staging table, then update the pairs already
/// stored and insert the new ones (the last line of a repeated pair wins). The triggers keep the
/// users' revisions.
async fn merge_postgres(
    tx: &mut PgConnection,
    source: &mut ImportInput,
    scale: RatingScale,
    skip_invalid: bool,
    summary: &mut ImportSummary,
    seen: &mut Seen,
    now: i64,
) -> anyhow::Result<()> {
    tx.execute(
        "CREATE TEMP TABLE import_ratings (line BIGINT, user_id TEXT COLLATE \"C\", item_id TEXT COLLATE \"C\", \
         rating DOUBLE PRECISION) ON COMMIT DROP",
    )
    .await?;
    let mut copy = tx
        .copy_in_raw("COPY import_ratings (line, user_id, item_id, rating) FROM STDIN")
        .await?;
    if let Err(error) = send_rows(
        &mut copy,
        source,
        scale,
        skip_invalid,
        summary,
        seen,
        CopyRow::Numbered,
    )
    .await
    {
        let _ = copy.abort("bad row").await;
        return Err(error);
    }
    copy.finish().await?;
    source.progress.set_message("merging");
    const LATEST: &str = "(SELECT DISTINCT ON (user_id, item_id) user_id, item_id, rating FROM import_ratings \
                          ORDER BY user_id, item_id, line DESC) l";
    let update = format!(
        "UPDATE ratings r SET rating = l.rating, updated_at = $1, revision = r.revision + 1 FROM {LATEST} \
         WHERE r.user_id = l.user_id AND r.item_id = l.item_id"
    );
    summary.updated = sqlx::query(AssertSqlSafe(update))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let insert = format!(
        "INSERT INTO ratings (user_id, item_id, rating, updated_at) SELECT l.user_id, l.item_id, l.rating, $1 FROM {LATEST} \
         WHERE NOT EXISTS (SELECT 1 FROM ratings r WHERE r.user_id = l.user_id AND r.item_id = l.item_id)"
    );
    summary.inserted = sqlx::query(AssertSqlSafe(insert))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    Ok(())
}

/// Into an empty table (a first import): the primary key and the insert trigger go for the load
/// and come back after it, all inside the import's transaction, so rows are COPYed straight into
/// the table and the key is built once, by a sort, instead of row by row. If the file repeats a
/// (user, item) pair the key cannot be built; the earlier rows of each pair are then deleted
/// (COPY appends in line order, so the last line has the highest ctid) and it is built again.
/// The users' revisions are written once from the users seen.
async fn load_empty_postgres(
    tx: &mut PgConnection,
    source: &mut ImportInput,
    scale: RatingScale,
    skip_invalid: bool,
    summary: &mut ImportSummary,
    seen: &mut Seen,
    now: i64,
) -> anyhow::Result<()> {
    tx.execute(
        "ALTER TABLE ratings DROP CONSTRAINT ratings_pkey; \
         ALTER TABLE ratings DISABLE TRIGGER ratings_inserted",
    )
    .await?;
    let mut copy = tx
        .copy_in_raw("COPY ratings (user_id, item_id, rating, updated_at) FROM STDIN")
        .await?;
    let suffix = format!("\t{now}");
    if let Err(error) = send_rows(
        &mut copy,
        source,
        scale,
        skip_invalid,
        summary,
        seen,
        CopyRow::Ending(&suffix),
    )
    .await
    {
        let _ = copy.abort("bad row").await;
        return Err(error);
    }
    let copied = copy.finish().await?;
    source.progress.set_message("building the primary key");
    const KEY: &str =
        "ALTER TABLE ratings ADD CONSTRAINT ratings_pkey PRIMARY KEY (user_id, item_id)";
    tx.execute("SAVEPOINT build_key").await?;
    let mut repeated = 0;
    if let Err(error) = tx.execute(KEY).await {
        let duplicate = error
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "23505");
        if !duplicate {
            return Err(error.into());
        }
        tx.execute("ROLLBACK TO SAVEPOINT build_key").await?;
        source.progress.set_message("dropping repeated pairs");
        repeated = tx
            .execute(
                "DELETE FROM ratings a USING ratings b \
                 WHERE a.user_id = b.user_id AND a.item_id = b.item_id AND a.ctid < b.ctid",
            )
            .await?
            .rows_affected();
        tx.execute(KEY).await?;
    }
    tx.execute("ALTER TABLE ratings ENABLE TRIGGER ratings_inserted")
        .await?;
    summary.inserted = copied - repeated;
    summary.updated = repeated;
    // Table statistics for the planner and for `Store::data_size`'s estimate; a sample, so
    // about a second at any size.
    tx.execute("ANALYZE ratings").await?;
    source.progress.set_message("user revisions");
    // Users whose ratings were all deleted before keep a row here: their revision moves on.
    let users: Vec<String> = std::mem::take(&mut seen.users).into_iter().collect();
    for chunk in users.chunks(BATCH_ROWS) {
        sqlx::query(
            "INSERT INTO user_revisions (user_id, revision) SELECT id, 1 FROM UNNEST($1::text[]) AS t(id) \
             ORDER BY id ON CONFLICT (user_id) DO UPDATE SET revision = user_revisions.revision + 1",
        )
        .bind(chunk)
        .execute(&mut *tx)
        .await?;
    }
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
    let empty = sqlx::query("SELECT COUNT(*) FROM (SELECT 1 FROM ratings LIMIT 1) AS one")
        .fetch_one(&mut *tx)
        .await?
        .try_get::<i64, _>(0)?
        == 0;
    if empty {
        // A first import: rows go into a staging table without any index, then into `ratings`
        // in key order, so that its primary key grows at its end instead of at random places
        // (user ids "1", "2", …, "10" are not in key order); the per-row revision trigger goes
        // for the load (and comes back, inside the transaction), and each user's revision is
        // written once at the end.
        tx.execute("DROP TRIGGER ratings_inserted").await?;
        // The key-order pass is an external sort, which SQLite gives as much memory as the page
        // cache, 2 MB by default: 64 MB cut a 10 M-rating import from 33 s to 29 s, at 166 MB
        // peak RSS. (The connection goes back to the pool with it.)
        tx.execute("PRAGMA cache_size = -65536").await?;
        tx.execute("CREATE TEMP TABLE import_ratings (user_id TEXT, item_id TEXT, rating REAL)")
            .await?;
    }
    let mut seen = Seen::default();
    let mut batch: Vec<NewRating> = Vec::with_capacity(BATCH_ROWS);
    loop {
        let next = next_rating(source, scale, skip_invalid, summary)?;
        let done = next.is_none();
        if let Some(raw) = next {
            if empty {
                seen.add(&raw);
            }
            batch.push(NewRating {
                user_id: raw.user,
                item_id: raw.item,
                rating: f64::from(raw.value),
            });
        }
        if batch.len() >= BATCH_ROWS || (done && !batch.is_empty()) {
            if empty {
                stage_sqlite(&mut tx, &mut batch).await?;
            } else {
                let counts = store::upsert_ratings_in(&mut tx, &batch).await?;
                summary.inserted += counts.inserted;
                summary.updated += counts.updated;
            }
            batch.clear();
        }
        if done {
            break;
        }
    }
    if empty {
        source.progress.set_message("sorting into the table");
        // The last line of a repeated pair is staged last and so written last. `WHERE true`
        // tells SQLite's parser that ON CONFLICT belongs to the INSERT.
        sqlx::query(
            "INSERT INTO ratings (user_id, item_id, rating, updated_at) \
             SELECT user_id, item_id, rating, $1 FROM import_ratings WHERE true \
             ORDER BY user_id, item_id, rowid \
             ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating",
        )
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        tx.execute("DROP TABLE import_ratings").await?;
        source.progress.set_message("user revisions");
        tx.execute(SQLITE_INSERT_TRIGGER).await?;
        // The table was empty, so rows took rowids 1, 2, …, and a repeated pair updated its row
        // in place: the largest rowid is the count, without COUNT(*)'s scan of 100 M keys.
        summary.inserted = sqlx::query("SELECT COALESCE(MAX(rowid), 0) FROM ratings")
            .fetch_one(&mut *tx)
            .await?
            .try_get::<i64, _>(0)? as u64;
        summary.updated = summary.ratings_read - summary.inserted;
        let users: Vec<&str> = seen.users.iter().map(String::as_str).collect();
        store::bump_revisions_in(&mut tx, &users).await?;
        let mut items: Vec<&str> = seen.items.iter().map(String::as_str).collect();
        items.sort_unstable();
        store::insert_items_in(&mut tx, &items, now_millis()).await?;
    }
    store::upsert_titles_in(&mut tx, titles).await?;
    source.progress.set_message("committing");
    tx.commit().await?;
    Ok(())
}

/// Appends ratings to the staging table of a first SQLite import.
async fn stage_sqlite(
    conn: &mut sqlx::AnyConnection,
    batch: &mut Vec<NewRating>,
) -> anyhow::Result<()> {
    let mut rows = batch.drain(..).peekable();
    while rows.peek().is_some() {
        let chunk: Vec<NewRating> = rows.by_ref().take(STAGE_ROWS).collect();
        let values = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!("INSERT INTO import_ratings (user_id, item_id, rating) VALUES {values}");
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for r in chunk {
            query = query.bind(r.user_id).bind(r.item_id).bind(r.rating);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Rows per staging INSERT: 3 parameters each, far below SQLite's limit of 32,766.
const STAGE_ROWS: usize = 1000;

/// Migration 0003's insert trigger, recreated after a first import.
const SQLITE_INSERT_TRIGGER: &str = "CREATE TRIGGER ratings_inserted AFTER INSERT ON ratings BEGIN \
    INSERT INTO user_revisions (user_id, revision) VALUES (NEW.user_id, 1) \
    ON CONFLICT (user_id) DO UPDATE SET revision = revision + 1; END";
