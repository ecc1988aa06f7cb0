//! Training the product model: both RBMs, the blend weight and the ranking score's β, fitted on
//! a validation slice.

use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;

use super::{ItemSide, Recommender, Scratch, Side, Trained};
use crate::model::evaluate::{predict, ranking_metrics, rmse, sample_rows};
use crate::model::params::{RbmParams, TrainConfig};
use crate::model::rbm::Rbm;
use crate::model::train::EpochStats;
use crate::model::{
    Checkpoint, Dataset, Entry, IdMap, ModelError, Rating, RatingScale, SparseRatings,
};

/// β grid of the ranking score, searched on the validation slice.
const RANKING_WEIGHTS: [f32; 7] = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0];

/// β without a validation slice: the best on every data set measured (README).
const DEFAULT_RANKING_WEIGHT: f32 = 0.5;

/// Validation users the ranking weight is fitted on, spread evenly over all of them.
const VALIDATION_USERS: usize = 2000;

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

/// Some of a data set's users: those the item-based RBM takes as visible units, or those the
/// joint user-based RBM trains on.
struct Users {
    /// Their indices in the data set, ascending: the subset's user j is `kept[j]`.
    kept: Vec<u32>,
    /// The subset's index of every data set user; None for one left out.
    index: Vec<Option<u32>>,
}

impl Users {
    fn of(kept: Vec<u32>, n: usize) -> Self {
        let mut index = vec![None; n];
        for (j, &u) in kept.iter().enumerate() {
            index[u as usize] = Some(j as u32);
        }
        Users { kept, index }
    }

    /// All users of `data` if there are at most `cap`, else the `cap` with the most ratings, ties
    /// to the lower index.
    fn most_active(data: &Dataset, cap: usize) -> Self {
        let n = data.users.len();
        let mut kept: Vec<u32> = (0..n as u32).collect();
        if n > cap {
            let mut counts = vec![0u32; n];
            for r in &data.ratings {
                counts[r.user as usize] += 1;
            }
            kept.sort_by_key(|&u| (std::cmp::Reverse(counts[u as usize]), u));
            kept.truncate(cap);
            kept.sort_unstable();
        }
        Self::of(kept, n)
    }

    /// `cap` of the `n` users drawn uniformly for `seed` (all of them if there are at most `cap`).
    fn sample(n: usize, cap: usize, seed: u64) -> Self {
        let mut kept: Vec<u32> = (0..n as u32).collect();
        if n > cap {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5a3b_1e00);
            // The first `cap` places of a Fisher-Yates shuffle.
            for i in 0..cap {
                kept.swap(i, rng.random_range(i..n));
            }
            kept.truncate(cap);
            kept.sort_unstable();
        }
        Self::of(kept, n)
    }

    fn all(&self) -> bool {
        self.kept.len() == self.index.len()
    }

    /// The item-based RBM's matrix (rows items, columns its users) from a user-major one; the
    /// plain transpose when every user is kept, without the copy a selection would make.
    fn item_matrix(&self, user_matrix: &SparseRatings) -> SparseRatings {
        if self.all() {
            user_matrix.transpose()
        } else {
            user_matrix.select_rows(&self.kept).transpose()
        }
    }

    /// The entries of kept users, renumbered to the subset's users, and for each one its
    /// position in `entries`.
    fn entries(&self, entries: &[Entry]) -> (Vec<Entry>, Vec<usize>) {
        entries
            .iter()
            .enumerate()
            .filter_map(|(n, e)| {
                let row = self.index[e.row as usize]?;
                Some((Entry { row, ..*e }, n))
            })
            .unzip()
    }
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

