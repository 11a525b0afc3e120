//! The coordinator's decisions as a pure function: a run's record and an event in, the new record
//! and the commands to carry out. No I/O here, so the hard part of the fleet is tested without a
//! server; the worker around it does the I/O and guards each transition with a KV revision.

use embedfleet_bus::messages::RunSpec;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Generating,
    Training,
    Done,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Done | RunState::Failed | RunState::Cancelled)
    }

    pub fn name(self) -> &'static str {
        match self {
            RunState::Generating => "generating",
            RunState::Training => "training",
            RunState::Done => "done",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }
}

/// Everything the fleet knows about a run; stored as JSON in the runs KV bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub spec: RunSpec,
    pub state: RunState,
    pub chunks: u32,
    pub generate_tasks: u32,
    pub generate_done: BTreeSet<u32>,
    pub questions: u64,
    pub failed_chunks: u64,
    pub train_done: bool,
    pub steps: u64,
    /// Checkpoints sent to the evaluators (`step-0` is the base model).
    pub checkpoints: BTreeSet<String>,
    pub evaluations: BTreeMap<String, f64>,
    pub best: Option<String>,
    pub error: Option<String>,
}

/// What happened, with the facts the worker looked up for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A run was submitted and its corpus chunked into `chunks` chunks.
    Submitted { run_id: String, spec: RunSpec, chunks: u32 },
    GenerateDone { task: u32, questions: u32, failed_chunks: u32 },
    CheckpointSaved { label: String, step: u64 },
    TrainDone { steps: u64 },
    EvaluateDone { label: String, value: f64 },
    Cancel,
    Failed { reason: String },
}

/// Side effects, each idempotent (deterministic keys and message ids), so carrying one out twice
/// has the effect of once.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    PublishGenerate { task: u32, first: u32, count: u32 },
    /// Read every task's questions, split, write the dataset files.
    Assemble,
    PublishTrain,
    PublishEvaluate { label: String },
    /// Copy the best checkpoint to `runs/<run>/model/`, write the report.
    Finalize { best: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub record: RunRecord,
    pub commands: Vec<Command>,
}

/// Applies `event` to `record` (None before the run exists). Returns None when nothing changes:
/// a duplicate, an event for a finished run, or one that does not fit the run's state.
pub fn decide(record: Option<&RunRecord>, event: &Event) -> Option<Decision> {
    let Some(record) = record else {
        let Event::Submitted { run_id, spec, chunks } = event else { return None };
        let per = spec.chunks_per_task.max(1) as u32;
        let tasks = chunks.div_ceil(per);
        let mut r = RunRecord {
            run_id: run_id.clone(),
            spec: spec.clone(),
            state: RunState::Generating,
            chunks: *chunks,
            generate_tasks: tasks,
            generate_done: BTreeSet::new(),
            questions: 0,
            failed_chunks: 0,
            train_done: false,
            steps: 0,
            checkpoints: BTreeSet::new(),
            evaluations: BTreeMap::new(),
            best: None,
            error: None,
        };
        if *chunks == 0 {
            r.state = RunState::Failed;
            r.error = Some("the corpus has no text to chunk".into());
            return Some(Decision { record: r, commands: vec![] });
        }
        let commands = (0..tasks)
            .map(|t| Command::PublishGenerate { task: t, first: t * per, count: per.min(chunks - t * per) })
            .collect();
        return Some(Decision { record: r, commands });
    };
    if record.state.is_terminal() {
        return None;
    }
    let mut r = record.clone();
    let mut commands = Vec::new();
    match event {
        Event::Submitted { .. } => return None,
        Event::Cancel => r.state = RunState::Cancelled,
        Event::Failed { reason } => {
            r.state = RunState::Failed;
            r.error = Some(reason.clone());
        }
        Event::GenerateDone { task, questions, failed_chunks } => {
            if r.state != RunState::Generating || *task >= r.generate_tasks || !r.generate_done.insert(*task) {
                return None;
            }
            r.questions += *questions as u64;
            r.failed_chunks += *failed_chunks as u64;
            if r.generate_done.len() as u32 == r.generate_tasks {
                r.state = RunState::Training;
                commands.push(Command::Assemble);
                commands.push(Command::PublishTrain);
            }
        }
        Event::CheckpointSaved { label, step } => {
            if r.state != RunState::Training || !r.checkpoints.insert(label.clone()) {
                return None;
            }
            r.steps = r.steps.max(*step);
            commands.push(Command::PublishEvaluate { label: label.clone() });
        }
        Event::TrainDone { steps } => {
            if r.state != RunState::Training || r.train_done {
                return None;
            }
            r.train_done = true;
            r.steps = *steps;
        }
        Event::EvaluateDone { label, value } => {
            if r.state != RunState::Training || r.evaluations.contains_key(label) {
                return None;
            }
            r.evaluations.insert(label.clone(), *value);
        }
    }
    // Training and every evaluation done: the best checkpoint wins; the base model keeps its place
    // unless something beats it strictly.
    if r.state == RunState::Training
        && r.train_done
        && !r.checkpoints.is_empty()
        && r.checkpoints.iter().all(|c| r.evaluations.contains_key(c))
    {
        let best = best_label(&r.evaluations);
        r.best = Some(best.clone());
        r.state = RunState::Done;
        commands.push(Command::Finalize { best });
    }
    Some(Decision { record: r, commands })
}

