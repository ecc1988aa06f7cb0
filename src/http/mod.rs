//! The HTTP API: routers of the public and admin modules merged in one place, with the layers
//! every request goes through (metrics, tracing, body limit; the timeout on all routes but model
//! activation) and graceful shutdown.

mod admin;
mod api;
mod dashboard;
mod error;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Router, extract::DefaultBodyLimit};
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

pub use error::ApiError;

use crate::app::Service;
use crate::config::Settings;
use crate::metrics::RequestLabels;

/// Largest accepted request body: 10,000 ratings with long ids fit.
const BODY_LIMIT: usize = 4 << 20;

/// Every (method, path) the router serves; the API tests check it against openapi.yaml.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/ratings"),
    ("GET", "/users/{id}/ratings"),
    ("DELETE", "/users/{id}/ratings/{item_id}"),
    ("GET", "/users/{id}/recommendations"),
    ("PUT", "/items/{id}"),
    ("GET", "/items/{id}"),
    ("GET", "/items/{id}/similar"),
    ("POST", "/admin/retrain"),
    ("GET", "/admin/training-runs"),
    ("GET", "/admin/training-runs/{id}"),
    ("GET", "/admin/training-runs/{id}/curves.svg"),
    ("POST", "/admin/training-runs/{id}/cancel"),
    ("GET", "/admin/models"),
    ("POST", "/admin/models/{version}/activate"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/stats"),
    ("GET", "/"),
    ("GET", "/dashboard/{file}"),
    ("GET", "/metrics"),
];

/// JSON body extractor whose rejections are `ApiError`s, so malformed JSON gets the same error
/// shape as every other 4xx.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct AppJson<T>(pub T);

/// Path parameters whose parse failures (`/admin/training-runs/abc`, an id that is not UTF-8) are
/// `ApiError`s too.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct AppPath<T>(pub T);

impl<T: serde::Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The routes and the layers every request goes through.
pub fn router(service: Arc<Service>, settings: &Settings) -> Router {
    let timeout =
        TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, settings.request_timeout);
    Router::new()
        .merge(api::router())
        .merge(dashboard::router())
        .route_layer(timeout)
        .nest(
            "/admin",
            admin::router(settings.admin_token.clone(), timeout),
        )
        .fallback(|| async { ApiError::NotFound("no such route".to_string()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this route".to_string())
        })
        // A Content-Length over the limit is refused before the body is read (the extractors'
        // own limit, below, covers bodies without one).
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            (service.clone(), settings.request_timeout),
            observe,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                // One line per request at info: status and latency, under the span's id.
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        // Outermost, so that the span above and every log line inside it carry the id.
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(service)
}

/// The span of one request: its method, path and id (the client's `x-request-id`, or a fresh
/// UUID), so that every log line it causes can be found by the id the client gets back.
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
    )
}

/// Records latency per route, and gives the errors that layers and extractors answer on their own
/// (the timeout's bare 408, a 413 in plain text) the API's error body.
async fn observe(
    State((service, timeout)): State<(Arc<Service>, Duration)>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = static_method(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|matched| ROUTES.iter().find(|(_, path)| *path == matched.as_str()))
        .map_or("unmatched", |(_, path)| *path);
    let mut response = next.run(request).await;
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json && (response.status().is_client_error() || response.status().is_server_error()) {
        let status = response.status();
        let text = axum::body::to_bytes(std::mem::take(response.body_mut()), 64 << 10)
            .await
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
            .unwrap_or_default();
        response = ApiError::from_bare(status, text, timeout).into_response();
    }
    let labels = RequestLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    service.metrics().observe(&labels, started.elapsed());
    response
}

/// The method's name as a static string, so that labelling a request allocates nothing.
fn static_method(method: &Method) -> &'static str {
    [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
    ]
    .iter()
    .zip(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
    .find_map(|(known, name)| (known == method).then_some(name))
    .unwrap_or("other")
}

/// A bound listener and its router, ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
    limits: server::Limits,
}

impl Application {
    pub async fn bind(service: Arc<Service>, settings: &Settings) -> std::io::Result<Self> {
        let listener = TcpListener::bind(settings.bind).await?;
        Ok(Self {
            listener,
            router: router(service, settings),
            limits: server::Limits {
                max_connections: settings.http_max_connections.max(1),
                header_read_timeout: settings.header_read_timeout,
                idle_timeout: settings.idle_timeout,
            },
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until ctrl-c or SIGTERM, then lets in-flight requests finish.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        server::serve(self.listener, self.router, self.limits, shutdown_signal()).await;
        Ok(())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
