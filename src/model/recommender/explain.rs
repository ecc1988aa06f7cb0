//! Why an item is on a user's list: each of the user's ratings' part in its score.
//!
//! A rating's contribution to an item is the drop in the item's score when that rating is left
//! out of the v→h pass: ĥ is recomputed without it and everything after ĥ is as served. Leaving a
//! rating out subtracts its row W[i][k] (and Dimp[i] in a conditional RBM) from the hidden units'
//! input, so every leave-one-out ĥ costs M, not R·M. The item-based RBM's E[class] of an item
//! depends on the other users' ratings of that item, not on this user's ratings of other items,
//! so only the user-based part of the blend moves.

use super::{Order, Recommender};
use crate::model::choice::{rated_and_expected, state_logits};
use crate::model::kernels;
use crate::model::scale::MAX_CLASSES;

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
    /// For each of `targets`, the user's ratings (`items`, `classes`, sorted by item) that raise
    /// its score in `order` the most: up to `most` of them, each with a contribution above 0,
    /// largest first (ties by item index). `user` is the user's index in the item-based RBM, as
    /// for `top_n`.
    ///
    /// Cost: R·M for the R leave-one-out ĥ, then T·R·(K + 1)·M multiply-adds for T targets.
    #[allow(clippy::too_many_arguments)]
    pub fn explain(
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
        let score = |t: usize, hidden: &[f32]| {
            let item_based = item_based.as_ref().map(|e| e[t]);
            self.score_given(beta, targets[t], item_based, hidden)
        };
        let base: Vec<f32> = (0..targets.len()).map(|t| score(t, &hidden)).collect();
        let mut contributions = vec![Vec::with_capacity(items.len()); targets.len()];
        let mut left_out = vec![0.0f32; m];
        for (&i, &k) in items.iter().zip(classes) {
            let row = rbm.weight_row(i as usize, k as usize);
            let implicit = rbm.implicit().map(|d| d.row(i as usize));
            for (j, h) in left_out.iter_mut().enumerate() {
                let shared = implicit.as_ref().map_or(0.0, |d| d[j]);
                *h = kernels::sigmoid(input[j] - row[j] - shared);
            }
            for (t, reasons) in contributions.iter_mut().enumerate() {
                reasons.push(Reason {
                    rated: i,
                    contribution: base[t] - score(t, &left_out),
                });
            }
        }
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

    /// An item's score in the order whose β is `beta` (None: the expected rating) under the
    /// user-based ĥ `hidden`, with the item-based E[class] already computed.
    fn score_given(
        &self,
        beta: Option<f32>,
        item: u32,
        item_based: Option<f32>,
        hidden: &[f32],
    ) -> f32 {
        let rbm = &self.user_rbm;
        match beta {
            Some(beta) => {
                let mut logits = [0.0f32; MAX_CLASSES];
                let logits = &mut logits[..rbm.classes()];
                state_logits(rbm, item as usize, hidden, logits);
                let (log_rated, expected) = rated_and_expected(logits);
                log_rated + beta * self.rating_of(expected, item_based)
            }
            None => self.rating_of(rbm.expected_class(item as usize, hidden), item_based),
        }
    }
}
