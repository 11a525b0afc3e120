//! The fleet's report. The evaluators store each checkpoint's [`ModelResult`] and the trainer its
//! [`FleetTraining`] under the run's `report-data/`; when the run is finalized the coordinator
//! calls [`write_run_report`], which reads them back with the validation set and writes
//! `report.html`, `metrics.svg` and `training.svg` beside the results, and the model's card.

use crate::card::{ModelCard, ModelFacts, base_model_name, render};
use crate::data::{DatasetFacts, LogRow, ModelResult, PRIMARY_METRIC, RunReport, TrainingCurve, TrainingFacts};
use crate::write::{ReportError, report_files};
use embedfleet_core::dataset::read_dataset;
use embedfleet_core::generate::DatasetSummary;
use embedfleet_core::{ArtifactStore, DatasetSplit};
use serde::{Deserialize, Serialize};

/// What the trainer worker leaves for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetTraining {
    pub facts: TrainingFacts,
    pub log: Vec<LogRow>,
}

/// Where the report's inputs live under a run's prefix (`runs/<run>`).
pub fn report_data_prefix(run_prefix: &str) -> String {
    format!("{}/report-data", run_prefix.trim_end_matches('/'))
}

/// A checkpoint's result, written by the evaluator that scored it.
pub fn model_result_key(run_prefix: &str, label: &str) -> String {
    format!("{}/{label}.json", report_data_prefix(run_prefix))
}

/// The training facts and log, written by the trainer when it is done.
pub fn training_key(run_prefix: &str) -> String {
    format!("{}/training.json", report_data_prefix(run_prefix))
}

/// A finished run, as the coordinator knows it, and where its parts are in the store.
#[derive(Debug, Clone)]
pub struct FleetRun<'a> {
    pub run_id: &'a str,
    /// The model the run started from, as submitted.
    pub base_model: &'a str,
    /// The label of the kept checkpoint (`step-0` when none beat the base).
    pub best: &'a str,
    pub split_by: &'a str,
    pub generator: &'a str,
    pub failed_chunks: usize,
    /// Documents in the corpus, as ingestion counted them.
    pub documents: usize,
    /// How the run's training and evaluators saw validation: the run spec's `train`.
    pub train: &'a embedfleet_core::TrainConfig,
    /// `runs/<run>`.
    pub run_prefix: String,
    pub results_prefix: String,
    pub model_prefix: String,
    pub data_prefix: String,
    /// The dataset's counts ([`DatasetSummary`]), written when it was assembled: the report needs
    /// the training set's size, not the training set.
    pub summary_key: String,
    /// SHA-256 of each file of the kept model (its card aside), by path in the folder.
    pub model_sha256: &'a std::collections::BTreeMap<String, String>,
}

fn step_of(label: &str) -> Option<u64> {
    embedfleet_core::CheckpointLabel::step_in(label)
}

async fn read_json<T: serde::de::DeserializeOwned>(store: &ArtifactStore, key: &str) -> Result<Option<T>, ReportError> {
    match store.get_opt(key).await? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ReportError::Malformed { location: store.describe(key), message: e.to_string() }),
        None => Ok(None),
    }
}

/// Builds the run's report from the store and writes its files back; returns the key of
/// `report.html`.
/// What [`write_run_report`] wrote: where the page is, and its verdict (with the interval the
/// evaluators' per-question scores give), for the run's report.json and `embedfleet results`.
#[derive(Debug, Clone)]
pub struct WrittenReport {
    pub key: String,
    pub verdict: crate::summary::Verdict,
}

