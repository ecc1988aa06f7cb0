//! Contrastive-divergence training of the categorical RBM: hyperparameters, their checks, and `fit`.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::batch::{MiniBatch, Scales};
use super::choice::{ChoiceBatch, add_rated_prior, validation_ndcg};
use super::evaluate::{predict, rmse};
use super::kernels;
use super::optimizer::{TensorState, UpdateRule};
use super::params::{RbmParams, ValidRbmParams};
use super::rbm::Rbm;
use super::simd;
use super::{Checkpoint, Entry, ModelError, RatingScale, SparseRatings};

/// What one epoch did, as reported to the progress callback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub epochs: usize,
    pub cd_steps: usize,
    /// RMSE of mean-field reconstructions of a fixed sample of training ratings.
    pub train_rmse: f64,
    pub valid_rmse: Option<f64>,
    /// For the joint RBM: NDCG@10 of ranking by p(rated | ĥ) on the validation slice's items rated
    /// at or above the relevance threshold; it picks the best epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_ndcg: Option<f64>,
    /// Time of the training pass, without the RMSE reporting.
    pub seconds: f64,
}

/// A trained RBM and how training went.
#[derive(Debug, Clone)]
pub struct Fit {
    pub rbm: Rbm,
    pub history: Vec<EpochStats>,
    /// The epoch whose parameters were kept (the best on validation, else the last one run).
    pub best_epoch: usize,
    pub train_seconds: f64,
}

/// Training starts on a plateau at the item-mean level until the hidden units differentiate, which
/// takes several hundred updates at the base rate of 0.005 whatever the data size; early stopping
/// waits until the learning rates of the updates made sum to this (1,000 updates at 0.005), so that
/// small data sets (few mini-batches per epoch) are not stopped on the plateau. It counts rate, not
/// updates, because a recommended batch's rate grows with its size (`TrainConfig::recommended`):
/// an update of 380 users at 0.019, as on the Netflix Prize's joint sample, moves the weights as
/// far as 3.8 updates of 100 at 0.005. Counting updates there kept a run that ranked best at epoch
/// 21 going to epoch 82: 1,000 updates at 15 an epoch. The sum is taken in f32, the rate's own
/// precision, where 1,000 × 0.005 is exactly 5 (in f64 the f32 rate's 0.00499999989 falls short).
const EARLY_STOP_WARM_UP: f32 = 5.0;

/// Training cases of a fixed size used to report the training RMSE each epoch.
const TRAIN_PROBE_ROWS: usize = 1000;

impl ValidRbmParams {
    pub fn params(&self) -> &RbmParams {
        &self.0
    }

    /// Trains on the rows of `train` (cases) with `K = scale.classes()`. `valid` holds held-out
    /// (row, column, class) triples in the same orientation, sorted by row; it picks the best epoch.
    /// `on_epoch` sees every epoch. `stop` is consulted between steps, and may hold them; once it
    /// says to stop, training ends with `ModelError::Cancelled` within one Gibbs step or one slice
    /// of the catalogue-wide draw, however long an epoch is.
    pub fn fit(
        &self,
        train: &SparseRatings,
        scale: RatingScale,
        valid: &[Entry],
        stop: &dyn Checkpoint,
        mut on_epoch: impl FnMut(&EpochStats) + Send,
    ) -> Result<Fit, ModelError> {
        let p = &self.0;
        if train.nnz() == 0 {
            return Err(ModelError::EmptyData);
        }
        let started = Instant::now();
        let threads = if p.threads == 0 {
            rayon::current_num_threads()
        } else {
            p.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| ModelError::ThreadPool(e.to_string()))?;
        pool.install(|| self.fit_in_pool(train, scale, valid, stop, &mut on_epoch, started))
    }

