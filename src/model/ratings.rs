//! Ratings as the model sees them: dense ids, rating classes and a compressed sparse row matrix.

use std::collections::HashMap;

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{DataShape, ModelError, RatingScale};

/// A two-way map between external string ids and dense indices `0..len`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Vec<String>", into = "Vec<String>")]
pub struct IdMap {
    ids: Vec<String>,
    index: HashMap<String, u32>,
}

impl IdMap {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// The index of `id`, adding it if it is new.
    pub fn insert(&mut self, id: &str) -> u32 {
        if let Some(&index) = self.index.get(id) {
            return index;
        }
        let index = self.ids.len() as u32;
        self.ids.push(id.to_string());
        self.index.insert(id.to_string(), index);
        index
    }

    pub fn id(&self, index: u32) -> &str {
        &self.ids[index as usize]
    }
}

impl From<Vec<String>> for IdMap {
    fn from(ids: Vec<String>) -> Self {
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        Self { ids, index }
    }
}

impl From<IdMap> for Vec<String> {
    fn from(map: IdMap) -> Self {
        map.ids
    }
}

/// One rating in dense indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rating {
    pub user: u32,
    pub item: u32,
    pub class: u8,
}

impl Rating {
    /// The rating as an entry of the user-major matrix (`Dataset::user_matrix`).
    pub fn entry(self) -> Entry {
        Entry {
            row: self.user,
            col: self.item,
            class: self.class,
        }
    }

    /// The rating as an entry of the item-major matrix, the item-based RBM's.
    pub fn transposed(self) -> Entry {
        Entry {
            row: self.item,
            col: self.user,
            class: self.class,
        }
    }
}

/// One entry of a `SparseRatings` matrix: what training, prediction and the metrics work on,
/// whichever side (users or items) the rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub row: u32,
    pub col: u32,
    pub class: u8,
}

/// Rows of (column, class) pairs in CSR form. User-major for the user-based RBM (rows are users,
/// columns items); its transpose is item-major for the item-based RBM.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseRatings {
    n_cols: usize,
    row_start: Vec<usize>,
    cols: Vec<u32>,
    classes: Vec<u8>,
}

impl SparseRatings {
    /// Builds rows from (row, col, class) triples; each row's entries end up sorted by column.
    pub fn from_triples(
        n_rows: usize,
        n_cols: usize,
        triples: impl Iterator<Item = (u32, u32, u8)> + Clone,
    ) -> Self {
        let mut row_start = vec![0usize; n_rows + 1];
        for (row, _, _) in triples.clone() {
            row_start[row as usize + 1] += 1;
        }
        for r in 0..n_rows {
            row_start[r + 1] += row_start[r];
        }
        let nnz = row_start[n_rows];
        let mut cols = vec![0u32; nnz];
        let mut classes = vec![0u8; nnz];
        let mut next = row_start.clone();
        for (row, col, class) in triples {
            let at = next[row as usize];
            cols[at] = col;
            classes[at] = class;
            next[row as usize] += 1;
        }
        let mut matrix = Self {
            n_cols,
            row_start,
            cols,
            classes,
        };
        matrix.sort_rows();
        matrix
    }

    fn sort_rows(&mut self) {
        for r in 0..self.n_rows() {
            let range = self.row_start[r]..self.row_start[r + 1];
            let mut pairs: Vec<(u32, u8)> = self.cols[range.clone()]
                .iter()
                .copied()
                .zip(self.classes[range.clone()].iter().copied())
                .collect();
            pairs.sort_unstable_by_key(|&(col, _)| col);
            for (offset, (col, class)) in pairs.into_iter().enumerate() {
                self.cols[range.start + offset] = col;
                self.classes[range.start + offset] = class;
            }
        }
    }

    pub fn n_rows(&self) -> usize {
        self.row_start.len() - 1
    }

    pub fn n_cols(&self) -> usize {
        self.n_cols
    }

    pub fn nnz(&self) -> usize {
        self.cols.len()
    }

    /// The columns and classes of one row.
    pub fn row(&self, row: usize) -> (&[u32], &[u8]) {
        let range = self.row_start[row]..self.row_start[row + 1];
        (&self.cols[range.clone()], &self.classes[range])
    }

    /// Number of entries in each column.
    pub fn col_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.n_cols];
        for &col in &self.cols {
            counts[col as usize] += 1;
        }
        counts
    }

    /// Counts of each class in each column, `counts[col * k + class]`.
    pub fn col_class_counts(&self, k: usize) -> Vec<u32> {
        let mut counts = vec![0u32; self.n_cols * k];
        for (&col, &class) in self.cols.iter().zip(&self.classes) {
            counts[col as usize * k + class as usize] += 1;
        }
        counts
    }

    /// The listed rows, in their order, as a matrix of `rows.len()` rows.
    pub fn select_rows(&self, rows: &[u32]) -> Self {
        let triples = rows.iter().enumerate().flat_map(move |(new, &old)| {
            let (cols, classes) = self.row(old as usize);
            cols.iter()
                .zip(classes)
                .map(move |(&c, &k)| (new as u32, c, k))
        });
        Self::from_triples(rows.len(), self.n_cols, triples)
    }

    pub fn transpose(&self) -> Self {
        let triples = (0..self.n_rows()).flat_map(move |r| {
            let (cols, classes) = self.row(r);
            cols.iter()
                .zip(classes)
                .map(move |(&c, &k)| (c, r as u32, k))
        });
        Self::from_triples(self.n_cols, self.n_rows(), triples)
    }
}

