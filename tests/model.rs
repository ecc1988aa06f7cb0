//! The RBM against exact answers: brute-force enumeration on a tiny model (3 items × 3 classes ×
//! 2 hidden), finite differences, the exact log-likelihood gradient; and training behaviour.
// The enumerations index W[i][k][j] the way the equations are written.
#![allow(clippy::needless_range_loop)]

use std::ops::ControlFlow;

use ndarray::{Array1, Array2, Array3};
use rbm_recommender::model::{
    Dataset, RatingScale, Rbm, RbmParams, Recommender, Scratch, TrainConfig, cd_weight_gradient,
    rmse,
};
use rbm_recommender::model_file::ModelFile;

const D: usize = 3;
const K: usize = 3;
const M: usize = 2;
/// Tolerance for f32 model quantities compared with f64 enumeration.
const EXACT: f64 = 1e-5;

fn tiny_rbm(scale: f32) -> Rbm {
    let w = Array3::from_shape_fn((D, K, M), |(i, k, j)| {
        scale * (((i * 7 + k * 3 + j * 5) % 11) as f32 / 5.0 - 1.0)
    });
    let b = Array2::from_shape_fn((D, K), |(i, k)| ((i + 2 * k) % 5) as f32 / 4.0 - 0.5);
    let c = Array1::from_vec(vec![0.3, -0.2]);
    Rbm::from_parts(w, b, c, None).unwrap()
}

/// −E(v, h) for a fully rated v (class per item) and binary h.
fn negative_energy(rbm: &Rbm, v: &[u8], h: &[f64]) -> f64 {
    let mut total: f64 = (0..M).map(|j| f64::from(rbm.hidden_bias()[j]) * h[j]).sum();
    for (i, &k) in v.iter().enumerate() {
        total += f64::from(rbm.visible_bias()[[i, k as usize]]);
        for j in 0..M {
            total += f64::from(rbm.weights()[[i, k as usize, j]]) * h[j];
        }
    }
    total
}

fn all_hidden() -> Vec<[f64; M]> {
    (0..1 << M)
        .map(|bits| [(bits & 1) as f64, ((bits >> 1) & 1) as f64])
        .collect()
}

fn all_visible() -> Vec<[u8; D]> {
    (0..K.pow(D as u32))
        .map(|n| [(n % K) as u8, ((n / K) % K) as u8, ((n / K / K) % K) as u8])
        .collect()
}

const ITEMS: [u32; D] = [0, 1, 2];

#[test]
fn hidden_probabilities_match_enumeration() {
    let rbm = tiny_rbm(1.0);
    for v in all_visible() {
        let weights: Vec<f64> = all_hidden()
            .iter()
            .map(|h| negative_energy(&rbm, &v, h).exp())
            .collect();
        let z: f64 = weights.iter().sum();
        let mut p = [0.0f32; M];
        rbm.hidden_probabilities(&ITEMS, &v, &ITEMS, &mut p);
        for j in 0..M {
            let exact: f64 = all_hidden()
                .iter()
                .zip(&weights)
                .filter(|(h, _)| h[j] == 1.0)
                .map(|(_, w)| w)
                .sum::<f64>()
                / z;
            assert!(
                (f64::from(p[j]) - exact).abs() < EXACT,
                "v={v:?} j={j}: {} vs {exact}",
                p[j]
            );
        }
    }
}

#[test]
fn visible_probabilities_match_enumeration() {
    let rbm = tiny_rbm(1.0);
    for h in all_hidden() {
        // p(v | h) factorises over items; check each item's marginal against the joint enumeration.
        let weights: Vec<([u8; D], f64)> = all_visible()
            .into_iter()
            .map(|v| (v, negative_energy(&rbm, &v, &h).exp()))
            .collect();
        let z: f64 = weights.iter().map(|(_, w)| w).sum();
        for i in 0..D {
            let mut p = [0.0f32; K];
            let hidden: Vec<f32> = h.iter().map(|&x| x as f32).collect();
            rbm.visible_probabilities(i, &hidden, &mut p);
            for k in 0..K {
                let exact: f64 = weights
                    .iter()
                    .filter(|(v, _)| v[i] as usize == k)
                    .map(|(_, w)| w)
                    .sum::<f64>()
                    / z;
                assert!(
                    (f64::from(p[k]) - exact).abs() < EXACT,
                    "h={h:?} i={i} k={k}"
                );
            }
        }
    }
}

