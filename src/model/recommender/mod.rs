//! The product's model: a user-based RBM (which folds in any user's current ratings at request
//! time) optionally blended with an item-based RBM (AutoRec's I-RBM: items are the training cases,
//! users the visible units), with the external id maps and rating scale they were trained on.

use ndarray::Array2;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

mod explain;
mod fit;
mod top_n;

pub use explain::Reason;
pub use top_n::TopQuery;

use super::catalog::CatalogWeights;
use super::evaluate::predict;
use super::kernels;
use super::rbm::Rbm;
use super::scale::MAX_CLASSES;
use super::simd;
use super::train::Fit;
use super::{Entry, IdMap, Rating, RatingScale, SparseRatings};

/// Which of the two RBMs an epoch report comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    User,
    Item,
}

/// The item-based RBM plus ĥ for every item, computed from all the ratings it was trained on.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemSide {
    pub rbm: Rbm,
    /// p(h | item's column) per item, hidden-unit-major `[M][items]` so that a user's logits over
    /// the whole catalogue are M vector AXPYs.
    pub item_hidden: Array2<f32>,
}

#[derive(Debug, Clone, PartialEq)]
/// A trained model, ready to score. Its fields are private because `catalog` and `item_rows` are
/// derived from the RBMs at construction: they cannot go stale.
pub struct Recommender {
    scale: RatingScale,
    users: IdMap,
    items: IdMap,
    user_rbm: Rbm,
    item_side: Option<ItemSide>,
    /// Weight of the user-based prediction in the blend (1 without an item side).
    blend_weight: f32,
    /// For a joint user-based RBM, β of the ranking score log p(rated | ĥ) + β·E[rating]; fitted
    /// on the validation slice. None: the model ranks by expected rating alone.
    ranking_weight: Option<f32>,
    catalog: CatalogWeights,
    /// The item side's ĥ item-major, `[items][M]`, for scoring a few items exactly.
    item_rows: Option<Array2<f32>>,
}

/// How a list is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// By relevance: log p(rated | ĥ) + β·E[rating] under a joint RBM, the chance that the user
    /// picks the item weighed with how they would rate it.
    Score,
    /// By E[rating] alone, the rating-prediction order.
    ExpectedRating,
}

/// One item of a ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    pub item: u32,
    /// What the list is ordered by (the expected rating under `Order::ExpectedRating`).
    pub score: f32,
    pub expected_rating: f32,
}

/// A trained recommender and the record of its training.
#[derive(Debug, Clone)]
pub struct Trained {
    pub recommender: Recommender,
    pub user_fit: Fit,
    pub item_fit: Option<Fit>,
    /// Validation RMSE of the blend, if there was a validation slice.
    pub valid_rmse: Option<f64>,
}

impl Recommender {
    pub fn new(
        scale: RatingScale,
        users: IdMap,
        items: IdMap,
        user_rbm: Rbm,
        item_side: Option<ItemSide>,
        blend_weight: f32,
        ranking_weight: Option<f32>,
    ) -> Self {
        let catalog = CatalogWeights::new(&user_rbm);
        let item_rows = item_side
            .as_ref()
            .map(|side| side.item_hidden.t().as_standard_layout().into_owned());
        Self {
            scale,
            users,
            items,
            user_rbm,
            item_side,
            blend_weight,
            ranking_weight,
            catalog,
            item_rows,
        }
    }

    pub fn scale(&self) -> RatingScale {
        self.scale
    }

    /// The users the item-based RBM was trained on (its visible units).
    pub fn users(&self) -> &IdMap {
        &self.users
    }

    /// The item-based RBM's index of user `user` of `users` (a data set's ids), if the user is one
    /// of its visible units. A data set's own index is not one: past ITEM_USERS users the item
    /// side keeps only the most active ones, in its own order.
    pub fn item_side_user(&self, users: &IdMap, user: u32) -> Option<u32> {
        self.users.get(users.id(user))
    }

    /// The catalogue: every item the model can score.
    pub fn items(&self) -> &IdMap {
        &self.items
    }

    pub fn user_rbm(&self) -> &Rbm {
        &self.user_rbm
    }

    pub fn item_side(&self) -> Option<&ItemSide> {
        self.item_side.as_ref()
    }

    /// Weight of the user-based prediction in the blend (1 without an item side).
    pub fn blend_weight(&self) -> f32 {
        self.blend_weight
    }

    /// β of the ranking score under a joint user-based RBM; None: ranks by expected rating.
    pub fn ranking_weight(&self) -> Option<f32> {
        self.ranking_weight
    }

