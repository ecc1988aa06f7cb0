//! The serving catalogue: W and b of a user-based RBM re-laid so that scoring every item for one
//! user is a few sequential passes over memory, with an f16 copy of W that screens candidates and
//! the exact f32 pass for the ones that can still make a list.

use rayon::prelude::*;

use super::kernels;
use super::rbm::{Rbm, log_sigmoid};
use super::scale::MAX_CLASSES;
use super::simd;

/// Items per parallel task of the catalogue pass.
const CATALOG_TASK: usize = 512;

/// W and b re-laid for scoring the whole catalogue: items in blocks of `kernels::LANES`, each block
/// `[M][K][LANES]` (and b `[K][LANES]`), so that a block's K logits build up in registers while
/// its weights stream through memory in one sequential pass. Derived from an `Rbm`; used to serve.
///
/// A second copy of W rounded to f16 halves the bytes a pass reads. It only screens: `screen`
/// gives each item an approximate E[class] with a proven error radius, and the items that can still
/// make a top list are then scored exactly by `expected_classes_of`, which runs the f32 kernel, so
/// a top list is the one the full f32 pass would give, score for score.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogWeights {
    classes: usize,
    hidden: usize,
    items: usize,
    weights: Vec<f32>,
    halves: Vec<u16>,
    bias: Vec<f32>,
    /// Per item, (α, β) of its logits' screening radius α·Σh + β (see `screen`).
    radius_terms: Vec<[f32; 2]>,
}

impl CatalogWeights {
    pub fn new(rbm: &Rbm) -> Self {
        use kernels::LANES;
        let (d, k, m) = rbm.weights.dim();
        let blocks = d.div_ceil(LANES);
        // Lanes past the last item stay zero and are never read out.
        let mut weights = vec![0.0f32; blocks * m * k * LANES];
        let mut halves = vec![0u16; blocks * m * k * LANES];
        // Per item, over its K·M weights and K biases: max |W − f16(W)|, max |W|, max |b|.
        let mut spread = vec![[0.0f32; 3]; d];
        for ((i, class, j), &w) in rbm.weights.indexed_iter() {
            let at = (((i / LANES) * m + j) * k + class) * LANES + i % LANES;
            let half = half::f16::from_f32(w);
            weights[at] = w;
            halves[at] = half.to_bits();
            let s = &mut spread[i];
            s[0] = s[0].max((w - half.to_f32()).abs());
            s[1] = s[1].max(w.abs());
        }
        let mut bias = vec![0.0f32; blocks * k * LANES];
        for ((i, class), &b) in rbm.visible_bias.indexed_iter() {
            bias[((i / LANES) * k + class) * LANES + i % LANES] = b;
            spread[i][2] = spread[i][2].max(b.abs());
        }
        let terms = (m + 1) as f64 * f64::from(f32::EPSILON) / 2.0;
        let gamma = terms / (1.0 - terms);
        let radius_terms = spread
            .iter()
            .map(|s| {
                let [delta, weight, bias] = s.map(f64::from);
                let alpha = delta + gamma * (2.0 * weight + delta);
                let beta = 2.0 * gamma * bias;
                // Rounded up, so the f32 terms never undercut the f64 ones.
                [(alpha * (1.0 + 1e-6)) as f32, (beta * (1.0 + 1e-6)) as f32]
            })
            .collect();
        Self {
            classes: k,
            hidden: m,
            items: d,
            weights,
            halves,
            bias,
            radius_terms,
        }
    }

    /// E[class] of every item under p(v | h), into `out` (one per item).
    pub fn expected_classes(&self, hidden: &[f32], out: &mut [f32]) {
        self.pass(&self.weights, hidden, out, None);
    }

    /// For the joint RBM `rbm` (the model this was built from): E[class | rated] of every item
    /// into `expected` and log p(rated | h) = log σ(logsumexp_k(b[i][k] + W[i][k]·h) + Dimp[i]·h)
    /// into `log_rated`; one pass over W, plus one over Dimp.
    pub fn choice(&self, rbm: &Rbm, hidden: &[f32], expected: &mut [f32], log_rated: &mut [f32]) {
        self.pass(&self.weights, hidden, expected, Some(log_rated));
        let implicit = rbm.implicit().expect("a joint RBM is conditional");
        log_rated
            .par_chunks_mut(CATALOG_TASK)
            .enumerate()
            .for_each(|(task, out)| {
                for (n, lse) in out.iter_mut().enumerate() {
                    let row = implicit.row(task * CATALOG_TASK + n);
                    let x = *lse + kernels::dot(row.as_slice().expect("contiguous"), hidden);
                    *lse = log_sigmoid(x);
                }
            });
    }

