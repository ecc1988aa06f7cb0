//! `rbm-recommender demo`: a newcomer's first run. On an empty database it creates a deterministic
//! synthetic catalogue with planted taste groups (or imports `--from PATH`), trains a model, serves,
//! and prints curl commands that show recommendations changing as ratings are posted.

use crate::store::{self, NewRating, Store};

/// Taste groups: a genre, and words its titles are made of.
const GROUPS: [(&str, [&str; 5], [&str; 3]); 4] = [
    (
        "Sci-Fi",
        ["Distant", "Silent", "Last", "Frozen", "Hidden"],
        ["Nebula", "Orbit", "Colony"],
    ),
    (
        "Romance",
        ["Summer", "Paris", "Secret", "Second", "Autumn"],
        ["Letters", "Promise", "Waltz"],
    ),
    (
        "Horror",
        ["Midnight", "Hollow", "Crimson", "Buried", "Whispering"],
        ["Manor", "Woods", "Cellar"],
    ),
    (
        "Comedy",
        ["Accidental", "Big", "Wrong", "Lucky", "Awkward"],
        ["Wedding", "Heist", "Vacation"],
    ),
];
const USERS: usize = 2000;
const RATINGS_PER_USER: usize = 24;

/// Items `m00`…`m59`: 15 per group, item n in group n % 4, titled e.g. "Distant Nebula (Sci-Fi)".
pub fn catalogue() -> Vec<(String, String)> {
    (0..60)
        .map(|n| {
            let (genre, first, second) = &GROUPS[n % 4];
            let k = n / 4;
            (
                format!("m{n:02}"),
                format!("{} {} ({genre})", first[k % 5], second[k / 5]),
            )
        })
        .collect()
}

/// Users `user000`… in group u % 4 rate items of their group 4 to 5 stars and others 0.5 to 2.5.
pub fn ratings() -> Vec<NewRating> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    let mut rows = Vec::with_capacity(USERS * RATINGS_PER_USER);
    for user in 0..USERS {
        let mut seen = [false; 60];
        while rows.len() < (user + 1) * RATINGS_PER_USER {
            let item = next(60);
            if std::mem::replace(&mut seen[item], true) {
                continue;
            }
            let liked = item % 4 == user % 4;
            let stars = if liked {
                4.0 + 0.5 * next(3) as f64
            } else {
                0.5 + 0.5 * next(5) as f64
            };
            rows.push(NewRating {
                user_id: format!("user{user:03}"),
                item_id: format!("m{item:02}"),
                rating: stars,
            });
        }
    }
    rows
}

/// Fills an empty store with the synthetic catalogue; false if it already held ratings.
pub async fn seed(store: &Store) -> Result<bool, store::StoreError> {
    if !store
        .popular_items(1, 0, &Default::default())
        .await?
        .is_empty()
    {
        return Ok(false);
    }
    let mut tx = store.pool().begin().await?;
    store::upsert_titles_in(&mut tx, &catalogue()).await?;
    store::upsert_ratings_in(&mut tx, &ratings()).await?;
    tx.commit().await?;
    Ok(true)
}

/// The walkthrough printed once the demo serves at `base`.
pub fn walkthrough(base: &str) -> String {
    let post = |items: &[(&str, f64)]| {
        let list: Vec<String> = items
            .iter()
            .map(|(item, r)| {
                format!("{{\"user_id\":\"you\",\"item_id\":\"{item}\",\"rating\":{r}}}")
            })
            .collect();
        format!(
            "curl -s -XPOST {base}/ratings -H 'content-type: application/json' -d '{{\"ratings\":[{}]}}'",
            list.join(",")
        )
    };
    let recommend = format!("curl -s '{base}/users/you/recommendations?limit=5'");
    format!(
        "\nThe demo is serving at {base}. Try, in another terminal:\n\n\
         # 1. A new user gets the most popular items:\n{recommend}\n\n\
         # 2. Say you love three science-fiction films…\n{}\n\
         # …and the next answer is personalised (no retraining):\n{recommend}\n\n\
         # 3. Change your mind: hate those, love two horror films:\n{}\n{recommend}\n\n\
         # Items like one you love:\ncurl -s '{base}/items/m00/similar?limit=5'\n\n\
         Press ctrl-c to stop.\n",
        post(&[("m00", 5.0), ("m04", 5.0), ("m08", 4.5)]),
        post(&[
            ("m00", 0.5),
            ("m04", 0.5),
            ("m08", 0.5),
            ("m02", 5.0),
            ("m06", 5.0)
        ]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_is_deterministic_and_readable() {
        assert_eq!(ratings(), ratings());
        assert_eq!(ratings().len(), USERS * RATINGS_PER_USER);
        let titles = catalogue();
        assert_eq!(
            titles[0],
            ("m00".to_string(), "Distant Nebula (Sci-Fi)".to_string())
        );
        assert_eq!(
            titles
                .iter()
                .map(|(_, t)| t)
                .collect::<std::collections::HashSet<_>>()
                .len(),
            60
        );
    }
}
