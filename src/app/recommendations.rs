//! Recommendations from the active model: pages of the user's ranking (see `rankings`), the
//! popular fallback, explanations, and similar items.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use super::ServiceError;
use super::catalogue::Catalogue;
use super::rankings::{RankedItems, RankingKey, Rankings, served_order};
use super::serving::{ServedModel, Serving};
use crate::model::{Order, Recommender};

/// Where a recommendation list came from: the model, or the popular fallback when there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListSource {
    Model,
    Popular,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub item_id: String,
    pub title: Option<String>,
    /// What the list is ordered by: the relevance under `Order::Score`, else the expected rating
    /// (popular items: the number of ratings). f32, as the model computes them, so that JSON
    /// carries the shortest digits that give back the same value.
    pub score: f32,
    pub expected_rating: f32,
    /// Only on explained pages: the user's ratings that raised this item's score most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub because: Option<Vec<Because>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecommendationPage {
    pub user_id: String,
    pub model_version: Option<i64>,
    pub source: ListSource,
    /// The order the list is in; "popularity" for the popular fallback.
    pub order: PageOrder,
    pub items: Vec<Recommendation>,
}

/// The order of a page: one of the model's, or the popular fallback's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PageOrder {
    Score,
    ExpectedRating,
    Popularity,
}

impl From<Order> for PageOrder {
    fn from(order: Order) -> Self {
        match order {
            Order::Score => PageOrder::Score,
            Order::ExpectedRating => PageOrder::ExpectedRating,
        }
    }
}

/// One of the user's ratings and how much it raised a recommended item's score (see
/// `Recommender::explain`).
#[derive(Debug, Clone, Serialize)]
pub struct Because {
    pub item_id: String,
    pub title: Option<String>,
    pub rating: f64,
    /// The drop in the recommended item's score, in the units of the page's order, when this
    /// rating is left out of the v→h pass.
    pub contribution: f32,
}

/// A request for a page of recommendations, checked by the caller.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub user_id: String,
    /// The model's default order if None.
    pub order: Option<Order>,
    pub limit: usize,
    pub offset: usize,
    /// Item ids left out of the list.
    pub exclude: HashSet<String>,
    /// Whether each item says which of the user's ratings raised it most (at most
    /// `MAX_EXPLAINED` items a page).
    pub explain: bool,
}

/// Most items an explained page may hold: each costs R·(K + 1)·M multiply-adds for a user with
/// R ratings.
pub const MAX_EXPLAINED: usize = 50;

/// Ratings named per explained item.
const REASONS: usize = 3;

#[derive(Debug, Clone, Serialize)]
pub struct SimilarItem {
    pub item_id: String,
    pub title: Option<String>,
    pub similarity: f32,
}

pub struct Recommendations {
    serving: Arc<Serving>,
    catalogue: Arc<Catalogue>,
    rankings: Rankings,
}

impl Recommendations {
    pub(super) fn new(
        serving: Arc<Serving>,
        catalogue: Arc<Catalogue>,
        rankings: Rankings,
    ) -> Self {
        Self {
            serving,
            catalogue,
            rankings,
        }
    }

    /// Memory the ranking cache holds.
    pub(super) fn cache_bytes(&self) -> u64 {
        self.rankings.cache_bytes()
    }

