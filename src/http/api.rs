//! Public routes: ratings, items, recommendations, similar items, health and metrics.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppJson, AppPath};
use crate::app::{MAX_EXPLAINED, PageRequest, Service};
use crate::model::{Order, RatingScale};
use crate::store::{self, Item, NewRating};

/// Most ratings accepted in one request.
const MAX_BATCH: usize = 10_000;
const MAX_LIMIT: usize = 1000;
const MAX_OFFSET: usize = 100_000;

type AppState = State<Arc<Service>>;

pub fn router() -> Router<Arc<Service>> {
    Router::new()
        .route("/ratings", post(post_ratings))
        .route("/users/{id}/ratings", get(user_ratings))
        .route("/users/{id}/ratings/{item_id}", delete(delete_rating))
        .route("/users/{id}/recommendations", get(recommendations))
        .route("/items/{id}", get(get_item).put(put_item))
        .route("/items/{id}/similar", get(similar_items))
        .route(
            "/healthz",
            get(|| async { AppJson(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
}

/// Checks an opaque id (see `store::check_id`), naming the field in the error.
pub fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    store::check_id(id).map_err(|message| ApiError::Invalid(format!("{field}: {message}")))
}

fn parse_rating(value: &Value, path: &str, scale: RatingScale) -> Result<NewRating, ApiError> {
    let Some(object) = value.as_object() else {
        return Err(ApiError::Invalid(format!(
            "{path}: expected an object {{user_id, item_id, rating}}, got {value}"
        )));
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "user_id" | "item_id" | "rating"))
    {
        return Err(ApiError::Invalid(format!(
            "{path}.{unknown}: unknown field"
        )));
    }
    let text = |field: &str| match object.get(field) {
        Some(Value::String(s)) => {
            check_id(&format!("{path}.{field}"), s)?;
            Ok(s.clone())
        }
        Some(other) => Err(ApiError::Invalid(format!(
            "{path}.{field}: expected a string, got {other}"
        ))),
        None => Err(ApiError::Invalid(format!("{path}.{field}: missing"))),
    };
    let (user_id, item_id) = (text("user_id")?, text("item_id")?);
    let rating = match object.get("rating") {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "{path}.rating: expected a number, got {other}"
            )));
        }
        None => return Err(ApiError::Invalid(format!("{path}.rating: missing"))),
    };
    let class = scale.class_of(rating as f32).map_err(|_| {
        ApiError::Invalid(format!(
            "{path}.rating: {rating} is not on the scale {scale}"
        ))
    })?;
    Ok(NewRating {
        user_id,
        item_id,
        // The step itself, not the value sent: 4.5004 is accepted as 4.5 and stored so. Through
        // the f32's shortest decimal, so that a step of 0.1 stores 3.7 and not 3.700000047….
        rating: scale
            .value_of(class)
            .to_string()
            .parse()
            .expect("a float's decimal parses"),
    })
}

/// One rating `{user_id, item_id, rating}` or `{"ratings": [...]}` of up to 10,000, all or nothing.
#[tracing::instrument(level = "debug", skip_all)]
async fn post_ratings(
    State(service): AppState,
    AppJson(body): AppJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let scale = service.catalogue().scale();
    let ratings = match body.get("ratings") {
        Some(Value::Array(list)) => {
            if list.is_empty() || list.len() > MAX_BATCH {
                return Err(ApiError::Invalid(format!(
                    "ratings: must hold 1 to {MAX_BATCH} ratings, got {}",
                    list.len()
                )));
            }
            if let Some(unknown) = body
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "ratings"))
            {
                return Err(ApiError::Invalid(format!("{unknown}: unknown field")));
            }
            list.iter()
                .enumerate()
                .map(|(n, v)| parse_rating(v, &format!("ratings[{n}]"), scale))
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "ratings: expected an array, got {other}"
            )));
        }
        None => vec![parse_rating(&body, "body", scale)?],
    };
    let counts = service.catalogue().post_ratings(&ratings).await?;
    Ok(AppJson(counts))
}

#[tracing::instrument(level = "debug", skip_all, fields(user_id = %user_id))]
async fn user_ratings(
    State(service): AppState,
    AppPath(user_id): AppPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    check_id("user_id", &user_id)?;
    let ratings = service.catalogue().user_ratings(&user_id).await?;
    let ratings: Vec<Value> = ratings
        .into_iter()
        .map(|(item_id, rating)| json!({"item_id": item_id, "rating": rating}))
        .collect();
    Ok(AppJson(json!({"user_id": user_id, "ratings": ratings})))
}

