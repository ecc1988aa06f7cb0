//! The import command's loader on both databases: every format, bad rows, the all-or-nothing
//! rule, --skip-invalid, and idempotent re-imports. Fixture files are written by the tests.

use std::path::Path;

use rbm_recommender::import::import;
use rbm_recommender::model::RatingScale;
use rbm_recommender::store::Store;

use crate::{Backend, TestDatabase, fresh_database, on_both_backends};

async fn store(backend: Backend) -> (Store, String, TestDatabase) {
    let (url, guard) = fresh_database(backend).await;
    let store = Store::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    (store, url, guard)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Each layout with its titles file; ml-100k's u.item is Latin-1.
fn fixtures(root: &Path) {
    let files: [(&str, &str, &[u8]); 10] = [
        ("ml-100k", "u.data", b"1\t10\t5\t881250949\n2\t10\t3\t881250950\n1\t20\t1\t881250951\n"),
        ("ml-100k", "u.item", b"10|Caf\xe9 Society (1995)|01-Jan-1995||\n20|Heat (1995)|01-Jan-1995||\n"),
        ("ml-1m", "ratings.dat", b"1::10::5\n2::10::3::978300760\n1::20::1\n"),
        ("ml-1m", "movies.dat", b"10::GoldenEye (1995)::Action\n20::Heat (1995)::Crime\n"),
        ("ml-latest", "ratings.csv", b"userId,movieId,rating,timestamp\n1,10,4.5,1\n2,10,3.0,1\n1,20,0.5,1\n"),
        ("ml-latest", "movies.csv", b"movieId,title,genres\n10,\"American President, The (1995)\",Comedy\n20,Heat (1995),Crime\n"),
        ("netflix/training_set", "mv_0000010.txt", b"10:\n1,5,2005-09-06\n2,3,2005-09-06\n"),
        ("netflix/training_set", "mv_0000020.txt", b"20:\n1,1,2005-09-06\n"),
        ("netflix", "movie_titles.txt", b"10,2003,Dinosaur Planet\n20,2004,Isle of Man TT, 2004 Review\n"),
        ("", "mine.csv", b"user,item,rating\nalice,x,4\nbob,x,2\nalice,y,1\n"),
    ];
    for (dir, name, bytes) in files {
        write(&root.join(dir), name, bytes);
    }
}

async fn titles(store: &Store) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for id in ["10", "20"] {
        out.push((
            id.to_string(),
            store.item(id).await.unwrap().and_then(|i| i.title),
        ));
    }
    out
}

async fn every_format_imports_ratings_and_titles(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let expected_titles = [
        ("ml-100k", "Café Society (1995)"),
        ("ml-1m", "GoldenEye (1995)"),
        ("ml-latest", "American President, The (1995)"),
        ("netflix", "Dinosaur Planet"),
    ];
    for (folder, title) in expected_titles {
        let (store, url, _guard) = store(backend).await;
        let summary = import(
            &store,
            &url,
            &dir.path().join(folder),
            None,
            RatingScale::HALF_STARS,
            false,
        )
        .await
        .unwrap();
        assert_eq!(
            (summary.ratings_read, summary.inserted, summary.invalid),
            (3, 3, 0),
            "{folder}"
        );
        assert_eq!(
            store.user_ratings("1").await.unwrap().1.len(),
            2,
            "{folder}"
        );
        assert_eq!(
            titles(&store).await[0].1.as_deref(),
            Some(title),
            "{folder}"
        );
    }
    let (store, url, _guard) = store(backend).await;
    let summary = import(
        &store,
        &url,
        &dir.path().join("mine.csv"),
        None,
        RatingScale::HALF_STARS,
        false,
    )
    .await
    .unwrap();
    assert_eq!(summary.inserted, 3);
    assert_eq!(
        store.user_ratings("alice").await.unwrap().1,
        [("x".to_string(), 4.0), ("y".to_string(), 1.0)]
    );
}

async fn a_bad_row_stops_the_import_and_writes_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "ratings.dat",
        b"1::10::5\n2::10::3\n2::11::nine\n3::12::4\n",
    );
    let (store, url, _guard) = store(backend).await;
    store
        .upsert_ratings(&[rbm_recommender::store::NewRating {
            user_id: "keep".into(),
            item_id: "me".into(),
            rating: 2.0,
        }])
        .await
        .unwrap();
    let err = import(
        &store,
        &url,
        &dir.path().join("ratings.dat"),
        None,
        RatingScale::HALF_STARS,
        false,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("ratings.dat:3:") && err.contains("\"nine\""),
        "{err}"
    );
    assert!(
        store.user_ratings("1").await.unwrap().1.is_empty(),
        "rows before the bad one were written"
    );
    assert_eq!(
        store.user_ratings("keep").await.unwrap().1.len(),
        1,
        "existing data was lost"
    );

    write(dir.path(), "off.dat", b"1::10::5\n1::11::7\n");
    let err = import(
        &store,
        &url,
        &dir.path().join("off.dat"),
        None,
        RatingScale::HALF_STARS,
        false,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("line 2") && err.contains("rating 7"), "{err}");
}