#[test]
fn free_energy_matches_enumeration() {
    let rbm = tiny_rbm(1.0);
    for v in all_visible() {
        let exact = -all_hidden()
            .iter()
            .map(|h| negative_energy(&rbm, &v, h).exp())
            .sum::<f64>()
            .ln();
        let free_energy = rbm.free_energy(&ITEMS, &v, &ITEMS);
        assert!(
            (free_energy - exact).abs() < EXACT,
            "v={v:?}: {free_energy} vs {exact}"
        );
    }
}

/// ∂F/∂W[i][k][j] = −v[i][k]·p(h_j|v); ∂F/∂b[i][k] = −v[i][k]; ∂F/∂c_j = −p(h_j|v).
#[test]
fn free_energy_gradient_matches_central_differences() {
    const STEP: f32 = 1e-2;
    const TOLERANCE: f64 = 1e-3;
    let rbm = tiny_rbm(1.0);
    let v = [2u8, 0, 1];
    let mut p = [0.0f32; M];
    rbm.hidden_probabilities(&ITEMS, &v, &ITEMS, &mut p);
    type Perturb<'a> = &'a dyn Fn(&mut Array3<f32>, &mut Array2<f32>, &mut Array1<f32>);
    let with = |f: Perturb| {
        let (mut w, mut b, mut c) = (
            rbm.weights().clone(),
            rbm.visible_bias().clone(),
            rbm.hidden_bias().clone(),
        );
        f(&mut w, &mut b, &mut c);
        Rbm::from_parts(w, b, c, None)
            .unwrap()
            .free_energy(&ITEMS, &v, &ITEMS)
    };
    for i in 0..D {
        for k in 0..K {
            for j in 0..M {
                let numeric = (with(&|w, _, _| w[[i, k, j]] += STEP)
                    - with(&|w, _, _| w[[i, k, j]] -= STEP))
                    / (2.0 * f64::from(STEP));
                let analytic = if v[i] as usize == k {
                    -f64::from(p[j])
                } else {
                    0.0
                };
                assert!(
                    (numeric - analytic).abs() < TOLERANCE,
                    "W[{i}][{k}][{j}]: {numeric} vs {analytic}"
                );
            }
            let numeric = (with(&|_, b, _| b[[i, k]] += STEP) - with(&|_, b, _| b[[i, k]] -= STEP))
                / (2.0 * f64::from(STEP));
            let analytic = if v[i] as usize == k { -1.0 } else { 0.0 };
            assert!((numeric - analytic).abs() < TOLERANCE, "b[{i}][{k}]");
        }
    }
    for j in 0..M {
        let numeric = (with(&|_, _, c| c[j] += STEP) - with(&|_, _, c| c[j] -= STEP))
            / (2.0 * f64::from(STEP));
        assert!((numeric + f64::from(p[j])).abs() < TOLERANCE, "c[{j}]");
    }
}

/// Exact ∂log p(v)/∂W = −∂F(v)/∂W + Σ_v' p(v') ∂F(v')/∂W, by enumerating all 27 visible states.
fn exact_log_likelihood_gradient(rbm: &Rbm, v: &[u8; D]) -> Vec<f64> {
    let dfdw = |v: &[u8; D]| {
        let mut p = [0.0f32; M];
        rbm.hidden_probabilities(&ITEMS, v, &ITEMS, &mut p);
        let mut g = vec![0.0f64; D * K * M];
        for i in 0..D {
            for j in 0..M {
                g[(i * K + v[i] as usize) * M + j] = -f64::from(p[j]);
            }
        }
        g
    };
    let states = all_visible();
    let unnormalised: Vec<f64> = states
        .iter()
        .map(|s| (-rbm.free_energy(&ITEMS, s, &ITEMS)).exp())
        .collect();
    let z: f64 = unnormalised.iter().sum();
    let mut gradient: Vec<f64> = dfdw(v).iter().map(|x| -x).collect();
    for (s, u) in states.iter().zip(&unnormalised) {
        for (g, d) in gradient.iter_mut().zip(dfdw(s)) {
            *g += u / z * d;
        }
    }
    gradient
}

