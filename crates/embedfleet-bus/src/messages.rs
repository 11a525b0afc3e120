//! Typed messages with a schema version. Every message on the bus is an [`Envelope`]; a worker that
//! meets a schema it does not know dead-letters the message with the reason instead of guessing.

use embedfleet_core::config::defaults;
use embedfleet_core::{CheckpointLabel, ConfigError, DatasetConfig, Precision, RunId, TrainConfig};
use serde::{Deserialize, Serialize};

/// 2: run ids and checkpoint labels validated, the run spec holds the shared dataset and training
/// settings, `TrainDone` names every checkpoint, generation reports its spend.
/// 3: the corpus is read by an ingest task that reports `ChunksReady` shard by shard; a spec may
/// leave the task size to the coordinator.
pub const SCHEMA_VERSION: u32 = 3;

/// No embedfleet message comes near this; anything bigger is refused before parsing.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What a run does, as submitted; every stage reads its part. The dataset and training settings
/// are the very structs `embedfleet generate` and `embedfleet finetune` take as flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSpec {
    /// Store key of the corpus (a JSON/JSONL file); it lies under `runs/<run>/input/`.
    pub input_key: String,
    pub model_id: String,
    pub dataset: DatasetConfig,
    pub train: TrainConfig,
    /// Precision of training and evaluation; None: each worker's own `--precision`.
    pub precision: Option<Precision>,
    /// Chunks per generate task; None: the coordinator chooses from the corpus's size and the
    /// generator (see `embedfleet_coordinator::worker::chunks_per_task`).
    pub chunks_per_task: Option<usize>,
    /// The run's LLM budget, shared by every generator replica.
    pub max_cost_usd: Option<f64>,
}

impl Default for RunSpec {
    fn default() -> Self {
        Self {
            input_key: String::new(),
            model_id: defaults::MODEL_ID.into(),
            dataset: DatasetConfig::default(),
            train: TrainConfig::default(),
            precision: None,
            chunks_per_task: None,
            max_cost_usd: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the corpus key '{key}' is not under runs/{run}/input/; a run reads only its own input")]
    ForeignInput { run: String, key: String },
    #[error("--chunks-per-task must be between 1 and 10000, not {0}")]
    ChunksPerTask(usize),
    #[error("--max-cost-usd must be a non-negative number, not {0}")]
    Budget(f64),
    #[error("--model-id is empty")]
    NoModel,
}

impl RunSpec {
    /// Everything a run needs to be startable, checked at `submit` and again by the coordinator.
    pub fn validate(&self, run: &RunId) -> Result<(), SpecError> {
        self.dataset.validate()?;
        self.train.validate()?;
        let own = format!("{}/", crate::layout::input_prefix(run));
        let inside = self
            .input_key
            .strip_prefix(&own)
            .is_some_and(|rest| !rest.is_empty() && rest.split('/').all(|part| !part.is_empty() && part != "." && part != ".."));
        if !inside {
            return Err(SpecError::ForeignInput { run: run.to_string(), key: self.input_key.chars().take(200).collect() });
        }
        if let Some(n) = self.chunks_per_task.filter(|n| !(1..=10_000).contains(n)) {
            return Err(SpecError::ChunksPerTask(n));
        }
        if let Some(b) = self.max_cost_usd.filter(|b| !b.is_finite() || *b < 0.0) {
            return Err(SpecError::Budget(b));
        }
        if self.model_id.trim().is_empty() {
            return Err(SpecError::NoModel);
        }
        Ok(())
    }
}

// A message is decoded, handled and dropped, never held in numbers: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// CLI → coordinator.
    RunSubmitted { run_id: RunId, spec: RunSpec },
    /// Coordinator → its ingest stage: read the run's corpus and write it as task shards.
    IngestTask { run_id: RunId },
    /// Ingest stage → coordinator: the shards of tasks `0..tasks` are written (`chunks` chunks of
    /// `documents` documents so far); `complete`: that is the whole corpus.
    ChunksReady { run_id: RunId, tasks: u32, chunks: u64, documents: u64, complete: bool },
    /// Coordinator → generators: questions for the chunks of shard `task`, which are chunks
    /// `first..first + count` of the corpus.
    GenerateTask { run_id: RunId, task: u32, first: u32, count: u32 },
    /// Generator → coordinator. `budget_reached`: the run's budget stopped this task early (its
    /// questions so far are stored).
    GenerateDone {
        run_id: RunId,
        task: u32,
        questions: u32,
        failed_chunks: u32,
        #[serde(default)]
        spent_usd: f64,
        #[serde(default)]
        budget_reached: bool,
    },
    /// Coordinator → trainer.
    TrainTask { run_id: RunId },
    /// Trainer → coordinator: a model to score was saved under `runs/<run>/checkpoints/<label>/`.
    CheckpointSaved { run_id: RunId, label: CheckpointLabel, step: u64 },
    /// Trainer → coordinator: training finished; `checkpoints` is every checkpoint it announced,
    /// the final one last, so the run waits for all of their scores whatever order events arrive in.
    TrainDone { run_id: RunId, steps: u64, checkpoints: Vec<CheckpointLabel> },
    /// Coordinator → evaluators.
    EvaluateTask { run_id: RunId, label: CheckpointLabel },
    /// Evaluator → coordinator.
    EvaluateDone { run_id: RunId, label: CheckpointLabel, value: f64 },
    /// CLI → coordinator.
    CancelRun { run_id: RunId },
    /// Any worker → coordinator: a task of this run can never succeed.
    StageFailed { run_id: RunId, stage: String, reason: String },
}

impl Message {
    pub fn run_id(&self) -> &RunId {
        match self {
            Message::RunSubmitted { run_id, .. }
            | Message::IngestTask { run_id }
            | Message::ChunksReady { run_id, .. }
            | Message::GenerateTask { run_id, .. }
            | Message::GenerateDone { run_id, .. }
            | Message::TrainTask { run_id }
            | Message::CheckpointSaved { run_id, .. }
            | Message::TrainDone { run_id, .. }
            | Message::EvaluateTask { run_id, .. }
            | Message::EvaluateDone { run_id, .. }
            | Message::CancelRun { run_id }
            | Message::StageFailed { run_id, .. } => run_id,
        }
    }