    /// This model with another blend weight (0: the item-based RBM alone).
    pub fn with_blend_weight(mut self, blend_weight: f32) -> Self {
        self.blend_weight = blend_weight;
        self
    }

    /// A user's ratings, given by external item id, in the model's item indices and rating
    /// classes, sorted by item: what the scoring methods take. Items the model never saw and
    /// values off its scale are left out.
    pub fn rated<'a>(
        &self,
        ratings: impl IntoIterator<Item = (&'a str, f32)>,
    ) -> (Vec<u32>, Vec<u8>) {
        let mut rated: Vec<(u32, u8)> = ratings
            .into_iter()
            .filter_map(|(item, value)| {
                Some((self.items.get(item)?, self.scale.class_of(value).ok()?))
            })
            .collect();
        rated.sort_unstable();
        rated.into_iter().unzip()
    }

    /// The item-based RBM's ĥ of every item, item-major `[items][M]`.
    pub(crate) fn item_rows(&self) -> Option<&Array2<f32>> {
        self.item_rows.as_ref()
    }

    /// The order lists take unless asked otherwise: by score where the model learned which items
    /// users pick, else by expected rating.
    pub fn default_order(&self) -> Order {
        match self.ranking_weight {
            Some(_) => Order::Score,
            None => Order::ExpectedRating,
        }
    }

    simd::multiversion! {
        /// Expected ratings (the blend's) and, into `log_rated`, the joint RBM's log p(rated | ĥ) of
        /// every item.
        fn choice_parts / choice_parts_avx2(
            &self,
            user: Option<u32>,
            items: &[u32],
            classes: &[u8],
            scratch: &mut Scratch,
            expected: &mut [f32],
            log_rated: &mut [f32],
        ) {
            self.user_hidden(items, classes, scratch);
            self.catalog
                .choice(&self.user_rbm, &scratch.hidden, expected, log_rated);
            let item_based =
                self.item_based_classes(user, &mut scratch.logits, &mut scratch.item_based);
            for (n, e) in expected.iter_mut().enumerate() {
                *e = self.rating_of(*e, item_based.map(|b| b[n]));
            }
        }
    }

    /// Every item's score in `order` (into `score`) and expected rating (into `expected`) for a
    /// user whose current ratings are (`items`, `classes`); see `expected_ratings` for `user`.
    #[allow(clippy::too_many_arguments)]
    pub fn scores(
        &self,
        order: Order,
        user: Option<u32>,
        items: &[u32],
        classes: &[u8],
        scratch: &mut Scratch,
        score: &mut [f32],
        expected: &mut [f32],
    ) {
        match (order, self.ranking_weight) {
            (Order::Score, Some(beta)) => {
                self.choice_parts(user, items, classes, scratch, expected, score);
                for (s, e) in score.iter_mut().zip(expected.iter()) {
                    *s += beta * e;
                }
            }
            _ => {
                self.expected_ratings(user, items, classes, scratch, expected);
                score.copy_from_slice(expected);
            }
        }
    }

    simd::multiversion! {
        /// Expected ratings of every item for a user whose current ratings are (`items`, `classes`),
        /// sorted by item. `user` is the user's index in the item-based RBM if it knows the user; a new
        /// user, or a model without an item side, gets the user-based prediction alone.
        pub fn expected_ratings / expected_ratings_avx2(
            &self,
            user: Option<u32>,
            items: &[u32],
            classes: &[u8],
            scratch: &mut Scratch,
            out: &mut [f32],
        ) {
            self.user_hidden(items, classes, scratch);
            self.catalog.expected_classes(&scratch.hidden, out);
            let item_based =
                self.item_based_classes(user, &mut scratch.logits, &mut scratch.item_based);
            for (n, score) in out.iter_mut().enumerate() {
                *score = self.rating_of(*score, item_based.map(|e| e[n]));
            }
        }
    }

    /// Mean-field p(h | v) of the user-based RBM into `scratch.hidden`.
    fn user_hidden(&self, items: &[u32], classes: &[u8], scratch: &mut Scratch) {
        scratch.hidden.resize(self.user_rbm.hidden(), 0.0);
        self.user_rbm
            .hidden_probabilities(items, classes, items, &mut scratch.hidden);
    }

