//! The catalogue's records: users' ratings and items, with the item titles that pages show kept
//! in a short-lived cache, and the most rated items.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::ServiceError;
use super::popularity::Popularity;
use super::serving::Serving;
use crate::metrics::Metrics;
use crate::model::{DataShape, RatingScale};
use crate::store::{Item, NewRating, PopularItem, Store, UpsertCounts};

const TITLE_TTL: Duration = Duration::from_secs(30);
const TITLE_CACHE_ENTRIES: u64 = 1_000_000;

pub struct Catalogue {
    store: Store,
    metrics: Arc<Metrics>,
    scale: RatingScale,
    /// Titles by item id, kept for TITLE_TTL so that a page of recommendations costs one read of
    /// the database (the user's ratings) rather than two. A PUT /items through this instance
    /// takes effect at once; changes made elsewhere (another replica, an import) within the TTL.
    titles: moka::sync::Cache<String, Option<String>>,
    popularity: Arc<Popularity>,
    /// Told whose ratings changed, so that their cached rankings are scored again.
    serving: Arc<Serving>,
}

impl Catalogue {
    pub(super) fn new(
        store: Store,
        metrics: Arc<Metrics>,
        scale: RatingScale,
        serving: Arc<Serving>,
    ) -> Self {
        Self {
            serving,
            metrics,
            scale,
            titles: moka::sync::Cache::builder()
                .max_capacity(TITLE_CACHE_ENTRIES)
                .time_to_live(TITLE_TTL)
                .build(),
            popularity: Popularity::start(store.clone()),
            store,
        }
    }

    /// The scale every rating must be on.
    pub fn scale(&self) -> RatingScale {
        self.scale
    }

    /// Inserts or replaces ratings, all or none, then has the rated users' cached rankings scored
    /// again. The request type that produced them has checked each against `scale()` (naming the
    /// offending one), so it is not done again here.
    pub async fn post_ratings(&self, ratings: &[NewRating]) -> Result<UpsertCounts, ServiceError> {
        let counts = self.store.upsert_ratings(ratings).await?;
        self.popularity.rated();
        self.serving
            .ratings_changed(ratings.iter().map(|r| r.user_id.as_str()).collect());
        self.metrics
            .add_ratings_written(counts.inserted + counts.updated);
        Ok(counts)
    }

    /// How many users, items and ratings there are; the ratings are an estimate on PostgreSQL
    /// (see `Store::data_size`).
    pub async fn counts(&self) -> Result<DataShape, ServiceError> {
        Ok(self.store.data_size().await?)
    }

    /// The user's ratings as (item id, rating), by item id.
    pub async fn user_ratings(&self, user_id: &str) -> Result<Vec<(String, f64)>, ServiceError> {
        Ok(self.store.user_ratings(user_id).await?.1)
    }

    /// Deletes a rating; not found if there was none.
    pub async fn delete_rating(&self, user_id: &str, item_id: &str) -> Result<(), ServiceError> {
        if self.store.delete_rating(user_id, item_id).await? {
            self.popularity.rated();
            self.serving.ratings_changed(HashSet::from([user_id]));
            Ok(())
        } else {
            Err(ServiceError::NotFound(format!(
                "user {user_id:?} has no rating for item {item_id:?}"
            )))
        }
    }

    /// Creates or replaces an item; true if it was created.
    pub async fn put_item(&self, item: &Item) -> Result<bool, ServiceError> {
        let created = self.store.put_item(item).await?;
        self.titles.invalidate(&item.item_id);
        Ok(created)
    }

    pub async fn item(&self, item_id: &str) -> Result<Item, ServiceError> {
        self.store
            .item(item_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no item {item_id:?}")))
    }

    /// Items by number of ratings (ties by id), skipping `exclude`, from position `offset`.
    pub(super) async fn popular(
        &self,
        limit: usize,
        offset: usize,
        exclude: &HashSet<String>,
    ) -> Result<Vec<PopularItem>, ServiceError> {
        self.popularity.page(limit, offset, exclude).await
    }

    /// Titles of the given items, from the cache where it has them.
    pub(super) async fn titles(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, String>, ServiceError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for &id in ids {
            match self.titles.get(id) {
                Some(Some(title)) => {
                    found.insert(id.to_string(), title);
                }
                Some(None) => {}
                None => missing.push(id),
            }
        }
        if !missing.is_empty() {
            let fetched = self.store.titles(&missing).await?;
            // `get`, not `remove`: an id asked for twice must find its title both times.
            for id in missing {
                let title = fetched.get(id).cloned();
                self.titles.insert(id.to_string(), title.clone());
                if let Some(title) = title {
                    found.insert(id.to_string(), title);
                }
            }
        }
        Ok(found)
    }
}