    /// The message's type as its JSON names it (`generate_done`): the last token of its subject.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::RunSubmitted { .. } => "run_submitted",
            Message::IngestTask { .. } => "ingest_task",
            Message::ChunksReady { .. } => "chunks_ready",
            Message::GenerateTask { .. } => "generate_task",
            Message::GenerateDone { .. } => "generate_done",
            Message::TrainTask { .. } => "train_task",
            Message::CheckpointSaved { .. } => "checkpoint_saved",
            Message::TrainDone { .. } => "train_done",
            Message::EvaluateTask { .. } => "evaluate_task",
            Message::EvaluateDone { .. } => "evaluate_done",
            Message::CancelRun { .. } => "cancel_run",
            Message::StageFailed { .. } => "stage_failed",
        }
    }

    /// A stable id for JetStream's duplicate detection: publishing the same logical message twice
    /// (a retried coordinator step, a racing replica) stores it once.
    pub fn dedup_id(&self) -> String {
        match self {
            Message::RunSubmitted { run_id, .. } => format!("{run_id}.submitted"),
            Message::IngestTask { run_id } => format!("{run_id}.ingest"),
            Message::ChunksReady { run_id, tasks, complete, .. } => format!("{run_id}.chunks-ready.{tasks}.{complete}"),
            Message::GenerateTask { run_id, task, .. } => format!("{run_id}.generate.{task}"),
            Message::GenerateDone { run_id, task, .. } => format!("{run_id}.generate-done.{task}"),
            Message::TrainTask { run_id } => format!("{run_id}.train"),
            Message::CheckpointSaved { run_id, label, .. } => format!("{run_id}.checkpoint.{label}"),
            Message::TrainDone { run_id, .. } => format!("{run_id}.train-done"),
            Message::EvaluateTask { run_id, label } => format!("{run_id}.evaluate.{label}"),
            Message::EvaluateDone { run_id, label, .. } => format!("{run_id}.evaluate-done.{label}"),
            Message::CancelRun { run_id } => format!("{run_id}.cancel"),
            Message::StageFailed { run_id, stage, .. } => format!("{run_id}.failed.{stage}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub schema: u32,
    #[serde(flatten)]
    pub message: Message,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("message is not JSON with a schema version: {0}")]
    Malformed(String),
    #[error("message of {0} bytes is larger than any embedfleet message ({MAX_MESSAGE_BYTES} bytes at most)")]
    TooLarge(usize),
    #[error("unknown schema version {found} (this worker speaks {SCHEMA_VERSION}); upgrade the worker or the publisher")]
    UnknownSchema { found: u32 },
}

pub fn encode(message: &Message) -> Vec<u8> {
    serde_json::to_vec(&Envelope { schema: SCHEMA_VERSION, message: message.clone() }).expect("messages serialize")
}

pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    #[derive(Deserialize)]
    struct Version {
        schema: u32,
    }
    let version: Version = serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if version.schema != SCHEMA_VERSION {
        return Err(DecodeError::UnknownSchema { found: version.schema });
    }
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    Ok(envelope.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> RunId {
        RunId::new(s).unwrap()
    }

    #[test]
    fn each_kind_is_the_name_its_json_carries() {
        let spec = RunSpec::default();
        for m in [
            Message::RunSubmitted { run_id: run("r"), spec },
            Message::IngestTask { run_id: run("r") },
            Message::ChunksReady { run_id: run("r"), tasks: 1, chunks: 1, documents: 1, complete: true },
            Message::GenerateTask { run_id: run("r"), task: 0, first: 0, count: 1 },
            Message::GenerateDone { run_id: run("r"), task: 0, questions: 0, failed_chunks: 0, spent_usd: 0.0, budget_reached: false },
            Message::TrainTask { run_id: run("r") },
            Message::CheckpointSaved { run_id: run("r"), label: CheckpointLabel::step(0), step: 0 },
            Message::TrainDone { run_id: run("r"), steps: 0, checkpoints: vec![] },
            Message::EvaluateTask { run_id: run("r"), label: CheckpointLabel::step(0) },
            Message::EvaluateDone { run_id: run("r"), label: CheckpointLabel::step(0), value: 0.5 },
            Message::CancelRun { run_id: run("r") },
            Message::StageFailed { run_id: run("r"), stage: "s".into(), reason: "x".into() },
        ] {
            let json: serde_json::Value = serde_json::from_slice(&encode(&m)).unwrap();
            assert_eq!(json["type"], m.kind());
        }
    }

    #[test]
    fn round_trip_and_bad_versions() {
        let m = Message::GenerateTask { run_id: run("r1"), task: 3, first: 24, count: 8 };
        assert_eq!(decode(&encode(&m)).unwrap(), m);
        assert_eq!(decode(br#"{"schema": 9, "type": "train_task", "run_id": "r"}"#), Err(DecodeError::UnknownSchema { found: 9 }));
        assert_eq!(decode(br#"{"schema": 2, "type": "train_task", "run_id": "r"}"#), Err(DecodeError::UnknownSchema { found: 2 }));
        assert!(matches!(decode(b"not json"), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode(br#"{"schema": 3, "type": "nope"}"#), Err(DecodeError::Malformed(_))));
        let spec = Message::RunSubmitted { run_id: run("r2"), spec: RunSpec::default() };
        assert_eq!(decode(&encode(&spec)).unwrap(), spec);
    }

    #[test]
    fn hostile_ids_and_oversized_messages_do_not_decode() {
        for bad in ["x/../..", "../../etc", ".hidden", "a b", ""] {
            let raw = format!(r#"{{"schema": 3, "type": "train_task", "run_id": {}}}"#, serde_json::to_string(bad).unwrap());
            match decode(raw.as_bytes()) {
                Err(DecodeError::Malformed(reason)) => assert!(reason.contains("invalid run id"), "{reason}"),
                other => panic!("{bad:?} decoded: {other:?}"),
            }
        }
        let raw = br#"{"schema": 3, "type": "evaluate_task", "run_id": "r", "label": "../x"}"#;
        assert!(matches!(decode(raw), Err(DecodeError::Malformed(r)) if r.contains("invalid checkpoint label")));
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(decode(&big), Err(DecodeError::TooLarge(MAX_MESSAGE_BYTES + 1)));
    }

    #[test]
    fn a_spec_reads_only_its_own_input_and_is_valid() {
        let r = run("r1");
        let ok = RunSpec { input_key: "runs/r1/input/corpus.json".into(), ..Default::default() };
        assert!(ok.validate(&r).is_ok());
        for key in ["runs/r2/input/corpus.json", "runs/r1/input/../../r2/input/x", "runs/r1/input/", "runs/r1/inputx", "/etc/passwd", ""] {
            let spec = RunSpec { input_key: key.into(), ..ok.clone() };
            assert!(matches!(spec.validate(&r), Err(SpecError::ForeignInput { .. })), "{key}");
        }
        let zero_batch = RunSpec { train: TrainConfig { batch_size: 0, ..Default::default() }, ..ok.clone() };
        assert!(zero_batch.validate(&r).unwrap_err().to_string().contains("--batch-size"));
        let budget = RunSpec { max_cost_usd: Some(f64::NAN), ..ok.clone() };
        assert!(matches!(budget.validate(&r), Err(SpecError::Budget(_))));
        let tasks = RunSpec { chunks_per_task: Some(0), ..ok };
        assert!(matches!(tasks.validate(&r), Err(SpecError::ChunksPerTask(0))));
    }
}
