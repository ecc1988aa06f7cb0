//! The product's flows: ratings in, retraining, live recommendations, paging, concurrency.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::{TestApp, fast_training, on_both_backends, seed, start_endless_run};

fn item_ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item_id"].as_str().unwrap().to_string())
        .collect()
}

async fn ratings_are_upserted_and_counted(app: TestApp) {
    let (status, body) = app
        .post_ratings(&[("alice", "a", 4.0), ("alice", "b", 2.5)])
        .await;
    assert_eq!((status, body), (200, json!({"inserted": 2, "updated": 0})));
    let (status, body) = app
        .call(
            "POST",
            "/ratings",
            Some(json!({"user_id": "alice", "item_id": "a", "rating": 1.5})),
            false,
        )
        .await;
    assert_eq!((status, body), (200, json!({"inserted": 0, "updated": 1})));
    let (status, stats) = app.call("GET", "/stats", None, false).await;
    assert_eq!(
        (status, stats),
        (200, json!({"users": 1, "items": 2, "ratings": 2}))
    );
    let (_, body) = app.call("GET", "/users/alice/ratings", None, false).await;
    assert_eq!(
        body["ratings"],
        json!([{"item_id": "a", "rating": 1.5}, {"item_id": "b", "rating": 2.5}])
    );
    // Unknown items were created.
    let (status, item) = app.call("GET", "/items/b", None, false).await;
    assert_eq!((status, item["item_id"].as_str()), (200, Some("b")));
    let (status, _) = app
        .call("DELETE", "/users/alice/ratings/a", None, false)
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .call("DELETE", "/users/alice/ratings/a", None, false)
        .await;
    assert_eq!(status, 404);
}
on_both_backends!(ratings_are_upserted_and_counted);

async fn items_have_titles_and_metadata(app: TestApp) {
    let body = json!({"title": "Alien (1979)", "metadata": {"genres": ["Horror", "Sci-Fi"]}});
    let (status, created) = app
        .call("PUT", "/items/alien", Some(body.clone()), false)
        .await;
    assert_eq!((status, &created["title"]), (201, &json!("Alien (1979)")));
    let (status, _) = app
        .call(
            "PUT",
            "/items/alien",
            Some(json!({"title": "Alien"})),
            false,
        )
        .await;
    assert_eq!(status, 200);
    let (_, item) = app.call("GET", "/items/alien", None, false).await;
    assert_eq!(
        item,
        json!({"item_id": "alien", "title": "Alien", "metadata": null})
    );
}
on_both_backends!(items_have_titles_and_metadata);

async fn without_a_model_users_get_popular_items(app: TestApp) {
    app.post_ratings(&[
        ("a", "x", 5.0),
        ("b", "x", 4.0),
        ("b", "y", 3.0),
        ("c", "z", 1.0),
        ("c", "x", 2.0),
    ])
    .await;
    let page = app.recommendations("newcomer", "").await;
    assert_eq!(page["source"], "popular");
    assert_eq!(page["model_version"], Value::Null);
    assert_eq!(item_ids(&page), ["x", "y", "z"]);
    // Popular recommendations leave out what the user rated.
    assert_eq!(item_ids(&app.recommendations("b", "").await), ["z"]);
    // The list is kept between requests, and a write makes the next one count again.
    app.post_ratings(&[("d", "z", 4.0), ("e", "z", 4.0), ("f", "z", 5.0)])
        .await;
    assert_eq!(
        item_ids(&app.recommendations("newcomer", "").await),
        ["z", "x", "y"]
    );
    let (status, _) = app.call("DELETE", "/users/f/ratings/z", None, false).await;
    assert_eq!(status, 204);
    assert_eq!(
        item_ids(&app.recommendations("newcomer", "").await),
        ["x", "z", "y"]
    );
}
on_both_backends!(without_a_model_users_get_popular_items);

async fn retraining_serves_a_new_model_version(app: TestApp) {
    seed(&app, 90, 18).await;
    let run = app.retrain(fast_training()).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let version = run["model_version"].as_i64().unwrap();
    assert_eq!(run["progress"]["user"].as_array().unwrap().len(), 60);
    let page = app.recommendations("u0", "?limit=5").await;
    assert_eq!(page["source"], "model");
    assert_eq!(page["model_version"], version);
    // u0 is in taste group 0 and rated all its items but one (i03), which comes first.
    for id in item_ids(&page).iter().take(1) {
        let n: usize = id[1..].parse().unwrap();
        assert_eq!(n % 3, 0, "recommended {id} to u0: {page}");
    }
    let second = app.retrain(fast_training()).await;
    assert_eq!(
        app.recommendations("u0", "").await["model_version"],
        second["model_version"]
    );
    let (_, models) = app.call("GET", "/admin/models", None, true).await;
    let active: Vec<i64> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["active"] == true)
        .map(|m| m["version"].as_i64().unwrap())
        .collect();
    assert_eq!(active, [second["model_version"].as_i64().unwrap()]);
    // Roll back.
    let (status, _) = app
        .call(
            "POST",
            &format!("/admin/models/{version}/activate"),
            None,
            true,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.recommendations("u0", "").await["model_version"],
        version
    );
}
on_both_backends!(retraining_serves_a_new_model_version);

