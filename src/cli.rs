//! The command line: argument definitions and the commands that train, evaluate, recommend and
//! benchmark from rating files.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;

use crate::app::TrainingRequest;
use crate::config::parse_scale;
use crate::model::{
    self, Dataset, Entry, EpochStats, ItemSimilarity, Order, RatingScale, Recommender, Scratch,
    Side, Similarity, TrainConfig, mae, ranking_metrics, rmse, similar_items_ranking,
};
use crate::model_file::ModelFile;
use crate::readers::{RatingFormat, read_dataset};
use crate::store::RunStatus;

#[derive(Debug, Parser)]
#[command(
    name = "rbm-recommender",
    version,
    about = "Recommendations from a categorical RBM for collaborative filtering"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train on part of a data set and report accuracy and ranking metrics on the rest, as JSON.
    Evaluate(EvaluateArgs),
    /// Train on a whole data set and save the model as safetensors.
    Train(TrainArgs),
    /// Print the top items for one user from a saved model and that user's ratings in a file.
    Recommend(RecommendArgs),
    /// Measure training throughput and full-catalogue scoring latency, as one JSON line.
    Bench(BenchArgs),
    /// Run the HTTP service (embedded SQLite under ./data unless DATABASE_URL is set).
    Serve(crate::config::Settings),
    /// Apply database migrations and exit.
    Migrate(crate::config::Settings),
    /// Load ratings and item titles from MovieLens, Netflix Prize or CSV files into the database.
    Import(ImportArgs),
    /// Seed a synthetic catalogue (or --from a data set), train, serve, and print what to try.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A MovieLens folder (ml-100k, ml-1m, ml-latest…), a Netflix Prize folder (training_set/,
    /// movie_titles.txt), or a ratings file.
    pub path: PathBuf,
    #[arg(long, value_enum)]
    pub format: Option<RatingFormat>,
    /// Import the good rows and report the bad ones instead of stopping at the first.
    #[arg(long)]
    pub skip_invalid: bool,
    #[command(flatten)]
    pub settings: crate::config::Settings,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Import this data set (as `import` would) instead of the synthetic catalogue.
    #[arg(long)]
    pub from: Option<PathBuf>,
    #[command(flatten)]
    pub settings: crate::config::Settings,
}

#[derive(Debug, Args)]
pub struct DataArgs {
    /// Ratings file, or a MovieLens folder (u.data, ratings.dat or ratings.csv).
    #[arg(long)]
    pub ratings: Option<PathBuf>,
    /// File format; detected from the name and first line when omitted.
    #[arg(long, value_enum)]
    pub format: Option<RatingFormat>,
    /// Rating scale as min:max:step (e.g. 0.5:5:0.5); the format's own or inferred when omitted.
    #[arg(long, value_parser = parse_scale)]
    pub scale: Option<RatingScale>,
}

impl DataArgs {
    fn read(&self) -> anyhow::Result<Dataset> {
        let path = self
            .ratings
            .as_ref()
            .context("--ratings PATH is required")?;
        Ok(read_dataset(path, self.format, self.scale)?)
    }
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Training file, with --test instead of a random split of --ratings.
    #[arg(long, requires = "test", conflicts_with = "ratings")]
    pub train: Option<PathBuf>,
    #[arg(long, requires = "train")]
    pub test: Option<PathBuf>,
    #[arg(long, default_value_t = 0.1)]
    pub test_frac: f64,
    /// Conditional RBM only: also count the items being predicted as rated (the paper's variant).
    #[arg(long, requires = "conditional")]
    pub include_test_items: bool,
    #[command(flatten)]
    pub hyper: TrainingRequest,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Where to write the model (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub hyper: TrainingRequest,
}

#[derive(Debug, Args)]
pub struct RecommendArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long)]
    pub user: String,
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// List order; the model's default (by score for a joint RBM) when omitted.
    #[arg(long, value_enum)]
    pub order: Option<OrderArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OrderArg {
    /// log p(rated | ĥ) + β·E[rating] (joint RBM only)
    Score,
    /// Expected rating alone
    ExpectedRating,
}

