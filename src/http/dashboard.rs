//! The operator's dashboard: one HTML page, its script and its style sheet, embedded in the binary
//! and served from it. The page reads the public API (health, counts, metrics, recommendations) and,
//! once given the admin token, the admin API with it as a Bearer header.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{ApiError, AppPath};
use crate::app::Service;

/// The page's own files and nothing else: no inline script or style, no other origin, so a script
/// injected through data the page shows (an item title) does not run and the token cannot leave.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const FILES: [(&str, &str, &str); 2] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/style.css"),
    ),
];

pub fn router() -> Router<Arc<Service>> {
    Router::new()
        .route("/", get(page))
        .route("/dashboard/{file}", get(file))
}

async fn page() -> Response {
    served(
        "text/html; charset=utf-8",
        include_str!("dashboard/index.html"),
    )
}

async fn file(AppPath(name): AppPath<String>) -> Result<Response, ApiError> {
    FILES
        .iter()
        .find(|(file, _, _)| *file == name)
        .map(|(_, content_type, body)| served(content_type, body))
        .ok_or_else(|| ApiError::NotFound(format!("no dashboard file {name:?}")))
}

fn served(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A new binary brings new files: revalidate rather than keep a stale script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
