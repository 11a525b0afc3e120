//! The Matryoshka chart: NDCG@10 of each model with its embeddings cut to each dimension, the
//! dimensions evenly spaced from the largest (left) to the smallest (right).

use super::{GRID_COLOR, MUTED_COLOR, model_color, nice_ticks, tick_label};
use crate::data::{ModelResult, PRIMARY_METRIC};
use crate::svg::{Anchor, Svg, TextStyle, text_width};

const WIDTH: f64 = 760.0;
const MARGIN: f64 = 16.0;
const TICK_SIZE: f64 = 11.0;
const TITLE_SIZE: f64 = 13.0;
const LEGEND_SIZE: f64 = 12.0;
const PLOT_HEIGHT: f64 = 220.0;

/// The dimensions any model was scored at, largest first.
pub fn scored_dims(models: &[ModelResult]) -> Vec<usize> {
    let mut dims: Vec<usize> = models.iter().flat_map(|m| m.dims.iter().map(|d| d.dim)).collect();
    dims.sort_unstable_by(|a, b| b.cmp(a));
    dims.dedup();
    dims
}

/// A model's NDCG@10 (first score function) at `dim`.
pub fn ndcg_at(model: &ModelResult, dim: usize) -> Option<f64> {
    let d = model.dims.iter().find(|d| d.dim == dim)?;
    d.metrics.iter().find(|(k, _)| k.ends_with(&format!("-{PRIMARY_METRIC}"))).map(|(_, v)| *v)
}

