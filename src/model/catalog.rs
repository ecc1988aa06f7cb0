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
/// A second copy, of W + Dimp (Dimp of a joint RBM, else 0) rounded to f16, halves the bytes a pass
/// reads. It only screens: `screen` gives each item an approximate E[class] (and log p(rated)) with
/// a proven error radius, and the items that can still make a top list are then scored exactly by
/// `expected_classes_of`, which runs the f32 kernel, so a top list is the one the full f32 pass
/// would give, score for score.
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
        let implicit = rbm.implicit();
        // Lanes past the last item stay zero and are never read out.
        let mut weights = vec![0.0f32; blocks * m * k * LANES];
        let mut halves = vec![0u16; blocks * m * k * LANES];
        // Per item: max |(W + Dimp) − f16(W + Dimp)|, max |W|, max |b|, max |W + Dimp|, max |Dimp|
        // (Dimp is 0 for a rating-only RBM).
        let mut spread = vec![[0.0f64; 5]; d];
        for ((i, class, j), &w) in rbm.weights.indexed_iter() {
            let at = (((i / LANES) * m + j) * k + class) * LANES + i % LANES;
            let shift = implicit.map_or(0.0, |implicit| implicit[[i, j]]);
            // The screening copy holds W[i][k] + Dimp[i], whose logits are log p(rated with class
            // k) up to a shared term: their softmax is the categorical prediction and their
            // logsumexp the logit of p(rated), with no second pass over Dimp.
            let exact = f64::from(w) + f64::from(shift);
            let half = half::f16::from_f64(exact);
            weights[at] = w;
            halves[at] = half.to_bits();
            let s = &mut spread[i];
            s[0] = s[0].max((exact - half.to_f64()).abs());
            s[1] = s[1].max(f64::from(w).abs());
            s[3] = s[3].max(exact.abs());
            s[4] = s[4].max(f64::from(shift).abs());
        }
        let mut bias = vec![0.0f32; blocks * k * LANES];
        for ((i, class), &b) in rbm.visible_bias.indexed_iter() {
            bias[((i / LANES) * k + class) * LANES + i % LANES] = b;
            spread[i][2] = spread[i][2].max(f64::from(b).abs());
        }
        let terms = (m + 1) as f64 * f64::from(f32::EPSILON) / 2.0;
        let gamma = terms / (1.0 - terms);
        let radius_terms = spread
            .iter()
            .map(|&[delta, weight, bias, shifted, shift]| {
                let alpha = delta + gamma * (shifted + delta + weight + shift);
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
        self.pass(
            &self.weights,
            vec![PassJob {
                hidden,
                out,
                log_normalisers: None,
            }],
        );
    }

    /// For the joint RBM `rbm` (the model this was built from): E[class | rated] of every item
    /// into `expected` and log p(rated | h) = log σ(logsumexp_k(b[i][k] + W[i][k]·h) + Dimp[i]·h)
    /// into `log_rated`; one pass over W, plus one over Dimp.
    pub fn choice(&self, rbm: &Rbm, hidden: &[f32], expected: &mut [f32], log_rated: &mut [f32]) {
        self.pass(
            &self.weights,
            vec![PassJob {
                hidden,
                out: expected,
                log_normalisers: Some(&mut *log_rated),
            }],
        );
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

    /// For each of `screenings` (users scored together, so that the weights are read once for
    /// all of them): E[class] of every item from the f16 weights into `approx`, and into
    /// `radius` a bound on how far each is from what `expected_classes` computes; with `rated`,
    /// for the joint RBM this was built from, bounds `low ≤ log p(rated | h) ≤ high` of what
    /// `choice` computes. Each user's values are exactly those of a pass of its own.
    ///
    /// The f16 copy holds V[i][k] = W[i][k] + Dimp[i] (Dimp = 0 for a rating-only RBM). Adding
    /// Dimp[i]·h to all K logits of an item leaves their softmax, so E[class], as it was, and
    /// their logsumexp is the logit of p(rated | h); so one pass bounds both. Per logit, against
    /// the f32 logit b + W·h that `expected_classes` computes plus the Dimp[i]·h that `choice`
    /// adds: the f16 rounding moves the exact sum by at most max|ΔV|·Σh, and each computed sum of
    /// at most M + 1 terms is within γ = (M+1)u/(1 − (M+1)u) of its exact value relative to
    /// Σ|terms| (u = 2⁻²⁴): γ(|b| + (max|V| + max|ΔV|)·Σh) for the f16 logit, γ(|b| +
    /// max|W|·Σh) for the f32 one, γ·max|Dimp|·Σh for the dot. Logits within r of each other
    /// change each softmax probability by a factor within e^{±2r}, which moves E[class] by at
    /// most (K−1)/2·(e^{2r} − 1) ≤ (K−1)/2·(2r + 4r²) for 2r ≤ 1 (and E[class] never moves by more
    /// than K−1). The computed softmax itself adds a relative error of a few 1e-6 (fast_exp, sums,
    /// division), allowed for generously by 2e-5 per class.
    ///
    /// So a logit's radius is α·Σh + β per item, with α = max|ΔV| + γ(max|V| + max|ΔV| + max|W| +
    /// max|Dimp|) and β = 2γ·max|b| fixed at construction; the bound arithmetic here runs in f32
    /// with a relative slack of 1e-5 for its own rounding.
    ///
    /// logsumexp is 1-Lipschitz in the largest change of its arguments, so the f16 logits' LSE is
    /// within the logit radius of `choice`'s logit of p(rated), plus 1e-4 for the computed LSEs'
    /// own errors and the rounding of `choice`'s sum (a few 1e-6 relative); log σ is increasing
    /// with slope below 1, and `kernels::log_sigmoid_bounds` then bounds it, with a slack that
    /// covers its own approximation.
    pub fn screen(&self, screenings: &mut [Screening]) {
        self.pass(
            &self.halves,
            screenings
                .iter_mut()
                .map(|s| PassJob {
                    hidden: s.hidden,
                    out: &mut *s.approx,
                    log_normalisers: s.rated.as_mut().map(|(low, _)| &mut **low),
                })
                .collect(),
        );
        for s in screenings.iter_mut() {
            self.expected_radii(s.hidden, s.radius);
        }
        // The pass left each joint user's approximate logit of p(rated) in `low`.
        let joint: Vec<JointBounds> = screenings
            .iter_mut()
            .filter_map(|s| {
                let (low, high) = s.rated.as_mut()?;
                Some((self.mass(s.hidden), &mut **low, &mut **high))
            })
            .collect();
        by_task(joint, |(mass, low, high)| {
            low.chunks_mut(CATALOG_TASK)
                .zip(high.chunks_mut(CATALOG_TASK))
                .map(move |(low, high)| (mass, low, high))
        })
        .into_par_iter()
        .enumerate()
        .for_each(|(task, users)| {
            let terms = &self.radius_terms[task * CATALOG_TASK..];
            for (mass, low, high) in users {
                for ((low, high), &[alpha, beta]) in low.iter_mut().zip(high.iter_mut()).zip(terms)
                {
                    let reach = alpha * mass + beta + 1e-4;
                    (*low, *high) = (*low - reach, *low + reach);
                }
                kernels::log_sigmoid_bounds(low, high);
            }
        });
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
                // A short group repeats its first item in the spare lanes, whose results are dropped.
                let lane_item = |lane: usize| *group.get(lane).unwrap_or(&group[0]) as usize;
                for class in 0..k {
                    let rows = std::array::from_fn(|lane| rbm.weight_row(lane_item(lane), class));
                    kernels::rows_to_lanes(rows, &mut block[class * LANES..], k * LANES);
                    for lane in 0..LANES {
                        bias[class * LANES + lane] = rbm.visible_bias[[lane_item(lane), class]];
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
        log_normalisers: Option<&mut [f32]>,
    ) {
        let mut logits = [0.0f32; MAX_CLASSES * 2 * kernels::LANES];
        let logits = &mut logits[..bias.len()];
        kernels::lane_logits(weights, hidden, bias, self.classes, logits);
        kernels::expected_classes_of_blocks(logits, self.classes, out, log_normalisers);
    }

    simd::multiversion! {
        /// The catalogue pass over `weights` (the f32 or the f16 copy) for every job's hidden
        /// vector. Tasks of CATALOG_TASK items are spread over the rayon pool, and within a task
        /// each pair of blocks serves every job while it is in cache: one pass over memory
        /// whatever the number of users, which is what a request's cost is. A job's values are
        /// the same, bit for bit, as from a pass of its own.
        fn pass / pass_avx2<T: kernels::Weight>(&self, weights: &[T], jobs: Vec<PassJob>) {
            use kernels::LANES;
            let (k, m) = (self.classes, self.hidden);
            let block_len = m * k * LANES;
            for job in &jobs {
                assert_eq!(job.out.len(), self.items);
            }
            by_task(jobs, |job| {
                let mut lse = job.log_normalisers.map(|l| l.chunks_mut(CATALOG_TASK));
                job.out.chunks_mut(CATALOG_TASK).map(move |out| {
                    let lse = lse.as_mut().map(|l| l.next().expect("as long as out"));
                    (job.hidden, out, lse)
                })
            })
            .into_par_iter()
            .enumerate()
            .for_each(|(task, mut users)| {
                let items = users[0].1.len();
                let hiddens: Vec<&[f32]> = users.iter().map(|(hidden, ..)| &hidden[..m]).collect();
                let mut logits = vec![0.0f32; users.len() * 2 * k * LANES];
                // Two blocks at a time: a lone user's kernel interleaves them, for twice the
                // independent sums in flight; users together have sums enough of their own.
                for (n, at) in (0..items).step_by(2 * LANES).enumerate() {
                    let first = task * (CATALOG_TASK / LANES) + 2 * n;
                    let end = (at + 2 * LANES).min(items);
                    let blocks = (end - at).div_ceil(LANES);
                    let weights = &weights[first * block_len..(first + blocks) * block_len];
                    let bias = &self.bias[first * k * LANES..(first + blocks) * k * LANES];
                    let logits = &mut logits[..users.len() * bias.len()];
                    kernels::lane_logits_each(weights, &hiddens, bias, k, logits);
                    for ((_, out, lse), logits) in users.iter_mut().zip(logits.chunks_mut(bias.len())) {
                        kernels::expected_classes_of_blocks(
                            logits,
                            k,
                            &mut out[at..end],
                            lse.as_deref_mut().map(|l| &mut l[at..end]),
                        );
                    }
                }
            });
        }
    }
}

type JointBounds<'a> = (f32, &'a mut [f32], &'a mut [f32]);

/// One user's share of a catalogue pass: the hidden vector, one value per item out, and each
/// item's log Σ_k e^{logit_k} if asked.
struct PassJob<'a> {
    hidden: &'a [f32],
    out: &'a mut [f32],
    log_normalisers: Option<&'a mut [f32]>,
}

/// One user of `CatalogWeights::screen`: ĥ in, per-item bounds out (each as long as the catalogue).
pub struct Screening<'a> {
    pub hidden: &'a [f32],
    pub approx: &'a mut [f32],
    pub radius: &'a mut [f32],
    /// For the joint RBM's score order: where the bounds of log p(rated | h) go.
    pub rated: Option<(&'a mut [f32], &'a mut [f32])>,
}

/// Cuts each job by `chunks` into its CATALOG_TASK-item pieces and regroups them by task: the
/// i-th list holds every job's i-th piece, in job order.
fn by_task<J, P, C: Iterator<Item = P>>(jobs: Vec<J>, chunks: impl Fn(J) -> C) -> Vec<Vec<P>> {
    let mut tasks: Vec<Vec<P>> = Vec::new();
    let count = jobs.len();
    for job in jobs {
        for (task, piece) in chunks(job).enumerate() {
            if task == tasks.len() {
                tasks.push(Vec::with_capacity(count));
            }
            tasks[task].push(piece);
        }
    }
    tasks
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

    #[test]
    fn screening_bounds_enclose_the_exact_values() {
        let (d, k, m) = (1300, 5, 61);
        let params = RbmParams {
            hidden: m,
            init_std: 0.4,
            ..RbmParams::default()
        };
        let counts: Vec<u32> = (0..d * k).map(|n| (n % 7) as u32).collect();
        let base = Rbm::initial(&counts, d, k, &params);
        // Dimp of a size with W's, and varied per item, so that folding it into the f16 copy
        // moves both the E[class] and the log p(rated) bounds.
        let implicit =
            ndarray::Array2::from_shape_fn((d, m), |(i, j)| ((i * 31 + j * 17) as f32).sin() * 0.8);
        let rbm = Rbm::from_parts(
            base.weights().clone(),
            base.visible_bias().clone(),
            base.hidden_bias().clone(),
            Some(implicit),
        )
        .unwrap();
        let catalog = CatalogWeights::new(&rbm);
        let hiddens: Vec<Vec<f32>> = (0..3)
            .map(|u| {
                (0..m)
                    .map(|j| ((j * (u + 2)) as f32 * 0.7).cos().abs())
                    .collect()
            })
            .chain([vec![1.0; m], vec![0.0; m]])
            .collect();
        let mut buffers = vec![[vec![0.0f32; d], vec![0.0; d], vec![0.0; d], vec![0.0; d]]; 5];
        let mut screenings: Vec<Screening> = hiddens
            .iter()
            .zip(buffers.iter_mut())
            .map(|(hidden, [approx, radius, low, high])| Screening {
                hidden,
                approx,
                radius,
                rated: Some((low, high)),
            })
            .collect();
        catalog.screen(&mut screenings);
        for (hidden, s) in hiddens.iter().zip(&screenings) {
            let (mut expected, mut log_rated) = (vec![0.0f32; d], vec![0.0f32; d]);
            catalog.choice(&rbm, hidden, &mut expected, &mut log_rated);
            let (low, high) = s.rated.as_ref().unwrap();
            for i in 0..d {
                assert!(
                    (s.approx[i] - expected[i]).abs() <= s.radius[i],
                    "item {i}: E[class] {} ± {} misses {}",
                    s.approx[i],
                    s.radius[i],
                    expected[i]
                );
                assert!(
                    low[i] <= log_rated[i] && log_rated[i] <= high[i],
                    "item {i}: log p(rated) {} outside [{}, {}]",
                    log_rated[i],
                    low[i],
                    high[i]
                );
                // Bounds that screen something: f16 rounding at these weights is a few 1e-3.
                assert!(
                    high[i] - low[i] < 0.5 && s.radius[i] < 1.0,
                    "item {i}: loose"
                );
            }
        }
    }
}
