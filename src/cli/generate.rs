//! `generate`: a synthetic data set of a preset's or the given size, with a progress bar.

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::parse_scale;
use crate::generate::{Preset, Shape};
use crate::model::{DEFAULT_SEED, RatingScale};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Folder to write ratings.csv and movies.csv into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// The shape of a public data set; --users, --items, --ratings and --scale override it.
    #[arg(long, value_enum, default_value = "ml-1m")]
    pub preset: Preset,
    #[arg(long)]
    pub users: Option<usize>,
    #[arg(long)]
    pub items: Option<usize>,
    #[arg(long)]
    pub ratings: Option<u64>,
    /// Rating scale as min:max:step.
    #[arg(long, value_parser = parse_scale)]
    pub scale: Option<RatingScale>,
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
}

pub(super) fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let preset = args.preset.shape(args.seed);
    let shape = Shape {
        users: args.users.unwrap_or(preset.users),
        items: args.items.unwrap_or(preset.items),
        ratings: args.ratings.unwrap_or(preset.ratings),
        scale: args.scale.unwrap_or(preset.scale),
        seed: args.seed,
    };
    let bar = ProgressBar::new(shape.ratings).with_style(
        ProgressStyle::with_template(
            "generating [{bar:30}] {human_pos}/{human_len} ratings, {per_sec} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let summary = crate::generate::generate(&shape, &args.out, |n| bar.set_position(n))?;
    bar.finish_and_clear();
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
