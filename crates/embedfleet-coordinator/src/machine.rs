//! The coordinator's decisions as a pure function: a run's record and an event in, an [`Outcome`]
//! out. No I/O here, so the hard part of the fleet is tested without a server (including a
//! property test over every order and duplication of a run's events, below).
//!
//! Persist, then act: a decision never performs its side effects. It appends them to the record's
//! outbox, the worker writes the record (compare-and-set on the KV revision), and only then carries
//! the outbox out and clears it. A coordinator that dies in between leaves the outbox in the record
//! and the event unacknowledged; whoever sees the record next finishes the job. Every command is
//! idempotent (deterministic keys and message ids), so carrying one out twice has the effect of
//! once.

use embedfleet_bus::RunState;
use embedfleet_bus::messages::RunSpec;
use embedfleet_core::{CheckpointLabel, RunId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Everything the fleet knows about a run; stored as JSON in the runs KV bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: RunId,
    pub spec: RunSpec,
    pub state: RunState,
    pub chunks: u32,
    pub generate_tasks: u32,
    pub generate_done: BTreeSet<u32>,
    pub questions: u64,
    pub failed_chunks: u64,
    /// LLM spend reported by the generate tasks.
    #[serde(default)]
    pub spent_usd: f64,
    pub train_done: bool,
    pub steps: u64,
    /// Every checkpoint the trainer said it made (with `TrainDone`): all must be scored.
    #[serde(default)]
    pub announced: BTreeSet<CheckpointLabel>,
    /// Checkpoints sent to the evaluators (`step-0` is the base model).
    pub checkpoints: BTreeSet<CheckpointLabel>,
    pub evaluations: BTreeMap<CheckpointLabel, f64>,
    pub best: Option<CheckpointLabel>,
    pub error: Option<String>,
    /// Side effects decided and not yet confirmed done, in order.
    #[serde(default)]
    pub outbox: Vec<Command>,
}

/// What happened, with the facts the worker looked up for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A run was submitted and its corpus chunked into `chunks` chunks.
    Submitted {
        run_id: RunId,
        spec: RunSpec,
        chunks: u32,
    },
    /// A run was submitted with input that can never work (no text, a bad setting).
    Rejected {
        run_id: RunId,
        spec: RunSpec,
        reason: String,
    },
    GenerateDone {
        task: u32,
        questions: u32,
        failed_chunks: u32,
        spent_usd: f64,
        budget_reached: bool,
    },
    CheckpointSaved {
        label: CheckpointLabel,
        step: u64,
    },
    TrainDone {
        steps: u64,
        checkpoints: Vec<CheckpointLabel>,
    },
    EvaluateDone {
        label: CheckpointLabel,
        value: f64,
    },
    Cancel,
    Failed {
        reason: String,
    },
    /// The outbox's `Assemble` wrote the dataset.
    Assembled,
    /// The outbox's `Finalize` copied the best model and wrote the report.
    Finalized,
}

