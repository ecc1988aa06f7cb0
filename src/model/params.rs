//! Hyperparameters: of one RBM (`RbmParams`, checked into `ValidRbmParams`) and of a recommender
//! (`TrainConfig`), with the defaults recommended for a data set's size. The RBM, its training and
//! evaluation build on these; nothing here depends on them.

use serde::{Deserialize, Serialize};

use super::ModelError;
use super::optimizer::OptimizerKind;

/// The seed of every random choice (initial weights, mini-batch order, hold-out slices) unless one
/// is given: the CLI's `--seed`, a retrain's `seed`.
pub const DEFAULT_SEED: u64 = 42;

/// Hyperparameters of one RBM. Defaults follow the calibration in DESIGN.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RbmParams {
    /// M, the number of hidden units.
    pub hidden: usize,
    pub epochs: usize,
    /// Training cases (users, or items for the item-based RBM) per mini-batch.
    pub batch_size: usize,
    /// Step size on the batch-averaged gradient.
    pub learning_rate: f32,
    pub momentum: f32,
    /// L2 penalty on W (and Dimp, and the factors); biases are not decayed.
    pub weight_decay: f32,
    /// T, the Gibbs steps of CD-T.
    pub cd_steps: usize,
    /// Raise T through 1, 3, 5, 9 over the four quarters of training, as in the paper.
    pub cd_schedule: bool,
    pub optimizer: OptimizerKind,
    /// Conditional RBM: which items a case rated feeds the hidden units through Dimp[D][M].
    pub conditional: bool,
    /// Joint RBM: the model also reconstructs which items a case rated, every item of the
    /// catalogue being a visible unit with a "not rated" state beside the K classes (see
    /// `choice`); implies `conditional`. It is what ranks items, by p(rated | ĥ).
    pub choice: bool,
    /// With `choice`: the objective is log p(v, rated) + rating_weight·log p(v | rated), so that
    /// the expected rating keeps the accuracy of the plain RBM's training.
    pub rating_weight: f32,
    /// Factored RBM: W = A·B with A[D][K][C] and B[C][M].
    pub factors: Option<usize>,
    /// Worker threads; 0 means one per core. Results are identical for a fixed seed and thread count.
    pub threads: usize,
    pub seed: u64,
    /// Weight of the Dirichlet prior that smooths the initial visible biases.
    pub bias_prior: f32,
    /// Standard deviation of the initial weights.
    pub init_std: f32,
    /// With a validation slice: stop after this many epochs without improvement (0 never stops early).
    pub patience: usize,
}

impl Default for RbmParams {
    fn default() -> Self {
        Self {
            hidden: 100,
            epochs: 120,
            batch_size: 100,
            learning_rate: 0.01,
            momentum: 0.9,
            weight_decay: 0.001,
            cd_steps: 1,
            cd_schedule: false,
            optimizer: OptimizerKind::Momentum,
            conditional: false,
            choice: false,
            rating_weight: 1.0,
            factors: None,
            threads: 0,
            seed: DEFAULT_SEED,
            bias_prior: 10.0,
            init_std: 0.01,
            patience: 5,
        }
    }
}

/// Parameters that passed `RbmParams::check`; only these can train.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRbmParams(pub(super) RbmParams);