impl Recommender {
    /// Trains on `data`. `on_epoch` sees every epoch of both RBMs. Once `stop` says to stop, it
    /// cancels (`ModelError::Cancelled`) within a moment, whatever the size: see
    /// `ValidRbmParams::fit`.
    pub fn train(
        data: &Dataset,
        config: &TrainConfig,
        stop: &dyn Checkpoint,
        mut on_epoch: impl FnMut(Side, &EpochStats) + Send,
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
        drop(train);
        // The joint RBM's draw visits every item for every user it trains on, so past
        // `joint_users` it trains on a sample of them; it serves every user all the same.
        let joint_users = match config.joint_users {
            Some(cap) if user_params.params().choice => Some(Users::sample(
                user_matrix.n_rows(),
                cap,
                user_params.params().seed,
            )),
            _ => None,
        };
        let mut on_user_epoch = |s: &EpochStats| on_epoch(Side::User, s);
        let user_fit = match joint_users.filter(|users| !users.all()) {
            Some(users) => user_params.fit(
                &user_matrix.select_rows(&users.kept),
                scale,
                &users.entries(&valid).0,
                stop,
                &mut on_user_epoch,
            )?,
            None => user_params.fit(&user_matrix, scale, &valid, stop, &mut on_user_epoch)?,
        };
        // The item-based RBM's users: all of them, or the most active up to the cap.
        let item_users = item_params
            .as_ref()
            .map(|_| Users::most_active(data, config.item_users));
        let item_matrix = item_users
            .as_ref()
            .map(|users| users.item_matrix(&user_matrix));
        // Validation entries of the item side's users, in its indices and item-major order,
        // with their positions in `valid`.
        let (valid_t, valid_order) = match &item_users {
            Some(users) => {
                let (entries, positions) = users.entries(&valid);
                let (transposed, order) = transpose(&entries);
                (
                    transposed,
                    order.into_iter().map(|k| positions[k]).collect(),
                )
            }
            None => (Vec::new(), Vec::new()),
        };
        let item_fit = match (&item_params, &item_matrix) {
            (Some(params), Some(item_matrix)) => {
                Some(params.fit(item_matrix, scale, &valid_t, stop, |s| {
                    on_epoch(Side::Item, s)
                })?)
            }
            _ => None,
        };
        let (blend_weight, valid_rmse) = match (&item_fit, &item_matrix) {
            (Some(item_fit), Some(item_matrix)) if !valid.is_empty() => {
                let user_pred = predict(&user_fit.rbm, &user_matrix, &valid, scale, false);
                // Item-based predictions for the item side's users, back in `valid`'s order.
                let mut item_pred: Vec<Option<f32>> = vec![None; valid.len()];
                for (&n, p) in valid_order.iter().zip(predict(
                    &item_fit.rbm,
                    item_matrix,
                    &valid_t,
                    scale,
                    false,
                )) {
                    item_pred[n] = Some(p);
                }
                // The weight is fitted where both RBMs predict.
                let (mut both_user, mut both_item, mut both_truth) = (vec![], vec![], vec![]);
                for ((&truth, &u), &i) in valid.iter().zip(&user_pred).zip(&item_pred) {
                    if let Some(i) = i {
                        both_user.push(u);
                        both_item.push(i);
                        both_truth.push(truth);
                    }
                }
                let weight = least_squares_blend(&both_user, &both_item, &both_truth, scale);
                let blended: Vec<f32> = user_pred
                    .iter()
                    .zip(&item_pred)
                    .map(|(&u, i)| i.map_or(u, |i| weight * u + (1.0 - weight) * i))
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
        drop(item_matrix);
        // ĥ of each item from all its known ratings by the item side's users, validation slice
        // included.
        let item_side = match (&item_fit, &item_users) {
            (Some(fit), Some(users)) => Some(ItemSide {
                item_hidden: hidden_of_rows(&fit.rbm, &users.item_matrix(&data.user_matrix()))
                    .reversed_axes()
                    .as_standard_layout()
                    .to_owned(),
                rbm: fit.rbm.clone(),
            }),
            _ => None,
        };
        let users = match &item_users {
            Some(users) if !users.all() => IdMap::from(
                users
                    .kept
                    .iter()
                    .map(|&u| data.users.id(u).to_string())
                    .collect::<Vec<_>>(),
            ),
            _ => data.users.clone(),
        };
        let mut recommender = Recommender::new(
            scale,
            users,
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
                recommender.fit_ranking_weight(&data.users, &user_matrix, &valid, stop)
            });
        }
        // The passes after the epochs (ĥ of every item, β's catalogue passes) see `stop` too.
        if stop.should_stop() {
            return Err(ModelError::Cancelled);
        }
        Ok(Trained {
            recommender,
            user_fit,
            item_fit,
            valid_rmse,
        })
    }

    /// The β, from RANKING_WEIGHTS, whose score ranks the validation slice's relevant items best
    /// (NDCG@10 over up to VALIDATION_USERS users, whose ids are `ids`, ĥ from `known`).
    fn fit_ranking_weight(
        &self,
        ids: &IdMap,
        known: &SparseRatings,
        valid: &[Entry],
        stop: &dyn Checkpoint,
    ) -> f32 {
        let sample = sample_rows(valid, known.n_rows(), VALIDATION_USERS);
        let d = self.items.len();
        // Per sampled user, log p(rated) and the expected rating of every item, computed once.
        let mut users: Vec<u32> = sample.iter().map(|r| r.row).collect();
        users.dedup();
        let parts: Vec<(Vec<f32>, Vec<f32>)> = users
            .par_iter()
            .map_init(Scratch::default, |scratch, &user| {
                let (items, classes) = known.row(user as usize);
                let (mut expected, mut log_rated) = (vec![0.0; d], vec![0.0; d]);
                if stop.should_stop() {
                    return (expected, log_rated);
                }
                self.choice_parts(
                    self.item_side_user(ids, user),
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
}
