//! rbm-recommender: a recommendation service built on the categorical RBM for collaborative filtering.

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod import;
pub mod metrics;
pub mod model;
pub mod model_file;
pub mod readers;
pub mod store;
