//! Admin routes behind `Authorization: Bearer <ADMIN_TOKEN>`: retraining, training runs, models.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use subtle::ConstantTimeEq;
use tower_http::timeout::TimeoutLayer;

use super::{ApiError, AppJson, AppPath};
use crate::app::Service;
use crate::app::TrainingRequest;
use crate::config::Secret;

type AppState = State<Arc<Service>>;

pub fn router(admin_token: Option<Secret>, timeout: TimeoutLayer) -> Router<Arc<Service>> {
    Router::new()
        .route("/retrain", post(retrain))
        .route("/training-runs", get(runs))
        .route("/training-runs/{id}", get(run))
        .route("/training-runs/{id}/cancel", post(cancel))
        .route("/training-runs/{id}/curves.svg", get(curves))
        .route("/models", get(models))
        .route_layer(timeout)
        // Not under the request timeout: loading a version takes as long as its size needs (5-11 s
        // for the 430 MB model of 100 M ratings), and the activation would go on without the
        // client anyway (see `Serving::activate`).
        .route("/models/{version}/activate", post(activate))
        .route_layer(middleware::from_fn_with_state(admin_token, require_admin))
}

/// 403 when no token is configured, 401 without the right one; compared in constant time.
async fn require_admin(
    State(admin_token): State<Option<Secret>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = &admin_token else {
        return Err(ApiError::AdminDisabled);
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim_start());
    if bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// An optional JSON body of hyperparameters over the server's defaults, checked before the run
/// starts.
#[tracing::instrument(level = "debug", skip_all)]
async fn retrain(
    State(service): AppState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let overrides: TrainingRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TrainingRequest::default()
    } else {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/json".to_string(),
            ));
        }
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
        // serde would also read a struct from an array ([] as {}): only an object is a request.
        if !value.is_object() {
            return Err(ApiError::Invalid(format!(
                "body: expected an object of training parameters, got {value}"
            )));
        }
        serde_json::from_value(value).map_err(|e| ApiError::Invalid(format!("body: {e}")))?
    };
    let run_id = service.training().start_run(&overrides).await?;
    Ok((StatusCode::ACCEPTED, AppJson(json!({"run_id": run_id}))))
}

async fn runs(State(service): AppState) -> Result<impl IntoResponse, ApiError> {
    let runs = service.training().runs().await?;
    Ok(AppJson(json!({"runs": runs})))
}

async fn run(
    State(service): AppState,
    AppPath(id): AppPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(AppJson(service.training().run(id).await?))
}

async fn curves(
    State(service): AppState,
    AppPath(id): AppPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    let svg = service.training().curves(id).await?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg))
}

#[tracing::instrument(level = "debug", skip_all, fields(run_id = id))]
async fn cancel(
    State(service): AppState,
    AppPath(id): AppPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    let run = service.training().cancel(id).await?;
    Ok((StatusCode::ACCEPTED, AppJson(run)))
}

async fn models(State(service): AppState) -> Result<impl IntoResponse, ApiError> {
    let models = service.serving().versions().await?;
    Ok(AppJson(json!({"models": models})))
}

#[tracing::instrument(level = "debug", skip_all, fields(version = version))]
async fn activate(
    State(service): AppState,
    AppPath(version): AppPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    service.serving().activate(version).await?;
    Ok(AppJson(json!({"version": version, "active": true})))
}
