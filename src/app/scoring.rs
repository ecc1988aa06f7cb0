//! Uncached rankings, scored together. A ranking's cost is one pass over the model's weights (11 MB
//! of f16 for ML-1M's user side, 53 MB at Netflix's size), which for one user is bound by memory;
//! so the users whose requests wait at the same time are scored in one pass
//! (`Recommender::top_lists`), each list the same as scored alone. (`bench --model` on ML-1M: 30%
//! more users a second, the pass then bound by arithmetic; at 100 M ratings the cold service, with
//! mimalloc as well, answered twice the requests of the version before.) Requests queue to one
//! task, which sends whatever is waiting for the same model version (up to MAX_BATCH) to the
//! blocking pool, with up to IN_FLIGHT batches running: an idle service scores a lone request at
//! once, a busy one scores everyone who arrived while the last batches ran.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::ServiceError;
use super::background::ServingFirst;
use super::batching::Batches;
use super::serving::ServedModel;
use crate::metrics::Metrics;
use crate::model::{Order, Ranked, Scratch, TopQuery};

/// Users scored by one pass at most: past a few dozen, the pass is bound by arithmetic anyway.
const MAX_BATCH: usize = 32;

/// Batches running at once: one per core keeps both busy across the hand-offs between batches.
const IN_FLIGHT: usize = 2;

/// Requests waiting at most; more wait to be queued.
const QUEUE: usize = 4096;

/// One user's ranking to score: `depth` best items in `order` for ratings (`items`, `classes`).
pub(super) struct Job {
    pub model: Arc<ServedModel>,
    pub order: Order,
    /// The user's index in the item-based RBM, if it knows the user.
    pub user: Option<u32>,
    pub items: Vec<u32>,
    pub classes: Vec<u8>,
    pub depth: usize,
}

type Queued = (Job, oneshot::Sender<Vec<Ranked>>);

/// Scoring buffers, one per user of a batch: a set for each batch in flight, reused.
type Scratches = Arc<Mutex<Vec<Vec<Scratch>>>>;

/// A handle on the scoring task; cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Scorer {
    queue: mpsc::Sender<Queued>,
}

impl Scorer {
    /// Starts the scoring task on the current tokio runtime. It stops when the last handle is
    /// dropped.
    /// Training threads give way to its passes through `serving_first`.
    pub fn start(metrics: Arc<Metrics>, serving_first: Arc<ServingFirst>) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(score_batches(waiting, metrics, serving_first));
        Self { queue }
    }

    /// The job's ranking, best first, ties by item id, rated items left out.
    pub async fn rank(&self, job: Job) -> Result<Vec<Ranked>, ServiceError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || ServiceError::Task("the scoring task has stopped".to_string());
        self.queue.send((job, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }
}

async fn score_batches(
    waiting: mpsc::Receiver<Queued>,
    metrics: Arc<Metrics>,
    serving_first: Arc<ServingFirst>,
) {
    let mut batches = Batches::new(waiting, IN_FLIGHT, MAX_BATCH);
    let scratches = Scratches::default();
    // One pass serves one model: a job for another version starts the next batch.
    let same_model = |a: &Queued, b: &Queued| Arc::ptr_eq(&a.0.model, &b.0.model);
    while let Some((slot, batch)) = batches.next(same_model).await {
        metrics.observe_scoring_batch(batch.len());
        let scratches = scratches.clone();
        let pass = serving_first.scoring();
        super::spawn_blocking(move || {
            let mut set = scratches
                .lock()
                .expect("scratch lock")
                .pop()
                .unwrap_or_default();
            let lists = score(&batch, &mut set);
            scratches.lock().expect("scratch lock").push(set);
            drop((pass, slot));
            for ((_, reply), list) in batch.into_iter().zip(lists) {
                // A request that gave up (its client went away) no longer listens.
                let _ = reply.send(list);
            }
        });
    }
}

/// The batch's rankings, in its order; every job is for the same model.
fn score(batch: &[Queued], scratches: &mut Vec<Scratch>) -> Vec<Vec<Ranked>> {
    let model = &batch[0].0.model.recommender;
    let queries: Vec<TopQuery> = batch
        .iter()
        .map(|(job, _)| TopQuery {
            order: job.order,
            user: job.user,
            items: &job.items,
            classes: &job.classes,
            n: job.depth,
        })
        .collect();
    if scratches.len() < batch.len() {
        scratches.resize_with(batch.len(), Scratch::default);
    }
    model.top_lists(
        &queries,
        |a, b| model.items().id(a).cmp(model.items().id(b)),
        scratches,
    )
}
