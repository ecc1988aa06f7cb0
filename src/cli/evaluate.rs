//! `evaluate`: train on part of a data set and measure the rest.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{DataArgs, train_with_progress};
use crate::app::TrainingRequest;
use crate::model::{
    self, Entry, ItemSimilarity, Order, Scratch, Similarity, mae, ranking_metrics, rmse,
    similar_items_ranking,
};
use crate::readers::read_dataset;

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
    /// Also draw the train and validation RMSE per epoch of each RBM into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Largest catalogue whose similar-item measures `evaluate` compares (its JSON has null beyond).
const SIMILAR_ITEMS_MAX_CATALOGUE: usize = 10_000;

pub(super) fn evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
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
    let config = args.hyper.config(data.shape())?;
    let trained = train_with_progress(data, &config, args.plot.as_deref())?;
    let model = &trained.recommender;
    let scale = data.scale;
    let known = data.user_matrix();

    let predictions = if args.include_test_items {
        crate::model::predict(model.user_rbm(), &known, &entries, scale, true)
    } else {
        model.predict(&data.users, &known, &test)
    };
    let user_only = crate::model::predict(model.user_rbm(), &known, &entries, scale, false);
    let ranking_in = |order: Order| {
        ranking_metrics(&known, &entries, scale, 10, |user, out| {
            let (items, classes) = known.row(user as usize);
            let mut expected = vec![0.0f32; out.len()];
            let mut scratch = Scratch::default();
            model.scores(
                order,
                model.item_side_user(&data.users, user),
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
        let item_only = item_only_model.predict(&data.users, &known, &test);
        report["rmse_item_based"] = json!(rmse(&item_only, &entries, scale));
        report["best_epoch_item_based"] = json!(item_fit.best_epoch);
    }
    println!("{report}");
    Ok(())
}
