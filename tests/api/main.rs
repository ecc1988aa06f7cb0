//! API tests over real HTTP against real databases. Every test runs twice: on PostgreSQL (a fresh
//! database per test on TEST_DATABASE_URL's server, default postgres://postgres@127.0.0.1:5432) and
//! on a fresh embedded SQLite file. An unreachable PostgreSQL fails the tests; it never skips them.

mod contract;
mod dashboard;
mod errors;
mod flows;
mod fuzz;
mod import;
mod runs;
mod store;
#[path = "../support/svg.rs"]
mod svg;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rbm_recommender::app::{Service, TrainingRequest};
use rbm_recommender::config::{LogFormat, Settings};
use rbm_recommender::http::Application;
use rbm_recommender::model::RatingScale;
use rbm_recommender::store::Store;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

pub const ADMIN_TOKEN: &str = "test-admin-token";

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Postgres,
    Sqlite,
}

pub struct TestApp {
    pub base: String,
    /// The app's own database, for writes that bypass the service.
    pub database_url: String,
    pub client: reqwest::Client,
    pub spec: &'static contract::Spec,
    _database: TestDatabase,
}

pub enum TestDatabase {
    Postgres {
        server: String,
        name: String,
    },
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    /// Owned by another app's guard.
    Shared,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres { server, name } = self {
            let (server, name) = (server.clone(), name.clone());
            // Drop runs outside any runtime guarantee; use a thread with its own runtime.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    if let Ok(mut admin) =
                        PgConnection::connect(&format!("{server}/postgres")).await
                    {
                        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                        let _ = admin.execute(AssertSqlSafe(sql)).await;
                    }
                });
            })
            .join();
        }
    }
}

fn postgres_server() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

static DATABASES: AtomicUsize = AtomicUsize::new(0);

pub fn settings(database_url: String, admin_token: Option<&str>) -> Settings {
    Settings {
        database_url: Some(database_url),
        data_dir: "./data".into(),
        bind: "127.0.0.1:0".parse().unwrap(),
        admin_token: admin_token.map(|t| t.parse().unwrap()),
        scale: RatingScale::HALF_STARS,
        log_format: LogFormat::Pretty,
        retrain_every: None,
        request_timeout: Duration::from_secs(30),
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        http_max_connections: 1000,
        max_connections: 8,
        ranking_cache_mb: 64,
        training_memory_mb: 0,
        training: TrainingRequest::default(),
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, Some(ADMIN_TOKEN)).await
}

/// A fresh, empty database of the backend: its URL and a guard that removes it.
pub async fn fresh_database(backend: Backend) -> (String, TestDatabase) {
    match backend {
        Backend::Postgres => {
            let server = postgres_server();
            let name = format!(
                "rbm_test_{}_{}",
                std::process::id(),
                DATABASES.fetch_add(1, Ordering::Relaxed)
            );
            let mut admin = PgConnection::connect(&format!("{server}/postgres")).await.unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is not reachable at {server} ({e}). Run the suite with scripts/test, which starts \
                     a throwaway server when none is running, or set TEST_DATABASE_URL."
                )
            });
            admin
                .execute(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .await
                .unwrap();
            (
                format!("{server}/{name}"),
                TestDatabase::Postgres { server, name },
            )
        }
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            (
                format!("sqlite://{}", dir.path().join("test.db").display()),
                TestDatabase::Sqlite(dir),
            )
        }
    }
}

pub async fn spawn_app_with(backend: Backend, admin_token: Option<&str>) -> TestApp {
    let (url, database) = fresh_database(backend).await;
    spawn_app_on(url, database, settings_for(admin_token)).await
}

/// An app started with settings of its own (the flags of `serve`), set by `tune`.
pub async fn spawn_app_tuned(backend: Backend, tune: impl FnOnce(&mut Settings)) -> TestApp {
    let (url, database) = fresh_database(backend).await;
    spawn_app_on(url, database, tune).await
}

fn settings_for(admin_token: Option<&str>) -> impl FnOnce(&mut Settings) {
    let token = admin_token.map(str::to_string);
    move |settings: &mut Settings| settings.admin_token = token.map(|t| t.parse().unwrap())
}

/// Another app on the database of `app`, as a second replica would run.
pub async fn spawn_replica(app: &TestApp) -> TestApp {
    spawn_replica_tuned(app, settings_for(Some(ADMIN_TOKEN))).await
}

/// Another app on the database of `app`, with settings of its own.
pub async fn spawn_replica_tuned(app: &TestApp, tune: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_on(app.database_url.clone(), TestDatabase::Shared, tune).await
}

async fn spawn_app_on(
    url: String,
    database: TestDatabase,
    tune: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = settings(url.clone(), Some(ADMIN_TOKEN));
    tune(&mut settings);
    let store = Store::connect(&url, settings.max_connections)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let service = Service::start(store, settings.options()).await.unwrap();
    let app = Application::bind(service, &settings).await.unwrap();
    let base = format!("http://{}", app.local_addr().unwrap());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        base,
        database_url: url,
        client: reqwest::Client::new(),
        spec: contract::spec(),
        _database: database,
    }
}