    /// E[class] of every item under the item-based RBM for a user it knows, in `out`; None
    /// without an item side or for an unknown user.
    #[inline(always)]
    fn item_based_classes<'s>(
        &self,
        user: Option<u32>,
        logits: &mut Vec<f32>,
        out: &'s mut Vec<f32>,
    ) -> Option<&'s [f32]> {
        self.item_based_classes_of(user, 0..self.items.len() as u32, logits, out)
    }

    /// `item_based_classes` of the listed items only, into `out` in their order. Each logit is
    /// b[u][k] + W[u][k]·ĥᵢ by `kernels::row_dots_each`, whose sums do not depend on the other
    /// item of a pass, so an item gets the same value whichever other items are listed with it.
    #[inline(always)]
    fn item_based_classes_of<'s>(
        &self,
        user: Option<u32>,
        items: impl ExactSizeIterator<Item = u32>,
        logits: &mut Vec<f32>,
        out: &'s mut Vec<f32>,
    ) -> Option<&'s [f32]> {
        let (side, user) = (self.item_side.as_ref()?, user? as usize);
        let rows = self.item_rows.as_ref().expect("built with the item side");
        let (k, n) = (self.scale.classes(), items.len());
        let weights = side.rbm.item_weights(user);
        let bias = side.rbm.visible_bias().row(user);
        use kernels::LANES;
        // In blocks of LANES items, class-major within a block, as `lane_logits` writes them.
        logits.clear();
        logits.resize(n.div_ceil(LANES) * k * LANES, 0.0);
        let bias = bias.as_slice().expect("contiguous");
        let row = |item: u32| rows.row(item as usize).to_slice().expect("contiguous");
        let mut put = |t: usize, values: &[f32]| {
            let block = (t / LANES) * k * LANES + t % LANES;
            for (class, &v) in values.iter().enumerate() {
                logits[block + class * LANES] = v;
            }
        };
        // Two items a pass: each load of the user's weights serves both.
        let (mut first, mut second) = ([0.0f32; MAX_CLASSES], [0.0f32; MAX_CLASSES]);
        let mut items = items.enumerate();
        while let Some((t, a)) = items.next() {
            match items.next() {
                Some((_, b)) => {
                    let outs = [&mut first[..k], &mut second[..k]];
                    kernels::row_dots_each(weights, [row(a), row(b)], bias, outs);
                    put(t, &first[..k]);
                    put(t + 1, &second[..k]);
                }
                None => {
                    kernels::row_dots_each(weights, [row(a)], bias, [&mut first[..k]]);
                    put(t, &first[..k]);
                }
            }
        }
        out.clear();
        out.resize(n, 0.0);
        kernels::expected_classes_of_blocks(logits, k, out, None);
        Some(out)
    }

    /// The served rating from the user-based E[class] and, if there is one, the item-based one.
    /// Non-decreasing in `user_based`, which is what lets `top_n` carry bounds through it.
    fn rating_of(&self, user_based: f32, item_based: Option<f32>) -> f32 {
        let class = match item_based {
            Some(item_based) => {
                self.blend_weight * user_based + (1.0 - self.blend_weight) * item_based
            }
            None => user_based,
        };
        self.scale.value_at(class)
    }

    /// Predictions for queries (user, item) sorted by user, in the indices of a data set whose
    /// users are `users`, each user's context taken from `known`. Users the item-based RBM does
    /// not know get the user-based prediction.
    pub fn predict(&self, users: &IdMap, known: &SparseRatings, queries: &[Rating]) -> Vec<f32> {
        let entries: Vec<Entry> = queries.iter().map(|q| q.entry()).collect();
        let user_pred = predict(&self.user_rbm, known, &entries, self.scale, false);
        match &self.item_side {
            None => user_pred,
            Some(side) => {
                let weight = self.blend_weight;
                queries
                    .par_iter()
                    .zip(user_pred.par_iter())
                    .map(|(q, &u)| {
                        let Some(user) = self.item_side_user(users, q.user) else {
                            return u;
                        };
                        let hidden = side.item_hidden.column(q.item as usize).to_vec();
                        let item_based = self
                            .scale
                            .value_at(side.rbm.expected_class(user as usize, &hidden));
                        weight * u + (1.0 - weight) * item_based
                    })
                    .collect()
            }
        }
    }
}

/// Per-request buffers, reused across requests by the caller.
#[derive(Debug, Default)]
pub struct Scratch {
    hidden: Vec<f32>,
    logits: Vec<f32>,
    item_based: Vec<f32>,
    approx: Vec<f32>,
    radius: Vec<f32>,
    scores: Vec<f32>,
    bound: Vec<f32>,
    rated_low: Vec<f32>,
    rated_high: Vec<f32>,
    exact: Vec<f32>,
    rated: Vec<bool>,
}
