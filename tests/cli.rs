//! The command line on real files: `generate` makes a small data set, `train --plot` trains on it
//! and draws its RMSE curves.

use std::process::Command;

#[path = "support/svg.rs"]
mod svg;

fn run(args: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_rbm-recommender"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A fresh folder holding `data/ratings.csv`: 6,000 generated ratings of 300 users on 40 items.
fn generated(seed: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let args = [
        "--users",
        "300",
        "--items",
        "40",
        "--ratings",
        "6000",
        "--seed",
        seed,
    ];
    run(&[&["generate", "--out", out.to_str().unwrap()][..], &args[..]].concat());
    dir
}

#[test]
fn train_draws_the_rmse_of_every_epoch_of_both_rbms() {
    let dir = generated("3");
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    run(&[
        "train",
        "--ratings",
        &path("data/ratings.csv"),
        "--out",
        &path("model.safetensors"),
        "--plot",
        &path("curve.svg"),
        "--epochs",
        "4",
        "--patience",
        "0",
        "--hidden",
        "8",
        "--threads",
        "2",
    ]);
    let svg = std::fs::read_to_string(path("curve.svg")).unwrap();
    for label in [
        "user RBM, train RMSE",
        "user RBM, validation RMSE",
        "item RBM, train RMSE",
        "item RBM, validation RMSE",
        "epoch",
        "RMSE",
    ] {
        assert!(svg::has_text(&svg, label), "{label} is not in the plot");
    }
    // Four curves of four epochs each, beside the legend's two-point marks.
    let curves = svg::line_points(&svg).iter().filter(|&&n| n == 4).count();
    assert_eq!(curves, 4, "{svg}");
}

/// `evaluate` when the item-based RBM keeps fewer users than the data has (ITEM_USERS is 50,000 by
/// default, so Netflix-sized data): every user's list is scored with the item side's own index of
/// that user, and the joint RBM's ranking weight is fitted the same way.
#[test]
fn evaluate_scores_users_the_item_side_left_out() {
    let dir = generated("4");
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let output = run(&[
        "evaluate",
        "--ratings",
        &path("data/ratings.csv"),
        "--epochs",
        "3",
        "--hidden",
        "8",
        "--item-users",
        "40",
        "--threads",
        "2",
    ]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(
        report["rmse"].as_f64().is_some_and(f64::is_finite),
        "{report}"
    );
    assert!(
        report["ndcg_at_10"].as_f64().is_some_and(|n| n > 0.0),
        "{report}"
    );
    assert_eq!(report["params"]["item_users"], 40, "{report}");
}
