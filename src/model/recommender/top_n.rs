//! Top-n lists: the f16 screening pass bounds every item's score, and only the items that can
//! still make the list are scored exactly, so a list equals the full f32 pass's.

use super::{Order, Ranked, Recommender, Scratch};
use crate::model::evaluate::best_n;
use crate::model::kernels;
use crate::model::simd;

/// How far a computed E[class] may stray outside [0, K − 1] (it is a ratio of sums of
/// non-negative terms, exact to a few units in the last place).
const ITEM_CLASS_SLACK: f32 = 1e-3;

/// The unrated items whose upper bound reaches the n-th largest lower bound of the unrated ones:
/// every item that can be in a top-n list.
fn reachable(lower: &[f32], upper: &[f32], rated: &[bool], n: usize) -> Vec<u32> {
    let unrated = |i: &usize| !rated[*i];
    let threshold = nth_largest((0..lower.len()).filter(unrated).map(|i| lower[i]), n);
    (0..lower.len())
        .filter(|i| unrated(i) && upper[*i] >= threshold)
        .map(|i| i as u32)
        .collect()
}

/// The n best of `candidates`, best first, ties ordered by `tie`, scored by `exact` lazily: in
/// order of their upper bounds, a group at a time, until the n-th best exact score so far beats
/// every bound left (an item whose bound equals it could still tie, so it is scored too).
fn best_of_bounded(
    mut candidates: Vec<u32>,
    upper: &[f32],
    n: usize,
    tie: impl Fn(u32, u32) -> std::cmp::Ordering,
    mut exact: impl FnMut(&[u32]) -> Vec<Ranked>,
) -> Vec<Ranked> {
    use kernels::LANES;
    candidates.sort_unstable_by(|&a, &b| upper[b as usize].total_cmp(&upper[a as usize]));
    let mut scored = Vec::with_capacity(n + 2 * LANES);
    let mut next = 0;
    while next < candidates.len() {
        if scored.len() >= n {
            let threshold = nth_largest(scored.iter().map(|r: &Ranked| r.score), n);
            if upper[candidates[next] as usize] < threshold {
                break;
            }
        }
        // The first group fills the list; later ones are two exact-kernel blocks.
        let want = if scored.is_empty() {
            n.next_multiple_of(LANES)
        } else {
            2 * LANES
        };
        let end = (next + want).min(candidates.len());
        scored.extend(exact(&candidates[next..end]));
        next = end;
    }
    best_ranked(scored, n, tie)
}

/// The n best of `candidates` by score, best first, ties ordered by `tie`.
fn best_ranked(
    candidates: Vec<Ranked>,
    n: usize,
    tie: impl Fn(u32, u32) -> std::cmp::Ordering,
) -> Vec<Ranked> {
    best_n(candidates, n, |a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| tie(a.item, b.item))
    })
}

/// The n-th largest of `values` (by `f32::total_cmp`), or −∞ if there are fewer than n; one pass
/// with a min-heap of the n largest so far.
fn nth_largest(values: impl Iterator<Item = f32>, n: usize) -> f32 {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    // f32 bits mapped so that integer order is total_cmp's order.
    let key = |x: f32| {
        let bits = x.to_bits() as i32;
        bits ^ (((bits >> 31) as u32) >> 1) as i32
    };
    let mut heap = BinaryHeap::with_capacity(n + 1);
    for value in values {
        if heap.len() < n {
            heap.push(Reverse((key(value), value.to_bits())));
        } else if let Some(Reverse((smallest, _))) = heap.peek()
            && key(value) > *smallest
        {
            heap.pop();
            heap.push(Reverse((key(value), value.to_bits())));
        }
    }
    match heap.peek() {
        Some(Reverse((_, bits))) if n > 0 && heap.len() == n => f32::from_bits(*bits),
        _ => f32::NEG_INFINITY,
    }
}

impl Recommender {
    /// The `n` best items the user has not rated, best first, ties ordered by `tie`: the same
    /// items and expected ratings as ranking `expected_ratings`, at a fraction of the memory
    /// traffic when n is small. The f16 screening pass bounds every item's score; only items whose
    /// upper bound reaches the n-th best lower bound are scored exactly.
    ///
    /// Under `Order::Score` of a joint model the screening bounds log p(rated) as well.
    #[allow(clippy::too_many_arguments)]
    pub fn top_n(
        &self,
        order: Order,
        user: Option<u32>,
        items: &[u32],
        classes: &[u8],
        n: usize,
        tie: impl Fn(u32, u32) -> std::cmp::Ordering,
        scratch: &mut Scratch,
    ) -> Vec<Ranked> {
        let d = self.items.len();
        let mut rated = std::mem::take(&mut scratch.rated);
        rated.clear();
        rated.resize(d, false);
        for &i in items {
            rated[i as usize] = true;
        }
        if n.saturating_mul(4) < d {
            let beta = self.ranking_weight.filter(|_| order == Order::Score);
            let best = self.screened(beta, user, items, classes, n, &rated, &tie, scratch);
            scratch.rated = rated;
            return best;
        }
        let mut score = std::mem::take(&mut scratch.scores);
        let mut expected = std::mem::take(&mut scratch.approx);
        score.resize(d, 0.0);
        expected.resize(d, 0.0);
        self.scores(
            order,
            user,
            items,
            classes,
            scratch,
            &mut score,
            &mut expected,
        );
        let all = (0..d as u32)
            .filter(|&i| !rated[i as usize])
            .map(|i| Ranked {
                item: i,
                score: score[i as usize],
                expected_rating: expected[i as usize],
            })
            .collect();
        scratch.rated = rated;
        scratch.scores = score;
        scratch.approx = expected;
        best_ranked(all, n, tie)
    }

