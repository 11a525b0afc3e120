//! `Information-Retrieval_evaluation_<name>_results.csv` in the reference's exact form, one row
//! appended per evaluation so the trainer can reuse it during training.

use crate::metrics::{MetricsConfig, RetrievalMetrics};
use crate::rank::ScoreFunction;
use std::io::Write;
use std::path::{Path, PathBuf};

pub fn csv_file_name(name: &str) -> String {
    format!("Information-Retrieval_evaluation_{name}_results.csv")
}

/// The evaluator name for `name` cut to `dim` dimensions: sentence-transformers' Matryoshka recipe
/// names each `InformationRetrievalEvaluator` `dim_<D>` beside `truncate_dim=D`; ours keep the
/// set's name in front (`val_dim_64`).
pub fn dim_csv_name(name: &str, dim: usize) -> String {
    format!("{name}_dim_{dim}")
}

pub fn csv_header(functions: &[ScoreFunction], config: &MetricsConfig) -> String {
    let mut cols = vec!["epoch".to_owned(), "steps".to_owned()];
    for f in functions {
        let n = f.name();
        cols.extend(config.accuracy_at_k.iter().map(|k| format!("{n}-Accuracy@{k}")));
        for k in &config.precision_recall_at_k {
            cols.push(format!("{n}-Precision@{k}"));
            cols.push(format!("{n}-Recall@{k}"));
        }
        cols.extend(config.mrr_at_k.iter().map(|k| format!("{n}-MRR@{k}")));
        cols.extend(config.ndcg_at_k.iter().map(|k| format!("{n}-NDCG@{k}")));
        cols.extend(config.map_at_k.iter().map(|k| format!("{n}-MAP@{k}")));
    }
    cols.join(",")
}

pub fn csv_row(epoch: i64, steps: i64, metrics: &[(ScoreFunction, RetrievalMetrics)]) -> String {
    let mut cells = vec![epoch.to_string(), steps.to_string()];
    for (_, m) in metrics {
        cells.extend(m.named().into_iter().map(|(_, v)| python_float(v)));
    }
    cells.join(",")
}

/// Appends a row, writing the header first when the file is new. Line endings are `\r\n`, as
/// Python's csv module writes them.
pub fn append_csv(
    dir: &Path,
    name: &str,
    epoch: i64,
    steps: i64,
    config: &MetricsConfig,
    metrics: &[(ScoreFunction, RetrievalMetrics)],
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(csv_file_name(name));
    let new = !path.exists();
    let functions: Vec<ScoreFunction> = metrics.iter().map(|(f, _)| *f).collect();
    let mut text = String::new();
    if new {
        text.push_str(&csv_header(&functions, config));
        text.push_str("\r\n");
    }
    text.push_str(&csv_row(epoch, steps, metrics));
    text.push_str("\r\n");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    file.write_all(text.as_bytes())?;
    Ok(path)
}

/// A float as Python's `repr` writes it: shortest round-trip digits, `1.0` not `1`, exponent
/// notation below 1e-4.
pub fn python_float(v: f64) -> String {
    if v == 0.0 {
        return "0.0".into();
    }
    if v.abs() < 1e-4 || v.abs() >= 1e16 {
        let s = format!("{v:e}");
        let (mantissa, exp) = s.split_once('e').expect("exponent format");
        let exp: i32 = exp.parse().expect("integer exponent");
        return format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    let s = v.to_string();
    if s.contains('.') { s } else { format!("{s}.0") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_look_like_python() {
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(0.0), "0.0");
        assert_eq!(python_float(0.1), "0.1");
        assert_eq!(python_float(2.0 / 3.0), "0.6666666666666666");
        assert_eq!(python_float(1e-5), "1e-05");
        assert_eq!(python_float(0.00012), "0.00012");
    }

    #[test]
    fn header_in_reference_order() {
        let h = csv_header(&[ScoreFunction::Cosine], &MetricsConfig::default());
        assert!(h.starts_with(
            "epoch,steps,cosine-Accuracy@1,cosine-Accuracy@3,cosine-Accuracy@5,cosine-Accuracy@10,cosine-Precision@1,cosine-Recall@1,"
        ));
        assert!(h.ends_with("cosine-MRR@10,cosine-NDCG@10,cosine-MAP@100"));
    }
}
