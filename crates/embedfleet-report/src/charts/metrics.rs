//! The comparison chart: one group of horizontal bars per metric, one bar per model, every metric
//! labelled, every value printed at its bar's end, the legend above the plot.

use super::{GRID_COLOR, MUTED_COLOR, TEXT_COLOR, model_color, nice_ticks, tick_label};
use crate::data::ModelResult;
use crate::svg::{Anchor, Svg, TextStyle, text_width};

const WIDTH: f64 = 760.0;
const MARGIN: f64 = 16.0;
const BAR: f64 = 14.0;
const BAR_GAP: f64 = 2.0;
const GROUP_GAP: f64 = 12.0;
const LABEL_SIZE: f64 = 12.0;
const VALUE_SIZE: f64 = 11.0;

/// The rows of the chart: the hit rate first, then every metric in the reference's order. With
/// one score function its prefix is dropped from the labels.
fn rows(models: &[ModelResult]) -> Vec<(String, Vec<f64>)> {
    let Some(first) = models.first() else { return Vec::new() };
    let single = first.functions().len() <= 1;
    let mut rows = vec![(format!("Hit rate@{}", first.hit_rate.k), models.iter().map(|m| m.hit_rate.rate).collect())];
    for key in first.metrics.keys() {
        let label = match key.split_once('-') {
            Some((_, short)) if single => short.to_owned(),
            Some((f, short)) => format!("{f} {short}"),
            None => key.clone(),
        };
        rows.push((label, models.iter().map(|m| m.metrics.get(key).copied().unwrap_or(f64::NAN)).collect()));
    }
    rows
}

/// The legend's text for a model: its name, and where it came from when that says more.
pub fn legend_label(model: &ModelResult) -> String {
    let source = model.source.trim_end_matches('/');
    if source.is_empty() || source == model.name { model.name.clone() } else { format!("{} ({})", model.name, tail(source, 44)) }
}

/// The end of a long path, which is the part that tells folders apart.
pub fn tail(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count <= n { s.to_owned() } else { format!("…{}", s.chars().skip(count - (n - 1)).collect::<String>()) }
}

