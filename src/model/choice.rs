//! The joint RBM's reconstruction of *which* items a case rated, beside how it rated them.
//!
//! Every item of the catalogue is a visible unit with K + 1 states: "not rated", whose energy is
//! 0, or "rated with class k", whose logit is b[i][k] + (W[i][k] + Dimp[i])·h. Then
//! - p(h | v) is the conditional RBM's: c + Σ_{i rated} (W[i][k_i] + Dimp[i]), through the sigmoid,
//!   touching rated entries only (unrated items add 0), so fold-in is unchanged;
//! - p(class k | rated, h) = softmax_k(b[i][k] + W[i][k]·h), the categorical RBM's prediction
//!   (Dimp[i]·h is the same for every k and cancels);
//! - p(rated_i | h) = σ(logsumexp_k(b[i][k] + (W[i][k] + Dimp[i])·h)).
//!
//! Dimp is the paper's implicit input, and here it also carries the reconstruction of it. The
//! negative phase draws every item's state for every case of the mini-batch: B·D·(K+1)·M
//! multiply-adds per batch, the one dense cost of training, against ≈ 2(K+3)·M per rating for the
//! sparse phases; W is read once per batch for it, each item's K + 1 rows against all the batch's
//! hidden samples while they sit in cache. Everything after the draw (the negative hidden pass,
//! the gradients) touches the drawn entries only, as many as the model expects a case to rate.

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use rayon::prelude::*;

use super::evaluate::{ranking_metrics, sample_rows};
use super::kernels;
use super::rbm::{Rbm, log_sigmoid};
use super::scale::MAX_CLASSES;
use super::simd;
use super::{Checkpoint, Entry, RatingScale, SparseRatings};

/// Items per parallel task of the draw.
const DRAW_TASK: usize = 32;

/// Cases drawn side by side, so that the K + 1 exponentials of an item run in vector lanes.
const CASES: usize = 8;

/// One drawn "rated" state: the case (slot in the batch) and the class drawn.
#[derive(Debug, Clone, Copy)]
struct Drawn {
    item: u32,
    slot: u32,
    class: u8,
}

/// The catalogue-wide negative phase of one mini-batch, buffers reused from batch to batch.
pub(crate) struct ChoiceBatch {
    k: usize,
    m: usize,
    cases: usize,
    /// The binary hidden sample driving the draw, B×M.
    hidden_sample: Vec<f32>,
    /// Drawn states, item-major, and where each item's start (D + 1).
    drawn: Vec<Drawn>,
    item_start: Vec<usize>,
    /// The same entries case-major: their positions in `drawn`.
    by_case: Vec<u32>,
    case_start: Vec<usize>,
    /// p(h | drawn states), B×M.
    negative: Vec<f32>,
}

fn stream(seed: u64, step: u64, index: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(
        seed ^ 0xc401_ce00_0000_0000
            ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ index.wrapping_mul(0xc2b2_ae3d_27d4_eb4f),
    )
}

/// The K rated-state logits of `item` for one hidden vector: b[i][k] + (W[i][k] + Dimp[i])·h.
#[inline(always)]
pub(crate) fn state_logits(rbm: &Rbm, item: usize, hidden: &[f32], out: &mut [f32]) {
    rbm.visible_logits(item, hidden, out);
    let shared = implicit_dot(rbm, item, hidden);
    out.iter_mut().for_each(|z| *z += shared);
}

#[inline(always)]
fn implicit_dot(rbm: &Rbm, item: usize, hidden: &[f32]) -> f32 {
    let implicit = rbm.implicit().expect("a joint RBM is conditional");
    kernels::dot(implicit.row(item).as_slice().expect("contiguous"), hidden)
}

/// log p(rated | h) = −softplus(−logsumexp_k z_k) from the K rated-state logits, and
/// E[class | rated, h] (the softmax of the same logits: the shared term cancels).
#[inline(always)]
pub(crate) fn rated_and_expected(logits: &[f32]) -> (f32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut sum, mut weighted) = (0.0f32, 0.0f32);
    for (k, &z) in logits.iter().enumerate() {
        let e = kernels::fast_exp(z - max);
        sum += e;
        weighted += k as f32 * e;
    }
    (log_sigmoid(max + sum.ln()), weighted / sum)
}

/// Shifts b[i][·] by log((n_i + 1)/(N − n_i + 1)) so that, before training, every state of item i
/// has its frequency among the N cases: p(rated with class k) = (smoothed share of k)·n_i/N.
pub(crate) fn add_rated_prior(rbm: &mut Rbm, rated_counts: &[usize], cases: usize) {
    for (mut row, &n) in rbm.visible_bias.rows_mut().into_iter().zip(rated_counts) {
        let (n, cases) = (n as f64, cases as f64);
        let shift = ((n + 1.0) / (cases - n + 1.0)).ln() as f32;
        row.iter_mut().for_each(|b| *b += shift);
    }
}

