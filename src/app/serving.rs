//! Serving the active model: the slot every request reads its model from, installing versions
//! into it (at start, after training, on activation, on another process's announcement) once the
//! ranking cache is warmed up for them, and the versions on record.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::ServiceError;
use super::background::free_when_unshared;
use super::rankings::Rankings;
use crate::metrics::Metrics;
use crate::model::Recommender;
use crate::model_file::ModelFile;
use crate::store::{ModelAnnouncements, ModelInfo, Store};

/// A model version being served.
pub struct ServedModel {
    pub version: i64,
    pub recommender: Recommender,
}

pub struct Serving {
    store: Store,
    metrics: Arc<Metrics>,
    slot: ArcSwapOption<ServedModel>,
    /// Warmed up for each version before it is served.
    rankings: Rankings,
    /// Held while a version is installed and recorded active, so that installs take turns: the
    /// process ends up serving the version the store records last, and holds at most two models
    /// (the served one and the one being loaded).
    installing: tokio::sync::Mutex<()>,
}

impl Serving {
    /// Serves the store's active version, if any, and from then on whichever version another
    /// process sharing the database activates.
    pub(super) async fn start(
        store: Store,
        metrics: Arc<Metrics>,
        rankings: Rankings,
    ) -> Result<Arc<Self>, ServiceError> {
        let serving = Arc::new(Self {
            store,
            metrics,
            slot: ArcSwapOption::empty(),
            rankings,
            installing: tokio::sync::Mutex::new(()),
        });
        // Subscribed before the active model is read, so no activation elsewhere falls between.
        if let Some(announcements) = serving.store.model_announcements().await? {
            tokio::spawn(follow(Arc::downgrade(&serving), announcements));
        }
        if let Some((version, blob)) = serving.store.active_model().await? {
            match serving.install(version, blob).await {
                Ok(()) => tracing::info!(version, "loaded the active model"),
                Err(error) => {
                    tracing::error!(version, %error, "cannot load the active model; serving popular items")
                }
            }
        }
        Ok(serving)
    }

    /// The model requests are served from now; requests keep the one they started with.
    pub fn current(&self) -> Option<Arc<ServedModel>> {
        self.slot.load_full()
    }

    /// Scores again the cached rankings of `users` under the version being served, after their
    /// ratings changed (see `Rankings::refresh`).
    pub(super) fn ratings_changed(&self, users: HashSet<&str>) {
        if let Some(served) = self.current() {
            self.rankings.refresh(served, users);
        }
    }

    /// Every stored model version, newest first.
    pub async fn versions(&self) -> Result<Vec<ModelInfo>, ServiceError> {
        Ok(self.store.models().await?)
    }

    /// Makes a stored model version the active one (also a rollback). It runs as a task of its
    /// own: a client that gives up cannot stop it between serving the version and recording it
    /// active, which would leave this process serving one version and the others another.
    pub async fn activate(self: &Arc<Self>, version: i64) -> Result<(), ServiceError> {
        let serving = self.clone();
        tokio::spawn(async move {
            let _turn = serving.installing.lock().await;
            serving.install_stored(version).await?;
            serving.store.activate_model(version).await?;
            serving.announce(version).await;
            tracing::info!(version, "activated model");
            Ok(())
        })
        .await
        .map_err(|e| ServiceError::Task(e.to_string()))?
    }

    /// Serves a freshly trained, stored version and makes it the active one everywhere.
    pub(super) async fn publish(
        &self,
        version: i64,
        recommender: Recommender,
        bytes: usize,
    ) -> Result<(), ServiceError> {
        let _turn = self.installing.lock().await;
        self.store.activate_model(version).await?;
        self.put(version, recommender, bytes).await;
        self.announce(version).await;
        Ok(())
    }

    /// Installs the active version unless it is already served.
    async fn load_active(&self) -> Result<(), ServiceError> {
        let _turn = self.installing.lock().await;
        let Some(version) = self.store.active_version().await? else {
            return Ok(());
        };
        if self
            .current()
            .is_some_and(|served| served.version == version)
        {
            return Ok(());
        }
        self.install_stored(version).await?;
        tracing::info!(version, "now serving the model another process activated");
        Ok(())
    }

    /// Reads a stored model version and installs it.
    async fn install_stored(&self, version: i64) -> Result<(), ServiceError> {
        let blob = self
            .store
            .model_blob(version)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no model version {version}")))?;
        self.install(version, blob).await
    }

    /// Decodes a model blob off the async threads and swaps it in.
    async fn install(&self, version: i64, blob: Vec<u8>) -> Result<(), ServiceError> {
        let bytes = blob.len();
        let file = super::spawn_blocking(move || ModelFile::from_bytes(&blob))
            .await
            .map_err(|e| ServiceError::Task(e.to_string()))??;
        self.put(version, file.recommender, bytes).await;
        Ok(())
    }

    /// Serves the version once the ranking cache is warmed up for it; the one before serves
    /// meanwhile.
    async fn put(&self, version: i64, recommender: Recommender, bytes: usize) {
        let incoming = Arc::new(ServedModel {
            version,
            recommender,
        });
        if let Some(outgoing) = self.current() {
            self.rankings.warm_up(&outgoing, &incoming).await;
        }
        let replaced = self.slot.swap(Some(incoming));
        self.metrics.set_model(version, bytes);
        if let Some(replaced) = replaced {
            free_when_unshared(replaced);
        }
    }

    /// Tells the other processes sharing the database to serve `version`, which is active
    /// already; if that fails they still load it when they start.
    async fn announce(&self, version: i64) {
        if let Err(error) = self.store.announce_model(version).await {
            tracing::warn!(version, %error, "cannot announce the active model to other processes");
        }
    }
}

/// Re-reads the active version after each announcement, for as long as the service lives.
async fn follow(serving: Weak<Serving>, mut announcements: ModelAnnouncements) {
    loop {
        let heard = announcements.next().await;
        let Some(serving) = serving.upgrade() else {
            return;
        };
        let followed = match heard {
            Ok(()) => serving.load_active().await,
            Err(error) => Err(error.into()),
        };
        if let Err(error) = followed {
            tracing::warn!(%error, "cannot follow the active model; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
