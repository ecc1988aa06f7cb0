//! Training runs: one at a time per database, on the blocking pool, with their lifecycle and
//! per-epoch progress on record; a finished run's model is stored and served.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::ServiceError;
use super::background::{GiveWay, ServingFirst, at_background_priority};
use super::serving::Serving;
use super::training_request::TrainingRequest;
use crate::metrics::Metrics;
use crate::model::{
    Checkpoint, DataShape, DatasetBuilder, EpochStats, ModelError, RatingScale, Recommender, Side,
};
use crate::model_file::ModelFile;
use crate::plot::EpochPoint;
use crate::store::{RunStatus, Store, TrainingLock, TrainingRun};

/// Runs listed by `runs`, newest first.
const LISTED_RUNS: i64 = 100;

/// How often a run checks that it still holds the training lock.
const LOCK_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Rows of the training snapshot read between checkpoints: 15-35 ms of reading at 100 M (the
/// whole read took 1.5 min with no load and 5 min while requests were scored and waited for).
const SNAPSHOT_CHECK_ROWS: usize = 16_384;

/// Why a snapshot read stopped when its run was cancelled.
const CANCELLED: &str = "the training run was cancelled";

const LOCK_LOST: &str =
    "lost the training lock (its database connection dropped); another process may train now";

pub struct Training {
    store: Store,
    metrics: Arc<Metrics>,
    serving: Arc<Serving>,
    /// What a run's threads give way to.
    serving_first: Arc<ServingFirst>,
    scale: RatingScale,
    /// What a run is trained with where its request says nothing (the server's flags).
    defaults: TrainingRequest,
    /// The most memory a run may take, by its estimate.
    memory_budget: u64,
    active: Mutex<Option<ActiveRun>>,
    /// The task of the run going on, if any, for `shutdown` to wait on.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct ActiveRun {
    id: i64,
    cancel: Arc<AtomicBool>,
}

impl Training {
    /// Marks runs a stopped process left behind as failed, if no live process is training (on a
    /// shared database, another replica's run is its own business).
    pub(super) async fn start(
        store: Store,
        metrics: Arc<Metrics>,
        serving: Arc<Serving>,
        serving_first: Arc<ServingFirst>,
        scale: RatingScale,
        defaults: TrainingRequest,
        memory_budget: u64,
    ) -> Result<Arc<Self>, ServiceError> {
        if let Some(lock) = store.try_training_lock().await? {
            let abandoned = store.end_abandoned_runs(RunStatus::Failed, None).await?;
            drop(lock);
            if abandoned > 0 {
                tracing::warn!(
                    abandoned,
                    "marked training runs of a stopped process as failed"
                );
            }
        }
        Ok(Arc::new(Self {
            store,
            metrics,
            serving,
            serving_first,
            scale,
            defaults,
            memory_budget,
            active: Mutex::new(None),
            task: Mutex::new(None),
        }))
    }

    /// Starts a training run in the background with `overrides` over the server's defaults;
    /// invalid if the result breaks a rule, a conflict while another run is going.
    pub async fn start_run(
        self: &Arc<Self>,
        overrides: &TrainingRequest,
    ) -> Result<i64, ServiceError> {
        let request = self.defaults.overlay(overrides);
        request
            .check()
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let size = self.store.data_size().await?;
        self.check_memory(&request, size)
            .map_err(ServiceError::Invalid)?;
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut active = self.active.lock().expect("training lock");
            if let Some(run) = active.as_ref() {
                return Err(ServiceError::Conflict(match run.id {
                    // Claimed by a request that has not recorded its run yet.
                    0 => "another training run is starting".to_string(),
                    id => format!("training run {id} is still going"),
                }));
            }
            // Claim the slot before the first await so two requests cannot both start a run.
            *active = Some(ActiveRun {
                id: 0,
                cancel: cancel.clone(),
            });
        }
        let release = |error: ServiceError| {
            *self.active.lock().expect("training lock") = None;
            Err(error)
        };
        // Processes sharing a PostgreSQL database train one at a time.
        let mut lock = match self.store.try_training_lock().await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                return release(ServiceError::Conflict(
                    "another process sharing the database is training".to_string(),
                ));
            }
            Err(error) => return release(error.into()),
        };
        let params = serde_json::to_value(&request).expect("a request serialises");
        let run_id = match self.store.create_run(&params).await {
            Ok(id) => id,
            Err(error) => return release(error.into()),
        };
        if let Some(run) = self.active.lock().expect("training lock").as_mut() {
            run.id = run_id;
        }
        let training = self.clone();
        let run = async move {
            let progress = Arc::new(Mutex::new(Progress::default()));
            let outcome = match training
                .store
                .update_run(
                    run_id,
                    RunStatus::Running,
                    &serde_json::json!({}),
                    None,
                    None,
                )
                .await
            {
                Ok(_) => {
                    training
                        .train(run_id, request, size, cancel, &mut lock, progress.clone())
                        .await
                }
                Err(error) => Err(TrainError::failed(error)),
            };
            // Free before the run is recorded as ended, so that whoever sees it ended can start
            // the next one here or in another process.
            *training.active.lock().expect("training lock") = None;
            drop(lock);
            training.metrics.training_stopped();
            training.finish(run_id, outcome, &progress).await;
        };
        let task = tokio::spawn(run.instrument(tracing::info_span!("training_run", run_id)));
        *self.task.lock().expect("task lock") = Some(task);
        Ok(run_id)
    }

    /// Refuses a run whose memory estimate for data of `size` is over the budget, naming the
    /// hidden units (what makes a run big) and the budget's setting.
    fn check_memory(&self, request: &TrainingRequest, size: DataShape) -> Result<(), String> {
        let config = request.config(size).map_err(|e| e.to_string())?;
        let (classes, budget) = (self.scale.classes(), self.memory_budget);
        let needed = config.memory_estimate(size, classes);
        if needed <= budget {
            return Ok(());
        }
        let hidden = match &config.item {
            Some(item) => format!("hidden={} (item-based {})", config.user.hidden, item.hidden),
            None => format!("hidden={}", config.user.hidden),
        };
        let mib = |bytes: u64| bytes >> 20;
        Err(format!(
            "hidden: a run with {hidden} on {} ratings by {} users of {} items needs about {} MiB, \
             over the training memory budget of {} MiB (TRAINING_MEMORY_MB); use fewer hidden units",
            size.ratings,
            size.users,
            size.items,
            mib(needed),
            mib(budget)
        ))
    }

    /// Asks a training run to stop: this process's own run stops within moments; a run left
    /// going by a process that is gone (no one holds the training lock) is ended as cancelled.
    pub async fn cancel(&self, run_id: i64) -> Result<TrainingRun, ServiceError> {
        let run = self.run(run_id).await?;
        let ours = {
            let active = self.active.lock().expect("training lock");
            match active.as_ref() {
                Some(active) if active.id == run_id => {
                    active.cancel.store(true, Ordering::Relaxed);
                    true
                }
                // Claimed here, not yet recorded: that run is the live one.
                Some(active) if active.id == 0 => {
                    return Err(ServiceError::Conflict(
                        "another training run is starting".to_string(),
                    ));
                }
                _ => false,
            }
        };
        if ours || run.status.is_finished() {
            return if ours {
                Ok(run)
            } else {
                Err(ServiceError::Conflict(format!(
                    "training run {run_id} is {} and cannot be cancelled",
                    run.status
                )))
            };
        }
        // The run is orphaned if this process is the one trainer and trains another run, or if no
        // process trains at all (the lock is free; held while the run is ended).
        let training_here = self.active.lock().expect("training lock").is_some();
        let lock = if training_here {
            None
        } else {
            match self.store.try_training_lock().await? {
                Some(lock) => Some(lock),
                None => {
                    return Err(ServiceError::Conflict(format!(
                        "training run {run_id} is being trained by another process sharing the \
                         database; cancel it there"
                    )));
                }
            }
        };
        self.store
            .end_abandoned_runs(RunStatus::Cancelled, Some(run_id))
            .await?;
        drop(lock);
        self.run(run_id).await
    }

    /// Stops this process's run for a shutdown: cancels it and waits up to `grace` for it to be
    /// recorded as cancelled.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        if let Some(active) = self.active.lock().expect("training lock").as_ref() {
            active.cancel.store(true, Ordering::Relaxed);
        }
        let task = self.task.lock().expect("task lock").take();
        if let Some(task) = task
            && tokio::time::timeout(grace, task).await.is_err()
        {
            tracing::warn!("the training run did not stop within the shutdown grace period");
        }
    }

    pub async fn run(&self, run_id: i64) -> Result<TrainingRun, ServiceError> {
        self.store
            .run(run_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no training run {run_id}")))
    }

    /// The run's RMSE per epoch of each RBM so far, as an SVG chart.
    pub async fn curves(&self, run_id: i64) -> Result<String, ServiceError> {
        #[derive(serde::Deserialize)]
        struct Curves {
            #[serde(default)]
            user: Vec<EpochPoint>,
            #[serde(default)]
            item: Vec<EpochPoint>,
        }
        let run = self.run(run_id).await?;
        // Before its first epoch a run's progress is `{}`: empty curves.
        let curves: Curves = serde_json::from_value(run.progress).map_err(|e| {
            ServiceError::Task(format!("run {run_id}'s progress is unreadable: {e}"))
        })?;
        crate::plot::training_curves(&curves.user, &curves.item)
            .map_err(|e| ServiceError::Task(e.to_string()))
    }

    /// The latest runs, newest first.
    pub async fn runs(&self) -> Result<Vec<TrainingRun>, ServiceError> {
        Ok(self.store.runs(LISTED_RUNS).await?)
    }

    /// Retrains every `every` with the server's defaults, skipping a tick while a run is going.
    pub fn spawn_periodic(self: &Arc<Self>, every: std::time::Duration) {
        let training = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                match training.start_run(&TrainingRequest::default()).await {
                    Ok(run_id) => tracing::info!(run_id, "started periodic retraining"),
                    Err(error) => tracing::info!(%error, "skipped periodic retraining"),
                }
            }
        });
    }

    /// Records how the run ended.
    async fn finish(
        &self,
        run_id: i64,
        outcome: Result<i64, TrainError>,
        progress: &Mutex<Progress>,
    ) {
        let progress = progress.lock().expect("progress lock").to_json();
        let recorded = match outcome {
            Ok(version) => {
                tracing::info!(run_id, version, "training run succeeded; new model active");
                self.store
                    .update_run(run_id, RunStatus::Succeeded, &progress, None, Some(version))
                    .await
            }
            Err(TrainError::Cancelled) => {
                self.store
                    .update_run(run_id, RunStatus::Cancelled, &progress, None, None)
                    .await
            }
            Err(TrainError::Failed(message)) => {
                tracing::warn!(run_id, %message, "training run failed");
                self.store
                    .update_run(run_id, RunStatus::Failed, &progress, Some(&message), None)
                    .await
            }
        };
        if let Err(error) = recorded {
            tracing::error!(run_id, %error, "cannot record how the training run ended");
        }
    }

    /// Snapshot → train on the blocking pool (progress streamed to the run record) → store the
    /// model version → serve it.
    async fn train(
        &self,
        run_id: i64,
        request: TrainingRequest,
        size: DataShape,
        cancel: Arc<AtomicBool>,
        lock: &mut TrainingLock,
        progress: Arc<Mutex<Progress>>,
    ) -> Result<i64, TrainError> {
        let serving_first = self.serving_first.clone();
        let held_before = serving_first.held();
        // The snapshot streams into the data set on the blocking pool: hashing 100 M ids is
        // minutes of CPU that must not hold an async worker.
        let (store, scale, stop) = (self.store.clone(), self.scale, cancel.clone());
        let runtime = tokio::runtime::Handle::current();
        let data = super::spawn_blocking({
            let serving_first = serving_first.clone();
            move || {
                at_background_priority(move || {
                    // The size is an estimate: room for a little more, so that the vector does
                    // not double (and hold two copies) for a few ratings more than estimated.
                    let mut data = DatasetBuilder::new(scale, size.ratings + size.ratings / 20);
                    let checkpoint = GiveWay {
                        cancel: &stop,
                        serving: &serving_first,
                    };
                    let read = runtime.block_on(store.for_each_rating(|user, item, value| {
                        // While this waits, the database's sending of the rows waits too.
                        if data.len().is_multiple_of(SNAPSHOT_CHECK_ROWS)
                            && checkpoint.should_stop()
                        {
                            return Err(CANCELLED.to_string());
                        }
                        data.push(user, item, value as f32)
                            .map_err(|e| e.to_string())
                    }));
                    read.map(|_| data.finish())
                })
            }
        })
        .await
        .map_err(TrainError::failed)?;
        if cancel.load(Ordering::Relaxed) {
            return Err(TrainError::Cancelled);
        }
        let data = data.map_err(TrainError::failed)?;
        if data.ratings.is_empty() {
            return Err(TrainError::Failed(
                "there are no ratings to train on".to_string(),
            ));
        }
        let config = request.config(data.shape()).map_err(TrainError::failed)?;
        let (sender, mut receiver) = mpsc::unbounded_channel::<(Side, EpochStats)>();
        let stop = cancel.clone();
        let trainer = super::spawn_blocking({
            let config = config.clone();
            let serving_first = serving_first.clone();
            move || {
                at_background_priority(move || {
                    let checkpoint = GiveWay {
                        cancel: &cancel,
                        serving: &serving_first,
                    };
                    let trained =
                        Recommender::train(&data, &config, &checkpoint, |side, stats| {
                            let _ = sender.send((side, stats.clone()));
                        })?;
                    let best = trained.user_fit.best_epoch;
                    let metrics = ModelMetrics {
                        valid_rmse: trained.valid_rmse,
                        valid_ndcg: trained
                            .user_fit
                            .history
                            .iter()
                            .find(|stats| stats.epoch == best)
                            .and_then(|stats| stats.valid_ndcg),
                        best_epoch: best,
                        n_train: data.ratings.len(),
                        users: data.users.len(),
                        items: data.items.len(),
                    };
                    let metrics = serde_json::to_value(metrics).expect("metrics serialise");
                    let file = ModelFile {
                        recommender: trained.recommender,
                        config,
                        metrics: metrics.clone(),
                    };
                    let blob = file.to_bytes().map_err(|e| ModelError::InvalidParameter {
                        name: "model",
                        value: e.to_string(),
                        rule: "must serialise",
                    })?;
                    Ok::<_, ModelError>((file.recommender, metrics, blob))
                })
            }
        });
        // The lock is what keeps a second process from training (and activating) beside this
        // one; if its connection drops, another may take it, so this run must stop.
        let mut lock_lost = false;
        let mut lock_checks = tokio::time::interval(LOCK_CHECK_EVERY);
        loop {
            let (side, stats) = tokio::select! {
                report = receiver.recv() => match report {
                    Some(report) => report,
                    None => break,
                },
                _ = lock_checks.tick() => {
                    if !lock_lost && !lock.is_held().await {
                        tracing::warn!(run_id, "lost the training lock; stopping the run");
                        lock_lost = true;
                        stop.store(true, Ordering::Relaxed);
                    }
                    continue;
                }
            };
            let snapshot = {
                let mut progress = progress.lock().expect("progress lock");
                progress.record(side, &stats);
                progress.to_json()
            };
            self.metrics.record_epoch(side, &stats);
            if let Err(error) = self
                .store
                .update_run(run_id, RunStatus::Running, &snapshot, None, None)
                .await
            {
                tracing::warn!(run_id, %error, "cannot record training progress");
            }
        }
        if lock_lost {
            return Err(TrainError::Failed(LOCK_LOST.to_string()));
        }
        let (recommender, metrics, blob) = match trainer.await {
            Ok(Ok(done)) => done,
            Ok(Err(ModelError::Cancelled)) => return Err(TrainError::Cancelled),
            Ok(Err(error)) => return Err(TrainError::failed(error)),
            Err(join) => {
                return Err(TrainError::Failed(format!(
                    "training thread failed: {join}"
                )));
            }
        };
        // Only the lock's holder may add and activate a version.
        if !lock.is_held().await {
            return Err(TrainError::Failed(LOCK_LOST.to_string()));
        }
        let params = serde_json::to_value(&config).expect("a configuration serialises");
        let bytes = blob.len();
        let version = self
            .store
            .insert_model(&params, &metrics, &blob, || {
                let serving_first = serving_first.clone();
                async move { serving_first.give_way_async().await }
            })
            .await
            .map_err(TrainError::failed)?;
        tracing::info!(
            run_id,
            seconds = (serving_first.held() - held_before).as_secs_f64(),
            "training and storing the model waited for scoring passes, summed over threads"
        );
        // The swap holds two models, the one serving and this one, and not this one's bytes too.
        drop(blob);
        self.serving
            .publish(version, recommender, bytes)
            .await
            .map_err(TrainError::failed)?;
        Ok(version)
    }
}

