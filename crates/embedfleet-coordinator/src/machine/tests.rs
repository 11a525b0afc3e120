use super::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn run() -> RunId {
    RunId::new("r1").unwrap()
}

fn label(step: u64) -> CheckpointLabel {
    CheckpointLabel::step(step)
}

fn submitted(per_task: u32, in_flight: u32) -> Event {
    Event::Submitted {
        run_id: run(),
        spec: RunSpec { chunks_per_task: Some(per_task as usize), max_cost_usd: Some(1.0), ..Default::default() },
        chunks_per_task: per_task,
        tasks_in_flight: in_flight,
    }
}

/// The whole corpus read: `chunks` chunks in tasks of `per_task`.
fn ingested(chunks: u64, per_task: u32) -> Event {
    Event::ChunksReady { tasks: chunks.div_ceil(u64::from(per_task)) as u32, chunks, documents: 1, complete: true }
}

fn partly_ingested(tasks: u32, per_task: u32) -> Event {
    Event::ChunksReady { tasks, chunks: u64::from(tasks * per_task), documents: 1, complete: false }
}

fn generate_done(task: u32, questions: u32) -> Event {
    Event::GenerateDone { task, questions, failed_chunks: 0, spent_usd: 0.01, budget_reached: false }
}

/// Applies an event; returns the commands it added to the outbox.
fn apply(record: &mut Option<RunRecord>, event: Event) -> Vec<Command> {
    let before = record.as_ref().map(|r| r.outbox.len()).unwrap_or(0);
    match decide(record.as_ref(), &event) {
        Outcome::Apply(next) => {
            let added = next.outbox.get(before..).map(<[Command]>::to_vec).unwrap_or_default();
            *record = Some(*next);
            added
        }
        other => panic!("{event:?} was not applied: {other:?}"),
    }
}

/// What a coordinator does once the record is written: carry out the outbox and clear it.
fn drain(record: &mut Option<RunRecord>) -> Vec<Command> {
    let r = record.as_mut().unwrap();
    std::mem::take(&mut r.outbox)
}

#[test]
fn a_run_from_submission_to_done() {
    let mut r = None;
    assert_eq!(apply(&mut r, submitted(4, 2)), vec![Command::StartIngest]);
    assert_eq!(r.as_ref().unwrap().outbox.len(), 1, "persisted before anything is sent");
    drain(&mut r);
    // Fan-out starts with the first shard, and never has more than two tasks out.
    assert_eq!(apply(&mut r, partly_ingested(1, 4)), vec![Command::PublishGenerate { first: 0, end: 1 }]);
    assert_eq!(decide(r.as_ref(), &partly_ingested(1, 4)), Outcome::Duplicate);
    assert_eq!(apply(&mut r, ingested(10, 4)), vec![Command::PublishGenerate { first: 1, end: 2 }]);
    drain(&mut r);
    assert_eq!(apply(&mut r, generate_done(0, 8)), vec![Command::PublishGenerate { first: 2, end: 3 }]);
    assert_eq!(decide(r.as_ref(), &generate_done(0, 8)), Outcome::Duplicate, "a redelivered completion changes nothing");
    assert!(matches!(decide(r.as_ref(), &generate_done(7, 8)), Outcome::Ignored(_)), "no such task");
    assert!(apply(&mut r, generate_done(2, 4)).is_empty());
    assert_eq!(apply(&mut r, generate_done(1, 8)), vec![Command::Assemble]);
    assert_eq!(r.as_ref().unwrap().state, RunState::Assembling);
    assert_eq!(r.as_ref().unwrap().tasks_done(), 3);
    drain(&mut r);
    assert_eq!(apply(&mut r, Event::Assembled), vec![Command::PublishTrain]);
    assert_eq!(r.as_ref().unwrap().state, RunState::Training);
    assert_eq!(r.as_ref().unwrap().questions, 20);
    drain(&mut r);

    for step in [0, 5, 10] {
        assert_eq!(
            apply(&mut r, Event::CheckpointSaved { label: label(step), step }),
            vec![Command::PublishEvaluate { label: label(step) }]
        );
    }
    assert_eq!(decide(r.as_ref(), &Event::CheckpointSaved { label: label(5), step: 5 }), Outcome::Duplicate, "no second evaluation");
    apply(&mut r, Event::EvaluateDone { label: label(0), value: 0.80 });
    apply(&mut r, Event::EvaluateDone { label: label(10), value: 0.85 });
    let announced = vec![label(0), label(5), label(10)];
    assert!(apply(&mut r, Event::TrainDone { steps: 10, checkpoints: announced }).is_empty(), "an evaluation is still out");
    assert_eq!(apply(&mut r, Event::EvaluateDone { label: label(5), value: 0.86 }), vec![Command::Finalize { best: label(5) }]);
    assert_eq!(r.as_ref().unwrap().state, RunState::Finalizing);
    drain(&mut r);
    apply(&mut r, Event::Finalized);
    let done = r.unwrap();
    assert_eq!(done.state, RunState::Done);
    assert_eq!(decide(Some(&done), &Event::EvaluateDone { label: label(99), value: 1.0 }), Outcome::Ignored("the run has ended"));
}