impl From<OrderArg> for Order {
    fn from(order: OrderArg) -> Self {
        match order {
            OrderArg::Score => Order::Score,
            OrderArg::ExpectedRating => Order::ExpectedRating,
        }
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, default_value_t = 100)]
    pub hidden: usize,
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1)]
    pub cd_steps: usize,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Users to time full-catalogue top-10 scoring for.
    #[arg(long, default_value_t = 2000)]
    pub users: usize,
    /// Instead of training: time a saved model's uncached top-10 in each order it serves, for
    /// users of the data set with their ratings from it.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Evaluate(args) => evaluate(args),
        Command::Train(args) => train(args),
        Command::Recommend(args) => recommend(args),
        Command::Bench(args) => bench(args),
        Command::Serve(settings) => runtime()?.block_on(serve(settings)),
        Command::Migrate(settings) => runtime()?.block_on(migrate(settings)),
        Command::Import(args) => runtime()?.block_on(import(args)),
        Command::Demo(args) => runtime()?.block_on(demo(args)),
    }
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    init_logging(args.settings.log_format);
    let store = open_store(&args.settings).await?;
    let summary = crate::import::import(
        &store,
        &args.settings.database_url(),
        &args.path,
        args.format,
        args.settings.scale,
        args.skip_invalid,
    )
    .await?;
    eprintln!(
        "imported {} ratings ({} new, {} updated) and {} titles in {:.1} s ({:.0} ratings/s){}",
        summary.ratings_read,
        summary.inserted,
        summary.updated,
        summary.titles,
        summary.seconds,
        summary.ratings_per_second,
        if summary.invalid > 0 {
            format!("; skipped {} invalid rows", summary.invalid)
        } else {
            String::new()
        }
    );
    for example in &summary.invalid_examples {
        eprintln!("  skipped {example}");
    }
    println!("{}", json!(summary));
    store.close().await;
    Ok(())
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let settings = args.settings;
    init_logging(settings.log_format);
    let store = open_store(&settings).await?;
    let story = match &args.from {
        Some(path) => {
            let summary = crate::import::import(
                &store,
                &settings.database_url(),
                path,
                None,
                settings.scale,
                false,
            )
            .await?;
            eprintln!(
                "imported {} ratings from {}",
                summary.ratings_read,
                path.display()
            );
            crate::demo::Story::popular(&store).await?
        }
        None => {
            if crate::demo::seed(&store).await? {
                eprintln!("created the synthetic demo catalogue: 60 films in 4 genres, 2000 users");
            }
            crate::demo::Story::synthetic()
        }
    };
    let service = crate::app::Service::start(store, settings.options()).await?;
    if service.serving().current().is_none() {
        eprintln!("training the first model…");
        let training = service.training();
        let run_id = training.start_run(&TrainingRequest::default()).await?;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let run = training.run(run_id).await?;
            match run.status {
                RunStatus::Succeeded => break,
                RunStatus::Failed | RunStatus::Cancelled => {
                    bail!("training failed: {}", run.error.unwrap_or_default())
                }
                RunStatus::Queued | RunStatus::Running => {}
            }
        }
    }
    let app = crate::http::Application::bind(service.clone(), &settings)
        .await
        .context("failed to bind the listen address")?;
    let base = format!("http://{}", app.local_addr()?);
    eprintln!("{}", crate::demo::walkthrough(&base, &story));
    app.run_until_stopped().await?;
    service.close().await;
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logging(format: crate::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        crate::config::LogFormat::Json => builder.json().try_init(),
        crate::config::LogFormat::Pretty => builder.try_init(),
    };
}

