//! Every error status from real bad requests, in the one JSON error shape; admin auth.

use serde_json::{Value, json};

use crate::{ADMIN_TOKEN, Backend, TestApp, on_both_backends, spawn_app_with};

fn code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

async fn raw(
    app: &TestApp,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &'static str,
) -> (u16, Value) {
    let mut request = app
        .client
        .request(method.parse().unwrap(), app.url(path))
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    app.checked(method, path, request.send().await.unwrap())
        .await
}

async fn malformed_requests_get_4xx_json_errors(app: TestApp) {
    let (status, body) = raw(
        &app,
        "POST",
        "/ratings",
        Some("application/json"),
        "{\"user_id\": ",
    )
    .await;
    assert_eq!((status, code(&body)), (400, "bad_request"));
    let (status, body) = raw(&app, "POST", "/ratings", Some("text/plain"), "{}").await;
    assert_eq!((status, code(&body)), (415, "unsupported_media_type"));
    let (status, body) = app.call("GET", "/no/such/route", None, false).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, body) = app.call("PATCH", "/ratings", None, false).await;
    assert_eq!((status, code(&body)), (405, "method_not_allowed"));
    let (status, body) = app.call("GET", "/items/missing", None, false).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    // Path parameters that do not parse: the same JSON shape as every other error.
    let (status, body) = app
        .call("GET", "/admin/training-runs/abc", None, true)
        .await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    let (status, body) = app.call("GET", "/users/%FF/ratings", None, false).await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
}
on_both_backends!(malformed_requests_get_4xx_json_errors);

/// A declared length over the 4 MiB limit is refused at once, in the API's error shape, before the
/// body is read: here the body never comes, and waiting for it would end in the timeout's 408.
async fn an_oversized_content_length_is_refused_before_the_body(app: TestApp) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.base.trim_start_matches("http://").to_string();
    for (path, auth) in [
        ("/ratings", String::new()),
        ("/items/x", String::new()),
        (
            "/admin/retrain",
            format!("Authorization: Bearer {ADMIN_TOKEN}\r\n"),
        ),
    ] {
        let method = if path == "/items/x" { "PUT" } else { "POST" };
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 5242880\r\n\r\n{{\"ratings\": ["
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        // Read until the JSON body has arrived (the server closes the connection after it).
        while !String::from_utf8_lossy(&answer).contains("}}") {
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(3), stream.read(&mut buffer))
                    .await
                    .unwrap_or_else(|_| panic!("{path}: no answer within 3 s"))
                    .unwrap();
            if read == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..read]);
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(
            answer.contains("application/json") && answer.contains("payload_too_large"),
            "{path}: {answer}"
        );
    }
}
on_both_backends!(an_oversized_content_length_is_refused_before_the_body);