#[test]
fn the_record_stays_small_however_many_tasks_the_run_has() {
    // A run of a million tasks, driven to the end: the record never holds more than the tasks in
    // flight, so its size is the same at the first task and the last.
    let mut r = None;
    apply(&mut r, submitted(1, 64));
    drain(&mut r);
    let tasks = 1_000_000u32;
    let mut largest = 0;
    let mut next_shard = 0;
    for task in 0..tasks {
        if task == next_shard {
            next_shard = (next_shard + 50_000).min(tasks);
            let ready =
                Event::ChunksReady { tasks: next_shard, chunks: u64::from(next_shard), documents: 7, complete: next_shard == tasks };
            apply(&mut r, ready);
        }
        apply(&mut r, generate_done(task, 2));
        let record = r.as_mut().unwrap();
        assert!(record.outstanding.len() <= 64);
        record.outbox.clear();
        if task % 10_000 == 0 {
            largest = largest.max(serde_json::to_vec(record).unwrap().len());
        }
    }
    let r = r.unwrap();
    assert_eq!(r.state, RunState::Assembling);
    assert_eq!(r.tasks_done(), tasks);
    assert_eq!(r.questions, 2 * u64::from(tasks));
    assert!(largest < 4096, "the record grew to {largest} bytes");
}

#[test]
fn a_corpus_without_text_fails_the_run() {
    let mut r = None;
    apply(&mut r, submitted(4, 8));
    apply(&mut r, Event::ChunksReady { tasks: 0, chunks: 0, documents: 0, complete: true });
    let r = r.unwrap();
    assert_eq!(r.state, RunState::Failed);
    assert!(r.error.unwrap().contains("no text"));
}

#[test]
fn early_events_wait_and_are_never_dropped() {
    assert_eq!(decide(None, &generate_done(0, 2)), Outcome::TooEarly("the run is not recorded yet"));
    let mut r = None;
    apply(&mut r, submitted(1, 8));
    assert!(matches!(decide(r.as_ref(), &Event::TrainDone { steps: 1, checkpoints: vec![] }), Outcome::TooEarly(_)));
    apply(&mut r, ingested(2, 1));
    apply(&mut r, generate_done(0, 2));
    apply(&mut r, generate_done(1, 2));
    apply(&mut r, Event::Assembled);
    // The score of a checkpoint whose announcement is still in flight.
    assert!(matches!(decide(r.as_ref(), &Event::EvaluateDone { label: label(0), value: 0.5 }), Outcome::TooEarly(_)));
    // TrainDone before the last CheckpointSaved: the run waits for the final checkpoint.
    apply(&mut r, Event::CheckpointSaved { label: label(0), step: 0 });
    apply(&mut r, Event::EvaluateDone { label: label(0), value: 0.5 });
    apply(&mut r, Event::TrainDone { steps: 4, checkpoints: vec![label(0), label(4)] });
    assert_eq!(r.as_ref().unwrap().state, RunState::Training, "step-4 was announced but not yet scored");
    apply(&mut r, Event::CheckpointSaved { label: label(4), step: 4 });
    assert_eq!(apply(&mut r, Event::EvaluateDone { label: label(4), value: 0.6 }).last(), Some(&Command::Finalize { best: label(4) }));
}

#[test]
fn the_base_model_wins_ties() {
    let evals = BTreeMap::from([(label(0), 0.8), (label(10), 0.8), (label(5), 0.7)]);
    assert_eq!(best_label(&evals), label(0));
}

