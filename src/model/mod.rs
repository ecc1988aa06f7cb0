//! The model core: ratings data structures, the RBM, its training and evaluation. No I/O, no async,
//! no HTTP types; the readers, the CLI and the service sit around it.

mod batch;
mod catalog;
mod checkpoint;
mod choice;
mod evaluate;
mod kernels;
mod optimizer;
mod params;
mod ratings;
mod rbm;
mod recommender;
mod scale;
mod simd;
mod similarity;
mod train;

pub use checkpoint::Checkpoint;
pub use choice::choice_scores;
pub use evaluate::{
    RankingMetrics, mae, predict, ranking_metrics, rmse, similar_items_ranking, top_n, top_n_by,
};
pub use optimizer::OptimizerKind;
pub use params::{DEFAULT_SEED, DataShape, ITEM_USERS, RbmParams, TrainConfig, ValidRbmParams};
pub use ratings::{Dataset, DatasetBuilder, Entry, IdMap, Rating, SparseRatings, Split};
pub use rbm::Rbm;
pub use recommender::{
    ItemSide, Order, Ranked, Reason, Recommender, Scratch, Side, TopQuery, Trained,
};
pub use scale::RatingScale;
pub use simd::{Isa, isa};
pub use similarity::{ItemSimilarity, Similarity};
pub use train::{EpochStats, Fit, cd_weight_gradient, joint_cd_weight_gradient};

/// Errors of the model core; each message names the offending value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("rating {value} is not on the scale {scale}")]
    OffScale { value: f32, scale: RatingScale },
    #[error("invalid rating scale {min}..{max} step {step}: {reason}")]
    InvalidScale {
        min: f32,
        max: f32,
        step: f32,
        reason: String,
    },
    #[error("invalid rating scale {0:?}: expected min:max:step, e.g. 0.5:5:0.5")]
    InvalidScaleText(String),
    #[error(
        "no rating scale with a step of 1, 0.5, 0.25, 0.2, 0.1 or 0.05 fits values from {min} to {max}"
    )]
    NoScaleFits { min: f32, max: f32 },
    #[error("no ratings to work with")]
    EmptyData,
    #[error("{name} must be in [0, 1), got {value}")]
    InvalidFraction { name: &'static str, value: f64 },
    #[error("{name} {rule}, got {value}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error("tensor {tensor} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        tensor: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("model parameters are not finite")]
    NonFinite,
    #[error(
        "training diverged at epoch {epoch}: parameters became NaN or infinite (lower the learning rate)"
    )]
    Diverged { epoch: usize },
    #[error("training was cancelled")]
    Cancelled,
    #[error("could not start training threads: {0}")]
    ThreadPool(String),
}