async fn new_ratings_change_recommendations_without_retraining(app: TestApp) {
    seed(&app, 90, 18).await;
    app.retrain(fast_training()).await;
    for query in ["?limit=3", "?limit=3&order=expected_rating"] {
        folds_in_new_ratings(&app, &format!("newbie{}", query.len()), query).await;
    }
}
on_both_backends!(new_ratings_change_recommendations_without_retraining);

/// A user the model never saw rates three group-1 items and gets group 1; then re-rates them low
/// and rates three group-2 items high, and gets group 2.
async fn folds_in_new_ratings(app: &TestApp, user: &str, query: &str) {
    app.post_ratings(&[(user, "i01", 5.0), (user, "i04", 5.0), (user, "i07", 5.0)])
        .await;
    let first = app.recommendations(user, query).await;
    assert_eq!(first["source"], "model");
    assert!(
        item_ids(&first)
            .iter()
            .all(|id| id[1..].parse::<usize>().unwrap() % 3 == 1),
        "{first}"
    );
    app.post_ratings(&[
        (user, "i01", 0.5),
        (user, "i04", 0.5),
        (user, "i07", 0.5),
        (user, "i02", 5.0),
        (user, "i05", 5.0),
        (user, "i08", 5.0),
    ])
    .await;
    let second = app.recommendations(user, query).await;
    assert!(
        item_ids(&second)
            .iter()
            .all(|id| id[1..].parse::<usize>().unwrap() % 3 == 2),
        "{second}"
    );
}

async fn recommendations_explain_themselves_from_the_users_own_ratings(app: TestApp) {
    seed(&app, 90, 18).await;
    app.retrain(fast_training()).await;
    // Items of group 1 are Sci-Fi, of group 2 Horror; the users love three of each.
    let (sci_fi, horror) = (["i01", "i04", "i07"], ["i02", "i05", "i08"]);
    let genre = |id: &str| match id[1..].parse::<usize>().unwrap() % 3 {
        1 => "Sci-Fi",
        2 => "Horror",
        _ => "Drama",
    };
    for item in sci_fi.iter().chain(&horror) {
        let title = json!({"title": format!("{} {item}", genre(item))});
        let (status, _) = app
            .call("PUT", &format!("/items/{item}"), Some(title), false)
            .await;
        assert_eq!(status, 200, "the ratings created the item");
    }
    for (user, order) in [("fan", ""), ("rater", "&order=expected_rating")] {
        let ratings: Vec<(&str, &str, f64)> = sci_fi
            .iter()
            .chain(&horror)
            .map(|&i| (user, i, 5.0))
            .collect();
        app.post_ratings(&ratings).await;
        let plain = app.recommendations(user, &format!("?limit=4{order}")).await;
        assert!(
            plain["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i.get("because").is_none())
        );
        let page = app
            .recommendations(user, &format!("?limit=4&explain=true{order}"))
            .await;
        assert_eq!(item_ids(&page), item_ids(&plain));
        let mut genres = HashSet::new();
        for item in page["items"].as_array().unwrap() {
            let recommended = genre(item["item_id"].as_str().unwrap());
            genres.insert(recommended);
            let because = item["because"].as_array().unwrap();
            assert!(!because.is_empty() && because.len() <= 3, "{item}");
            for reason in because {
                let id = reason["item_id"].as_str().unwrap();
                // A Sci-Fi item is explained by the Sci-Fi ratings, a Horror one by the Horror.
                assert_eq!(genre(id), recommended, "{item}");
                assert_eq!(reason["title"], format!("{recommended} {id}"));
                assert_eq!(reason["rating"], 5.0);
                assert!(reason["contribution"].as_f64().unwrap() > 0.0);
            }
            let contributions: Vec<f64> = because
                .iter()
                .map(|r| r["contribution"].as_f64().unwrap())
                .collect();
            assert!(contributions.windows(2).all(|w| w[0] >= w[1]), "{item}");
        }
        assert_eq!(genres, HashSet::from(["Sci-Fi", "Horror"]), "{page}");
        // Deleting the rating that explains the top item most lowers its score by exactly the
        // contribution, and the rating is named no more.
        let top = &page["items"][0];
        let reason = top["because"][0]["item_id"].as_str().unwrap();
        let (status, _) = app
            .call(
                "DELETE",
                &format!("/users/{user}/ratings/{reason}"),
                None,
                false,
            )
            .await;
        assert_eq!(status, 204);
        let after = app
            .recommendations(user, &format!("?limit=50&explain=true{order}"))
            .await;
        let items = after["items"].as_array().unwrap();
        let moved = items
            .iter()
            .find(|i| i["item_id"] == top["item_id"])
            .unwrap();
        let score = |item: &Value| item["score"].as_f64().unwrap();
        let contribution = top["because"][0]["contribution"].as_f64().unwrap();
        assert!(
            (score(top) - contribution - score(moved)).abs() < 1e-4,
            "{top} then {moved}"
        );
        for item in items {
            let named = item["because"].as_array().unwrap();
            assert!(named.iter().all(|r| r["item_id"] != reason), "{item}");
        }
    }
}
on_both_backends!(recommendations_explain_themselves_from_the_users_own_ratings);

async fn rated_and_excluded_items_are_never_recommended(app: TestApp) {
    seed(&app, 90, 18).await;
    app.retrain(fast_training()).await;
    let (_, rated) = app.call("GET", "/users/u4/ratings", None, false).await;
    let rated: HashSet<String> = rated["ratings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["item_id"].as_str().unwrap().to_string())
        .collect();
    let page = app
        .recommendations("u4", "?limit=100&exclude=i03,i06")
        .await;
    let ids = item_ids(&page);
    assert!(!ids.is_empty());
    for id in &ids {
        assert!(
            !rated.contains(id) && id != "i03" && id != "i06",
            "{id} in {page}"
        );
    }
    assert_eq!(
        ids.len(),
        18 - rated.len() - 2
            + usize::from(rated.contains("i03"))
            + usize::from(rated.contains("i06"))
    );
}
on_both_backends!(rated_and_excluded_items_are_never_recommended);

fn field(page: &Value, name: &str) -> Vec<f64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[name].as_f64().unwrap())
        .collect()
}