impl RbmParams {
    pub fn check(self) -> Result<ValidRbmParams, ModelError> {
        let invalid = |name: &'static str, value: String, rule: &'static str| {
            Err(ModelError::InvalidParameter { name, value, rule })
        };
        let positive = |x: f32| x.is_finite() && x > 0.0;
        if self.hidden == 0 || self.hidden > 10_000 {
            return invalid(
                "hidden",
                self.hidden.to_string(),
                "must be between 1 and 10000",
            );
        }
        if self.epochs == 0 || self.epochs > 100_000 {
            return invalid(
                "epochs",
                self.epochs.to_string(),
                "must be between 1 and 100000",
            );
        }
        if self.batch_size == 0 {
            return invalid(
                "batch_size",
                self.batch_size.to_string(),
                "must be at least 1",
            );
        }
        if !positive(self.learning_rate) {
            return invalid(
                "learning_rate",
                self.learning_rate.to_string(),
                "must be positive",
            );
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return invalid("momentum", self.momentum.to_string(), "must be in [0, 1)");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return invalid(
                "weight_decay",
                self.weight_decay.to_string(),
                "must be zero or positive",
            );
        }
        if self.cd_steps == 0 || self.cd_steps > 1000 {
            return invalid(
                "cd_steps",
                self.cd_steps.to_string(),
                "must be between 1 and 1000",
            );
        }
        if let Some(c) = self.factors
            && (c == 0 || c > self.hidden)
        {
            return invalid(
                "factors",
                c.to_string(),
                "must be between 1 and the number of hidden units",
            );
        }
        if let Some(c) = self.factors
            && self.optimizer == OptimizerKind::Adam
        {
            return invalid(
                "factors",
                c.to_string(),
                "go with the momentum optimizer only",
            );
        }
        if !(self.rating_weight.is_finite() && self.rating_weight >= 0.0) {
            return invalid(
                "rating_weight",
                self.rating_weight.to_string(),
                "must be zero or positive",
            );
        }
        if let Some(c) = self.factors
            && self.choice
        {
            return invalid(
                "factors",
                c.to_string(),
                "do not go with the joint (choice) RBM",
            );
        }
        if !(self.bias_prior.is_finite() && self.bias_prior >= 0.0) {
            return invalid(
                "bias_prior",
                self.bias_prior.to_string(),
                "must be zero or positive",
            );
        }
        if !positive(self.init_std) {
            return invalid("init_std", self.init_std.to_string(), "must be positive");
        }
        if self.threads > 1024 {
            return invalid("threads", self.threads.to_string(), "must be at most 1024");
        }
        Ok(ValidRbmParams(self))
    }
}

/// How much data there is to train on: what the recommended configuration and the memory
/// estimate depend on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DataShape {
    pub ratings: usize,
    pub users: usize,
    pub items: usize,
}

/// How a recommender is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// The user-based RBM.
    pub user: RbmParams,
    /// The item-based RBM to blend in, if any.
    pub item: Option<RbmParams>,
    /// The item-based RBM's visible units are the users; past this many it takes the most
    /// active ones (ties to the first seen), and the others get the user-based prediction.
    pub item_users: usize,
    /// A joint user-based RBM trains on a random sample of this many users (None: all of them).
    /// Its parameters belong to the items, so it serves every user all the same.
    pub joint_users: Option<usize>,
    /// Fraction of the training ratings held out to pick the best epoch and the blend weight.
    pub valid_frac: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            user: RbmParams::default(),
            item: Some(RbmParams::default()),
            item_users: ITEM_USERS,
            joint_users: None,
            valid_frac: 0.05,
        }
    }
}

/// Default cap on the item-based RBM's users. Its W is users × K × M: at the Netflix Prize's
/// 480,189 users, K = 5 and M = 300 that is 2.9 GB per copy, and training holds several copies
/// (parameters, momentum, the best epoch's, the served model's). 50,000 users keep a copy at
/// 300 MB; on a Netflix-shaped set the most active 10% of users hold about 40% of the ratings.
pub const ITEM_USERS: usize = 50_000;

/// Ratings up to which the recommended epochs are the full 120; past it they shrink in
/// proportion, to no fewer than MIN_EPOCHS. A larger set makes more updates per epoch (4,800
/// batches on the Netflix Prize's users against ML-1M's 60), and 120 of its epochs would take
/// hours.
const FULL_EPOCHS_UP_TO: usize = 2_000_000;
const MIN_EPOCHS: usize = 10;