/// None when no model was scored at cut dimensions.
pub fn dims_chart(models: &[ModelResult], title: &str) -> Option<String> {
    let dims = scored_dims(models);
    if dims.is_empty() {
        return None;
    }
    let values: Vec<f64> = models.iter().flat_map(|m| dims.iter().filter_map(|&d| ndcg_at(m, d))).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let ticks = nice_ticks(lo, hi, 4);
    let step = if ticks.len() > 1 { ticks[1] - ticks[0] } else { 1.0 };
    let (y_lo, y_hi) = (ticks.first().copied().unwrap_or(lo), ticks.last().copied().unwrap_or(hi));

    let mut svg = Svg::new(WIDTH, 0.0);
    let baseline = MARGIN + TITLE_SIZE;
    let title_box = svg.text(MARGIN, baseline, title, TextStyle { size: TITLE_SIZE, bold: true, ..Default::default() });
    // The legend on its own line under the title, wrapping when full: never over the lines.
    let (mut x, mut y) = (MARGIN, title_box.y1 + 20.0);
    for (i, m) in models.iter().enumerate() {
        let w = 26.0 + text_width(&m.name, LEGEND_SIZE, false);
        if x + w > WIDTH - MARGIN {
            x = MARGIN;
            y += 18.0;
        }
        svg.line((x, y - 4.0), (x + 20.0, y - 4.0), model_color(i, models.len()), 2.5, None);
        svg.text(x + 26.0, y, &m.name, TextStyle { size: LEGEND_SIZE, fill: MUTED_COLOR, ..Default::default() });
        x += w + 18.0;
    }

    let labels: Vec<String> = ticks.iter().map(|t| tick_label(*t, step)).collect();
    let label_w = labels.iter().map(|l| text_width(l, TICK_SIZE, false)).fold(0.0, f64::max);
    let left = MARGIN + label_w.max(30.0) + 8.0;
    let right = WIDTH - MARGIN - 24.0;
    // Room under the legend for the axis label and a value label above the highest point.
    let top = y + 40.0;
    let bottom = top + PLOT_HEIGHT;
    let y_of = |v: f64| bottom - (v - y_lo) / (y_hi - y_lo).max(1e-12) * (bottom - top);
    // Evenly spaced columns, a half column of room at each end.
    let column = (right - left) / dims.len() as f64;
    let x_of = |i: usize| left + column * (i as f64 + 0.5);
    for (t, label) in ticks.iter().zip(&labels) {
        let ty = y_of(*t);
        svg.line((left, ty), (right, ty), GRID_COLOR, 1.0, None);
        svg.text(
            left - 6.0,
            ty + 0.35 * TICK_SIZE,
            label,
            TextStyle { size: TICK_SIZE, anchor: Anchor::End, fill: MUTED_COLOR, ..Default::default() },
        );
    }
    svg.line((left, bottom), (right, bottom), MUTED_COLOR, 1.0, None);
    for (i, dim) in dims.iter().enumerate() {
        let dx = x_of(i);
        svg.line((dx, bottom), (dx, bottom + 4.0), MUTED_COLOR, 1.0, None);
        svg.text(
            dx,
            bottom + 16.0,
            &dim.to_string(),
            TextStyle { size: TICK_SIZE, anchor: Anchor::Middle, fill: MUTED_COLOR, ..Default::default() },
        );
    }
    let axis_y = bottom + 34.0;
    svg.text(
        (left + right) / 2.0,
        axis_y,
        "embedding dimensions kept",
        TextStyle { size: TICK_SIZE, anchor: Anchor::Middle, fill: MUTED_COLOR, ..Default::default() },
    );
    svg.text(
        MARGIN,
        top - 14.0,
        &format!("cosine {PRIMARY_METRIC}"),
        TextStyle { size: TICK_SIZE, fill: MUTED_COLOR, ..Default::default() },
    );

    for (i, m) in models.iter().enumerate() {
        let color = model_color(i, models.len());
        let points: Vec<(f64, f64)> = dims.iter().enumerate().filter_map(|(j, &d)| ndcg_at(m, d).map(|v| (x_of(j), y_of(v)))).collect();
        svg.polyline(&points, color, 2.5, 1.0);
        for (j, &d) in dims.iter().enumerate() {
            if let Some(v) = ndcg_at(m, d) {
                svg.circle(x_of(j), y_of(v), 4.0, color, Some(("#ffffff", 1.5)), Some(&format!("{} at {d} dimensions: {v:.4}", m.name)));
            }
        }
    }
    // Every model's value beside its point: left of the first column (the lines leave it to the
    // right), right of the others. Labels of one column are stacked in the order of their points,
    // at least a line apart, so close values do not print over each other.
    let line = TICK_SIZE + 2.0;
    for (j, &d) in dims.iter().enumerate() {
        let mut column: Vec<(usize, f64, f64)> =
            models.iter().enumerate().filter_map(|(i, m)| ndcg_at(m, d).map(|v| (i, v, y_of(v)))).collect();
        column.sort_by(|a, b| a.2.total_cmp(&b.2));
        let (x, anchor) = if j == 0 { (x_of(j) - 9.0, Anchor::End) } else { (x_of(j) + 9.0, Anchor::Start) };
        let mut last_baseline = f64::NEG_INFINITY;
        for (i, v, py) in column {
            let baseline = (py + 4.0).max(last_baseline + line);
            svg.text(
                x,
                baseline,
                &format!("{v:.3}"),
                TextStyle { size: TICK_SIZE, anchor, fill: model_color(i, models.len()), halo: true, bold: i + 1 == models.len() },
            );
            last_baseline = baseline;
        }
    }
    svg.set_height(axis_y + MARGIN);
    Some(svg.finish(title))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DimResult, HitRate};

    fn model(name: &str, at: &[(usize, f64)]) -> ModelResult {
        ModelResult {
            name: name.into(),
            source: name.into(),
            hit_rate: HitRate { k: 5, hits: 0, total: 10, rate: 0.0 },
            metrics: Default::default(),
            questions: Vec::new(),
            depth: 100,
            step: None,
            dims: at
                .iter()
                .map(|&(dim, v)| DimResult {
                    dim,
                    hit_rate: HitRate { k: 5, hits: 0, total: 10, rate: 0.0 },
                    metrics: [("cosine-NDCG@10".to_owned(), v)].into_iter().collect(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn one_point_per_model_and_dimension_and_no_chart_without_dims() {
        assert!(dims_chart(&[model("base", &[])], "t").is_none());
        let models = [model("base", &[(384, 0.80), (64, 0.70)]), model("finetuned", &[(64, 0.78), (384, 0.88), (128, 0.85)])];
        assert_eq!(scored_dims(&models), [384, 128, 64]);
        let svg = dims_chart(&models, "NDCG@10 by dimension").unwrap();
        assert_eq!(svg.matches("<circle").count(), 5, "base lacks 128");
        for label in ["384", "128", "64", "0.880", "0.780", "0.850", "0.800", "0.700", "embedding dimensions kept"] {
            assert!(svg.contains(&format!(">{label}<")), "{label}");
        }
    }
}
