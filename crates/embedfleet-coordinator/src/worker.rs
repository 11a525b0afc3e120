//! The coordinator worker: events are turned into a new record by [`decide`]; the record is
//! written with a compare-and-set on the KV revision *before* anything is done about it, and the
//! record's outbox is carried out afterwards (by whichever replica sees it first) and cleared. An
//! event is acknowledged only once the outbox it caused is empty, so a coordinator that dies at any
//! point leaves the event to be redelivered and the work to be finished; an event that overtook the
//! one it depends on is delivered again shortly, never dropped.
//!
//! Events of one run are applied in batches (group commit): while a run's record is being written,
//! its next events queue up, and the next write applies all of them at once. A run of a million
//! chunks thus costs a record write per batch of events, not per event, and the writes of one run
//! never race each other inside a process.
//!
//! The coordinator binary also serves the ingest stage ([`Ingester`]): it streams a run's corpus
//! from the store, chunks it, writes each task's shard, and reports `ChunksReady` as it goes, so
//! generators start on the first shards while the rest of the corpus is still being read.

use crate::machine::{Command, Event, Outcome, RunRecord, decide};
use embedfleet_bus::layout::{self, TaskQuestions};
use embedfleet_bus::messages::{Message, RunSpec};
use embedfleet_bus::worker::{TaskError, TaskHandler};
use embedfleet_bus::{Bus, BusError, RunState, Stage};
use embedfleet_core::assemble::{AssembleError, assemble_shards};
use embedfleet_core::chunk::{ChunkConfig, chunk_document};
use embedfleet_core::ingest::{IngestError, for_each_json_document};
use embedfleet_core::model_source::ModelSources;
use embedfleet_core::shard::{CorpusIndex, MAX_TASKS, Shard, Sharder, TooManyTasks};
use embedfleet_core::{ArtifactStore, GeneratorKind, IngestOptions, RunId, Transient};
use futures::StreamExt;
use prometheus::{
    Histogram, IntCounter, IntGauge, IntGaugeVec, register_histogram, register_int_counter, register_int_gauge, register_int_gauge_vec,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

pub static RUNS: LazyLock<IntGaugeVec> =
    LazyLock::new(|| register_int_gauge_vec!("embedfleet_coordinator_runs", "Runs by state", &["state"]).expect("registers once"));
pub static CHUNKS_DONE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("embedfleet_coordinator_chunks_done_total", "Chunks whose questions are in").expect("registers once")
});
pub static CHUNKS_INGESTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("embedfleet_coordinator_chunks_ingested_total", "Chunks cut from corpora and written as task shards")
        .expect("registers once")
});
pub static BATCH_EVENTS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "embedfleet_coordinator_batch_events",
        "Events applied by one write of a run's record",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]
    )
    .expect("registers once")
});
pub static RECORD_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("embedfleet_coordinator_record_bytes", "Size of the run record last written").expect("registers once")
});

/// Lost compare-and-set races (another replica wrote first) before a batch is put back for later.
const MAX_LOST_RACES: usize = 50;
/// Shard writes in flight while a corpus is ingested.
const SHARD_WRITES_IN_FLIGHT: usize = 4;
/// How often the ingest stage reports progress (and looks whether the run was cancelled).
const INGEST_REPORT_EVERY: Duration = Duration::from_millis(500);

/// Settings every coordinator replica of a fleet should share.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Generate tasks of one run out at once (see [`RunRecord::tasks_in_flight`]).
    pub tasks_in_flight: u32,
    /// Where a run's base and mining models may come from: a run naming another source is
    /// refused before anything is done for it.
    pub model_sources: ModelSources,
    /// The LLM budget of a run submitted without one.
    pub default_max_cost_usd: Option<f64>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self { tasks_in_flight: 32, model_sources: ModelSources { hub: true, s3_prefixes: Vec::new() }, default_max_cost_usd: None }
    }
}

