//! The coordinator worker: each event is turned into an [`Outcome`] by [`decide`]; a new record is
//! written with a compare-and-set on the KV revision *before* anything is done about it, and the
//! record's outbox is carried out afterwards (by whichever replica sees it first) and cleared. An
//! event is acknowledged only once the outbox it caused is empty, so a coordinator that dies at any
//! point leaves the event to be redelivered and the work to be finished; an event that overtook the
//! one it depends on is delivered again shortly, never dropped.

use crate::machine::{Command, Event, Outcome, RunRecord, decide};
use embedfleet_bus::layout::{self, TaskQuestions};
use embedfleet_bus::messages::{Message, RunSpec};
use embedfleet_bus::worker::{TaskError, TaskHandler};
use embedfleet_bus::{Bus, BusError, RunState, Stage};
use embedfleet_core::chunk::{Chunk, chunk_documents};
use embedfleet_core::dataset::write_dataset;
use embedfleet_core::generate::assemble_dataset;
use embedfleet_core::ingest::parse_json_documents;
use embedfleet_core::{ArtifactStore, ChunkId, IngestOptions, RunId};
use indexmap::IndexMap;
use prometheus::{IntCounter, IntGaugeVec, register_int_counter, register_int_gauge_vec};
use std::path::Path;
use std::sync::LazyLock;

pub static RUNS: LazyLock<IntGaugeVec> =
    LazyLock::new(|| register_int_gauge_vec!("embedfleet_coordinator_runs", "Runs by state", &["state"]).expect("registers once"));
pub static CHUNKS_DONE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("embedfleet_coordinator_chunks_done_total", "Chunks whose questions are in").expect("registers once")
});

/// Commands carried out between two record writes. One: a cancel written meanwhile stops the rest
/// at once (at most the command in hand still goes out), at a KV write per command.
const DRAIN_BATCH: usize = 1;
/// Lost compare-and-set races before an event is put back for later.
const MAX_LOST_RACES: usize = 50;

pub struct Coordinator {
    pub bus: Bus,
    pub store: ArtifactStore,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("run record {run}: {source}; delete the key from the {bucket} bucket if it was written by hand", bucket = embedfleet_bus::subjects::RUNS_BUCKET)]
    Unreadable { run: String, source: serde_json::Error },
}

impl embedfleet_core::Transient for RecordError {
    fn is_transient(&self) -> bool {
        matches!(self, RecordError::Bus(e) if e.is_transient())
    }
}

impl From<RecordError> for TaskError {
    fn from(e: RecordError) -> Self {
        TaskError::classify(e)
    }
}

/// The run's record and the revision it was read at (None for both: no such run).
pub async fn load_record(bus: &Bus, run_id: &str) -> Result<(Option<RunRecord>, Option<u64>), RecordError> {
    let kv = |e: &dyn std::fmt::Display| BusError::Kv { key: run_id.to_owned(), message: e.to_string() };
    match bus.runs.entry(run_id).await.map_err(|e| kv(&e))? {
        Some(entry) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
            let record =
                serde_json::from_slice(&entry.value).map_err(|source| RecordError::Unreadable { run: run_id.to_owned(), source })?;
            Ok((Some(record), Some(entry.revision)))
        }
        Some(entry) => Ok((None, Some(entry.revision))),
        None => Ok((None, None)),
    }
}

impl TaskHandler for Coordinator {
    async fn handle(&self, message: Message, _deliveries: i64) -> Result<(), TaskError> {
        let run_id = message.run_id().clone();
        let mut lost = 0;
        while lost < MAX_LOST_RACES {
            let (record, revision) = load_record(&self.bus, &run_id).await?;
            // Finish what an earlier decision left before deciding anything new.
            if let Some(r) = record.as_ref().filter(|r| !r.outbox.is_empty()) {
                if !self.drain(r, revision).await? {
                    lost += 1;
                }
                continue;
            }
            let event = self.event_of(&message, &run_id, record.is_some()).await?;
            match decide(record.as_ref(), &event) {
                Outcome::Apply(next) => {
                    if self.commit(&next, revision).await? {
                        if let Event::GenerateDone { task, .. } = event {
                            let per = next.spec.chunks_per_task.max(1) as u32;
                            CHUNKS_DONE.inc_by(u64::from(per.min(next.chunks.saturating_sub(task * per))));
                        }
                    } else {
                        lost += 1;
                    }
                    // Written or lost to another replica: read again, carry out the outbox, and
                    // see the event as the duplicate it now is.
                }
                Outcome::Duplicate | Outcome::Ignored(_) => return Ok(()),
                Outcome::TooEarly(why) => return Err(TaskError::NotYet(why.into())),
            }
        }
        Err(TaskError::transient(format!("run {run_id}: too much contention on its record")))
    }
}