    simd::multiversion! {
        fn fit_in_pool / fit_in_pool_avx2(
            &self,
            train: &SparseRatings,
            scale: RatingScale,
            valid: &[Entry],
            stop: &dyn Checkpoint,
            on_epoch: &mut (dyn FnMut(&EpochStats) + Send),
            started: Instant,
        ) -> Result<Fit, ModelError> {
            let p = &self.0;
            let (d, k, m) = (train.n_cols(), scale.classes(), p.hidden);
            let mut rbm = Rbm::initial(&train.col_class_counts(k), d, k, p);
            let mut choice = p.choice.then(|| {
                add_rated_prior(&mut rbm, &train.col_counts(), train.n_rows());
                ChoiceBatch::new(d, k, m)
            });
            let rule = UpdateRule {
                kind: p.optimizer,
                learning_rate: p.learning_rate,
                momentum: p.momentum,
            };
            let mut factors = p.factors.map(|c| Factors::new(&rbm, c, p, rule));
            if let Some(f) = &factors {
                f.expand(&mut rbm, |_| true);
            }
            let mut w_state = TensorState::new(d, k * m, p.weight_decay, rule);
            let mut b_state = TensorState::new(d, k, 0.0, rule);
            let mut c_state = TensorState::new(1, m, 0.0, rule);
            let mut d_state = TensorState::new(d, m, p.weight_decay, rule);
            let mut batch = MiniBatch::new(d, k, m);
            let mut item_mark = vec![u64::MAX; d];

            let probe = training_probe(train);
            let mut order: Vec<u32> = (0..train.n_rows() as u32)
                .filter(|&r| !train.row(r as usize).0.is_empty())
                .collect();
            let mut shuffle_rng = Xoshiro256PlusPlus::seed_from_u64(p.seed ^ 0x5eed_5eed);
            let mut step = 0u64;
            let mut history = Vec::new();
            let mut best: Option<(f64, usize, Rbm)> = None;
            let mut epochs_since_best = 0;

            for epoch in 1..=p.epochs {
                let epoch_started = Instant::now();
                let cd_steps = self.cd_steps_at(epoch);
                for i in (1..order.len()).rev() {
                    order.swap(i, shuffle_rng.random_range(0..=i));
                }
                for rows in order.chunks(p.batch_size) {
                    step += 1;
                    batch.index(train, rows);
                    for &i in batch.items() {
                        item_mark[i as usize] = step;
                    }
                    let in_batch = |row: usize| item_mark[row] == step;
                    // The joint RBM's draw reads, and its gradient reaches, every item.
                    let item_touched = |row: usize| p.choice || in_batch(row);
                    // The rows this batch reads, as the dense update left them after the last step.
                    match &mut factors {
                        None => w_state.catch_up(slice_mut(&mut rbm.weights), step - 1, item_touched),
                        Some(f) => f.prepare(&mut rbm, step - 1, item_touched),
                    }
                    b_state.catch_up(slice_mut(&mut rbm.visible_bias), step - 1, item_touched);
                    if let Some(implicit) = &mut rbm.implicit {
                        d_state.catch_up(slice_mut(implicit), step - 1, item_touched);
                    }
                    batch.run(&rbm, cd_steps, p.seed, step, stop);
                    if let Some(choice) = &mut choice {
                        choice.run(&rbm, batch.positive(), p.seed, step, stop);
                    }
                    // A stopped batch is incomplete: its gradient is never applied.
                    if stop.should_stop() {
                        return Err(ModelError::Cancelled);
                    }

                    let scale_by = 1.0 / batch.len() as f32;
                    // The rating term's halves weighed by rating_weight, plus the joint term's data
                    // half (the same data entries); the joint term's model half comes from `choice`.
                    let scales = match choice {
                        None => Scales::both(scale_by),
                        Some(_) => Scales {
                            positive: (1.0 + p.rating_weight) * scale_by,
                            negative: p.rating_weight * scale_by,
                        },
                    };
                    let (batch, choice) = (&batch, choice.as_ref());
                    // Each adds `factor` times a row's gradient: the rating term's where the batch
                    // rated the item, then the joint term's model half.
                    let gradient = |rating: &dyn Fn(Scales, &mut [f32]),
                                    joint: &dyn Fn(&ChoiceBatch, f32, &mut [f32]),
                                    item: usize,
                                    factor: f32,
                                    out: &mut [f32]| {
                        if in_batch(item) {
                            rating(scales.times(factor), out);
                        }
                        if let Some(choice) = choice {
                            joint(choice, scale_by * factor, out);
                        }
                    };
                    let weight_gradient = |item: usize, factor: f32, out: &mut [f32]| {
                        stop.hold();
                        gradient(
                            &|s, out| batch.add_item_weight_gradient(item, s, out),
                            &|c, s, out| c.sub_weight_negative(item, s, out),
                            item,
                            factor,
                            out,
                        )
                    };
                    match &mut factors {
                        None => w_state.step(
                            slice_mut(&mut rbm.weights),
                            step,
                            item_touched,
                            weight_gradient,
                        ),
                        Some(f) => f.step(step, item_touched, weight_gradient),
                    }
                    b_state.step(
                        slice_mut(&mut rbm.visible_bias),
                        step,
                        item_touched,
                        |item, factor, out| {
                            gradient(
                                &|s, out| batch.add_visible_bias_gradient(item, s, out),
                                &|c, s, out| c.sub_visible_bias_negative(item, s, out),
                                item,
                                factor,
                                out,
                            )
                        },
                    );
                    c_state.step(
                        slice_mut(&mut rbm.hidden_bias),
                        step,
                        |_| true,
                        |_, factor, out| {
                            batch.add_hidden_bias_gradient(scales.times(factor), out);
                            if let Some(choice) = choice {
                                choice.sub_hidden_bias_negative(scale_by * factor, out);
                            }
                        },
                    );
                    if let Some(implicit) = &mut rbm.implicit {
                        d_state.step(slice_mut(implicit), step, item_touched, |item, factor, out| {
                            gradient(
                                &|s, out| batch.add_implicit_gradient(item, s, out),
                                &|c, s, out| c.sub_implicit_negative(item, s, out),
                                item,
                                factor,
                                out,
                            )
                        });
                    }
                }
                match &mut factors {
                    None => w_state.synchronize(slice_mut(&mut rbm.weights), step),
                    Some(f) => f.synchronize(&mut rbm, step),
                }
                b_state.synchronize(slice_mut(&mut rbm.visible_bias), step);
                if let Some(implicit) = &mut rbm.implicit {
                    d_state.synchronize(slice_mut(implicit), step);
                }
                if !rbm.is_finite() {
                    return Err(ModelError::Diverged { epoch });
                }
                let seconds = epoch_started.elapsed().as_secs_f64();

                let train_rmse = rmse(&predict(&rbm, train, &probe, scale, false), &probe, scale);
                let valid_rmse = (!valid.is_empty())
                    .then(|| rmse(&predict(&rbm, train, valid, scale, false), valid, scale));
                let valid_ndcg =
                    (p.choice && !valid.is_empty()).then(|| validation_ndcg(&rbm, train, valid, scale, stop));
                let stats = EpochStats {
                    epoch,
                    epochs: p.epochs,
                    cd_steps,
                    train_rmse,
                    valid_rmse,
                    valid_ndcg,
                    seconds,
                };
                if stop.should_stop() {
                    return Err(ModelError::Cancelled);
                }
                on_epoch(&stats);
                history.push(stats);
                // The joint RBM is there to rank: its best epoch is the best-ranking one.
                if let Some(score) = valid_ndcg.map(|n| -n).or(valid_rmse) {
                    if best.as_ref().is_none_or(|(b, _, _)| score < *b) {
                        best = Some((score, epoch, rbm.clone()));
                        epochs_since_best = 0;
                    } else {
                        epochs_since_best += 1;
                    }
                }
                let warmed_up = step as f32 * p.learning_rate >= EARLY_STOP_WARM_UP;
                if p.patience > 0 && warmed_up && epochs_since_best >= p.patience {
                    break;
                }
            }
            let (rbm, best_epoch) = match best {
                Some((_, epoch, rbm)) => (rbm, epoch),
                None => (rbm, history.len()),
            };
            Ok(Fit {
                rbm,
                history,
                best_epoch,
                train_seconds: started.elapsed().as_secs_f64(),
            })
        }
    }

