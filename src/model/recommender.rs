//! The product's model: a user-based RBM (which folds in any user's current ratings at request
//! time) optionally blended with an item-based RBM (AutoRec's I-RBM: items are the training cases,
//! users the visible units), with the external id maps and rating scale they were trained on.

use std::ops::ControlFlow;

use ndarray::Array2;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::catalog::CatalogWeights;
use super::evaluate::{best_n, predict, ranking_metrics, rmse};
use super::kernels;
use super::params::{RbmParams, TrainConfig};
use super::rbm::Rbm;
use super::simd;
use super::train::{EpochStats, Fit};
use super::{Dataset, Entry, IdMap, ModelError, Rating, RatingScale, SparseRatings};

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
    /// Trains on `data`. `on_epoch` sees every epoch of both RBMs; breaking from it cancels.
    pub fn train(
        data: &Dataset,
        config: &TrainConfig,
        mut on_epoch: impl FnMut(Side, &EpochStats) -> ControlFlow<()> + Send,
    ) -> Result<Trained, ModelError> {
        let user_params = config.user.clone().check()?;
        let item_params = config.item.clone().map(RbmParams::check).transpose()?;
        let (train, valid) = if config.valid_frac > 0.0 {
            data.holdout(config.valid_frac, user_params.params().seed ^ 0x7a11d)?
        } else {
            (data.clone(), Vec::new())
        };
        let valid: Vec<Entry> = valid.into_iter().map(Rating::entry).collect();
        let scale = data.scale;
        let user_matrix = train.user_matrix();
        let cancelled = std::sync::atomic::AtomicBool::new(false);
        let mut report = |side, stats: &EpochStats| {
            let flow = on_epoch(side, stats);
            if flow.is_break() {
                cancelled.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            flow
        };
        let user_fit = user_params.fit(&user_matrix, scale, &valid, |s| report(Side::User, s))?;
        if cancelled.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ModelError::Cancelled);
        }
        let item_matrix = item_params.as_ref().map(|_| user_matrix.transpose());
        let (valid_t, valid_order) = transpose(&valid);
        let item_fit = match (&item_params, &item_matrix) {
            (Some(params), Some(item_matrix)) => {
                let fit = params.fit(item_matrix, scale, &valid_t, |s| report(Side::Item, s))?;
                if cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(ModelError::Cancelled);
                }
                Some(fit)
            }
            _ => None,
        };
        let (blend_weight, valid_rmse) = match (&item_fit, &item_matrix) {
            (Some(item_fit), Some(item_matrix)) if !valid.is_empty() => {
                let user_pred = predict(&user_fit.rbm, &user_matrix, &valid, scale, false);
                // Item-based predictions come in item-major order; put them back in `valid`'s.
                let mut item_pred = vec![0.0f32; valid.len()];
                for (&n, p) in valid_order.iter().zip(predict(
                    &item_fit.rbm,
                    item_matrix,
                    &valid_t,
                    scale,
                    false,
                )) {
                    item_pred[n] = p;
                }
                let weight = least_squares_blend(&user_pred, &item_pred, &valid, scale);
                let blended: Vec<f32> = user_pred
                    .iter()
                    .zip(&item_pred)
                    .map(|(u, i)| weight * u + (1.0 - weight) * i)
                    .collect();
                (weight, Some(rmse(&blended, &valid, scale)))
            }
            (Some(_), _) => (0.5, None),
            _ => (
                1.0,
                user_fit
                    .history
                    .get(user_fit.best_epoch.saturating_sub(1))
                    .and_then(|s| s.valid_rmse),
            ),
        };
        // ĥ of each item from all its known ratings, validation slice included.
        let item_side = item_fit.as_ref().map(|fit| ItemSide {
            item_hidden: hidden_of_rows(&fit.rbm, &data.user_matrix().transpose())
                .reversed_axes()
                .as_standard_layout()
                .to_owned(),
            rbm: fit.rbm.clone(),
        });
        let mut recommender = Recommender::new(
            scale,
            data.users.clone(),
            data.items.clone(),
            user_fit.rbm.clone(),
            item_side,
            blend_weight,
            None,
        );
        if user_params.params().choice {
            recommender.ranking_weight = Some(if valid.is_empty() {
                DEFAULT_RANKING_WEIGHT
            } else {
                recommender.fit_ranking_weight(&user_matrix, &valid)
            });
        }
        Ok(Trained {
            recommender,
            user_fit,
            item_fit,
            valid_rmse,
        })
    }

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

    /// The β, from RANKING_WEIGHTS, whose score ranks the validation slice's relevant items best
    /// (NDCG@10 over up to VALIDATION_USERS users, ĥ from `known`).
    fn fit_ranking_weight(&self, known: &SparseRatings, valid: &[Entry]) -> f32 {
        let stride = known.n_rows().div_ceil(VALIDATION_USERS).max(1) as u32;
        let sample: Vec<Entry> = valid
            .iter()
            .filter(|r| r.row % stride == 0)
            .copied()
            .collect();
        let d = self.items.len();
        // Per sampled user, log p(rated) and the expected rating of every item, computed once.
        let mut users: Vec<u32> = sample.iter().map(|r| r.row).collect();
        users.dedup();
        let parts: Vec<(Vec<f32>, Vec<f32>)> = users
            .par_iter()
            .map_init(Scratch::default, |scratch, &user| {
                let (items, classes) = known.row(user as usize);
                let (mut expected, mut log_rated) = (vec![0.0; d], vec![0.0; d]);
                self.choice_parts(
                    Some(user),
                    items,
                    classes,
                    scratch,
                    &mut expected,
                    &mut log_rated,
                );
                (expected, log_rated)
            })
            .collect();
        let position = |user: u32| users.binary_search(&user).expect("a sampled user");
        let mut best = (f64::NEG_INFINITY, DEFAULT_RANKING_WEIGHT);
        for beta in RANKING_WEIGHTS {
            let ndcg = ranking_metrics(known, &sample, self.scale, 10, |user, out| {
                let (expected, log_rated) = &parts[position(user)];
                for ((o, e), r) in out.iter_mut().zip(expected).zip(log_rated) {
                    *o = r + beta * e;
                }
            })
            .ndcg;
            if ndcg > best.0 {
                best = (ndcg, beta);
            }
        }
        best.1
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

    /// The `n` best items the user has not rated, best first, ties ordered by `tie`: the same
    /// items and expected ratings as ranking `expected_ratings`, at a fraction of the memory
    /// traffic when n is small. The f16 screening pass bounds every item's score; only items whose
    /// upper bound reaches the n-th best lower bound are scored exactly.
    ///
    /// Under `Order::Score` of a joint model the screening bounds log p(rated) as well.
    #[allow(clippy::too_many_arguments)]
    pub fn top_n(
        &self,
        order: Order,
        user: Option<u32>,
        items: &[u32],
        classes: &[u8],
        n: usize,
        tie: impl Fn(u32, u32) -> std::cmp::Ordering,
        scratch: &mut Scratch,
    ) -> Vec<Ranked> {
        let d = self.items.len();
        let mut rated = std::mem::take(&mut scratch.rated);
        rated.clear();
        rated.resize(d, false);
        for &i in items {
            rated[i as usize] = true;
        }
        if n.saturating_mul(4) < d {
            let beta = self.ranking_weight.filter(|_| order == Order::Score);
            let best = self.screened(beta, user, items, classes, n, &rated, &tie, scratch);
            scratch.rated = rated;
            return best;
        }
        let mut score = std::mem::take(&mut scratch.scores);
        let mut expected = std::mem::take(&mut scratch.approx);
        score.resize(d, 0.0);
        expected.resize(d, 0.0);
        self.scores(
            order,
            user,
            items,
            classes,
            scratch,
            &mut score,
            &mut expected,
        );
        let all = (0..d as u32)
            .filter(|&i| !rated[i as usize])
            .map(|i| Ranked {
                item: i,
                score: score[i as usize],
                expected_rating: expected[i as usize],
            })
            .collect();
        scratch.rated = rated;
        scratch.scores = score;
        scratch.approx = expected;
        best_ranked(all, n, tie)
    }

    simd::multiversion! {
        /// `top_n` through the f16 screening, in the expected-rating order (`beta` None) or by the
        /// score log p(rated) + β·E[rating] (`beta` Some). An item's bounds are the sum of its terms'
        /// bounds: both terms are non-decreasing in what the screening bounds, and β ≥ 0.
        ///
        /// The item side's E[class] enters the rating through (1 − blend weight) and costs K·M
        /// multiply-adds an item, as much as the screening: it is first bounded by the range of
        /// E[class], then computed exactly for the items that can still reach the list, whose bounds
        /// it tightens; only the items that can reach it after that are scored exactly.
        #[allow(clippy::too_many_arguments)]
        fn screened / screened_avx2(
            &self,
            beta: Option<f32>,
            user: Option<u32>,
            items: &[u32],
            classes: &[u8],
            n: usize,
            rated: &[bool],
            tie: impl Fn(u32, u32) -> std::cmp::Ordering,
            scratch: &mut Scratch,
        ) -> Vec<Ranked> {
            self.user_hidden(items, classes, scratch);
            let d = self.items.len();
            let take = |buffer: &mut Vec<f32>| {
                let mut taken = std::mem::take(buffer);
                taken.resize(d, 0.0);
                taken
            };
            let (mut approx, mut radius) = (take(&mut scratch.approx), take(&mut scratch.radius));
            // Bounds of log p(rated) under the score order, 0 under the expected-rating order.
            let (mut rated_low, mut rated_high) =
                (take(&mut scratch.rated_low), take(&mut scratch.rated_high));
            let (mut lower, mut upper) = (take(&mut scratch.scores), take(&mut scratch.bound));
            match beta {
                Some(_) => self.catalog.screen_choice(
                    &self.user_rbm,
                    &scratch.hidden,
                    &mut approx,
                    &mut radius,
                    &mut rated_low,
                    &mut rated_high,
                ),
                None => {
                    self.catalog
                        .screen(&scratch.hidden, &mut approx, &mut radius);
                    rated_low.fill(0.0);
                    rated_high.fill(0.0);
                }
            }
            let weight = beta.unwrap_or(1.0);
            let bound = |i: usize, item_low: Option<f32>, item_high: Option<f32>| {
                (
                    rated_low[i] + weight * self.rating_of(approx[i] - radius[i], item_low),
                    rated_high[i] + weight * self.rating_of(approx[i] + radius[i], item_high),
                )
            };
            let item_user = user.filter(|_| self.item_side.is_some());
            let range = item_user.map(|_| {
                (
                    -ITEM_CLASS_SLACK,
                    (self.scale.classes() - 1) as f32 + ITEM_CLASS_SLACK,
                )
            });
            for i in 0..d {
                (lower[i], upper[i]) = bound(i, range.map(|r| r.0), range.map(|r| r.1));
            }
            let mut reach = reachable(&lower, &upper, rated, n);
            let mut item_based = take(&mut scratch.item_based);
            let exact = self.item_based_classes_of(
                item_user,
                reach.iter().copied(),
                &mut scratch.logits,
                &mut scratch.exact,
            );
            if let Some(exact) = exact {
                for (&i, &e) in reach.iter().zip(exact) {
                    let i = i as usize;
                    item_based[i] = e;
                    (lower[i], upper[i]) = bound(i, Some(e), Some(e));
                }
                let threshold = nth_largest(reach.iter().map(|&i| lower[i as usize]), n);
                reach.retain(|&i| upper[i as usize] >= threshold);
            }
            let item_based_of = |i: u32| item_user.map(|_| item_based[i as usize]);
            let best = best_of_bounded(reach, &upper, n, &tie, |group| {
                let mut expected = vec![0.0f32; group.len()];
                let mut log_rated = vec![0.0f32; group.len()];
                match beta {
                    Some(_) => self.catalog.choice_of(
                        &self.user_rbm,
                        &scratch.hidden,
                        group,
                        &mut expected,
                        &mut log_rated,
                    ),
                    None => self.catalog.expected_classes_of(
                        &self.user_rbm,
                        &scratch.hidden,
                        group,
                        &mut expected,
                    ),
                }
                group
                    .iter()
                    .zip(expected.iter().zip(&log_rated))
                    .map(|(&item, (&e, &log_rated))| {
                        let expected_rating = self.rating_of(e, item_based_of(item));
                        Ranked {
                            item,
                            score: log_rated + weight * expected_rating,
                            expected_rating,
                        }
                    })
                    .collect()
            });
            (scratch.approx, scratch.radius) = (approx, radius);
            (scratch.rated_low, scratch.rated_high) = (rated_low, rated_high);
            (scratch.scores, scratch.bound) = (lower, upper);
            scratch.item_based = item_based;
            best
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
    /// b[u][k] + W[u][k]·ĥᵢ by one `kernels::dot`, so an item gets the same value whichever
    /// other items are listed with it.
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
        let (k, m, n) = (self.scale.classes(), side.rbm.hidden(), items.len());
        let weights = side.rbm.item_weights(user);
        let bias = side.rbm.visible_bias().row(user);
        logits.clear();
        logits.resize(k * n, 0.0);
        for (t, item) in items.enumerate() {
            let hidden = rows.row(item as usize);
            let hidden = hidden.as_slice().expect("contiguous");
            for (class, w) in weights.chunks_exact(m).enumerate() {
                logits[class * n + t] = bias[class] + kernels::dot(w, hidden);
            }
        }
        out.clear();
        out.resize(n, 0.0);
        kernels::expected_class_of_logits(logits, k, out, None);
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

    /// Predictions for queries (user, item) sorted by user, each user's context taken from `known`.
    pub fn predict(&self, known: &SparseRatings, queries: &[Rating]) -> Vec<f32> {
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
                        let hidden = side.item_hidden.column(q.item as usize).to_vec();
                        let item_based = self
                            .scale
                            .value_at(side.rbm.expected_class(q.user as usize, &hidden));
                        weight * u + (1.0 - weight) * item_based
                    })
                    .collect()
            }
        }
    }
}