/// Paging from the first page down, as a client does, runs past the depth the first miss scored
/// (RANKING_DEPTH) into rankings scored deeper; the pages join into the whole list, which an
/// uncached replica scores in one piece.
async fn pages_never_repeat_or_skip(backend: crate::Backend) {
    let app = crate::spawn_app(backend).await;
    seed(&app, 90, 100).await;
    app.retrain(fast_training()).await;
    let uncached = crate::spawn_replica_tuned(&app, |s| s.ranking_cache_mb = 0).await;
    for (order, query) in [("score", ""), ("expected_rating", "&order=expected_rating")] {
        let whole = uncached
            .recommendations("u2", &format!("?limit=100{query}"))
            .await;
        assert_eq!(whole["order"], order, "{whole}");
        let all = item_ids(&whole);
        let depth = rbm_recommender::app::RANKING_DEPTH;
        assert!(all.len() > 2 * depth, "{} items to page through", all.len());
        let mut paged = Vec::new();
        for offset in (0..all.len()).step_by(4) {
            paged.extend(item_ids(
                &app.recommendations("u2", &format!("?limit=4&offset={offset}{query}"))
                    .await,
            ));
        }
        assert_eq!(paged, all, "order {order}");
        let scores = field(&whole, "score");
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "not ordered by {order}: {scores:?}"
        );
        if order == "expected_rating" {
            assert_eq!(scores, field(&whole, "expected_rating"));
        }
    }
}
on_both_backends!(backend pages_never_repeat_or_skip);

/// Without the ranking cache a list is scored only as deep as its page and the items it
/// excludes: every page, in both orders, is still the slice of the whole ranking.
async fn without_the_cache_every_page_is_a_slice_of_the_whole_ranking(backend: crate::Backend) {
    let app = crate::spawn_app(backend).await;
    seed(&app, 90, 18).await;
    app.retrain(fast_training()).await;
    let uncached = crate::spawn_replica_tuned(&app, |s| s.ranking_cache_mb = 0).await;
    for query in ["", "&order=expected_rating"] {
        let whole = item_ids(
            &app.recommendations("u2", &format!("?limit=100{query}"))
                .await,
        );
        let excluded = whole[1].clone();
        let rest: Vec<String> = whole.into_iter().filter(|id| *id != excluded).collect();
        for offset in 0..rest.len() {
            let page = uncached
                .recommendations(
                    "u2",
                    &format!("?limit=3&offset={offset}&exclude={excluded}{query}"),
                )
                .await;
            let end = (offset + 3).min(rest.len());
            assert_eq!(item_ids(&page), rest[offset..end], "offset {offset}{query}");
        }
    }
}
on_both_backends!(backend without_the_cache_every_page_is_a_slice_of_the_whole_ranking);

