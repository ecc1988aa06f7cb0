//! `rbm-recommender demo`: a newcomer's first run. On an empty database it creates a deterministic
//! synthetic catalogue with planted taste groups (or imports `--from PATH`), trains a model, serves,
//! and prints curl commands that show recommendations changing as ratings are posted.

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::model::DEFAULT_SEED;
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
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(DEFAULT_SEED);
    let mut next = move |bound: usize| rng.random_range(0..bound);
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
    let mut tx = store.begin_write().await?;
    store::upsert_titles_in(&mut tx, &catalogue()).await?;
    store::upsert_ratings_in(&mut tx, &ratings()).await?;
    tx.commit().await?;
    Ok(true)
}

/// Items the walkthrough rates: first loved, then hated in favour of the second group.
pub struct Story {
    pub first: (String, Vec<String>),
    pub second: (String, Vec<String>),
}

impl Story {
    /// Three science-fiction films, then two horror films, of the synthetic catalogue.
    pub fn synthetic() -> Self {
        let ids = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        Self {
            first: (
                "three science-fiction films".to_string(),
                ids(&["m00", "m04", "m08"]),
            ),
            second: ("two horror films".to_string(), ids(&["m02", "m06"])),
        }
    }

    /// For a real data set: the three most popular items, then the next two.
    pub async fn popular(store: &Store) -> Result<Self, store::StoreError> {
        let top: Vec<String> = store
            .popular_items(5, 0, &Default::default())
            .await?
            .into_iter()
            .map(|p| p.item_id)
            .collect();
        let split = top.len().min(3);
        Ok(Self {
            first: (
                "the three most rated items".to_string(),
                top[..split].to_vec(),
            ),
            second: ("the next two".to_string(), top[split..].to_vec()),
        })
    }
}

/// The walkthrough printed once the demo serves at `base`; `admin` says whether an admin token
/// was set, which the dashboard's admin pages need.
pub fn walkthrough(base: &str, story: &Story, admin: bool) -> String {
    let post = |items: &[(&String, f64)]| {
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
    let love: Vec<(&String, f64)> = story.first.1.iter().map(|id| (id, 5.0)).collect();
    let switch: Vec<(&String, f64)> = story
        .first
        .1
        .iter()
        .map(|id| (id, 0.5))
        .chain(story.second.1.iter().map(|id| (id, 5.0)))
        .collect();
    let similar = story.first.1.first().map(String::as_str).unwrap_or("m00");
    let dashboard = if admin {
        format!("Open {base}/ in a browser for the dashboard; enter your ADMIN_TOKEN there.")
    } else {
        format!(
            "Open {base}/ in a browser for the dashboard (start the demo with ADMIN_TOKEN=<a secret> \
             for its Training and Models pages)."
        )
    };
    format!(
        "\nThe demo is serving at {base}.\n{dashboard}\nOr try, in another terminal:\n\n\
         # 1. A new user gets the most popular items:\n{recommend}\n\n\
         # 2. Say you love {}…\n{}\n\
         # …and the next answer is personalised (no retraining):\n{recommend}\n\n\
         # 3. Change your mind: hate those, love {}:\n{}\n{recommend}\n\n\
         # Items like one you love:\ncurl -s '{base}/items/{similar}/similar?limit=5'\n\n\
         Press ctrl-c to stop.\n",
        story.first.0,
        post(&love),
        story.second.0,
        post(&switch),
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