async fn open_store(settings: &crate::config::Settings) -> anyhow::Result<crate::store::Store> {
    let url = settings.database_url();
    let store = crate::store::Store::connect(&url, settings.max_connections)
        .await
        .with_context(|| format!("failed to open the database ({:?})", store_label(&url)))?;
    store
        .migrate()
        .await
        .context("failed to migrate the database")?;
    Ok(store)
}

/// The URL without credentials, for messages.
fn store_label(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_string(),
    }
}

async fn serve(settings: crate::config::Settings) -> anyhow::Result<()> {
    init_logging(settings.log_format);
    let store = open_store(&settings).await?;
    tracing::info!(database = %store_label(&settings.database_url()), "database ready");
    let retrain_every = settings.retrain_every;
    let service = crate::app::Service::start(store, settings.options()).await?;
    if let Some(every) = retrain_every {
        service.training().spawn_periodic(every);
    }
    let app = crate::http::Application::bind(service.clone(), &settings)
        .await
        .context("failed to bind the listen address")?;
    tracing::info!(address = %app.local_addr()?, simd = model::isa().name(), "listening");
    app.run_until_stopped().await?;
    service.close().await;
    Ok(())
}

async fn migrate(settings: crate::config::Settings) -> anyhow::Result<()> {
    init_logging(settings.log_format);
    let store = open_store(&settings).await?;
    eprintln!("migrated {}", store_label(&settings.database_url()));
    store.close().await;
    Ok(())
}

/// Progress bars on stderr, one per RBM, showing epoch and training/validation RMSE.
struct Progress {
    bars: MultiProgress,
    user: ProgressBar,
    item: Option<ProgressBar>,
}

impl Progress {
    fn new(config: &TrainConfig) -> Self {
        let bars = MultiProgress::new();
        let style = ProgressStyle::with_template(
            "{prefix:>5} RBM [{bar:30}] epoch {pos}/{len} {msg} ({elapsed})",
        )
        .expect("valid template")
        .progress_chars("=> ");
        let bar = |name: &str, epochs: usize| {
            let bar = bars.add(
                ProgressBar::new(epochs as u64)
                    .with_style(style.clone())
                    .with_prefix(name.to_string()),
            );
            bar.tick();
            bar
        };
        let user = bar("user", config.user.epochs);
        let item = config.item.as_ref().map(|p| bar("item", p.epochs));
        Self { bars, user, item }
    }

    fn report(&self, side: Side, stats: &EpochStats) -> ControlFlow<()> {
        let bar = match side {
            Side::User => &self.user,
            Side::Item => self.item.as_ref().unwrap_or(&self.user),
        };
        bar.set_position(stats.epoch as u64);
        let valid = stats
            .valid_rmse
            .map(|v| format!(" valid RMSE {v:.4}"))
            .unwrap_or_default();
        let ndcg = stats
            .valid_ndcg
            .map(|n| format!(" valid NDCG@10 {n:.4}"))
            .unwrap_or_default();
        let message = format!("train RMSE {:.4}{valid}{ndcg}", stats.train_rmse);
        // Bars draw only on a terminal; a log gets one line per epoch instead.
        if bar.is_hidden() {
            eprintln!(
                "{side:?} RBM epoch {}/{} {message} ({:.1} s)",
                stats.epoch, stats.epochs, stats.seconds
            );
        }
        bar.set_message(message);
        ControlFlow::Continue(())
    }

    fn finish(self) {
        self.user.finish();
        if let Some(item) = self.item {
            item.finish();
        }
        let _ = self.bars.clear();
    }
}

fn train_with_progress(
    data: &Dataset,
    config: &TrainConfig,
) -> anyhow::Result<crate::model::Trained> {
    let progress = Progress::new(config);
    let trained = Recommender::train(data, config, |side, stats| progress.report(side, stats));
    progress.finish();
    Ok(trained?)
}

/// Largest catalogue whose similar-item measures `evaluate` compares (its JSON has null beyond).
const SIMILAR_ITEMS_MAX_CATALOGUE: usize = 10_000;