#[test]
fn cancel_failure_budget_and_bad_input_end_the_run_and_clear_its_outbox() {
    let mut r = None;
    apply(&mut r, submitted(1, 8));
    apply(&mut r, ingested(8, 1));
    let pending = r.clone();
    let mut c = pending.clone();
    apply(&mut c, Event::Cancel);
    assert_eq!(c.as_ref().unwrap().state, RunState::Cancelled);
    assert!(c.as_ref().unwrap().outbox.is_empty(), "no task of a cancelled run is published");
    assert_eq!(decide(c.as_ref(), &generate_done(0, 2)), Outcome::Ignored("the run has ended"));

    let mut f = pending.clone();
    apply(&mut f, Event::Failed { reason: "poison".into() });
    assert_eq!(f.as_ref().unwrap().state, RunState::Failed);
    assert_eq!(f.unwrap().error.as_deref(), Some("poison"));

    let mut b = pending;
    drain(&mut b);
    apply(&mut b, generate_done(0, 2));
    apply(&mut b, Event::GenerateDone { task: 1, questions: 1, failed_chunks: 1, spent_usd: 0.5, budget_reached: true });
    let rec = b.as_ref().unwrap();
    assert_eq!(rec.state, RunState::BudgetReached);
    assert!(rec.error.as_deref().unwrap().contains("budget reached: $0.5100 spent"), "{:?}", rec.error);
    // A task still in flight when the budget ran out reports its spend and questions.
    apply(&mut b, Event::GenerateDone { task: 2, questions: 2, failed_chunks: 0, spent_usd: 0.2, budget_reached: true });
    assert_eq!(b.as_ref().unwrap().questions, 5);
    assert!((b.as_ref().unwrap().spent_usd - 0.71).abs() < 1e-9);

    let mut rejected = None;
    apply(&mut rejected, Event::Rejected { run_id: run(), spec: RunSpec::default(), reason: "--batch-size 0".into() });
    assert_eq!(rejected.unwrap().error.as_deref(), Some("--batch-size 0"));
}

/// The messages of a run in flight, delivered by a random scheduler to a coordinator that may
/// crash before acknowledging (so the message comes again), with early and duplicate copies; the
/// workers' answers to each command are added as the outbox is carried out.
struct World {
    record: Option<RunRecord>,
    in_flight: Vec<Event>,
    /// Every command a decision added to the outbox, in order.
    issued: Vec<Command>,
    steps: Vec<u64>,
    cancel_at: Option<usize>,
    delivered: usize,
    chunks: u32,
    per_task: u32,
    in_flight_limit: u32,
}

fn value_of(label: &CheckpointLabel) -> f64 {
    // Best is step-10 of 0, 5, 10, 12.
    match label.step_number().unwrap() {
        10 => 0.9,
        s => 0.5 + s as f64 / 100.0,
    }
}

impl World {
    fn new(chunks: u32, per_task: u32, in_flight_limit: u32, cancel_at: Option<usize>, rng: &mut ChaCha8Rng) -> Self {
        let mut in_flight = vec![submitted(per_task, in_flight_limit)];
        // An early copy of a later event (a redelivery from an earlier life, a racing replica).
        if rng.random_bool(0.5) {
            in_flight.push(generate_done(0, 2 * per_task.min(chunks)));
        }
        World {
            record: None,
            in_flight,
            issued: Vec::new(),
            steps: vec![0, 5, 10, 12],
            cancel_at,
            delivered: 0,
            chunks,
            per_task,
            in_flight_limit,
        }
    }

    /// Questions a task's chunks get: two each.
    fn questions_of(&self, task: u32) -> u32 {
        2 * (self.chunks - task * self.per_task).min(self.per_task)
    }

    fn deliver(&mut self, rng: &mut ChaCha8Rng) {
        let i = rng.random_range(0..self.in_flight.len());
        let event = self.in_flight[i].clone();
        self.delivered += 1;
        let was_over = self.record.as_ref().is_some_and(|r| r.state.is_terminal());
        match decide(self.record.as_ref(), &event) {
            Outcome::Apply(next) => {
                assert!(!was_over || next.outbox.is_empty(), "a command decided for an ended run: {next:?}");
                let before = self.record.as_ref().map(|r| r.outbox.len()).unwrap_or(0);
                let cleared = next.outbox.len() < before;
                if !cleared {
                    self.issued.extend(next.outbox[before..].iter().cloned());
                }
                self.record = Some(*next);
                let r = self.record.as_ref().unwrap();
                assert!(r.outstanding.len() as u32 <= self.in_flight_limit, "more tasks out than the run's share");
                // The coordinator may die after writing and before acking: the event comes again.
                if rng.random_bool(0.8) {
                    self.in_flight.swap_remove(i);
                }
            }
            Outcome::Duplicate | Outcome::Ignored(_) => {
                if rng.random_bool(0.9) {
                    self.in_flight.swap_remove(i);
                }
            }
            Outcome::TooEarly(_) => {}
        }
        if self.cancel_at == Some(self.delivered) {
            self.in_flight.push(Event::Cancel);
        }
    }

