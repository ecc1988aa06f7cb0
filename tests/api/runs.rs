//! Training runs against unlucky operations: replicas starting beside a trainer, a trainer's
//! database connection killed, a run orphaned by a crash, SIGTERM in the middle of a run.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::{Backend, TestApp, on_both_backends, seed, start_endless_run};

async fn run(app: &TestApp, id: i64) -> Value {
    let (status, run) = app
        .call("GET", &format!("/admin/training-runs/{id}"), None, true)
        .await;
    assert_eq!(status, 200, "{run}");
    run
}

/// A replica that starts while another process trains leaves that run alone; when the run ends,
/// its record moves forward only (ended after it started, never running again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_replica_leaves_a_live_run_alone() {
    let trainer = crate::spawn_app(Backend::Postgres).await;
    seed(&trainer, 90, 18).await;
    let id = start_endless_run(&trainer).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replica = crate::spawn_replica(&trainer).await;
    let seen = run(&replica, id).await;
    assert_eq!(seen["status"], "running", "{seen}");
    assert_eq!(seen["finished_at"], Value::Null, "{seen}");
    // The replica cannot cancel what another live process trains.
    let cancel = format!("/admin/training-runs/{id}/cancel");
    let (status, body) = replica.call("POST", &cancel, None, true).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(trainer.call("POST", &cancel, None, true).await.0, 202);
    let ended = trainer.wait_for_run(id).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert!(
        ended["finished_at"].as_i64() >= ended["started_at"].as_i64(),
        "{ended}"
    );
}

/// Key of the trainer's advisory lock (src/store/runs.rs).
const TRAINING_LOCK_KEY: i64 = 0x7262_6d5f_7472_6169;

/// A trainer whose lock connection is killed stops its run as failed, so that a second process,
/// which may now take the lock, is the only one that can activate a model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_that_loses_its_lock_stops() {
    let trainer = crate::spawn_app(Backend::Postgres).await;
    let replica = crate::spawn_replica(&trainer).await;
    seed(&trainer, 90, 18).await;
    let id = start_endless_run(&trainer).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admin = PgConnection::connect(&trainer.database_url).await.unwrap();
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = $1",
    )
    .bind(TRAINING_LOCK_KEY)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed, vec![(true,)], "one lock holder, terminated");
    let ended = trainer.wait_for_run(id).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .unwrap()
            .contains("lost the training lock"),
        "{ended}"
    );
    assert_eq!(ended["model_version"], Value::Null);
    // The lock is free: the other process may train.
    let (status, body) = replica
        .call("POST", "/admin/retrain", Some(crate::fast_training()), true)
        .await;
    assert_eq!(status, 202, "{body}");
    replica.wait_for_run(body["run_id"].as_i64().unwrap()).await;
}

/// A run left `running` by a process that crashed (written here straight into the table) is
/// ended by a cancel from any process, instead of staying running forever behind a 409.
async fn an_orphaned_run_can_be_cancelled(app: TestApp) {
    let store = rbm_recommender::store::Store::connect(&app.database_url, 1)
        .await
        .unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO training_runs (status, created_at, started_at, params, progress) \
         VALUES ('running', 1, 2, '{}', '{}') RETURNING id",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    let cancel = format!("/admin/training-runs/{id}/cancel");
    let (status, body) = app.call("POST", &cancel, None, true).await;
    assert_eq!(status, 202, "{body}");
    let ended = run(&app, id).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert!(
        ended["finished_at"].as_i64() >= ended["started_at"].as_i64(),
        "{ended}"
    );
    // Once ended it stays ended.
    assert_eq!(app.call("POST", &cancel, None, true).await.0, 409);
}
on_both_backends!(an_orphaned_run_can_be_cancelled);

/// A run's RMSE curves as an SVG chart: a point per epoch of each RBM, for the admin only.
async fn a_run_draws_its_curves(app: TestApp) {
    seed(&app, 60, 12).await;
    let overrides = json!({"epochs": 7, "patience": 0, "hidden": 8, "valid_frac": 0.1});
    let finished = app.retrain(overrides).await;
    assert_eq!(finished["status"], "succeeded", "{finished}");
    let path = format!("/admin/training-runs/{}/curves.svg", finished["id"]);
    let response = app
        .client
        .get(app.url(&path))
        .bearer_auth(crate::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    let (status, svg) = app.checked("GET", &path, response).await;
    assert_eq!(status, 200);
    let svg = svg.as_str().unwrap();
    for curve in ["user", "item"] {
        for rmse in ["train", "validation"] {
            let label = format!("{curve} RBM, {rmse} RMSE");
            assert!(crate::svg::has_text(svg, &label), "{label} is missing");
        }
    }
    let points = crate::svg::line_points(svg);
    let curves = points.iter().filter(|&&n| n == 7).count();
    assert_eq!(curves, 4, "a point per epoch on each of the four curves");
    let (status, _) = app.call("GET", &path, None, false).await;
    assert_eq!(status, 401);
    let (status, _) = app
        .call("GET", "/admin/training-runs/999999/curves.svg", None, true)
        .await;
    assert_eq!(status, 404);
}
on_both_backends!(a_run_draws_its_curves);

/// SIGTERM to `serve` in the middle of a run: the run is recorded as cancelled and the process
/// exits within the grace period, rather than living on until the run's epoch ends.
async fn sigterm_cancels_the_run_and_exits(backend: Backend) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let (url, _database) = crate::fresh_database(backend).await;
    let data = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_rbm-recommender"))
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("DATA_DIR", data.path())
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("ADMIN_TOKEN", crate::ADMIN_TOKEN)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A failed assertion must not leave the server running (and holding the test's output open).
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut log = BufReader::new(server.stderr.take().unwrap());
    let mut server = KillOnDrop(server);
    let address = loop {
        let mut line = String::new();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "serve exited before listening"
        );
        if let Ok(entry) = serde_json::from_str::<Value>(&line)
            && entry["fields"]["message"] == "listening"
        {
            break entry["fields"]["address"].as_str().unwrap().to_string();
        }
    };
    // Keep reading the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in log.lines() {});
    let app = TestApp::at(format!("http://{address}"), url.clone());
    seed(&app, 90, 18).await;
    let slow = json!({"epochs": 1000, "hidden": 2000, "cd_steps": 1000, "patience": 0, "valid_frac": 0.0, "model": "user"});
    let (status, body) = app.call("POST", "/admin/retrain", Some(slow), true).await;
    assert_eq!(status, 202, "{body}");
    let id = body["run_id"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let signalled = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = loop {
        if let Some(exit) = server.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "serve still running 15 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = signalled.elapsed();
    assert!(exit.success(), "{exit}");
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM"
    );

    let store = rbm_recommender::store::Store::connect(&url, 1)
        .await
        .unwrap();
    let recorded = store.run(id).await.unwrap().unwrap();
    assert_eq!(
        recorded.status,
        rbm_recommender::store::RunStatus::Cancelled,
        "{recorded:?}"
    );
}
on_both_backends!(backend sigterm_cancels_the_run_and_exits);