    /// T for an epoch: fixed, or 1 → 3 → 5 → 9 over the quarters of training.
    fn cd_steps_at(&self, epoch: usize) -> usize {
        let p = &self.0;
        if !p.cd_schedule {
            return p.cd_steps;
        }
        const SCHEDULE: [usize; 4] = [1, 3, 5, 9];
        SCHEDULE[((epoch - 1) * 4 / p.epochs).min(3)]
    }
}

fn slice_mut<D: ndarray::Dimension>(array: &mut ndarray::Array<f32, D>) -> &mut [f32] {
    array.as_slice_mut().expect("contiguous")
}

/// Up to TRAIN_PROBE_ROWS rows spread evenly over the training cases, all their ratings.
fn training_probe(train: &SparseRatings) -> Vec<Entry> {
    let stride = train.n_rows().div_ceil(TRAIN_PROBE_ROWS).max(1);
    (0..train.n_rows())
        .step_by(stride)
        .flat_map(|row| {
            let (cols, classes) = train.row(row);
            cols.iter().zip(classes).map(move |(&col, &class)| Entry {
                row: row as u32,
                col,
                class,
            })
        })
        .collect()
}

/// The factored parameterisation W = A·B (A[D][K][C], B[C][M]). W itself is kept expanded for the
/// sampling passes: before each mini-batch, the rows of the items it reads are brought up to date
/// and re-expanded from the current A and B.
struct Factors {
    k: usize,
    c: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    a_state: TensorState,
    b_state: TensorState,
    grad_w: Vec<f32>,
}

