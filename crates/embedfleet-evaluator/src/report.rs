//! Comparing models: the hit-rate table and the full metric table side by side, `report.json`,
//! a bar chart of every metric per model, and `per_query.jsonl` (which questions got better or worse).

use crate::{Comparison, Evaluation};
use plotters::prelude::*;
use serde_json::json;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// The metric that decides whether fine-tuning helped.
pub const PRIMARY_METRIC: &str = "NDCG@10";

pub fn hit_rate_table(models: &Comparison) -> String {
    let mut s = String::new();
    let base = models.values().next().map(|e| e.hit_rate.rate);
    let k = models.values().next().map(|e| e.hit_rate.k).unwrap_or(5);
    let _ = writeln!(s, "{:<24} {:>10} {:>7} {:>7} {:>12}", "Model", format!("Hit Rate@{k}"), "Hits", "Total", "vs first");
    for (name, e) in models {
        let rel = match base {
            Some(b) if b > 0.0 => format!("{:+.1}%", (e.hit_rate.rate / b - 1.0) * 100.0),
            _ => "-".into(),
        };
        let _ = writeln!(s, "{:<24} {:>10.4} {:>7} {:>7} {:>12}", name, e.hit_rate.rate, e.hit_rate.hits, e.hit_rate.total, rel);
    }
    s
}

pub fn metric_table(models: &Comparison) -> String {
    let mut s = String::new();
    let _ = write!(s, "{:<22}", "metric");
    for name in models.keys() {
        let _ = write!(s, " {:>14}", truncate(name, 14));
    }
    s.push('\n');
    for (metric, _) in metric_names(models) {
        let _ = write!(s, "{metric:<22}");
        for e in models.values() {
            let _ = write!(s, " {:>14.4}", e.metric(&metric).unwrap_or(f64::NAN));
        }
        s.push('\n');
    }
    s
}

/// A plain sentence on whether the last model beats the first on the primary metric.
pub fn verdict(models: &Comparison) -> String {
    let (Some((base_name, base)), Some((last_name, last))) = (models.first(), models.last()) else {
        return String::new();
    };
    if models.len() < 2 {
        return String::new();
    }
    let (b, f) = (base.metric(PRIMARY_METRIC).unwrap_or(0.0), last.metric(PRIMARY_METRIC).unwrap_or(0.0));
    if f > b {
        format!("{last_name} is better than {base_name}: {PRIMARY_METRIC} {f:.4} vs {b:.4} ({:+.4}).", f - b)
    } else {
        format!(
            "{last_name} is NOT better than {base_name}: {PRIMARY_METRIC} {f:.4} vs {b:.4} ({:+.4}). Keep the base model, or fine-tune with more data or other settings.",
            f - b
        )
    }
}

fn metric_names(models: &Comparison) -> Vec<(String, f64)> {
    let Some(first) = models.values().next() else { return Vec::new() };
    first
        .metrics
        .iter()
        .flat_map(|(f, m)| m.named().into_iter().map(move |(n, v)| (format!("{}-{n}", f.name()), v)))
        .collect()
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_owned() } else { s.chars().take(n).collect() }
}

/// `report.json`, `per_query.jsonl` and `metrics.svg` in `dir`.
pub fn write_report(dir: &Path, models: &Comparison) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let report = json!({
        "primary_metric": PRIMARY_METRIC,
        "verdict": verdict(models),
        "models": models.iter().map(|(name, e)| json!({
            "name": name,
            "hit_rate": e.hit_rate,
            "metrics": metric_names(&Comparison::from([(name.clone(), e.clone())]))
                .into_iter()
                .map(|(n, v)| (n, json!(v)))
                .collect::<serde_json::Map<_, _>>(),
            "dropped_queries": e.dropped_queries,
            "timings": e.timings,
        })).collect::<Vec<_>>(),
    });
    atomic_write(&dir.join("report.json"), &serde_json::to_vec_pretty(&report).expect("json"))?;

    let mut lines = Vec::new();
    if let Some(first) = models.values().next() {
        for (i, outcome) in first.per_query.iter().enumerate() {
            let ranks: serde_json::Map<String, serde_json::Value> =
                models.iter().map(|(name, e)| (name.clone(), json!(e.per_query.get(i).and_then(|q| q.rank)))).collect();
            writeln!(lines, "{}", json!({"query_id": outcome.query_id, "rank": ranks}))?;
        }
    }
    atomic_write(&dir.join("per_query.jsonl"), &lines)?;
    chart(&dir.join("metrics.svg"), models)
}

fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// Grouped bars: one group per metric, one bar per model.
fn chart(path: &Path, models: &Comparison) -> std::io::Result<()> {
    let names: Vec<String> = metric_names(models).into_iter().map(|(n, _)| n).collect();
    let evaluations: Vec<(&String, &Evaluation)> = models.iter().collect();
    let groups = names.len().max(1);
    let per = evaluations.len().max(1);
    let width = (160 + groups * (per * 14 + 14)).max(640) as u32;
    let tmp = path.with_extension("partial.svg");
    {
        let root = SVGBackend::new(&tmp, (width, 460)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Retrieval metrics on the validation set", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(110)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..groups as f64, 0f64..1.0f64)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups)
            .x_label_formatter(&|x| names.get(x.floor() as usize).cloned().unwrap_or_default())
            .x_label_style(("sans-serif", 11).into_font().transform(FontTransform::Rotate90))
            .y_desc("score")
            .draw()
            .map_err(|e| err(&e))?;
        let bar = 0.8 / per as f64;
        for (m, (model, e)) in evaluations.iter().enumerate() {
            let color = Palette99::pick(m).to_rgba();
            let bars: Vec<_> = names
                .iter()
                .enumerate()
                .map(|(g, n)| {
                    let x0 = g as f64 + 0.1 + m as f64 * bar;
                    Rectangle::new([(x0, 0.0), (x0 + bar, e.metric(n).unwrap_or(0.0))], color.filled())
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|e| err(&e))?
                .label(model.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    std::fs::rename(tmp, path)
}