fn evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    let split = match (&args.train, &args.test) {
        (Some(train), Some(test)) => {
            let train = read_dataset(train, args.data.format, args.data.scale)?;
            let test = read_dataset(test, args.data.format, Some(train.scale))?;
            train.align(&test)
        }
        _ => args.data.read()?.split(args.test_frac, args.hyper.seed())?,
    };
    let mut test = split.test.clone();
    test.sort_by_key(|r| (r.user, r.item));
    let entries: Vec<Entry> = test.iter().map(|r| r.entry()).collect();
    let data = &split.train;
    let config = args.hyper.config(data.ratings.len(), data.users.len())?;
    let trained = train_with_progress(data, &config)?;
    let model = &trained.recommender;
    let scale = data.scale;
    let known = data.user_matrix();

    let predictions = if args.include_test_items {
        crate::model::predict(model.user_rbm(), &known, &entries, scale, true)
    } else {
        model.predict(&known, &test)
    };
    let user_only = crate::model::predict(model.user_rbm(), &known, &entries, scale, false);
    let ranking_in = |order: Order| {
        ranking_metrics(&known, &entries, scale, 10, |user, out| {
            let (items, classes) = known.row(user as usize);
            let mut expected = vec![0.0f32; out.len()];
            let mut scratch = Scratch::default();
            model.scores(
                order,
                Some(user),
                items,
                classes,
                &mut scratch,
                out,
                &mut expected,
            );
        })
    };
    let served_order = model.default_order();
    let ranking = ranking_in(served_order);
    let by_expected = match served_order {
        Order::ExpectedRating => ranking,
        Order::Score => ranking_in(Order::ExpectedRating),
    };
    let popularity_scores: Vec<f32> = known.col_counts().iter().map(|&c| c as f32).collect();
    let popularity = ranking_metrics(&known, &entries, scale, 10, |_, out| {
        out.copy_from_slice(&popularity_scores)
    });

    // The comparison costs a D×D matrix and, for fold-in, D catalogue passes: bounded here.
    let compare_similar = model.items().len() <= SIMILAR_ITEMS_MAX_CATALOGUE;
    let similar: serde_json::Map<String, serde_json::Value> = Similarity::ALL
        .into_iter()
        .filter(|_| compare_similar)
        .filter_map(|kind| {
            let similarity = ItemSimilarity::new(model, kind)?;
            let metrics = similar_items_ranking(&known, &entries, scale, 10, |item, out| {
                similarity.to_item(model, item, &mut Scratch::default(), out)
            });
            Some((
                serde_json::to_value(kind).ok()?.as_str()?.to_string(),
                json!({"precision_at_10": metrics.precision, "ndcg_at_10": metrics.ndcg}),
            ))
        })
        .collect();

    let epochs =
        trained.user_fit.history.len() + trained.item_fit.as_ref().map_or(0, |f| f.history.len());
    let train_seconds =
        trained.user_fit.train_seconds + trained.item_fit.as_ref().map_or(0.0, |f| f.train_seconds);
    let mut report = json!({
        "simd": model::isa().name(),
        "rmse": rmse(&predictions, &entries, scale),
        "mae": mae(&predictions, &entries, scale),
        "precision_at_10": ranking.precision,
        "recall_at_10": ranking.recall,
        "ndcg_at_10": ranking.ndcg,
        "popularity_precision_at_10": popularity.precision,
        "popularity_recall_at_10": popularity.recall,
        "popularity_ndcg_at_10": popularity.ndcg,
        "order": served_order,
        "ranking_weight": model.ranking_weight(),
        "expected_rating_precision_at_10": by_expected.precision,
        "expected_rating_recall_at_10": by_expected.recall,
        "expected_rating_ndcg_at_10": by_expected.ndcg,
        "ranking_users": ranking.users,
        "similar_items_by": Similarity::SERVED,
        "similar_items": compare_similar.then_some(similar),
        "rmse_user_based": rmse(&user_only, &entries, scale),
        "blend_weight": model.blend_weight(),
        "valid_rmse": trained.valid_rmse,
        "epochs": epochs,
        "best_epoch": trained.user_fit.best_epoch,
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / epochs.max(1) as f64,
        "n_train": data.ratings.len(),
        "n_test": test.len(),
        "n_test_dropped": split.dropped,
        "hidden": config.user.hidden,
        "k": scale.classes(),
        "params": config,
    });
    if let Some(item_fit) = &trained.item_fit {
        let item_only_model = model.clone().with_blend_weight(0.0);
        let item_only = item_only_model.predict(&known, &test);
        report["rmse_item_based"] = json!(rmse(&item_only, &entries, scale));
        report["best_epoch_item_based"] = json!(item_fit.best_epoch);
    }
    println!("{report}");
    Ok(())
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let data = args.data.read()?;
    let config = args.hyper.config(data.ratings.len(), data.users.len())?;
    let trained = train_with_progress(&data, &config)?;
    let metrics = json!({
        "valid_rmse": trained.valid_rmse,
        "best_epoch": trained.user_fit.best_epoch,
        "train_seconds": trained.user_fit.train_seconds + trained.item_fit.as_ref().map_or(0.0, |f| f.train_seconds),
        "n_train": data.ratings.len(),
    });
    let file = ModelFile {
        recommender: trained.recommender,
        config,
        metrics: metrics.clone(),
    };
    file.save(&args.out)?;
    eprintln!("saved model to {}", args.out.display());
    println!("{}", json!({"model": args.out, "metrics": metrics}));
    Ok(())
}