    /// E[class] of every item from the f16 weights into `approx`, and into `radius` a bound on how
    /// far each is from what `expected_classes` computes.
    ///
    /// Per logit, the f16 rounding moves the exact sum by at most max|ΔW|·Σh, and each computed
    /// sum of M + 1 terms is within γ = (M+1)u/(1 − (M+1)u) of its exact value relative to Σ|terms|
    /// (u = 2⁻²⁴). Logits within r of each other change each softmax probability by a factor
    /// within e^{±2r}, which moves E[class] by at most (K−1)/2·(e^{2r} − 1) ≤ (K−1)/2·(2r + 4r²)
    /// for 2r ≤ 1 (and E[class] never moves by more than K−1). The computed softmax itself adds a
    /// relative error of a few 1e-6 (fast_exp, sums, division), allowed for generously by 2e-5
    /// per class.
    ///
    /// So a logit's radius is α·Σh + β per item, with α = max|ΔW| + γ(2·max|W| + max|ΔW|) and
    /// β = 2γ·max|b| fixed at construction; the bound arithmetic here runs in f32 with a relative
    /// slack of 1e-5 for its own rounding.
    pub fn screen(&self, hidden: &[f32], approx: &mut [f32], radius: &mut [f32]) {
        self.pass(&self.halves, hidden, approx, None);
        self.expected_radii(hidden, radius);
    }

    /// Σ|h| rounded up: an item's logit radius is α·mass + β (see `screen`).
    fn mass(&self, hidden: &[f32]) -> f32 {
        hidden.iter().map(|h| h.abs()).sum::<f32>() * (1.0 + 1e-5)
    }

    /// `screen`'s radius of each item's E[class] from its logits' radius.
    fn expected_radii(&self, hidden: &[f32], radius: &mut [f32]) {
        let mass = self.mass(hidden);
        let half_spread = (self.classes - 1) as f32 / 2.0;
        let floor = (self.classes - 1) as f32 * 2e-5;
        for (r, &[alpha, beta]) in radius.iter_mut().zip(&self.radius_terms) {
            let x = 2.0 * (alpha * mass + beta);
            let moved = if x <= 1.0 {
                half_spread * (x + x * x)
            } else {
                2.0 * half_spread
            };
            *r = moved * (1.0 + 1e-5) + floor;
        }
    }

    /// For the joint RBM `rbm`: `screen`, and bounds `rated_low ≤ log p(rated | h) ≤ rated_high`
    /// of what `choice` computes, for every item.
    ///
    /// logsumexp is 1-Lipschitz in the largest change of its arguments, so the f16 logits' LSE is
    /// within the logit radius of the f32 one, plus 1e-4 for the computed LSE's own error (a few
    /// 1e-6 relative in its sum and logarithm). Dimp[i]·h is computed exactly as `choice` does,
    /// and log σ is increasing with slope below 1; a relative slack of 1e-5 covers its rounding.
    pub fn screen_choice(
        &self,
        rbm: &Rbm,
        hidden: &[f32],
        approx: &mut [f32],
        radius: &mut [f32],
        rated_low: &mut [f32],
        rated_high: &mut [f32],
    ) {
        self.pass(&self.halves, hidden, approx, Some(rated_low));
        self.expected_radii(hidden, radius);
        let implicit = rbm.implicit().expect("a joint RBM is conditional");
        let mass = self.mass(hidden);
        let slack = |x: f32| 1e-5 * (1.0 + x.abs());
        rated_low
            .par_chunks_mut(CATALOG_TASK)
            .zip(rated_high.par_chunks_mut(CATALOG_TASK))
            .enumerate()
            .for_each(|(task, (low, high))| {
                for (n, (low, high)) in low.iter_mut().zip(high).enumerate() {
                    let i = task * CATALOG_TASK + n;
                    let row = implicit.row(i);
                    let shared = kernels::dot(row.as_slice().expect("contiguous"), hidden);
                    let [alpha, beta] = self.radius_terms[i];
                    let reach = alpha * mass + beta + 1e-4;
                    let (l, h) = (
                        log_sigmoid(*low + shared - reach),
                        log_sigmoid(*low + shared + reach),
                    );
                    (*low, *high) = (l - slack(l), h + slack(h));
                }
            });
    }

    /// `choice` for the listed items only, exactly as it computes them.
    pub fn choice_of(
        &self,
        rbm: &Rbm,
        hidden: &[f32],
        items: &[u32],
        expected: &mut [f32],
        log_rated: &mut [f32],
    ) {
        self.blocks_of(rbm, hidden, items, expected, Some(log_rated));
        let implicit = rbm.implicit().expect("a joint RBM is conditional");
        for (&i, lse) in items.iter().zip(log_rated.iter_mut()) {
            let row = implicit.row(i as usize);
            *lse = log_sigmoid(*lse + kernels::dot(row.as_slice().expect("contiguous"), hidden));
        }
    }

    /// E[class] of the listed items, exactly as `expected_classes` computes them: each group of
    /// LANES items is gathered from the item-major `rbm` (the model this was built from) into one
    /// block and run through the same kernel.
    pub fn expected_classes_of(&self, rbm: &Rbm, hidden: &[f32], items: &[u32], out: &mut [f32]) {
        self.blocks_of(rbm, hidden, items, out, None);
    }

