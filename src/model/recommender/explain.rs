//! Why an item is on a user's list: each of the user's ratings' part in its score.
//!
//! A rating's contribution to an item is the drop in the item's score when that rating is left
//! out of the v→h pass: ĥ is recomputed without it and everything after ĥ is as served. Leaving a
//! rating out subtracts its row W[i][k] (and Dimp[i] in a conditional RBM) from the hidden units'
//! input, so every leave-one-out ĥ costs M, not R·M. The item-based RBM's E[class] of an item
//! depends on the other users' ratings of that item, not on this user's ratings of other items,
//! so only the user-based part of the blend moves.

use super::{Order, Recommender};
use crate::model::choice::rated_and_expected;
use crate::model::kernels;
use crate::model::scale::MAX_CLASSES;
use crate::model::simd;

/// One of the user's ratings and how much it raises an item's score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reason {
    /// The rated item's index in the model.
    pub rated: u32,
    /// score(item | all the user's ratings) − score(item | all of them but this one), in the
    /// units of the list's order: the relevance, or the expected rating.
    pub contribution: f32,
}

impl Recommender {
    simd::multiversion! {
        /// For each of `targets`, the user's ratings (`items`, `classes`, sorted by item) that
        /// raise its score in `order` the most: up to `most` of them, each with a contribution
        /// above 0, largest first (ties by item index). `user` is the user's index in the
        /// item-based RBM, as for `top_n`.
        ///
        /// Cost: R·M for the R leave-one-out ĥ, then T·R·(K + 1)·M multiply-adds for T targets.
        pub fn explain / explain_avx2(
            &self,
            order: Order,
            user: Option<u32>,
            items: &[u32],
            classes: &[u8],
            targets: &[u32],
            most: usize,
        ) -> Vec<Vec<Reason>> {
            let rbm = &self.user_rbm;
            let m = rbm.hidden();
            let mut input = vec![0.0f32; m];
            rbm.hidden_input(items, classes, items, &mut input);
            let hidden: Vec<f32> = input.iter().map(|&x| kernels::sigmoid(x)).collect();
            let mut item_based = Vec::new();
            let item_based = self
                .item_based_classes_of(
                    user,
                    targets.iter().copied(),
                    &mut Vec::new(),
                    &mut item_based,
                )
                .map(<[f32]>::to_vec);
            let beta = self.beta(order);
            // Every leave-one-out ĥ, R × M.
            let mut left_out = vec![0.0f32; items.len() * m];
            for ((&i, &k), h) in items.iter().zip(classes).zip(left_out.chunks_exact_mut(m)) {
                h.copy_from_slice(&input);
                kernels::axpy(h, -1.0, rbm.weight_row(i as usize, k as usize));
                if let Some(implicit) = rbm.implicit() {
                    let row = implicit.row(i as usize);
                    kernels::axpy(h, -1.0, row.as_slice().expect("contiguous"));
                }
                h.iter_mut().for_each(|x| *x = kernels::sigmoid(*x));
            }
            let joint = beta.is_some();
            let mut contributions = vec![Vec::with_capacity(items.len()); targets.len()];
            let (mut rows, mut bias) = (Vec::new(), Vec::new());
            for (t, (&target, reasons)) in targets.iter().zip(&mut contributions).enumerate() {
                // The target's K logit rows, and under the joint RBM its Dimp row (the term all K
                // rated states share) as one more row: K + 1 dot products per ĥ.
                rows.clear();
                rows.extend_from_slice(rbm.item_weights(target as usize));
                bias.clear();
                bias.extend(rbm.visible_bias().row(target as usize));
                if joint {
                    let implicit = rbm.implicit().expect("a joint RBM is conditional");
                    rows.extend(implicit.row(target as usize));
                    bias.push(0.0);
                }
                let item_based = item_based.as_ref().map(|e| e[t]);
                let score = |sums: &[f32]| self.score_of_sums(beta, sums, item_based);
                let mut sums = [[0.0f32; MAX_CLASSES + 1]; 2];
                let [first, second] = sums.each_mut().map(|s| &mut s[..bias.len()]);
                kernels::row_dots_each(&rows, [&hidden], &bias, [&mut *first]);
                let base = score(first);
                // Two leave-one-out ĥ at a time: each row loaded serves both.
                let mut pairs = left_out.chunks_exact(2 * m);
                for pair in &mut pairs {
                    let (a, b) = pair.split_at(m);
                    kernels::row_dots_each(&rows, [a, b], &bias, [&mut *first, &mut *second]);
                    reasons.extend([base - score(first), base - score(second)]);
                }
                for h in pairs.remainder().chunks_exact(m) {
                    kernels::row_dots_each(&rows, [h], &bias, [&mut *first]);
                    reasons.push(base - score(first));
                }
            }
            let mut contributions: Vec<Vec<Reason>> = contributions
                .into_iter()
                .map(|found: Vec<f32>| {
                    found
                        .into_iter()
                        .zip(items)
                        .map(|(contribution, &rated)| Reason {
                            rated,
                            contribution,
                        })
                        .collect()
                })
                .collect();
            for reasons in &mut contributions {
                reasons.retain(|r| r.contribution > 0.0);
                reasons.sort_by(|a, b| {
                    b.contribution
                        .total_cmp(&a.contribution)
                        .then(a.rated.cmp(&b.rated))
                });
                reasons.truncate(most);
            }
            contributions
        }
    }

    /// An item's score in the order whose β is `beta` (None: the expected rating) from its K
    /// logits b[i][k] + W[i][k]·ĥ, followed under the joint RBM by Dimp[i]·ĥ, with the
    /// item-based E[class] already computed.
    fn score_of_sums(&self, beta: Option<f32>, sums: &[f32], item_based: Option<f32>) -> f32 {
        let k = self.user_rbm.classes();
        match beta {
            Some(beta) => {
                let mut logits = [0.0f32; MAX_CLASSES];
                let logits = &mut logits[..k];
                for (z, s) in logits.iter_mut().zip(sums) {
                    *z = s + sums[k];
                }
                let (log_rated, expected) = rated_and_expected(logits);
                log_rated + beta * self.rating_of(expected, item_based)
            }
            // The softmax's mean class: the shared term does not enter it.
            None => self.rating_of(rated_and_expected(&sums[..k]).1, item_based),
        }
    }
}