async fn invalid_values_are_named_and_nothing_is_written(app: TestApp) {
    let long = "x".repeat(129);
    let cases = [
        (
            json!({"user_id": "a", "item_id": "b", "rating": 7}),
            "body.rating: 7",
        ),
        (
            json!({"user_id": "a", "item_id": "b", "rating": 3.25}),
            "3.25 is not on the scale",
        ),
        (
            json!({"user_id": "", "item_id": "b", "rating": 3}),
            "body.user_id",
        ),
        (
            json!({"user_id": long, "item_id": "b", "rating": 3}),
            "got 129",
        ),
        (
            json!({"user_id": "a\u{7}", "item_id": "b", "rating": 3}),
            "control character",
        ),
        (
            json!({"user_id": "a", "item_id": "b", "rating": "five"}),
            "expected a number",
        ),
        (json!({"user_id": "a", "item_id": "b"}), "rating: missing"),
        (
            json!({"user_id": "a", "item_id": "b", "rating": 3, "extra": 1}),
            "extra: unknown field",
        ),
        (json!({"ratings": []}), "1 to 10000"),
        (
            json!({"ratings": [{"user_id": "ok", "item_id": "b", "rating": 3}, {"user_id": "a", "item_id": "b", "rating": 9}]}),
            "ratings[1].rating: 9",
        ),
    ];
    for (body, message) in cases {
        let (status, error) = app
            .call("POST", "/ratings", Some(body.clone()), false)
            .await;
        assert_eq!((status, code(&error)), (422, "invalid"), "{body}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains(message),
            "{body}: {error}"
        );
    }
    // The batch with one bad rating wrote nothing.
    let (_, ratings) = app.call("GET", "/users/ok/ratings", None, false).await;
    assert_eq!(ratings["ratings"], json!([]));
    let too_many: Vec<Value> = (0..10_001)
        .map(|n| json!({"user_id": "u", "item_id": format!("i{n}"), "rating": 3}))
        .collect();
    let (status, _) = app
        .call(
            "POST",
            "/ratings",
            Some(json!({"ratings": too_many})),
            false,
        )
        .await;
    assert_eq!(status, 422);
    for query in [
        "?limit=0",
        "?limit=5000",
        "?limit=abc",
        "?offset=-1",
        "?bogus=1",
        "?explain=yes",
        "?explain=true&limit=51",
    ] {
        let (status, body) = app
            .call(
                "GET",
                &format!("/users/u/recommendations{query}"),
                None,
                false,
            )
            .await;
        assert_eq!((status, code(&body)), (422, "invalid"), "{query}: {body}");
    }
    let (status, body) = app
        .call("PUT", "/items/x", Some(json!({"title": 5})), false)
        .await;
    assert_eq!((status, code(&body)), (422, "invalid"));
    let (status, body) = app
        .call(
            "POST",
            "/admin/retrain",
            Some(json!({"learning_rate": -1})),
            true,
        )
        .await;
    assert_eq!((status, code(&body)), (422, "invalid"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("learning_rate"),
        "{body}"
    );
    let (status, body) = app
        .call("POST", "/admin/retrain", Some(json!({"epochz": 3})), true)
        .await;
    assert_eq!((status, code(&body)), (422, "invalid"), "{body}");
    // Only an object is a request; a null field means "the default", as if it were absent.
    for not_an_object in [json!([]), json!([null, null]), json!(3), json!("x")] {
        let (status, body) = app
            .call("POST", "/admin/retrain", Some(not_an_object.clone()), true)
            .await;
        assert_eq!(
            (status, code(&body)),
            (422, "invalid"),
            "{not_an_object}: {body}"
        );
    }
    let (status, body) = app
        .call(
            "POST",
            "/admin/retrain",
            Some(json!({"model": null, "epochs": 0})),
            true,
        )
        .await;
    assert_eq!((status, code(&body)), (422, "invalid"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("epochs"),
        "{body}"
    );
    let (status, body) = app
        .call("POST", "/admin/models/999/activate", None, true)
        .await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, _) = app
        .call("GET", "/admin/training-runs/999", None, true)
        .await;
    assert_eq!(status, 404);
}
on_both_backends!(invalid_values_are_named_and_nothing_is_written);

/// Text PostgreSQL cannot store is refused on both stores alike, naming the field; a rating a hair
/// off its step is stored as the step.
async fn text_and_values_are_stored_as_both_stores_can_hold_them(app: TestApp) {
    let (status, body) = app
        .call("PUT", "/items/x", Some(json!({"title": "a\u{0}b"})), false)
        .await;
    assert_eq!((status, code(&body)), (422, "invalid"), "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("title"),
        "{body}"
    );
    let (status, _) = app.call("GET", "/items/x", None, false).await;
    assert_eq!(status, 404, "nothing was written");
    let (status, body) = app
        .call(
            "PUT",
            "/items/y",
            Some(json!({"title": "y", "metadata": {"k": "a\u{0}b"}})),
            false,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, item) = app.call("GET", "/items/y", None, false).await;
    assert_eq!(
        item["metadata"]["k"], "a\u{0}b",
        "JSON escapes NUL in the stored text"
    );

    let rating = json!({"user_id": "u", "item_id": "i", "rating": 4.5004});
    let (status, body) = app.call("POST", "/ratings", Some(rating), false).await;
    assert_eq!(status, 200, "{body}");
    let (_, ratings) = app.call("GET", "/users/u/ratings", None, false).await;
    assert_eq!(ratings["ratings"][0]["rating"], json!(4.5), "{ratings}");
}
on_both_backends!(text_and_values_are_stored_as_both_stores_can_hold_them);

async fn admin_routes_need_the_token(app: TestApp) {
    let (status, body) = app.call("GET", "/admin/models", None, false).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));
    let response = app
        .client
        .get(app.url("/admin/models"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(app.checked("GET", "/admin/models", response).await.0, 401);
    assert_eq!(app.call("GET", "/admin/models", None, true).await.0, 200);
    // The scheme is case-insensitive; the token is not, and nothing but the scheme may precede it.
    for (header, status) in [
        (format!("bearer {ADMIN_TOKEN}"), 200),
        (format!("BEARER {ADMIN_TOKEN}"), 200),
        (format!("Bearer {}", ADMIN_TOKEN.to_uppercase()), 401),
        (format!("Basic {ADMIN_TOKEN}"), 401),
        (format!("Bearer{ADMIN_TOKEN}"), 401),
        (ADMIN_TOKEN.to_string(), 401),
    ] {
        let response = app
            .client
            .get(app.url("/admin/models"))
            .header("authorization", &header)
            .send()
            .await
            .unwrap();
        let (got, _) = app.checked("GET", "/admin/models", response).await;
        assert_eq!(got, status, "{header}");
    }
}
on_both_backends!(admin_routes_need_the_token);

#[tokio::test]
async fn admin_routes_are_forbidden_without_a_configured_token() {
    let app = spawn_app_with(Backend::Sqlite, None).await;
    let (status, body) = app.call("POST", "/admin/retrain", None, true).await;
    assert_eq!((status, code(&body)), (403, "admin_disabled"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ADMIN_TOKEN")
    );
}

async fn health_and_metrics_answer(app: TestApp) {
    assert_eq!(
        app.call("GET", "/healthz", None, false).await,
        (200, json!({"status": "ok"}))
    );
    let (status, ready) = app.call("GET", "/readyz", None, false).await;
    assert_eq!((status, &ready["model_loaded"]), (200, &json!(false)));
    app.post_ratings(&[("a", "b", 3.0)]).await;
    let text = app.metrics().await;
    assert!(
        text.contains(
            "http_request_duration_seconds_count{method=\"POST\",route=\"/ratings\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("ratings_written_total 1"), "{text}");

    // What an operator watches: training, the model's size, the ranking cache, coalesced reads.
    crate::seed(&app, 30, 9).await;
    app.retrain(crate::fast_training()).await;
    app.recommendations("u1", "").await;
    app.recommendations("u1", "").await;
    let text = app.metrics().await;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert_eq!(value("ranking_cache_hits_total"), 1.0);
    assert_eq!(value("ranking_cache_misses_total"), 1.0);
    assert!(value("ranking_cache_bytes") > 0.0);
    assert_eq!(value("revision_batch_users_count"), 2.0);
    assert_eq!(
        value("ratings_batch_users_count"),
        1.0,
        "the miss read the ratings"
    );
    assert!(value("model_bytes") > 1000.0);
    assert!(value("training_train_rmse{rbm=\"user\"}") > 0.0);
    assert_eq!(value("training_epoch"), 0.0, "no run is going");
}
on_both_backends!(health_and_metrics_answer);

/// A request past the configured timeout is answered 408 with the API's error body. Writing
/// 10,000 ratings takes far longer than the timeout's millisecond (tokio's timer resolution).
async fn a_request_past_the_timeout_gets_a_json_408(backend: crate::Backend) {
    let timeout = std::time::Duration::from_millis(1);
    let app = crate::spawn_app_tuned(backend, |s| s.request_timeout = timeout).await;
    let ratings: Vec<Value> = (0..10_000)
        .map(|n| json!({"user_id": format!("u{}", n % 100), "item_id": format!("i{n}"), "rating": 3}))
        .collect();
    let (status, body) = app
        .call("POST", "/ratings", Some(json!({"ratings": ratings})), false)
        .await;
    assert_eq!((status, code(&body)), (408, "timeout"), "{body}");
    assert_eq!(body["error"]["message"], "the request took longer than 1ms");
}
on_both_backends!(backend a_request_past_the_timeout_gets_a_json_408);

/// Every response carries a request id, the client's own when it sent one, so that the log lines
/// of a request can be found from what the client got.
async fn responses_carry_the_request_id(app: TestApp) {
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    let fresh = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(fresh.len(), 36, "a UUID: {fresh}");
    let response = app
        .client
        .get(app.url("/users/u/recommendations"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
}
on_both_backends!(responses_carry_the_request_id);

/// Slowloris (headers a byte at a time), idle connections and a connection flood: each slow or
/// silent connection is closed after its timeout, and a client past the cap waits for a free slot
/// instead of finding every slot taken for good.
async fn slow_and_idle_clients_are_cut_off_and_connections_are_capped(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let app = crate::spawn_app_tuned(backend, |s| {
        s.header_read_timeout = std::time::Duration::from_millis(800);
        s.idle_timeout = std::time::Duration::from_millis(1500);
        s.http_max_connections = 3;
    })
    .await;
    let address = app.base.trim_start_matches("http://").to_string();
    let closed_within = |mut stream: TcpStream, limit: std::time::Duration| async move {
        let started = std::time::Instant::now();
        let mut buffer = [0u8; 1024];
        loop {
            match tokio::time::timeout(limit, stream.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                Ok(Ok(_)) => continue,
                Err(_) => panic!("still open after {limit:?}"),
            }
        }
    };

    // Headers dribbled a byte every 100 ms never finish: closed at the header deadline.
    let mut slow = TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let dribble = tokio::spawn(async move {
        for _ in 0..50 {
            if slow.write_all(b"X").await.is_err() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    });
    assert!(
        dribble.await.unwrap(),
        "a slowloris client was still being read after 5 s"
    );

    // Three silent connections fill every slot; a fourth client is answered once they are cut off.
    let idle: Vec<TcpStream> = open_connections(&address, 3).await;
    let started = std::time::Instant::now();
    let (status, _) = app.call("GET", "/healthz", None, false).await;
    assert_eq!(status, 200);
    let waited = started.elapsed();
    // A silent new connection is dropped at the header deadline (0.8 s, less the 0.1 s spent
    // opening them): only then is there a slot.
    assert!(
        waited >= std::time::Duration::from_millis(500),
        "answered after {waited:?}, while three connections held every slot"
    );
    for stream in idle {
        let took = closed_within(stream, std::time::Duration::from_secs(5)).await;
        assert!(
            took <= std::time::Duration::from_secs(3),
            "idle connection lived {took:?}"
        );
    }
    // A kept-alive connection that goes silent after a request is closed too.
    let mut kept = TcpStream::connect(&address).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 1024];
    let read = kept.read(&mut answer).await.unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
    let took = closed_within(kept, std::time::Duration::from_secs(5)).await;
    assert!(
        took <= std::time::Duration::from_secs(3),
        "kept-alive connection lived {took:?}"
    );
}
on_both_backends!(backend slow_and_idle_clients_are_cut_off_and_connections_are_capped);

async fn open_connections(address: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut streams = Vec::new();
    for _ in 0..n {
        streams.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    // Give the server the moment it takes to accept them.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    streams
}
