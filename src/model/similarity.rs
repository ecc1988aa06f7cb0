//! "Items like this one": the measures item-to-item similarity can be computed by, and the one
//! the service uses.

use ndarray::Array2;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::kernels;
use super::rbm::Rbm;
use super::recommender::{Recommender, Scratch};

/// A measure of how alike two items are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Similarity {
    /// The v→h→v′ pass of a user whose one rating is the top rating of this item: the score (or,
    /// for a model that ranks by expected rating, the expected rating) that user gets for each
    /// item. What the model itself says people who love the item pick.
    FoldIn,
    /// Cosine of W[i] over all K classes: how the items' ratings move the user-based RBM's
    /// hidden units.
    RatingWeights,
    /// Cosine of Dimp[i] (joint or conditional RBMs): how the items' being rated moves them.
    ChoiceWeights,
    /// Cosine of the item-based RBM's ĥ of the items: what their raters have in common.
    ItemHidden,
}

impl Similarity {
    /// The measure `similar_items` uses: it ranked best on average over the data sets measured
    /// (README), and any model has it.
    pub const SERVED: Self = Self::FoldIn;

    pub const ALL: [Self; 4] = [
        Self::FoldIn,
        Self::RatingWeights,
        Self::ChoiceWeights,
        Self::ItemHidden,
    ];
}

/// A similarity measure ready to query a model by.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemSimilarity {
    kind: Similarity,
    /// For the cosine measures, the length of every item's vector.
    norms: Vec<f32>,
}

impl ItemSimilarity {
    /// `kind` for `model`; None if the model lacks what it is computed from.
    pub fn new(model: &Recommender, kind: Similarity) -> Option<Self> {
        let (rbm, item_rows) = (model.user_rbm(), model.item_rows());
        let norms = match kind {
            Similarity::FoldIn => Vec::new(),
            _ => {
                let (vectors, dim) = item_vectors(kind, rbm, item_rows)?;
                vectors
                    .par_chunks(dim)
                    .map(|row| kernels::dot(row, row).sqrt())
                    .collect()
            }
        };
        Some(Self { kind, norms })
    }

    /// How alike each item is to `item`, into `out` (one per item of `model`, the one this was
    /// built for).
    pub fn to_item(&self, model: &Recommender, item: u32, scratch: &mut Scratch, out: &mut [f32]) {
        match item_vectors(self.kind, model.user_rbm(), model.item_rows()) {
            None => {
                let (items, classes) = model.loved_alone(item);
                let mut expected = vec![0.0f32; out.len()];
                model.scores(
                    model.default_order(),
                    None,
                    &items,
                    &classes,
                    scratch,
                    out,
                    &mut expected,
                );
            }
            Some((vectors, dim)) => {
                let item = item as usize;
                let target = &vectors[item * dim..(item + 1) * dim];
                let target_norm = self.norms[item];
                out.par_iter_mut()
                    .zip(vectors.par_chunks(dim))
                    .zip(&self.norms)
                    .for_each(|((o, row), &norm)| {
                        let norms = norm * target_norm;
                        *o = if norms > 0.0 {
                            kernels::dot(target, row) / norms
                        } else {
                            0.0
                        };
                    });
            }
        }
    }
}

/// The vectors a cosine measure compares, item-major, and their length; None for `FoldIn` or a
/// model without them.
fn item_vectors<'m>(
    kind: Similarity,
    rbm: &'m Rbm,
    item_rows: Option<&'m Array2<f32>>,
) -> Option<(&'m [f32], usize)> {
    let (vectors, dim) = match kind {
        Similarity::FoldIn => return None,
        Similarity::RatingWeights => (rbm.weights().as_slice(), rbm.classes() * rbm.hidden()),
        Similarity::ChoiceWeights => (rbm.implicit()?.as_slice(), rbm.hidden()),
        Similarity::ItemHidden => {
            let rows = item_rows?;
            (rows.as_slice(), rows.ncols())
        }
    };
    Some((vectors.expect("contiguous"), dim.max(1)))
}

impl Recommender {
    /// The `limit` items most like `item` by `Similarity::SERVED`, most alike first, with how
    /// alike: the list of a user whose one rating is the item's top rating, through the screened
    /// `top_n`.
    pub fn similar_items(&self, item: u32, limit: usize) -> Vec<(u32, f32)> {
        let (items, classes) = self.loved_alone(item);
        self.top_n(
            self.default_order(),
            None,
            &items,
            &classes,
            limit,
            |a, b| a.cmp(&b),
            &mut Scratch::default(),
        )
        .into_iter()
        .map(|r| (r.item, r.score))
        .collect()
    }

    /// The ratings of a user whose one rating is the top rating of `item`: what `FoldIn` scores
    /// from.
    fn loved_alone(&self, item: u32) -> ([u32; 1], [u8; 1]) {
        ([item], [(self.scale().classes() - 1) as u8])
    }
}