#[tracing::instrument(level = "debug", skip_all, fields(user_id = %user_id, item_id = %item_id))]
async fn delete_rating(
    State(service): AppState,
    AppPath((user_id, item_id)): AppPath<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    check_id("user_id", &user_id)?;
    check_id("item_id", &item_id)?;
    service
        .catalogue()
        .delete_rating(&user_id, &item_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemBody {
    title: String,
    #[serde(default)]
    metadata: Option<Value>,
}

#[tracing::instrument(level = "debug", skip_all, fields(item_id = %item_id))]
async fn put_item(
    State(service): AppState,
    AppPath(item_id): AppPath<String>,
    AppJson(body): AppJson<ItemBody>,
) -> Result<impl IntoResponse, ApiError> {
    check_id("item_id", &item_id)?;
    if body.title.chars().count() > 1000 {
        return Err(ApiError::Invalid(
            "title: must be at most 1000 characters".to_string(),
        ));
    }
    // PostgreSQL's text cannot hold NUL; refused on both stores so that they agree.
    if body.title.contains('\0') {
        return Err(ApiError::Invalid(
            "title: must not contain NUL (U+0000)".to_string(),
        ));
    }
    if let Some(metadata) = &body.metadata
        && !metadata.is_object()
    {
        return Err(ApiError::Invalid(format!(
            "metadata: expected an object, got {metadata}"
        )));
    }
    let item = Item {
        item_id,
        title: Some(body.title),
        metadata: body.metadata,
    };
    let created = service.catalogue().put_item(&item).await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        AppJson(item),
    ))
}

#[tracing::instrument(level = "debug", skip_all, fields(item_id = %item_id))]
async fn get_item(
    State(service): AppState,
    AppPath(item_id): AppPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    check_id("item_id", &item_id)?;
    Ok(AppJson(service.catalogue().item(&item_id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<usize>,
    offset: Option<usize>,
    /// Comma-separated item ids to leave out.
    exclude: Option<String>,
    order: Option<String>,
    explain: Option<String>,
}

fn check_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(10);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::Invalid(format!(
            "limit: must be 1 to {MAX_LIMIT}, got {limit}"
        )));
    }
    Ok(limit)
}

#[tracing::instrument(level = "debug", skip_all, fields(user_id = %user_id))]
async fn recommendations(
    State(service): AppState,
    AppPath(user_id): AppPath<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query?;
    check_id("user_id", &user_id)?;
    let order = match query.order.as_deref() {
        None => None,
        Some("score") => Some(Order::Score),
        Some("expected_rating") => Some(Order::ExpectedRating),
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "order: must be score or expected_rating, got {other:?}"
            )));
        }
    };
    let explain = match query.explain.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "explain: must be true or false, got {other:?}"
            )));
        }
    };
    let limit = check_limit(query.limit)?;
    if explain && limit > MAX_EXPLAINED {
        return Err(ApiError::Invalid(format!(
            "limit: an explained page holds at most {MAX_EXPLAINED} items, got {limit}"
        )));
    }
    let offset = query.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(ApiError::Invalid(format!(
            "offset: must be at most {MAX_OFFSET}, got {offset}"
        )));
    }
    let exclude: HashSet<String> = query
        .exclude
        .iter()
        .flat_map(|list| list.split(','))
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect();
    Ok(AppJson(
        service
            .recommendations()
            .page(PageRequest {
                user_id,
                order,
                limit,
                offset,
                exclude,
                explain,
            })
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitQuery {
    limit: Option<usize>,
}

#[tracing::instrument(level = "debug", skip_all, fields(item_id = %item_id))]
async fn similar_items(
    State(service): AppState,
    AppPath(item_id): AppPath<String>,
    query: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query?;
    check_id("item_id", &item_id)?;
    let limit = check_limit(query.limit)?;
    let items = service
        .recommendations()
        .similar_items(&item_id, limit)
        .await?;
    Ok(AppJson(json!({"item_id": item_id, "items": items})))
}

async fn ready(State(service): AppState) -> Result<impl IntoResponse, ApiError> {
    let readiness = service
        .readiness()
        .await
        .map_err(|e| ApiError::Unavailable(format!("database unreachable: {e}")))?;
    Ok(AppJson(readiness))
}

async fn stats(State(service): AppState) -> Result<impl IntoResponse, ApiError> {
    Ok(AppJson(service.catalogue().counts().await?))
}

async fn metrics(State(service): AppState) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        service.metrics_text(),
    )
}
