//! `generate`: the same bytes for a seed whatever the threads, and the shapes it promises.

use std::collections::HashMap;
use std::path::Path;

use rbm_recommender::generate::{MIN_PER_USER, Preset, Shape, generate};

fn shape(seed: u64) -> Shape {
    Shape {
        users: 2_000,
        items: 1_000,
        ratings: 300_000,
        ..Preset::Ml1m.shape(seed)
    }
}

fn read(path: &Path) -> Vec<(u32, u32, f32)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("userId,movieId,rating,timestamp"));
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_files_at_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    generate(&shape(7), &a, |_| {}).unwrap();
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| generate(&shape(7), &b, |_| {}))
        .unwrap();
    generate(&shape(8), &c, |_| {}).unwrap();
    for file in ["ratings.csv", "movies.csv"] {
        let bytes = |folder: &Path| std::fs::read(folder.join(file)).unwrap();
        assert!(
            bytes(&a) == bytes(&b),
            "{file} differs between thread counts"
        );
    }
    assert!(
        std::fs::read(a.join("ratings.csv")).unwrap()
            != std::fs::read(c.join("ratings.csv")).unwrap()
    );
}

#[test]
fn the_data_has_heavy_tails_and_a_taste_structure() {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(&shape(7), dir.path(), |_| {}).unwrap();
    let rows = read(&dir.path().join("ratings.csv"));
    assert_eq!(rows.len() as u64, summary.ratings);
    // The requested total, less what the cap of two thirds of the catalogue on a user cuts (more
    // in a small catalogue: 7% here, 2% at ML-1M's shape).
    assert!(
        rows.len() > 270_000 && rows.len() <= 300_000,
        "{}",
        rows.len()
    );

    let mut per_user: HashMap<u32, Vec<(u32, f32)>> = HashMap::new();
    let mut per_item: HashMap<u32, usize> = HashMap::new();
    for &(user, item, value) in &rows {
        assert!((1..=2_000).contains(&user) && (1..=1_000).contains(&item));
        assert!([1.0, 2.0, 3.0, 4.0, 5.0].contains(&value), "{value}");
        per_user.entry(user).or_default().push((item, value));
        *per_item.entry(item).or_default() += 1;
    }
    assert_eq!(per_user.len(), 2_000);
    // No pair twice, and every user's items in order.
    for ratings in per_user.values() {
        assert!(ratings.len() >= MIN_PER_USER);
        assert!(ratings.windows(2).all(|w| w[0].0 < w[1].0));
    }
    // Heavy tails: user activity's mean well above its median (ML-1M: 166 against 96), and the
    // most popular tenth of the items holding far more than a tenth of the ratings (ML-1M: 44%).
    let mut activity: Vec<usize> = per_user.values().map(Vec::len).collect();
    activity.sort_unstable();
    let mean = rows.len() as f64 / activity.len() as f64;
    assert!(
        mean > 1.4 * activity[activity.len() / 2] as f64,
        "{mean} {}",
        activity[1000]
    );
    let mut popularity: Vec<usize> = per_item.values().copied().collect();
    popularity.sort_unstable_by(|a, b| b.cmp(a));
    let top: usize = popularity[..100].iter().sum();
    assert!(
        top as f64 > 0.3 * rows.len() as f64,
        "top tenth holds {top}"
    );

    // Taste: users rate the genres they pick most above the rest.
    let titles = std::fs::read_to_string(dir.path().join("movies.csv")).unwrap();
    let genre: HashMap<u32, &str> = titles
        .lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            (f[0].parse().unwrap(), f[2])
        })
        .collect();
    assert_eq!(genre.len(), 1_000);
    let (mut favourite, mut other) = ((0.0, 0), (0.0, 0));
    for ratings in per_user.values() {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (item, _) in ratings {
            *counts.entry(genre[item]).or_default() += 1;
        }
        let mut by_count: Vec<(&str, usize)> = counts.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let liked: Vec<&str> = by_count.iter().take(3).map(|g| g.0).collect();
        for (item, value) in ratings {
            let side = if liked.contains(&genre[item]) {
                &mut favourite
            } else {
                &mut other
            };
            side.0 += f64::from(*value);
            side.1 += 1;
        }
    }
    let (liked, rest) = (favourite.0 / favourite.1 as f64, other.0 / other.1 as f64);
    assert!(
        liked > rest + 0.5,
        "liked genres {liked:.2}, others {rest:.2}"
    );
}

#[test]
fn an_impossible_shape_is_refused_naming_the_field() {
    let too_few = Shape {
        ratings: 10,
        ..shape(1)
    };
    let error = generate(&too_few, Path::new("/nonexistent"), |_| {}).unwrap_err();
    assert!(error.to_string().contains("ratings"), "{error}");
}
