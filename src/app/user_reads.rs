//! Coalesced reads of users' rows: their revisions, and their ratings. Every recommendation
//! starts by reading the user's revision (one indexed row), and one that must be scored reads
//! the user's ratings; under load the cost of either is the statement round trip, not the lookup.
//! Lookups of a kind are queued to one task that reads whatever is waiting with a single
//! statement, with a few statements in flight at once. An idle service answers a lookup with one
//! statement straight away; a busy one reads dozens of users per round trip. Each read starts
//! after its requests arrived, so it sees every change committed before them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::batching::Batches;

use crate::store::StoreError;

/// Lookups waiting for a statement at most; requests beyond it wait to be queued.
const QUEUE: usize = 4096;

type Reply<T> = oneshot::Sender<Result<T, Arc<StoreError>>>;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the reader of users' {0} has stopped")]
    Stopped(&'static str),
}

/// A handle on one kind of reader task; cheap to clone.
#[derive(Debug, Clone)]
pub struct UserReads<T> {
    what: &'static str,
    queue: mpsc::Sender<(String, Reply<T>)>,
}

impl<T: Clone + Default + Send + 'static> UserReads<T> {
    /// Starts a reader task of users' `what` on the current tokio runtime: `read` reads the
    /// users of a batch (at most `max_batch`; absent users get `T::default()`), with up to
    /// `in_flight` reads at once, and `observe` is told each batch's size. It stops when the
    /// last handle is dropped.
    pub fn start<F, Fut>(
        what: &'static str,
        in_flight: usize,
        max_batch: usize,
        observe: impl Fn(usize) + Send + 'static,
        read: F,
    ) -> Self
    where
        F: Fn(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<HashMap<String, T>, StoreError>> + Send + 'static,
    {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            let mut batches: Batches<(String, Reply<T>)> =
                Batches::new(waiting, in_flight.max(1), max_batch);
            while let Some((permit, batch)) = batches.next(|_, _| true).await {
                observe(batch.len());
                let read = read(batch.iter().map(|(user, _)| user.clone()).collect());
                tokio::spawn(async move {
                    let read = read.await;
                    drop(permit);
                    answer(batch, read.map_err(Arc::new));
                });
            }
        });
        Self { what, queue }
    }

    /// The user's `what` as the database has it now.
    pub async fn get(&self, user_id: &str) -> Result<T, ReadError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((user_id.to_string(), reply))
            .await
            .map_err(|_| ReadError::Stopped(self.what))?;
        answer
            .await
            .map_err(|_| ReadError::Stopped(self.what))?
            .map_err(ReadError::Store)
    }
}

/// Sends each request of the batch its user's value; a user asked for twice gets a copy.
fn answer<T: Clone + Default>(
    batch: Vec<(String, Reply<T>)>,
    read: Result<HashMap<String, T>, Arc<StoreError>>,
) {
    let mut found = match read {
        Ok(found) => found,
        Err(error) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(error.clone()));
            }
            return;
        }
    };
    let mut left: HashMap<&str, usize> = HashMap::new();
    for (user, _) in &batch {
        *left.entry(user).or_default() += 1;
    }
    let values: Vec<T> = batch
        .iter()
        .map(|(user, _)| {
            let left = left.get_mut(user.as_str()).expect("counted");
            *left -= 1;
            match *left {
                0 => found.remove(user),
                _ => found.get(user).cloned(),
            }
            .unwrap_or_default()
        })
        .collect();
    for ((_, reply), value) in batch.into_iter().zip(values) {
        // A request that gave up (its client went away) no longer listens; nothing to do.
        let _ = reply.send(Ok(value));
    }
}