fn recommend(args: RecommendArgs) -> anyhow::Result<()> {
    let model = ModelFile::load(&args.model)?.recommender;
    let data = args.data.read()?;
    let Some(user_in_file) = data.users.get(&args.user) else {
        bail!(
            "user {:?} has no ratings in {}",
            args.user,
            args.data.ratings.unwrap_or_default().display()
        );
    };
    let rows = rows_in_model(&model, &data);
    let (items, classes) = &rows[user_in_file as usize];
    let order = args.order.map_or(model.default_order(), Order::from);
    let top = model.top_n(
        order,
        model.users().get(&args.user),
        items,
        classes,
        args.limit,
        |a, b| a.cmp(&b),
        &mut Scratch::default(),
    );
    let items_json: Vec<_> = top
        .iter()
        .map(|r| {
            json!({
                "item_id": model.items().id(r.item),
                "score": r.score,
                "expected_rating": r.expected_rating,
            })
        })
        .collect();
    println!(
        "{}",
        json!({"user_id": args.user, "order": order, "items": items_json})
    );
    Ok(())
}

/// Every user's ratings from `data` in the model's item indices and classes, sorted by item, by
/// the data set's user index; items the model never saw, and values off its scale, are skipped.
fn rows_in_model(model: &Recommender, data: &Dataset) -> Vec<(Vec<u32>, Vec<u8>)> {
    let mut rows: Vec<Vec<(&str, f32)>> = vec![Vec::new(); data.users.len()];
    for r in &data.ratings {
        rows[r.user as usize].push((data.items.id(r.item), data.scale.value_of(r.class)));
    }
    rows.into_iter().map(|row| model.rated(row)).collect()
}

