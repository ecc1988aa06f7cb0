//! rbm-recommender: a recommendation service built on the categorical RBM for collaborative filtering.

pub mod cli;
pub mod model;
pub mod model_file;
pub mod readers;