/// Chunks per generate task when the submission names none. LLM tasks stay small: each chunk is
/// seconds of LLM time, and a small task loses little when it has to be done again. Offline tasks
/// are large, since a chunk takes microseconds and a task's fixed cost (a few store and bus round
/// trips) dominates. Either way a run has at most a few thousand (offline) or 65,536 (LLM) tasks,
/// estimated from the corpus's size in bytes (never fewer characters than bytes, so at least as
/// many chunks as the estimate).
pub fn chunks_per_task(spec: &RunSpec, corpus_bytes: u64) -> u32 {
    if let Some(n) = spec.chunks_per_task {
        return n as u32;
    }
    let chunk = spec.dataset.chunk_config();
    let estimate = corpus_bytes / (chunk.size.saturating_sub(chunk.overlap).max(1) as u64) + 1;
    let (floor, most_tasks) = match spec.dataset.generator {
        GeneratorKind::Offline => (256, 4096),
        GeneratorKind::Llm | GeneratorKind::Auto => (8, 65_536),
    };
    estimate.div_ceil(most_tasks).clamp(floor, 10_000) as u32
}

/// Refuses a corpus whose run would have more generate tasks than a run may have
/// ([`MAX_TASKS`]), judged by its size before a byte of it is read, naming the limit and the flag.
/// Ok(chunks per task) otherwise. Only an explicit, small `--chunks-per-task` can pass the limit:
/// the coordinator's own choice never does.
pub fn check_task_limit(spec: &RunSpec, corpus_bytes: u64) -> Result<u32, String> {
    let per = chunks_per_task(spec, corpus_bytes);
    let chunk = spec.dataset.chunk_config();
    let chunks = corpus_bytes / (chunk.size.saturating_sub(chunk.overlap).max(1) as u64) + 1;
    let tasks = chunks.div_ceil(u64::from(per));
    if chunks > u64::from(u32::MAX) {
        return Err(format!(
            "the corpus ({corpus_bytes} bytes) makes about {chunks} chunks, more than the {} a run may have; split it into several runs",
            u32::MAX
        ));
    }
    if tasks > u64::from(MAX_TASKS) {
        return Err(format!(
            "the corpus ({corpus_bytes} bytes) makes about {chunks} chunks, {tasks} generate tasks of {per}: more than the {MAX_TASKS} \
             a run may have. Pass a larger --chunks-per-task (at least {}), or leave it out and the coordinator chooses",
            chunks.div_ceil(u64::from(MAX_TASKS))
        ));
    }
    Ok(per)
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("run record {run}: {source}; delete the key from the {bucket} bucket if it was written by hand", bucket = embedfleet_bus::subjects::RUNS_BUCKET)]
    Unreadable { run: String, source: serde_json::Error },
    #[error(
        "run record {run} would be {bytes} bytes, more than the NATS server takes in one message ({limit}); \
         this is a bug in how the record grows, please report it (the run is kept as it was)"
    )]
    TooLarge { run: String, bytes: usize, limit: usize },
}

impl Transient for RecordError {
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

/// An event waiting for its run's next record write, and where its result goes.
struct Pending {
    message: Message,
    done: tokio::sync::oneshot::Sender<Result<(), TaskError>>,
}

#[derive(Default)]
struct RunQueue {
    pending: Vec<Pending>,
    /// A handler is applying this run's events; it takes the pending ones before it stops.
    leading: bool,
}

pub struct Coordinator {
    pub bus: Bus,
    pub store: ArtifactStore,
    pub config: CoordinatorConfig,
    queues: Mutex<HashMap<RunId, RunQueue>>,
}

impl TaskHandler for Coordinator {
    async fn handle(&self, message: Message, _deliveries: i64) -> Result<(), TaskError> {
        let run_id = message.run_id().clone();
        let (done, result) = tokio::sync::oneshot::channel();
        let lead = {
            let mut queues = self.queues.lock().expect("not poisoned");
            let queue = queues.entry(run_id.clone()).or_default();
            queue.pending.push(Pending { message, done });
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            // This handler applies batches of the run's events until none is waiting; others that
            // arrive meanwhile wait for their result below.
            loop {
                let batch = {
                    let mut queues = self.queues.lock().expect("not poisoned");
                    let queue = queues.get_mut(&run_id).expect("a leader's queue stays");
                    if queue.pending.is_empty() {
                        queues.remove(&run_id);
                        break;
                    }
                    std::mem::take(&mut queue.pending)
                };
                let (messages, senders): (Vec<Message>, Vec<_>) = batch.into_iter().map(|p| (p.message, p.done)).unzip();
                let results = self.apply_batch(&run_id, &messages).await;
                for (sender, result) in senders.into_iter().zip(results) {
                    let _ = sender.send(result);
                }
            }
        }
        result.await.unwrap_or_else(|_| Err(TaskError::transient("the coordinator dropped the event; it will come again")))
    }
}

impl Coordinator {
    pub fn new(bus: Bus, store: ArtifactStore, config: CoordinatorConfig) -> Self {
        Self { bus, store, config, queues: Mutex::new(HashMap::new()) }
    }