impl Factors {
    fn new(rbm: &Rbm, c: usize, p: &RbmParams, rule: UpdateRule) -> Self {
        use rand_distr::{Distribution, Normal};
        let (d, k, m) = rbm.weights.dim();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(p.seed ^ 0xfac7);
        // Products of two N(0, s) factors summed over C have spread s²·√C; aim for init_std overall.
        let s = (p.init_std / (c as f32).sqrt()).sqrt();
        let normal = Normal::new(0.0f32, s).expect("positive spread");
        let a = (0..d * k * c).map(|_| normal.sample(&mut rng)).collect();
        let b = (0..c * m).map(|_| normal.sample(&mut rng)).collect();
        Self {
            k,
            c,
            a,
            b,
            a_state: TensorState::new(d, k * c, p.weight_decay, rule),
            b_state: TensorState::new(1, c * m, p.weight_decay, rule),
            grad_w: vec![0.0; d * k * m],
        }
    }

    simd::multiversion! {
        /// W[i][k] = Σ_c A[i][k][c]·B[c] for the items `rows` selects.
        fn expand / expand_avx2(&self, rbm: &mut Rbm, rows: impl Fn(usize) -> bool + Sync) {
            let (_, k, m) = rbm.weights.dim();
            let c = self.c;
            slice_mut(&mut rbm.weights)
                .par_chunks_mut(k * m)
                .enumerate()
                .filter(|(item, _)| rows(*item))
                .for_each(|(item, w)| {
                    for (row, w) in (item * k..(item + 1) * k).zip(w.chunks_mut(m)) {
                        w.fill(0.0);
                        for (f, &a) in self.a[row * c..(row + 1) * c].iter().enumerate() {
                            kernels::axpy(w, a, &self.b[f * m..(f + 1) * m]);
                        }
                    }
                });
        }
    }

    /// Brings the A rows of the items `touched` selects up to date after `step` steps and
    /// re-expands their rows of W.
    fn prepare(&mut self, rbm: &mut Rbm, step: u64, touched: impl Fn(usize) -> bool + Sync) {
        self.a_state.catch_up(&mut self.a, step, &touched);
        self.expand(rbm, touched);
    }