impl TestApp {
    /// A client of a server started elsewhere (a child process) on `database_url`.
    pub fn at(base: String, database_url: String) -> Self {
        TestApp {
            base,
            database_url,
            client: reqwest::Client::new(),
            spec: contract::spec(),
            _database: TestDatabase::Shared,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; returns the status and the JSON body (Null when there is none), after
    /// checking the body against the OpenAPI schema of that route and status.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        admin: bool,
    ) -> (u16, Value) {
        let mut request = self.client.request(method.parse().unwrap(), self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        if admin {
            request = request.bearer_auth(ADMIN_TOKEN);
        }
        let response = request.send().await.unwrap();
        self.checked(method, path, response).await
    }

    pub async fn checked(
        &self,
        method: &str,
        path: &str,
        response: reqwest::Response,
    ) -> (u16, Value) {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        self.spec.check_response(method, path, status, &body);
        (status, body)
    }

    /// The Prometheus text of GET /metrics.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(
            response.headers()["content-type"],
            rbm_recommender::metrics::CONTENT_TYPE
        );
        response.text().await.unwrap()
    }

    pub async fn post_ratings(&self, ratings: &[(&str, &str, f64)]) -> (u16, Value) {
        let list: Vec<Value> = ratings
            .iter()
            .map(|(u, i, r)| json!({"user_id": u, "item_id": i, "rating": r}))
            .collect();
        self.call("POST", "/ratings", Some(json!({"ratings": list})), false)
            .await
    }

    pub async fn recommendations(&self, user: &str, query: &str) -> Value {
        let (status, body) = self
            .call(
                "GET",
                &format!("/users/{user}/recommendations{query}"),
                None,
                false,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Starts a small, fast retraining run and waits for it to end; returns the finished run.
    pub async fn retrain(&self, overrides: Value) -> Value {
        let (status, body) = self
            .call("POST", "/admin/retrain", Some(overrides), true)
            .await;
        assert_eq!(status, 202, "{body}");
        self.wait_for_run(body["run_id"].as_i64().unwrap()).await
    }

    pub async fn wait_for_run(&self, id: i64) -> Value {
        for _ in 0..600 {
            let (_, run) = self
                .call("GET", &format!("/admin/training-runs/{id}"), None, true)
                .await;
            if matches!(
                run["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("training run {id} did not finish");
    }
}

/// Users in three taste groups rate four in five items of their group, 4.5-5, and two in five of
/// the others, 1-1.5: both which items they rate and how carry their taste.
pub fn planted_ratings(users: usize, items: usize) -> Vec<(String, String, f64)> {
    let mut rows = Vec::new();
    for u in 0..users {
        for i in 0..items {
            let liked = u % 3 == i % 3;
            if (u * 7 + i * 3) % 5 < if liked { 4 } else { 2 } {
                let rating = if liked {
                    4.5 + 0.5 * ((u + i) % 2) as f64
                } else {
                    1.0 + 0.5 * ((u + i) % 2) as f64
                };
                rows.push((format!("u{u}"), format!("i{i:02}"), rating));
            }
        }
    }
    rows
}

pub async fn seed(app: &TestApp, users: usize, items: usize) {
    let rows = planted_ratings(users, items);
    let borrowed: Vec<(&str, &str, f64)> = rows
        .iter()
        .map(|(u, i, r)| (u.as_str(), i.as_str(), *r))
        .collect();
    let (status, body) = app.post_ratings(&borrowed).await;
    assert_eq!(status, 200, "{body}");
}

/// Starts a run that goes on until it is cancelled; returns its id.
pub async fn start_endless_run(app: &TestApp) -> i64 {
    let endless = json!({"epochs": 100000, "hidden": 64, "patience": 0, "valid_frac": 0.0});
    let (status, body) = app
        .call("POST", "/admin/retrain", Some(endless), true)
        .await;
    assert_eq!(status, 202, "{body}");
    body["run_id"].as_i64().unwrap()
}

/// Small models train in well under a second.
pub fn fast_training() -> Value {
    json!({"epochs": 60, "hidden": 12, "batch_size": 10, "learning_rate": 0.05, "valid_frac": 0.0})
}

/// Runs an async test body against both backends: `on_both_backends!(f)` passes a spawned app,
/// `on_both_backends!(backend f)` passes the backend itself.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident) => {
        $crate::on_both_backends!(@tests $name, |backend| async move { $crate::spawn_app(backend).await });
    };
    (backend $name:ident) => {
        $crate::on_both_backends!(@tests $name, |backend| async move { backend });
    };
    (@tests $name:ident, $arrange:expr) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(($arrange)($crate::Backend::Postgres).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(($arrange)($crate::Backend::Sqlite).await).await;
            }
        }
    };
}
