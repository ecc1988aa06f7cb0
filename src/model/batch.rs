//! One mini-batch of CD-T, organised for memory locality. Every pass walks the batch's items in
//! ascending order: the hidden passes with one range of cases per thread (each adds W[i][k] to the
//! inputs of its cases that rated item i), the visible pass with one item per task, so each item's
//! W[i] (K·M floats) is loaded once for all the batch's cases that rated it, and the gradient of
//! item i's rows is summed straight from that item's entries. No gradient buffer of W's size
//! exists, a case's sums run in item order, and every random draw is seeded by (seed, step, case or
//! item), so results do not depend on how many threads run.

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
    class: u8,
    /// The class v_T sampled for it by the last Gibbs step.
    sampled: u8,
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

    /// Runs CD-T on the cases laid out by the last `index`. Afterwards the gradient accessors
    /// describe the batch's log-likelihood gradient.
    pub fn run(&mut self, rbm: &Rbm, cd_steps: usize, seed: u64, step: u64) {
        let (m, cases) = (self.m, self.rows.len());
        self.positive.resize(cases * m, 0.0);
        self.negative.resize(cases * m, 0.0);
        self.hidden_sample.resize(cases * m, 0.0);
        self.hidden_pass(rbm, Visible::Data, Some((seed, step, 0)));
        for t in 0..cd_steps {
            self.sample_visible(rbm, seed ^ (t as u64) << 56, step);
            let last = t + 1 == cd_steps;
            let sample = (!last).then_some((seed, step, t as u64 + 1));
            self.hidden_pass(rbm, Visible::Sampled, sample);
        }
        self.hidden_bias_gradient.fill(0.0);
        for (p, n) in self.positive.chunks(m).zip(self.negative.chunks(m)) {
            kernels::add_assign(&mut self.hidden_bias_gradient, p);
            kernels::sub_assign(&mut self.hidden_bias_gradient, n);
        }
    }

    /// p(h | v) of every case into `positive` (from the data) or `negative` (from the last sample),
    /// and, given `(seed, step, t)`, a binary sample of it into `hidden_sample`.
    ///
    /// The passes run item-major like the visible one: the cases are split into one range per
    /// thread, and each thread walks the batch's items in ascending order adding W[i][k] to the
    /// inputs of its cases that rated item i. Each row of W is then read from memory once per
    /// thread instead of once per case, and a case's sum runs in ascending item order whatever the
    /// number of threads.
    fn hidden_pass(&mut self, rbm: &Rbm, visible: Visible, sample: Option<(u64, u64, u64)>) {
        let m = self.m;
        let cases = self.rows.len();
        let per_task = cases.div_ceil(rayon::current_num_threads()).max(1);
        let probabilities = match visible {
            Visible::Data => &mut self.positive,
            Visible::Sampled => &mut self.negative,
        };
        let (items, item_start, entries) = (&self.items, &self.item_start, &self.entries);
        let hidden_bias = rbm.hidden_bias.as_slice().expect("contiguous");
        probabilities
            .par_chunks_mut(per_task * m)
            .zip(self.hidden_sample.par_chunks_mut(per_task * m))
            .enumerate()
            .for_each(|(task, (inputs, hidden))| {
                let first = task * per_task;
                let slots = first as u32..(first + inputs.len() / m) as u32;
                for input in inputs.chunks_mut(m) {
                    input.copy_from_slice(hidden_bias);
                }
                for (g, &item) in items.iter().enumerate() {
                    for e in &entries[item_start[g]..item_start[g + 1]] {
                        if !slots.contains(&e.slot) {
                            continue;
                        }
                        let class = match visible {
                            Visible::Data => e.class,
                            Visible::Sampled => e.sampled,
                        };
                        let at = (e.slot - slots.start) as usize * m;
                        let input = &mut inputs[at..at + m];
                        kernels::add_assign(input, rbm.weight_row(item as usize, class as usize));
                        if let Some(implicit) = &rbm.implicit {
                            kernels::add_assign(
                                input,
                                implicit.row(item as usize).as_slice().expect("contiguous"),
                            );
                        }
                    }
                }
                for (n, (p, h)) in inputs.chunks_mut(m).zip(hidden.chunks_mut(m)).enumerate() {
                    p.iter_mut().for_each(|x| *x = kernels::sigmoid(*x));
                    if let Some((seed, step, t)) = sample {
                        let index = (t << 40) | (first + n) as u64;
                        sample_bernoulli(p, &mut stream(seed, step, index), h);
                    }
                }
            });
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
            // Logits of up to CHUNK entries at once, so that their exponentials vectorise.
            const CHUNK: usize = 8;
            let mut weights = [0.0f32; CHUNK * MAX_CLASSES];
            let hidden_of = |e: &Entry| &hidden[e.slot as usize * m..(e.slot as usize + 1) * m];
            for chunk in entries.chunks_mut(CHUNK) {
                let weights = &mut weights[..chunk.len() * k];
                // Two entries per kernel call share the loads of W[i].
                for (pair, logits) in chunk.chunks(2).zip(weights.chunks_mut(2 * k)) {
                    match pair {
                        [a, b] => {
                            let (la, lb) = logits.split_at_mut(k);
                            rbm.visible_logits_each(
                                item as usize,
                                [hidden_of(a), hidden_of(b)],
                                [la, lb],
                            );
                        }
                        [a] => rbm.visible_logits(item as usize, hidden_of(a), logits),
                        _ => unreachable!("chunks of two"),
                    }
                }
                for logits in weights.chunks_mut(k) {
                    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    logits.iter_mut().for_each(|z| *z -= max);
                }
                weights.iter_mut().for_each(|z| *z = kernels::fast_exp(*z));
                for (e, weights) in chunk.iter_mut().zip(weights.chunks(k)) {
                    // Inverse-CDF sampling on the unnormalised weights e^(z − max).
                    let total: f32 = weights.iter().sum();
                    let u = rng.random::<f32>() * total;
                    let mut cumulative = 0.0;
                    e.sampled = (k - 1) as u8;
                    for (class, &w) in weights.iter().enumerate() {
                        cumulative += w;
                        if u < cumulative {
                            e.sampled = class as u8;
                            break;
                        }
                    }
                }
            }
        });
    }

    fn group(&self, item: usize) -> &[Entry] {
        let g = self.group_of[item] as usize;
        &self.entries[self.item_start[g]..self.item_start[g + 1]]
    }

    /// The gradient of item i's K rows of W, Σ over the batch of v[i][k]·p(h|v) − v_T[i][k]·p(h|v_T)
    /// times `scale`, into `out` (K·M), from one pass over the item's entries.
    pub fn item_weight_gradient(&self, item: usize, scale: f32, out: &mut [f32]) {
        let m = self.m;
        out.fill(0.0);
        for e in self.group(item) {
            let slot = e.slot as usize * m;
            let (class, sampled) = (e.class as usize, e.sampled as usize);
            kernels::add_assign(
                &mut out[class * m..(class + 1) * m],
                &self.positive[slot..slot + m],
            );
            kernels::sub_assign(
                &mut out[sampled * m..(sampled + 1) * m],
                &self.negative[slot..slot + m],
            );
        }
        out.iter_mut().for_each(|g| *g *= scale);
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