/// Ratings with their external ids and scale, the unit the readers produce and the trainer consumes.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub scale: RatingScale,
    pub users: IdMap,
    pub items: IdMap,
    pub ratings: Vec<Rating>,
}

/// A data set read one rating at a time, from a file or the store, with nothing per rating kept
/// but its `Rating`: ids are looked up by reference and stored once per user or item.
#[derive(Debug)]
pub struct DatasetBuilder {
    data: Dataset,
}

impl DatasetBuilder {
    /// An empty data set on `scale`, with room for `expected` ratings (0 if unknown): reserving
    /// at once avoids a doubling that would hold two copies of 100 M ratings for a moment.
    pub fn new(scale: RatingScale, expected: usize) -> Self {
        Self {
            data: Dataset {
                scale,
                users: IdMap::default(),
                items: IdMap::default(),
                ratings: Vec::with_capacity(expected),
            },
        }
    }

    /// Adds one rating; a value off the scale is an error naming it.
    pub fn push(&mut self, user: &str, item: &str, value: f32) -> Result<(), ModelError> {
        let class = self.data.scale.class_of(value)?;
        let rating = Rating {
            user: self.data.users.insert(user),
            item: self.data.items.insert(item),
            class,
        };
        self.data.ratings.push(rating);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.data.ratings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.ratings.is_empty()
    }

    /// The data set, where a (user, item) pair given twice keeps the last value.
    pub fn finish(mut self) -> Dataset {
        self.data.keep_last_of_duplicates();
        self.data
    }
}

/// What a split produced.
#[derive(Debug, Clone)]
pub struct Split {
    pub train: Dataset,
    /// Held-out ratings in the training set's indices.
    pub test: Vec<Rating>,
    /// Held-out ratings dropped because their user or item has no training rating.
    pub dropped: usize,
}