    /// Carries out the outbox's first few commands (sometimes twice, as a retry would).
    fn drain(&mut self, rng: &mut ChaCha8Rng) {
        let Some(record) = self.record.as_mut() else { return };
        let n = rng.random_range(1..=record.outbox.len().max(1)).min(record.outbox.len());
        let done: Vec<Command> = record.outbox.drain(..n).collect();
        for command in done {
            let times = if rng.random_bool(0.2) { 2 } else { 1 };
            for _ in 0..times {
                match &command {
                    Command::StartIngest => {
                        // The corpus is read a shard at a time; progress reports may come twice.
                        let tasks = self.chunks.div_ceil(self.per_task);
                        for t in 1..tasks {
                            self.in_flight.push(partly_ingested(t, self.per_task));
                        }
                        self.in_flight.push(ingested(u64::from(self.chunks), self.per_task));
                    }
                    Command::PublishGenerate { first, end } => {
                        for task in *first..*end {
                            self.in_flight.push(generate_done(task, self.questions_of(task)));
                        }
                    }
                    Command::Assemble => self.follow_up(Event::Assembled),
                    Command::PublishTrain => {
                        let labels: Vec<CheckpointLabel> = self.steps.iter().map(|&s| label(s)).collect();
                        for (s, l) in self.steps.iter().zip(&labels) {
                            self.in_flight.push(Event::CheckpointSaved { label: l.clone(), step: *s });
                        }
                        self.in_flight.push(Event::TrainDone { steps: 12, checkpoints: labels });
                    }
                    Command::PublishEvaluate { label } => {
                        self.in_flight.push(Event::EvaluateDone { label: label.clone(), value: value_of(label) })
                    }
                    Command::Finalize { .. } => self.follow_up(Event::Finalized),
                }
            }
        }
    }

    fn follow_up(&mut self, event: Event) {
        if let Outcome::Apply(next) = decide(self.record.as_ref(), &event) {
            let before = self.record.as_ref().map(|r| r.outbox.len()).unwrap_or(0);
            if next.outbox.len() >= before {
                self.issued.extend(next.outbox[before..].iter().cloned());
            }
            self.record = Some(*next);
        }
    }

    fn run(&mut self, rng: &mut ChaCha8Rng) {
        for _ in 0..100_000 {
            let outbox = self.record.as_ref().map(|r| r.outbox.len()).unwrap_or(0);
            if self.in_flight.is_empty() && outbox == 0 {
                return;
            }
            if outbox > 0 && (self.in_flight.is_empty() || rng.random_bool(0.3)) {
                self.drain(rng);
            } else {
                self.deliver(rng);
            }
        }
        panic!("the run never settled: {:?}", self.record);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn every_order_and_duplication_reaches_the_same_record_and_issues_each_command_once(
        seed in any::<u64>(), chunks in 1u32..12, per_task in 1u32..4, in_flight in 1u32..4,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut world = World::new(chunks, per_task, in_flight, None, &mut rng);
        world.run(&mut rng);
        let r = world.record.clone().unwrap();
        prop_assert_eq!(r.state, RunState::Done);
        let tasks = chunks.div_ceil(per_task);
        prop_assert_eq!(r.tasks_done(), tasks);
        prop_assert_eq!(r.questions, 2 * u64::from(chunks));
        prop_assert_eq!(r.steps, 12);
        prop_assert_eq!(r.best.clone(), Some(label(10)));
        prop_assert_eq!(r.evaluations.len(), 4);
        prop_assert!(r.outbox.is_empty());
        // Each command was decided exactly once, whatever was redelivered or duplicated, and the
        // generate tasks were sent once each, in order.
        let mut seen = std::collections::HashSet::new();
        for c in &world.issued {
            prop_assert!(seen.insert(format!("{c:?}")), "issued twice: {:?}", c);
        }
        let mut sent = Vec::new();
        for c in &world.issued {
            if let Command::PublishGenerate { first, end } = c {
                sent.extend(*first..*end);
            }
        }
        prop_assert_eq!(sent, (0..tasks).collect::<Vec<_>>());
        let others = world.issued.iter().filter(|c| !matches!(c, Command::PublishGenerate { .. })).count();
        prop_assert_eq!(others, 1 + 1 + 1 + 4 + 1);
    }

    #[test]
    fn a_cancel_at_any_moment_ends_the_run_and_nothing_is_decided_after_it(
        seed in any::<u64>(), chunks in 1u32..10, at in 1usize..40,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut world = World::new(chunks, 2, 2, Some(at), &mut rng);
        world.run(&mut rng);
        let r = world.record.clone().unwrap();
        if world.delivered >= at {
            // Either the cancel came first, or the run had already finished.
            prop_assert!(matches!(r.state, RunState::Cancelled | RunState::Done), "{:?}", r.state);
        }
        prop_assert!(r.outbox.is_empty());
    }
}

#[test]
fn the_record_round_trips_through_json_with_its_outbox() {
    let mut r = None;
    apply(&mut r, submitted(1, 4));
    apply(&mut r, ingested(3, 1));
    let r = r.unwrap();
    let back: RunRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}
