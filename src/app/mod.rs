//! The application layer between HTTP and the store and model: live recommendations from the
//! active model, and training runs that build new model versions in the background.

pub mod revisions;
mod service;
mod training_request;

pub use service::{
    PageOrder, Recommendation, RecommendationPage, ServedModel, Service, ServiceError, SimilarItem,
    Source,
};
pub use training_request::{ModelKind, TrainingRequest};
