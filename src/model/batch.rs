//! One mini-batch of CD-T, organised for memory locality. The batch's ratings are grouped by
//! item, ascending, and every pass walks the items: the hidden passes add W[i][k] to the inputs
//! of the cases that rated item i, in a fixed number of item ranges with sums of their own; the
//! visible draw of item i runs in the same pass, while W[i] (K·M floats) is in cache, so the
//! negative phase reads W once; and the gradient of item i's rows is summed straight from that
//! item's entries. No gradient buffer of W's size exists, and every sum runs in an order and
//! every random draw is seeded by (seed, step, case or item) independently of how many threads
//! run, so neither do the results.

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;

use super::kernels;
use super::rbm::Rbm;
use super::scale::MAX_CLASSES;
use super::simd;
use super::{Checkpoint, SparseRatings};

/// Item ranges the hidden passes are split into, whatever the number of threads: enough to keep
/// a few cores busy, few enough that their B×M sums stay cheap to clear and combine.
const PARTS: usize = 8;

/// One rating of the batch in item-major order.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// The case (position in the batch) that gave the rating.
    slot: u32,
    class: u8,
    /// The class v_T sampled for it by the last Gibbs step.
    sampled: u8,
}

/// Factors of a gradient's positive (data) and negative (model) halves: the batch average is
/// both 1/B; the joint RBM weighs the rating term's halves differently (see `choice`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scales {
    pub positive: f32,
    pub negative: f32,
}

impl Scales {
    pub fn both(scale: f32) -> Self {
        Self {
            positive: scale,
            negative: scale,
        }
    }

    pub fn times(self, factor: f32) -> Self {
        Self {
            positive: self.positive * factor,
            negative: self.negative * factor,
        }
    }
}

/// Which visible state a hidden pass conditions on.
#[derive(Debug, Clone, Copy)]
enum Visible {
    Data,
    Sampled,
}

/// Buffers of one mini-batch, reused from batch to batch.
pub(crate) struct MiniBatch {
    k: usize,
    m: usize,
    rows: Vec<u32>,
    /// p(h | v) per case, B×M.
    positive: Vec<f32>,
    /// p(h | v_T) per case, B×M.
    negative: Vec<f32>,
    /// The binary hidden state driving the next visible sample, B×M.
    hidden_sample: Vec<f32>,
    /// Items rated in the batch, ascending, and where each one's entries start (len + 1).
    items: Vec<u32>,
    item_start: Vec<usize>,
    entries: Vec<Entry>,
    /// For every item, its position in `items` (meaningful for items of the current batch).
    group_of: Vec<u32>,
    counts: Vec<u32>,
    /// Where each of the PARTS item ranges starts in `items` (PARTS + 1 bounds).
    part_start: Vec<usize>,
    /// Each part's sums of hidden inputs, PARTS × B×M.
    partials: Vec<f32>,
    /// p(h|v) and p(h|v_T) summed over the batch (2·M): the halves of c's gradient.
    hidden_sums: Vec<f32>,
}

/// Mixes a seed with a step and an index into an independent stream.
fn stream(seed: u64, step: u64, index: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(
        seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index.wrapping_mul(0xc2b2_ae3d_27d4_eb4f),
    )
}

#[inline(always)]
fn sample_bernoulli(probabilities: &[f32], rng: &mut Xoshiro256PlusPlus, out: &mut [f32]) {
    for (h, &p) in out.iter_mut().zip(probabilities) {
        *h = if rng.random::<f32>() < p { 1.0 } else { 0.0 };
    }
}

