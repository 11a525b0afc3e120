//! Comparing models: the hit-rate table and the full metric table side by side, `report.json`,
//! the comparison chart (drawn by embedfleet-report), and `per_query.jsonl` (which questions got
//! better or worse).

use crate::Comparison;
use crate::csv::python_float;
use embedfleet_report::ModelResult;
use embedfleet_report::charts::dims::{ndcg_at, scored_dims};
use embedfleet_report::summary::PairedComparison;
use embedfleet_report::write::write_atomic;
use serde_json::json;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

pub use embedfleet_report::data::PRIMARY_METRIC;

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

/// The document-level hit rate (a top-k chunk from a page that answered), when the set says
/// which document each chunk is from; empty otherwise.
pub fn doc_hit_rate_table(models: &Comparison) -> String {
    let mut s = String::new();
    let Some(k) = models.values().find_map(|e| e.doc_hit_rate.map(|h| h.k)) else { return s };
    let _ = writeln!(s, "{:<24} {:>14} {:>7} {:>7}", "Model", format!("Doc hit rate@{k}"), "Hits", "Total");
    for (name, e) in models {
        if let Some(h) = e.doc_hit_rate {
            let _ = writeln!(s, "{:<24} {:>14.4} {:>7} {:>7}", name, h.rate, h.hits, h.total);
        }
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
    for metric in metric_names(models) {
        let _ = write!(s, "{metric:<22}");
        for e in models.values() {
            let _ = write!(s, " {:>14.4}", e.metric(&metric).unwrap_or(f64::NAN));
        }
        s.push('\n');
    }
    s
}

/// NDCG@10 and the hit rate at each Matryoshka dimension, one column pair per model; empty when no
/// model was scored at cut dimensions.
pub fn dims_table(models: &Comparison) -> String {
    let results = results(models);
    let dims = scored_dims(&results);
    if dims.is_empty() {
        return String::new();
    }
    let k = results.first().map(|r| r.hit_rate.k).unwrap_or(5);
    let mut s = String::new();
    let _ = write!(s, "{:<10}", "dims");
    for r in &results {
        let _ = write!(s, " {:>14} {:>10}", truncate(&format!("{} NDCG@10", r.name), 14), format!("hit@{k}"));
    }
    s.push('\n');
    for dim in dims {
        let _ = write!(s, "{dim:<10}");
        for r in &results {
            match r.dims.iter().find(|d| d.dim == dim) {
                Some(d) => {
                    let _ = write!(s, " {:>14.4} {:>10.4}", ndcg_at(r, dim).unwrap_or(f64::NAN), d.hit_rate.rate);
                }
                None => {
                    let _ = write!(s, " {:>14} {:>10}", "-", "-");
                }
            }
        }
        s.push('\n');
    }
    s
}

/// A plain sentence on whether the last model beats the first on the primary metric.
pub fn verdict(models: &Comparison) -> String {
    embedfleet_report::summary::verdict(&results(models)).text
}

/// Every model against the first, on NDCG@10 and the hit rate, with 95 % paired-bootstrap intervals.
pub fn comparisons(models: &Comparison) -> Vec<PairedComparison> {
    embedfleet_report::summary::all_comparisons(&results(models))
}

/// The intervals as a CSV beside the reference's per-model CSVs.
pub const COMPARISON_CSV: &str = "comparison.csv";

/// `model,base,measure,base_value,value,difference,ci_low,ci_high,questions,resamples,verdict`.
pub fn comparison_csv(comparisons: &[PairedComparison]) -> String {
    let mut s = String::from("model,base,measure,base_value,value,difference,ci_low,ci_high,questions,resamples,verdict\r\n");
    for c in comparisons {
        let cell = |t: &str| if t.contains([',', '"', '\n', '\r']) { format!("\"{}\"", t.replace('"', "\"\"")) } else { t.to_owned() };
        let _ = write!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{}\r\n",
            cell(&c.model),
            cell(&c.base),
            cell(&c.measure),
            python_float(c.base_value),
            python_float(c.value),
            python_float(c.interval.mean),
            python_float(c.interval.low),
            python_float(c.interval.high),
            c.interval.questions,
            c.interval.resamples,
            c.difference.as_str()
        );
    }
    s
}

/// The report's view of each evaluation, named as in `models` (sources unknown here).
pub fn results(models: &Comparison) -> Vec<ModelResult> {
    models.iter().map(|(name, e)| e.to_result(name, name)).collect()
}

fn metric_names(models: &Comparison) -> Vec<String> {
    models.values().next().map(|first| crate::named_metrics(&first.metrics).into_keys().collect()).unwrap_or_default()
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
        "comparisons": comparisons(models),
        "models": models.iter().map(|(name, e)| json!({
            "name": name,
            "hit_rate": e.hit_rate,
            "metrics": crate::named_metrics(&e.metrics),
            "dropped_queries": e.dropped_queries,
            "document_hit_rate": e.doc_hit_rate,
            "embeddings_digest": e.embeddings_digest,
            "timings": e.timings,
            "dims": e.dims.iter().map(|d| json!({
                "dim": d.dim,
                "hit_rate": d.hit_rate,
                "metrics": crate::named_metrics(&d.metrics),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    write_atomic(&dir.join("report.json"), &serde_json::to_vec_pretty(&report).expect("json")).map_err(std::io::Error::other)?;

    let mut lines = Vec::new();
    if let Some(first) = models.values().next() {
        for (i, outcome) in first.per_query.iter().enumerate() {
            let ranks: serde_json::Map<String, serde_json::Value> =
                models.iter().map(|(name, e)| (name.clone(), json!(e.per_query.get(i).and_then(|q| q.rank)))).collect();
            writeln!(lines, "{}", json!({"query_id": outcome.query_id, "rank": ranks}))?;
        }
    }
    write_atomic(&dir.join("per_query.jsonl"), &lines).map_err(std::io::Error::other)?;
    write_atomic(&dir.join(COMPARISON_CSV), comparison_csv(&comparisons(models)).as_bytes()).map_err(std::io::Error::other)?;
    embedfleet_report::write::write_metrics_chart(&dir.join("metrics.svg"), &results(models)).map_err(std::io::Error::other)?;
    Ok(())
}
