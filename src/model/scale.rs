//! Rating scales: the (min, max, step) a service declares, and the K classes of the categorical RBM.

use serde::{Deserialize, Serialize};

use super::ModelError;

/// A rating scale `min..=max` in increments of `step`. Class `k` (0-based) stands for `min + k·step`,
/// so a scale of 1..5 in steps of 1 has K = 5 classes and 0.5..5 in halves has K = 10.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RatingScale {
    pub min: f32,
    pub max: f32,
    pub step: f32,
}

/// Steps tried, coarsest first, when a scale is inferred from the data.
const CANDIDATE_STEPS: [f32; 6] = [1.0, 0.5, 0.25, 0.2, 0.1, 0.05];
/// More classes than this would make W[D][K][M] grow for no gain in a rating model; per-item
/// class buffers are arrays of this length, on the stack.
pub(crate) const MAX_CLASSES: usize = 100;
/// Tolerance for deciding that a value lies on the scale (ratings arrive as decimal text).
const ON_SCALE_TOLERANCE: f32 = 1e-3;

impl RatingScale {
    pub const ONE_TO_FIVE: RatingScale = RatingScale {
        min: 1.0,
        max: 5.0,
        step: 1.0,
    };
    pub const HALF_STARS: RatingScale = RatingScale {
        min: 0.5,
        max: 5.0,
        step: 0.5,
    };

    /// Checks that the scale is finite, ordered and has between 2 and 100 classes.
    pub fn new(min: f32, max: f32, step: f32) -> Result<Self, ModelError> {
        let invalid = |reason: &str| ModelError::InvalidScale {
            min,
            max,
            step,
            reason: reason.to_string(),
        };
        if !(min.is_finite() && max.is_finite() && step.is_finite()) {
            return Err(invalid("all three numbers must be finite"));
        }
        if step <= 0.0 {
            return Err(invalid("step must be positive"));
        }
        if max <= min {
            return Err(invalid("max must be greater than min"));
        }
        let span = (max - min) / step;
        if (span - span.round()).abs() > ON_SCALE_TOLERANCE {
            return Err(invalid("max - min must be a whole number of steps"));
        }
        let classes = span.round() as usize + 1;
        if classes > MAX_CLASSES {
            return Err(invalid("more than 100 rating classes"));
        }
        Ok(Self { min, max, step })
    }

    /// Parses `min:max:step`, e.g. `1:5:1` or `0.5:5:0.5`.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let parts: Vec<&str> = text.split(':').collect();
        let numbers: Option<Vec<f32>> = parts.iter().map(|p| p.trim().parse().ok()).collect();
        match numbers.as_deref() {
            Some([min, max, step]) => Self::new(*min, *max, *step),
            _ => Err(ModelError::InvalidScaleText(text.to_string())),
        }
    }

    /// The coarsest scale from `min` to `max` of the observed values on which every value lies.
    pub fn infer(values: impl IntoIterator<Item = f32>) -> Result<Self, ModelError> {
        let values: Vec<f32> = values.into_iter().collect();
        let min = values.iter().copied().fold(f32::INFINITY, f32::min);
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if values.is_empty() || !min.is_finite() || !max.is_finite() {
            return Err(ModelError::EmptyData);
        }
        // A data set holding a single value still needs two classes to be a scale.
        let max = if max > min { max } else { min + 1.0 };
        CANDIDATE_STEPS
            .iter()
            .filter_map(|&step| Self::new(min, max, step).ok())
            .find(|scale| values.iter().all(|&v| scale.class_of(v).is_ok()))
            .ok_or(ModelError::NoScaleFits { min, max })
    }

    /// K, the number of rating classes.
    pub fn classes(&self) -> usize {
        ((self.max - self.min) / self.step).round() as usize + 1
    }

    /// The class index of `value`, or an error naming the value if it is off the scale.
    pub fn class_of(&self, value: f32) -> Result<u8, ModelError> {
        let position = (value - self.min) / self.step;
        let class = position.round();
        if !value.is_finite()
            || (position - class).abs() > ON_SCALE_TOLERANCE
            || class < 0.0
            || class as usize >= self.classes()
        {
            return Err(ModelError::OffScale {
                value,
                scale: *self,
            });
        }
        Ok(class as u8)
    }

    /// The rating a class stands for.
    pub fn value_of(&self, class: u8) -> f32 {
        self.min + self.step * f32::from(class)
    }

    /// The rating for a fractional class position, as produced by an expectation over classes.
    /// The value is affine in the class, so E[value] = value(E[class]).
    pub fn value_at(&self, class_position: f32) -> f32 {
        (self.min + self.step * class_position).clamp(self.min, self.max)
    }

    /// Lowest rating counted as relevant in ranking metrics: 4 on a 1..5 scale, 4.0 for half stars;
    /// on other scales the same fraction (3/4) of the way from min to max.
    pub fn relevance_threshold(&self) -> f32 {
        if self.max == 5.0 {
            4.0
        } else {
            self.min + 0.75 * (self.max - self.min)
        }
    }
}

impl std::fmt::Display for RatingScale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{} step {}", self.min, self.max, self.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_min_max_and_step() {
        assert_eq!(RatingScale::ONE_TO_FIVE.classes(), 5);
        assert_eq!(RatingScale::HALF_STARS.classes(), 10);
        assert_eq!(RatingScale::HALF_STARS.class_of(0.5).unwrap(), 0);
        assert_eq!(RatingScale::HALF_STARS.class_of(5.0).unwrap(), 9);
        assert_eq!(RatingScale::HALF_STARS.value_of(6), 3.5);
    }

    #[test]
    fn off_scale_values_are_errors_naming_the_value() {
        for bad in [0.0, 5.5, 3.25, f32::NAN] {
            let err = RatingScale::HALF_STARS
                .class_of(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&bad.to_string()), "{err}");
        }
        assert!(RatingScale::ONE_TO_FIVE.class_of(4.5).is_err());
    }

    #[test]
    fn inference_picks_the_coarsest_step() {
        assert_eq!(
            RatingScale::infer([1.0, 3.0, 5.0]).unwrap(),
            RatingScale::ONE_TO_FIVE
        );
        assert_eq!(
            RatingScale::infer([0.5, 3.0, 5.0]).unwrap(),
            RatingScale::HALF_STARS
        );
        assert_eq!(
            RatingScale::parse("0.5:5:0.5").unwrap(),
            RatingScale::HALF_STARS
        );
        assert!(RatingScale::parse("5:1:1").is_err());
        assert!(RatingScale::parse("five").is_err());
    }
}