/// The joint RBM's catalogue-wide draw costs users × items × (K + 1) × M multiply-adds per
/// epoch, whatever the ratings: 4·10¹⁰ on ML-1M at M = 300, 1.5·10¹³ on the Netflix Prize
/// (hours per epoch on two cores). Past this many user × item cells the recommended joint RBM
/// trains on a random sample of users that fits (5,627 of the Netflix Prize's 480,189), at least
/// MIN_JOINT_USERS; see the README.
const MAX_JOINT_CELLS: usize = 100_000_000;
const MIN_JOINT_USERS: usize = 1_000;

/// Ratings per catalogue item that a recommended mini-batch holds: ML-1M's 100 users rate
/// 100 × 166 of its 3,706 items, about 4.5 per item. Each batch reads and updates the W row of
/// every item it touches, so on a larger catalogue with as many ratings per user, 100 users
/// spread fewer ratings over more rows and the cost per rating grows (2.4× at the Netflix
/// Prize's shape). Batches of as many ratings per item keep it level.
const BATCH_RATINGS_PER_ITEM: f64 = 4.5;
const MAX_BATCH: usize = 800;

/// The recommended batch of the user-based RBM and its learning rate at 0.005 for 100 users:
/// the rate grows with the batch (the gradient is a batch average, so a larger batch makes
/// fewer steps of the same length). On 10 M generated ratings (70,000 users × 10,000 items) 320
/// users at 0.016 reached the validation RMSE of 100 at 0.005 (0.8364 against 0.8363) in the
/// same epochs, where 320 at 0.005 stopped at 0.858.
fn user_batch(shape: DataShape) -> (usize, f32) {
    if shape.users < 1_000 {
        return (50, 0.005);
    }
    let per_user = shape.ratings as f64 / shape.users as f64;
    let users = BATCH_RATINGS_PER_ITEM * shape.items as f64 / per_user.max(1.0);
    let batch = ((users / 10.0).round() as usize * 10).clamp(100, MAX_BATCH);
    (batch, (0.005 * batch as f64 / 100.0) as f32)
}

impl TrainConfig {
    /// Defaults for a data set of this size, from the calibration runs recorded in DESIGN.md and
    /// the project's evaluation notes: for the user-based RBM, small sets need stronger weight decay
    /// and smaller batches.
    pub fn recommended(shape: DataShape) -> Self {
        let (n_ratings, n_users) = (shape.ratings, shape.users);
        let small = n_ratings < 500_000;
        let epochs = |ratings: usize| {
            if ratings <= FULL_EPOCHS_UP_TO {
                120
            } else {
                (120 * FULL_EPOCHS_UP_TO / ratings).max(MIN_EPOCHS)
            }
        };
        // The joint RBM's users: all, or a sample that keeps its draw within MAX_JOINT_CELLS, whose
        // epochs and batch are those of the sample's size.
        let sample = (MAX_JOINT_CELLS / shape.items.max(1)).max(MIN_JOINT_USERS);
        let joint_users = (n_users > sample).then_some(sample);
        let joint_shape = match joint_users {
            Some(users) => DataShape {
                ratings: (n_ratings as u128 * users as u128 / n_users as u128) as usize,
                users,
                items: shape.items,
            },
            None => shape,
        };
        // The user-based RBM is the joint one, which ranks. On ML-1M (random 90/10, the README's
        // protocol) its P@10 grows with M up to 300 (0.168 at 100, 0.171 at 200, 0.174 at 300;
        // 500 adds nothing). A weight of 1 on the rating term ranks better than 3 (0.178 against
        // 0.171) at the same blend RMSE, and learning at 0.005 with a patience of 8 lets
        // validation NDCG climb for 40 epochs where 0.01 peaks near 15: 0.184, RMSE 0.846.
        let (batch_size, learning_rate) = user_batch(joint_shape);
        let user = RbmParams {
            hidden: 300,
            epochs: epochs(joint_shape.ratings),
            choice: true,
            rating_weight: 1.0,
            learning_rate,
            patience: 8,
            weight_decay: if small { 0.01 } else { 0.001 },
            batch_size,
            ..RbmParams::default()
        };
        // The item-based RBM (cases are items, visible units their raters) keeps improving up to
        // about 300 hidden units, where the user-based one stops at about 100, and wants far less
        // weight decay: 0.01 held its RMSE at 0.895 on ml-latest-small, 0.0002 brings it to 0.818
        // (ML-1M does not move). Blend RMSE with both changes: ml-100k 0.899 → 0.887,
        // ml-latest-small 0.867 → 0.814, ML-1M 0.853 → 0.845. The price is training time, model
        // size and, for a recommendation not served from cache, the item side's pass (K·M·D
        // multiply-adds).
        let item = RbmParams {
            hidden: 300,
            weight_decay: 0.0002,
            choice: false,
            epochs: epochs(n_ratings),
            learning_rate: 0.01,
            patience: 5,
            // The batch rule is for user cases; the item-based RBM keeps the paper's batch.
            batch_size: if n_users < 1_000 { 50 } else { 100 },
            ..user.clone()
        };
        Self {
            item: Some(item),
            user,
            item_users: ITEM_USERS,
            joint_users,
            valid_frac: 0.05,
        }
    }