    /// Applies a batch of one run's events with one record write, then carries out the outbox it
    /// filled. Each event's result says whether its message may be acknowledged.
    async fn apply_batch(&self, run_id: &RunId, messages: &[Message]) -> Vec<Result<(), TaskError>> {
        let all = |e: TaskError| -> Vec<Result<(), TaskError>> {
            let text = e.to_string();
            let transient = !matches!(e, TaskError::Fatal(_));
            messages
                .iter()
                .map(|_| Err(if transient { TaskError::transient(text.clone()) } else { TaskError::fatal(text.clone()) }))
                .collect()
        };
        let mut lost = 0;
        while lost < MAX_LOST_RACES {
            let (record, revision) = match load_record(&self.bus, run_id).await {
                Ok(loaded) => loaded,
                Err(e) => return all(e.into()),
            };
            // Finish what an earlier decision left before deciding anything new.
            if let Some(r) = record.as_ref().filter(|r| !r.outbox.is_empty()) {
                match self.drain(r, revision).await {
                    Ok(true) => {}
                    Ok(false) => lost += 1,
                    Err(e) => return all(e),
                }
                continue;
            }
            let mut current = record;
            let mut results = Vec::with_capacity(messages.len());
            let mut applied = 0;
            let mut chunks_done = 0u64;
            for message in messages {
                let event = match self.event_of(message, run_id, current.is_some()).await {
                    Ok(event) => event,
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                };
                match decide(current.as_ref(), &event) {
                    Outcome::Apply(next) => {
                        if let Event::GenerateDone { task, .. } = event {
                            chunks_done += chunks_of_task(&next, task);
                        }
                        current = Some(*next);
                        applied += 1;
                        results.push(Ok(()));
                    }
                    Outcome::Duplicate | Outcome::Ignored(_) => results.push(Ok(())),
                    Outcome::TooEarly(why) => results.push(Err(TaskError::NotYet(why.into()))),
                }
            }
            let Some(next) = current.filter(|_| applied > 0) else { return results };
            match self.commit(&next, revision).await {
                Ok(true) => {
                    BATCH_EVENTS.observe(applied as f64);
                    CHUNKS_DONE.inc_by(chunks_done);
                }
                // Lost to another replica: read again, and see these events as what they now are.
                Ok(false) => {
                    lost += 1;
                    continue;
                }
                Err(e) => return all(e),
            }
            // Carry out what this batch decided before its messages are acknowledged.
            if let Err(e) = self.finish_outbox(run_id).await {
                return all(e);
            }
            return results;
        }
        all(TaskError::transient(format!("run {run_id}: another coordinator replica kept writing its record first; trying again later")))
    }

