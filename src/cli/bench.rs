//! `bench`: training throughput and uncached top-10 latency, as one JSON line.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::DataArgs;
use super::saved::rows_in_model;
use crate::app::RANKING_DEPTH;
use crate::model::{self, Order, Recommender, Scratch, TopQuery, TrainConfig};
use crate::model_file::ModelFile;

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
    /// Users per mini-batch; the default chosen for the data's shape when omitted.
    #[arg(long)]
    pub batch_size: Option<usize>,
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

/// Microseconds at the 50th and 99th percentiles of `model`'s uncached top-`depth` in `order`
/// over `count` users, the n-th of them given by `user(n)`: its ratings and its index in the
/// item-based RBM.
fn latency<'a>(
    model: &Recommender,
    order: Order,
    depth: usize,
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
                depth,
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

/// Users per second ranked to `depth` in `order` when `together` requests wait at once and are
/// scored in one pass (as the service's scorer does), over `count` users given by `user(n)`.
fn throughput<'a>(
    model: &Recommender,
    order: Order,
    depth: usize,
    together: usize,
    count: usize,
    user: impl Fn(usize) -> (&'a [u32], &'a [u8], Option<u32>),
) -> f64 {
    let mut scratches: Vec<Scratch> = (0..together).map(|_| Scratch::default()).collect();
    let started = Instant::now();
    for first in (0..count).step_by(together) {
        let queries: Vec<TopQuery> = (first..(first + together).min(count))
            .map(|n| {
                let (items, classes, user) = user(n);
                TopQuery {
                    order,
                    user,
                    items,
                    classes,
                    n: depth,
                }
            })
            .collect();
        std::hint::black_box(model.top_lists(&queries, |a, b| a.cmp(&b), &mut scratches));
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// Ratings of the users an explanation is timed for (or as near as the data set has).
const EXPLAINED_RATINGS: usize = 200;

/// Microseconds at the 50th and 99th percentiles that explaining a 10-item page adds to it, over
/// up to `count` users whose ratings number nearest `EXPLAINED_RATINGS`, and their mean number of
/// ratings.
fn explain_cost<'a>(
    model: &Recommender,
    users: usize,
    count: usize,
    user: impl Fn(usize) -> (&'a [u32], &'a [u8], Option<u32>),
) -> serde_json::Value {
    let order = model.default_order();
    let mut nearest: Vec<usize> = (0..users).collect();
    nearest.sort_by_key(|&n| user(n).0.len().abs_diff(EXPLAINED_RATINGS));
    nearest.truncate(count.max(1));
    let mut scratch = Scratch::default();
    let mut latencies: Vec<f64> = nearest
        .iter()
        .map(|&n| {
            let (items, classes, in_model) = user(n);
            let page = model.top_n(
                order,
                in_model,
                items,
                classes,
                10,
                |a, b| a.cmp(&b),
                &mut scratch,
            );
            let targets: Vec<u32> = page.iter().map(|r| r.item).collect();
            let started = Instant::now();
            std::hint::black_box(model.explain(order, in_model, items, classes, &targets, 3));
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let ratings = nearest.iter().map(|&n| user(n).0.len()).sum::<usize>() as f64;
    json!({
        "users": nearest.len(),
        "mean_ratings": ratings / nearest.len() as f64,
        "page_items": 10,
        "added_p50_us": percentile(0.5),
        "added_p99_us": percentile(0.99),
    })
}

/// `bench --model`: a saved model's uncached top-10 latency in each order, on the same users;
/// the service's uncached path: the default order to RANKING_DEPTH, one user alone and as many
/// users per second as batches of 1, 8 and 64 waiting requests give; and what explaining a
/// 10-item page adds.
fn bench_model(path: &std::path::Path, args: &BenchArgs) -> anyhow::Result<()> {
    let model = ModelFile::load(path)?.recommender;
    let data = args.data.read()?;
    let rows = rows_in_model(&model, &data);
    let mut orders = serde_json::Map::new();
    let served = [Order::Score, Order::ExpectedRating]
        .into_iter()
        .filter(|&o| o == Order::ExpectedRating || model.default_order() == Order::Score);
    let user = |n: usize| {
        let user = (n * 7919) % rows.len();
        let (items, classes) = &rows[user];
        let in_model = model.item_side_user(&data.users, user as u32);
        (&items[..], &classes[..], in_model)
    };
    for order in served {
        let (p50, p99) = latency(&model, order, 10, args.users, user);
        orders.insert(
            serde_json::to_value(order)?
                .as_str()
                .unwrap_or_default()
                .to_string(),
            json!({"top10_p50_us": p50, "top10_p99_us": p99}),
        );
    }
    let explain = explain_cost(&model, rows.len(), args.users.min(500), user);
    let order = model.default_order();
    let (p50, p99) = latency(&model, order, RANKING_DEPTH, args.users, user);
    let per_second: serde_json::Map<String, serde_json::Value> = [1, 8, 64]
        .into_iter()
        .map(|together| {
            let rate = throughput(&model, order, RANKING_DEPTH, together, args.users, user);
            (together.to_string(), json!(rate))
        })
        .collect();
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
            "served": {
                "order": order,
                "depth": RANKING_DEPTH,
                "p50_us": p50,
                "p99_us": p99,
                "users_per_second_by_waiting": per_second,
            },
            "explain": explain,
        })
    );
    Ok(())
}

pub(super) fn bench(args: BenchArgs) -> anyhow::Result<()> {
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
        ..TrainConfig::recommended(data.shape()).user
    };
    let params = crate::model::RbmParams {
        batch_size: args.batch_size.unwrap_or(params.batch_size),
        ..params
    };
    let matrix = data.user_matrix();
    let fit =
        params
            .clone()
            .check()?
            .fit(&matrix, data.scale, &[], &AtomicBool::new(false), |_| {})?;
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
    let model_bytes = ModelFile {
        recommender: model.clone(),
        config: TrainConfig {
            user: params.clone(),
            item: None,
            ..TrainConfig::default()
        },
        metrics: json!({}),
    }
    .to_bytes()?
    .len();
    let n_users = matrix.n_rows();
    let (p50, p99) = latency(&model, Order::ExpectedRating, 10, args.users, |n| {
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
            "batch_size": params.batch_size,
            "simd": model::isa().name(),
            "threads": if params.threads == 0 { rayon::current_num_threads() } else { params.threads },
            "epochs": fit.history.len(),
            "seconds_per_epoch": seconds_per_epoch,
            "ratings_epochs_per_second": matrix.nnz() as f64 / seconds_per_epoch,
            "gflops": flops_per_epoch / seconds_per_epoch / 1e9,
            "score_top10_p50_us": p50,
            "score_top10_p99_us": p99,
            "model_bytes": model_bytes,
            "peak_rss_mib": crate::metrics::peak_rss_mib(),
        })
    );
    Ok(())
}
