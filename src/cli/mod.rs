//! The command line: argument definitions, and the commands that run the service, import data,
//! and train, evaluate, recommend and benchmark from rating files. Imported by `main` only.

mod bench;
mod evaluate;
mod generate;
mod saved;
mod service;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::config::parse_scale;
use crate::model::{Dataset, EpochStats, RatingScale, Recommender, Side, TrainConfig};
use crate::readers::{RatingFormat, read_dataset};

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
    Evaluate(evaluate::EvaluateArgs),
    /// Train on a whole data set and save the model as safetensors.
    Train(saved::TrainArgs),
    /// Print the top items for one user from a saved model and that user's ratings in a file.
    Recommend(saved::RecommendArgs),
    /// Measure training throughput and full-catalogue scoring latency, as one JSON line.
    Bench(bench::BenchArgs),
    /// Run the HTTP service (embedded SQLite under ./data unless DATABASE_URL is set).
    Serve(crate::config::Settings),
    /// Apply database migrations and exit.
    Migrate(crate::config::Settings),
    /// Load ratings and item titles from MovieLens, Netflix Prize or CSV files into the database.
    Import(service::ImportArgs),
    /// Write a synthetic data set (ratings.csv, movies.csv) of a public set's size or any size.
    Generate(generate::GenerateArgs),
    /// Seed a synthetic catalogue (or --from a data set), train, serve, and print what to try.
    Demo(service::DemoArgs),
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
    pub(crate) fn read(&self) -> anyhow::Result<Dataset> {
        let path = self
            .ratings
            .as_ref()
            .context("--ratings PATH is required")?;
        Ok(read_dataset(path, self.format, self.scale)?)
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Evaluate(args) => evaluate::evaluate(args),
        Command::Train(args) => saved::train(args),
        Command::Recommend(args) => saved::recommend(args),
        Command::Bench(args) => bench::bench(args),
        Command::Serve(settings) => runtime()?.block_on(service::serve(settings)),
        Command::Migrate(settings) => runtime()?.block_on(service::migrate(settings)),
        Command::Import(args) => runtime()?.block_on(service::import(args)),
        Command::Generate(args) => generate::generate(args),
        Command::Demo(args) => runtime()?.block_on(service::demo(args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
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

    fn report(&self, side: Side, stats: &EpochStats) {
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
    }

    fn finish(self) {
        self.user.finish();
        if let Some(item) = self.item {
            item.finish();
        }
        let _ = self.bars.clear();
    }
}

/// Trains with a progress bar per RBM; with `plot`, writes the RMSE curves there as SVG.
pub(crate) fn train_with_progress(
    data: &Dataset,
    config: &TrainConfig,
    plot: Option<&std::path::Path>,
) -> anyhow::Result<crate::model::Trained> {
    let progress = Progress::new(config);
    // Nothing stops a run from the command line but Ctrl-C, which ends the process.
    let never = std::sync::atomic::AtomicBool::new(false);
    let (mut user, mut item) = (Vec::new(), Vec::new());
    let trained = Recommender::train(data, config, &never, |side, stats| {
        progress.report(side, stats);
        let point = crate::plot::EpochPoint {
            epoch: stats.epoch,
            train_rmse: stats.train_rmse,
            valid_rmse: stats.valid_rmse,
        };
        match side {
            Side::User => user.push(point),
            Side::Item => item.push(point),
        }
    });
    progress.finish();
    if let Some(path) = plot {
        let svg = crate::plot::training_curves(&user, &item)?;
        std::fs::write(path, svg)
            .with_context(|| format!("cannot write the plot to {}", path.display()))?;
    }
    Ok(trained?)
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
