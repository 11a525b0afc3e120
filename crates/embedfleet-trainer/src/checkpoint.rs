//! Resume checkpoints: model and optimizer tensors plus where training stood, under
//! `<output>/checkpoints/step-<n>/`. Every step reseeds libtorch's RNG from the run seed and the
//! step number, so position and tensors are all a resumed run needs to repeat the rest exactly.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use embedfleet_report::LogRow;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRow {
    pub epoch: i64,
    pub step: i64,
    pub metrics: Vec<(embedfleet_evaluator::rank::ScoreFunction, embedfleet_evaluator::metrics::RetrievalMetrics)>,
    pub value: f64,
    /// Absent in checkpoints written before the report had it.
    #[serde(default)]
    pub hit_rate: Option<embedfleet_evaluator::metrics::HitRate>,
    /// At each Matryoshka dimension, largest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dims: Vec<embedfleet_evaluator::DimEvaluation>,
    /// Each question's rank and NDCG@10, for the base (step 0) and the best checkpoint only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub questions: Vec<embedfleet_report::QuestionResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings_digest: Option<String>,
}

impl EvalRow {
    /// The report's view of this evaluation (per-question ranks and NDCG for the base and the best
    /// checkpoint; no passages: training keeps none).
    pub fn to_result(&self, name: &str, source: &str) -> embedfleet_report::ModelResult {
        embedfleet_report::ModelResult {
            name: name.to_owned(),
            source: source.to_owned(),
            hit_rate: self.hit_rate.unwrap_or(embedfleet_report::HitRate { k: 0, hits: 0, total: 0, rate: f64::NAN }),
            metrics: embedfleet_evaluator::named_metrics(&self.metrics),
            questions: self.questions.clone(),
            depth: 0,
            step: Some(self.step.max(0) as u64),
            dims: self.dims.iter().map(embedfleet_evaluator::DimEvaluation::to_result).collect(),
            embeddings_digest: self.embeddings_digest.clone(),
            selection: None,
        }
    }
}

/// Where training stood when a checkpoint was written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub global_step: usize,
    pub epoch: usize,
    /// Batches of `epoch` already trained on.
    pub batch_in_epoch: usize,
    pub total_steps: usize,
    pub base_value: Option<f64>,
    pub best_value: Option<f64>,
    pub best_step: Option<usize>,
    pub log: Vec<LogRow>,
    pub evals: Vec<EvalRow>,
    /// The settings that must not change across a resume.
    pub fingerprint: String,
}

pub fn checkpoint_dir(output: &Path, step: usize) -> PathBuf {
    output.join("checkpoints").join(embedfleet_core::CheckpointLabel::step(step as u64).as_str())
}

/// The newest complete checkpoint (one with its state.json written last).
pub fn latest(output: &Path) -> Option<PathBuf> {
    let dir = output.join("checkpoints");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("state.json").exists())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            embedfleet_core::CheckpointLabel::step_in(&name).map(|n| (n as usize, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}