impl Coordinator {
    async fn event_of(&self, message: &Message, run_id: &RunId, recorded: bool) -> Result<Event, TaskError> {
        Ok(match message {
            Message::RunSubmitted { spec, .. } => {
                if recorded {
                    // Already decided: do not read and chunk the corpus again.
                    return Ok(Event::Submitted { run_id: run_id.clone(), spec: spec.clone(), chunks: 1 });
                }
                match self.prepare(run_id, spec).await? {
                    Ok(chunks) => Event::Submitted { run_id: run_id.clone(), spec: spec.clone(), chunks },
                    Err(reason) => Event::Rejected { run_id: run_id.clone(), spec: spec.clone(), reason },
                }
            }
            Message::GenerateDone { task, questions, failed_chunks, spent_usd, budget_reached, .. } => Event::GenerateDone {
                task: *task,
                questions: *questions,
                failed_chunks: *failed_chunks,
                spent_usd: *spent_usd,
                budget_reached: *budget_reached,
            },
            Message::CheckpointSaved { label, step, .. } => Event::CheckpointSaved { label: label.clone(), step: *step },
            Message::TrainDone { steps, checkpoints, .. } => Event::TrainDone { steps: *steps, checkpoints: checkpoints.clone() },
            Message::EvaluateDone { label, value, .. } => Event::EvaluateDone { label: label.clone(), value: *value },
            Message::CancelRun { .. } => Event::Cancel,
            Message::StageFailed { stage, reason, .. } => Event::Failed { reason: format!("{stage}: {reason}") },
            other => return Err(TaskError::fatal(format!("the coordinator does not handle {other:?}"))),
        })
    }

    /// Writes the record if nobody else changed it since it was read; then tells watchers.
    async fn commit(&self, record: &RunRecord, revision: Option<u64>) -> Result<bool, TaskError> {
        let run_id = record.run_id.as_str();
        let bytes: bytes::Bytes = serde_json::to_vec(record).expect("records serialize").into();
        let written = match revision {
            Some(rev) => self.bus.runs.update(run_id, bytes, rev).await.is_ok(),
            None => self.bus.runs.create(run_id, bytes).await.is_ok(),
        };
        if written {
            tracing::info!(run_id, state = record.state.name(), outbox = record.outbox.len(), "run updated");
            self.bus.event(run_id, "state", &serde_json::to_value(record).expect("records serialize")).await;
        }
        Ok(written)
    }

    /// Carries out the first commands of the outbox, then writes the record without them and with
    /// the events they produced applied. Losing the write race is fine: the commands are idempotent
    /// and whoever won has the newer record.
    async fn drain(&self, record: &RunRecord, revision: Option<u64>) -> Result<bool, TaskError> {
        let batch = record.outbox.len().min(DRAIN_BATCH);
        let mut follow_ups = Vec::new();
        for command in &record.outbox[..batch] {
            if let Some(event) = self.execute(record, command).await? {
                follow_ups.push(event);
            }
        }
        let mut next = record.clone();
        next.outbox.drain(..batch);
        for event in &follow_ups {
            if let Outcome::Apply(r) = decide(Some(&next), event) {
                next = *r;
            }
        }
        self.commit(&next, revision).await
    }

    async fn execute(&self, record: &RunRecord, command: &Command) -> Result<Option<Event>, TaskError> {
        let run_id = record.run_id.clone();
        Ok(match command {
            Command::PublishGenerate { task, first, count } => {
                let m = Message::GenerateTask { run_id, task: *task, first: *first, count: *count };
                self.bus.publish(Stage::Generate, &m).await?;
                None
            }
            Command::Assemble => Some(match self.assemble(record).await? {
                Ok(()) => Event::Assembled,
                Err(reason) => Event::Failed { reason },
            }),
            Command::PublishTrain => {
                self.bus.publish(Stage::Train, &Message::TrainTask { run_id }).await?;
                None
            }
            Command::PublishEvaluate { label } => {
                self.bus.publish(Stage::Evaluate, &Message::EvaluateTask { run_id, label: label.clone() }).await?;
                None
            }
            Command::Finalize { best } => {
                self.finalize(record, best).await?;
                Some(Event::Finalized)
            }
        })
    }