    /// The user's top unrated items under the active model in the request's order (the model's
    /// default order if none), from the user's ratings as they are in the store now; the most
    /// popular items when there is no model or the model knows none of the user's items.
    pub async fn page(&self, request: PageRequest) -> Result<RecommendationPage, ServiceError> {
        let PageRequest {
            user_id,
            order,
            limit,
            offset,
            exclude,
            explain,
        } = request;
        let user_id = user_id.as_str();
        let model = self.serving.current();
        let mut ordered = None;
        // An explanation needs the ratings the list was scored from, and without the cache a
        // revision could find nothing: either way the ratings are read first, with their revision.
        let mut ratings = match explain || !self.rankings.caching() {
            true => Some(self.rankings.ratings(user_id).await?),
            false => None,
        };
        if let Some(served) = &model {
            let order = served_order(&served.recommender, order);
            // One indexed read tells whether a ranking computed earlier still matches the user's
            // ratings; only when it does not are they read and the catalogue scored.
            let revision = match &ratings {
                Some((revision, _)) => *revision,
                None => self.rankings.revision(user_id).await?,
            };
            let slot = (served.version, order, user_id.to_string());
            let key = (slot.clone(), revision);
            let mut scored = self.cached_page(served, key, limit, offset, &exclude);
            if scored.is_none() {
                let (revision, read) = match ratings.take() {
                    Some(read) => read,
                    None => self.rankings.ratings(user_id).await?,
                };
                let key = (slot, revision);
                scored = self
                    .score(served.clone(), key, &read, limit, offset, &exclude)
                    .await?;
                ratings = Some((revision, read));
            }
            ordered = scored.map(|items| (served, order, items));
        }
        let (source, order, mut items) = match ordered {
            Some((served, order, mut items)) => {
                if explain {
                    let (_, read) = ratings.take().expect("read for the explanation");
                    explain_items(served.clone(), user_id, order, read, &mut items).await?;
                }
                (ListSource::Model, PageOrder::from(order), items)
            }
            None => {
                let ratings = match ratings {
                    Some((_, ratings)) => ratings,
                    None => self.rankings.ratings(user_id).await?.1,
                };
                let mut skip = exclude;
                skip.extend(ratings.into_iter().map(|(item, _)| item));
                let popular = self.catalogue.popular(limit, offset, &skip).await?;
                let items = popular
                    .into_iter()
                    .map(|p| Recommendation {
                        item_id: p.item_id,
                        title: None,
                        score: p.ratings as f32,
                        expected_rating: p.mean_rating as f32,
                        // The fallback does not come from the user's ratings.
                        because: explain.then(Vec::new),
                    })
                    .collect();
                (ListSource::Popular, PageOrder::Popularity, items)
            }
        };
        self.add_titles(&mut items).await?;
        Ok(RecommendationPage {
            user_id: user_id.to_string(),
            model_version: model.map(|m| m.version),
            source,
            order,
            items,
        })
    }

    /// The titles of the items and of the ratings that explain them.
    async fn add_titles(&self, items: &mut [Recommendation]) -> Result<(), ServiceError> {
        let reasons = items.iter().flat_map(|r| r.because.iter().flatten());
        let ids: Vec<&str> = items
            .iter()
            .map(|r| r.item_id.as_str())
            .chain(reasons.map(|b| b.item_id.as_str()))
            .collect();
        let titles = self.catalogue.titles(&ids).await?;
        for item in items {
            item.title = titles.get(&item.item_id).cloned();
            for because in item.because.iter_mut().flatten() {
                because.title = titles.get(&because.item_id).cloned();
            }
        }
        Ok(())
    }