/// Side effects, each idempotent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    PublishGenerate {
        task: u32,
        first: u32,
        count: u32,
    },
    /// Read every task's questions, split, write the dataset files; then `Assembled` (or `Failed`
    /// for data that cannot be split).
    Assemble,
    PublishTrain,
    PublishEvaluate {
        label: CheckpointLabel,
    },
    /// Copy the best checkpoint to `runs/<run>/model/`, write the report; then `Finalized`.
    Finalize {
        best: CheckpointLabel,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Write this record (its outbox holds what must now be done), then acknowledge.
    Apply(Box<RunRecord>),
    /// Already in the record (a redelivery, a second replica): acknowledge.
    Duplicate,
    /// Depends on something not in the record yet (an event that overtook another): look again
    /// shortly, never drop it.
    TooEarly(&'static str),
    /// Changes nothing and never will (the run has ended): acknowledge.
    Ignored(&'static str),
}

fn new_record(run_id: &RunId, spec: &RunSpec, chunks: u32) -> RunRecord {
    let per = spec.chunks_per_task.max(1) as u32;
    RunRecord {
        run_id: run_id.clone(),
        spec: spec.clone(),
        state: RunState::Generating,
        chunks,
        generate_tasks: chunks.div_ceil(per),
        generate_done: BTreeSet::new(),
        questions: 0,
        failed_chunks: 0,
        spent_usd: 0.0,
        train_done: false,
        steps: 0,
        announced: BTreeSet::new(),
        checkpoints: BTreeSet::new(),
        evaluations: BTreeMap::new(),
        best: None,
        error: None,
        outbox: Vec::new(),
    }
}

fn ends(mut r: RunRecord, state: RunState, error: Option<String>) -> Outcome {
    r.state = state;
    r.error = error;
    // Nothing decided for a run that has ended is worth doing any more.
    r.outbox.clear();
    Outcome::Apply(Box::new(r))
}

pub fn decide(record: Option<&RunRecord>, event: &Event) -> Outcome {
    let Some(record) = record else {
        return match event {
            Event::Submitted { run_id, spec, chunks: 0 } => {
                ends(new_record(run_id, spec, 0), RunState::Failed, Some("the corpus has no text to chunk".into()))
            }
            Event::Submitted { run_id, spec, chunks } => {
                let mut r = new_record(run_id, spec, *chunks);
                let per = spec.chunks_per_task.max(1) as u32;
                r.outbox = (0..r.generate_tasks)
                    .map(|t| Command::PublishGenerate { task: t, first: t * per, count: per.min(chunks - t * per) })
                    .collect();
                Outcome::Apply(Box::new(r))
            }
            Event::Rejected { run_id, spec, reason } => ends(new_record(run_id, spec, 0), RunState::Failed, Some(reason.clone())),
            _ => Outcome::TooEarly("the run is not recorded yet"),
        };
    };
    if record.state.is_terminal() {
        return terminal(record, event);
    }
    let mut r = record.clone();
    use RunState::*;
    match event {
        Event::Submitted { .. } | Event::Rejected { .. } => return Outcome::Duplicate,
        Event::Cancel => return ends(r, Cancelled, None),
        Event::Failed { reason } => return ends(r, Failed, Some(reason.clone())),
        Event::GenerateDone { task, questions, failed_chunks, spent_usd, budget_reached } => {
            if r.generate_done.contains(task) {
                return Outcome::Duplicate;
            }
            if r.state != Generating || *task >= r.generate_tasks {
                return Outcome::Ignored("no such generate task is outstanding");
            }
            r.generate_done.insert(*task);
            r.questions += u64::from(*questions);
            r.failed_chunks += u64::from(*failed_chunks);
            r.spent_usd += spent_usd.max(0.0);
            if *budget_reached {
                let reason = budget_message(&r);
                return ends(r, BudgetReached, Some(reason));
            }
            if r.generate_done.len() as u32 == r.generate_tasks {
                r.state = Assembling;
                r.outbox.push(Command::Assemble);
            }
        }
        Event::Assembled => {
            if r.state != Assembling {
                return Outcome::Duplicate;
            }
            r.state = Training;
            r.outbox.push(Command::PublishTrain);
        }
        Event::CheckpointSaved { label, step } => {
            if r.checkpoints.contains(label) {
                return Outcome::Duplicate;
            }
            match r.state {
                Generating | Assembling => return Outcome::TooEarly("training has not started"),
                Training => {}
                _ => return Outcome::Ignored("the run is past training"),
            }
            r.checkpoints.insert(label.clone());
            r.steps = r.steps.max(*step);
            r.outbox.push(Command::PublishEvaluate { label: label.clone() });
        }
        Event::TrainDone { steps, checkpoints } => {
            if r.train_done {
                return Outcome::Duplicate;
            }
            match r.state {
                Generating | Assembling => return Outcome::TooEarly("training has not started"),
                Training => {}
                _ => return Outcome::Ignored("the run is past training"),
            }
            r.train_done = true;
            r.steps = *steps;
            r.announced = checkpoints.iter().cloned().collect();
        }
        Event::EvaluateDone { label, value } => {
            if r.evaluations.contains_key(label) {
                return Outcome::Duplicate;
            }
            if !r.checkpoints.contains(label) {
                return match r.state {
                    Generating | Assembling | Training => Outcome::TooEarly("its checkpoint is not recorded yet"),
                    _ => Outcome::Ignored("the run is past training"),
                };
            }
            if !value.is_finite() {
                return ends(r, Failed, Some(format!("the evaluator reported {value} for {label}")));
            }
            r.evaluations.insert(label.clone(), *value);
        }
        Event::Finalized => {
            if r.state != Finalizing {
                return Outcome::Duplicate;
            }
            r.state = Done;
            return Outcome::Apply(Box::new(r));
        }
    }
    // Every checkpoint the trainer announced, and every one it sent, scored: the best wins; the
    // base model keeps its place unless something beats it strictly.
    if r.state == Training
        && r.train_done
        && !r.checkpoints.is_empty()
        && r.announced.iter().chain(&r.checkpoints).all(|c| r.evaluations.contains_key(c))
    {
        let best = best_label(&r.evaluations);
        r.best = Some(best.clone());
        r.state = Finalizing;
        r.outbox.push(Command::Finalize { best });
    }
    Outcome::Apply(Box::new(r))
}

/// A finished run changes no more, except that a task which was still in flight when the budget
/// ran out still reports what it spent and kept.
fn terminal(record: &RunRecord, event: &Event) -> Outcome {
    match event {
        Event::GenerateDone { task, questions, failed_chunks, spent_usd, .. } if record.state == RunState::BudgetReached => {
            if record.generate_done.contains(task) || *task >= record.generate_tasks {
                return Outcome::Duplicate;
            }
            let mut r = record.clone();
            r.generate_done.insert(*task);
            r.questions += u64::from(*questions);
            r.failed_chunks += u64::from(*failed_chunks);
            r.spent_usd += spent_usd.max(0.0);
            r.error = Some(budget_message(&r));
            Outcome::Apply(Box::new(r))
        }
        _ => Outcome::Ignored("the run has ended"),
    }
}

fn budget_message(r: &RunRecord) -> String {
    format!(
        "budget reached: ${:.4} spent of the run's ${:.4}; {} of {} generate tasks reported, {} questions kept under runs/{}/questions/. \
         Submit again with a larger --max-cost-usd to go on",
        r.spent_usd,
        r.spec.max_cost_usd.unwrap_or(0.0),
        r.generate_done.len(),
        r.generate_tasks,
        r.questions,
        r.run_id
    )
}

/// The highest value; on a tie the earliest step (the base model is `step-0`).
pub fn best_label(evaluations: &BTreeMap<CheckpointLabel, f64>) -> CheckpointLabel {
    let mut labels: Vec<(&CheckpointLabel, &f64)> = evaluations.iter().collect();
    labels.sort_by_key(|(l, _)| l.step_number().unwrap_or(u64::MAX));
    let mut best = labels[0];
    for candidate in &labels[1..] {
        if candidate.1 > best.1 {
            best = *candidate;
        }
    }
    best.0.clone()
}

#[cfg(test)]
mod tests;
