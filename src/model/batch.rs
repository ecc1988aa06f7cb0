//! One mini-batch of CD-T, organised for memory locality. The hidden passes run user-major (one case
//! per task: Σ of the case's W rows); the visible pass runs item-major, so each item's W[i] (K·M
//! floats) is loaded once for all the batch's cases that rated it, and the gradient of a row
//! W[i][k] is summed straight from that item's entries. No gradient buffer of W's size exists, and
//! every random draw is seeded by (seed, step, case or item), so results do not depend on how many
//! threads run.

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;

use super::SparseRatings;
use super::kernels;
use super::rbm::{MAX_CLASSES, Rbm};

/// One rating of the batch in item-major order.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// The case (position in the batch) that gave the rating.
    slot: u32,
    /// Position of the rating in the batch's user-major flat arrays.
    flat: u32,
    class: u8,
    /// The class v_T sampled for it by the last Gibbs step.
    sampled: u8,
}

/// Buffers of one mini-batch, reused from batch to batch.
pub(crate) struct MiniBatch {
    k: usize,
    m: usize,
    rows: Vec<u32>,
    /// Start of each case's ratings in the flat user-major arrays (len B + 1).
    offsets: Vec<usize>,
    sampled: Vec<u8>,
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
    /// p(h|v) − p(h|v_T) summed over the batch: the gradient of c before averaging.
    hidden_bias_gradient: Vec<f32>,
}

/// Mixes a seed with a step and an index into an independent stream.
fn stream(seed: u64, step: u64, index: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(
        seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index.wrapping_mul(0xc2b2_ae3d_27d4_eb4f),
    )
}

fn sample_bernoulli(probabilities: &[f32], rng: &mut Xoshiro256PlusPlus, out: &mut [f32]) {
    for (h, &p) in out.iter_mut().zip(probabilities) {
        *h = if rng.random::<f32>() < p { 1.0 } else { 0.0 };
    }
}