/// log p(rated_i | ĥ) and E[class_i | rated, ĥ] of every item for one mean-field ĥ.
pub fn choice_scores(rbm: &Rbm, hidden: &[f32], log_rated: &mut [f32], expected: &mut [f32]) {
    let mut logits = [0.0f32; MAX_CLASSES];
    let logits = &mut logits[..rbm.classes()];
    for (item, (r, e)) in log_rated.iter_mut().zip(expected.iter_mut()).enumerate() {
        state_logits(rbm, item, hidden, logits);
        (*r, *e) = rated_and_expected(logits);
    }
}

/// Cases whose validation items rank the joint RBM each epoch, spread evenly over all of them.
const VALIDATION_CASES: usize = 1000;

/// NDCG@10 of ranking each validation case's unrated items by p(rated | ĥ), ĥ from `train`.
pub(crate) fn validation_ndcg(
    rbm: &Rbm,
    train: &SparseRatings,
    valid: &[Entry],
    scale: RatingScale,
    stop: &dyn Checkpoint,
) -> f64 {
    let sample = sample_rows(valid, train.n_rows(), VALIDATION_CASES);
    let (d, m) = (rbm.visible(), rbm.hidden());
    ranking_metrics(train, &sample, scale, 10, |user, out| {
        // Each case is a pass over the catalogue: once stopped, the rest are not worth ranking.
        if stop.should_stop() {
            return;
        }
        let (items, classes) = train.row(user as usize);
        let mut hidden = vec![0.0f32; m];
        rbm.hidden_probabilities(items, classes, items, &mut hidden);
        let mut expected = vec![0.0f32; d];
        choice_scores(rbm, &hidden, out, &mut expected);
    })
    .ndcg
}

impl ChoiceBatch {
    pub fn new(items: usize, k: usize, m: usize) -> Self {
        Self {
            k,
            m,
            cases: 0,
            hidden_sample: Vec::new(),
            drawn: Vec::new(),
            item_start: vec![0; items + 1],
            by_case: Vec::new(),
            case_start: Vec::new(),
            negative: Vec::new(),
        }
    }

    simd::multiversion! {
        /// Draws every item's state for every case from a binary sample of `positive` (p(h | v) of
        /// the batch's cases, B×M), then p(h | drawn states) into the negative phase. Each random
        /// draw is seeded by (seed, step, case or item), so the result does not depend on threads.
        /// Once `stop` says to stop, the remaining work is skipped, leaving the batch unusable.
        pub fn run / run_avx2(
            &mut self,
            rbm: &Rbm,
            positive: &[f32],
            seed: u64,
            step: u64,
            stop: &dyn Checkpoint,
        ) {
            let (k, m, d) = (self.k, self.m, rbm.visible());
            let cases = positive.len() / m;
            self.cases = cases;
            self.hidden_sample.resize(cases * m, 0.0);
            self.hidden_sample
                .par_chunks_mut(m)
                .zip(positive.par_chunks(m))
                .enumerate()
                .for_each(|(slot, (h, p))| {
                    let mut rng = stream(seed, step, slot as u64);
                    for (h, &p) in h.iter_mut().zip(p) {
                        *h = if rng.random::<f32>() < p { 1.0 } else { 0.0 };
                    }
                });
            let hidden = &self.hidden_sample;
            let tasks: Vec<Vec<Drawn>> = (0..d.div_ceil(DRAW_TASK))
                .into_par_iter()
                .map(|task| {
                    let mut out = Vec::new();
                    if stop.should_stop() {
                        return out;
                    }
                    for item in task * DRAW_TASK..((task + 1) * DRAW_TASK).min(d) {
                        draw_item(
                            rbm,
                            item,
                            hidden,
                            m,
                            k,
                            stream(seed, step, 1 << 62 | item as u64),
                            &mut out,
                        );
                    }
                    out
                })
                .collect();
            self.drawn.clear();
            for task in tasks {
                self.drawn.extend(task);
            }
            self.item_start.iter_mut().for_each(|s| *s = 0);
            for e in &self.drawn {
                self.item_start[e.item as usize + 1] += 1;
            }
            for i in 0..d {
                self.item_start[i + 1] += self.item_start[i];
            }
            // Case-major positions by a counting sort that keeps item order within a case.
            self.case_start.clear();
            self.case_start.resize(cases + 1, 0);
            for e in &self.drawn {
                self.case_start[e.slot as usize + 1] += 1;
            }
            for c in 0..cases {
                self.case_start[c + 1] += self.case_start[c];
            }
            let mut next = self.case_start.clone();
            self.by_case.resize(self.drawn.len(), 0);
            for (n, e) in self.drawn.iter().enumerate() {
                let at = &mut next[e.slot as usize];
                self.by_case[*at] = n as u32;
                *at += 1;
            }
            self.negative.resize(cases * m, 0.0);
            let (drawn, by_case, case_start) = (&self.drawn, &self.by_case, &self.case_start);
            let hidden_bias = rbm.hidden_bias().as_slice().expect("contiguous");
            self.negative
                .par_chunks_mut(m)
                .enumerate()
                .for_each(|(slot, out)| {
                    out.copy_from_slice(hidden_bias);
                    let implicit = rbm.implicit().expect("a joint RBM is conditional");
                    for &n in &by_case[case_start[slot]..case_start[slot + 1]] {
                        let e = drawn[n as usize];
                        kernels::add_assign(out, rbm.weight_row(e.item as usize, e.class as usize));
                        kernels::add_assign(
                            out,
                            implicit
                                .row(e.item as usize)
                                .as_slice()
                                .expect("contiguous"),
                        );
                    }
                    out.iter_mut().for_each(|x| *x = kernels::sigmoid(*x));
                });
        }
    }