    simd::multiversion! {
        /// `top_n` through the f16 screening, in the expected-rating order (`beta` None) or by the
        /// score log p(rated) + β·E[rating] (`beta` Some). An item's bounds are the sum of its terms'
        /// bounds: both terms are non-decreasing in what the screening bounds, and β ≥ 0.
        ///
        /// The item side's E[class] enters the rating through (1 − blend weight) and costs K·M
        /// multiply-adds an item, as much as the screening: it is first bounded by the range of
        /// E[class], then computed exactly for the items that can still reach the list, whose bounds
        /// it tightens; only the items that can reach it after that are scored exactly.
        #[allow(clippy::too_many_arguments)]
        fn screened / screened_avx2(
            &self,
            beta: Option<f32>,
            user: Option<u32>,
            items: &[u32],
            classes: &[u8],
            n: usize,
            rated: &[bool],
            tie: impl Fn(u32, u32) -> std::cmp::Ordering,
            scratch: &mut Scratch,
        ) -> Vec<Ranked> {
            self.user_hidden(items, classes, scratch);
            let d = self.items.len();
            let take = |buffer: &mut Vec<f32>| {
                let mut taken = std::mem::take(buffer);
                taken.resize(d, 0.0);
                taken
            };
            let (mut approx, mut radius) = (take(&mut scratch.approx), take(&mut scratch.radius));
            // Bounds of log p(rated) under the score order, 0 under the expected-rating order.
            let (mut rated_low, mut rated_high) =
                (take(&mut scratch.rated_low), take(&mut scratch.rated_high));
            let (mut lower, mut upper) = (take(&mut scratch.scores), take(&mut scratch.bound));
            match beta {
                Some(_) => self.catalog.screen_choice(
                    &self.user_rbm,
                    &scratch.hidden,
                    &mut approx,
                    &mut radius,
                    &mut rated_low,
                    &mut rated_high,
                ),
                None => {
                    self.catalog
                        .screen(&scratch.hidden, &mut approx, &mut radius);
                    rated_low.fill(0.0);
                    rated_high.fill(0.0);
                }
            }
            let weight = beta.unwrap_or(1.0);
            let bound = |i: usize, item_low: Option<f32>, item_high: Option<f32>| {
                (
                    rated_low[i] + weight * self.rating_of(approx[i] - radius[i], item_low),
                    rated_high[i] + weight * self.rating_of(approx[i] + radius[i], item_high),
                )
            };
            let item_user = user.filter(|_| self.item_side.is_some());
            let range = item_user.map(|_| {
                (
                    -ITEM_CLASS_SLACK,
                    (self.scale.classes() - 1) as f32 + ITEM_CLASS_SLACK,
                )
            });
            for i in 0..d {
                (lower[i], upper[i]) = bound(i, range.map(|r| r.0), range.map(|r| r.1));
            }
            let mut reach = reachable(&lower, &upper, rated, n);
            let mut item_based = take(&mut scratch.item_based);
            let exact = self.item_based_classes_of(
                item_user,
                reach.iter().copied(),
                &mut scratch.logits,
                &mut scratch.exact,
            );
            if let Some(exact) = exact {
                for (&i, &e) in reach.iter().zip(exact) {
                    let i = i as usize;
                    item_based[i] = e;
                    (lower[i], upper[i]) = bound(i, Some(e), Some(e));
                }
                let threshold = nth_largest(reach.iter().map(|&i| lower[i as usize]), n);
                reach.retain(|&i| upper[i as usize] >= threshold);
            }
            let item_based_of = |i: u32| item_user.map(|_| item_based[i as usize]);
            let best = best_of_bounded(reach, &upper, n, &tie, |group| {
                let mut expected = vec![0.0f32; group.len()];
                let mut log_rated = vec![0.0f32; group.len()];
                match beta {
                    Some(_) => self.catalog.choice_of(
                        &self.user_rbm,
                        &scratch.hidden,
                        group,
                        &mut expected,
                        &mut log_rated,
                    ),
                    None => self.catalog.expected_classes_of(
                        &self.user_rbm,
                        &scratch.hidden,
                        group,
                        &mut expected,
                    ),
                }
                group
                    .iter()
                    .zip(expected.iter().zip(&log_rated))
                    .map(|(&item, (&e, &log_rated))| {
                        let expected_rating = self.rating_of(e, item_based_of(item));
                        Ranked {
                            item,
                            score: log_rated + weight * expected_rating,
                            expected_rating,
                        }
                    })
                    .collect()
            });
            (scratch.approx, scratch.radius) = (approx, radius);
            (scratch.rated_low, scratch.rated_high) = (rated_low, rated_high);
            (scratch.scores, scratch.bound) = (lower, upper);
            scratch.item_based = item_based;
            best
        }
    }
}

#[cfg(test)]
mod tests {
    use super::nth_largest;

    #[test]
    fn nth_largest_follows_total_order_and_counts_ties() {
        let values = [0.5, -2.0, 3.0, 3.0, -0.0, 0.0, 7.5, -9.0];
        let mut sorted = values.to_vec();
        sorted.sort_by(|a: &f32, b| b.total_cmp(a));
        for n in 1..=values.len() {
            assert_eq!(
                nth_largest(values.iter().copied(), n).to_bits(),
                sorted[n - 1].to_bits(),
                "n={n}"
            );
        }
        assert_eq!(nth_largest(values.iter().copied(), 9), f32::NEG_INFINITY);
        assert_eq!(nth_largest(values.iter().copied(), 0), f32::NEG_INFINITY);
    }
}