/// β grid of the ranking score, searched on the validation slice.
const RANKING_WEIGHTS: [f32; 7] = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0];

/// β without a validation slice: the best on every data set measured (README).
const DEFAULT_RANKING_WEIGHT: f32 = 0.5;

/// How far a computed E[class] may stray outside [0, K − 1] (it is a ratio of sums of
/// non-negative terms, exact to a few units in the last place).
const ITEM_CLASS_SLACK: f32 = 1e-3;

/// Validation users the ranking weight is fitted on, spread evenly over all of them.
const VALIDATION_USERS: usize = 2000;

/// The unrated items whose upper bound reaches the n-th largest lower bound of the unrated ones:
/// every item that can be in a top-n list.
fn reachable(lower: &[f32], upper: &[f32], rated: &[bool], n: usize) -> Vec<u32> {
    let unrated = |i: &usize| !rated[*i];
    let threshold = nth_largest((0..lower.len()).filter(unrated).map(|i| lower[i]), n);
    (0..lower.len())
        .filter(|i| unrated(i) && upper[*i] >= threshold)
        .map(|i| i as u32)
        .collect()
}

/// The n best of `candidates`, best first, ties ordered by `tie`, scored by `exact` lazily: in
/// order of their upper bounds, a group at a time, until the n-th best exact score so far beats
/// every bound left (an item whose bound equals it could still tie, so it is scored too).
fn best_of_bounded(
    mut candidates: Vec<u32>,
    upper: &[f32],
    n: usize,
    tie: impl Fn(u32, u32) -> std::cmp::Ordering,
    mut exact: impl FnMut(&[u32]) -> Vec<Ranked>,
) -> Vec<Ranked> {
    use kernels::LANES;
    candidates.sort_unstable_by(|&a, &b| upper[b as usize].total_cmp(&upper[a as usize]));
    let mut scored = Vec::with_capacity(n + 2 * LANES);
    let mut next = 0;
    while next < candidates.len() {
        if scored.len() >= n {
            let threshold = nth_largest(scored.iter().map(|r: &Ranked| r.score), n);
            if upper[candidates[next] as usize] < threshold {
                break;
            }
        }
        // The first group fills the list; later ones are two exact-kernel blocks.
        let want = if scored.is_empty() {
            n.next_multiple_of(LANES)
        } else {
            2 * LANES
        };
        let end = (next + want).min(candidates.len());
        scored.extend(exact(&candidates[next..end]));
        next = end;
    }
    best_ranked(scored, n, tie)
}

