//! The RBM against exact answers: brute-force enumeration on a tiny model (3 items × 3 classes ×
//! 2 hidden), finite differences, the exact log-likelihood gradient; and training behaviour.
// The enumerations index W[i][k][j] the way the equations are written.
#![allow(clippy::needless_range_loop)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ndarray::{Array1, Array2, Array3};
use rbm_recommender::model::{
    Checkpoint, Dataset, Entry, ItemSide, ItemSimilarity, ModelError, Order, RatingScale, Rbm,
    RbmParams, Recommender, Scratch, Similarity, TopQuery, TrainConfig, cd_weight_gradient,
    choice_scores, joint_cd_weight_gradient, ranking_metrics, rmse,
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

/// Uniform draws in [0, 1) from a seeded LCG, so planted data needs no RNG crate.
fn uniform(seed: u64) -> impl FnMut() -> f64 {
    let mut state = seed;
    move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    }
}

/// The tiny model as a joint RBM: Dimp carries the "rated" state's shared weights.
fn tiny_joint_rbm(scale: f32) -> Rbm {
    let base = tiny_rbm(scale);
    let dimp = Array2::from_shape_fn((D, M), |(i, j)| {
        scale * ((i + 3 * j) % 4) as f32 / 3.0 - 0.4
    });
    Rbm::from_parts(
        base.weights().clone(),
        base.visible_bias().clone(),
        base.hidden_bias().clone(),
        Some(dimp),
    )
    .unwrap()
}

/// A joint visible state: per item None (not rated) or the rated class.
type JointState = [Option<u8>; D];

fn all_joint_states() -> Vec<JointState> {
    let state = |n: usize| (n > 0).then(|| (n - 1) as u8);
    (0..(K + 1).pow(D as u32))
        .map(|n| {
            [
                state(n % (K + 1)),
                state(n / (K + 1) % (K + 1)),
                state(n / (K + 1) / (K + 1)),
            ]
        })
        .collect()
}

/// −E(v, h) of the joint RBM: rated items add b[i][k] + (W[i][k] + Dimp[i])·h; unrated add 0.
fn joint_negative_energy(rbm: &Rbm, v: &JointState, h: &[f64]) -> f64 {
    let implicit = rbm.implicit().unwrap();
    let mut total: f64 = (0..M).map(|j| f64::from(rbm.hidden_bias()[j]) * h[j]).sum();
    for (i, state) in v.iter().enumerate() {
        if let Some(k) = *state {
            total += f64::from(rbm.visible_bias()[[i, k as usize]]);
            for j in 0..M {
                let w = rbm.weights()[[i, k as usize, j]] + implicit[[i, j]];
                total += f64::from(w) * h[j];
            }
        }
    }
    total
}

fn rated_part(v: &JointState) -> (Vec<u32>, Vec<u8>) {
    v.iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|k| (i as u32, k)))
        .unzip()
}

#[test]
fn joint_conditionals_match_enumeration() {
    let rbm = tiny_joint_rbm(1.0);
    for h in all_hidden() {
        let weights: Vec<f64> = all_joint_states()
            .iter()
            .map(|v| joint_negative_energy(&rbm, v, &h).exp())
            .collect();
        let z: f64 = weights.iter().sum();
        let hidden: Vec<f32> = h.iter().map(|&x| x as f32).collect();
        let (mut log_rated, mut expected) = ([0.0f32; D], [0.0f32; D]);
        choice_scores(&rbm, &hidden, &mut log_rated, &mut expected);
        for i in 0..D {
            let mass = |keep: &dyn Fn(&JointState) -> bool| -> f64 {
                all_joint_states()
                    .iter()
                    .zip(&weights)
                    .filter(|(v, _)| keep(v))
                    .map(|(_, w)| w)
                    .sum()
            };
            let rated = mass(&|v| v[i].is_some());
            let class_sum: f64 = (0..K)
                .map(|k| k as f64 * mass(&|v| v[i] == Some(k as u8)))
                .sum();
            let (p_rated, e_class) = (rated / z, class_sum / rated);
            assert!(
                (f64::from(log_rated[i]).exp() - p_rated).abs() < EXACT,
                "h={h:?} item {i}: p(rated) {} vs {p_rated}",
                log_rated[i].exp()
            );
            assert!(
                (f64::from(expected[i]) - e_class).abs() < EXACT,
                "h={h:?} item {i}: E[class | rated] {} vs {e_class}",
                expected[i]
            );
        }
    }
    // p(h | v) of the joint model is the conditional RBM's with the rated items as implicit input.
    for v in all_joint_states() {
        let (items, classes) = rated_part(&v);
        let mut p = [0.0f32; M];
        rbm.hidden_probabilities(&items, &classes, &items, &mut p);
        let weights: Vec<f64> = all_hidden()
            .iter()
            .map(|h| joint_negative_energy(&rbm, &v, h).exp())
            .collect();
        let z: f64 = weights.iter().sum();
        for j in 0..M {
            let exact: f64 = all_hidden()
                .iter()
                .zip(&weights)
                .filter(|(h, _)| h[j] == 1.0)
                .map(|(_, w)| w)
                .sum::<f64>()
                / z;
            assert!((f64::from(p[j]) - exact).abs() < EXACT, "v={v:?} j={j}");
        }
    }
}