enum TrainError {
    Cancelled,
    Failed(String),
}

impl TrainError {
    fn failed(error: impl std::fmt::Display) -> Self {
        Self::Failed(error.to_string())
    }
}

/// What a stored model version records of its training.
#[derive(Serialize)]
struct ModelMetrics {
    valid_rmse: Option<f64>,
    /// The joint RBM's NDCG@10 on the validation slice at its kept epoch (see `EpochStats`).
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_ndcg: Option<f64>,
    best_epoch: usize,
    n_train: usize,
    users: usize,
    items: usize,
}

/// Per-epoch history of a run, as stored in its `progress`.
#[derive(Default, Serialize)]
struct Progress {
    /// The RBM being trained now.
    rbm: Option<Side>,
    epoch: usize,
    epochs: usize,
    user: Vec<EpochPoint>,
    item: Vec<EpochPoint>,
}

impl Progress {
    fn record(&mut self, side: Side, stats: &EpochStats) {
        self.rbm = Some(side);
        self.epoch = stats.epoch;
        self.epochs = stats.epochs;
        let record = EpochPoint {
            epoch: stats.epoch,
            train_rmse: stats.train_rmse,
            valid_rmse: stats.valid_rmse,
        };
        match side {
            Side::User => self.user.push(record),
            Side::Item => self.item.push(record),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("progress serialises")
    }
}