impl Dataset {
    /// Builds a data set from (user id, item id, value) rows; when a (user, item) pair repeats,
    /// the last row wins. Values off the scale are errors naming the value.
    pub fn from_rows<'a>(
        scale: RatingScale,
        rows: impl IntoIterator<Item = (&'a str, &'a str, f32)>,
    ) -> Result<Self, ModelError> {
        let mut builder = DatasetBuilder::new(scale, 0);
        for (user, item, value) in rows {
            builder.push(user, item, value)?;
        }
        Ok(builder.finish())
    }

    fn keep_last_of_duplicates(&mut self) {
        // u32 positions: at 100 M ratings the order is 400 MB, not 800.
        assert!(
            self.ratings.len() <= u32::MAX as usize,
            "at most 2^32 ratings"
        );
        let mut order: Vec<u32> = (0..self.ratings.len() as u32).collect();
        let at = |i: u32| self.ratings[i as usize];
        order.par_sort_unstable_by_key(|&i| (at(i).user, at(i).item, std::cmp::Reverse(i)));
        order.dedup_by_key(|&mut i| (at(i).user, at(i).item));
        if order.len() < self.ratings.len() {
            order.par_sort_unstable();
            self.ratings = order.into_iter().map(at).collect();
        }
    }

    /// How many ratings, users and items there are.
    pub fn shape(&self) -> DataShape {
        DataShape {
            ratings: self.ratings.len(),
            users: self.users.len(),
            items: self.items.len(),
        }
    }

    /// The user-major sparse matrix of rating classes.
    pub fn user_matrix(&self) -> SparseRatings {
        SparseRatings::from_triples(
            self.users.len(),
            self.items.len(),
            self.ratings.iter().map(|r| (r.user, r.item, r.class)),
        )
    }

    /// A seeded random split holding out `test_frac` of the ratings. The training part is re-indexed
    /// so that every user and item in it has a rating; held-out ratings of users or items absent from
    /// training are dropped and counted.
    pub fn split(&self, test_frac: f64, seed: u64) -> Result<Split, ModelError> {
        let (train_part, test_part) = self.shuffled_positions(test_frac, seed, "test fraction")?;
        self.split_by(&train_part, &test_part)
    }

    /// Holds out `frac` of the ratings at random without re-indexing (a validation slice): returns the
    /// kept data set and the held-out ratings, sorted by user.
    pub fn holdout(&self, frac: f64, seed: u64) -> Result<(Dataset, Vec<Rating>), ModelError> {
        let (kept, held) = self.shuffled_positions(frac, seed, "validation fraction")?;
        let kept = Dataset {
            scale: self.scale,
            users: self.users.clone(),
            items: self.items.clone(),
            ratings: kept.iter().map(|&i| self.ratings[i as usize]).collect(),
        };
        let mut held: Vec<Rating> = held.iter().map(|&i| self.ratings[i as usize]).collect();
        held.sort_by_key(|r| (r.user, r.item));
        Ok((kept, held))
    }

    /// Positions of the ratings, shuffled with `seed`, cut into (kept, held out) and each sorted.
    /// Positions are u32 (see `keep_last_of_duplicates`).
    fn shuffled_positions(
        &self,
        frac: f64,
        seed: u64,
        name: &'static str,
    ) -> Result<(Vec<u32>, Vec<u32>), ModelError> {
        if !(0.0..1.0).contains(&frac) {
            return Err(ModelError::InvalidFraction { name, value: frac });
        }
        let mut order: Vec<u32> = (0..self.ratings.len() as u32).collect();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let n_held = (self.ratings.len() as f64 * frac).round() as usize;
        let mut kept = order.split_off(n_held);
        let mut held = order;
        held.sort_unstable();
        kept.sort_unstable();
        Ok((kept, held))
    }

    /// Splits by explicit rating positions (train, test); used by `split` and by `--train/--test` files.
    fn split_by(&self, train_part: &[u32], test_part: &[u32]) -> Result<Split, ModelError> {
        let mut users = IdMap::default();
        let mut items = IdMap::default();
        let mut train = Vec::with_capacity(train_part.len());
        for &i in train_part {
            let r = self.ratings[i as usize];
            train.push(Rating {
                user: users.insert(self.users.id(r.user)),
                item: items.insert(self.items.id(r.item)),
                class: r.class,
            });
        }
        if train.is_empty() {
            return Err(ModelError::EmptyData);
        }
        let mut test = Vec::with_capacity(test_part.len());
        let mut dropped = 0;
        for &i in test_part {
            let r = self.ratings[i as usize];
            match (
                users.get(self.users.id(r.user)),
                items.get(self.items.id(r.item)),
            ) {
                (Some(user), Some(item)) => test.push(Rating {
                    user,
                    item,
                    class: r.class,
                }),
                _ => dropped += 1,
            }
        }
        let train = Dataset {
            scale: self.scale,
            users,
            items,
            ratings: train,
        };
        Ok(Split {
            train,
            test,
            dropped,
        })
    }

    /// Expresses a separately read test set in this (training) data set's indices, dropping and
    /// counting ratings of unknown users or items.
    pub fn align(&self, other: &Dataset) -> Split {
        let mut test = Vec::with_capacity(other.ratings.len());
        let mut dropped = 0;
        for r in &other.ratings {
            match (
                self.users.get(other.users.id(r.user)),
                self.items.get(other.items.id(r.item)),
            ) {
                (Some(user), Some(item)) => test.push(Rating {
                    user,
                    item,
                    class: r.class,
                }),
                _ => dropped += 1,
            }
        }
        Split {
            train: self.clone(),
            test,
            dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        let rows = [
            ("u1", "a", 5.0),
            ("u1", "b", 3.0),
            ("u2", "a", 4.0),
            ("u2", "c", 1.0),
            ("u1", "b", 2.0),
        ];
        Dataset::from_rows(RatingScale::ONE_TO_FIVE, rows).unwrap()
    }

    #[test]
    fn repeated_pairs_keep_the_last_rating() {
        let data = tiny();
        assert_eq!(data.ratings.len(), 4);
        let b = data.items.get("b").unwrap();
        let r = data.ratings.iter().find(|r| r.item == b).unwrap();
        assert_eq!(data.scale.value_of(r.class), 2.0);
    }

    #[test]
    fn matrix_rows_hold_each_users_ratings_and_transpose_back() {
        let data = tiny();
        let m = data.user_matrix();
        assert_eq!((m.n_rows(), m.n_cols(), m.nnz()), (2, 3, 4));
        let (cols, classes) = m.row(0);
        assert_eq!(cols, &[0, 1]);
        assert_eq!(classes, &[4, 1]);
        assert_eq!(m.transpose().transpose(), m);
        assert_eq!(m.col_counts(), vec![2, 1, 1]);
    }

    #[test]
    fn split_is_seeded_and_drops_unknown_users_and_items() {
        let rows: Vec<(String, String, f32)> = (0..200)
            .map(|i| {
                (
                    format!("u{}", i % 20),
                    format!("i{}", i % 17),
                    (1 + i % 5) as f32,
                )
            })
            .collect();
        let data = Dataset::from_rows(
            RatingScale::ONE_TO_FIVE,
            rows.iter().map(|(u, i, v)| (u.as_str(), i.as_str(), *v)),
        )
        .unwrap();
        let a = data.split(0.25, 7).unwrap();
        let b = data.split(0.25, 7).unwrap();
        assert_eq!(a.test, b.test);
        assert_eq!(
            a.train.ratings.len() + a.test.len() + a.dropped,
            data.ratings.len()
        );
        assert_eq!(a.test.len() + a.dropped, 50);
        let c = data.split(0.25, 8).unwrap();
        assert_ne!(a.test, c.test);
    }
}
