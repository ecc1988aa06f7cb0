//! The categorical RBM of Salakhutdinov, Mnih & Hinton (2007): its parameters, conditionals, free
//! energy and predictions. Only rated visible units exist for a case, so every function here takes
//! the case's (column, class) pairs and touches those rows of W alone.

use ndarray::{Array1, Array2, Array3};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::ModelError;
use super::kernels;
use super::params::RbmParams;
use super::scale::MAX_CLASSES;
use super::simd;

/// How many rows ahead `hidden_input` asks for the rows it will add.
const PREFETCH_ROWS: usize = 4;

/// Parameters, f32 and row-major: `W[D][K][M]` so that `W[i][k][..]` is one contiguous M-vector,
/// `b[D][K]`, `c[M]`, and for the conditional RBM `Dimp[D][M]`, fed by which items a case rated.
#[derive(Debug, Clone, PartialEq)]
pub struct Rbm {
    pub(crate) weights: Array3<f32>,
    pub(crate) visible_bias: Array2<f32>,
    pub(crate) hidden_bias: Array1<f32>,
    pub(crate) implicit: Option<Array2<f32>>,
}

impl Rbm {
    /// A fresh model: W ~ N(0, init_std²), c = 0, and b[i][k] = log of item i's class frequencies
    /// smoothed towards the global frequencies by a Dirichlet prior of weight `prior`, so that the
    /// untrained model predicts each item's (smoothed) mean rating.
    pub fn initial(
        class_counts: &[u32],
        visible: usize,
        classes: usize,
        params: &RbmParams,
    ) -> Self {
        let (hidden, prior, init_std) = (params.hidden, params.bias_prior, params.init_std);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(params.seed);
        let normal =
            Normal::new(0.0f32, init_std).expect("init_std is checked to be finite and positive");
        let weights =
            Array3::from_shape_simple_fn((visible, classes, hidden), || normal.sample(&mut rng));
        let mut global = vec![1.0f64; classes];
        for (n, &count) in class_counts.iter().enumerate() {
            global[n % classes] += f64::from(count);
        }
        let total: f64 = global.iter().sum();
        let visible_bias = Array2::from_shape_fn((visible, classes), |(i, k)| {
            let row = &class_counts[i * classes..(i + 1) * classes];
            let n: f64 = row.iter().map(|&c| f64::from(c)).sum();
            let smoothed =
                (f64::from(row[k]) + f64::from(prior) * global[k] / total) / (n + f64::from(prior));
            smoothed.ln() as f32
        });
        let implicit =
            (params.conditional || params.choice).then(|| Array2::zeros((visible, hidden)));
        Self {
            weights,
            visible_bias,
            hidden_bias: Array1::zeros(hidden),
            implicit,
        }
    }

    /// Assembles a model from stored tensors, checking that their shapes agree.
    pub fn from_parts(
        weights: Array3<f32>,
        visible_bias: Array2<f32>,
        hidden_bias: Array1<f32>,
        implicit: Option<Array2<f32>>,
    ) -> Result<Self, ModelError> {
        let (d, k, m) = weights.dim();
        let mismatch = |name: &str, got: Vec<usize>, want: Vec<usize>| ModelError::ShapeMismatch {
            tensor: name.to_string(),
            got,
            expected: want,
        };
        if visible_bias.dim() != (d, k) {
            return Err(mismatch("b", visible_bias.shape().to_vec(), vec![d, k]));
        }
        if hidden_bias.len() != m {
            return Err(mismatch("c", hidden_bias.shape().to_vec(), vec![m]));
        }
        if let Some(implicit) = &implicit
            && implicit.dim() != (d, m)
        {
            return Err(mismatch("Dimp", implicit.shape().to_vec(), vec![d, m]));
        }
        let finite = weights
            .iter()
            .chain(&visible_bias)
            .chain(&hidden_bias)
            .all(|x| x.is_finite())
            && implicit.iter().flatten().all(|x| x.is_finite());
        if !finite {
            return Err(ModelError::NonFinite);
        }
        Ok(Self {
            weights,
            visible_bias,
            hidden_bias,
            implicit,
        })
    }

    pub fn visible(&self) -> usize {
        self.weights.dim().0
    }

    pub fn classes(&self) -> usize {
        self.weights.dim().1
    }

    pub fn hidden(&self) -> usize {
        self.weights.dim().2
    }

    pub fn weights(&self) -> &Array3<f32> {
        &self.weights
    }

    pub fn visible_bias(&self) -> &Array2<f32> {
        &self.visible_bias
    }

    pub fn hidden_bias(&self) -> &Array1<f32> {
        &self.hidden_bias
    }

    pub fn implicit(&self) -> Option<&Array2<f32>> {
        self.implicit.as_ref()
    }

    pub fn is_finite(&self) -> bool {
        self.weights
            .iter()
            .chain(&self.visible_bias)
            .chain(&self.hidden_bias)
            .all(|x| x.is_finite())
            && self.implicit.iter().flatten().all(|x| x.is_finite())
    }

