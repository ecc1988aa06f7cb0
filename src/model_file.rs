//! The model file: safetensors with tensors `W`, `b`, `c` (and `Dimp`; `item.W`, `item.b`, `item.c`,
//! `item.Dimp`, `item.hidden` for the item-based side) plus string metadata: format version, rating
//! scale, id maps, blend weight, hyperparameters and metrics. Loads in Python with
//! `safetensors.numpy.load_file`. The same bytes are the blob the service stores per model version.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array, Array1, Array2, Array3, Dimension};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::model::{IdMap, ItemSide, ModelError, RatingScale, Rbm, Recommender, TrainConfig};

pub const FORMAT_VERSION: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("cannot read or write model file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a valid safetensors model: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    #[error("model file metadata {key}: {message}")]
    Metadata { key: &'static str, message: String },
    #[error(
        "model file format version {0} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    Version(String),
    #[error("model file tensor {name}: {message}")]
    Tensor { name: String, message: String },
    #[error("model file is inconsistent: {0}")]
    Model(#[from] ModelError),
}

/// A model with what it was trained with and how it scored.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFile {
    pub recommender: Recommender,
    pub config: TrainConfig,
    pub metrics: serde_json::Value,
}

/// A tensor's shape and little-endian f32 bytes.
type EncodedTensor = (Vec<usize>, Vec<u8>);

fn tensor_bytes<D: Dimension>(array: &Array<f32, D>) -> EncodedTensor {
    let bytes = array.iter().flat_map(|x| x.to_le_bytes()).collect();
    (array.shape().to_vec(), bytes)
}

impl ModelFile {
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelFileError> {
        let r = &self.recommender;
        let mut tensors: Vec<(String, EncodedTensor)> = Vec::new();
        let mut push_rbm = |prefix: &str, rbm: &Rbm| {
            tensors.push((format!("{prefix}W"), tensor_bytes(rbm.weights())));
            tensors.push((format!("{prefix}b"), tensor_bytes(rbm.visible_bias())));
            tensors.push((format!("{prefix}c"), tensor_bytes(rbm.hidden_bias())));
            if let Some(implicit) = rbm.implicit() {
                tensors.push((format!("{prefix}Dimp"), tensor_bytes(implicit)));
            }
        };
        push_rbm("", r.user_rbm());
        if let Some(side) = &r.item_side() {
            push_rbm("item.", &side.rbm);
            tensors.push(("item.hidden".to_string(), tensor_bytes(&side.item_hidden)));
        }
        let metadata: HashMap<String, String> = [
            ("format_version", FORMAT_VERSION.to_string()),
            ("scale", to_json(&r.scale())),
            ("users", to_json(&r.users())),
            ("items", to_json(&r.items())),
            ("blend_weight", r.blend_weight().to_string()),
            ("ranking_weight", to_json(&r.ranking_weight())),
            ("params", to_json(&self.config)),
            ("metrics", self.metrics.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, (shape, bytes))| {
                Ok((
                    name.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), bytes)?,
                ))
            })
            .collect::<Result<_, safetensors::SafeTensorError>>()?;
        Ok(safetensors::serialize(views, Some(metadata))?)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelFileError> {
        let (_, header) = SafeTensors::read_metadata(bytes)?;
        let tensors = SafeTensors::deserialize(bytes)?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let get = |key: &'static str| {
            metadata.get(key).ok_or(ModelFileError::Metadata {
                key,
                message: "missing".to_string(),
            })
        };
        let version = get("format_version")?;
        if version != FORMAT_VERSION {
            return Err(ModelFileError::Version(version.clone()));
        }
        fn parse<T: serde::de::DeserializeOwned>(
            key: &'static str,
            text: &str,
        ) -> Result<T, ModelFileError> {
            serde_json::from_str(text).map_err(|e| ModelFileError::Metadata {
                key,
                message: e.to_string(),
            })
        }
        let scale: RatingScale = parse("scale", get("scale")?)?;
        let scale = RatingScale::new(scale.min, scale.max, scale.step)?;
        let users: IdMap = parse("users", get("users")?)?;
        let items: IdMap = parse("items", get("items")?)?;
        let blend_weight: f32 = parse("blend_weight", get("blend_weight")?)?;
        // Absent from files written before joint RBMs: those rank by expected rating.
        let ranking_weight: Option<f32> = match metadata.get("ranking_weight") {
            Some(text) => parse("ranking_weight", text)?,
            None => None,
        };
        let config: TrainConfig = parse("params", get("params")?)?;
        let metrics: serde_json::Value = parse("metrics", get("metrics")?)?;

        // An RBM's W must have a row block per visible unit and one row per class of the scale:
        // scoring indexes both without further checks.
        let check_visible = |name: &str, rbm: &Rbm, units: usize, what: &str| {
            if rbm.visible() == units && rbm.classes() == scale.classes() {
                return Ok(());
            }
            Err(ModelFileError::Tensor {
                name: name.to_string(),
                message: format!(
                    "shape {:?} does not match {units} {what} × {} classes",
                    rbm.weights().shape(),
                    scale.classes()
                ),
            })
        };
        let user_rbm = read_rbm(&tensors, "")?;
        check_visible("W", &user_rbm, items.len(), "items")?;
        let item_side = if tensors.names().contains(&"item.W") {
            let rbm = read_rbm(&tensors, "item.")?;
            check_visible("item.W", &rbm, users.len(), "users")?;
            let item_hidden: Array2<f32> = read_tensor(&tensors, "item.hidden")?;
            if item_hidden.dim() != (rbm.hidden(), items.len()) {
                return Err(ModelFileError::Tensor {
                    name: "item.hidden".to_string(),
                    message: format!(
                        "shape {:?} does not match {} hidden × {} items",
                        item_hidden.shape(),
                        rbm.hidden(),
                        items.len()
                    ),
                });
            }
            Some(ItemSide { rbm, item_hidden })
        } else {
            None
        };
        if !(0.0..=1.0).contains(&blend_weight) {
            return Err(ModelFileError::Metadata {
                key: "blend_weight",
                message: format!("{blend_weight} is not in [0, 1]"),
            });
        }
        if let Some(beta) = ranking_weight
            && (!beta.is_finite() || user_rbm.implicit().is_none())
        {
            return Err(ModelFileError::Metadata {
                key: "ranking_weight",
                message: format!("{beta} needs a finite value and a joint RBM with a Dimp tensor"),
            });
        }
        let recommender = Recommender::new(
            scale,
            users,
            items,
            user_rbm,
            item_side,
            blend_weight,
            ranking_weight,
        );
        Ok(Self {
            recommender,
            config,
            metrics,
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), ModelFileError> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|source| ModelFileError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn load(path: &Path) -> Result<Self, ModelFileError> {
        let bytes = std::fs::read(path).map_err(|source| ModelFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }
}

fn read_rbm(tensors: &SafeTensors<'_>, prefix: &str) -> Result<Rbm, ModelFileError> {
    let weights: Array3<f32> = read_tensor(tensors, &format!("{prefix}W"))?;
    let visible_bias: Array2<f32> = read_tensor(tensors, &format!("{prefix}b"))?;
    let hidden_bias: Array1<f32> = read_tensor(tensors, &format!("{prefix}c"))?;
    let implicit_name = format!("{prefix}Dimp");
    let implicit = if tensors.names().iter().any(|n| *n == implicit_name) {
        Some(read_tensor::<ndarray::Ix2>(tensors, &implicit_name)?)
    } else {
        None
    };
    Ok(Rbm::from_parts(
        weights,
        visible_bias,
        hidden_bias,
        implicit,
    )?)
}

fn read_tensor<D: Dimension>(
    tensors: &SafeTensors<'_>,
    name: &str,
) -> Result<Array<f32, D>, ModelFileError> {
    let fail = |message: String| ModelFileError::Tensor {
        name: name.to_string(),
        message,
    };
    let view = tensors.tensor(name).map_err(|e| fail(e.to_string()))?;
    if view.dtype() != Dtype::F32 {
        return Err(fail(format!("dtype {:?}, expected F32", view.dtype())));
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let array =
        Array::from_shape_vec(view.shape().to_vec(), values).map_err(|e| fail(e.to_string()))?;
    array.into_dimensionality::<D>().map_err(|_| {
        fail(format!(
            "has {} dimensions, expected {}",
            view.shape().len(),
            D::NDIM.unwrap_or(0)
        ))
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("metadata values serialise to JSON")
}