    fn drawn_of(&self, item: usize) -> &[Drawn] {
        &self.drawn[self.item_start[item]..self.item_start[item + 1]]
    }

    /// Subtracts scale·Σ_{cases that drew item i in class k} p(h | drawn) from `out[k]` (K·M): the
    /// negative half of ∂/∂W[i]; the positive half is the data term the rating batch has.
    #[inline(always)]
    pub fn sub_weight_negative(&self, item: usize, scale: f32, out: &mut [f32]) {
        let m = self.m;
        for e in self.drawn_of(item) {
            let class = e.class as usize;
            let slot = e.slot as usize;
            kernels::axpy(
                &mut out[class * m..(class + 1) * m],
                -scale,
                &self.negative[slot * m..(slot + 1) * m],
            );
        }
    }

    /// Subtracts scale·Σ over cases that drew item i of p(h | drawn) from `out` (M).
    #[inline(always)]
    pub fn sub_implicit_negative(&self, item: usize, scale: f32, out: &mut [f32]) {
        let m = self.m;
        for e in self.drawn_of(item) {
            let slot = e.slot as usize;
            kernels::axpy(out, -scale, &self.negative[slot * m..(slot + 1) * m]);
        }
    }

    /// Subtracts scale·(number of cases that drew item i in class k) from `out[k]`.
    pub fn sub_visible_bias_negative(&self, item: usize, scale: f32, out: &mut [f32]) {
        for e in self.drawn_of(item) {
            out[e.class as usize] -= scale;
        }
    }

    /// Subtracts scale·Σ_cases p(h | drawn) from `out` (M).
    #[inline(always)]
    pub fn sub_hidden_bias_negative(&self, scale: f32, out: &mut [f32]) {
        for n in self.negative.chunks(self.m) {
            kernels::axpy(out, -scale, n);
        }
    }
}

/// Draws item i's state for every case from the K rated-state logits and the "not rated" logit 0,
/// CASES cases at a time so that the exponentials run in vector lanes, appending the rated ones.
#[inline(always)]
fn draw_item(
    rbm: &Rbm,
    item: usize,
    hidden: &[f32],
    m: usize,
    k: usize,
    mut rng: Xoshiro256PlusPlus,
    out: &mut Vec<Drawn>,
) {
    let cases = hidden.len() / m;
    let mut by_class = [[0.0f32; CASES]; MAX_CLASSES];
    let mut logits = [[0.0f32; MAX_CLASSES]; 2];
    let hidden_of = |slot: usize| &hidden[slot * m..(slot + 1) * m];
    for first in (0..cases).step_by(CASES) {
        let lanes = CASES.min(cases - first);
        for pair in (0..lanes).step_by(2) {
            let (a, b) = (first + pair, first + (pair + 1).min(lanes - 1));
            let [la, lb] = &mut logits;
            rbm.visible_logits_each(
                item,
                [hidden_of(a), hidden_of(b)],
                [&mut la[..k], &mut lb[..k]],
            );
            let shared = [
                implicit_dot(rbm, item, hidden_of(a)),
                implicit_dot(rbm, item, hidden_of(b)),
            ];
            for (lane, (l, s)) in [(pair, (la, shared[0])), (pair + 1, (lb, shared[1]))] {
                if lane < lanes {
                    for (class, z) in l[..k].iter().enumerate() {
                        by_class[class][lane] = z + s;
                    }
                }
            }
        }
        // Cumulative unnormalised probabilities with "not rated" (logit 0) first.
        let mut max = [0.0f32; CASES];
        for lanes in &by_class[..k] {
            for (max, &z) in max.iter_mut().zip(lanes) {
                *max = max.max(z);
            }
        }
        let mut cumulative = [0.0f32; CASES];
        for (c, max) in cumulative.iter_mut().zip(&max) {
            *c = kernels::fast_exp(-max);
        }
        let unrated = cumulative;
        for lanes in &mut by_class[..k] {
            for ((c, z), max) in cumulative.iter_mut().zip(lanes.iter_mut()).zip(&max) {
                *c += kernels::fast_exp(*z - max);
                *z = *c;
            }
        }
        for lane in 0..lanes {
            let u = rng.random::<f32>() * cumulative[lane];
            if u < unrated[lane] {
                continue;
            }
            let below = by_class[..k - 1].iter().filter(|c| c[lane] <= u).count();
            out.push(Drawn {
                item: item as u32,
                slot: (first + lane) as u32,
                class: below as u8,
            });
        }
    }
}
