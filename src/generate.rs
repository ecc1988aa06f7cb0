//! `rbm-recommender generate`: a deterministic synthetic rating data set in the ml-latest layout
//! (`ratings.csv`, `movies.csv`), of any size, in bounded memory. It is what the scale benchmark
//! runs on (no research data may be redistributed) and what a user plans capacity with.
//!
//! The shapes follow ML-1M (README.md compares the histograms):
//! - user activity: at least `MIN_PER_USER` ratings plus a log-normal part (σ = 1.14 gives
//!   ML-1M's median 96 and mean 166 at 20 + 146 on average), cut at two thirds of the catalogue;
//! - item popularity: log-normal weights (σ = 1.5) in a shuffled order, so a few items are rated
//!   by most users and the median item by a few percent of them;
//! - taste: every item has one of 18 genres and a quality; every user a bias, three liked genres
//!   and two disliked. Users pick items mostly from the genres they like (which items a user rates
//!   carries their taste, as in real data), and rate round(3.45 + user bias + item quality +
//!   0.9·affinity + noise), clamped to the scale: an RBM learns both.
//!
//! Every user's ratings come from a generator seeded by (seed, user), so the output is the same
//! for a seed whatever the number of threads; users are written in order, in chunks generated in
//! parallel, and memory holds one chunk plus O(users + items) numbers.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use serde::Serialize;

use crate::model::{ModelError, RatingScale};

/// Every user rates at least this many items (as in MovieLens).
pub const MIN_PER_USER: usize = 20;
const USER_ACTIVITY_SIGMA: f64 = 1.14;
const ITEM_POPULARITY_SIGMA: f64 = 1.5;
const GENRES: [&str; 18] = [
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];
const LIKED: usize = 3;
const DISLIKED: usize = 2;
/// Relative chance of picking from a liked, neutral and disliked genre.
const PICK_WEIGHTS: [f64; 3] = [6.0, 1.0, 0.25];
/// Users generated per parallel chunk.
const CHUNK_USERS: usize = 4096;

/// A named shape: the size of a public data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// 6,040 users, 3,706 items, 1,000,209 ratings, 1–5 stars.
    #[value(name = "ml-1m")]
    Ml1m,
    /// 138,493 users, 26,744 items, 20,000,263 ratings, half stars 0.5–5.
    #[value(name = "ml-20m")]
    Ml20m,
    /// 480,189 users, 17,770 items, 100,480,507 ratings, 1–5 stars (the Netflix Prize).
    Netflix,
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Shape {
    pub users: usize,
    pub items: usize,
    pub ratings: u64,
    pub scale: RatingScale,
    pub seed: u64,
}

impl Preset {
    pub fn shape(self, seed: u64) -> Shape {
        let (users, items, ratings, scale) = match self {
            Self::Ml1m => (6_040, 3_706, 1_000_209, RatingScale::ONE_TO_FIVE),
            Self::Ml20m => (138_493, 26_744, 20_000_263, RatingScale::HALF_STARS),
            Self::Netflix => (480_189, 17_770, 100_480_507, RatingScale::ONE_TO_FIVE),
        };
        Shape {
            users,
            items,
            ratings,
            scale,
            seed,
        }
    }
}

/// What `generate` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub ratings_file: PathBuf,
    pub titles_file: PathBuf,
    pub users: usize,
    pub items: usize,
    pub ratings: u64,
    /// The scale to import and train with (`--scale`, `RATING_SCALE`).
    pub scale: String,
    pub seed: u64,
    pub seconds: f64,
}

impl Shape {
    /// The rules a shape must keep to be generated: every user gets `MIN_PER_USER` distinct
    /// items and nobody rates more than two thirds of the catalogue.
    pub fn check(&self) -> Result<(), ModelError> {
        let invalid =
            |name, value: String, rule| Err(ModelError::InvalidParameter { name, value, rule });
        if self.users == 0 || self.users > u32::MAX as usize {
            return invalid("users", self.users.to_string(), "must be 1 to 2^32 - 1");
        }
        if self.items < 2 * MIN_PER_USER || self.items > u32::MAX as usize {
            return invalid("items", self.items.to_string(), "must be 40 to 2^32 - 1");
        }
        let least = (self.users * MIN_PER_USER) as u64;
        let most = self.users as u64 * (self.items * 2 / 3) as u64;
        if self.ratings < least || self.ratings > most {
            return invalid(
                "ratings",
                self.ratings.to_string(),
                "must be from 20 per user to two thirds of the items per user",
            );
        }
        Ok(())
    }
}