    /// Bytes a training run with this configuration holds at its peak, about, for `ratings` ratings
    /// by `users` users of `items` items on K = `classes`: every parameter tensor (W, b, c, Dimp)
    /// of both RBMs taken MODEL_COPIES times, plus RATING_BYTES per rating and a fixed base.
    ///
    /// The copies are the parameters themselves, the optimizer's state, the best epoch's copy, the
    /// serving catalogue (f32 and f16), the serialised model version, and the model that keeps
    /// serving until the swap. Measured on ml-100k with `train` (no model serving beside it): peak
    /// RSS grew by 5.5 to 6.5 times the parameters' bytes as M went from 100 to 1000, so this
    /// errs on the high side.
    pub fn memory_estimate(&self, shape: DataShape, classes: usize) -> u64 {
        let DataShape {
            ratings,
            users,
            items,
        } = shape;
        const MODEL_COPIES: u64 = 8;
        /// The data set's 12-byte ratings, the validation split's copy of them and its u32
        /// positions, and the sparse matrices (5 bytes an entry): the snapshot streams, so no id
        /// text is held per rating.
        const RATING_BYTES: u64 = 48;
        const BASE: u64 = 64 << 20;
        let parameters = |p: &RbmParams, visible: usize| {
            let (d, k, m) = (visible as u64, classes as u64, p.hidden as u64);
            let implicit = if p.conditional || p.choice { d * m } else { 0 };
            let adam = if p.optimizer == OptimizerKind::Adam {
                2
            } else {
                1
            };
            4 * (d * k * m + implicit + d * k + m) * (MODEL_COPIES + adam - 1)
        };
        let user = parameters(&self.user, items);
        let item = self
            .item
            .as_ref()
            .map_or(0, |p| parameters(p, users.min(self.item_users)));
        BASE + RATING_BYTES * ratings as u64 + user + item
    }