/// v_i ~ p(v_i | h) into `sampled` for each of item i's `entries`, h being each case's row of
/// `hidden`.
#[inline(always)]
fn sample_item(
    rbm: &Rbm,
    item: usize,
    entries: &mut [Entry],
    hidden: &[f32],
    k: usize,
    mut rng: Xoshiro256PlusPlus,
) {
    let m = rbm.hidden();
    let hidden_of = |e: &Entry| &hidden[e.slot as usize * m..(e.slot as usize + 1) * m];
    // Entries are drawn CHUNK at a time, the chunk's logits laid out class by class so that the
    // softmax and the draw run across its entries in vector lanes.
    const CHUNK: usize = 8;
    let mut logits = [[0.0f32; MAX_CLASSES]; CHUNK];
    let mut by_class = [[0.0f32; CHUNK]; MAX_CLASSES];
    for chunk in entries.chunks_mut(CHUNK) {
        // Two entries per kernel call share the loads of W[i].
        for (pair, logits) in chunk.chunks(2).zip(logits.chunks_mut(2)) {
            match (pair, logits) {
                ([a, b], [la, lb]) => rbm.visible_logits_each(
                    item,
                    [hidden_of(a), hidden_of(b)],
                    [&mut la[..k], &mut lb[..k]],
                ),
                ([a], [la, ..]) => rbm.visible_logits(item, hidden_of(a), &mut la[..k]),
                _ => unreachable!("chunks of two"),
            }
        }
        for (class, lanes) in by_class[..k].iter_mut().enumerate() {
            for (lane, logits) in lanes.iter_mut().zip(&logits) {
                *lane = logits[class];
            }
        }
        // Cumulative unnormalised probabilities e^(z − max), class by class.
        let mut max = [f32::NEG_INFINITY; CHUNK];
        for lanes in &by_class[..k] {
            for (max, &z) in max.iter_mut().zip(lanes) {
                *max = max.max(z);
            }
        }
        let mut cumulative = [0.0f32; CHUNK];
        for lanes in &mut by_class[..k] {
            for ((c, z), max) in cumulative.iter_mut().zip(lanes.iter_mut()).zip(&max) {
                *c += kernels::fast_exp(*z - max);
                *z = *c;
            }
        }
        // Inverse-CDF draw: the class is the number of cumulative sums at or below u.
        for (lane, e) in chunk.iter_mut().enumerate() {
            let u = rng.random::<f32>() * by_class[k - 1][lane];
            let below = by_class[..k - 1].iter().filter(|c| c[lane] <= u).count();
            e.sampled = below as u8;
        }
    }
}