    /// Carries out the run's outbox until it is empty (or another replica took it over).
    async fn finish_outbox(&self, run_id: &RunId) -> Result<(), TaskError> {
        for _ in 0..MAX_LOST_RACES {
            let (record, revision) = load_record(&self.bus, run_id).await?;
            match record {
                Some(r) if !r.outbox.is_empty() => {
                    self.drain(&r, revision).await?;
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    async fn event_of(&self, message: &Message, run_id: &RunId, recorded: bool) -> Result<Event, TaskError> {
        Ok(match message {
            Message::RunSubmitted { spec, .. } => {
                if recorded {
                    // Already decided: a duplicate, whatever the facts.
                    return Ok(Event::Submitted { run_id: run_id.clone(), spec: spec.clone(), chunks_per_task: 1, tasks_in_flight: 1 });
                }
                // The fleet's default budget caps a run that names none.
                let mut spec = spec.clone();
                if spec.max_cost_usd.is_none() {
                    spec.max_cost_usd = self.config.default_max_cost_usd;
                }
                match self.admit(run_id, &spec).await? {
                    Ok(chunks_per_task) => Event::Submitted {
                        run_id: run_id.clone(),
                        spec: spec.clone(),
                        chunks_per_task,
                        tasks_in_flight: self.config.tasks_in_flight,
                    },
                    Err(reason) => Event::Rejected { run_id: run_id.clone(), spec, reason },
                }
            }
            Message::ChunksReady { tasks, chunks, documents, complete, .. } => {
                Event::ChunksReady { tasks: *tasks, chunks: *chunks, documents: *documents, complete: *complete }
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

    /// Checks a submission before its run is recorded: its settings, and that its corpus is there.
    /// Ok(chunks per task), or Err(reason) for input that can never work, which fails the run.
    async fn admit(&self, run_id: &RunId, spec: &RunSpec) -> Result<Result<u32, String>, TaskError> {
        if let Err(e) = spec.validate(run_id) {
            return Ok(Err(e.to_string()));
        }
        for model in std::iter::once(&spec.model_id).chain(spec.train.mining.mining_model.as_ref()) {
            if let Err(refused) = self.config.model_sources.check(model) {
                return Ok(Err(refused.to_string()));
            }
        }
        match self.store.size(&spec.input_key).await? {
            None => Ok(Err(format!("corpus {} not found", self.store.describe(&spec.input_key)))),
            Some(bytes) => Ok(check_task_limit(spec, bytes)),
        }
    }

    /// Writes the record if nobody else changed it since it was read; then tells watchers.
    async fn commit(&self, record: &RunRecord, revision: Option<u64>) -> Result<bool, TaskError> {
        let run_id = record.run_id.as_str();
        let bytes: bytes::Bytes = serde_json::to_vec(record).expect("records serialize").into();
        // The server refuses a value over its message limit; say so rather than call it a race.
        let limit = self.bus.client.server_info().max_payload;
        if limit > 0 && bytes.len() > limit {
            return Err(TaskError::fatal(RecordError::TooLarge { run: run_id.to_owned(), bytes: bytes.len(), limit }));
        }
        let len = bytes.len();
        let written = match revision {
            Some(rev) => self.bus.runs.update(run_id, bytes, rev).await.is_ok(),
            None => self.bus.runs.create(run_id, bytes).await.is_ok(),
        };
        if written {
            RECORD_BYTES.set(len as i64);
            tracing::debug!(run_id, state = record.state.name(), outbox = record.outbox.len(), "run updated");
            let progress = serde_json::json!({
                "state": record.state.name(),
                "tasks_done": record.tasks_done(),
                "tasks": record.ingest.tasks,
                "questions": record.questions,
                "steps": record.steps,
            });
            self.bus.event(run_id, "state", &progress).await;
        }
        Ok(written)
    }

    /// Carries out the outbox's commands in order, then writes the record without them and with
    /// the events they produced applied. A cancel written meanwhile is seen at the next read:
    /// commands are small (at most `tasks_in_flight` tasks each), so little goes out after it.
    /// Losing the write race is fine: the commands are idempotent and whoever won has the newer
    /// record.
    async fn drain(&self, record: &RunRecord, revision: Option<u64>) -> Result<bool, TaskError> {
        let mut follow_ups = Vec::new();
        for command in &record.outbox {
            if let Some(event) = self.execute(record, command).await? {
                follow_ups.push(event);
            }
        }
        let mut next = record.clone();
        next.outbox.clear();
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
            Command::StartIngest => {
                self.bus.publish(Stage::Ingest, &Message::IngestTask { run_id }).await?;
                None
            }
            Command::PublishGenerate { first, end } => {
                // Sent together, acknowledged together: one round trip for the batch.
                let sends = (*first..*end).map(|task| {
                    let (first_chunk, count) = task_chunks(record, task);
                    let m = Message::GenerateTask { run_id: run_id.clone(), task, first: first_chunk, count };
                    async move { self.bus.publish(Stage::Generate, &m).await }
                });
                for sent in futures::future::join_all(sends).await {
                    sent?;
                }
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

    /// Every task's questions, in chunk order, split and written as the 8 dataset files, streamed
    /// from the shards.
    async fn assemble(&self, record: &RunRecord) -> Result<Result<(), String>, TaskError> {
        let run_id = &record.run_id;
        let keys = layout::shards(run_id);
        let index: CorpusIndex = serde_json::from_slice(&self.store.get(&keys.index()).await?)
            .map_err(|e| TaskError::fatal(format!("corpus index of {run_id}: {e}")))?;
        let started = Instant::now();
        let staged = match assemble_shards(
            &self.store,
            &keys,
            &index,
            &record.spec.dataset.split_config(),
            &self.store,
            &layout::data(run_id),
        )
        .await
        {
            Ok(staged) => staged,
            Err(e @ (AssembleError::OneSided { .. } | AssembleError::Split(_))) => return Ok(Err(e.to_string())),
            Err(e) => return Err(TaskError::classify(e)),
        };
        let summary = staged.summary.clone();
        staged.commit(true).await.map_err(TaskError::classify)?;
        self.store.put(&layout::dataset_summary(run_id), serde_json::to_vec_pretty(&summary).expect("json")).await?;
        tracing::info!(run_id = run_id.as_str(), ?summary, seconds = started.elapsed().as_secs_f64(), "dataset assembled");
        Ok(Ok(()))
    }

    async fn finalize(&self, record: &RunRecord, best: &embedfleet_core::CheckpointLabel) -> Result<(), TaskError> {
        let run_id = &record.run_id;
        self.store.copy_prefix(&layout::checkpoint(run_id, best), &layout::model(run_id)).await?;
        // A checksum of every model file, for report.json and the card: a download is checked
        // against them. The card itself is written after, and is not among them.
        let model_root = format!("{}/", layout::model(run_id));
        let mut model_sha256 = std::collections::BTreeMap::new();
        for key in self.store.list(&layout::model(run_id)).await? {
            let file = key.strip_prefix(&model_root).unwrap_or(&key).to_owned();
            if file != "README.md" {
                model_sha256.insert(file, self.store.sha256(&key).await?);
            }
        }
        let base = record.evaluations.iter().find(|(l, _)| l.step_number() == Some(0)).map(|(_, v)| *v);
        let best_value = record.evaluations.get(best).copied();
        let improved = best.step_number() != Some(0);
        let metric = &record.spec.train.metric;
        // Which checkpoint was kept, in the record's own numbers; whether the difference is more
        // than noise is the page's verdict, from the evaluators' per-question scores.
        let kept = match (base, best_value) {
            (Some(b), Some(v)) if improved => format!("kept {best}: validation {metric} {v:.4} vs the base's {b:.4}"),
            (Some(b), _) => format!("no checkpoint beat the base model ({metric} {b:.4}); runs/{run_id}/model holds the base model"),
            _ => "no evaluation of the base model".into(),
        };
        let split_by = serde_json::to_value(record.spec.dataset.split_by).expect("json");
        let generator = serde_json::to_value(record.spec.dataset.generator).expect("json");
        let run = embedfleet_report::fleet::FleetRun {
            run_id,
            base_model: &record.spec.model_id,
            best,
            split_by: split_by.as_str().unwrap_or_default(),
            generator: generator.as_str().unwrap_or_default(),
            failed_chunks: record.failed_chunks as usize,
            documents: record.ingest.documents as usize,
            train: &record.spec.train,
            run_prefix: layout::run(run_id),
            results_prefix: layout::results(run_id),
            model_prefix: layout::model(run_id),
            data_prefix: layout::data(run_id),
            summary_key: layout::dataset_summary(run_id),
            model_sha256: &model_sha256,
        };
        let written = embedfleet_report::fleet::write_run_report(&self.store, &run).await.map_err(TaskError::classify)?;
        let report = serde_json::json!({
            "run_id": run_id,
            "primary_metric": record.spec.train.metric,
            "best": best,
            "improved": improved,
            "verdict": written.verdict.text,
            "kept": kept,
            "evaluations": record.evaluations,
            "questions": record.questions,
            "failed_chunks": record.failed_chunks,
            "spent_usd": record.spent_usd,
            "steps": record.steps,
            "model_sha256": model_sha256,
        });
        self.store.put(&layout::report(run_id), serde_json::to_vec_pretty(&report).expect("json")).await?;
        Ok(())
    }
}

/// The chunks of task `task`: its first chunk's position and how many. Every shard but the last
/// of a fully read corpus is full.
fn task_chunks(record: &RunRecord, task: u32) -> (u32, u32) {
    let per = u64::from(record.chunks_per_task);
    let first = u64::from(task) * per;
    let count = if record.ingest.complete { per.min(record.ingest.chunks.saturating_sub(first)) } else { per };
    (first as u32, count as u32)
}

fn chunks_of_task(record: &RunRecord, task: u32) -> u64 {
    u64::from(task_chunks(record, task).1)
}

/// The ingest stage: reads a run's corpus from the store as a stream, cuts it into chunks and the
/// chunks into task shards, writes each shard, and tells the coordinator how far it has got. Only
/// a few shards are in memory at a time, whatever the corpus's size. A redelivered ingest task
/// reads the corpus again and skips the shards already recorded.
pub struct Ingester {
    pub bus: Bus,
    pub store: ArtifactStore,
}

#[derive(Debug, thiserror::Error)]
enum IngestFailure {
    #[error(transparent)]
    Input(#[from] IngestError),
    #[error(transparent)]
    TooManyTasks(#[from] TooManyTasks),
    #[error("ingestion stopped")]
    Stopped,
}

impl TaskHandler for Ingester {
    async fn handle(&self, message: Message, _deliveries: i64) -> Result<(), TaskError> {
        let Message::IngestTask { run_id } = message else {
            return Err(TaskError::fatal("the ingest stage only handles ingest tasks"));
        };
        let (Some(record), _) = load_record(&self.bus, &run_id).await? else {
            return Err(TaskError::NotYet("the run is not recorded yet".into()));
        };
        if record.state.is_terminal() || record.ingest.complete {
            return Ok(());
        }
        let spec = &record.spec;
        self.store.put(&layout::spec(&run_id), serde_json::to_vec(spec).expect("spec serializes")).await?;
        let reader = self.store.blocking_reader(&spec.input_key).await?;
        let (tx, shards) = tokio::sync::mpsc::channel::<Shard>(SHARD_WRITES_IN_FLIGHT);
        let (path, chunking, per) = (Path::new(&spec.input_key).to_owned(), spec.dataset.chunk_config(), record.chunks_per_task);
        let ingest = IngestOptions { text_field: spec.dataset.text_field.clone() };
        let reading = tokio::task::spawn_blocking(move || read_shards(reader, &path, &ingest, chunking, per, tx));
        let written = self.write_shards(&record, shards).await;
        let index = match reading.await {
            Ok(Ok(index)) => index,
            Ok(Err(IngestFailure::Stopped)) => return written.map(|_| ()),
            Ok(Err(IngestFailure::Input(e @ IngestError::Io { .. }))) => return Err(TaskError::transient(e.to_string())),
            Ok(Err(e)) => return Err(TaskError::fatal(format!("the corpus {}: {e}", self.store.describe(&spec.input_key)))),
            Err(e) => return Err(TaskError::fatal(format!("reading the corpus panicked: {e}"))),
        };
        let shards = written?;
        if shards.stopped {
            return Ok(());
        }
        let keys = layout::shards(&run_id);
        self.store.put(&keys.index(), serde_json::to_vec(&index).expect("index serializes")).await?;
        let done = Message::ChunksReady {
            run_id: run_id.clone(),
            tasks: index.tasks,
            chunks: index.chunks,
            documents: index.documents.len() as u64,
            complete: true,
        };
        self.bus.publish(Stage::Coordinate, &done).await?;
        tracing::info!(
            run_id = run_id.as_str(),
            chunks = index.chunks,
            tasks = index.tasks,
            documents = index.documents.len(),
            "corpus ingested"
        );
        Ok(())
    }
}

/// How the writing side of an ingest ended.
struct ShardsWritten {
    /// The run ended meanwhile, so the rest was not worth writing.
    stopped: bool,
}

impl Ingester {
    /// Writes shards as they come (a few at once, reported in order), and tells the coordinator
    /// how far the prefix of written shards reaches, twice a second.
    async fn write_shards(&self, record: &RunRecord, shards: tokio::sync::mpsc::Receiver<Shard>) -> Result<ShardsWritten, TaskError> {
        let run_id = &record.run_id;
        let keys = layout::shards(run_id);
        let already = record.ingest.tasks;
        let mut writes = tokio_stream_of(shards)
            .map(|shard| {
                let key = keys.chunks(shard.task);
                async move {
                    // Shards the record counts were written by an earlier delivery of this task.
                    if shard.task >= already {
                        self.store.put(&key, serde_json::to_vec(&shard.chunks).expect("chunks serialize")).await?;
                    }
                    Ok::<_, embedfleet_core::StoreError>((shard.task, shard.first + shard.chunks.len() as u64))
                }
            })
            .buffered(SHARD_WRITES_IN_FLIGHT);
        let mut last_report = Instant::now();
        let mut reported = already;
        let mut chunks = 0u64;
        while let Some(written) = writes.next().await {
            let (task, end) = written?;
            CHUNKS_INGESTED.inc_by(end - chunks);
            chunks = end;
            let tasks = task + 1;
            if last_report.elapsed() >= INGEST_REPORT_EVERY && tasks > reported {
                last_report = Instant::now();
                if self.bus.run_state(run_id).await?.is_none_or(RunState::is_terminal) {
                    return Ok(ShardsWritten { stopped: true });
                }
                let ready = Message::ChunksReady { run_id: run_id.clone(), tasks, chunks, documents: 0, complete: false };
                self.bus.publish(Stage::Coordinate, &ready).await?;
                reported = tasks;
            }
        }
        Ok(ShardsWritten { stopped: false })
    }
}

/// The blocking half of ingestion: parses the corpus a record at a time, chunks each document,
/// and hands full shards to the writer. Stops when the writer has gone away.
fn read_shards(
    reader: impl std::io::Read,
    path: &Path,
    options: &IngestOptions,
    chunking: ChunkConfig,
    chunks_per_task: u32,
    tx: tokio::sync::mpsc::Sender<Shard>,
) -> Result<CorpusIndex, IngestFailure> {
    chunking.validate().map_err(|e| IngestError::Io { path: path.to_owned(), source: std::io::Error::other(e.to_string()) })?;
    let mut sharder = Sharder::new(chunks_per_task);
    let reader = std::io::BufReader::with_capacity(1 << 20, reader);
    for_each_json_document(reader, path, options, |doc| -> Result<(), IngestFailure> {
        for shard in sharder.push_document(chunk_document(&doc, &chunking))? {
            tx.blocking_send(shard).map_err(|_| IngestFailure::Stopped)?;
        }
        Ok(())
    })?;
    let (last, index) = sharder.finish()?;
    if let Some(shard) = last {
        tx.blocking_send(shard).map_err(|_| IngestFailure::Stopped)?;
    }
    Ok(index)
}

/// A Tokio channel as a stream.
fn tokio_stream_of<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A generate task's output, as the assembly reads it (for tests and tools).
pub async fn task_questions(store: &ArtifactStore, run_id: &RunId, task: u32) -> Result<TaskQuestions, TaskError> {
    serde_json::from_slice(&store.get(&layout::questions(run_id, task)).await?)
        .map_err(|e| TaskError::fatal(format!("questions of task {task} of {run_id}: {e}")))
}

/// Counts runs by state for the dashboard, every few seconds.
pub async fn export_run_states(bus: Bus) {
    loop {
        let mut counts = std::collections::HashMap::<&'static str, i64>::new();
        if let Ok(mut keys) = bus.runs.keys().await {
            while let Some(Ok(key)) = keys.next().await {
                let Ok(run_id) = RunId::new(key) else { continue };
                if let Ok(Some(state)) = bus.run_state(&run_id).await {
                    *counts.entry(state.name()).or_default() += 1;
                }
            }
        }
        for state in RunState::ALL {
            RUNS.with_label_values(&[state.name()]).set(counts.get(state.name()).copied().unwrap_or(0));
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
}
