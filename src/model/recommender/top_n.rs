//! Top-n lists: the f16 screening pass bounds every item's score, and only the items that can
//! still make the list are scored exactly, so a list equals the full f32 pass's.

use super::{Order, Ranked, Recommender, Scratch};
use crate::model::catalog::Screening;
use crate::model::evaluate::best_n;
use crate::model::kernels;
use crate::model::simd;

/// How far a computed E[class] may stray outside [0, K − 1] (it is a ratio of sums of
/// non-negative terms, exact to a few units in the last place).
const ITEM_CLASS_SLACK: f32 = 1e-3;

/// Items whose item-based E[class] one step of `screened_list` computes exactly.
const ITEM_BASED_GROUP: usize = 32;

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

/// One user's query for `Recommender::top_lists`.
#[derive(Debug, Clone, Copy)]
pub struct TopQuery<'a> {
    pub order: Order,
    /// The user's index in the item-based RBM, if it knows the user.
    pub user: Option<u32>,
    /// The user's current ratings, sorted by item.
    pub items: &'a [u32],
    pub classes: &'a [u8],
    pub n: usize,
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
        tie: impl Fn(u32, u32) -> std::cmp::Ordering + Sync,
        scratch: &mut Scratch,
    ) -> Vec<Ranked> {
        let query = TopQuery {
            order,
            user,
            items,
            classes,
            n,
        };
        let mut lists = self.top_lists(&[query], tie, std::slice::from_mut(scratch));
        lists.pop().expect("one list per query")
    }

    /// `top_n` for several users at once, one scratch each: the screening pass, which reads the
    /// whole of W, reads it once for all of them, and each list is the one `top_n` gives alone.
    pub fn top_lists(
        &self,
        queries: &[TopQuery],
        tie: impl Fn(u32, u32) -> std::cmp::Ordering + Sync,
        scratches: &mut [Scratch],
    ) -> Vec<Vec<Ranked>> {
        assert!(scratches.len() >= queries.len(), "a scratch per query");
        let d = self.items.len();
        let mut lists = vec![Vec::new(); queries.len()];
        let mut screened = Vec::new();
        for ((query, scratch), list) in queries.iter().zip(scratches.iter_mut()).zip(&mut lists) {
            scratch.rated.clear();
            scratch.rated.resize(d, false);
            for &i in query.items {
                scratch.rated[i as usize] = true;
            }
            if query.n.saturating_mul(4) < d {
                screened.push((query, scratch, list));
            } else {
                *list = self.ranked_in_full(query, &tie, scratch);
            }
        }
        if !screened.is_empty() {
            self.screened(&mut screened, &tie);
        }
        lists
    }

    /// `top_n` by scoring every item.
    fn ranked_in_full(
        &self,
        query: &TopQuery,
        tie: impl Fn(u32, u32) -> std::cmp::Ordering,
        scratch: &mut Scratch,
    ) -> Vec<Ranked> {
        let d = self.items.len();
        let mut score = std::mem::take(&mut scratch.scores);
        let mut expected = std::mem::take(&mut scratch.approx);
        score.resize(d, 0.0);
        expected.resize(d, 0.0);
        let TopQuery {
            order,
            user,
            items,
            classes,
            n,
        } = *query;
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
            .filter(|&i| !scratch.rated[i as usize])
            .map(|i| Ranked {
                item: i,
                score: score[i as usize],
                expected_rating: expected[i as usize],
            })
            .collect();
        scratch.scores = score;
        scratch.approx = expected;
        best_ranked(all, n, tie)
    }

    /// β of the score order, None for the expected-rating order.
    pub(super) fn beta(&self, order: Order) -> Option<f32> {
        self.ranking_weight.filter(|_| order == Order::Score)
    }

    simd::multiversion! {
        /// `top_lists` through the f16 screening: ĥ of every user, one screening pass for them
        /// all, then each user's exact scoring, users in parallel. Each list goes to its slot.
        fn screened / screened_avx2(
            &self,
            users: &mut [(&TopQuery, &mut Scratch, &mut Vec<Ranked>)],
            tie: &(impl Fn(u32, u32) -> std::cmp::Ordering + Sync),
        ) {
            use rayon::prelude::*;
            let d = self.items.len();
            let mut screenings = Vec::with_capacity(users.len());
            for (query, scratch, _) in users.iter_mut() {
                self.user_hidden(query.items, query.classes, scratch);
                let Scratch {
                    hidden,
                    approx,
                    radius,
                    rated_low,
                    rated_high,
                    ..
                } = &mut **scratch;
                for buffer in [&mut *approx, &mut *radius, &mut *rated_low, &mut *rated_high] {
                    buffer.resize(d, 0.0);
                }
                let rated = match self.beta(query.order) {
                    Some(_) => Some((&mut rated_low[..], &mut rated_high[..])),
                    None => {
                        // log p(rated) does not enter the expected-rating order.
                        rated_low.fill(0.0);
                        rated_high.fill(0.0);
                        None
                    }
                };
                screenings.push(Screening {
                    hidden,
                    approx,
                    radius,
                    rated,
                });
            }
            self.catalog.screen(&mut screenings);
            drop(screenings);
            users.par_iter_mut().for_each(|(query, scratch, list)| {
                **list = self.screened_list(query, tie, scratch);
            });
        }
    }

    simd::multiversion! {
        /// One user's list from the screening's bounds in `scratch`: an item's bounds are the sum of
        /// its terms' bounds, since both terms are non-decreasing in what the screening bounds, and
        /// β ≥ 0.
        ///
        /// The item side's E[class] enters the rating through (1 − blend weight) and costs K·M
        /// multiply-adds an item, as much as the screening: it is first bounded by the range of
        /// E[class], then computed exactly for the items that can still reach the list, whose bounds
        /// it tightens; only the items that can reach it after that are scored exactly.
        fn screened_list / screened_list_avx2(
            &self,
            query: &TopQuery,
            tie: impl Fn(u32, u32) -> std::cmp::Ordering,
            scratch: &mut Scratch,
        ) -> Vec<Ranked> {
            let d = self.items.len();
            let (beta, user, n) = (self.beta(query.order), query.user, query.n);
            let take = |buffer: &mut Vec<f32>| {
                let mut taken = std::mem::take(buffer);
                taken.resize(d, 0.0);
                taken
            };
            let (approx, radius) = (take(&mut scratch.approx), take(&mut scratch.radius));
            let (rated_low, rated_high) = (take(&mut scratch.rated_low), take(&mut scratch.rated_high));
            let (mut lower, mut upper) = (take(&mut scratch.scores), take(&mut scratch.bound));
            let rated = std::mem::take(&mut scratch.rated);
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
            let mut reach = reachable(&lower, &upper, &rated, n);
            let mut item_based = take(&mut scratch.item_based);
            if item_user.is_some() {
                // Best bound first, a group at a time: each exact item-based value raises the item's
                // lower bound, and with it the n-th best, until no item left can reach it.
                reach.sort_unstable_by(|&a, &b| upper[b as usize].total_cmp(&upper[a as usize]));
                let mut done = 0;
                while done < reach.len() {
                    let threshold = nth_largest(reach.iter().map(|&i| lower[i as usize]), n);
                    if done >= n && upper[reach[done] as usize] < threshold {
                        break;
                    }
                    let group = &reach[done..(done + ITEM_BASED_GROUP).min(reach.len())];
                    let exact = self
                        .item_based_classes_of(
                            item_user,
                            group.iter().copied(),
                            &mut scratch.logits,
                            &mut scratch.exact,
                        )
                        .expect("an item-based user");
                    for (&i, &e) in group.iter().zip(exact) {
                        let i = i as usize;
                        item_based[i] = e;
                        (lower[i], upper[i]) = bound(i, Some(e), Some(e));
                    }
                    done += group.len();
                }
                reach.truncate(done);
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
            scratch.rated = rated;
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
