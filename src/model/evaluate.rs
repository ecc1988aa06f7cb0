//! Accuracy and ranking metrics, and the batched predictions they are computed from.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::kernels;
use super::rbm::Rbm;
use super::simd;
use super::{Entry, RatingScale, SparseRatings};

/// The entries of about `rows` rows of a matrix of `n_rows`, spread evenly over them: every
/// stride-th row, so that a validation measure's cost does not grow with the data.
pub(crate) fn sample_rows(entries: &[Entry], n_rows: usize, rows: usize) -> Vec<Entry> {
    let stride = n_rows.div_ceil(rows).max(1) as u32;
    entries
        .iter()
        .filter(|r| r.row % stride == 0)
        .copied()
        .collect()
}

/// Groups of consecutive entries with the same row (entries must be sorted by row).
pub(crate) fn row_groups(entries: &[Entry]) -> Vec<&[Entry]> {
    entries.chunk_by(|a, b| a.row == b.row).collect()
}

simd::multiversion! {
    /// Mean-field predictions (ratings on the scale) for (row, column) queries sorted by row: ĥ from the
    /// row's ratings in `known`, then E[value] under p(v_col | ĥ). With `include_queries` a conditional
    /// RBM also counts the queried columns as rated (the paper's variant; never the headline number).
    pub fn predict / predict_avx2(
        rbm: &Rbm,
        known: &SparseRatings,
        queries: &[Entry],
        scale: RatingScale,
        include_queries: bool,
    ) -> Vec<f32> {
        row_groups(queries)
            .par_iter()
            .flat_map_iter(|group| {
                let (items, classes) = known.row(group[0].row as usize);
                let mut hidden = vec![0.0f32; rbm.hidden()];
                if include_queries {
                    let mut implicit: Vec<u32> = items.to_vec();
                    implicit.extend(group.iter().map(|q| q.col));
                    rbm.hidden_probabilities(items, classes, &implicit, &mut hidden);
                } else {
                    rbm.hidden_probabilities(items, classes, items, &mut hidden);
                }
                group
                    .iter()
                    .map(move |q| scale.value_at(rbm.expected_class(q.col as usize, &hidden)))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

pub fn rmse(predictions: &[f32], truth: &[Entry], scale: RatingScale) -> f64 {
    let sum: f64 = predictions
        .iter()
        .zip(truth)
        .map(|(&p, r)| (f64::from(p) - f64::from(scale.value_of(r.class))).powi(2))
        .sum();
    (sum / truth.len().max(1) as f64).sqrt()
}

pub fn mae(predictions: &[f32], truth: &[Entry], scale: RatingScale) -> f64 {
    let sum: f64 = predictions
        .iter()
        .zip(truth)
        .map(|(&p, r)| (f64::from(p) - f64::from(scale.value_of(r.class))).abs())
        .sum();
    sum / truth.len().max(1) as f64
}

/// Top-N ranking quality, averaged over test users with at least one relevant item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RankingMetrics {
    pub precision: f64,
    pub recall: f64,
    pub ndcg: f64,
    pub users: usize,
}

/// The `n` best-scored columns, best first, ties broken by the lower index; `skip` columns are left out.
pub fn top_n(scores: &[f32], n: usize, skip: impl Fn(u32) -> bool) -> Vec<u32> {
    top_n_by(scores, n, skip, |a, b| a.cmp(&b))
}

/// The `n` best-scored columns, best first, ties ordered by `tie`; `skip` columns are left out.
pub fn top_n_by(
    scores: &[f32],
    n: usize,
    skip: impl Fn(u32) -> bool,
    tie: impl Fn(u32, u32) -> std::cmp::Ordering,
) -> Vec<u32> {
    let candidates: Vec<u32> = (0..scores.len() as u32).filter(|&i| !skip(i)).collect();
    best_n(candidates, n, |a, b| {
        scores[*b as usize]
            .total_cmp(&scores[*a as usize])
            .then_with(|| tie(*a, *b))
    })
}

/// The `n` first of `candidates` in the order `better`, in that order.
pub fn best_n<T>(
    mut candidates: Vec<T>,
    n: usize,
    better: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> Vec<T> {
    if candidates.len() > n {
        candidates.select_nth_unstable_by(n, &better);
        candidates.truncate(n);
    }
    candidates.sort_unstable_by(better);
    candidates
}

/// For each row of `test` (a user): rank every column (item) not rated in `train` with `score`,
/// take the top `n`; relevant items are the user's test items rated at or above the scale's
/// relevance threshold.
pub fn ranking_metrics(
    train: &SparseRatings,
    test: &[Entry],
    scale: RatingScale,
    n: usize,
    score: impl Fn(u32, &mut [f32]) + Sync,
) -> RankingMetrics {
    let threshold = scale.relevance_threshold() - 1e-4;
    let mut sorted = test.to_vec();
    sorted.sort_by_key(|r| (r.row, r.col));
    let per_user: Vec<(f64, f64, f64)> = row_groups(&sorted)
        .par_iter()
        .filter_map(|group| {
            let relevant: Vec<u32> = group
                .iter()
                .filter(|r| scale.value_of(r.class) >= threshold)
                .map(|r| r.col)
                .collect();
            if relevant.is_empty() {
                return None;
            }
            let user = group[0].row;
            let mut scores = vec![0.0f32; train.n_cols()];
            score(user, &mut scores);
            let rated = train.row(user as usize).0;
            let top = top_n(&scores, n, |i| rated.binary_search(&i).is_ok());
            let mut hits = 0.0;
            let mut dcg = 0.0;
            for (rank, item) in top.iter().enumerate() {
                if relevant.contains(item) {
                    hits += 1.0;
                    dcg += 1.0 / (rank as f64 + 2.0).log2();
                }
            }
            let ideal: f64 = (0..relevant.len().min(n))
                .map(|rank| 1.0 / (rank as f64 + 2.0).log2())
                .sum();
            Some((hits / n as f64, hits / relevant.len() as f64, dcg / ideal))
        })
        .collect();
    let users = per_user.len();
    let mean =
        |f: fn(&(f64, f64, f64)) -> f64| per_user.iter().map(f).sum::<f64>() / users.max(1) as f64;
    RankingMetrics {
        precision: mean(|x| x.0),
        recall: mean(|x| x.1),
        ndcg: mean(|x| x.2),
        users,
    }
}

/// `ranking_metrics` of "items like the ones you love": each user's list ranks items by the sum of
/// their similarities to the user's training favourites (items rated at or above the relevance
/// threshold, or every rated item if none is). `similarities(j, out)` writes how alike every item
/// is to item j; it is called once per item.
pub fn similar_items_ranking(
    train: &SparseRatings,
    test: &[Entry],
    scale: RatingScale,
    n: usize,
    similarities: impl Fn(u32, &mut [f32]) + Sync,
) -> RankingMetrics {
    let d = train.n_cols();
    let mut matrix = vec![0.0f32; d * d];
    matrix
        .par_chunks_mut(d.max(1))
        .enumerate()
        .for_each(|(j, row)| similarities(j as u32, row));
    let threshold = scale.relevance_threshold() - 1e-4;
    ranking_metrics(train, test, scale, n, |user, out| {
        let (items, classes) = train.row(user as usize);
        let loved: Vec<u32> = items
            .iter()
            .zip(classes)
            .filter(|&(_, &c)| scale.value_of(c) >= threshold)
            .map(|(&i, _)| i)
            .collect();
        out.fill(0.0);
        for &f in if loved.is_empty() { items } else { &loved } {
            kernels::add_assign(out, &matrix[f as usize * d..(f as usize + 1) * d]);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_n_breaks_ties_by_index_and_skips() {
        let scores = [1.0, 3.0, 3.0, 2.0, 5.0];
        assert_eq!(top_n(&scores, 3, |i| i == 4), vec![1, 2, 3]);
        assert_eq!(top_n(&scores, 10, |_| false), vec![4, 1, 2, 3, 0]);
    }

    #[test]
    fn perfect_ranking_scores_one() {
        // One user, items 0..4; item 3 and 4 are relevant test items, item 0 is a training item.
        let train = SparseRatings::from_triples(1, 5, [(0u32, 0u32, 4u8)].into_iter());
        let test = [
            Entry {
                row: 0,
                col: 3,
                class: 4,
            },
            Entry {
                row: 0,
                col: 4,
                class: 3,
            },
            Entry {
                row: 0,
                col: 1,
                class: 0,
            },
        ];
        let metrics = ranking_metrics(&train, &test, RatingScale::ONE_TO_FIVE, 2, |_, out| {
            out.copy_from_slice(&[9.0, 0.0, 0.0, 2.0, 1.0]);
        });
        assert_eq!(metrics.users, 1);
        assert!((metrics.precision - 1.0).abs() < 1e-12 && (metrics.recall - 1.0).abs() < 1e-12);
        assert!((metrics.ndcg - 1.0).abs() < 1e-12);
    }

    #[test]
    fn similar_items_ranking_sums_similarities_to_the_favourites() {
        // Item 0 is loved (5 stars) and item 1 disliked (1 star): item 3 is like item 0 and item 2
        // like item 1, so item 3 tops the list and the relevant test item 3 is a hit at rank 1.
        let train = SparseRatings::from_triples(1, 4, [(0u32, 0u32, 4u8), (0, 1, 0)].into_iter());
        let test = [Entry {
            row: 0,
            col: 3,
            class: 4,
        }];
        let like = |j: u32, out: &mut [f32]| {
            out.fill(0.0);
            match j {
                0 => out[3] = 1.0,
                1 => out[2] = 5.0,
                _ => {}
            }
        };
        let metrics = similar_items_ranking(&train, &test, RatingScale::ONE_TO_FIVE, 1, like);
        assert_eq!(metrics.users, 1);
        assert!((metrics.precision - 1.0).abs() < 1e-12, "{metrics:?}");
    }
}