    /// The items most like `item_id`: the list of a user whose one rating is its top rating.
    pub async fn similar_items(
        &self,
        item_id: &str,
        limit: usize,
    ) -> Result<Vec<SimilarItem>, ServiceError> {
        let Some(served) = self.serving.current() else {
            return Err(ServiceError::NotFound(
                "no model has been trained yet".to_string(),
            ));
        };
        let Some(index) = served.recommender.items().get(item_id) else {
            return Err(ServiceError::NotFound(format!(
                "item {item_id:?} is not in the active model"
            )));
        };
        let model = served.clone();
        let similar = super::spawn_blocking(move || {
            model
                .recommender
                .similar_items(index, limit)
                .into_iter()
                .map(|(i, similarity)| (model.recommender.items().id(i).to_string(), similarity))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ServiceError::Task(e.to_string()))?;
        let ids: Vec<&str> = similar.iter().map(|(id, _)| id.as_str()).collect();
        let titles = self.catalogue.titles(&ids).await?;
        Ok(similar
            .into_iter()
            .map(|(item_id, similarity)| SimilarItem {
                title: titles.get(&item_id).cloned(),
                item_id,
                similarity,
            })
            .collect())
    }

    /// The page from the ranking cached for this (model, order, user) at the revision, if it is
    /// deep enough.
    fn cached_page(
        &self,
        served: &ServedModel,
        key: RankingKey,
        limit: usize,
        offset: usize,
        exclude: &HashSet<String>,
    ) -> Option<Vec<Recommendation>> {
        let ranking = self.rankings.cached(&key)?;
        let excluded = excluded_indices(&served.recommender, exclude);
        (ranking.complete || offset + limit + excluded.len() <= ranking.entries.len())
            .then(|| page(&served.recommender, &ranking, &excluded, limit, offset))
    }

    /// Scores the catalogue in the key's order for the user's ratings (read at the key's
    /// revision), with whoever else is waiting, caches the ranking and returns the page. None if
    /// the model knows none of the rated items.
    async fn score(
        &self,
        served: Arc<ServedModel>,
        key: RankingKey,
        ratings: &[(String, f64)],
        limit: usize,
        offset: usize,
        exclude: &HashSet<String>,
    ) -> Result<Option<Vec<Recommendation>>, ServiceError> {
        let excluded = excluded_indices(&served.recommender, exclude);
        let depth = self.rankings.depth_for(offset + limit + excluded.len());
        let ranking = self
            .rankings
            .rank(served.clone(), key, ratings, depth)
            .await?;
        Ok(ranking.map(|ranking| page(&served.recommender, &ranking, &excluded, limit, offset)))
    }
}

fn excluded_indices(model: &Recommender, exclude: &HashSet<String>) -> HashSet<u32> {
    exclude
        .iter()
        .filter_map(|id| model.items().get(id))
        .collect()
}

/// Entries `offset..offset + limit` of a ranking once `excluded` items are dropped.
fn page(
    model: &Recommender,
    ranking: &RankedItems,
    excluded: &HashSet<u32>,
    limit: usize,
    offset: usize,
) -> Vec<Recommendation> {
    ranking
        .entries
        .iter()
        .filter(|r| !excluded.contains(&r.item))
        .skip(offset)
        .take(limit)
        .map(|r| Recommendation {
            item_id: model.items().id(r.item).to_string(),
            title: None,
            score: r.score,
            expected_rating: r.expected_rating,
            because: None,
        })
        .collect()
}

/// Fills in `because` of every item: the user's ratings (`ratings`, as the list was scored from)
/// that raised its score in `order` most, by `Recommender::explain`.
async fn explain_items(
    served: Arc<ServedModel>,
    user_id: &str,
    order: Order,
    ratings: Vec<(String, f64)>,
    items: &mut [Recommendation],
) -> Result<(), ServiceError> {
    let model = &served.recommender;
    let user = model.users().get(user_id);
    let targets: Vec<u32> = items
        .iter()
        .map(|r| model.items().get(&r.item_id).expect("listed by this model"))
        .collect();
    let explained = super::spawn_blocking(move || {
        let model = &served.recommender;
        let (rated, classes) = model.rated(
            ratings
                .iter()
                .map(|(item, value)| (item.as_str(), *value as f32)),
        );
        let value: std::collections::HashMap<&str, f64> = ratings
            .iter()
            .map(|(item, v)| (item.as_str(), *v))
            .collect();
        model
            .explain(order, user, &rated, &classes, &targets, REASONS)
            .into_iter()
            .map(|reasons| {
                reasons
                    .into_iter()
                    .map(|reason| {
                        let item_id = model.items().id(reason.rated);
                        Because {
                            item_id: item_id.to_string(),
                            title: None,
                            rating: value[item_id],
                            contribution: reason.contribution,
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ServiceError::Task(e.to_string()))?;
    for (item, because) in items.iter_mut().zip(explained) {
        item.because = Some(because);
    }
    Ok(())
}