/// The chart as an SVG document; None without models.
pub fn metrics_chart(models: &[ModelResult], title: &str) -> Option<String> {
    let rows = rows(models);
    if rows.is_empty() {
        return None;
    }
    let mut svg = Svg::new(WIDTH, 100.0);
    svg.text(MARGIN, 26.0, title, TextStyle { size: 15.0, bold: true, ..Default::default() });

    // Legend, wrapped into lines that fit the width.
    let legend_size = 12.0;
    let (mut x, mut y) = (MARGIN, 52.0);
    for (i, model) in models.iter().enumerate() {
        let label = legend_label(model);
        let w = 16.0 + text_width(&label, legend_size, false);
        if x > MARGIN && x + w > WIDTH - MARGIN {
            x = MARGIN;
            y += 20.0;
        }
        svg.rect(x, y - 10.0, 12.0, 12.0, model_color(i, models.len()), None);
        svg.text(x + 16.0, y, &label, TextStyle { size: legend_size, ..Default::default() });
        x += w + 24.0;
    }

    let label_width = rows.iter().map(|(l, _)| text_width(l, LABEL_SIZE, false)).fold(0.0, f64::max);
    let left = MARGIN + label_width + 10.0;
    // Room for the widest value label past a full bar.
    let right = text_width("0.0000", VALUE_SIZE, false) + 8.0 + MARGIN;
    let plot_w = WIDTH - left - right;
    let top = y + 22.0;
    let group_h = models.len() as f64 * (BAR + BAR_GAP) - BAR_GAP;
    let plot_h = rows.len() as f64 * (group_h + GROUP_GAP) - GROUP_GAP;
    let scale = |v: f64| left + v.clamp(0.0, 1.0) * plot_w;

    let ticks = nice_ticks(0.0, 1.0, 5);
    for t in &ticks {
        svg.line((scale(*t), top - 4.0), (scale(*t), top + plot_h + 4.0), GRID_COLOR, 1.0, None);
    }
    for (r, (label, values)) in rows.iter().enumerate() {
        let gy = top + r as f64 * (group_h + GROUP_GAP);
        svg.text(
            left - 10.0,
            gy + group_h / 2.0 + 0.35 * LABEL_SIZE,
            label,
            TextStyle { size: LABEL_SIZE, anchor: Anchor::End, ..Default::default() },
        );
        for (m, value) in values.iter().enumerate() {
            let by = gy + m as f64 * (BAR + BAR_GAP);
            let color = model_color(m, models.len());
            let hover = format!("{} {label}: {value:.4}", models[m].name);
            if value.is_finite() {
                svg.rect(left, by, scale(*value) - left, BAR, color, Some(&hover));
            }
            let text = if value.is_finite() { format!("{value:.4}") } else { "n/a".into() };
            let x = if value.is_finite() { scale(*value) + 4.0 } else { left + 4.0 };
            svg.text(
                x,
                by + BAR / 2.0 + 0.35 * VALUE_SIZE,
                &text,
                TextStyle { size: VALUE_SIZE, fill: TEXT_COLOR, halo: true, ..Default::default() },
            );
        }
    }
    let axis_y = top + plot_h + 6.0;
    svg.line((left, axis_y), (left + plot_w, axis_y), MUTED_COLOR, 1.0, None);
    for t in &ticks {
        svg.text(
            scale(*t),
            axis_y + 16.0,
            &tick_label(*t, 0.2),
            TextStyle { size: 11.0, anchor: Anchor::Middle, fill: MUTED_COLOR, ..Default::default() },
        );
    }
    svg.text(
        left + plot_w / 2.0,
        axis_y + 36.0,
        "score on the validation set (higher is better)",
        TextStyle { size: 12.0, anchor: Anchor::Middle, fill: MUTED_COLOR, ..Default::default() },
    );
    svg.set_height(axis_y + 48.0);
    Some(svg.finish(title))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::HitRate;
    use indexmap::IndexMap;

    fn model(name: &str, source: &str, functions: &[&str], v: f64) -> ModelResult {
        let mut metrics = IndexMap::new();
        for f in functions {
            for m in ["Accuracy@1", "NDCG@10"] {
                metrics.insert(format!("{f}-{m}"), v);
            }
        }
        ModelResult {
            name: name.into(),
            source: source.into(),
            hit_rate: HitRate { k: 5, hits: 1, total: 2, rate: 0.5 },
            metrics,
            questions: Vec::new(),
            depth: 100,
            step: None,
            ..Default::default()
        }
    }

    #[test]
    fn one_row_per_metric_with_every_model() {
        let models = [model("base", "a/b", &["cosine"], 0.5), model("finetuned", "out/model", &["cosine"], 0.75)];
        let r = rows(&models);
        let labels: Vec<&str> = r.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["Hit rate@5", "Accuracy@1", "NDCG@10"]);
        assert_eq!(r[2].1, [0.5, 0.75]);
        let two = [model("base", "a/b", &["cosine", "dot"], 0.5)];
        assert_eq!(rows(&two)[3].0, "dot Accuracy@1");
    }

    #[test]
    fn legend_names_the_source() {
        assert_eq!(
            legend_label(&model("base", "sentence-transformers/all-MiniLM-L6-v2", &[], 0.0)),
            "base (sentence-transformers/all-MiniLM-L6-v2)"
        );
        assert_eq!(tail("/a/very/long/path/to/some/folder/model", 12), "…older/model");
        assert_eq!(legend_label(&model("finetuned", "finetuned", &[], 0.0)), "finetuned");
    }

    #[test]
    fn bars_are_as_long_as_their_values() {
        let svg = metrics_chart(&[model("base", "b", &["cosine"], 0.5), model("tuned", "t", &["cosine"], 1.0)], "t").unwrap();
        // 0.5 and 1.0 bars: the full one is twice the half one.
        let widths: Vec<f64> = svg
            .split("<rect ")
            .skip(1)
            .filter(|r| r.split_once('>').is_some_and(|(_, rest)| rest.starts_with("<title>")))
            .map(|r| r.split("width=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(widths.len(), 6);
        assert!((widths[3] - 2.0 * widths[2]).abs() < 0.02, "{widths:?}");
        assert!(svg.contains(">0.5000<") && svg.contains(">1.0000<"));
    }
}
