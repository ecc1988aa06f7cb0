//! The release binary's two instruction-set paths (`src/model/simd.rs`) on the same data: the
//! AVX2 copy where the CPU has it, and the portable one that `RBM_SIMD=portable` forces. They do
//! not round alike (one fuses multiply-adds), so a sampled training run takes a different path
//! after the first Bernoulli draw that lands between the two values: the test holds them to the
//! same accuracy, not the same bits. Where the CPU has AVX-512VL the AVX2 path runs some kernels
//! with its 32 registers; `RBM_SIMD=avx2` keeps them to 16, and there the results must be equal.

use std::io::Write;
use std::process::Command;

/// 400 users in three taste groups over 60 items, each rating about 40%: low-rank structure an RBM
/// learns in a few dozen epochs.
fn planted_csv(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("ratings.csv");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(out, "user,item,rating").unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for u in 0..400 {
        for i in 0..60 {
            if next() < 0.4 {
                let base = if u % 3 == i % 3 { 4.4 } else { 1.8 };
                let value = (base + (next() - 0.5) * 1.4).round().clamp(1.0, 5.0);
                writeln!(out, "u{u},i{i},{value}").unwrap();
            }
        }
    }
    path
}

fn evaluate(ratings: &std::path::Path, simd: Option<&str>) -> serde_json::Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rbm-recommender"));
    command.args(["evaluate", "--ratings"]).arg(ratings);
    command.args(["--hidden", "20", "--epochs", "30", "--batch-size", "20"]);
    command.args(["--learning-rate", "0.05", "--threads", "2", "--seed", "7"]);
    match simd {
        Some(path) => command.env("RBM_SIMD", path),
        None => command.env_remove("RBM_SIMD"),
    };
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_avx2() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_avx512vl() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_avx512vl() -> bool {
    false
}

#[test]
fn both_instruction_set_paths_train_and_rank_alike() {
    let dir = tempfile::tempdir().unwrap();
    let ratings = planted_csv(dir.path());
    let (fast, portable) = (
        evaluate(&ratings, None),
        evaluate(&ratings, Some("portable")),
    );

    let expected = match (cpu_has_avx2(), cpu_has_avx512vl()) {
        (true, true) => "avx2+fma+f16c+avx512vl",
        (true, false) => "avx2+fma+f16c",
        _ => "portable",
    };
    assert_eq!(fast["simd"], expected, "the CPU's path is taken by default");
    assert_eq!(
        portable["simd"], "portable",
        "RBM_SIMD=portable forces the portable path"
    );

    let number = |report: &serde_json::Value, key: &str| report[key].as_f64().unwrap();
    for (key, tolerance) in [("rmse", 0.02), ("mae", 0.02), ("ndcg_at_10", 0.03)] {
        let (a, b) = (number(&fast, key), number(&portable, key));
        assert!(
            (a - b).abs() <= tolerance,
            "{key}: {a} on the default path, {b} portable"
        );
    }
    // AVX-512VL's registers change how many users a kernel call serves, never a result.
    if cpu_has_avx2() {
        let narrow = evaluate(&ratings, Some("avx2"));
        assert_eq!(
            narrow["simd"], "avx2+fma+f16c",
            "RBM_SIMD=avx2 keeps 16 registers"
        );
        for key in ["rmse", "mae", "ndcg_at_10", "precision_at_10", "valid_rmse"] {
            assert_eq!(narrow[key], fast[key], "{key}");
        }
    }
    // And both learned the planted tastes (about 0.5 here; guessing the mean gives about 1.5).
    assert!(
        number(&fast, "rmse") < 0.7 && number(&portable, "rmse") < 0.7,
        "{fast}\n{portable}"
    );
}
