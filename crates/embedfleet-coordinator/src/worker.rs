//! The coordinator worker: each event is turned into a decision by [`crate::machine::decide`],
//! its commands are carried out (all idempotent), then the new record is written with a
//! compare-and-set on the KV revision. A lost race re-reads the record and decides again, so a
//! second replica that saw the same event finds nothing left to do.

use embedfleet_bus::layout::{self, TaskQuestions};
use crate::machine::{Command, Decision, Event, RunRecord, RunState, decide};
use embedfleet_bus::messages::{Message, RunSpec};
use embedfleet_bus::worker::{TaskError, TaskHandler};
use embedfleet_bus::{Bus, Stage};
use embedfleet_core::chunk::{Chunk, ChunkConfig, chunk_documents};
use embedfleet_core::dataset::write_dataset;
use embedfleet_core::generate::assemble_dataset;
use embedfleet_core::ingest::parse_json_documents;
use embedfleet_core::{ArtifactStore, ChunkId, IngestOptions, SplitBy, SplitConfig};
use indexmap::IndexMap;
use prometheus::{IntCounter, IntGaugeVec, register_int_counter, register_int_gauge_vec};
use std::path::Path;
use std::sync::LazyLock;

pub static RUNS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("embedfleet_coordinator_runs", "Runs by state", &["state"]).expect("registers once")
});
pub static CHUNKS_DONE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("embedfleet_coordinator_chunks_done_total", "Chunks whose questions are in").expect("registers once")
});

pub struct Coordinator {
    pub bus: Bus,
    pub store: ArtifactStore,
}

fn retry(e: impl std::fmt::Display) -> TaskError {
    TaskError::Retry(e.to_string())
}

pub async fn load_record(bus: &Bus, run_id: &str) -> Result<(Option<RunRecord>, Option<u64>), String> {
    match bus.runs.entry(run_id).await.map_err(|e| e.to_string())? {
        Some(entry) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
            let record = serde_json::from_slice(&entry.value).map_err(|e| format!("run record {run_id}: {e}"))?;
            Ok((Some(record), Some(entry.revision)))
        }
        Some(entry) => Ok((None, Some(entry.revision))),
        None => Ok((None, None)),
    }
}

impl TaskHandler for Coordinator {
    async fn handle(&self, message: Message, _deliveries: i64) -> Result<(), TaskError> {
        let run_id = message.run_id().to_owned();
        for _ in 0..50 {
            let (record, revision) = load_record(&self.bus, &run_id).await.map_err(TaskError::Retry)?;
            let event = match &message {
                Message::RunSubmitted { spec, .. } => {
                    if record.is_some() {
                        return Ok(());
                    }
                    match self.prepare(&run_id, spec).await? {
                        Ok(chunks) => Event::Submitted { run_id: run_id.clone(), spec: spec.clone(), chunks },
                        Err(reason) => {
                            // Bad input fails the run with the reason, rather than the message.
                            let mut d = decide(None, &Event::Submitted { run_id: run_id.clone(), spec: spec.clone(), chunks: 0 })
                                .expect("a new run always decides");
                            d.record.error = Some(reason);
                            if self.commit(&d, revision).await? {
                                return Ok(());
                            }
                            continue;
                        }
                    }
                }
                Message::GenerateDone { task, questions, failed_chunks, .. } => {
                    Event::GenerateDone { task: *task, questions: *questions, failed_chunks: *failed_chunks }
                }
                Message::CheckpointSaved { label, step, .. } => Event::CheckpointSaved { label: label.clone(), step: *step },
                Message::TrainDone { steps, .. } => Event::TrainDone { steps: *steps },
                Message::EvaluateDone { label, value, .. } => Event::EvaluateDone { label: label.clone(), value: *value },
                Message::CancelRun { .. } => Event::Cancel,
                Message::StageFailed { stage, reason, .. } => Event::Failed { reason: format!("{stage}: {reason}") },
                other => return Err(TaskError::Fatal(format!("the coordinator does not handle {other:?}"))),
            };
            let Some(mut decision) = decide(record.as_ref(), &event) else { return Ok(()) };
            self.execute(&mut decision).await?;
            if self.commit(&decision, revision).await? {
                if let Event::GenerateDone { task, .. } = event {
                    let per = decision.record.spec.chunks_per_task.max(1) as u32;
                    CHUNKS_DONE.inc_by(per.min(decision.record.chunks.saturating_sub(task * per)) as u64);
                }
                return Ok(());
            }
        }
        Err(TaskError::Retry(format!("run {run_id}: too much contention on its record")))
    }
}

