//! `train` saves a model file; `recommend` reads one.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, ValueEnum};
use serde_json::json;

use super::{DataArgs, train_with_progress};
use crate::app::TrainingRequest;
use crate::model::{Dataset, Order, Recommender, Scratch};
use crate::model_file::ModelFile;

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Where to write the model (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub hyper: TrainingRequest,
    /// Also draw the train and validation RMSE per epoch of each RBM into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
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

pub(super) fn train(args: TrainArgs) -> anyhow::Result<()> {
    let data = args.data.read()?;
    let config = args.hyper.config(data.shape())?;
    let trained = train_with_progress(&data, &config, args.plot.as_deref())?;
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

pub(super) fn recommend(args: RecommendArgs) -> anyhow::Result<()> {
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
pub(super) fn rows_in_model(model: &Recommender, data: &Dataset) -> Vec<(Vec<u32>, Vec<u8>)> {
    let mut rows: Vec<Vec<(&str, f32)>> = vec![Vec::new(); data.users.len()];
    for r in &data.ratings {
        rows[r.user as usize].push((data.items.id(r.item), data.scale.value_of(r.class)));
    }
    rows.into_iter().map(|row| model.rated(row)).collect()
}
