//! The evaluator worker's stage: score one checkpoint of a run on its validation set, store the
//! result, the reference-format CSV and an updated comparison chart, and tell the coordinator.

use crate::csv::{append_csv, csv_file_name};
use crate::report::write_report;
use crate::{Comparison, EvalOptions, Evaluation, PreparedDataset, evaluate_model};
use embedfleet_bus::layout;
use embedfleet_bus::messages::Message;
use embedfleet_bus::worker::{TaskError, TaskHandler};
use embedfleet_bus::{Bus, Stage};
use embedfleet_core::dataset::read_dataset;
use embedfleet_core::{ArtifactStore, DatasetSplit};
use embedfleet_model::{Device, LoadOptions, Precision, SentenceEncoder};
use prometheus::{GaugeVec, register_gauge_vec};
use std::path::PathBuf;
use std::sync::LazyLock;

pub static NDCG: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!("embedfleet_evaluator_ndcg_at_10", "Validation cosine NDCG@10 per checkpoint", &["run", "checkpoint"]).expect("registers once")
});

/// The metric the fleet ranks checkpoints by.
pub const PRIMARY: &str = "cosine-NDCG@10";

pub struct EvaluateWorker {
    pub bus: Bus,
    pub store: ArtifactStore,
    pub device: Device,
    pub precision: Precision,
    pub work_dir: PathBuf,
}

fn retry(e: impl std::fmt::Display) -> TaskError {
    TaskError::Retry(e.to_string())
}

fn step_of(label: &str) -> u64 {
    label.strip_prefix("step-").and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
}

impl TaskHandler for EvaluateWorker {
    async fn handle(&self, message: Message, _deliveries: i64) -> Result<(), TaskError> {
        let Message::EvaluateTask { run_id, label } = message else {
            return Err(TaskError::Fatal("the evaluator only handles evaluate tasks".into()));
        };
        let result_key = layout::result(&run_id, &label);
        let evaluation: Evaluation = match self.store.get_opt(&result_key).await.map_err(retry)? {
            // Redelivered after the result was written: report it again, do not recompute.
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| TaskError::Fatal(format!("{result_key}: {e}")))?,
            None => {
                let val = read_dataset(&self.store, &layout::data(&run_id), DatasetSplit::Val).await.map_err(retry)?;
                let data = PreparedDataset::new(&val).map_err(|e| TaskError::Fatal(e.to_string()))?;
                let local = self.work_dir.join(format!("{run_id}-{label}"));
                let _ = std::fs::remove_dir_all(&local);
                let n = self.store.get_dir(&layout::checkpoint(&run_id, &label), &local).await.map_err(retry)?;
                if n == 0 {
                    return Err(TaskError::Retry(format!("checkpoint {label} of {run_id} is not in the store yet")));
                }
                let options = LoadOptions { device: self.device, precision: self.precision };
                let dir = local.clone();
                let evaluation = tokio::task::spawn_blocking(move || -> Result<Evaluation, TaskError> {
                    let model = SentenceEncoder::load(&dir, options).map_err(|e| TaskError::Fatal(e.to_string()))?;
                    evaluate_model(&model, &data, &EvalOptions::default()).map_err(|e| TaskError::Fatal(e.to_string()))
                })
                .await
                .map_err(retry)??;
                let _ = std::fs::remove_dir_all(&local);
                // Before the result itself: a redelivery that finds the result finds this too.
                let for_report = evaluation.to_result(&label, &label);
                let key = embedfleet_report::fleet::model_result_key(&layout::run(&run_id), &label);
                self.store.put(&key, serde_json::to_vec(&for_report).expect("serializes")).await.map_err(retry)?;
                self.store.put(&result_key, serde_json::to_vec(&evaluation).expect("serializes")).await.map_err(retry)?;
                self.write_tables(&run_id, &label, &evaluation).await?;
                evaluation
            }
        };
        let value = evaluation.metric(PRIMARY).unwrap_or(f64::NAN);
        NDCG.with_label_values(&[&run_id, &label]).set(value);
        self.bus.publish(Stage::Coordinate, &Message::EvaluateDone { run_id: run_id.clone(), label: label.clone(), value }).await.map_err(retry)?;
        self.bus.event(&run_id, "evaluate", &serde_json::json!({"label": label, "value": value})).await;
        Ok(())
    }
}

impl EvaluateWorker {
    /// The checkpoint's CSV, and the comparison of every checkpoint scored so far (report, chart,
    /// per-query ranks) under `runs/<run>/results/`.
    async fn write_tables(&self, run_id: &str, label: &str, evaluation: &Evaluation) -> Result<(), TaskError> {
        let scratch = self.work_dir.join(format!("{run_id}-{label}-tables"));
        let _ = std::fs::remove_dir_all(&scratch);
        append_csv(&scratch, label, -1, step_of(label) as i64, &EvalOptions::default().metrics, &evaluation.metrics).map_err(retry)?;
        let csv = std::fs::read(scratch.join(csv_file_name(label))).map_err(retry)?;
        self.store.put(&format!("{}/{}", layout::results(run_id), csv_file_name(label)), csv).await.map_err(retry)?;

        let mut scored: Vec<(String, Evaluation)> = Vec::new();
        for key in self.store.list(&layout::results(run_id)).await.map_err(retry)? {
            let Some(name) = key.rsplit('/').next().and_then(|f| f.strip_suffix(".json")) else { continue };
            if !name.starts_with("step-") {
                continue;
            }
            if let Ok(e) = serde_json::from_slice::<Evaluation>(&self.store.get(&key).await.map_err(retry)?) {
                scored.push((name.to_owned(), e));
            }
        }
        scored.sort_by_key(|(name, _)| step_of(name));
        let comparison: Comparison = scored.into_iter().map(|(n, e)| (if n == "step-0" { "base".into() } else { n }, e)).collect();
        let tables = scratch.join("comparison");
        write_report(&tables, &comparison).map_err(retry)?;
        for file in ["metrics.svg", "per_query.jsonl"] {
            let bytes = std::fs::read(tables.join(file)).map_err(retry)?;
            self.store.put(&format!("{}/{file}", layout::results(run_id)), bytes).await.map_err(retry)?;
        }
        let bytes = std::fs::read(tables.join("report.json")).map_err(retry)?;
        self.store.put(&format!("{}/comparison.json", layout::results(run_id)), bytes).await.map_err(retry)?;
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(())
    }
}
