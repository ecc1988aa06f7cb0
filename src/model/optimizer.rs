//! Parameter updates. Only rows of W, b and Dimp whose items were rated in a mini-batch get a
//! gradient, so momentum SGD updates those rows alone and lets the others catch up lazily: with no
//! gradient, one step maps (w, v) linearly,
//!     v ← μv − ηλw,  w ← w + v   i.e.  (w, v) ← A (w, v),  A = [[1 − ηλ, μ], [−ηλ, μ]],
//! so n skipped steps are exactly Aⁿ. Training brings the rows a mini-batch reads up to date
//! (`catch_up`) before the batch reads them, and `synchronize` brings every row up to date at the
//! end of an epoch, so every value read equals the dense update's (up to rounding) at a fraction of
//! the memory traffic.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::kernels;
use super::simd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Mini-batch SGD with momentum and weight decay, as in the paper.
    #[default]
    Momentum,
    /// Adam (the seed's choice), updating every row each step; for comparison.
    Adam,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct UpdateRule {
    pub kind: OptimizerKind,
    pub learning_rate: f32,
    pub momentum: f32,
}

const ADAM_BETA1: f64 = 0.9;
const ADAM_BETA2: f64 = 0.999;
const ADAM_EPSILON: f32 = 1e-8;

/// Optimizer state of one parameter tensor seen as rows (one row per item, or a single row).
pub(crate) struct TensorState {
    rule: UpdateRule,
    row_len: usize,
    decay: f32,
    first: Vec<f32>,
    second: Vec<f32>,
    /// Step after which each row was last brought up to date (momentum only).
    last_step: Vec<u64>,
    catch_up: Propagator,
}

impl TensorState {
    pub fn new(rows: usize, row_len: usize, decay: f32, rule: UpdateRule) -> Self {
        Self {
            rule,
            row_len,
            decay,
            first: vec![0.0; rows * row_len],
            second: if rule.kind == OptimizerKind::Adam {
                vec![0.0; rows * row_len]
            } else {
                Vec::new()
            },
            last_step: vec![0; rows],
            catch_up: Propagator::new(&rule, decay),
        }
    }

    simd::multiversion! {
        /// Applies step number `step` (1-based) to `values`. `touched(row)` says whether the row has a
        /// gradient; `gradient(row, factor, out)` adds `factor` times the batch-averaged
        /// log-likelihood gradient (an ascent direction) of a touched row to `out`. With momentum,
        /// untouched rows stay lazy, and the gradient is added straight into the row's velocity, so
        /// no gradient buffer is written and read again.
        pub fn step / step_avx2(
            &mut self,
            values: &mut [f32],
            step: u64,
            touched: impl Fn(usize) -> bool + Sync,
            gradient: impl Fn(usize, f32, &mut [f32]) + Sync,
        ) {
            let (rule, row_len, decay) = (self.rule, self.row_len, self.decay);
            match rule.kind {
                OptimizerKind::Momentum => {
                    let catch_up = &self.catch_up;
                    // Tasks of several rows, so that each row's update can prefetch the next one's.
                    const TASK: usize = 64;
                    values
                        .par_chunks_mut(row_len * TASK)
                        .zip(self.first.par_chunks_mut(row_len * TASK))
                        .zip(self.last_step.par_chunks_mut(TASK))
                        .enumerate()
                        .for_each(|(task, ((ws, vs), lasts))| {
                            let first_row = task * TASK;
                            let mut rows = (0..lasts.len())
                                .filter(|r| touched(first_row + r))
                                .peekable();
                            while let Some(r) = rows.next() {
                                if let Some(&next) = rows.peek() {
                                    kernels::prefetch(&ws[next * row_len..(next + 1) * row_len]);
                                    kernels::prefetch(&vs[next * row_len..(next + 1) * row_len]);
                                }
                                let row = first_row + r;
                                let w = &mut ws[r * row_len..(r + 1) * row_len];
                                let v = &mut vs[r * row_len..(r + 1) * row_len];
                                catch_up.apply(w, v, step - 1 - lasts[r]);
                                // v ← μv + η(g − λw), w ← w + v, with ηg added into v in place.
                                let shrink = rule.learning_rate * decay;
                                for (w, v) in w.iter().zip(v.iter_mut()) {
                                    *v = rule.momentum * *v - shrink * *w;
                                }
                                gradient(row, rule.learning_rate, v);
                                kernels::add_assign(w, v);
                                lasts[r] = step;
                            }
                        });
                }
                OptimizerKind::Adam => {
                    let correction1 = (1.0 - ADAM_BETA1.powf(step as f64)) as f32;
                    let correction2 = (1.0 - ADAM_BETA2.powf(step as f64)) as f32;
                    values
                        .par_chunks_mut(row_len)
                        .zip(self.first.par_chunks_mut(row_len))
                        .zip(self.second.par_chunks_mut(row_len))
                        .enumerate()
                        .for_each_init(|| vec![0.0f32; row_len], |grad, (row, ((w, m), s))| {
                            grad.fill(0.0);
                            if touched(row) {
                                gradient(row, 1.0, grad);
                            }
                            for (((w, m), s), g) in w
                                .iter_mut()
                                .zip(m.iter_mut())
                                .zip(s.iter_mut())
                                .zip(grad.iter())
                            {
                                // Adam minimises, so it takes the negated ascent direction plus L2 decay.
                                let d = -g + decay * *w;
                                *m = ADAM_BETA1 as f32 * *m + (1.0 - ADAM_BETA1 as f32) * d;
                                *s = ADAM_BETA2 as f32 * *s + (1.0 - ADAM_BETA2 as f32) * d * d;
                                *w -= rule.learning_rate * (*m / correction1)
                                    / ((*s / correction2).sqrt() + ADAM_EPSILON);
                            }
                        });
                }
            }
        }
    }