impl MiniBatch {
    pub fn new(items: usize, k: usize, m: usize) -> Self {
        Self {
            k,
            m,
            rows: Vec::new(),
            positive: Vec::new(),
            negative: Vec::new(),
            hidden_sample: Vec::new(),
            items: Vec::new(),
            item_start: Vec::new(),
            entries: Vec::new(),
            group_of: vec![0; items],
            counts: vec![0; items],
            part_start: Vec::new(),
            partials: Vec::new(),
            hidden_sums: vec![0.0; 2 * m],
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Items rated in the batch, ascending.
    pub fn items(&self) -> &[u32] {
        &self.items
    }

    /// Runs CD-T on the cases laid out by the last `index`. Afterwards the gradient accessors
    /// describe the batch's log-likelihood gradient, unless `stop` said to stop: the remaining
    /// Gibbs steps are then skipped, leaving the batch unusable.
    pub fn run(&mut self, rbm: &Rbm, cd_steps: usize, seed: u64, step: u64, stop: &dyn Checkpoint) {
        let (m, cases) = (self.m, self.rows.len());
        self.positive.resize(cases * m, 0.0);
        self.negative.resize(cases * m, 0.0);
        self.hidden_sample.resize(cases * m, 0.0);
        self.partials.resize(PARTS * cases * m, 0.0);
        self.accumulate(rbm, None);
        self.hidden_probabilities(rbm, Visible::Data, Some((seed, step, 0)));
        for t in 0..cd_steps {
            if stop.should_stop() {
                return;
            }
            self.accumulate(rbm, Some((seed ^ (t as u64) << 56, step)));
            let last = t + 1 == cd_steps;
            let sample = (!last).then_some((seed, step, t as u64 + 1));
            self.hidden_probabilities(rbm, Visible::Sampled, sample);
        }
        self.hidden_sums.fill(0.0);
        let (positive, negative) = self.hidden_sums.split_at_mut(m);
        for (p, n) in self.positive.chunks(m).zip(self.negative.chunks(m)) {
            kernels::add_assign(positive, p);
            kernels::add_assign(negative, n);
        }
    }

    simd::multiversion! {
        /// Adds, for every rating of the batch, W[i][k] (and Dimp[i] for the conditional RBM) to the
        /// hidden input of the case that gave it, with k the rated class, or, given `(seed, step)`,
        /// first draws v_i ~ p(v_i | h) for the item's entries from `hidden_sample` and takes the
        /// drawn class. The items are split into PARTS ranges of about equal entries, run in
        /// parallel; each range sums into its own B×M slice of `partials` in ascending item order.
        /// So each row of W is read once per pass, while it is in cache for the visible draw, and the
        /// sums do not depend on the number of threads.
        fn accumulate / accumulate_avx2(&mut self, rbm: &Rbm, resample: Option<(u64, u64)>) {
            let (k, m, cases) = (self.k, self.m, self.rows.len());
            let (items, item_start, part_start) = (&self.items, &self.item_start, &self.part_start);
            let mut parts = Vec::with_capacity(PARTS);
            let mut rest = self.entries.as_mut_slice();
            for bounds in part_start.windows(2) {
                let groups = bounds[0]..bounds[1];
                let (part, tail) = rest.split_at_mut(item_start[groups.end] - item_start[groups.start]);
                parts.push((groups, part));
                rest = tail;
            }
            let hidden = &self.hidden_sample;
            self.partials.par_chunks_mut(cases * m).zip(parts).for_each(
                |(partial, (groups, entries))| {
                    partial.fill(0.0);
                    let mut rest = entries;
                    for g in groups {
                        let item = items[g] as usize;
                        let (entries, tail) = rest.split_at_mut(item_start[g + 1] - item_start[g]);
                        rest = tail;
                        if let Some((seed, step)) = resample {
                            sample_item(
                                rbm,
                                item,
                                entries,
                                hidden,
                                k,
                                stream(seed, step, item as u64 | 1 << 63),
                            );
                        }
                        for e in entries.iter() {
                            let class = if resample.is_some() {
                                e.sampled
                            } else {
                                e.class
                            };
                            let input = &mut partial[e.slot as usize * m..(e.slot as usize + 1) * m];
                            kernels::add_assign(input, rbm.weight_row(item, class as usize));
                            if let Some(implicit) = &rbm.implicit {
                                kernels::add_assign(
                                    input,
                                    implicit.row(item).as_slice().expect("contiguous"),
                                );
                            }
                        }
                    }
                },
            );
        }
    }

    simd::multiversion! {
        /// p(h | v) of every case from `partials` (c plus the parts' sums, in part order) into
        /// `positive` (from the data) or `negative` (from the last sample), and, given
        /// `(seed, step, t)`, a binary sample of it into `hidden_sample`.
        fn hidden_probabilities / hidden_probabilities_avx2(
            &mut self,
            rbm: &Rbm,
            visible: Visible,
            sample: Option<(u64, u64, u64)>,
        ) {
            let (m, cases) = (self.m, self.rows.len());
            let probabilities = match visible {
                Visible::Data => &mut self.positive,
                Visible::Sampled => &mut self.negative,
            };
            let partials = &self.partials;
            let hidden_bias = rbm.hidden_bias.as_slice().expect("contiguous");
            probabilities
                .par_chunks_mut(m)
                .zip(self.hidden_sample.par_chunks_mut(m))
                .enumerate()
                .with_min_len(8)
                .for_each(|(slot, (p, h))| {
                    p.copy_from_slice(hidden_bias);
                    for part in partials.chunks(cases * m) {
                        kernels::add_assign(p, &part[slot * m..(slot + 1) * m]);
                    }
                    p.iter_mut().for_each(|x| *x = kernels::sigmoid(*x));
                    if let Some((seed, step, t)) = sample {
                        let index = (t << 40) | slot as u64;
                        sample_bernoulli(p, &mut stream(seed, step, index), h);
                    }
                });
        }
    }

    /// Lays the cases `rows` of `train` out in item-major entry groups; `items` then lists the
    /// items `run` will read.
    pub fn index(&mut self, train: &SparseRatings, rows: &[u32]) {
        self.rows.clear();
        self.rows.extend_from_slice(rows);
        let mut ratings = 0;
        self.items.clear();
        for &row in rows {
            let (items, _) = train.row(row as usize);
            ratings += items.len();
            for &i in items {
                self.counts[i as usize] += 1;
            }
        }
        // A scan of the catalogue lists the rated items in order, cheaper than sorting them.
        self.items
            .extend((0..self.counts.len() as u32).filter(|&i| self.counts[i as usize] > 0));
        self.item_start.clear();
        self.item_start.push(0);
        for (group, &i) in self.items.iter().enumerate() {
            self.group_of[i as usize] = group as u32;
            let start = *self.item_start.last().expect("starts with 0");
            self.item_start
                .push(start + self.counts[i as usize] as usize);
            // From here on `counts` is the next free position of the item's group.
            self.counts[i as usize] = start as u32;
        }
        self.entries.clear();
        self.entries.resize(ratings, Entry::default());
        for (slot, &row) in rows.iter().enumerate() {
            let (items, classes) = train.row(row as usize);
            for (&i, &class) in items.iter().zip(classes) {
                let at = &mut self.counts[i as usize];
                self.entries[*at as usize] = Entry {
                    slot: slot as u32,
                    class,
                    sampled: class,
                };
                *at += 1;
            }
        }
        for &i in &self.items {
            self.counts[i as usize] = 0;
        }
        // Part p starts at the first item whose entries begin at or past p/PARTS of them all.
        self.part_start.clear();
        let mut group = 0;
        for part in 0..PARTS {
            while self.item_start[group] * PARTS < ratings * part {
                group += 1;
            }
            self.part_start.push(group);
        }
        self.part_start.push(self.items.len());
    }

    fn group(&self, item: usize) -> &[Entry] {
        let g = self.group_of[item] as usize;
        &self.entries[self.item_start[g]..self.item_start[g + 1]]
    }

    /// Adds the gradient of item i's K rows of W, Σ over the batch of v[i][k]·p(h|v) −
    /// v_T[i][k]·p(h|v_T) with the halves scaled by `scale`, to `out` (K·M), from one pass over the
    /// item's entries.
    #[inline(always)]
    pub fn add_item_weight_gradient(&self, item: usize, scale: Scales, out: &mut [f32]) {
        let m = self.m;
        for e in self.group(item) {
            let slot = e.slot as usize * m;
            let (class, sampled) = (e.class as usize, e.sampled as usize);
            kernels::axpy(
                &mut out[class * m..(class + 1) * m],
                scale.positive,
                &self.positive[slot..slot + m],
            );
            kernels::axpy(
                &mut out[sampled * m..(sampled + 1) * m],
                -scale.negative,
                &self.negative[slot..slot + m],
            );
        }
    }

    /// Adds Σ v[i][k] − v_T[i][k] over the batch, the halves scaled by `scale`, to `out` (K).
    #[inline(always)]
    pub fn add_visible_bias_gradient(&self, item: usize, scale: Scales, out: &mut [f32]) {
        for e in self.group(item) {
            out[e.class as usize] += scale.positive;
            out[e.sampled as usize] -= scale.negative;
        }
    }

    /// Adds Σ p(h|v) − p(h|v_T) over the batch, the halves scaled by `scale`, to `out` (M).
    pub fn add_hidden_bias_gradient(&self, scale: Scales, out: &mut [f32]) {
        let (positive, negative) = self.hidden_sums.split_at(self.m);
        for ((o, p), n) in out.iter_mut().zip(positive).zip(negative) {
            *o += scale.positive * p - scale.negative * n;
        }
    }

    /// p(h | v) of the batch's cases, B×M.
    pub fn positive(&self) -> &[f32] {
        &self.positive
    }

    /// Adds Σ over the cases that rated item i of p(h|v) − p(h|v_T), the halves scaled by `scale`
    /// (the gradient of Dimp[i]), to `out` (M).
    #[inline(always)]
    pub fn add_implicit_gradient(&self, item: usize, scale: Scales, out: &mut [f32]) {
        let m = self.m;
        for e in self.group(item) {
            let slot = e.slot as usize;
            kernels::axpy(
                out,
                scale.positive,
                &self.positive[slot * m..(slot + 1) * m],
            );
            kernels::axpy(
                out,
                -scale.negative,
                &self.negative[slot * m..(slot + 1) * m],
            );
        }
    }
}