pub async fn write_run_report(store: &ArtifactStore, run: &FleetRun<'_>) -> Result<WrittenReport, ReportError> {
    let prefix = report_data_prefix(&run.run_prefix);
    let mut checkpoints: Vec<ModelResult> = Vec::new();
    for key in store.list(&prefix).await? {
        let Some(label) = key.rsplit('/').next().and_then(|f| f.strip_suffix(".json")) else { continue };
        if step_of(label).is_none() {
            continue;
        }
        if let Some(mut result) = read_json::<ModelResult>(store, &key).await? {
            result.step = step_of(label);
            checkpoints.push(result);
        }
    }
    checkpoints.sort_by_key(|m| m.step);
    let training: Option<FleetTraining> = read_json(store, &training_key(&run.run_prefix)).await?;
    let val = read_dataset(store, &run.data_prefix, DatasetSplit::Val).await?;
    let summary: DatasetSummary = read_json(store, &run.summary_key).await?.ok_or_else(|| ReportError::Malformed {
        location: store.describe(&run.summary_key),
        message: "missing: the dataset's summary is written when the dataset is assembled".into(),
    })?;

    let base_name = base_model_name(run.base_model, None);
    let base = checkpoints.iter().find(|m| m.step == Some(0)).cloned();
    // The candidate is the kept checkpoint; when that is the base, the best of the others shows
    // what fine-tuning reached, and the verdict says it was not enough.
    let candidate = match step_of(run.best) {
        Some(0) | None => checkpoints
            .iter()
            .filter(|m| m.step != Some(0))
            .max_by(|a, b| a.metric(PRIMARY_METRIC).unwrap_or(0.0).total_cmp(&b.metric(PRIMARY_METRIC).unwrap_or(0.0))),
        Some(step) => checkpoints.iter().find(|m| m.step == Some(step)),
    }
    .cloned();
    let mut models = Vec::new();
    if let Some(mut b) = base {
        b.name = "base".into();
        b.source = base_name.clone();
        models.push(b);
    }
    if let Some(mut c) = candidate {
        let label = c.step.map(|s| embedfleet_core::CheckpointLabel::step(s).to_string()).unwrap_or_default();
        c.name = "finetuned".into();
        c.source = format!("{} ({label})", store.describe(&run.model_prefix));
        models.push(c);
    }

    let metric = format!("cosine-{PRIMARY_METRIC}");
    let best_step = step_of(run.best).filter(|s| *s > 0);
    let curve = TrainingCurve {
        log: training.as_ref().map(|t| t.log.clone()).unwrap_or_default(),
        evaluations: checkpoints.iter().filter_map(|m| Some((m.step?, m.metric(&metric)?))).collect(),
        metric: metric.clone(),
        best_step,
    };
    let dataset = DatasetFacts {
        documents: Some(run.documents),
        chunks: summary.chunks,
        train_chunks: summary.train_chunks,
        val_chunks: summary.val_chunks,
        train_questions: summary.train_queries,
        val_questions: summary.val_queries,
        split_by: run.split_by.to_owned(),
        generator: run.generator.to_owned(),
        failed_chunks: run.failed_chunks,
        ..Default::default()
    };
    let report_key = format!("{}/report.html", run.results_prefix);
    let report = RunReport {
        title: format!("Run {}", run.run_id),
        models,
        // The passages as the evaluators scored them (with inverse cloze, questions cut out).
        validation: run.train.training_view(&val).into_owned(),
        dataset: Some(dataset.clone()),
        training: training.as_ref().map(|t| TrainingFacts { best_step, base_model: base_name.clone(), ..t.facts.clone() }),
        curve: Some(curve),
        files: vec![
            ("model".into(), store.describe(&run.model_prefix)),
            ("results".into(), store.describe(&run.results_prefix)),
            ("report".into(), store.describe(&report_key)),
        ],
        // The dataset facts say what the questions are.
        spans_found: false,
        query_log: None,
    };
    for (name, text) in report_files(&report) {
        store.put(&format!("{}/{name}", run.results_prefix), text.into_bytes()).await?;
    }

    let file = |name: &str| format!("{}/{name}", run.model_prefix);
    let facts = ModelFacts::from_files(
        store.get_opt(&file("1_Pooling/config.json")).await?.as_deref(),
        store.get_opt(&file("sentence_bert_config.json")).await?.as_deref(),
        store.get_opt(&file("modules.json")).await?.as_deref(),
    );
    let card = ModelCard {
        base_model: base_name,
        training_data: format!("{} (question, passage) pairs", summary.train_queries),
        metrics: Vec::new(),
        // The card describes the folder: the base model itself when nothing beat it.
        evaluation: report
            .models
            .iter()
            .take(if best_step.is_some() { report.models.len() } else { 1 })
            // Per-question scores stay (the verdict's interval needs them); the passages do not.
            .map(|m| ModelResult {
                questions: m.questions.iter().map(|q| crate::QuestionResult { top: Vec::new(), ..q.clone() }).collect(),
                ..m.clone()
            })
            .collect(),
        evaluation_size: Some((report.validation.queries.len(), report.validation.corpus.len())),
        training: report.training.clone(),
        dataset: Some(dataset),
        location: "model".into(),
        checksums: run.model_sha256.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    store.put(&file("README.md"), render(&card, &facts).into_bytes()).await?;
    Ok(WrittenReport { key: report_key, verdict: crate::summary::verdict(&report.models) })
}