/// A generator seeded by the data set's seed and one stream number, independent of the others.
fn stream(seed: u64, stream: u64) -> Xoshiro256PlusPlus {
    // SplitMix64's finaliser spreads consecutive stream numbers over the whole seed space.
    let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    Xoshiro256PlusPlus::seed_from_u64(z ^ (z >> 31))
}

/// Stream numbers: one per user, and these for the catalogue and the activity draw.
const CATALOGUE_STREAM: u64 = u64::MAX;
const ACTIVITY_STREAM: u64 = u64::MAX - 1;

/// The catalogue: each item's genre and quality, and per genre its items with cumulative
/// popularity for sampling.
struct Catalogue {
    genre: Vec<u8>,
    quality: Vec<f32>,
    by_genre: Vec<Vec<u32>>,
    cumulative: Vec<Vec<f64>>,
}

impl Catalogue {
    fn new(shape: &Shape) -> Self {
        let mut rng = stream(shape.seed, CATALOGUE_STREAM);
        let popularity = LogNormal::new(0.0, ITEM_POPULARITY_SIGMA).expect("valid σ");
        let quality = Normal::new(0.0, 0.45).expect("valid σ");
        let mut catalogue = Self {
            genre: Vec::with_capacity(shape.items),
            quality: Vec::with_capacity(shape.items),
            by_genre: vec![Vec::new(); GENRES.len()],
            cumulative: vec![Vec::new(); GENRES.len()],
        };
        for item in 0..shape.items {
            let genre = rng.random_range(0..GENRES.len());
            let weight: f64 = popularity.sample(&mut rng);
            catalogue.genre.push(genre as u8);
            catalogue.quality.push(quality.sample(&mut rng) as f32);
            let total = catalogue.cumulative[genre].last().copied().unwrap_or(0.0);
            catalogue.by_genre[genre].push(item as u32);
            catalogue.cumulative[genre].push(total + weight);
        }
        catalogue
    }

    /// An item of `genre` drawn by popularity; None for an empty genre.
    fn draw(&self, genre: usize, rng: &mut Xoshiro256PlusPlus) -> Option<u32> {
        let cumulative = &self.cumulative[genre];
        let total = *cumulative.last()?;
        let target = rng.random::<f64>() * total;
        let at = cumulative.partition_point(|&c| c <= target);
        Some(self.by_genre[genre][at.min(cumulative.len() - 1)])
    }
}

/// How many ratings each user gets: `MIN_PER_USER` plus a log-normal share of the rest, rounded
/// so that the counts add up to the requested total (less what the two-thirds cap cuts).
fn activity(shape: &Shape) -> Vec<u32> {
    let mut rng = stream(shape.seed, ACTIVITY_STREAM);
    let lognormal = LogNormal::new(0.0, USER_ACTIVITY_SIGMA).expect("valid σ");
    let weights: Vec<f64> = (0..shape.users)
        .map(|_| lognormal.sample(&mut rng))
        .collect();
    let total: f64 = weights.iter().sum();
    let spare = (shape.ratings - (shape.users * MIN_PER_USER) as u64) as f64;
    let cap = (shape.items * 2 / 3) as u64;
    let mut cumulative = 0.0;
    let mut given = 0u64;
    weights
        .iter()
        .map(|w| {
            cumulative += w / total * spare;
            let until = cumulative.round() as u64;
            let extra = until - given;
            given = until;
            (MIN_PER_USER as u64 + extra).min(cap) as u32
        })
        .collect()
}