    /// Reads and chunks the corpus, writes the chunk list and the spec. Err(reason) for input that
    /// can never work, which fails the run with that reason.
    async fn prepare(&self, run_id: &RunId, spec: &RunSpec) -> Result<Result<u32, String>, TaskError> {
        if let Err(e) = spec.validate(run_id) {
            return Ok(Err(e.to_string()));
        }
        let raw = match self.store.get(&spec.input_key).await {
            Ok(raw) => raw,
            Err(embedfleet_core::StoreError::NotFound { location }) => return Ok(Err(format!("corpus {location} not found"))),
            Err(e) => return Err(e.into()),
        };
        let text = String::from_utf8_lossy(&raw);
        let options = IngestOptions { text_field: spec.dataset.text_field.clone() };
        let docs = match parse_json_documents(Path::new(&spec.input_key), &text, &options) {
            Ok(d) if !d.is_empty() => d,
            Ok(_) => return Ok(Err("the corpus has no text".into())),
            Err(e) => return Ok(Err(e.to_string())),
        };
        let chunks = match chunk_documents(&docs, &spec.dataset.chunk_config()) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let Ok(count) = u32::try_from(chunks.len()) else {
            return Ok(Err(format!("{} chunks are more than a run can hold; split the corpus", chunks.len())));
        };
        self.store.put(&layout::spec(run_id), serde_json::to_vec(spec).expect("spec serializes")).await?;
        self.store.put(&layout::chunks(run_id), serde_json::to_vec(&chunks).expect("chunks serialize")).await?;
        Ok(Ok(count))
    }

    /// Every task's questions, in chunk order, split and written as the 8 dataset files.
    async fn assemble(&self, record: &RunRecord) -> Result<Result<(), String>, TaskError> {
        let run_id = &record.run_id;
        let chunks: Vec<Chunk> = serde_json::from_slice(&self.store.get(&layout::chunks(run_id)).await?)
            .map_err(|e| TaskError::fatal(format!("chunk list of {run_id}: {e}")))?;
        let mut questions: IndexMap<ChunkId, Vec<String>> = IndexMap::new();
        for task in 0..record.generate_tasks {
            let part: TaskQuestions = serde_json::from_slice(&self.store.get(&layout::questions(run_id, task)).await?)
                .map_err(|e| TaskError::fatal(format!("questions of task {task} of {run_id}: {e}")))?;
            for (chunk, qs) in part.questions {
                questions.insert(ChunkId::from(chunk), qs);
            }
        }
        let (train, val, summary) = match assemble_dataset(&chunks, &questions, &record.spec.dataset.split_config()) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if train.queries.is_empty() || val.queries.is_empty() {
            return Ok(Err(format!("{} training and {} validation questions; both need some", train.queries.len(), val.queries.len())));
        }
        write_dataset(&self.store, &layout::data(run_id), &train, &val, true).await.map_err(TaskError::classify)?;
        tracing::info!(run_id = run_id.as_str(), ?summary, "dataset assembled");
        Ok(Ok(()))
    }

    async fn finalize(&self, record: &RunRecord, best: &embedfleet_core::CheckpointLabel) -> Result<(), TaskError> {
        let run_id = &record.run_id;
        self.store.copy_prefix(&layout::checkpoint(run_id, best), &layout::model(run_id)).await?;
        let base = record.evaluations.iter().find(|(l, _)| l.step_number() == Some(0)).map(|(_, v)| *v);
        let best_value = record.evaluations.get(best).copied();
        let improved = best.step_number() != Some(0);
        let metric = &record.spec.train.metric;
        let verdict = match (base, best_value) {
            (Some(b), Some(v)) if improved => format!("fine-tuned model ({best}) is better than the base: {metric} {v:.4} vs {b:.4}"),
            (Some(b), _) => format!("no checkpoint beat the base model ({metric} {b:.4}); runs/{run_id}/model holds the base model"),
            _ => "no evaluation of the base model".into(),
        };
        let report = serde_json::json!({
            "run_id": run_id,
            "primary_metric": record.spec.train.metric,
            "best": best,
            "improved": improved,
            "verdict": verdict,
            "evaluations": record.evaluations,
            "questions": record.questions,
            "failed_chunks": record.failed_chunks,
            "spent_usd": record.spent_usd,
            "steps": record.steps,
        });
        self.store.put(&layout::report(run_id), serde_json::to_vec_pretty(&report).expect("json")).await?;
        let split_by = serde_json::to_value(record.spec.dataset.split_by).expect("json");
        let generator = serde_json::to_value(record.spec.dataset.generator).expect("json");
        let run = embedfleet_report::fleet::FleetRun {
            run_id,
            base_model: &record.spec.model_id,
            best,
            split_by: split_by.as_str().unwrap_or_default(),
            generator: generator.as_str().unwrap_or_default(),
            failed_chunks: record.failed_chunks as usize,
            train: &record.spec.train,
            run_prefix: layout::run(run_id),
            results_prefix: layout::results(run_id),
            model_prefix: layout::model(run_id),
            data_prefix: layout::data(run_id),
            chunks_key: layout::chunks(run_id),
        };
        embedfleet_report::fleet::write_run_report(&self.store, &run).await.map_err(TaskError::classify)?;
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
        for state in RunState::ALL {
            RUNS.with_label_values(&[state.name()]).set(counts.get(state.name()).copied().unwrap_or(0));
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
}
