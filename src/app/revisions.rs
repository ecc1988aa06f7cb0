//! Coalesced reads of user revisions. Every recommendation starts by reading the user's revision
//! (one indexed row); under load the cost of that read is the statement round trip, not the index
//! lookup. Lookups are queued to one task that reads whatever is waiting with a single statement,
//! with a few statements in flight at once. An idle service answers a lookup with one statement
//! straight away; a busy one reads dozens of users per round trip. Each read starts after its
//! requests arrived, so it sees every change committed before them.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::batching::Batches;

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Users read by one statement at most.
const MAX_BATCH: usize = 64;

/// Lookups waiting for a statement at most; requests beyond it wait to be queued.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<i64, Arc<StoreError>>>;

#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the revision reader has stopped")]
    Stopped,
}

/// A handle on the reader task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Revisions {
    queue: mpsc::Sender<(String, Reply)>,
}

impl Revisions {
    /// Starts the reader task on the current tokio runtime, with up to `in_flight` statements
    /// running at once. It stops when the last handle is dropped.
    pub fn start(store: Store, in_flight: usize, metrics: Arc<Metrics>) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(read_batches(store, waiting, in_flight.max(1), metrics));
        Self { queue }
    }

    /// The user's revision as the database has it now (0 for a user who never rated anything).
    pub async fn get(&self, user_id: &str) -> Result<i64, RevisionError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((user_id.to_string(), reply))
            .await
            .map_err(|_| RevisionError::Stopped)?;
        answer
            .await
            .map_err(|_| RevisionError::Stopped)?
            .map_err(RevisionError::Store)
    }
}

async fn read_batches(
    store: Store,
    waiting: mpsc::Receiver<(String, Reply)>,
    in_flight: usize,
    metrics: Arc<Metrics>,
) {
    let mut batches = Batches::new(waiting, in_flight, MAX_BATCH);
    while let Some((permit, batch)) = batches.next(|_, _| true).await {
        metrics.observe_revision_batch(batch.len());
        let store = store.clone();
        tokio::spawn(async move {
            let users: Vec<&str> = batch.iter().map(|(user, _)| user.as_str()).collect();
            let read = store.user_revisions(&users).await;
            drop(permit);
            match read {
                Ok(revisions) => answer(batch, |user| Ok(revision_of(&revisions, user))),
                Err(error) => {
                    let error = Arc::new(error);
                    answer(batch, |_| Err(error.clone()))
                }
            }
        });
    }
}

fn revision_of(revisions: &HashMap<String, i64>, user: &str) -> i64 {
    revisions.get(user).copied().unwrap_or(0)
}

fn answer(batch: Vec<(String, Reply)>, result: impl Fn(&str) -> Result<i64, Arc<StoreError>>) {
    for (user, reply) in batch {
        // A request that gave up (its client went away) no longer listens; nothing to do.
        let _ = reply.send(result(&user));
    }
}
