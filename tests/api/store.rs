//! The store's bulk paths on both databases: the streaming training snapshot and model versions
//! larger than one stored chunk.

use rbm_recommender::store::{MODEL_CHUNK_BYTES, NewRating, Store};
use serde_json::json;

use crate::{Backend, TestDatabase, fresh_database, on_both_backends};

async fn store(backend: Backend) -> (Store, TestDatabase) {
    let (url, guard) = fresh_database(backend).await;
    let store = Store::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    (store, guard)
}

pub(crate) async fn snapshot(store: &Store) -> Vec<(String, String, f64)> {
    let mut rows = Vec::new();
    let count = store
        .for_each_rating(|user, item, value| {
            rows.push((user.to_string(), item.to_string(), value));
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(count as usize, rows.len());
    rows.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rows
}

async fn the_snapshot_streams_every_rating_with_its_ids_intact(backend: Backend) {
    let (store, _guard) = store(backend).await;
    // Ids COPY has to escape (a backslash), non-ASCII text, and more rows than one COPY message.
    let odd = ["back\\slash", "ünïcødé ☃", "tab-free \\\\ two", "plain"];
    let mut ratings: Vec<NewRating> = (0..30_000)
        .map(|n| NewRating {
            user_id: format!("user {}", n / 30),
            item_id: format!("item-{}", n % 997),
            rating: f64::from(1 + (n % 5) as u8),
        })
        .collect();
    for (n, id) in odd.iter().enumerate() {
        ratings.push(NewRating {
            user_id: id.to_string(),
            item_id: odd[(n + 1) % odd.len()].to_string(),
            rating: 4.5,
        });
    }
    store.upsert_ratings(&ratings).await.unwrap();
    let mut expected: Vec<(String, String, f64)> = ratings
        .iter()
        .map(|r| (r.user_id.clone(), r.item_id.clone(), r.rating))
        .collect();
    expected.sort_by(|a, b| a.partial_cmp(b).unwrap());
    expected.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    assert_eq!(snapshot(&store).await, expected);

    // An error from the callback stops the read and comes back as the store's error.
    let mut seen = 0;
    let stopped = store
        .for_each_rating(|_, _, _| {
            seen += 1;
            if seen == 100 {
                Err("enough".to_string())
            } else {
                Ok(())
            }
        })
        .await;
    assert!(stopped.unwrap_err().to_string().contains("enough"));
    assert_eq!(seen, 100);
}

async fn a_model_larger_than_a_chunk_round_trips(backend: Backend) {
    let (store, _guard) = store(backend).await;
    // Two full chunks and a partial one, with bytes that differ from chunk to chunk.
    let size = 2 * MODEL_CHUNK_BYTES + 12_345;
    let blob: Vec<u8> = (0..size)
        .map(|n| (n % 251) as u8 ^ (n / MODEL_CHUNK_BYTES) as u8)
        .collect();
    let small = vec![7u8; 10];
    let first = store
        .insert_model(&json!({}), &json!({}), &small, || async {})
        .await
        .unwrap();
    // The writer is paced before each chunk.
    let mut paced = 0;
    let big = store
        .insert_model(&json!({"a": 1}), &json!({}), &blob, || {
            paced += 1;
            async {}
        })
        .await
        .unwrap();
    assert_eq!(paced, 3);
    assert!(store.activate_model(big).await.unwrap());
    assert_eq!(store.model_blob(first).await.unwrap().unwrap(), small);
    let (active, read) = store.active_model().await.unwrap().unwrap();
    assert_eq!(active, big);
    assert!(read == blob, "the big model came back different");
    let sizes: Vec<(i64, i64)> = store
        .models()
        .await
        .unwrap()
        .iter()
        .map(|m| (m.version, m.size_bytes))
        .collect();
    assert_eq!(sizes, vec![(big, size as i64), (first, 10)]);
    assert_eq!(store.model_blob(big + 1).await.unwrap(), None);
}

on_both_backends!(backend the_snapshot_streams_every_rating_with_its_ids_intact);
on_both_backends!(backend a_model_larger_than_a_chunk_round_trips);

/// PostgreSQL only: SQLite has no JIT. Every pooled connection plans without it, so a batch read of
/// users' ratings is never held up by compiling its plan.
#[tokio::test]
async fn postgres_connections_plan_without_jit() {
    let (store, _guard) = store(Backend::Postgres).await;
    let mut connections = Vec::new();
    for _ in 0..4 {
        let mut connection = store.pool().acquire().await.unwrap();
        let jit: String = sqlx::query_scalar("SHOW jit")
            .fetch_one(&mut *connection)
            .await
            .unwrap();
        assert_eq!(jit, "off");
        connections.push(connection);
    }
}
