//! Parameter updates. Only rows of W, b and Dimp whose items were rated in a mini-batch get a
//! gradient, so momentum SGD updates those rows alone and lets the others catch up lazily: with no
//! gradient, one step maps (w, v) linearly,
//!     v ← μv − ηλw,  w ← w + v   i.e.  (w, v) ← A (w, v),  A = [[1 − ηλ, μ], [−ηλ, μ]],
//! so n skipped steps are exactly Aⁿ, applied when the row is next touched or at the end of an
//! epoch. The result equals the dense update (up to rounding) at a fraction of the memory traffic.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

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
    row_len: usize,
    decay: f32,
    first: Vec<f32>,
    second: Vec<f32>,
    /// Step after which each row was last brought up to date (momentum only).
    last_step: Vec<u64>,
}

impl TensorState {
    pub fn new(rows: usize, row_len: usize, decay: f32, kind: OptimizerKind) -> Self {
        Self {
            row_len,
            decay,
            first: vec![0.0; rows * row_len],
            second: if kind == OptimizerKind::Adam {
                vec![0.0; rows * row_len]
            } else {
                Vec::new()
            },
            last_step: vec![0; rows],
        }
    }

    /// Applies step number `step` (1-based) to `values`. `touched(row)` says whether the row has a
    /// gradient; `gradient(row, out)` writes the batch-averaged log-likelihood gradient (an ascent
    /// direction) of a touched row into `out`.
    pub fn step(
        &mut self,
        values: &mut [f32],
        rule: &UpdateRule,
        step: u64,
        touched: impl Fn(usize) -> bool + Sync,
        gradient: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        self.step_groups(values, rule, step, 1, touched, |row, out, has| {
            gradient(row, out);
            has[0] = true;
        });
    }

    /// `step` for rows taken `group` at a time (the K class rows of one item): `touched(g)` says
    /// whether group g may have a gradient, and `gradient(g, out, has)` writes the gradients of all
    /// its rows into `out` and sets `has[r]` for each row r that has one. With momentum, rows
    /// without a gradient stay lazy.
    pub fn step_groups(
        &mut self,
        values: &mut [f32],
        rule: &UpdateRule,
        step: u64,
        group: usize,
        touched: impl Fn(usize) -> bool + Sync,
        gradient: impl Fn(usize, &mut [f32], &mut [bool]) + Sync,
    ) {
        let row_len = self.row_len;
        let decay = self.decay;
        let span = group * row_len;
        let scratch = || (vec![0.0f32; span], vec![false; group]);
        match rule.kind {
            OptimizerKind::Momentum => {
                let catch_up = Propagator::new(rule, decay);
                values
                    .par_chunks_mut(span)
                    .zip(self.first.par_chunks_mut(span))
                    .zip(self.last_step.par_chunks_mut(group))
                    .enumerate()
                    .filter(|(g, _)| touched(*g))
                    .for_each_init(scratch, |(grad, has), (g, ((w, v), last))| {
                        has.fill(false);
                        gradient(g, grad, has);
                        for (r, last) in last.iter_mut().enumerate().filter(|(r, _)| has[*r]) {
                            let rows = r * row_len..(r + 1) * row_len;
                            let (w, v) = (&mut w[rows.clone()], &mut v[rows.clone()]);
                            catch_up.apply(w, v, step - 1 - *last);
                            for ((w, v), g) in w.iter_mut().zip(v.iter_mut()).zip(&grad[rows]) {
                                *v = rule.momentum * *v + rule.learning_rate * (g - decay * *w);
                                *w += *v;
                            }
                            *last = step;
                        }
                    });
            }
            OptimizerKind::Adam => {
                let correction1 = (1.0 - ADAM_BETA1.powf(step as f64)) as f32;
                let correction2 = (1.0 - ADAM_BETA2.powf(step as f64)) as f32;
                values
                    .par_chunks_mut(span)
                    .zip(self.first.par_chunks_mut(span))
                    .zip(self.second.par_chunks_mut(span))
                    .enumerate()
                    .for_each_init(scratch, |(grad, has), (g, ((w, m), s))| {
                        has.fill(false);
                        if touched(g) {
                            gradient(g, grad, has);
                        }
                        for (r, grad) in grad.chunks_mut(row_len).enumerate() {
                            if !has[r] {
                                grad.fill(0.0);
                            }
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

    /// Brings every row up to date after `step` steps (momentum's lazy rows; Adam is always current).
    pub fn synchronize(&mut self, values: &mut [f32], rule: &UpdateRule, step: u64) {
        if rule.kind != OptimizerKind::Momentum {
            return;
        }
        let catch_up = Propagator::new(rule, self.decay);
        values
            .par_chunks_mut(self.row_len)
            .zip(self.first.par_chunks_mut(self.row_len))
            .zip(self.last_step.par_iter_mut())
            .for_each(|((w, v), last)| {
                catch_up.apply(w, v, step - *last);
                *last = step;
            });
    }
}

/// Powers of the no-gradient momentum step A = [[1 − ηλ, μ], [−ηλ, μ]].
struct Propagator {
    a: [[f64; 2]; 2],
}

impl Propagator {
    fn new(rule: &UpdateRule, decay: f32) -> Self {
        let shrink = f64::from(rule.learning_rate) * f64::from(decay);
        let mu = f64::from(rule.momentum);
        Self {
            a: [[1.0 - shrink, mu], [-shrink, mu]],
        }
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

    fn apply(&self, w: &mut [f32], v: &mut [f32], steps: u64) {
        if steps == 0 {
            return;
        }
        let p = self.power(steps);
        let p = [
            [p[0][0] as f32, p[0][1] as f32],
            [p[1][0] as f32, p[1][1] as f32],
        ];
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
    fn lazy_momentum_equals_stepping_every_row() {
        let rule = UpdateRule {
            kind: OptimizerKind::Momentum,
            learning_rate: 0.05,
            momentum: 0.9,
        };
        let rows = 3;
        let init: Vec<f32> = vec![0.5, -0.2, 0.1, 0.3, 1.0, -1.0];
        // Row r has a gradient only on steps where (step + r) % 3 == 0.
        let grad_of = |row: usize, step: u64, out: &mut [f32]| {
            for (j, g) in out.iter_mut().enumerate() {
                *g = ((row + j) as f32 * 0.7 + step as f32).sin();
            }
        };
        let mut lazy = init.clone();
        let mut lazy_state = TensorState::new(rows, 2, 0.1, rule.kind);
        let mut dense = init.clone();
        let mut dense_state = TensorState::new(rows, 2, 0.1, rule.kind);
        for step in 1..=20u64 {
            let has = |row: usize| (step as usize + row).is_multiple_of(3);
            lazy_state.step(&mut lazy, &rule, step, has, |row, out| {
                grad_of(row, step, out)
            });
            dense_state.step(
                &mut dense,
                &rule,
                step,
                |_| true,
                |row, out| {
                    if has(row) {
                        grad_of(row, step, out)
                    } else {
                        out.fill(0.0)
                    }
                },
            );
        }
        lazy_state.synchronize(&mut lazy, &rule, 20);
        for (a, b) in lazy.iter().zip(&dense) {
            assert!((a - b).abs() < 1e-5, "{lazy:?} vs {dense:?}");
        }
    }
}
