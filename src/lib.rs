//! rbm-recommender: a recommendation service built on the categorical RBM for collaborative filtering.
//!
//! Dependencies run one way, from the core out:
//!
//! - [`model`]: the I/O-free core. Data (ratings, scale, params) → the RBM and its kernels →
//!   training → evaluation, and the [`model::Recommender`] that serves both RBMs.
//! - [`model_file`]: a model as safetensors bytes, for files and for the store's model versions.
//! - [`store`]: PostgreSQL or SQLite: ratings and items, model versions, training runs.
//! - [`app`]: the use cases (serving the active model, recommendations, the catalogue, training
//!   runs), each owning its state; the only layer that talks to the store.
//! - [`http`]: the routes, which talk to `app` only; [`metrics`] and [`config`] beside it.
//! - [`readers`] and [`import`]: rating and title files, streamed into a data set or the store.
//! - [`generate`]: synthetic rating data sets of any size, for benchmarks and capacity planning.
//! - [`cli`]: the commands, imported by `main` only; [`demo`] is one of them.

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod generate;
pub mod http;
pub mod import;
pub mod metrics;
pub mod model;
pub mod model_file;
pub mod plot;
pub mod readers;
pub mod store;