#[test]
fn cd_t_approaches_the_exact_gradient_as_t_grows() {
    let rbm = tiny_rbm(1.5);
    let v = [2u8, 0, 1];
    let exact = exact_log_likelihood_gradient(&rbm, &v);
    let error = |t: usize| {
        let estimate = cd_weight_gradient(&rbm, &ITEMS, &v, t, 40_000, 7);
        estimate
            .iter()
            .zip(&exact)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    let (cd1, cd50) = (error(1), error(50));
    assert!(cd50 < 0.02, "CD-50 is {cd50} from the exact gradient");
    assert!(
        cd1 > 2.0 * cd50,
        "CD-1 error {cd1} should exceed CD-50 error {cd50}"
    );
}

/// Users in three taste groups rate items of their group high and others low, with noise.
fn planted(users: usize, items: usize, seed: u64) -> Dataset {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    let mut rows = Vec::new();
    for u in 0..users {
        for i in 0..items {
            if next() < 0.4 {
                let liked = u % 3 == i % 3;
                let base = if liked { 4.5 } else { 1.8 } + (i % 5) as f64 * 0.1;
                let value = (base + (next() - 0.5) * 1.2).round().clamp(1.0, 5.0);
                rows.push((format!("u{u}"), format!("i{i}"), value as f32));
            }
        }
    }
    Dataset::from_rows(
        RatingScale::ONE_TO_FIVE,
        rows.iter().map(|(u, i, v)| (u.as_str(), i.as_str(), *v)),
    )
    .unwrap()
}

fn small_config() -> TrainConfig {
    let params = RbmParams {
        hidden: 12,
        epochs: 30,
        batch_size: 20,
        learning_rate: 0.05,
        threads: 2,
        ..RbmParams::default()
    };
    TrainConfig {
        user: params.clone(),
        item: Some(params),
        valid_frac: 0.05,
    }
}

#[test]
fn trained_rbm_beats_the_item_mean_on_planted_tastes() {
    let split = planted(300, 60, 1).split(0.1, 3).unwrap();
    let trained = Recommender::train(&split.train, &small_config(), |_, _| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let known = split.train.user_matrix();
    let mut test = split.test.clone();
    test.sort_by_key(|r| (r.user, r.item));
    let model_rmse = rmse(
        &trained.recommender.predict(&known, &test),
        &test,
        split.train.scale,
    );

    let mut sums = vec![(0.0f64, 0usize); split.train.items.len()];
    for r in &split.train.ratings {
        sums[r.item as usize].0 += f64::from(split.train.scale.value_of(r.class));
        sums[r.item as usize].1 += 1;
    }
    let item_mean: Vec<f32> = test
        .iter()
        .map(|r| (sums[r.item as usize].0 / sums[r.item as usize].1 as f64) as f32)
        .collect();
    let baseline = rmse(&item_mean, &test, split.train.scale);
    assert!(
        model_rmse < 0.75 * baseline,
        "RBM {model_rmse:.3} vs item mean {baseline:.3}"
    );
}

/// A user-based RBM trained for 4 epochs on planted data, with `tune` applied to the parameters.
fn train_user_rbm(tune: impl Fn(&mut RbmParams)) -> Recommender {
    let data = planted(120, 30, 2);
    let mut config = small_config();
    config.user.epochs = 4;
    config.item = None;
    tune(&mut config.user);
    Recommender::train(&data, &config, |_, _| ControlFlow::Continue(()))
        .unwrap()
        .recommender
}

#[test]
fn same_seed_and_threads_give_identical_weights() {
    let train = |seed: u64| train_user_rbm(|p| p.seed = seed);
    assert_eq!(train(5), train(5));
    assert_ne!(train(5).user_rbm, train(6).user_rbm);
}

#[test]
fn the_number_of_threads_does_not_change_the_weights() {
    let train = |threads: usize| {
        train_user_rbm(|p| {
            p.threads = threads;
            p.conditional = true;
        })
    };
    let two = train(2);
    assert_eq!(train(1), two);
    assert_eq!(train(3), two);
}

#[test]
fn saved_models_load_back_exactly() {
    let data = planted(90, 24, 3);
    let mut config = small_config();
    config.user.epochs = 3;
    config.item.as_mut().unwrap().epochs = 3;
    config.user.conditional = true;
    let trained = Recommender::train(&data, &config, |_, _| ControlFlow::Continue(())).unwrap();
    let file = ModelFile {
        recommender: trained.recommender,
        config,
        metrics: serde_json::json!({"rmse": 0.9}),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    file.save(&path).unwrap();
    let loaded = ModelFile::load(&path).unwrap();
    assert_eq!(loaded, file);

    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() / 2);
    assert!(ModelFile::from_bytes(&bytes).is_err());
}

#[test]
fn models_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Recommender>();
    assert_send_sync::<ModelFile>();
}

/// The top list from `expected_ratings` over the whole catalogue, ties by `tie`.
fn full_ranking(
    model: &Recommender,
    user: Option<u32>,
    items: &[u32],
    classes: &[u8],
    n: usize,
    tie: impl Fn(u32, u32) -> std::cmp::Ordering,
) -> Vec<(u32, u32)> {
    let mut scores = vec![0.0; model.items.len()];
    model.expected_ratings(user, items, classes, &mut Scratch::default(), &mut scores);
    rbm_recommender::model::top_n_by(&scores, n, |i| items.contains(&i), tie)
        .into_iter()
        .map(|i| (i, scores[i as usize].to_bits()))
        .collect()
}

#[test]
fn screened_top_lists_equal_the_full_ranking_bit_for_bit() {
    let data = planted(200, 160, 6);
    let trained = Recommender::train(&data, &small_config(), |_, _| ControlFlow::Continue(()))
        .unwrap()
        .recommender;
    let known = data.user_matrix();
    let mut scratch = Scratch::default();
    for row in 0..known.n_rows() {
        let (items, classes) = known.row(row);
        for user in [Some(row as u32), None] {
            for n in [1, 5, 20] {
                let screened: Vec<(u32, u32)> = trained
                    .top_n(user, items, classes, n, |a, b| a.cmp(&b), &mut scratch)
                    .into_iter()
                    .map(|(i, s)| (i, s.to_bits()))
                    .collect();
                let full = full_ranking(&trained, user, items, classes, n, |a, b| a.cmp(&b));
                assert_eq!(screened, full, "user {row} ({user:?}), n = {n}");
            }
        }
    }

    // Items 1..=6 copy item 0's weights, and a strong bias towards 5 stars puts the seven on top,
    // so their scores tie exactly and only `tie` orders them.
    let mut rbm = trained.user_rbm.clone();
    let (mut weights, mut bias) = (rbm.weights().clone(), rbm.visible_bias().clone());
    bias.row_mut(0)
        .assign(&ndarray::arr1(&[-30.0, -30.0, -30.0, -30.0, 30.0]));
    for copy in 1..=6 {
        let row = weights.index_axis(ndarray::Axis(0), 0).to_owned();
        weights.index_axis_mut(ndarray::Axis(0), copy).assign(&row);
        let b = bias.row(0).to_owned();
        bias.row_mut(copy).assign(&b);
    }
    rbm = Rbm::from_parts(weights, bias, rbm.hidden_bias().clone(), None).unwrap();
    let tied = Recommender::new(
        trained.scale,
        trained.users.clone(),
        trained.items.clone(),
        rbm,
        None,
        1.0,
    );
    let (items, classes): (Vec<u32>, Vec<u8>) = {
        let (items, classes) = known.row(0);
        items.iter().zip(classes).filter(|(i, _)| **i > 6).unzip()
    };
    let backwards = |a: u32, b: u32| b.cmp(&a);
    let screened: Vec<(u32, u32)> = tied
        .top_n(None, &items, &classes, 4, backwards, &mut scratch)
        .into_iter()
        .map(|(i, s)| (i, s.to_bits()))
        .collect();
    assert_eq!(
        screened,
        full_ranking(&tied, None, &items, &classes, 4, backwards)
    );
    let tied_scores: Vec<u32> = screened.iter().map(|&(_, s)| s).collect();
    assert!(
        tied_scores.windows(2).any(|w| w[0] == w[1]),
        "expected exact ties in {screened:?}"
    );
}

#[test]
fn new_users_fold_in_without_retraining() {
    let data = planted(300, 30, 4);
    let mut config = TrainConfig {
        valid_frac: 0.0,
        item: None,
        ..small_config()
    };
    config.user.epochs = 60;
    let trained = Recommender::train(&data, &config, |_, _| ControlFlow::Continue(()))
        .unwrap()
        .recommender;
    // A user the model never saw who loves group 0 should get group-0 items on top.
    let liked: Vec<u32> = (0..30)
        .filter(|i| i % 3 == 0)
        .take(6)
        .map(|i| trained.items.get(&format!("i{i}")).unwrap())
        .collect();
    let mut rated: Vec<(u32, u8)> = liked.iter().map(|&i| (i, 4)).collect();
    rated.sort_unstable();
    let (items, classes): (Vec<u32>, Vec<u8>) = rated.into_iter().unzip();
    let mut scores = vec![0.0; trained.items.len()];
    trained.expected_ratings(None, &items, &classes, &mut Scratch::default(), &mut scores);
    let best = rbm_recommender::model::top_n(&scores, 3, |i| items.contains(&i));
    for i in best {
        let id: usize = trained.items.id(i)[1..].parse().unwrap();
        assert_eq!(id % 3, 0, "recommended {id} to a group-0 fan");
    }
}

#[test]
fn invalid_hyperparameters_are_rejected_with_their_value() {
    let err = RbmParams {
        learning_rate: -1.0,
        ..RbmParams::default()
    }
    .check()
    .unwrap_err()
    .to_string();
    assert!(err.contains("learning_rate") && err.contains("-1"), "{err}");
    let err = RbmParams {
        factors: Some(500),
        ..RbmParams::default()
    }
    .check()
    .unwrap_err()
    .to_string();
    assert!(err.contains("500"), "{err}");
}
