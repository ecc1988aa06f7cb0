//! Training curves as an SVG chart: train and validation RMSE per epoch, for each RBM. Rendered
//! server-side (no script needed to look at it) by `plotters`, into a string.

use plotters::prelude::*;

use serde::{Deserialize, Serialize};

const SIZE: (u32, u32) = (720, 420);

/// A curve's legend label, colour, and (epoch, RMSE) points.
type Curve = (String, RGBColor, Vec<(f64, f64)>);

/// One epoch of one RBM: what a run's `progress` records of it and what the chart draws.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochPoint {
    pub epoch: usize,
    pub train_rmse: f64,
    pub valid_rmse: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot draw the training curves: {0}")]
pub struct PlotError(String);

/// The RMSE curves of the user-based and the item-based RBM's epochs so far, as an SVG document.
/// No epochs give an empty chart with its axes.
pub fn training_curves(user: &[EpochPoint], item: &[EpochPoint]) -> Result<String, PlotError> {
    let fail = |e: &dyn std::fmt::Display| PlotError(e.to_string());
    let mut curves: Vec<Curve> = Vec::new();
    // Train and validation colours of each side (matplotlib's first four).
    let user_colours = [RGBColor(31, 119, 180), RGBColor(255, 127, 14)];
    let item_colours = [RGBColor(44, 160, 44), RGBColor(214, 39, 40)];
    let sides = [("user", user, user_colours), ("item", item, item_colours)];
    for (name, epochs, colours) in sides {
        let train = epochs
            .iter()
            .map(|e| (e.epoch as f64, e.train_rmse))
            .collect();
        let valid: Vec<(f64, f64)> = epochs
            .iter()
            .filter_map(|e| Some((e.epoch as f64, e.valid_rmse?)))
            .collect();
        curves.push((format!("{name} RBM, train RMSE"), colours[0], train));
        curves.push((format!("{name} RBM, validation RMSE"), colours[1], valid));
    }
    curves.retain(|(_, _, points)| !points.is_empty());
    let points = || curves.iter().flat_map(|(_, _, p)| p.iter());
    let last_epoch = points().map(|p| p.0).fold(1.0, f64::max);
    let (low, high) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let (low, high) = match low.is_finite() {
        true => {
            let pad = ((high - low) * 0.1).max(0.005);
            (low - pad, high + pad)
        }
        false => (0.0, 1.0),
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("RMSE per epoch", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.5..last_epoch + 0.5, low..high)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("RMSE")
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 13))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.3}"))
            .draw()
            .map_err(|e| fail(&e))?;
        for (label, colour, points) in &curves {
            let colour = *colour;
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|e| fail(&e))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        if !curves.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| fail(&e))?;
        }
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(epoch: usize, train_rmse: f64, valid_rmse: Option<f64>) -> EpochPoint {
        EpochPoint {
            epoch,
            train_rmse,
            valid_rmse,
        }
    }

    #[test]
    fn every_curve_is_drawn_with_its_legend_and_axes() {
        let user = [
            epoch(1, 0.95, Some(0.97)),
            epoch(2, 0.90, Some(0.93)),
            epoch(3, 0.87, Some(0.92)),
        ];
        let item = [epoch(1, 0.99, None), epoch(2, 0.94, None)];
        let svg = training_curves(&user, &item).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        // Each text element's content is on a line of its own.
        let texts: Vec<&str> = svg.lines().collect();
        for text in [
            "RMSE per epoch",
            "epoch",
            "RMSE",
            "user RBM, train RMSE",
            "user RBM, validation RMSE",
            "item RBM, train RMSE",
            "0.900",
        ] {
            assert!(texts.contains(&text), "{text} is missing");
        }
        // The item side reported no validation RMSE: no empty curve, nor its legend.
        assert!(!svg.contains("item RBM, validation RMSE"));
        // One polyline per curve, with a point per epoch.
        let lines: Vec<&str> = svg
            .split("<polyline")
            .skip(1)
            .filter(|l| l.contains("stroke-width=\"2\""))
            .collect();
        let points = |line: &str| {
            let points = line.split("points=\"").nth(1).unwrap();
            points.split('"').next().unwrap().split_whitespace().count()
        };
        let mut counts: Vec<usize> = lines.iter().map(|l| points(l)).collect();
        counts.sort();
        // Three curves of 3, 3 and 2 epochs, and a 2-point legend mark for each.
        assert_eq!(counts, [2, 2, 2, 2, 3, 3], "{counts:?}");
    }

    #[test]
    fn no_epochs_give_an_empty_chart() {
        let svg = training_curves(&[], &[]).unwrap();
        assert!(svg.lines().any(|l| l == "epoch") && !svg.contains("train RMSE"));
    }
}
