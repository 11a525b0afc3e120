//! Where a run's artifacts live in the store. Every key is deterministic, so a redelivered task
//! overwrites the same object.

pub fn run(run_id: &str) -> String {
    format!("runs/{run_id}")
}
pub fn spec(run_id: &str) -> String {
    format!("runs/{run_id}/spec.json")
}
pub fn input_prefix(run_id: &str) -> String {
    format!("runs/{run_id}/input")
}
/// Where the run's corpus shards and each task's questions are.
pub fn shards(run_id: &str) -> embedfleet_core::shard::ShardKeys {
    embedfleet_core::shard::ShardKeys::new(&run(run_id))
}
pub fn questions(run_id: &str, task: u32) -> String {
    shards(run_id).questions(task)
}
pub fn data(run_id: &str) -> String {
    format!("runs/{run_id}/data")
}
pub fn checkpoint(run_id: &str, label: &str) -> String {
    format!("runs/{run_id}/checkpoints/{label}")
}
pub fn resume(run_id: &str) -> String {
    format!("runs/{run_id}/train/resume")
}
pub fn results(run_id: &str) -> String {
    format!("runs/{run_id}/results")
}
pub fn result(run_id: &str, label: &str) -> String {
    format!("runs/{run_id}/results/{label}.json")
}
pub fn model(run_id: &str) -> String {
    format!("runs/{run_id}/model")
}
pub fn report(run_id: &str) -> String {
    format!("runs/{run_id}/report.json")
}

/// `step-<n>` for a training step; `step-0` is the base model.
pub fn label(step: u64) -> embedfleet_core::CheckpointLabel {
    embedfleet_core::CheckpointLabel::step(step)
}

/// The dataset's counts, written beside it when it is assembled.
pub fn dataset_summary(run_id: &str) -> String {
    format!("runs/{run_id}/data/summary.json")
}

pub use embedfleet_core::shard::TaskQuestions;