    simd::multiversion! {
        /// One update: ∂/∂A[i][k] = ∂/∂W[i][k]·Bᵀ on rows rated in the batch, ∂/∂B = Σ A[i][k]ᵀ·∂/∂W[i][k].
        fn step / step_avx2(
            &mut self,
            step: u64,
            touched: impl Fn(usize) -> bool + Sync,
            gradient: impl Fn(usize, f32, &mut [f32]) + Sync,
        ) {
            let (k, c) = (self.k, self.c);
            let m = self.b.len() / c;
            self.grad_w
                .par_chunks_mut(k * m)
                .enumerate()
                .filter(|(row, _)| touched(*row))
                .for_each(|(row, g)| {
                    g.fill(0.0);
                    gradient(row, 1.0, g)
                });
            let mut grad_b = vec![0.0f32; c * m];
            for (row, g) in self
                .grad_w
                .chunks(k * m)
                .enumerate()
                .filter(|(row, _)| touched(*row))
            {
                for class in 0..k {
                    let a = &self.a[(row * k + class) * c..(row * k + class + 1) * c];
                    for (f, &af) in a.iter().enumerate() {
                        kernels::axpy(
                            &mut grad_b[f * m..(f + 1) * m],
                            af,
                            &g[class * m..(class + 1) * m],
                        );
                    }
                }
            }
            let (grad_w, b) = (&self.grad_w, &self.b);
            self.a_state.step(&mut self.a, step, touched, |row, factor, out| {
                for class in 0..k {
                    let g = &grad_w[(row * k + class) * m..(row * k + class + 1) * m];
                    for f in 0..c {
                        out[class * c + f] += factor * kernels::dot(g, &b[f * m..(f + 1) * m]);
                    }
                }
            });
            self.b_state.step(
                &mut self.b,
                step,
                |_| true,
                |_, factor, out| kernels::axpy(out, factor, &grad_b),
            );
        }
    }

    fn synchronize(&mut self, rbm: &mut Rbm, step: u64) {
        self.a_state.synchronize(&mut self.a, step);
        self.expand(rbm, |_| true);
    }
}

/// A mini-batch of `samples` copies of one case.
fn batch_of_copies(rbm: &Rbm, items: &[u32], classes: &[u8], samples: usize) -> MiniBatch {
    let (d, k, m) = rbm.weights.dim();
    let copies = (0..samples as u32)
        .flat_map(|row| items.iter().zip(classes).map(move |(&i, &c)| (row, i, c)));
    let cases = SparseRatings::from_triples(samples, d, copies);
    let rows: Vec<u32> = (0..samples as u32).collect();
    let mut batch = MiniBatch::new(d, k, m);
    batch.index(&cases, &rows);
    batch
}

/// The average CD-T estimate of ∂log p(v)/∂W for one case over `samples` independent chains, as the
/// training kernel computes it (a batch of `samples` copies of the case). Lets tests compare CD-T
/// with the exact gradient of a tiny model.
pub fn cd_weight_gradient(
    rbm: &Rbm,
    items: &[u32],
    classes: &[u8],
    cd_steps: usize,
    samples: usize,
    seed: u64,
) -> Vec<f64> {
    let (d, k, m) = rbm.weights.dim();
    let mut batch = batch_of_copies(rbm, items, classes, samples);
    batch.run(rbm, cd_steps, seed, 1, &AtomicBool::new(false));
    let mut gradient = vec![0.0f32; d * k * m];
    for (item, out) in gradient.chunks_mut(k * m).enumerate() {
        if items.contains(&(item as u32)) {
            batch.add_item_weight_gradient(item, Scales::both(1.0 / samples as f32), out);
        }
    }
    gradient.into_iter().map(f64::from).collect()
}

/// The average joint-RBM CD-1 estimate of ∂log p(v, rated)/∂W for one case over `samples`
/// independent chains, as training computes it with rating_weight 0 (a batch of `samples` copies of
/// the case): the data term minus the catalogue-wide reconstruction's. Lets tests compare it with
/// the exact expectation of CD-1 on a tiny model.
pub fn joint_cd_weight_gradient(
    rbm: &Rbm,
    items: &[u32],
    classes: &[u8],
    samples: usize,
    seed: u64,
) -> Vec<f64> {
    let (d, k, m) = rbm.weights.dim();
    let mut batch = batch_of_copies(rbm, items, classes, samples);
    let never = AtomicBool::new(false);
    batch.run(rbm, 1, seed, 1, &never);
    let mut choice = ChoiceBatch::new(d, k, m);
    choice.run(rbm, batch.positive(), seed, 1, &never);
    let scale = 1.0 / samples as f32;
    let data_only = Scales {
        positive: scale,
        negative: 0.0,
    };
    let mut gradient = vec![0.0f32; d * k * m];
    for (item, out) in gradient.chunks_mut(k * m).enumerate() {
        if items.contains(&(item as u32)) {
            batch.add_item_weight_gradient(item, data_only, out);
        }
        choice.sub_weight_negative(item, scale, out);
    }
    gradient.into_iter().map(f64::from).collect()
}