/// E over CD-1's chain of the joint gradient estimate for W, enumerated exactly:
/// ⟨v·p(h|v)⟩ − Σ_{h⁰} p(h⁰|v) Σ_{v¹} p(v¹|h⁰)·v¹·p(h|v¹).
fn exact_joint_cd1_expectation(rbm: &Rbm, v: &JointState) -> Vec<f64> {
    let hidden_of = |v: &JointState| {
        let (items, classes) = rated_part(v);
        let mut p = [0.0f32; M];
        rbm.hidden_probabilities(&items, &classes, &items, &mut p);
        p.map(f64::from)
    };
    let add = |g: &mut [f64], v: &JointState, factor: f64| {
        let p = hidden_of(v);
        for (i, state) in v.iter().enumerate() {
            if let Some(k) = *state {
                for j in 0..M {
                    g[(i * K + k as usize) * M + j] += factor * p[j];
                }
            }
        }
    };
    let mut gradient = vec![0.0f64; D * K * M];
    add(&mut gradient, v, 1.0);
    let p0 = hidden_of(v);
    for h in all_hidden() {
        let p_h: f64 = (0..M)
            .map(|j| if h[j] == 1.0 { p0[j] } else { 1.0 - p0[j] })
            .product();
        let weights: Vec<f64> = all_joint_states()
            .iter()
            .map(|s| joint_negative_energy(rbm, s, &h).exp())
            .collect();
        let z: f64 = weights.iter().sum();
        for (s, w) in all_joint_states().iter().zip(&weights) {
            add(&mut gradient, s, -p_h * w / z);
        }
    }
    gradient
}

#[test]
fn joint_cd1_estimate_matches_its_exact_expectation() {
    let rbm = tiny_joint_rbm(1.5);
    // Items 0 and 2 rated, item 1 not: the draw must reach the unrated item too.
    let v: JointState = [Some(2), None, Some(0)];
    let (items, classes) = rated_part(&v);
    let exact = exact_joint_cd1_expectation(&rbm, &v);
    let estimate = joint_cd_weight_gradient(&rbm, &items, &classes, 60_000, 11);
    let error = estimate
        .iter()
        .zip(&exact)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(error < 0.01, "joint CD-1 is {error} from its expectation");
    // The unrated item's rows get a gradient (negative only), which a rating-only RBM never gives.
    assert!(exact[K * M..2 * K * M].iter().any(|g| g.abs() > 0.01));
}

/// Three taste groups plus a popular group every user rates (only its own fans well) and a few
/// "cult" items that a handful of users rate 5: the expected rating puts the cult items on top for
/// everyone and popularity the popular group, while each user picks, and likes, their own group.
fn planted_choices(users: usize, seed: u64) -> Dataset {
    let mut next = uniform(seed);
    let mut rows = Vec::new();
    for u in 0..users {
        let group = u % 3;
        for i in 0..10 {
            if next() < 0.7 {
                let value = if group == 0 { 4.0 } else { 2.0 };
                rows.push((format!("u{u}"), format!("popular{i}"), value));
            }
        }
        for g in 0..3 {
            for i in 0..12 {
                let p = if g == group { 0.45 } else { 0.03 };
                if next() < p {
                    let value = if g == group {
                        4.0 + (next() < 0.5) as u8 as f32
                    } else {
                        2.0
                    };
                    rows.push((format!("u{u}"), format!("g{g}-{i}"), value));
                }
            }
        }
        for i in 0..6 {
            if next() < 0.03 {
                rows.push((format!("u{u}"), format!("cult{i}"), 5.0));
            }
        }
    }
    Dataset::from_rows(
        RatingScale::ONE_TO_FIVE,
        rows.iter().map(|(u, i, v)| (u.as_str(), i.as_str(), *v)),
    )
    .unwrap()
}