impl MiniBatch {
    pub fn new(items: usize, k: usize, m: usize) -> Self {
        Self {
            k,
            m,
            rows: Vec::new(),
            offsets: Vec::new(),
            sampled: Vec::new(),
            positive: Vec::new(),
            negative: Vec::new(),
            hidden_sample: Vec::new(),
            items: Vec::new(),
            item_start: Vec::new(),
            entries: Vec::new(),
            group_of: vec![0; items],
            counts: vec![0; items],
            hidden_bias_gradient: vec![0.0; m],
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Items rated in the batch, ascending.
    pub fn items(&self) -> &[u32] {
        &self.items
    }

    /// Runs CD-T on the cases `rows` of `train`. Afterwards the gradient accessors describe the
    /// batch's summed (not yet averaged) log-likelihood gradient.
    pub fn run(
        &mut self,
        rbm: &Rbm,
        train: &SparseRatings,
        rows: &[u32],
        cd_steps: usize,
        seed: u64,
        step: u64,
    ) {
        self.index(train, rows);
        let m = self.m;
        let (offsets, sampled) = (&self.offsets, &self.sampled);
        let case = |slot: usize| {
            let (items, _) = train.row(rows[slot] as usize);
            (items, &sampled[offsets[slot]..offsets[slot + 1]])
        };
        self.positive.resize(rows.len() * m, 0.0);
        self.negative.resize(rows.len() * m, 0.0);
        self.hidden_sample.resize(rows.len() * m, 0.0);
        self.positive
            .par_chunks_mut(m)
            .zip(self.hidden_sample.par_chunks_mut(m))
            .enumerate()
            .for_each(|(slot, (positive, hidden))| {
                let (items, classes) = case(slot);
                rbm.hidden_probabilities(items, classes, items, positive);
                sample_bernoulli(positive, &mut stream(seed, step, slot as u64), hidden);
            });
        for t in 0..cd_steps {
            self.sample_visible(rbm, seed ^ (t as u64) << 56, step);
            for e in &self.entries {
                self.sampled[e.flat as usize] = e.sampled;
            }
            let (offsets, sampled) = (&self.offsets, &self.sampled);
            let last = t + 1 == cd_steps;
            self.negative
                .par_chunks_mut(m)
                .zip(self.hidden_sample.par_chunks_mut(m))
                .enumerate()
                .for_each(|(slot, (negative, hidden))| {
                    let (items, _) = train.row(rows[slot] as usize);
                    let classes = &sampled[offsets[slot]..offsets[slot + 1]];
                    rbm.hidden_probabilities(items, classes, items, negative);
                    if !last {
                        let index = ((t as u64 + 1) << 40) | slot as u64;
                        sample_bernoulli(negative, &mut stream(seed, step, index), hidden);
                    }
                });
        }
        self.hidden_bias_gradient.fill(0.0);
        for (p, n) in self.positive.chunks(m).zip(self.negative.chunks(m)) {
            kernels::add_assign(&mut self.hidden_bias_gradient, p);
            kernels::sub_assign(&mut self.hidden_bias_gradient, n);
        }
    }

    /// Lays the batch out: user-major offsets and classes, and the item-major entry groups.
    fn index(&mut self, train: &SparseRatings, rows: &[u32]) {
        self.rows.clear();
        self.rows.extend_from_slice(rows);
        self.offsets.clear();
        self.offsets.push(0);
        self.sampled.clear();
        self.items.clear();
        for &row in rows {
            let (items, classes) = train.row(row as usize);
            self.sampled.extend_from_slice(classes);
            self.offsets.push(self.sampled.len());
            for &i in items {
                if self.counts[i as usize] == 0 {
                    self.items.push(i);
                }
                self.counts[i as usize] += 1;
            }
        }
        self.items.sort_unstable();
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
        self.entries.resize(self.sampled.len(), Entry::default());
        let mut flat = 0u32;
        for (slot, &row) in rows.iter().enumerate() {
            let (items, classes) = train.row(row as usize);
            for (&i, &class) in items.iter().zip(classes) {
                let at = &mut self.counts[i as usize];
                self.entries[*at as usize] = Entry {
                    slot: slot as u32,
                    flat,
                    class,
                    sampled: class,
                };
                *at += 1;
                flat += 1;
            }
        }
        for &i in &self.items {
            self.counts[i as usize] = 0;
        }
    }

    /// One visible Gibbs half-step: for each item, v_i ~ p(v_i | h) for every case that rated it.
    fn sample_visible(&mut self, rbm: &Rbm, seed: u64, step: u64) {
        let (k, m) = (self.k, self.m);
        let mut groups: Vec<(u32, &mut [Entry])> = Vec::with_capacity(self.items.len());
        let mut rest = self.entries.as_mut_slice();
        for (g, &i) in self.items.iter().enumerate() {
            let (group, tail) = rest.split_at_mut(self.item_start[g + 1] - self.item_start[g]);
            groups.push((i, group));
            rest = tail;
        }
        let hidden = &self.hidden_sample;
        groups.into_par_iter().for_each(|(item, entries)| {
            let mut rng = stream(seed, step, u64::from(item) | 1 << 63);
            let mut probabilities = [0.0f32; MAX_CLASSES];
            let probabilities = &mut probabilities[..k];
            for e in entries {
                let h = &hidden[e.slot as usize * m..(e.slot as usize + 1) * m];
                rbm.visible_probabilities(item as usize, h, probabilities);
                let u: f32 = rng.random();
                let mut cumulative = 0.0;
                e.sampled = (k - 1) as u8;
                for (class, &p) in probabilities.iter().enumerate() {
                    cumulative += p;
                    if u < cumulative {
                        e.sampled = class as u8;
                        break;
                    }
                }
            }
        });
    }

    fn group(&self, item: usize) -> &[Entry] {
        let g = self.group_of[item] as usize;
        &self.entries[self.item_start[g]..self.item_start[g + 1]]
    }

    /// Calls `mark(row)` for every (item·K + class) row of W that has a gradient this batch.
    pub fn for_each_weight_row(&self, mut mark: impl FnMut(usize)) {
        for &i in &self.items {
            for e in self.group(i as usize) {
                mark(i as usize * self.k + e.class as usize);
                mark(i as usize * self.k + e.sampled as usize);
            }
        }
    }

    /// Σ over the batch of v[i][k]·p(h|v) − v_T[i][k]·p(h|v_T), times `scale`, for row = i·K + k.
    pub fn weight_gradient(&self, row: usize, scale: f32, out: &mut [f32]) {
        let (item, class) = (row / self.k, (row % self.k) as u8);
        let m = self.m;
        out.fill(0.0);
        for e in self.group(item) {
            let slot = e.slot as usize;
            if e.class == class {
                kernels::add_assign(out, &self.positive[slot * m..(slot + 1) * m]);
            }
            if e.sampled == class {
                kernels::sub_assign(out, &self.negative[slot * m..(slot + 1) * m]);
            }
        }
        out.iter_mut().for_each(|g| *g *= scale);
    }

    /// The gradient of all K rows of item i at once (the factored model's ∂/∂W[i]).
    pub fn item_weight_gradient(&self, item: usize, scale: f32, out: &mut [f32]) {
        let m = self.m;
        for (class, chunk) in out.chunks_mut(m).enumerate() {
            self.weight_gradient(item * self.k + class, scale, chunk);
        }
    }

    /// Σ v[i][k] − v_T[i][k] over the batch, times `scale`.
    pub fn visible_bias_gradient(&self, item: usize, scale: f32, out: &mut [f32]) {
        out.fill(0.0);
        for e in self.group(item) {
            out[e.class as usize] += scale;
            out[e.sampled as usize] -= scale;
        }
    }

    pub fn hidden_bias_gradient(&self, scale: f32, out: &mut [f32]) {
        for (o, g) in out.iter_mut().zip(&self.hidden_bias_gradient) {
            *o = g * scale;
        }
    }

    /// Σ over the cases that rated item i of p(h|v) − p(h|v_T), times `scale` (the gradient of Dimp[i]).
    pub fn implicit_gradient(&self, item: usize, scale: f32, out: &mut [f32]) {
        let m = self.m;
        out.fill(0.0);
        for e in self.group(item) {
            let slot = e.slot as usize;
            kernels::add_assign(out, &self.positive[slot * m..(slot + 1) * m]);
            kernels::sub_assign(out, &self.negative[slot * m..(slot + 1) * m]);
        }
        out.iter_mut().for_each(|g| *g *= scale);
    }
}