impl Coordinator {
    /// Writes the record if nobody else changed it since it was read; then tells watchers.
    async fn commit(&self, decision: &Decision, revision: Option<u64>) -> Result<bool, TaskError> {
        let run_id = &decision.record.run_id;
        let bytes: bytes::Bytes = serde_json::to_vec(&decision.record).expect("records serialize").into();
        let written = match revision {
            Some(rev) => self.bus.runs.update(run_id, bytes, rev).await.is_ok(),
            None => self.bus.runs.create(run_id, bytes).await.is_ok(),
        };
        if written {
            tracing::info!(run_id, state = decision.record.state.name(), "run updated");
            self.bus.event(run_id, "state", &serde_json::to_value(&decision.record).expect("records serialize")).await;
        }
        Ok(written)
    }

    /// Reads and chunks the corpus, writes the chunk list and the spec. Err(reason) for bad input.
    async fn prepare(&self, run_id: &str, spec: &RunSpec) -> Result<Result<u32, String>, TaskError> {
        let raw = match self.store.get(&spec.input_key).await {
            Ok(raw) => raw,
            Err(embedfleet_core::StoreError::NotFound { location }) => return Ok(Err(format!("corpus {location} not found"))),
            Err(e) => return Err(retry(e)),
        };
        let text = String::from_utf8_lossy(&raw);
        let docs = match parse_json_documents(Path::new(&spec.input_key), &text, &IngestOptions { text_field: spec.text_field.clone() }) {
            Ok(d) if !d.is_empty() => d,
            Ok(_) => return Ok(Err("the corpus has no text".into())),
            Err(e) => return Ok(Err(e.to_string())),
        };
        let chunks = match chunk_documents(&docs, &ChunkConfig { size: spec.chunk_size, overlap: spec.chunk_overlap }) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e.to_string())),
        };
        self.store.put(&layout::spec(run_id), serde_json::to_vec(spec).expect("spec serializes")).await.map_err(retry)?;
        self.store.put(&layout::chunks(run_id), serde_json::to_vec(&chunks).expect("chunks serialize")).await.map_err(retry)?;
        Ok(Ok(chunks.len() as u32))
    }

    async fn execute(&self, decision: &mut Decision) -> Result<(), TaskError> {
        let run_id = decision.record.run_id.clone();
        let commands = std::mem::take(&mut decision.commands);
        for command in &commands {
            match command {
                Command::PublishGenerate { task, first, count } => {
                    let m = Message::GenerateTask { run_id: run_id.clone(), task: *task, first: *first, count: *count };
                    self.bus.publish(Stage::Generate, &m).await.map_err(retry)?;
                }
                Command::Assemble => {
                    if let Err(reason) = self.assemble(&decision.record).await? {
                        decision.record.state = RunState::Failed;
                        decision.record.error = Some(reason);
                        break;
                    }
                }
                Command::PublishTrain => {
                    self.bus.publish(Stage::Train, &Message::TrainTask { run_id: run_id.clone() }).await.map_err(retry)?;
                }
                Command::PublishEvaluate { label } => {
                    let m = Message::EvaluateTask { run_id: run_id.clone(), label: label.clone() };
                    self.bus.publish(Stage::Evaluate, &m).await.map_err(retry)?;
                }
                Command::Finalize { best } => self.finalize(&decision.record, best).await?,
            }
        }
        decision.commands = commands;
        Ok(())
    }

    /// Every task's questions, in chunk order, split and written as the 8 dataset files.
    async fn assemble(&self, record: &RunRecord) -> Result<Result<(), String>, TaskError> {
        let run_id = &record.run_id;
        let chunks: Vec<Chunk> = serde_json::from_slice(&self.store.get(&layout::chunks(run_id)).await.map_err(retry)?)
            .map_err(|e| TaskError::Fatal(format!("chunk list: {e}")))?;
        let mut questions: IndexMap<ChunkId, Vec<String>> = IndexMap::new();
        for task in 0..record.generate_tasks {
            let part: TaskQuestions = serde_json::from_slice(&self.store.get(&layout::questions(run_id, task)).await.map_err(retry)?)
                .map_err(|e| TaskError::Fatal(format!("questions of task {task}: {e}")))?;
            for (chunk, qs) in part.questions {
                questions.insert(ChunkId::from(chunk), qs);
            }
        }
        let spec = &record.spec;
        let split = SplitConfig {
            train_ratio: spec.train_ratio,
            seed: spec.seed,
            by: if spec.split_by == "chunk" { SplitBy::Chunk } else { SplitBy::Document },
        };
        let (train, val, summary) = match assemble_dataset(&chunks, &questions, &split) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if train.queries.is_empty() || val.queries.is_empty() {
            return Ok(Err(format!("{} training and {} validation questions; both need some", train.queries.len(), val.queries.len())));
        }
        write_dataset(&self.store, &layout::data(run_id), &train, &val, true).await.map_err(retry)?;
        tracing::info!(run_id, ?summary, "dataset assembled");
        Ok(Ok(()))
    }

    async fn finalize(&self, record: &RunRecord, best: &str) -> Result<(), TaskError> {
        let run_id = &record.run_id;
        self.store.copy_prefix(&layout::checkpoint(run_id, best), &layout::model(run_id)).await.map_err(retry)?;
        let base = record.evaluations.get("step-0").copied();
        let best_value = record.evaluations.get(best).copied();
        let improved = best != "step-0";
        let verdict = match (base, best_value) {
            (Some(b), Some(v)) if improved => format!("fine-tuned model ({best}) is better than the base: NDCG@10 {v:.4} vs {b:.4}"),
            (Some(b), _) => format!("no checkpoint beat the base model (NDCG@10 {b:.4}); runs/{run_id}/model holds the base model"),
            _ => "no evaluation of the base model".into(),
        };
        let report = serde_json::json!({
            "run_id": run_id,
            "primary_metric": "cosine-NDCG@10",
            "best": best,
            "improved": improved,
            "verdict": verdict,
            "evaluations": record.evaluations,
            "questions": record.questions,
            "failed_chunks": record.failed_chunks,
            "steps": record.steps,
        });
        self.store.put(&layout::report(run_id), serde_json::to_vec_pretty(&report).expect("json")).await.map_err(retry)?;
        embedfleet_report::fleet::write_run_report(&self.store, &embedfleet_report::fleet::FleetRun {
            run_id, base_model: &record.spec.model_id, best, split_by: &record.spec.split_by, generator: &record.spec.generator,
            failed_chunks: record.failed_chunks as usize, run_prefix: layout::run(run_id), results_prefix: layout::results(run_id),
            model_prefix: layout::model(run_id), data_prefix: layout::data(run_id), chunks_key: layout::chunks(run_id),
        }).await.map_err(retry)?;
        Ok(())
    }
}

/// Counts runs by state for the dashboard, every few seconds.
pub async fn export_run_states(bus: Bus) {
    use futures_lite::StreamExt;
    loop {
        let mut counts = std::collections::HashMap::<&'static str, i64>::new();
        if let Ok(mut keys) = bus.runs.keys().await {
            while let Some(Ok(key)) = keys.next().await {
                if let Ok((Some(record), _)) = load_record(&bus, &key).await {
                    *counts.entry(record.state.name()).or_default() += 1;
                }
            }
        }
        for state in ["generating", "training", "done", "failed", "cancelled"] {
            RUNS.with_label_values(&[state]).set(counts.get(state).copied().unwrap_or(0));
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
}