/// A joint RBM trained on planted choices, trained on `joint_users` of the 600 users, and its
/// P@10 on the held-out picks of every user by score, by expected rating and by popularity.
fn joint_precisions(joint_users: Option<usize>) -> (Recommender, [f64; 3]) {
    let split = planted_choices(600, 5).split(0.2, 9).unwrap();
    let params = RbmParams {
        hidden: 16,
        epochs: 40,
        batch_size: 20,
        learning_rate: 0.02,
        choice: true,
        rating_weight: 3.0,
        threads: 2,
        ..RbmParams::default()
    };
    let config = TrainConfig {
        user: params,
        item: None,
        joint_users,
        valid_frac: 0.05,
        ..TrainConfig::default()
    };
    let model = Recommender::train(&split.train, &config, &AtomicBool::new(false), |_, _| {})
        .unwrap()
        .recommender;
    assert_eq!(model.default_order(), Order::Score);
    let known = split.train.user_matrix();
    let mut test = split.test.clone();
    test.sort_by_key(|r| (r.user, r.item));
    let test: Vec<Entry> = test.iter().map(|r| r.entry()).collect();
    let scale = split.train.scale;
    let precision = |order: Order| {
        ranking_metrics(&known, &test, scale, 10, |user, out| {
            let (items, classes) = known.row(user as usize);
            let mut expected = vec![0.0; out.len()];
            model.scores(
                order,
                Some(user),
                items,
                classes,
                &mut Scratch::default(),
                out,
                &mut expected,
            );
        })
        .precision
    };
    let counts: Vec<f32> = known.col_counts().iter().map(|&c| c as f32).collect();
    let popularity = ranking_metrics(&known, &test, scale, 10, |_, out| {
        out.copy_from_slice(&counts)
    })
    .precision;
    let precisions = [
        precision(Order::Score),
        precision(Order::ExpectedRating),
        popularity,
    ];
    (model, precisions)
}

#[test]
fn the_joint_rbm_ranks_what_users_pick_above_popular_and_highly_rated_items() {
    let (_, [score, expected, popularity]) = joint_precisions(None);
    assert!(
        score > 1.5 * popularity && score > 1.5 * expected,
        "P@10 by score {score:.3}, by expected rating {expected:.3}, by popularity {popularity:.3}"
    );
}

/// Past `joint_users` the joint RBM trains on a random sample of users (as at Netflix scale,
/// where drawing every item for every user would take hours an epoch); its parameters belong to
/// the items, so it ranks as well for the users it never saw.
#[test]
fn a_joint_rbm_trained_on_a_user_sample_ranks_for_every_user() {
    let (all, _) = joint_precisions(None);
    let (sampled, [score, expected, popularity]) = joint_precisions(Some(150));
    assert!(
        all != sampled,
        "a quarter of the users trains another model"
    );
    assert!(
        score > 1.5 * popularity && score > 1.5 * expected,
        "P@10 by score {score:.3}, by expected rating {expected:.3}, by popularity {popularity:.3}"
    );
    let (again, _) = joint_precisions(Some(150));
    assert!(again == sampled, "the sample follows the seed");
}

/// Users in three taste groups rate items of their group high and others low, with noise.
fn planted(users: usize, items: usize, seed: u64) -> Dataset {
    let mut next = uniform(seed);
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
        ..TrainConfig::default()
    }
}