    /// W[i], the K rows of one item.
    #[inline(always)]
    pub(crate) fn item_weights(&self, item: usize) -> &[f32] {
        let (_, k, m) = self.weights.dim();
        &self.weights.as_slice().expect("weights are contiguous")[item * k * m..(item + 1) * k * m]
    }

    /// `W[i][k]`, one contiguous M-vector.
    #[inline(always)]
    pub(crate) fn weight_row(&self, item: usize, class: usize) -> &[f32] {
        let (_, k, m) = self.weights.dim();
        let start = (item * k + class) * m;
        &self.weights.as_slice().expect("weights are contiguous")[start..start + m]
    }

    simd::multiversion! {
        /// c + Σ_{i rated} W[i][k_i] (+ Σ_{i ∈ implicit} Dimp[i]): the hidden units' total input.
        /// `implicit_items` is ignored by a model that is not conditional.
        pub fn hidden_input / hidden_input_avx2(
            &self,
            items: &[u32],
            classes: &[u8],
            implicit_items: &[u32],
            out: &mut [f32],
        ) {
            out.copy_from_slice(self.hidden_bias.as_slice().expect("contiguous"));
            // The rows lie K·M floats apart or more, past what the hardware prefetcher follows:
            // each is asked for a few rows ahead of its addition.
            for (n, (&i, &k)) in items.iter().zip(classes).enumerate() {
                let ahead = n + PREFETCH_ROWS;
                if let (Some(&i), Some(&k)) = (items.get(ahead), classes.get(ahead)) {
                    kernels::prefetch(self.weight_row(i as usize, k as usize));
                }
                kernels::add_assign(out, self.weight_row(i as usize, k as usize));
            }
            if let Some(implicit) = &self.implicit {
                let row = |i: u32| implicit.row(i as usize).to_slice().expect("contiguous");
                for (n, &i) in implicit_items.iter().enumerate() {
                    if let Some(&ahead) = implicit_items.get(n + PREFETCH_ROWS) {
                        kernels::prefetch(row(ahead));
                    }
                    kernels::add_assign(out, row(i));
                }
            }
        }
    }

    /// p(h_j = 1 | v) for every hidden unit.
    #[inline(always)]
    pub fn hidden_probabilities(
        &self,
        items: &[u32],
        classes: &[u8],
        implicit_items: &[u32],
        out: &mut [f32],
    ) {
        self.hidden_input(items, classes, implicit_items, out);
        for x in out.iter_mut() {
            *x = kernels::sigmoid(*x);
        }
    }

    /// b[i][k] + W[i][k]·h for each class k of visible unit i.
    #[inline(always)]
    pub fn visible_logits(&self, item: usize, hidden: &[f32], out: &mut [f32]) {
        self.visible_logits_each(item, [hidden], [out]);
    }

    /// `visible_logits` of one item for E hidden vectors at once (the same values, fewer loads).
    #[inline(always)]
    pub fn visible_logits_each<const E: usize>(
        &self,
        item: usize,
        hidden: [&[f32]; E],
        out: [&mut [f32]; E],
    ) {
        let k = self.classes();
        let bias = &self.visible_bias.as_slice().expect("contiguous")[item * k..(item + 1) * k];
        kernels::row_dots_each(self.item_weights(item), hidden, bias, out);
    }

    /// p(v_i = k | h), the softmax of the visible logits.
    #[inline(always)]
    pub fn visible_probabilities(&self, item: usize, hidden: &[f32], out: &mut [f32]) {
        self.visible_logits(item, hidden, out);
        kernels::softmax_in_place(out);
    }

    /// E[class of item i] under p(v_i | h); with mean-field h = p(h|v) this is the model's prediction.
    pub fn expected_class(&self, item: usize, hidden: &[f32]) -> f32 {
        let mut probabilities = [0.0f32; MAX_CLASSES];
        let probabilities = &mut probabilities[..self.classes()];
        self.visible_probabilities(item, hidden, probabilities);
        probabilities
            .iter()
            .enumerate()
            .map(|(k, p)| k as f32 * p)
            .sum()
    }

    /// F(v) = −Σ_{i rated} b[i][k_i] − Σ_j softplus(hidden input_j), in f64.
    pub fn free_energy(&self, items: &[u32], classes: &[u8], implicit_items: &[u32]) -> f64 {
        let mut input = vec![0.0f32; self.hidden()];
        self.hidden_input(items, classes, implicit_items, &mut input);
        let bias: f64 = items
            .iter()
            .zip(classes)
            .map(|(&i, &k)| f64::from(self.visible_bias[[i as usize, k as usize]]))
            .sum();
        -bias
            - input
                .iter()
                .map(|&x| kernels::softplus(f64::from(x)))
                .sum::<f64>()
    }
}

/// log σ(x) = −log(1 + e^{−x}), stable for either sign.
#[inline(always)]
pub(crate) fn log_sigmoid(x: f32) -> f32 {
    if x > 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}