    simd::multiversion! {
        /// `expected_classes_of`, and each item's log Σ_k e^{logit_k} if asked.
        fn blocks_of / blocks_of_avx2(
            &self,
            rbm: &Rbm,
            hidden: &[f32],
            items: &[u32],
            out: &mut [f32],
            log_normalisers: Option<&mut [f32]>,
        ) {
            use kernels::LANES;
            let mut log_normalisers = log_normalisers;
            let (k, m) = (self.classes, self.hidden);
            let mut block = vec![0.0f32; m * k * LANES];
            let mut bias = [0.0f32; MAX_CLASSES * LANES];
            let bias = &mut bias[..k * LANES];
            for (n, (group, out)) in items.chunks(LANES).zip(out.chunks_mut(LANES)).enumerate() {
                for (lane, &item) in group.iter().enumerate() {
                    for class in 0..k {
                        for (j, &w) in rbm.weight_row(item as usize, class).iter().enumerate() {
                            block[(j * k + class) * LANES + lane] = w;
                        }
                        bias[class * LANES + lane] = rbm.visible_bias[[item as usize, class]];
                    }
                }
                let lse = log_normalisers
                    .as_deref_mut()
                    .map(|l| &mut l[n * LANES..n * LANES + group.len()]);
                self.blocks_expected(&block, &hidden[..m], bias, out, lse);
            }
        }
    }

    /// E[class] of the items of one or two consecutive blocks (`out` holds up to 2·LANES items)
    /// from their weights and biases, through `lane_logits`.
    #[inline(always)]
    fn blocks_expected<T: kernels::Weight>(
        &self,
        weights: &[T],
        hidden: &[f32],
        bias: &[f32],
        out: &mut [f32],
        mut log_normalisers: Option<&mut [f32]>,
    ) {
        use kernels::LANES;
        let k = self.classes;
        let mut logits = [0.0f32; MAX_CLASSES * 2 * LANES];
        let logits = &mut logits[..bias.len()];
        kernels::lane_logits(weights, hidden, bias, k, logits);
        for (block, (logits, out)) in logits
            .chunks_mut(k * LANES)
            .zip(out.chunks_mut(LANES))
            .enumerate()
        {
            let (mut expected, mut lse) = ([0.0f32; LANES], [0.0f32; LANES]);
            let wanted = log_normalisers.is_some().then_some(&mut lse[..]);
            kernels::expected_class_of_logits(logits, k, &mut expected, wanted);
            out.copy_from_slice(&expected[..out.len()]);
            if let Some(l) = log_normalisers.as_deref_mut() {
                let n = out.len();
                l[block * LANES..block * LANES + n].copy_from_slice(&lse[..n]);
            }
        }
    }

    simd::multiversion! {
        /// The catalogue pass over `weights` (the f32 or the f16 copy). Tasks of CATALOG_TASK items
        /// are spread over the rayon pool, since one request's cost is reading all of W once.
        /// With `log_normalisers`, also each item's log Σ_k e^{logit_k}.
        fn pass / pass_avx2<T: kernels::Weight>(
            &self,
            weights: &[T],
            hidden: &[f32],
            out: &mut [f32],
            log_normalisers: Option<&mut [f32]>,
        ) {
            use kernels::LANES;
            let (k, m) = (self.classes, self.hidden);
            assert_eq!(out.len(), self.items);
            let block_len = m * k * LANES;
            let task = |task: usize, out: &mut [f32], mut lse: Option<&mut [f32]>| {
                // Two blocks per kernel call: twice the independent sums in flight.
                for (n, out) in out.chunks_mut(2 * LANES).enumerate() {
                    let first = task * (CATALOG_TASK / LANES) + 2 * n;
                    let blocks = out.len().div_ceil(LANES);
                    let at = n * 2 * LANES;
                    self.blocks_expected(
                        &weights[first * block_len..(first + blocks) * block_len],
                        &hidden[..m],
                        &self.bias[first * k * LANES..(first + blocks) * k * LANES],
                        out,
                        lse.as_deref_mut().map(|l| &mut l[at..at + out.len()]),
                    );
                }
            };
            match log_normalisers {
                Some(lse) => out
                    .par_chunks_mut(CATALOG_TASK)
                    .zip(lse.par_chunks_mut(CATALOG_TASK))
                    .enumerate()
                    .for_each(|(t, (out, lse))| task(t, out, Some(lse))),
                None => out
                    .par_chunks_mut(CATALOG_TASK)
                    .enumerate()
                    .for_each(|(t, out)| task(t, out, None)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RbmParams;

    #[test]
    fn catalogue_scoring_matches_item_by_item_expectations() {
        let params = RbmParams {
            hidden: 37,
            init_std: 0.5,
            ..RbmParams::default()
        };
        let (d, k) = (1300, 5);
        let counts: Vec<u32> = (0..d * k).map(|n| (n % 7) as u32).collect();
        let rbm = Rbm::initial(&counts, d, k, &params);
        let hidden: Vec<f32> = (0..37).map(|j| (j as f32 * 0.37).sin().abs()).collect();
        let mut all = vec![0.0f32; d];
        CatalogWeights::new(&rbm).expected_classes(&hidden, &mut all);
        for (item, &score) in all.iter().enumerate() {
            let single = rbm.expected_class(item, &hidden);
            assert!(
                (score - single).abs() < 1e-4,
                "item {item}: {score} vs {single}"
            );
        }
    }
}