#[test]
fn trained_rbm_beats_the_item_mean_on_planted_tastes() {
    let split = planted(300, 60, 1).split(0.1, 3).unwrap();
    let trained = Recommender::train(
        &split.train,
        &small_config(),
        &AtomicBool::new(false),
        |_, _| {},
    )
    .unwrap();
    let known = split.train.user_matrix();
    let mut test = split.test.clone();
    test.sort_by_key(|r| (r.user, r.item));
    let entries: Vec<Entry> = test.iter().map(|r| r.entry()).collect();
    let model_rmse = rmse(
        &trained
            .recommender
            .predict(&split.train.users, &known, &test),
        &entries,
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
    let baseline = rmse(&item_mean, &entries, split.train.scale);
    assert!(
        model_rmse < 0.75 * baseline,
        "RBM {model_rmse:.3} vs item mean {baseline:.3}"
    );
}

/// A user-based RBM trained for 4 epochs on planted data, with `tune` applied to the parameters.
#[test]
fn a_capped_item_side_keeps_the_most_active_users_and_predicts_the_rest_user_based() {
    let split = planted(300, 60, 1).split(0.1, 3).unwrap();
    let data = &split.train;
    let config = TrainConfig {
        item_users: 40,
        ..small_config()
    };
    let trained = Recommender::train(data, &config, &AtomicBool::new(false), |_, _| {}).unwrap();
    let model = &trained.recommender;
    let item_side = model.item_side().expect("an item side");
    // 40 visible users, and they are the ones with the most ratings.
    assert_eq!(model.users().len(), 40);
    assert_eq!(item_side.rbm.visible(), 40);
    let known = data.user_matrix();
    let count = |id: &str| known.row(data.users.get(id).unwrap() as usize).0.len();
    let fewest_kept = (0..40).map(|j| count(model.users().id(j))).min().unwrap();
    let most_left = (0..data.users.len() as u32)
        .map(|u| data.users.id(u))
        .filter(|id| model.users().get(id).is_none())
        .map(count)
        .max()
        .unwrap();
    assert!(fewest_kept >= most_left, "{fewest_kept} < {most_left}");
    // A user left out gets exactly the user-based prediction; a kept one the blend.
    let mut test = split.test.clone();
    test.sort_by_key(|r| (r.user, r.item));
    let predictions = model.predict(&data.users, &known, &test);
    let user_only = model.clone().with_blend_weight(1.0);
    let user_based = user_only.predict(&data.users, &known, &test);
    let (mut left_out, mut kept_differ) = (0, 0);
    for ((q, p), u) in test.iter().zip(&predictions).zip(&user_based) {
        if model.users().get(data.users.id(q.user)).is_none() {
            assert_eq!(p, u);
            left_out += 1;
        } else if (p - u).abs() > 1e-6 {
            kept_differ += 1;
        }
    }
    assert!(left_out > 0 && kept_differ > 0, "{left_out} {kept_differ}");
}

fn train_user_rbm(tune: impl Fn(&mut RbmParams)) -> Recommender {
    let data = planted(120, 30, 2);
    let mut config = small_config();
    config.user.epochs = 4;
    config.item = None;
    tune(&mut config.user);
    Recommender::train(&data, &config, &AtomicBool::new(false), |_, _| {})
        .unwrap()
        .recommender
}

/// Early stopping waits for a warm-up of summed learning rate (1,000 updates at 0.005), then
/// stops at the first epoch `patience` epochs past the best. With one update an epoch, the
/// warm-up is 100 epochs at a rate of 0.05 and 200 at 0.025.
#[test]
fn early_stopping_waits_for_a_warm_up_in_summed_learning_rate() {
    for (rate, warm_up) in [(0.05, 100), (0.025, 200)] {
        let mut history = Vec::new();
        let mut config = small_config();
        config.item = None;
        config.user.batch_size = 1_000;
        config.user.learning_rate = rate;
        config.user.epochs = 1_000;
        config.user.patience = 1;
        let data = planted(120, 30, 2);
        Recommender::train(&data, &config, &AtomicBool::new(false), |_, s| {
            history.push(s.valid_rmse.unwrap())
        })
        .unwrap();
        let mut best = (f64::INFINITY, 0);
        let expected = (1..=history.len())
            .find(|&epoch| {
                let score = history[epoch - 1];
                if score < best.0 {
                    best = (score, epoch);
                }
                epoch >= warm_up && epoch - best.1 >= 1
            })
            .expect("a stop within the epochs");
        assert_eq!(history.len(), expected, "rate {rate}");
        assert!(
            expected < 1_000,
            "rate {rate}: the run ended by early stopping"
        );
    }
}

#[test]
fn same_seed_and_threads_give_identical_weights() {
    let train = |seed: u64| train_user_rbm(|p| p.seed = seed);
    assert_eq!(train(5), train(5));
    assert_ne!(train(5).user_rbm(), train(6).user_rbm());
}

/// Counts the checkpoints training reaches; says to stop at the `stop_at`-th, holding each one
/// for a moment before that.
struct Counting {
    reached: AtomicUsize,
    stop_at: usize,
    /// The thread that holds a checkpoint, one at a time, as a service holding training would.
    held: Mutex<()>,
}

impl Checkpoint for Counting {
    fn should_stop(&self) -> bool {
        let reached = self.reached.fetch_add(1, Ordering::SeqCst) + 1;
        let _held = self.held.lock().unwrap();
        std::thread::yield_now();
        reached >= self.stop_at
    }
}

#[test]
fn a_checkpoint_that_holds_training_changes_nothing_and_one_that_stops_cancels_it() {
    let data = planted(120, 30, 2);
    let mut config = small_config();
    config.user.epochs = 4;
    config.user.choice = true;
    let mut all_epochs = 0;
    let plain = Recommender::train(&data, &config, &AtomicBool::new(false), |_, _| {
        all_epochs += 1
    })
    .unwrap()
    .recommender;
    let holding = Counting {
        reached: AtomicUsize::new(0),
        stop_at: usize::MAX,
        held: Mutex::new(()),
    };
    let held = Recommender::train(&data, &config, &holding, |_, _| {})
        .unwrap()
        .recommender;
    assert_eq!(held, plain);
    let reached = holding.reached.into_inner();
    assert!(reached > 10, "{reached} checkpoints");

    let stopping = Counting {
        reached: AtomicUsize::new(0),
        stop_at: reached / 2,
        held: Mutex::new(()),
    };
    let mut epochs = 0;
    let cancelled = Recommender::train(&data, &config, &stopping, |_, _| epochs += 1);
    assert!(matches!(cancelled, Err(ModelError::Cancelled)));
    assert!(epochs < all_epochs, "{epochs} of {all_epochs} epochs");
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
    let trained = Recommender::train(&data, &config, &AtomicBool::new(false), |_, _| {}).unwrap();
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
fn a_stored_item_side_with_another_class_count_is_refused_at_load() {
    let data = planted(90, 24, 3);
    let mut config = small_config();
    config.user.epochs = 2;
    config.item.as_mut().unwrap().epochs = 2;
    let model = Recommender::train(&data, &config, &AtomicBool::new(false), |_, _| {})
        .unwrap()
        .recommender;
    // The item side's W and b cut from K = 5 classes to 4: scoring would index past them.
    let side = model.item_side().unwrap();
    let cut = |k: usize| ndarray::Slice::from(0..k);
    let rbm = Rbm::from_parts(
        side.rbm
            .weights()
            .slice_axis(ndarray::Axis(1), cut(4))
            .to_owned(),
        side.rbm
            .visible_bias()
            .slice_axis(ndarray::Axis(1), cut(4))
            .to_owned(),
        side.rbm.hidden_bias().clone(),
        None,
    )
    .unwrap();
    let model = Recommender::new(
        model.scale(),
        model.users().clone(),
        model.items().clone(),
        model.user_rbm().clone(),
        Some(ItemSide {
            rbm,
            item_hidden: side.item_hidden.clone(),
        }),
        model.blend_weight(),
        model.ranking_weight(),
    );
    let file = ModelFile {
        recommender: model,
        config,
        metrics: serde_json::json!({}),
    };
    let error = ModelFile::from_bytes(&file.to_bytes().unwrap()).unwrap_err();
    assert!(error.to_string().contains("item.W"), "{error}");
}

#[test]
fn models_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Recommender>();
    assert_send_sync::<ModelFile>();
}

/// Every item's score in `order` and expected rating for a user whose ratings are (`items`,
/// `classes`), by the full catalogue pass.
fn all_scores(
    model: &Recommender,
    order: Order,
    user: Option<u32>,
    items: &[u32],
    classes: &[u8],
) -> (Vec<f32>, Vec<f32>) {
    let d = model.items().len();
    let (mut scores, mut expected) = (vec![0.0; d], vec![0.0; d]);
    let scratch = &mut Scratch::default();
    model.scores(
        order,
        user,
        items,
        classes,
        scratch,
        &mut scores,
        &mut expected,
    );
    (scores, expected)
}

/// The top list by `order` from `scores` over the whole catalogue, ties by `tie`: (item, score
/// bits, expected rating bits).
fn full_ranking(
    model: &Recommender,
    order: Order,
    user: Option<u32>,
    items: &[u32],
    classes: &[u8],
    n: usize,
    tie: impl Fn(u32, u32) -> std::cmp::Ordering,
) -> Vec<(u32, u32, u32)> {
    let (scores, expected) = all_scores(model, order, user, items, classes);
    rbm_recommender::model::top_n_by(&scores, n, |i| items.contains(&i), tie)
        .into_iter()
        .map(|i| {
            let at = i as usize;
            (i, scores[at].to_bits(), expected[at].to_bits())
        })
        .collect()
}

#[test]
fn lists_scored_together_equal_lists_scored_alone_bit_for_bit() {
    let data = planted(200, 160, 6);
    let mut config = small_config();
    config.user.choice = true;
    let model = Recommender::train(&data, &config, &AtomicBool::new(false), |_, _| {})
        .unwrap()
        .recommender;
    let known = data.user_matrix();
    let bits = |list: Vec<rbm_recommender::model::Ranked>| -> Vec<(u32, u32, u32)> {
        list.into_iter()
            .map(|r| (r.item, r.score.to_bits(), r.expected_rating.to_bits()))
            .collect()
    };
    // Users of both orders, known and unknown to the item side, short lists (screened) and one
    // as long as the catalogue (scored in full), in one batch.
    let queries: Vec<TopQuery> = (0..known.n_rows())
        .step_by(7)
        .enumerate()
        .map(|(n, row)| {
            let (items, classes) = known.row(row);
            TopQuery {
                order: [Order::Score, Order::ExpectedRating][n % 2],
                user: (n % 3 != 0).then_some(row as u32),
                items,
                classes,
                n: if n == 5 { 160 } else { 1 + n % 12 },
            }
        })
        .collect();
    let mut scratches: Vec<Scratch> = queries.iter().map(|_| Scratch::default()).collect();
    let together = model.top_lists(&queries, |a, b| a.cmp(&b), &mut scratches);
    assert_eq!(together.len(), queries.len());
    let mut scratch = Scratch::default();
    for (query, list) in queries.iter().zip(together) {
        let alone = model.top_n(
            query.order,
            query.user,
            query.items,
            query.classes,
            query.n,
            |a, b| a.cmp(&b),
            &mut scratch,
        );
        assert_eq!(list.len(), query.n.min(160 - query.items.len()));
        assert_eq!(bits(list), bits(alone), "{query:?}");
    }
}

/// The blend and the blend with a joint user-based RBM, trained on `data`.
fn blend_and_joint(data: &Dataset) -> (Recommender, Recommender) {
    let train = |config: &TrainConfig| {
        Recommender::train(data, config, &AtomicBool::new(false), |_, _| {})
            .unwrap()
            .recommender
    };
    let mut joint_config = small_config();
    joint_config.user.choice = true;
    (train(&small_config()), train(&joint_config))
}

#[test]
fn screened_top_lists_equal_the_full_ranking_bit_for_bit() {
    let data = planted(200, 160, 6);
    let (trained, joint) = blend_and_joint(&data);
    let known = data.user_matrix();
    let mut scratch = Scratch::default();
    for model in [&trained, &joint] {
        let orders = [Order::ExpectedRating, model.default_order()];
        for row in 0..known.n_rows() {
            let (items, classes) = known.row(row);
            for (user, n, order) in [Some(row as u32), None]
                .into_iter()
                .flat_map(|u| [1, 5, 20].map(|n| (u, n)))
                .flat_map(|(u, n)| orders.map(|o| (u, n, o)))
            {
                let screened: Vec<(u32, u32, u32)> = model
                    .top_n(
                        order,
                        user,
                        items,
                        classes,
                        n,
                        |a, b| a.cmp(&b),
                        &mut scratch,
                    )
                    .into_iter()
                    .map(|r| (r.item, r.score.to_bits(), r.expected_rating.to_bits()))
                    .collect();
                let full = full_ranking(model, order, user, items, classes, n, |a, b| a.cmp(&b));
                assert_eq!(screened, full, "user {row} ({user:?}), n = {n}, {order:?}");
            }
        }
    }
    assert_eq!(joint.default_order(), Order::Score);

    // Items 1..=6 copy item 0's weights, and a strong bias towards 5 stars puts the seven on top,
    // so their scores tie exactly and only `tie` orders them.
    let mut rbm = trained.user_rbm().clone();
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
        trained.scale(),
        trained.users().clone(),
        trained.items().clone(),
        rbm,
        None,
        1.0,
        None,
    );
    let (items, classes): (Vec<u32>, Vec<u8>) = {
        let (items, classes) = known.row(0);
        items.iter().zip(classes).filter(|(i, _)| **i > 6).unzip()
    };
    let backwards = |a: u32, b: u32| b.cmp(&a);
    let order = Order::ExpectedRating;
    let screened: Vec<(u32, u32, u32)> = tied
        .top_n(order, None, &items, &classes, 4, backwards, &mut scratch)
        .into_iter()
        .map(|r| (r.item, r.score.to_bits(), r.expected_rating.to_bits()))
        .collect();
    assert_eq!(
        screened,
        full_ranking(&tied, order, None, &items, &classes, 4, backwards)
    );
    let tied_scores: Vec<u32> = screened.iter().map(|&(_, s, _)| s).collect();
    assert!(
        tied_scores.windows(2).any(|w| w[0] == w[1]),
        "expected exact ties in {screened:?}"
    );
}

