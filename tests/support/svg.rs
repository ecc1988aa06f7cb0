//! Reading the charts that `plot::training_curves` draws, for the tests of the CLI and the API.

/// Whether the chart has a text element reading exactly `text` (plotters puts each on a line of
/// its own).
pub fn has_text(svg: &str, text: &str) -> bool {
    svg.lines().any(|line| line == text)
}

/// How many points each drawn line has, curves and the legend's two-point marks alike.
pub fn line_points(svg: &str) -> Vec<usize> {
    svg.split("<polyline")
        .skip(1)
        .filter(|line| line.contains("stroke-width=\"2\""))
        .map(|line| {
            let points = line.split("points=\"").nth(1).unwrap();
            points.split('"').next().unwrap().split_whitespace().count()
        })
        .collect()
}