/// The n best of `candidates` by score, best first, ties ordered by `tie`.
fn best_ranked(
    candidates: Vec<Ranked>,
    n: usize,
    tie: impl Fn(u32, u32) -> std::cmp::Ordering,
) -> Vec<Ranked> {
    best_n(candidates, n, |a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| tie(a.item, b.item))
    })
}

/// The n-th largest of `values` (by `f32::total_cmp`), or −∞ if there are fewer than n; one pass
/// with a min-heap of the n largest so far.
fn nth_largest(values: impl Iterator<Item = f32>, n: usize) -> f32 {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    // f32 bits mapped so that integer order is total_cmp's order.
    let key = |x: f32| {
        let bits = x.to_bits() as i32;
        bits ^ (((bits >> 31) as u32) >> 1) as i32
    };
    let mut heap = BinaryHeap::with_capacity(n + 1);
    for value in values {
        if heap.len() < n {
            heap.push(Reverse((key(value), value.to_bits())));
        } else if let Some(Reverse((smallest, _))) = heap.peek()
            && key(value) > *smallest
        {
            heap.pop();
            heap.push(Reverse((key(value), value.to_bits())));
        }
    }
    match heap.peek() {
        Some(Reverse((_, bits))) if n > 0 && heap.len() == n => f32::from_bits(*bits),
        _ => f32::NEG_INFINITY,
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

/// The entries with rows and columns swapped, sorted by (row, column), and for each one its
/// position in `entries`.
fn transpose(entries: &[Entry]) -> (Vec<Entry>, Vec<usize>) {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&n| (entries[n].col, entries[n].row));
    let transposed = order
        .iter()
        .map(|&n| Entry {
            row: entries[n].col,
            col: entries[n].row,
            class: entries[n].class,
        })
        .collect();
    (transposed, order)
}

/// p(h | row) for every row of `matrix`.
fn hidden_of_rows(rbm: &Rbm, matrix: &SparseRatings) -> Array2<f32> {
    let m = rbm.hidden();
    let mut hidden = Array2::zeros((matrix.n_rows(), m));
    hidden
        .as_slice_mut()
        .expect("contiguous")
        .par_chunks_mut(m)
        .enumerate()
        .for_each(|(row, out)| {
            let (cols, classes) = matrix.row(row);
            rbm.hidden_probabilities(cols, classes, cols, out);
        });
    hidden
}

/// The weight α in [0, 1] minimising Σ (α·u + (1 − α)·i − r)².
fn least_squares_blend(user: &[f32], item: &[f32], truth: &[Entry], scale: RatingScale) -> f32 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for ((&u, &i), r) in user.iter().zip(item).zip(truth) {
        let diff = f64::from(u) - f64::from(i);
        num += (f64::from(scale.value_of(r.class)) - f64::from(i)) * diff;
        den += diff * diff;
    }
    if den > 0.0 {
        (num / den).clamp(0.0, 1.0) as f32
    } else {
        0.5
    }
}

#[cfg(test)]
mod tests {
    use super::nth_largest;

    #[test]
    fn nth_largest_follows_total_order_and_counts_ties() {
        let values = [0.5, -2.0, 3.0, 3.0, -0.0, 0.0, 7.5, -9.0];
        let mut sorted = values.to_vec();
        sorted.sort_by(|a: &f32, b| b.total_cmp(a));
        for n in 1..=values.len() {
            assert_eq!(
                nth_largest(values.iter().copied(), n).to_bits(),
                sorted[n - 1].to_bits(),
                "n={n}"
            );
        }
        assert_eq!(nth_largest(values.iter().copied(), 9), f32::NEG_INFINITY);
        assert_eq!(nth_largest(values.iter().copied(), 0), f32::NEG_INFINITY);
    }
}