fn without<T: Copy>(values: &[T], left_out: usize) -> Vec<T> {
    let mut kept = values.to_vec();
    kept.remove(left_out);
    kept
}

#[test]
fn contributions_equal_a_brute_force_leave_one_out() {
    let data = planted(200, 160, 6);
    let (blend, joint) = blend_and_joint(&data);
    let known = data.user_matrix();
    let mut checked = 0;
    for model in [&blend, &joint] {
        for row in (0..known.n_rows()).step_by(37) {
            let (items, classes) = known.row(row);
            for (user, order) in [Some(row as u32), None]
                .into_iter()
                .flat_map(|u| [Order::ExpectedRating, model.default_order()].map(|o| (u, o)))
            {
                let targets: Vec<u32> = model
                    .top_n(
                        order,
                        user,
                        items,
                        classes,
                        5,
                        |a, b| a.cmp(&b),
                        &mut Scratch::default(),
                    )
                    .iter()
                    .map(|r| r.item)
                    .collect();
                let explained = model.explain(order, user, items, classes, &targets, items.len());
                let all = all_scores(model, order, user, items, classes).0;
                // Each rating left out of the ratings themselves, scored by the served pass.
                let left_out: Vec<Vec<f32>> = (0..items.len())
                    .map(|r| {
                        all_scores(model, order, user, &without(items, r), &without(classes, r)).0
                    })
                    .collect();
                for (&target, reasons) in targets.iter().zip(&explained) {
                    let t = target as usize;
                    let mut expected: Vec<(u32, f32)> = items
                        .iter()
                        .zip(&left_out)
                        .map(|(&i, scores)| (i, all[t] - scores[t]))
                        .collect();
                    expected.sort_by(|a, b| b.1.total_cmp(&a.1));
                    let positive = expected.iter().filter(|e| e.1 > 1e-5).count();
                    assert!(
                        reasons.len() >= positive,
                        "{reasons:?} against {expected:?}"
                    );
                    for reason in reasons {
                        assert!(reason.contribution > 0.0);
                        let (_, brute) = expected.iter().find(|e| e.0 == reason.rated).unwrap();
                        assert!(
                            (reason.contribution - brute).abs() < 2e-5,
                            "item {target}, rating of {}: {} against {brute}",
                            reason.rated,
                            reason.contribution
                        );
                    }
                    assert!(
                        reasons
                            .windows(2)
                            .all(|w| w[0].contribution >= w[1].contribution)
                    );
                    checked += reasons.len();
                }
                let top = model.explain(order, user, items, classes, &targets, 3);
                for (top, all) in top.iter().zip(&explained) {
                    assert_eq!(top[..], all[..all.len().min(3)]);
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} contributions were checked");
}

#[test]
fn a_recommendation_is_explained_by_ratings_of_its_own_taste_group() {
    let data = planted(300, 60, 1);
    let model = Recommender::train(&data, &small_config(), &AtomicBool::new(false), |_, _| {})
        .unwrap()
        .recommender;
    // A new user who loved group 0 and disliked group 1, five items of each.
    let liked: Vec<String> = (0..5).map(|n| format!("i{}", 3 * n)).collect();
    let disliked: Vec<String> = (0..5).map(|n| format!("i{}", 3 * n + 1)).collect();
    let ratings = liked
        .iter()
        .map(|i| (i.as_str(), 5.0))
        .chain(disliked.iter().map(|i| (i.as_str(), 1.0)));
    let (items, classes) = model.rated(ratings);
    let order = model.default_order();
    let list = model.top_n(
        order,
        None,
        &items,
        &classes,
        5,
        |a, b| a.cmp(&b),
        &mut Scratch::default(),
    );
    let group = |i: u32| model.items().id(i)[1..].parse::<usize>().unwrap() % 3;
    assert!(list.iter().all(|r| group(r.item) == 0), "{list:?}");
    let targets: Vec<u32> = list.iter().map(|r| r.item).collect();
    for reasons in model.explain(order, None, &items, &classes, &targets, 3) {
        assert_eq!(reasons.len(), 3);
        assert!(reasons.iter().all(|r| group(r.rated) == 0), "{reasons:?}");
    }
}

/// Cosine of rows `a` and `b` of a row-major matrix with `dim` columns, in f64.
fn cosine(matrix: &[f32], dim: usize, a: usize, b: usize) -> f64 {
    let row = |r: usize| matrix[r * dim..(r + 1) * dim].iter().map(|&x| f64::from(x));
    let dot: f64 = row(a).zip(row(b)).map(|(x, y)| x * y).sum();
    let norm = |r: usize| row(r).map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn item_similarities_equal_their_definitions() {
    let mut config = small_config();
    config.user.choice = true;
    let model = Recommender::train(
        &planted(200, 160, 6),
        &config,
        &AtomicBool::new(false),
        |_, _| {},
    )
    .unwrap()
    .recommender;
    let (d, k, m) = model.user_rbm().weights().dim();
    let item_hidden = model
        .item_side()
        .as_ref()
        .unwrap()
        .item_hidden
        .t()
        .to_owned();
    let target = 7u32;
    let mut scratch = Scratch::default();
    for kind in Similarity::ALL {
        let similarity = ItemSimilarity::new(&model, kind).expect("a joint blend has all");
        let mut got = vec![0.0f32; d];
        similarity.to_item(&model, target, &mut scratch, &mut got);
        let want: Vec<f64> = match kind {
            Similarity::FoldIn => {
                // The list a user gets whose one rating is 5 stars for the target.
                let (mut scores, mut expected) = (vec![0.0; d], vec![0.0; d]);
                model.scores(
                    Order::Score,
                    None,
                    &[target],
                    &[4],
                    &mut scratch,
                    &mut scores,
                    &mut expected,
                );
                scores.iter().map(|&s| f64::from(s)).collect()
            }
            Similarity::RatingWeights => {
                let weights = model.user_rbm().weights().as_slice().unwrap();
                (0..d)
                    .map(|i| cosine(weights, k * m, target as usize, i))
                    .collect()
            }
            Similarity::ChoiceWeights => {
                let implicit = model.user_rbm().implicit().unwrap().as_slice().unwrap();
                (0..d)
                    .map(|i| cosine(implicit, m, target as usize, i))
                    .collect()
            }
            Similarity::ItemHidden => {
                let rows = item_hidden.as_standard_layout();
                let rows = rows.as_slice().unwrap();
                (0..d)
                    .map(|i| cosine(rows, item_hidden.ncols(), target as usize, i))
                    .collect()
            }
        };
        for (i, (&got, &want)) in got.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(got) - want).abs() < 1e-4,
                "{kind:?}, item {i}: {got} against {want}"
            );
        }
    }

    // The served list: the measure's best items but the target itself, best first.
    let mut served = vec![0.0f32; d];
    ItemSimilarity::new(&model, Similarity::SERVED)
        .unwrap()
        .to_item(&model, target, &mut scratch, &mut served);
    let listed = model.similar_items(target, 5);
    let best = rbm_recommender::model::top_n(&served, 5, |i| i == target);
    assert_eq!(listed.iter().map(|&(i, _)| i).collect::<Vec<_>>(), best);
    for (i, similarity) in listed {
        assert_eq!(similarity.to_bits(), served[i as usize].to_bits());
    }
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
    let trained = Recommender::train(&data, &config, &AtomicBool::new(false), |_, _| {})
        .unwrap()
        .recommender;
    // A user the model never saw who loves group 0 should get group-0 items on top.
    let liked: Vec<u32> = (0..30)
        .filter(|i| i % 3 == 0)
        .take(6)
        .map(|i| trained.items().get(&format!("i{i}")).unwrap())
        .collect();
    let mut rated: Vec<(u32, u8)> = liked.iter().map(|&i| (i, 4)).collect();
    rated.sort_unstable();
    let (items, classes): (Vec<u32>, Vec<u8>) = rated.into_iter().unzip();
    let mut scores = vec![0.0; trained.items().len()];
    trained.expected_ratings(None, &items, &classes, &mut Scratch::default(), &mut scores);
    let best = rbm_recommender::model::top_n(&scores, 3, |i| items.contains(&i));
    for i in best {
        let id: usize = trained.items().id(i)[1..].parse().unwrap();
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
