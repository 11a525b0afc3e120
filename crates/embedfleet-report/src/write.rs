//! Writing the report's files to a local folder, each atomically (a reader sees the old file or the
//! new one, never a part).

use crate::card::{ModelCard, ModelFacts, render};
use crate::charts::{metrics_chart, training_chart};
use crate::data::RunReport;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{location} is not what embedfleet wrote there ({message}); the run's results may be incomplete")]
    Malformed { location: String, message: String },
    #[error(transparent)]
    Store(#[from] embedfleet_core::StoreError),
    #[error(transparent)]
    Dataset(#[from] embedfleet_core::DatasetError),
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let err = |e| ReportError::Write { path: path.to_owned(), source: e };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The files of a report, by name: `report.html`, `metrics.svg` and, after training,
/// `training.svg`.
pub fn report_files(report: &RunReport) -> Vec<(&'static str, String)> {
    let mut files = vec![("report.html", crate::html::render(report))];
    if let Some(svg) = metrics_chart(&report.models, "Retrieval metrics on the validation set") {
        files.push(("metrics.svg", svg));
    }
    if let Some(svg) = crate::charts::dims_chart(&report.models, "NDCG@10 by embedding dimension (Matryoshka)") {
        files.push(("dims.svg", svg));
    }
    if let Some(svg) = report.curve.as_ref().and_then(training_chart) {
        files.push(("training.svg", svg));
    }
    files
}

/// Writes the report's files into `dir`; returns the path of `report.html`.
pub fn write_local_report(dir: &Path, report: &RunReport) -> Result<PathBuf, ReportError> {
    for (name, text) in report_files(report) {
        write_atomic(&dir.join(name), text.as_bytes())?;
    }
    Ok(dir.join("report.html"))
}

/// Writes the training chart alone (the trainer puts it beside the model).
pub fn write_training_chart(path: &Path, curve: &crate::data::TrainingCurve) -> Result<bool, ReportError> {
    match training_chart(curve) {
        Some(svg) => write_atomic(path, svg.as_bytes()).map(|_| true),
        None => Ok(false),
    }
}

/// Writes the comparison chart alone (the evaluator's `metrics.svg`).
pub fn write_metrics_chart(path: &Path, models: &[crate::data::ModelResult]) -> Result<bool, ReportError> {
    match metrics_chart(models, "Retrieval metrics on the validation set") {
        Some(svg) => write_atomic(path, svg.as_bytes()).map(|_| true),
        None => Ok(false),
    }
}

impl ModelFacts {
    /// Reads the facts from a sentence-transformers folder's own files, given as bytes so a folder
    /// in the store works the same as one on disk. Missing files leave defaults.
    pub fn from_files(pooling: Option<&[u8]>, sentence_bert: Option<&[u8]>, modules: Option<&[u8]>) -> Self {
        let json = |b: Option<&[u8]>| b.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok()).unwrap_or_default();
        let (pooling, sentence_bert, modules) = (json(pooling), json(sentence_bert), json(modules));
        let mode = ["cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken"]
            .iter()
            .find(|m| pooling[format!("pooling_mode_{m}")].as_bool() == Some(true))
            .map(|m| match *m {
                "cls_token" => "cls",
                "mean_tokens" => "mean",
                "max_tokens" => "max",
                "mean_sqrt_len_tokens" => "mean (sqrt length)",
                "weightedmean_tokens" => "weighted mean",
                _ => "last token",
            })
            .unwrap_or("mean");
        ModelFacts {
            dimension: pooling["word_embedding_dimension"].as_i64().unwrap_or(0),
            max_seq_length: sentence_bert["max_seq_length"].as_u64().unwrap_or(0) as usize,
            pooling: mode.to_owned(),
            normalize: modules.as_array().is_some_and(|m| m.iter().any(|e| e["type"].as_str().is_some_and(|t| t.ends_with("Normalize")))),
        }
    }

    pub fn from_folder(dir: &Path) -> Self {
        let read = |name: &str| std::fs::read(dir.join(name)).ok();
        let (p, s, m) = (read("1_Pooling/config.json"), read("sentence_bert_config.json"), read("modules.json"));
        Self::from_files(p.as_deref(), s.as_deref(), m.as_deref())
    }
}

/// Replaces the card of the model saved in `dir`, keeping everything else of the folder.
pub fn rewrite_card(dir: &Path, card: &ModelCard) -> Result<PathBuf, ReportError> {
    let path = dir.join("README.md");
    write_atomic(&path, render(card, &ModelFacts::from_folder(dir)).as_bytes())?;
    Ok(path)
}

impl embedfleet_core::Transient for ReportError {
    fn is_transient(&self) -> bool {
        match self {
            ReportError::Store(e) => embedfleet_core::Transient::is_transient(e),
            ReportError::Dataset(e) => embedfleet_core::Transient::is_transient(e),
            // A full or unwritable scratch disk may be fine on another worker or a minute later.
            ReportError::Write { .. } => true,
            ReportError::Malformed { .. } => false,
        }
    }
}