async fn skip_invalid_imports_the_good_rows_and_reports_the_bad(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "ratings.dat",
        b"1::10::5\n2::10\n2::11::nine\n3::12::4\n4::13::9\n",
    );
    let (store, url, _guard) = store(backend).await;
    let summary = import(
        &store,
        &url,
        &dir.path().join("ratings.dat"),
        None,
        RatingScale::HALF_STARS,
        true,
    )
    .await
    .unwrap();
    assert_eq!(
        (summary.ratings_read, summary.inserted, summary.invalid),
        (2, 2, 3)
    );
    assert_eq!(summary.invalid_examples.len(), 3);
    assert!(
        summary.invalid_examples[0].contains(":2:"),
        "{:?}",
        summary.invalid_examples
    );
    assert_eq!(
        store.user_ratings("3").await.unwrap().1,
        [("12".to_string(), 4.0)]
    );
}

async fn reimporting_the_same_files_changes_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let (store, url, _guard) = store(backend).await;
    let path = dir.path().join("ml-1m");
    let first = import(&store, &url, &path, None, RatingScale::HALF_STARS, false)
        .await
        .unwrap();
    let before = crate::store::snapshot(&store).await;
    let second = import(&store, &url, &path, None, RatingScale::HALF_STARS, false)
        .await
        .unwrap();
    let after = crate::store::snapshot(&store).await;
    assert_eq!(before, after);
    assert_eq!((first.inserted, second.inserted, second.updated), (3, 0, 3));
    assert_eq!(titles(&store).await[1].1.as_deref(), Some("Heat (1995)"));
}

/// A first import into an empty table takes the bulk path (no per-row trigger, key built after
/// the load): a repeated pair still keeps its last line, and every user gets a revision that
/// later writes move on.
async fn a_first_import_keeps_the_last_of_a_repeated_pair(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "ratings.csv",
        b"user,item,rating\nu1,a,1\nu2,a,2\nu1,a,5\nu1,b,3\nu1,a,4\n",
    );
    let (store, url, _guard) = store(backend).await;
    let path = dir.path().join("ratings.csv");
    let summary = import(&store, &url, &path, None, RatingScale::ONE_TO_FIVE, false)
        .await
        .unwrap();
    assert_eq!((summary.inserted, summary.updated), (3, 2));
    let stored = crate::store::snapshot(&store).await;
    let expected = [("u1", "a", 4.0), ("u1", "b", 3.0), ("u2", "a", 2.0)];
    let expected: Vec<(String, String, f64)> = expected
        .iter()
        .map(|&(u, i, r)| (u.to_string(), i.to_string(), r))
        .collect();
    assert_eq!(stored, expected);
    assert!(store.item("a").await.unwrap().is_some() && store.item("b").await.unwrap().is_some());
    let before = store.user_revisions(&["u1", "u2"]).await.unwrap();
    assert_eq!(before.len(), 2, "{before:?}");
    store.delete_rating("u2", "a").await.unwrap();
    let after = store.user_revisions(&["u1", "u2"]).await.unwrap();
    assert_eq!(after["u1"], before["u1"]);
    assert!(after["u2"] > before["u2"], "{before:?} {after:?}");
    // The table has ratings now: a second import merges through the row-by-row path.
    write(
        dir.path(),
        "more.csv",
        b"user,item,rating\nu1,a,2\nu3,c,5\n",
    );
    let more = dir.path().join("more.csv");
    let summary = import(&store, &url, &more, None, RatingScale::ONE_TO_FIVE, false)
        .await
        .unwrap();
    assert_eq!((summary.inserted, summary.updated), (1, 1));
    assert!(store.user_revisions(&["u1"]).await.unwrap()["u1"] > after["u1"]);
}

/// The import command streams: on 3 M generated ratings (a 70 MB file, which held in memory as
/// rows would take several hundred MB) its peak resident memory stays far below that.
async fn a_big_import_runs_in_bounded_memory(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let shape = rbm_recommender::generate::Shape {
        users: 20_000,
        items: 5_000,
        ratings: 3_000_000,
        ..rbm_recommender::generate::Preset::Netflix.shape(3)
    };
    rbm_recommender::generate::generate(&shape, dir.path(), |_| {}).unwrap();
    let (_store, url, _guard) = store(backend).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rbm-recommender"))
        .arg("import")
        .arg(dir.path())
        .args(["--scale", "1:5:1", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        summary["inserted"].as_u64(),
        Some(summary["ratings_read"].as_u64().unwrap())
    );
    assert!(
        summary["ratings_read"].as_u64().unwrap() > 2_900_000,
        "{summary}"
    );
    let peak = summary["peak_rss_mib"].as_f64().expect("a peak on Linux");
    assert!(peak < 200.0, "peak RSS {peak:.0} MiB");
}

on_both_backends!(backend every_format_imports_ratings_and_titles);
on_both_backends!(backend a_big_import_runs_in_bounded_memory);
on_both_backends!(backend a_first_import_keeps_the_last_of_a_repeated_pair);
on_both_backends!(backend a_bad_row_stops_the_import_and_writes_nothing);
on_both_backends!(backend skip_invalid_imports_the_good_rows_and_reports_the_bad);
on_both_backends!(backend reimporting_the_same_files_changes_nothing);