async fn the_two_orders_rank_differently_and_bad_orders_are_named(app: TestApp) {
    seed(&app, 90, 18).await;
    app.retrain(fast_training()).await;
    let by_score = app.recommendations("u1", "?limit=100").await;
    let by_rating = app
        .recommendations("u1", "?limit=100&order=expected_rating")
        .await;
    // The same items, each with the same expected rating, in two orders.
    let mut a: Vec<(String, f64)> = item_ids(&by_score)
        .into_iter()
        .zip(field(&by_score, "expected_rating"))
        .collect();
    let mut b: Vec<(String, f64)> = item_ids(&by_rating)
        .into_iter()
        .zip(field(&by_rating, "expected_rating"))
        .collect();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(a, b);
    assert_ne!(
        field(&by_score, "score"),
        field(&by_score, "expected_rating")
    );
    let (status, body) = app
        .call("GET", "/users/u1/recommendations?order=best", None, false)
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("order"),
        "{body}"
    );
    let popular = app.recommendations("nobody", "").await;
    assert_eq!(
        (&popular["source"], &popular["order"]),
        (&json!("popular"), &json!("popularity"))
    );
}
on_both_backends!(the_two_orders_rank_differently_and_bad_orders_are_named);

async fn similar_items_share_taste_groups(app: TestApp) {
    seed(&app, 90, 18).await;
    app.retrain(fast_training()).await;
    let (status, body) = app
        .call("GET", "/items/i00/similar?limit=3", None, false)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"].as_array().unwrap().len(), 3);
    let (status, _) = app.call("GET", "/items/nothing/similar", None, false).await;
    assert_eq!(status, 404);
}
on_both_backends!(similar_items_share_taste_groups);

