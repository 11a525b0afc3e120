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
///
/// Its size does not grow with the corpus: progress is counted, work still to send is a cursor
/// (`published`), and the only set of tasks is the few sent and not yet done (`outstanding`,
/// never more than `tasks_in_flight`), since every task below the cursor and not outstanding is
/// done. A million-chunk run's record is as small as a ten-chunk run's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: RunId,
    pub spec: RunSpec,
    pub state: RunState,
    /// Chunks per generate task, chosen when the run was recorded.
    pub chunks_per_task: u32,
    /// Most generate tasks of this run sent to the generators and not yet done: the rest wait,
    /// so a run submitted later gets its tasks in behind at most this many of each other run.
    pub tasks_in_flight: u32,
    /// How far the corpus has been read and cut into task shards.
    pub ingest: Ingested,
    /// Generate tasks `0..published` have been sent.
    pub published: u32,
    /// Tasks sent and not yet done.
    pub outstanding: BTreeSet<u32>,
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

/// How far a run's corpus has been read: the shards written so far (a prefix of the tasks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ingested {
    /// Tasks whose shard of chunks is written: `0..tasks`.
    pub tasks: u32,
    pub chunks: u64,
    pub documents: u64,
    /// The whole corpus is read: `tasks` is every task of the run.
    pub complete: bool,
}

impl RunRecord {
    /// Generate tasks done.
    pub fn tasks_done(&self) -> u32 {
        self.published - self.outstanding.len() as u32
    }

    /// Whether task `task` has reported done.
    pub fn task_done(&self, task: u32) -> bool {
        task < self.published && !self.outstanding.contains(&task)
    }

    /// Every task of a fully read corpus is done.
    fn generation_complete(&self) -> bool {
        self.ingest.complete && self.published == self.ingest.tasks && self.outstanding.is_empty()
    }
}

/// What happened, with the facts the worker looked up for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A run was submitted; its corpus will be read in tasks of `chunks_per_task` chunks.
    Submitted {
        run_id: RunId,
        spec: RunSpec,
        chunks_per_task: u32,
        tasks_in_flight: u32,
    },
    /// A run was submitted with input that can never work (no corpus, a bad setting).
    Rejected {
        run_id: RunId,
        spec: RunSpec,
        reason: String,
    },
    /// The corpus's shards `0..tasks` are written (and, when `complete`, that is all of them).
    ChunksReady {
        tasks: u32,
        chunks: u64,
        documents: u64,
        complete: bool,
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
    /// Send the ingest task: read the corpus, write its shards, report `ChunksReady` as it goes.
    StartIngest,
    /// Send generate tasks `first..end`.
    PublishGenerate {
        first: u32,
        end: u32,
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

fn new_record(run_id: &RunId, spec: &RunSpec, chunks_per_task: u32, tasks_in_flight: u32) -> RunRecord {
    RunRecord {
        run_id: run_id.clone(),
        spec: spec.clone(),
        state: RunState::Generating,
        chunks_per_task: chunks_per_task.max(1),
        tasks_in_flight: tasks_in_flight.max(1),
        ingest: Ingested::default(),
        published: 0,
        outstanding: BTreeSet::new(),
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

/// Sends as many written tasks as the run's share of the fleet allows: fan-out starts with the
/// first shard and keeps `tasks_in_flight` tasks out until the last is sent.
fn top_up(r: &mut RunRecord) {
    let room = r.tasks_in_flight.saturating_sub(r.outstanding.len() as u32);
    let end = r.ingest.tasks.min(r.published.saturating_add(room));
    if end > r.published {
        r.outstanding.extend(r.published..end);
        r.outbox.push(Command::PublishGenerate { first: r.published, end });
        r.published = end;
    }
}

pub fn decide(record: Option<&RunRecord>, event: &Event) -> Outcome {
    let Some(record) = record else {
        return match event {
            Event::Submitted { run_id, spec, chunks_per_task, tasks_in_flight } => {
                let mut r = new_record(run_id, spec, *chunks_per_task, *tasks_in_flight);
                r.outbox.push(Command::StartIngest);
                Outcome::Apply(Box::new(r))
            }
            Event::Rejected { run_id, spec, reason } => ends(new_record(run_id, spec, 1, 1), RunState::Failed, Some(reason.clone())),
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
        Event::ChunksReady { tasks, chunks, documents, complete } => {
            let known = r.ingest;
            if known.complete || (*tasks <= known.tasks && !*complete) {
                return Outcome::Duplicate;
            }
            r.ingest =
                Ingested { tasks: known.tasks.max(*tasks), chunks: known.chunks.max(*chunks), documents: *documents, complete: *complete };
            if r.ingest.complete && r.ingest.chunks == 0 {
                return ends(r, Failed, Some("the corpus has no text to chunk".into()));
            }
            top_up(&mut r);
        }
        Event::GenerateDone { task, questions, failed_chunks, spent_usd, budget_reached } => {
            if r.task_done(*task) {
                return Outcome::Duplicate;
            }
            if r.state != Generating || !r.outstanding.contains(task) {
                return Outcome::Ignored("no such generate task is outstanding");
            }
            r.outstanding.remove(task);
            r.questions += u64::from(*questions);
            r.failed_chunks += u64::from(*failed_chunks);
            r.spent_usd += spent_usd.max(0.0);
            if *budget_reached {
                let reason = budget_message(&r);
                return ends(r, BudgetReached, Some(reason));
            }
            top_up(&mut r);
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
    if r.state == Generating && r.generation_complete() {
        r.state = Assembling;
        r.outbox.push(Command::Assemble);
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
            if !record.outstanding.contains(task) {
                return Outcome::Duplicate;
            }
            let mut r = record.clone();
            r.outstanding.remove(task);
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
        r.tasks_done(),
        r.ingest.tasks,
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