    /// Checks both RBMs' parameters and the validation fraction. Every rule is about the values
    /// alone, never the data's size, so a request can be checked before the data is read.
    pub fn check(&self) -> Result<(), ModelError> {
        self.user.clone().check()?;
        if let Some(item) = &self.item {
            item.clone().check()?;
        }
        for (name, users) in [
            ("item_users", Some(self.item_users)),
            ("joint_users", self.joint_users),
        ] {
            if users == Some(0) {
                return Err(ModelError::InvalidParameter {
                    name,
                    value: "0".to_string(),
                    rule: "must be at least 1",
                });
            }
        }
        if !(0.0..1.0).contains(&self.valid_frac) {
            return Err(ModelError::InvalidFraction {
                name: "valid_frac",
                value: self.valid_frac,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_checks_the_item_based_rbm_too() {
        let config = TrainConfig {
            item: Some(RbmParams {
                cd_steps: 0,
                ..RbmParams::default()
            }),
            ..TrainConfig::default()
        };
        let error = config.check().unwrap_err().to_string();
        assert!(error.contains("cd_steps"), "{error}");
    }

    #[test]
    fn the_memory_estimate_counts_every_tensor_of_both_rbms() {
        let user = RbmParams {
            hidden: 10,
            conditional: true,
            ..RbmParams::default()
        };
        let item = RbmParams {
            hidden: 20,
            ..RbmParams::default()
        };
        let mut config = TrainConfig {
            user,
            item: Some(item),
            item_users: 10,
            joint_users: None,
            valid_frac: 0.0,
        };
        let shape = DataShape {
            ratings: 7,
            users: 4,
            items: 3,
        };
        // 3 items × 2 classes: W 60, Dimp 30, b 6, c 10; 4 users: W 160, b 8, c 20. Eight copies.
        let expected = (64 << 20) + 48 * 7 + 4 * 8 * (60 + 30 + 6 + 10 + 160 + 8 + 20);
        assert_eq!(config.memory_estimate(shape, 2), expected);
        // The item-based RBM over its first 3 users only: W 120, b 6.
        config.item_users = 3;
        let expected = (64 << 20) + 48 * 7 + 4 * 8 * (60 + 30 + 6 + 10 + 120 + 6 + 20);
        assert_eq!(config.memory_estimate(shape, 2), expected);
        // Linear in M: ML-1M's shape with a thousand times the default hidden units is past any
        // machine this runs on, which is what a budget must catch.
        let huge = TrainConfig {
            item: None,
            user: RbmParams {
                hidden: 10_000,
                ..RbmParams::default()
            },
            ..TrainConfig::default()
        };
        let ml_1m = DataShape {
            ratings: 1_000_209,
            users: 6040,
            items: 3706,
        };
        assert!(huge.memory_estimate(ml_1m, 10) > 10 << 30);
    }

    #[test]
    fn the_recommended_model_follows_the_datas_size() {
        let shape = |ratings, users, items| DataShape {
            ratings,
            users,
            items,
        };
        let ml_1m = TrainConfig::recommended(shape(1_000_209, 6040, 3706));
        assert!(ml_1m.user.choice);
        assert_eq!(
            (ml_1m.user.epochs, ml_1m.item.as_ref().unwrap().epochs),
            (120, 120)
        );
        assert_eq!(ml_1m.joint_users, None, "every user: 2.2·10⁷ cells");
        let netflix = TrainConfig::recommended(shape(100_480_507, 480_189, 17_770));
        // The joint draw over every user would take hours per epoch; a sample of 5,627 users
        // holds about 1.2 M ratings, and gets the epochs of that size.
        assert!(netflix.user.choice);
        assert_eq!(netflix.joint_users, Some(5_627));
        assert_eq!(
            (netflix.user.epochs, netflix.item.as_ref().unwrap().epochs),
            (120, MIN_EPOCHS)
        );
        let ten_million = TrainConfig::recommended(shape(10_000_000, 70_000, 10_000));
        assert_eq!(ten_million.joint_users, Some(10_000));
        assert_eq!(ten_million.item.as_ref().unwrap().epochs, 24);
        // About 4.5 ratings per item a batch, the learning rate in proportion.
        let batch = |c: &TrainConfig| (c.user.batch_size, c.user.learning_rate);
        assert_eq!(batch(&ml_1m), (100, 0.005));
        assert_eq!(batch(&ten_million), (320, 0.016));
        assert_eq!(batch(&netflix), (380, 0.019));
        assert_eq!(netflix.item.as_ref().unwrap().batch_size, 100);
        let small = TrainConfig::recommended(shape(100_000, 943, 1682));
        assert_eq!(batch(&small), (50, 0.005));
    }
}
