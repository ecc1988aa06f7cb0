//! The commands that work on the database: serve, migrate, import, demo.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use crate::app::TrainingRequest;
use crate::model;
use crate::readers::RatingFormat;
use crate::store::RunStatus;

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

pub(super) async fn import(args: ImportArgs) -> anyhow::Result<()> {
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

pub(super) async fn demo(args: DemoArgs) -> anyhow::Result<()> {
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
    eprintln!(
        "{}",
        crate::demo::walkthrough(&base, &story, settings.admin_token.is_some())
    );
    app.run_until_stopped().await?;
    service.close().await;
    Ok(())
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

pub(super) async fn serve(settings: crate::config::Settings) -> anyhow::Result<()> {
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

pub(super) async fn migrate(settings: crate::config::Settings) -> anyhow::Result<()> {
    init_logging(settings.log_format);
    let store = open_store(&settings).await?;
    eprintln!("migrated {}", store_label(&settings.database_url()));
    store.close().await;
    Ok(())
}