    simd::multiversion! {
        /// Brings the rows `touched` selects up to date after `step` steps, so that they can be read
        /// as the dense update has them (momentum's lazy rows; Adam is always current).
        pub fn catch_up / catch_up_avx2(
            &mut self,
            values: &mut [f32],
            step: u64,
            touched: impl Fn(usize) -> bool + Sync,
        ) {
            if self.rule.kind != OptimizerKind::Momentum {
                return;
            }
            let catch_up = &self.catch_up;
            values
                .par_chunks_mut(self.row_len)
                .zip(self.first.par_chunks_mut(self.row_len))
                .zip(self.last_step.par_iter_mut())
                .enumerate()
                .filter(|(row, _)| touched(*row))
                .for_each(|(_, ((w, v), last))| {
                    catch_up.apply(w, v, step - *last);
                    *last = step;
                });
        }
    }

    /// Brings every row up to date after `step` steps.
    pub fn synchronize(&mut self, values: &mut [f32], step: u64) {
        self.catch_up(values, step, |_| true);
    }
}

/// Powers of the no-gradient momentum step A = [[1 − ηλ, μ], [−ηλ, μ]].
struct Propagator {
    a: [[f64; 2]; 2],
    /// Aⁿ in f32 for the short gaps that most catch-ups span, so they cost no matrix products.
    small: Vec<[[f32; 2]; 2]>,
}

/// Gaps below this many steps take their power from the table.
const SMALL_POWERS: u64 = 256;

impl Propagator {
    fn new(rule: &UpdateRule, decay: f32) -> Self {
        let shrink = f64::from(rule.learning_rate) * f64::from(decay);
        let mu = f64::from(rule.momentum);
        let mut propagator = Self {
            a: [[1.0 - shrink, mu], [-shrink, mu]],
            small: Vec::new(),
        };
        propagator.small = (0..SMALL_POWERS)
            .map(|n| Self::narrow(propagator.power(n)))
            .collect();
        propagator
    }

    fn narrow(p: [[f64; 2]; 2]) -> [[f32; 2]; 2] {
        [
            [p[0][0] as f32, p[0][1] as f32],
            [p[1][0] as f32, p[1][1] as f32],
        ]
    }

    fn power(&self, mut n: u64) -> [[f64; 2]; 2] {
        let mul = |x: [[f64; 2]; 2], y: [[f64; 2]; 2]| {
            [
                [
                    x[0][0] * y[0][0] + x[0][1] * y[1][0],
                    x[0][0] * y[0][1] + x[0][1] * y[1][1],
                ],
                [
                    x[1][0] * y[0][0] + x[1][1] * y[1][0],
                    x[1][0] * y[0][1] + x[1][1] * y[1][1],
                ],
            ]
        };
        let mut result = [[1.0, 0.0], [0.0, 1.0]];
        let mut base = self.a;
        while n > 0 {
            if n & 1 == 1 {
                result = mul(result, base);
            }
            base = mul(base, base);
            n >>= 1;
        }
        result
    }

    #[inline(always)]
    fn apply(&self, w: &mut [f32], v: &mut [f32], steps: u64) {
        if steps == 0 {
            return;
        }
        let p = match self.small.get(steps as usize) {
            Some(p) => *p,
            None => Self::narrow(self.power(steps)),
        };
        for (w, v) in w.iter_mut().zip(v.iter_mut()) {
            let (w0, v0) = (*w, *v);
            *w = p[0][0] * w0 + p[0][1] * v0;
            *v = p[1][0] * w0 + p[1][1] * v0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_momentum_reads_and_ends_as_stepping_every_row() {
        let rule = UpdateRule {
            kind: OptimizerKind::Momentum,
            learning_rate: 0.05,
            momentum: 0.9,
        };
        let rows = 3;
        let init: Vec<f32> = vec![0.5, -0.2, 0.1, 0.3, 1.0, -1.0];
        // Row r has a gradient only on steps where (step + r) % 3 == 0.
        let grad_of = |row: usize, step: u64, factor: f32, out: &mut [f32]| {
            for (j, g) in out.iter_mut().enumerate() {
                *g += factor * ((row + j) as f32 * 0.7 + step as f32).sin();
            }
        };
        let mut lazy = init.clone();
        let mut lazy_state = TensorState::new(rows, 2, 0.1, rule);
        let mut dense = init.clone();
        let mut dense_state = TensorState::new(rows, 2, 0.1, rule);
        for step in 1..=20u64 {
            // A row read before the step (as a mini-batch reads W) holds the dense value.
            let read = (step % 3) as usize;
            lazy_state.catch_up(&mut lazy, step - 1, |row| row == read);
            for j in read * 2..read * 2 + 2 {
                assert!(
                    (lazy[j] - dense[j]).abs() < 1e-5,
                    "step {step}: {lazy:?} vs {dense:?}"
                );
            }
            let has = |row: usize| (step as usize + row).is_multiple_of(3);
            lazy_state.step(&mut lazy, step, has, |row, factor, out| {
                grad_of(row, step, factor, out)
            });
            dense_state.step(
                &mut dense,
                step,
                |_| true,
                |row, factor, out| {
                    if has(row) {
                        grad_of(row, step, factor, out)
                    }
                },
            );
        }
        assert_ne!(lazy, dense, "some rows are behind before synchronising");
        lazy_state.synchronize(&mut lazy, 20);
        for (a, b) in lazy.iter().zip(&dense) {
            assert!((a - b).abs() < 1e-5, "{lazy:?} vs {dense:?}");
        }
    }
}