async fn concurrent_posts_lose_nothing(app: TestApp) {
    let mut tasks = Vec::new();
    for writer in 0..16 {
        let (client, url) = (app.client.clone(), app.url("/ratings"));
        tasks.push(tokio::spawn(async move {
            let ratings: Vec<Value> =
                (0..25).map(|n| json!({"user_id": format!("w{writer}"), "item_id": format!("item{n}"), "rating": 3.0})).collect();
            client.post(url).json(&json!({"ratings": ratings})).send().await.unwrap().status().as_u16()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    for writer in 0..16 {
        let (_, body) = app
            .call("GET", &format!("/users/w{writer}/ratings"), None, false)
            .await;
        assert_eq!(body["ratings"].as_array().unwrap().len(), 25);
    }
}
on_both_backends!(concurrent_posts_lose_nothing);

/// Writers that read before they write (`PUT /items` looks the item up) beside batches of ratings:
/// on SQLite a deferred transaction could not take the write lock another writer held, and failed
/// with "database is locked" instead of waiting. Of the clients creating one new item, exactly one
/// is told it created it.
async fn concurrent_writers_queue_instead_of_failing(app: TestApp) {
    let mut tasks = Vec::new();
    for round in 0..6 {
        for writer in 0..8 {
            let (client, url) = (app.client.clone(), app.url(&format!("/items/new{round}")));
            tasks.push(tokio::spawn(async move {
                let body = json!({"title": format!("by writer {writer}")});
                let response = client.put(url).json(&body).send().await.unwrap();
                ("put", round, response.status().as_u16())
            }));
        }
        for writer in 0..4 {
            let (client, url) = (app.client.clone(), app.url("/ratings"));
            tasks.push(tokio::spawn(async move {
                let ratings: Vec<Value> = (0..500)
                    .map(|n| json!({"user_id": format!("r{round}w{writer}"), "item_id": format!("item{n}"), "rating": 4.0}))
                    .collect();
                let response = client.post(url).json(&json!({"ratings": ratings})).send().await.unwrap();
                ("post", round, response.status().as_u16())
            }));
        }
    }
    let mut created = [0; 6];
    for task in tasks {
        let (kind, round, status) = task.await.unwrap();
        match (kind, status) {
            ("put", 201) => created[round] += 1,
            ("put", 200) | ("post", 200) => {}
            _ => panic!("{kind} in round {round} answered {status}"),
        }
    }
    assert_eq!(created, [1; 6], "one creator per new item");
}
on_both_backends!(concurrent_writers_queue_instead_of_failing);

async fn no_request_fails_while_models_are_swapped(app: TestApp) {
    seed(&app, 90, 18).await;
    let first = app.retrain(fast_training()).await["model_version"]
        .as_i64()
        .unwrap();
    let second = app.retrain(fast_training()).await["model_version"]
        .as_i64()
        .unwrap();
    let readers: Vec<_> = (0..4)
        .map(|reader| {
            let (client, url) = (
                app.client.clone(),
                app.url(&format!("/users/u{reader}/recommendations")),
            );
            tokio::spawn(async move {
                let mut failures = 0;
                for _ in 0..60 {
                    if client
                        .get(&url)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                        != 200
                    {
                        failures += 1;
                    }
                }
                failures
            })
        })
        .collect();
    for n in 0..10 {
        let version = if n % 2 == 0 { first } else { second };
        let (status, _) = app
            .call(
                "POST",
                &format!("/admin/models/{version}/activate"),
                None,
                true,
            )
            .await;
        assert_eq!(status, 200);
    }
    let retrain = app.retrain(fast_training()).await;
    assert_eq!(retrain["status"], "succeeded");
    for reader in readers {
        assert_eq!(
            reader.await.unwrap(),
            0,
            "requests failed during model swaps"
        );
    }
}
on_both_backends!(no_request_fails_while_models_are_swapped);

async fn training_runs_can_be_cancelled(app: TestApp) {
    seed(&app, 90, 18).await;
    let id = start_endless_run(&app).await;
    let (status, conflict) = app.call("POST", "/admin/retrain", None, true).await;
    assert_eq!(status, 409, "{conflict}");
    let (status, _) = app
        .call(
            "POST",
            &format!("/admin/training-runs/{id}/cancel"),
            None,
            true,
        )
        .await;
    assert_eq!(status, 202);
    let run = app.wait_for_run(id).await;
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["model_version"], Value::Null);
    let (status, _) = app
        .call(
            "POST",
            &format!("/admin/training-runs/{id}/cancel"),
            None,
            true,
        )
        .await;
    assert_eq!(status, 409);
    let (_, models) = app.call("GET", "/admin/models", None, true).await;
    assert_eq!(models["models"], json!([]));
}
on_both_backends!(training_runs_can_be_cancelled);

/// A run whose estimated memory is over TRAINING_MEMORY_MB is refused before it starts, naming
/// what makes it big and the setting; one within it starts.
async fn a_retrain_over_the_memory_budget_is_refused(backend: crate::Backend) {
    let app = crate::spawn_app_tuned(backend, |s| s.training_memory_mb = 200).await;
    seed(&app, 90, 18).await;
    let (status, body) = app
        .call(
            "POST",
            "/admin/retrain",
            Some(json!({"hidden": 10000})),
            true,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("hidden: ") && message.contains("TRAINING_MEMORY_MB"),
        "{message}"
    );
    let (_, runs) = app.call("GET", "/admin/training-runs", None, true).await;
    assert_eq!(runs["runs"], json!([]), "nothing started");
    let (status, body) = app
        .call(
            "POST",
            "/admin/retrain",
            Some(json!({"hidden": 8, "epochs": 1})),
            true,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    app.wait_for_run(body["run_id"].as_i64().unwrap()).await;
}
on_both_backends!(backend a_retrain_over_the_memory_budget_is_refused);

/// Cancelling takes effect within a second even when one epoch takes far longer: the model's
/// loops look at the flag between mini-batches and inside the catalogue-wide draws.
async fn a_cancel_stops_a_long_epoch_within_a_second(app: TestApp) {
    seed(&app, 90, 18).await;
    // One mini-batch of a thousand Gibbs steps with thousands of hidden units: tens of seconds
    // before the first epoch ends, on any machine this runs on.
    let slow = json!({"epochs": 1000, "hidden": 2000, "cd_steps": 1000, "batch_size": 100, "patience": 0, "valid_frac": 0.0, "model": "user"});
    let (status, body) = app.call("POST", "/admin/retrain", Some(slow), true).await;
    assert_eq!(status, 202, "{body}");
    let id = body["run_id"].as_i64().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let asked = std::time::Instant::now();
    let path = format!("/admin/training-runs/{id}/cancel");
    assert_eq!(app.call("POST", &path, None, true).await.0, 202);
    let run = app.wait_for_run(id).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    let took = asked.elapsed();
    assert!(
        took < std::time::Duration::from_secs(2),
        "cancelled after {took:?}"
    );
}
on_both_backends!(a_cancel_stops_a_long_epoch_within_a_second);

/// A counter's value in the metrics' text.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap()
        .parse()
        .unwrap()
}

/// Polls the metrics until the counter reaches `value` (within 20 s), then returns the text.
async fn counter_reaches(app: &TestApp, name: &str, value: u64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = app.metrics().await;
        if counter(&text, name) >= value {
            assert_eq!(counter(&text, name), value, "{name} went past {value}");
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stays below {value}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A ranking is reused until the user's ratings change; a change made through the service scores
/// the cached ranking again in the background, from the ratings as they are then, and a request
/// made meanwhile waits for that scoring rather than doing it twice.
async fn repeated_requests_reuse_the_ranking_until_ratings_change(app: TestApp) {
    seed(&app, 90, 18).await;
    app.retrain(fast_training()).await;
    let first = app.recommendations("u5", "?limit=4").await;
    let second = app.recommendations("u5", "?limit=4").await;
    assert_eq!(first, second);
    let text = app.metrics().await;
    assert_eq!(
        (
            counter(&text, "ranking_cache_misses_total"),
            counter(&text, "ranking_cache_hits_total")
        ),
        (1, 1)
    );
    // Users scored, counted by the scorer's batches.
    let scored = |text: &str| -> f64 {
        let sum = text
            .lines()
            .find_map(|l| l.strip_prefix("scoring_batch_users_sum "));
        sum.unwrap().parse().unwrap()
    };
    assert_eq!(scored(&text), 1.0);
    let top = item_ids(&first)[0].clone();
    app.post_ratings(&[("u5", &top, 0.5)]).await;
    let third = app.recommendations("u5", "?limit=4").await;
    assert!(!item_ids(&third).contains(&top), "{third}");
    let text = counter_reaches(&app, "rankings_refreshed_total", 1).await;
    assert_eq!(scored(&text), 2.0, "the rating's ranking was scored once");
    // Taken back, the rating leaves the ratings the first list was scored from: the list
    // refreshed from them is that list, and it is ready before it is asked for.
    let path = format!("/users/u5/ratings/{top}");
    assert_eq!(app.call("DELETE", &path, None, false).await.0, 204);
    let before = counter_reaches(&app, "rankings_refreshed_total", 2).await;
    assert_eq!(app.recommendations("u5", "?limit=4").await, first);
    let after = app.metrics().await;
    let hits = |text: &str| counter(text, "ranking_cache_hits_total");
    assert_eq!(hits(&after), hits(&before) + 1);
    assert_eq!(scored(&after), 3.0);
    // A user with nothing cached is not scored ahead: the next request is a miss.
    app.post_ratings(&[("u6", &top, 0.5)]).await;
    app.recommendations("u6", "?limit=4").await;
    let text = app.metrics().await;
    assert_eq!(counter(&text, "rankings_refreshed_total"), 2);
    assert_eq!(scored(&text), 4.0);
}
on_both_backends!(repeated_requests_reuse_the_ranking_until_ratings_change);

/// A new version is served once the rankings cached under the one before are scored again under
/// it, from the users' ratings as they are then (a rating posted in between counts), each list the
/// one a miss would score; so the first requests after a retrain or a rollback are hits.
async fn a_new_version_serves_the_cached_users_warmed_up(app: TestApp) {
    seed(&app, 90, 18).await;
    let first = app.retrain(fast_training()).await["model_version"].clone();
    let users = ["u1", "u2", "u3", "u4"];
    for user in users {
        app.recommendations(user, "?limit=4").await;
    }
    app.recommendations("u5", "?limit=4&order=expected_rating")
        .await;
    let top = item_ids(&app.recommendations("u3", "?limit=4").await)[0].clone();
    app.post_ratings(&[("u3", &top, 0.5)]).await;
    // u3's ranking is scored again from the new rating, and warmed up from that one.
    counter_reaches(&app, "rankings_refreshed_total", 1).await;

    let second = app.retrain(fast_training()).await["model_version"].clone();
    let before = app.metrics().await;
    assert_eq!(counter(&before, "rankings_warmed_total"), 5);
    let mut warmed = Vec::new();
    for user in users {
        let page = app.recommendations(user, "?limit=4").await;
        assert_eq!(page["model_version"], second);
        warmed.push(page);
    }
    let by_rating = app
        .recommendations("u5", "?limit=4&order=expected_rating")
        .await;
    assert_eq!(by_rating["order"], "expected_rating");
    assert!(!item_ids(&warmed[2]).contains(&top), "{}", warmed[2]);
    let after = app.metrics().await;
    assert_eq!(
        counter(&after, "ranking_cache_hits_total") - counter(&before, "ranking_cache_hits_total"),
        5
    );
    assert_eq!(
        counter(&after, "ranking_cache_misses_total"),
        counter(&before, "ranking_cache_misses_total")
    );
    // Scored afresh (a rating taken back and given again moves the revision, and each change
    // scores the user's ranking again), each list is the one warmed up.
    let planted = crate::planted_ratings(90, 18);
    let mut refreshed = counter(&after, "rankings_refreshed_total");
    for (user, page) in users.iter().zip(&warmed) {
        let (_, item, value) = planted.iter().find(|(u, _, _)| u == user).unwrap();
        let path = format!("/users/{user}/ratings/{item}");
        assert_eq!(app.call("DELETE", &path, None, false).await.0, 204);
        app.post_ratings(&[(user, item, *value)]).await;
        refreshed += 2;
        counter_reaches(&app, "rankings_refreshed_total", refreshed).await;
        assert_eq!(&app.recommendations(user, "?limit=4").await, page);
    }
    let misses = counter(&app.metrics().await, "ranking_cache_misses_total");
    assert_eq!(misses, counter(&after, "ranking_cache_misses_total"));

    // A rollback warms up too.
    let activate = format!("/admin/models/{first}/activate");
    assert_eq!(app.call("POST", &activate, None, true).await.0, 200);
    for user in users {
        assert_eq!(
            app.recommendations(user, "?limit=4").await["model_version"],
            first
        );
    }
    assert_eq!(
        counter(&app.metrics().await, "ranking_cache_misses_total"),
        misses
    );
}
on_both_backends!(a_new_version_serves_the_cached_users_warmed_up);

async fn changes_made_directly_in_the_database_reach_the_next_answer(app: TestApp) {
    seed(&app, 90, 18).await;
    app.retrain(fast_training()).await;
    let first = app.recommendations("u7", "?limit=3").await;
    let top = item_ids(&first)[0].clone();
    // Another writer (a script, another replica) rates the top item, bypassing this service: the
    // cached ranking must not survive it.
    let store = rbm_recommender::store::Store::connect(&app.database_url, 2)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO ratings (user_id, item_id, rating, updated_at) VALUES ('u7', $1, 1.0, 0)",
    )
    .bind(top.clone())
    .execute(store.pool())
    .await
    .unwrap();
    let second = app.recommendations("u7", "?limit=3").await;
    assert!(!item_ids(&second).contains(&top), "{second}");
    // And deleting it directly brings the item back.
    sqlx::query("DELETE FROM ratings WHERE user_id = 'u7' AND item_id = $1")
        .bind(top.clone())
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(app.recommendations("u7", "?limit=3").await, first);
}
on_both_backends!(changes_made_directly_in_the_database_reach_the_next_answer);

/// Lookups made at the same time share statements; each still gets its own user's revision and
/// ratings, exactly as reading that user alone gives them, a user asked for twice in one statement
/// too.
async fn coalesced_reads_answer_each_user(backend: crate::Backend) {
    use rbm_recommender::app::user_reads::UserReads;
    use rbm_recommender::store::{NewRating, Store, UserRatings};

    let (url, _database) = crate::fresh_database(backend).await;
    let store = Store::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    let users: Vec<String> = (0..20).map(|u| format!("user-{u}")).collect();
    // User u is written u + 1 times, so the users' revisions and ratings differ.
    for (u, user) in users.iter().enumerate() {
        for write in 0..=u {
            let rating = NewRating {
                user_id: user.clone(),
                item_id: format!("item-{write}"),
                rating: ((u + write) % 5 + 1) as f64,
            };
            store.upsert_ratings(&[rating]).await.unwrap();
        }
    }
    // A user whose ratings are all gone keeps a revision past 0.
    assert!(store.delete_rating("user-0", "item-0").await.unwrap());
    let mut asked = users.clone();
    asked.push("nobody".to_string());
    let mut expected: Vec<UserRatings> = Vec::new();
    for user in &asked {
        let alone = store.user_ratings(user).await.unwrap();
        let revision = store.user_revisions(&[user]).await.unwrap();
        assert_eq!(alone.0, revision.get(user).copied().unwrap_or(0), "{user}");
        expected.push(alone);
    }
    assert_eq!(expected[20], (0, Vec::new()), "a user without ratings");
    assert!(
        expected[0].0 > 0 && expected[0].1.is_empty(),
        "{:?}",
        expected[0]
    );
    for (u, (_, ratings)) in expected.iter().enumerate().take(20).skip(1) {
        assert_eq!(ratings.len(), u + 1);
        assert!(ratings.iter().all(|(_, r)| (1.0..=5.0).contains(r)));
    }
    let written: Vec<i64> = expected[1..20]
        .iter()
        .map(|(revision, _)| *revision)
        .collect();
    assert!(written.windows(2).all(|w| w[0] != w[1]), "{written:?}");
    let several = store
        .users_ratings(&["user-3", "nobody", "user-3", "user-7"])
        .await
        .unwrap();
    assert_eq!(several.len(), 2);
    assert_eq!(several["user-3"], expected[3]);
    assert_eq!(several["user-7"], expected[7]);

    let read = store.clone();
    let revisions = UserReads::start(
        "revisions",
        2,
        64,
        |_| {},
        move |users: Vec<String>| {
            let store = read.clone();
            async move { store.user_revisions(&users).await }
        },
    );
    let read = store.clone();
    let ratings = UserReads::start(
        "ratings",
        2,
        16,
        |_| {},
        move |users: Vec<String>| {
            let store = read.clone();
            async move { store.users_ratings(&users).await }
        },
    );
    let (revisions, ratings) = (Arc::new(revisions), Arc::new(ratings));
    let lookups: Vec<_> = (0..400)
        .map(|n| {
            let index = n % asked.len();
            let (revisions, ratings) = (revisions.clone(), ratings.clone());
            let user = asked[index].clone();
            tokio::spawn(async move {
                let revision = revisions.get(&user).await.unwrap();
                (index, revision, ratings.get(&user).await.unwrap())
            })
        })
        .collect();
    for lookup in lookups {
        let (index, revision, read) = lookup.await.unwrap();
        assert_eq!(revision, expected[index].0, "{}", asked[index]);
        assert_eq!(read, expected[index], "{}", asked[index]);
    }
}

on_both_backends!(backend coalesced_reads_answer_each_user);

/// Two processes on one PostgreSQL database, as replicas run: one trains at a time, and each
/// serves whatever model version the other activates, retrained or rolled back. (A SQLite file
/// belongs to one process.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_train_one_at_a_time_and_follow_each_others_models() {
    let first = crate::spawn_app(crate::Backend::Postgres).await;
    let second = crate::spawn_replica(&first).await;
    seed(&first, 90, 18).await;

    let slow_run = start_endless_run(&first).await;
    let (status, conflict) = second.call("POST", "/admin/retrain", None, true).await;
    assert_eq!(status, 409, "{conflict}");
    assert!(
        conflict["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another process"),
        "{conflict}"
    );
    let cancel = format!("/admin/training-runs/{slow_run}/cancel");
    assert_eq!(first.call("POST", &cancel, None, true).await.0, 202);
    first.wait_for_run(slow_run).await;

    // The lock is free again: the second trains, and the first follows.
    let trained = retrain_once_free(&second).await;
    assert_eq!(trained["status"], "succeeded", "{trained}");
    let newer = trained["model_version"].clone();
    serves(&first, &newer).await;
    let trained = retrain_once_free(&first).await;
    let newest = trained["model_version"].clone();
    serves(&second, &newest).await;

    // A rollback on one is a rollback on both.
    let activate = format!("/admin/models/{newer}/activate");
    assert_eq!(second.call("POST", &activate, None, true).await.0, 200);
    serves(&first, &newer).await;
    serves(&second, &newer).await;
}

/// Activating a version is not cut off by the request timeout: loading a large one takes
/// seconds (5-11 s for the 430 MB model of 100 M ratings). Here a process whose timeout is 1 ms,
/// less than any activation takes (it reads, decodes and records a model), rolls back, and the
/// rollback answers 200 and is what the store records as active.
async fn activation_outlasts_the_request_timeout(backend: crate::Backend) {
    let app = crate::spawn_app(backend).await;
    seed(&app, 90, 18).await;
    let older = app.retrain(fast_training()).await["model_version"].clone();
    app.retrain(fast_training()).await;
    let hurried = crate::spawn_replica_tuned(&app, |s| {
        s.request_timeout = std::time::Duration::from_millis(1);
    })
    .await;
    let activate = format!("/admin/models/{older}/activate");
    let (status, body) = hurried.call("POST", &activate, None, true).await;
    assert_eq!(status, 200, "{body}");
    let (_, models) = app.call("GET", "/admin/models", None, true).await;
    let active: Vec<&Value> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["active"] == true)
        .map(|m| &m["version"])
        .collect();
    assert_eq!(active, [&older], "{models}");
}
on_both_backends!(backend activation_outlasts_the_request_timeout);

/// Starts a fast retrain on `app` as soon as no process holds the training lock (up to 10 s: a
/// run is recorded as ended a moment before its process lets the lock go), and waits for it.
async fn retrain_once_free(app: &TestApp) -> Value {
    for _ in 0..200 {
        let (status, body) = app
            .call("POST", "/admin/retrain", Some(fast_training()), true)
            .await;
        if status != 409 {
            assert_eq!(status, 202, "{body}");
            return app.wait_for_run(body["run_id"].as_i64().unwrap()).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the training lock was not released within 10 s");
}

/// Waits (up to 10 s) until `app` answers recommendations with model `version`.
async fn serves(app: &TestApp, version: &Value) {
    for _ in 0..200 {
        if &app.recommendations("u0", "").await["model_version"] == version {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{} does not serve model {version}", app.base);
}

/// A retrain's body overrides the server's training flags field by field, booleans and the model
/// kind included.
async fn a_retrain_body_overrides_the_server_defaults(backend: crate::Backend) {
    let defaults: rbm_recommender::app::TrainingRequest = serde_json::from_value(
        json!({"model": "user", "cd_schedule": true, "conditional": true, "hidden": 7}),
    )
    .unwrap();
    let app = crate::spawn_app_tuned(backend, |s| s.training = defaults).await;
    seed(&app, 30, 9).await;
    let mut body = fast_training();
    body["epochs"] = json!(4);
    body["model"] = json!("blend");
    body["cd_schedule"] = json!(false);
    body["conditional"] = json!(false);
    body.as_object_mut().unwrap().remove("hidden");
    let run = app.retrain(body).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        (&run["params"]["model"], &run["params"]["hidden"]),
        (&json!("blend"), &json!(7))
    );
    let (_, models) = app.call("GET", "/admin/models", None, true).await;
    let params = &models["models"][0]["params"];
    assert_eq!(params["user"]["cd_schedule"], false, "{params}");
    assert_eq!(params["user"]["conditional"], false, "{params}");
    assert_eq!(params["user"]["hidden"], 7, "{params}");
    assert_eq!(
        params["item"]["hidden"], 7,
        "the item-based RBM is trained: {params}"
    );
}
on_both_backends!(backend a_retrain_body_overrides_the_server_defaults);
