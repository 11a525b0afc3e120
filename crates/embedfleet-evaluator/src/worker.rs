//! The evaluator worker's stage: score one checkpoint of a run on its validation set, store the
//! result, the reference-format CSV and an updated comparison chart, and tell the coordinator.

use crate::csv::{append_csv, csv_file_name, dim_csv_name};
use crate::report::write_report;
use crate::{Comparison, EvalOptions, Evaluation, PreparedDataset, evaluate_model};
use embedfleet_bus::layout;
use embedfleet_bus::messages::{Message, RunSpec};
use embedfleet_bus::worker::{TaskError, TaskHandler};
use embedfleet_bus::{Bus, Stage};
use embedfleet_core::dataset::read_dataset;
use embedfleet_core::{ArtifactStore, DatasetSplit};
use embedfleet_model::{Device, LoadOptions, Precision, SentenceEncoder};
use prometheus::{GaugeVec, register_gauge_vec};
use std::path::PathBuf;
use std::sync::LazyLock;

pub static NDCG: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!("embedfleet_evaluator_ndcg_at_10", "Validation cosine NDCG@10 per checkpoint", &["run", "checkpoint"])
        .expect("registers once")
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

fn step_of(label: &str) -> u64 {
    embedfleet_core::CheckpointLabel::step_in(label).unwrap_or(u64::MAX)
}

impl TaskHandler for EvaluateWorker {
    async fn handle(&self, message: Message, _deliveries: i64) -> Result<(), TaskError> {
        let Message::EvaluateTask { run_id, label } = message else {
            return Err(TaskError::fatal("the evaluator only handles evaluate tasks"));
        };
        match self.bus.run_state(&run_id).await? {
            Some(state) if state.is_terminal() => {
                tracing::info!(
                    run_id = run_id.as_str(),
                    label = label.as_str(),
                    state = state.name(),
                    "skipping a checkpoint of an ended run"
                );
                return Ok(());
            }
            _ => {}
        }
        let spec: RunSpec = serde_json::from_slice(&self.store.get(&layout::spec(&run_id)).await?)
            .map_err(|e| TaskError::fatal(format!("run spec of {run_id}: {e}")))?;
        let options = EvalOptions::for_training(&spec.train);
        let result_key = layout::result(&run_id, &label);
        let evaluation: Evaluation = match self.store.get_opt(&result_key).await? {
            // Redelivered after the result was written: report it again, do not recompute.
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| TaskError::fatal(format!("{result_key}: {e}")))?,
            None => {
                let val = read_dataset(&self.store, &layout::data(&run_id), DatasetSplit::Val).await.map_err(TaskError::classify)?;
                let data = PreparedDataset::new(&spec.train.training_view(&val)).map_err(TaskError::classify)?;
                let local = self.work_dir.join(format!("{run_id}-{label}"));
                let _ = std::fs::remove_dir_all(&local);
                let n = self.store.get_dir(&layout::checkpoint(&run_id, &label), &local).await?;
                if n == 0 {
                    return Err(TaskError::transient(format!("checkpoint {label} of {run_id} is not in the store yet")));
                }
                let load = LoadOptions { device: self.device, precision: spec.precision.unwrap_or(self.precision) };
                let dir = local.clone();
                let eval_options = options.clone();
                let evaluation = tokio::task::spawn_blocking(move || -> Result<Evaluation, TaskError> {
                    let model = SentenceEncoder::load(&dir, load).map_err(TaskError::classify)?;
                    evaluate_model(&model, &data, &eval_options).map_err(TaskError::classify)
                })
                .await
                .map_err(|e| TaskError::transient(format!("the evaluation thread ended: {e}")))??;
                let _ = std::fs::remove_dir_all(&local);
                // Before the result itself: a redelivery that finds the result finds this too.
                let for_report = evaluation.to_result(&label, &label);
                let key = embedfleet_report::fleet::model_result_key(&layout::run(&run_id), &label);
                self.store.put(&key, serde_json::to_vec(&for_report).expect("serializes")).await?;
                self.store.put(&result_key, serde_json::to_vec(&evaluation).expect("serializes")).await?;
                self.write_tables(&run_id, &label, &evaluation, &options).await?;
                evaluation
            }
        };
        let value = evaluation
            .metric(&spec.train.metric.to_string())
            .ok_or_else(|| TaskError::fatal(format!("the evaluation has no {}", spec.train.metric)))?;
        NDCG.with_label_values(&[run_id.as_str(), label.as_str()]).set(evaluation.metric(PRIMARY).unwrap_or(f64::NAN));
        self.bus.publish(Stage::Coordinate, &Message::EvaluateDone { run_id: run_id.clone(), label: label.clone(), value }).await?;
        self.bus.event(&run_id, "evaluate", &serde_json::json!({"label": label, "value": value})).await;
        Ok(())
    }
}

impl EvaluateWorker {
    /// The checkpoint's CSV, and the comparison of every checkpoint scored so far (report, chart,
    /// per-query ranks) under `runs/<run>/results/`.
    async fn write_tables(&self, run_id: &str, label: &str, evaluation: &Evaluation, options: &EvalOptions) -> Result<(), TaskError> {
        let io = |e: std::io::Error| TaskError::transient(e);
        let scratch = self.work_dir.join(format!("{run_id}-{label}-tables"));
        let _ = std::fs::remove_dir_all(&scratch);
        append_csv(&scratch, label, -1, step_of(label) as i64, &options.metrics, &evaluation.metrics).map_err(io)?;
        let csv = std::fs::read(scratch.join(csv_file_name(label))).map_err(io)?;
        self.store.put(&format!("{}/{}", layout::results(run_id), csv_file_name(label)), csv).await?;
        for at in &evaluation.dims {
            let name = dim_csv_name(label, at.dim);
            append_csv(&scratch, &name, -1, step_of(label) as i64, &options.metrics, &at.metrics).map_err(io)?;
            let csv = std::fs::read(scratch.join(csv_file_name(&name))).map_err(io)?;
            self.store.put(&format!("{}/{}", layout::results(run_id), csv_file_name(&name)), csv).await?;
        }

        let mut scored: Vec<(String, Evaluation)> = Vec::new();
        for key in self.store.list(&layout::results(run_id)).await? {
            let Some(name) = key.rsplit('/').next().and_then(|f| f.strip_suffix(".json")) else { continue };
            if embedfleet_core::CheckpointLabel::step_in(name).is_none() {
                continue;
            }
            if let Ok(e) = serde_json::from_slice::<Evaluation>(&self.store.get(&key).await?) {
                scored.push((name.to_owned(), e));
            }
        }
        scored.sort_by_key(|(name, _)| step_of(name));
        let comparison: Comparison = scored
            .into_iter()
            .map(|(n, e)| (if embedfleet_core::CheckpointLabel::step_in(&n) == Some(0) { "base".into() } else { n }, e))
            .collect();
        let tables = scratch.join("comparison");
        write_report(&tables, &comparison).map_err(io)?;
        for file in ["metrics.svg", "per_query.jsonl"] {
            let bytes = std::fs::read(tables.join(file)).map_err(io)?;
            self.store.put(&format!("{}/{file}", layout::results(run_id)), bytes).await?;
        }
        let bytes = std::fs::read(tables.join("report.json")).map_err(io)?;
        self.store.put(&format!("{}/comparison.json", layout::results(run_id)), bytes).await?;
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(())
    }
}