/// The highest value; on a tie the earliest step (the base model is `step-0`).
pub fn best_label(evaluations: &BTreeMap<String, f64>) -> String {
    let step = |l: &str| l.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()).unwrap_or(u64::MAX);
    let mut labels: Vec<(&String, &f64)> = evaluations.iter().collect();
    labels.sort_by_key(|(l, _)| step(l));
    let mut best = labels[0];
    for candidate in &labels[1..] {
        if candidate.1 > best.1 {
            best = *candidate;
        }
    }
    best.0.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submitted(chunks: u32) -> Event {
        Event::Submitted { run_id: "r1".into(), spec: RunSpec { chunks_per_task: 4, ..Default::default() }, chunks }
    }

    fn apply(record: &mut Option<RunRecord>, event: Event) -> Vec<Command> {
        match decide(record.as_ref(), &event) {
            Some(d) => {
                *record = Some(d.record);
                d.commands
            }
            None => vec![],
        }
    }

    #[test]
    fn a_run_from_submission_to_done() {
        let mut r = None;
        let cmds = apply(&mut r, submitted(10));
        assert_eq!(
            cmds,
            vec![
                Command::PublishGenerate { task: 0, first: 0, count: 4 },
                Command::PublishGenerate { task: 1, first: 4, count: 4 },
                Command::PublishGenerate { task: 2, first: 8, count: 2 },
            ]
        );
        assert!(apply(&mut r, Event::GenerateDone { task: 0, questions: 8, failed_chunks: 0 }).is_empty());
        // A redelivered completion changes nothing.
        assert!(decide(r.as_ref(), &Event::GenerateDone { task: 0, questions: 8, failed_chunks: 0 }).is_none());
        assert!(apply(&mut r, Event::GenerateDone { task: 2, questions: 4, failed_chunks: 0 }).is_empty());
        assert_eq!(apply(&mut r, Event::GenerateDone { task: 1, questions: 8, failed_chunks: 0 }), vec![Command::Assemble, Command::PublishTrain]);
        assert_eq!(r.as_ref().unwrap().state, RunState::Training);
        assert_eq!(r.as_ref().unwrap().questions, 20);

        for (label, step) in [("step-0", 0), ("step-5", 5), ("step-10", 10)] {
            assert_eq!(apply(&mut r, Event::CheckpointSaved { label: label.into(), step }), vec![Command::PublishEvaluate { label: label.into() }]);
        }
        assert!(decide(r.as_ref(), &Event::CheckpointSaved { label: "step-5".into(), step: 5 }).is_none(), "no second evaluation");
        apply(&mut r, Event::EvaluateDone { label: "step-0".into(), value: 0.80 });
        apply(&mut r, Event::EvaluateDone { label: "step-10".into(), value: 0.85 });
        assert!(apply(&mut r, Event::TrainDone { steps: 10 }).is_empty(), "an evaluation is still out");
        assert_eq!(apply(&mut r, Event::EvaluateDone { label: "step-5".into(), value: 0.86 }), vec![Command::Finalize { best: "step-5".into() }]);
        let done = r.unwrap();
        assert_eq!(done.state, RunState::Done);
        assert!(decide(Some(&done), &Event::EvaluateDone { label: "x".into(), value: 1.0 }).is_none(), "terminal runs ignore events");
    }

    #[test]
    fn the_base_model_wins_ties() {
        let evals = BTreeMap::from([("step-0".to_string(), 0.8), ("step-10".to_string(), 0.8), ("step-5".to_string(), 0.7)]);
        assert_eq!(best_label(&evals), "step-0");
    }

    #[test]
    fn no_second_train_task_and_cancel_and_failure() {
        let mut r = None;
        apply(&mut r, submitted(2));
        let d = decide(r.as_ref(), &Event::GenerateDone { task: 0, questions: 4, failed_chunks: 0 }).unwrap();
        assert_eq!(d.commands.iter().filter(|c| **c == Command::PublishTrain).count(), 1);
        // A second coordinator that read the same record would decide the same thing, but the KV
        // revision lets only one write; the loser re-reads and sees no change to make.
        let after = d.record;
        assert!(decide(Some(&after), &Event::GenerateDone { task: 0, questions: 4, failed_chunks: 0 }).is_none());

        let mut c = Some(after.clone());
        apply(&mut c, Event::Cancel);
        assert_eq!(c.unwrap().state, RunState::Cancelled);
        let mut f = Some(after);
        apply(&mut f, Event::Failed { reason: "poison".into() });
        assert_eq!(f.as_ref().unwrap().state, RunState::Failed);
        assert_eq!(f.unwrap().error.as_deref(), Some("poison"));

        let mut empty = None;
        assert!(apply(&mut empty, submitted(0)).is_empty());
        assert_eq!(empty.unwrap().state, RunState::Failed);
    }
}
