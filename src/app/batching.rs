//! Requests that wait at the same time, served together: a queue drained into batches, with a
//! bounded number of batches in flight. An idle service serves a lone request at once; a busy one
//! serves everything that queued up while the last batches ran.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

pub(super) struct Batches<T> {
    waiting: mpsc::Receiver<T>,
    slots: Arc<Semaphore>,
    max: usize,
    /// A request that did not fit the last batch; it starts the next one.
    next: Option<T>,
}

impl<T> Batches<T> {
    pub fn new(waiting: mpsc::Receiver<T>, in_flight: usize, max: usize) -> Self {
        Self {
            waiting,
            slots: Arc::new(Semaphore::new(in_flight.max(1))),
            max: max.max(1),
            next: None,
        }
    }

    /// Once a batch may start: the first request waiting, and whatever else waits by then and
    /// `fits` with it, up to `max`, with the slot it holds until the permit is dropped. None when
    /// every sender is gone.
    pub async fn next(
        &mut self,
        fits: impl Fn(&T, &T) -> bool,
    ) -> Option<(OwnedSemaphorePermit, Vec<T>)> {
        let first = match self.next.take() {
            Some(request) => request,
            None => self.waiting.recv().await?,
        };
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut batch = vec![first];
        while batch.len() < self.max {
            match self.waiting.try_recv() {
                Ok(request) if fits(&batch[0], &request) => batch.push(request),
                Ok(request) => {
                    self.next = Some(request);
                    break;
                }
                Err(_) => break,
            }
        }
        Some((slot, batch))
    }
}
