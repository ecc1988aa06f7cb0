//! What a training run is asked for: the hyperparameters given, each one left out taking the
//! default recommended for the data's size. The CLI's flags and a retrain's JSON body are both
//! parsed into it; it becomes the model's `TrainConfig` once the data's size is known.

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::model::{DEFAULT_SEED, DataShape, ModelError, OptimizerKind, RbmParams, TrainConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// The user-based RBM alone.
    User,
    /// User-based and item-based RBMs, blended with a weight fitted on the validation slice.
    Blend,
}

/// Every field is optional: None takes the recommended value (or the server's default, for a
/// retrain), so an overlay can set a flag to false as well as to true.
#[derive(Debug, Args, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingRequest {
    /// Hidden units M.
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Maximum epochs (training stops earlier when the validation measure stops improving).
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub learning_rate: Option<f32>,
    #[arg(long)]
    pub momentum: Option<f32>,
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Gibbs steps T of CD-T.
    #[arg(long)]
    pub cd_steps: Option<usize>,
    /// Raise T through 1, 3, 5, 9 as training progresses (the paper's schedule).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub cd_schedule: Option<bool>,
    /// Conditional RBM: which items a user rated feeds the hidden units.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub conditional: Option<bool>,
    /// Joint RBM (the default): the user-based RBM also learns which items a user rates, and
    /// recommendations rank by it; `--choice false` trains the rating-only RBM.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub choice: Option<bool>,
    /// Joint RBM: weight of the extra rating term log p(ratings | rated items) in its objective.
    #[arg(long)]
    pub rating_weight: Option<f32>,
    /// Factored RBM with W = A·B of rank C.
    #[arg(long)]
    pub factors: Option<usize>,
    /// Training threads (default: one per core); a fixed seed and thread count give identical models.
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// Fraction of the training ratings held out for early stopping and the blend weight (0 disables).
    #[arg(long)]
    pub valid_frac: Option<f64>,
    /// Epochs without validation improvement before stopping (0: never stop early).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Most users the item-based RBM takes as visible units (the most active ones).
    #[arg(long)]
    pub item_users: Option<usize>,
    /// Most users the joint user-based RBM trains on, drawn at random (default: all up to
    /// 10⁸ users × items, else as many as fit in that).
    #[arg(long)]
    pub joint_users: Option<usize>,
    /// Which RBMs to train (default: blend).
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// Seed of every random choice: initial weights, mini-batch order, held-out slices.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl TrainingRequest {
    /// This request with every field that `over` sets replaced by its value.
    pub fn overlay(&self, over: &TrainingRequest) -> TrainingRequest {
        TrainingRequest {
            hidden: over.hidden.or(self.hidden),
            epochs: over.epochs.or(self.epochs),
            batch_size: over.batch_size.or(self.batch_size),
            learning_rate: over.learning_rate.or(self.learning_rate),
            momentum: over.momentum.or(self.momentum),
            weight_decay: over.weight_decay.or(self.weight_decay),
            cd_steps: over.cd_steps.or(self.cd_steps),
            cd_schedule: over.cd_schedule.or(self.cd_schedule),
            conditional: over.conditional.or(self.conditional),
            choice: over.choice.or(self.choice),
            rating_weight: over.rating_weight.or(self.rating_weight),
            factors: over.factors.or(self.factors),
            threads: over.threads.or(self.threads),
            optimizer: over.optimizer.or(self.optimizer),
            valid_frac: over.valid_frac.or(self.valid_frac),
            patience: over.patience.or(self.patience),
            item_users: over.item_users.or(self.item_users),
            joint_users: over.joint_users.or(self.joint_users),
            model: over.model.or(self.model),
            seed: over.seed.or(self.seed),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }

    /// The checked configuration for data of this size: the recommended one with every given
    /// field applied over it. The error names the first field that breaks a rule.
    pub fn config(&self, shape: DataShape) -> Result<TrainConfig, ModelError> {
        let mut config = TrainConfig::recommended(shape);
        let apply = |p: &mut RbmParams| {
            p.seed = self.seed();
            set(&mut p.hidden, self.hidden);
            set(&mut p.epochs, self.epochs);
            set(&mut p.batch_size, self.batch_size);
            set(&mut p.learning_rate, self.learning_rate);
            set(&mut p.momentum, self.momentum);
            set(&mut p.weight_decay, self.weight_decay);
            set(&mut p.cd_steps, self.cd_steps);
            set(&mut p.cd_schedule, self.cd_schedule);
            set(&mut p.threads, self.threads);
            set(&mut p.optimizer, self.optimizer);
            set(&mut p.patience, self.patience);
            if self.factors.is_some() {
                p.factors = self.factors;
            }
        };
        apply(&mut config.user);
        set(&mut config.user.conditional, self.conditional);
        set(&mut config.user.choice, self.choice);
        set(&mut config.user.rating_weight, self.rating_weight);
        config.item = match self.model.unwrap_or(ModelKind::Blend) {
            ModelKind::User => None,
            ModelKind::Blend => config.item.map(|mut p| {
                apply(&mut p);
                p
            }),
        };
        set(&mut config.item_users, self.item_users);
        if self.joint_users.is_some() {
            config.joint_users = self.joint_users;
        }
        set(&mut config.valid_frac, self.valid_frac);
        config.check()?;
        Ok(config)
    }

    /// Checks the request before any data is read. `TrainConfig::check`'s rules never involve the
    /// data's size, which only picks defaults, so any size gives the same verdict.
    pub fn check(&self) -> Result<(), ModelError> {
        self.config(DataShape::default()).map(drop)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

impl ValueEnum for OptimizerKind {
    fn value_variants<'a>() -> &'a [Self] {
        &[OptimizerKind::Momentum, OptimizerKind::Adam]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            OptimizerKind::Momentum => "momentum",
            OptimizerKind::Adam => "adam",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ML_1M: DataShape = DataShape {
        ratings: 1_000_209,
        users: 6040,
        items: 3706,
    };

    #[test]
    fn an_overlay_replaces_only_what_it_sets_and_can_turn_flags_off() {
        let defaults: TrainingRequest =
            serde_json::from_str(r#"{"hidden": 50, "epochs": 10, "cd_schedule": true, "conditional": true, "model": "user"}"#)
                .unwrap();
        let body: TrainingRequest = serde_json::from_str(
            r#"{"epochs": 3, "cd_schedule": false, "conditional": false, "model": "blend"}"#,
        )
        .unwrap();
        let config = defaults.overlay(&body).config(ML_1M).unwrap();
        assert_eq!((config.user.hidden, config.user.epochs), (50, 3));
        assert!(!config.user.cd_schedule && !config.user.conditional);
        let item = config.item.expect("blend asked for over the default user");
        assert_eq!((item.hidden, item.epochs, item.cd_schedule), (50, 3, false));
        let user_only = body.overlay(&defaults).config(ML_1M).unwrap();
        assert!(user_only.item.is_none() && user_only.user.cd_schedule);
        assert!(serde_json::from_str::<TrainingRequest>(r#"{"epochz": 3}"#).is_err());
    }

    #[test]
    fn a_bad_request_is_refused_naming_the_field() {
        let request: TrainingRequest =
            serde_json::from_str(r#"{"hidden": 20, "factors": 30, "choice": false}"#).unwrap();
        let error = request.check().unwrap_err().to_string();
        assert!(error.contains("factors"), "{error}");
        let error = TrainingRequest {
            valid_frac: Some(1.0),
            ..TrainingRequest::default()
        }
        .check()
        .unwrap_err()
        .to_string();
        assert!(error.contains("valid_frac"), "{error}");
    }
}
