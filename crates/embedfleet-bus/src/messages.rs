//! Typed messages with a schema version. Every message on the bus is an [`Envelope`]; a worker that
//! meets a schema it does not know dead-letters the message with the reason instead of guessing.

use serde::{Deserialize, Serialize};

pub const SCHEMA_VERSION: u32 = 1;

/// What a run does, as submitted; every stage reads its part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Store key of the corpus (a JSON/JSONL file) relative to the store root.
    pub input_key: String,
    pub text_field: Option<String>,
    pub chunk_size: usize,
    pub chunk_overlap: usize,
    pub questions_per_chunk: usize,
    pub train_ratio: f64,
    /// `document` or `chunk`.
    pub split_by: String,
    pub seed: u64,
    /// `offline` or `llm`.
    pub generator: String,
    /// Chunks per generate task.
    pub chunks_per_task: usize,
    pub model_id: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Checkpoint for evaluation every N steps (and at the end).
    pub evaluation_steps: usize,
}

impl Default for RunSpec {
    fn default() -> Self {
        Self {
            input_key: String::new(),
            text_field: None,
            chunk_size: 1000,
            chunk_overlap: 200,
            questions_per_chunk: 2,
            train_ratio: 0.8,
            split_by: "document".into(),
            seed: 42,
            generator: "offline".into(),
            chunks_per_task: 8,
            model_id: "BAAI/bge-small-en".into(),
            epochs: 1,
            batch_size: 10,
            learning_rate: 2e-5,
            evaluation_steps: 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// CLI → coordinator.
    RunSubmitted { run_id: String, spec: RunSpec },
    /// Coordinator → generators: questions for chunks `first..first + count` of the run's chunk list.
    GenerateTask { run_id: String, task: u32, first: u32, count: u32 },
    /// Generator → coordinator.
    GenerateDone { run_id: String, task: u32, questions: u32, failed_chunks: u32 },
    /// Coordinator → trainer.
    TrainTask { run_id: String },
    /// Trainer → coordinator: a model to score was saved under `runs/<run>/checkpoints/<label>/`.
    CheckpointSaved { run_id: String, label: String, step: u64 },
    /// Trainer → coordinator.
    TrainDone { run_id: String, steps: u64 },
    /// Coordinator → evaluators.
    EvaluateTask { run_id: String, label: String },
    /// Evaluator → coordinator.
    EvaluateDone { run_id: String, label: String, value: f64 },
    /// CLI → coordinator.
    CancelRun { run_id: String },
    /// Any worker → coordinator: a task of this run can never succeed.
    StageFailed { run_id: String, stage: String, reason: String },
}

impl Message {
    pub fn run_id(&self) -> &str {
        match self {
            Message::RunSubmitted { run_id, .. }
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

    /// A stable id for JetStream's duplicate detection: publishing the same logical message twice
    /// (a retried coordinator step, a racing replica) stores it once.
    pub fn dedup_id(&self) -> String {
        match self {
            Message::RunSubmitted { run_id, .. } => format!("{run_id}.submitted"),
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
    #[error("unknown schema version {found} (this worker speaks {SCHEMA_VERSION}); upgrade the worker or the publisher")]
    UnknownSchema { found: u32 },
}

pub fn encode(message: &Message) -> Vec<u8> {
    serde_json::to_vec(&Envelope { schema: SCHEMA_VERSION, message: message.clone() }).expect("messages serialize")
}

pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
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

    #[test]
    fn round_trip_and_bad_versions() {
        let m = Message::GenerateTask { run_id: "r1".into(), task: 3, first: 24, count: 8 };
        assert_eq!(decode(&encode(&m)).unwrap(), m);
        assert_eq!(decode(br#"{"schema": 9, "type": "train_task", "run_id": "r"}"#), Err(DecodeError::UnknownSchema { found: 9 }));
        assert!(matches!(decode(b"not json"), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode(br#"{"schema": 1, "type": "nope"}"#), Err(DecodeError::Malformed(_))));
    }
}