/// Microseconds at the 50th and 99th percentiles of `model`'s uncached top-10 in `order` over
/// `count` users, the n-th of them given by `user(n)`: its ratings and its index in the
/// item-based RBM.
fn top10_latency<'a>(
    model: &Recommender,
    order: Order,
    count: usize,
    user: impl Fn(usize) -> (&'a [u32], &'a [u8], Option<u32>),
) -> (f64, f64) {
    let mut scratch = Scratch::default();
    let mut latencies: Vec<f64> = (0..count.max(1))
        .map(|n| {
            let (items, classes, in_model) = user(n);
            let started = Instant::now();
            let top = model.top_n(
                order,
                in_model,
                items,
                classes,
                10,
                |a, b| a.cmp(&b),
                &mut scratch,
            );
            std::hint::black_box(top);
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    (percentile(0.5), percentile(0.99))
}

/// `bench --model`: a saved model's uncached top-10 latency in each order, on the same users.
fn bench_model(path: &std::path::Path, args: &BenchArgs) -> anyhow::Result<()> {
    let model = ModelFile::load(path)?.recommender;
    let data = args.data.read()?;
    let rows = rows_in_model(&model, &data);
    let mut orders = serde_json::Map::new();
    let served = [Order::Score, Order::ExpectedRating]
        .into_iter()
        .filter(|&o| o == Order::ExpectedRating || model.default_order() == Order::Score);
    for order in served {
        let (p50, p99) = top10_latency(&model, order, args.users, |n| {
            let user = (n * 7919) % rows.len();
            let (items, classes) = &rows[user];
            let in_model = model.users().get(data.users.id(user as u32));
            (items, classes, in_model)
        });
        orders.insert(
            serde_json::to_value(order)?
                .as_str()
                .unwrap_or_default()
                .to_string(),
            json!({"top10_p50_us": p50, "top10_p99_us": p99}),
        );
    }
    println!(
        "{}",
        json!({
            "model": path,
            "users": rows.len(),
            "items": model.items().len(),
            "hidden": model.user_rbm().hidden(),
            "hidden_item_based": model.item_side().as_ref().map(|s| s.rbm.hidden()),
            "default_order": model.default_order(),
            "uncached": orders,
        })
    );
    Ok(())
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.model {
        return bench_model(path, &args);
    }
    let data = args.data.read()?;
    let params = crate::model::RbmParams {
        hidden: args.hidden,
        epochs: args.epochs,
        cd_steps: args.cd_steps,
        threads: args.threads.unwrap_or(0),
        patience: 0,
        // The rating-only CD kernel, which the flops figure's cost model describes; the joint
        // RBM's catalogue-wide draw shows in `evaluate`'s train_seconds.
        choice: false,
        ..TrainConfig::recommended(data.ratings.len(), data.users.len()).user
    };
    let matrix = data.user_matrix();
    let fit = params
        .clone()
        .check()?
        .fit(&matrix, data.scale, &[], |_| ControlFlow::Continue(()))?;
    let mut epoch_seconds: Vec<f64> = fit.history.iter().map(|s| s.seconds).collect();
    epoch_seconds.sort_by(f64::total_cmp);
    let seconds_per_epoch = epoch_seconds[epoch_seconds.len() / 2];
    let (k, m) = (data.scale.classes() as f64, args.hidden as f64);
    let flops_per_epoch = 2.0 * (k + 3.0) * m * matrix.nnz() as f64;

    let model = Recommender::new(
        data.scale,
        data.users.clone(),
        data.items.clone(),
        fit.rbm,
        None,
        1.0,
        None,
    );
    let n_users = matrix.n_rows();
    let (p50, p99) = top10_latency(&model, Order::ExpectedRating, args.users, |n| {
        let (items, classes) = matrix.row((n * 7919) % n_users);
        (items, classes, None)
    });
    println!(
        "{}",
        json!({
            "n_ratings": matrix.nnz(),
            "users": n_users,
            "items": data.items.len(),
            "hidden": args.hidden,
            "k": data.scale.classes(),
            "cd_steps": args.cd_steps,
            "simd": model::isa().name(),
            "threads": if params.threads == 0 { rayon::current_num_threads() } else { params.threads },
            "epochs": fit.history.len(),
            "seconds_per_epoch": seconds_per_epoch,
            "ratings_epochs_per_second": matrix.nnz() as f64 / seconds_per_epoch,
            "gflops": flops_per_epoch / seconds_per_epoch / 1e9,
            "score_top10_p50_us": p50,
            "score_top10_p99_us": p99,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