/// One user's ratings, appended as CSV lines to `out`; `taken` is a cleared bitset over the
/// items, left cleared.
fn write_user(
    shape: &Shape,
    catalogue: &Catalogue,
    user: usize,
    count: usize,
    taken: &mut [u64],
    out: &mut String,
) {
    use std::fmt::Write as _;
    let mut rng = stream(shape.seed, user as u64);
    let mut affinity = [0i8; GENRES.len()];
    let mut genres: Vec<usize> = (0..GENRES.len()).collect();
    for n in 0..LIKED + DISLIKED {
        let pick = rng.random_range(n..genres.len());
        genres.swap(n, pick);
        affinity[genres[n]] = if n < LIKED { 1 } else { -1 };
    }
    let mut pick_cumulative = [0.0f64; GENRES.len()];
    let mut total = 0.0;
    for (g, c) in pick_cumulative.iter_mut().enumerate() {
        total += match affinity[g] {
            1 => PICK_WEIGHTS[0],
            0 => PICK_WEIGHTS[1],
            _ => PICK_WEIGHTS[2],
        } * catalogue.cumulative[g].last().copied().unwrap_or(0.0);
        *c = total;
    }
    let bias = Normal::new(0.0, 0.45).expect("valid σ").sample(&mut rng) as f32;
    let noise = Normal::new(0.0, 0.85).expect("valid σ");
    let mut items: Vec<u32> = Vec::with_capacity(count);
    let mut attempts = 0usize;
    while items.len() < count {
        attempts += 1;
        let item = if attempts <= 30 * count + 1000 {
            let target = rng.random::<f64>() * total;
            let genre = pick_cumulative
                .partition_point(|&c| c <= target)
                .min(GENRES.len() - 1);
            match catalogue.draw(genre, &mut rng) {
                Some(item) => item,
                None => continue,
            }
        } else {
            // A user rating most of their genres' items: the rest uniformly, to end surely.
            rng.random_range(0..shape.items as u32)
        };
        let (word, bit) = (item as usize / 64, 1u64 << (item % 64));
        if taken[word] & bit == 0 {
            taken[word] |= bit;
            items.push(item);
        }
    }
    items.sort_unstable();
    let RatingScale { min, max, step } = shape.scale;
    for &item in &items {
        taken[item as usize / 64] = 0;
        let latent = 3.45
            + bias
            + catalogue.quality[item as usize]
            + 0.9 * f32::from(affinity[catalogue.genre[item as usize] as usize])
            + noise.sample(&mut rng) as f32;
        let value = (((latent - min) / step).round() * step + min).clamp(min, max);
        let timestamp = 1_000_000_000 + rng.random_range(0..300_000_000u32);
        let _ = writeln!(out, "{},{},{value},{timestamp}", user + 1, item + 1);
    }
}

/// A readable title for an item: two words from its number and the genre's flavour, and a year.
fn title(item: usize, genre: usize) -> String {
    const FIRST: [&str; 16] = [
        "Silent", "Crimson", "Last", "Hidden", "Golden", "Broken", "Midnight", "Wild", "Distant",
        "Frozen", "Electric", "Lonely", "Secret", "Burning", "Paper", "Iron",
    ];
    const SECOND: [&str; 16] = [
        "Harbor", "Kingdom", "Road", "Garden", "Signal", "Empire", "River", "Summer", "Machine",
        "Island", "Letter", "Horizon", "Forest", "Station", "Dream", "Frontier",
    ];
    let n = item + 1;
    format!(
        "The {} {} {} ({})",
        FIRST[n % 16],
        SECOND[(n / 16) % 16],
        n,
        1930 + (n * 7 + genre) % 90
    )
}

/// Writes `ratings.csv` and `movies.csv` into `folder` (created if missing); `progress` is told
/// the ratings written so far after every chunk.
pub fn generate(
    shape: &Shape,
    folder: &Path,
    progress: impl Fn(u64),
) -> Result<Summary, anyhow::Error> {
    shape.check()?;
    let started = Instant::now();
    std::fs::create_dir_all(folder)?;
    let catalogue = Catalogue::new(shape);
    let titles_file = folder.join("movies.csv");
    let mut titles = BufWriter::new(File::create(&titles_file)?);
    writeln!(titles, "movieId,title,genres")?;
    for (item, &genre) in catalogue.genre.iter().enumerate() {
        let genre = genre as usize;
        writeln!(
            titles,
            "{},{},{}",
            item + 1,
            title(item, genre),
            GENRES[genre]
        )?;
    }
    titles.flush()?;

    let counts = activity(shape);
    let ratings_file = folder.join("ratings.csv");
    let mut ratings = BufWriter::with_capacity(1 << 20, File::create(&ratings_file)?);
    writeln!(ratings, "userId,movieId,rating,timestamp")?;
    let mut written = 0u64;
    let words = shape.items.div_ceil(64);
    for (chunk, chunk_counts) in counts.chunks(CHUNK_USERS).enumerate() {
        let first = chunk * CHUNK_USERS;
        let parts: Vec<String> = chunk_counts
            .par_iter()
            .enumerate()
            .map_init(
                || vec![0u64; words],
                |taken, (n, &count)| {
                    let mut out = String::with_capacity(count as usize * 24);
                    write_user(
                        shape,
                        &catalogue,
                        first + n,
                        count as usize,
                        taken,
                        &mut out,
                    );
                    out
                },
            )
            .collect();
        for part in parts {
            ratings.write_all(part.as_bytes())?;
        }
        written += chunk_counts.iter().map(|&c| u64::from(c)).sum::<u64>();
        progress(written);
    }
    ratings.flush()?;
    Ok(Summary {
        ratings_file,
        titles_file,
        users: shape.users,
        items: shape.items,
        ratings: written,
        scale: format!(
            "{}:{}:{}",
            shape.scale.min, shape.scale.max, shape.scale.step
        ),
        seed: shape.seed,
        seconds: started.elapsed().as_secs_f64(),
    })
}
