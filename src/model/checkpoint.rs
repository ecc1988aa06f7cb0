//! What long model work consults between its steps.

use std::sync::atomic::{AtomicBool, Ordering};

/// Consulted between the steps of training (each Gibbs step of a mini-batch, each slice of the
/// catalogue-wide draw, each validation case, each user of the ranking weight's fit): whether to
/// give up, and a point where the caller may hold the work for a moment (a service holds its
/// training while requests are being scored). An `AtomicBool` is the plain one: set, it stops
/// the work.
pub trait Checkpoint: Sync {
    /// True ends the work with `ModelError::Cancelled`. It may block.
    fn should_stop(&self) -> bool;

    /// A point inside an update, where the work may be held but not stopped: between the rows
    /// of the weight update, a pass over all of W and its momentum that takes a tenth of a
    /// second at 100 M ratings.
    fn hold(&self) {}
}

impl Checkpoint for AtomicBool {
    fn should_stop(&self) -> bool {
        self.load(Ordering::Relaxed)
    }
}
