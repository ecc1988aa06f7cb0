use clap::Parser;
use rbm_recommender::cli::{Cli, run};

fn main() -> anyhow::Result<()> {
    run(Cli::parse())
}
