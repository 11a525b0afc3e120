//! Subject, stream, consumer and bucket names: the whole wire layout in one place.

/// Work-queue stream: every task and every event the coordinator must act on.
pub const WORK_STREAM: &str = "EMBEDFLEET_WORK";
pub const WORK_SUBJECTS: &str = "embedfleet.work.>";
/// Progress events for `embedfleet watch`, kept for a while (limits retention).
pub const EVENTS_STREAM: &str = "EMBEDFLEET_EVENTS";
pub const EVENTS_SUBJECTS: &str = "embedfleet.events.>";
/// Messages that failed `max_deliver` times or could not be decoded, with the reason.
pub const DEAD_STREAM: &str = "EMBEDFLEET_DEAD";
pub const DEAD_SUBJECTS: &str = "embedfleet.dead.>";
/// JetStream's advisories for work messages that ran out of deliveries without an ack: the worker
/// died holding them every time. Kept in a stream so the coordinator sees them even when it was
/// down when they were sent.
pub const ADVISORY_STREAM: &str = "EMBEDFLEET_ADVISORIES";
pub const MAX_DELIVERIES_SUBJECTS: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EMBEDFLEET_WORK.*";
pub const ADVISORY_CONSUMER: &str = "embedfleet-advisories";
/// Run records (JSON), guarded by revision compare-and-set.
pub const RUNS_BUCKET: &str = "embedfleet_runs";
/// The fleet-wide LLM rate limit's state.
pub const RATE_BUCKET: &str = "embedfleet_ratelimit";
/// Each run's LLM spending ledger, shared by every generator replica.
pub const BUDGET_BUCKET: &str = "embedfleet_budgets";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Coordinate,
    /// Reading a run's corpus into task shards; served by the coordinator binary.
    Ingest,
    Generate,
    Train,
    Evaluate,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Coordinate, Stage::Ingest, Stage::Generate, Stage::Train, Stage::Evaluate];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Coordinate => "coordinate",
            Stage::Ingest => "ingest",
            Stage::Generate => "generate",
            Stage::Train => "train",
            Stage::Evaluate => "evaluate",
        }
    }

    /// Every subject of this stage's work: its consumer's filter, `embedfleet.work.<stage>.>`.
    pub fn subjects(self) -> String {
        format!("embedfleet.work.{}.>", self.name())
    }

    /// The subject messages of `kind` (a [`crate::Message::kind`]) go to in this stage. Each kind
    /// has its own, so that NATS permissions can say which role may send which message (a
    /// generator may report `generate_done` to the coordinator, never `run_submitted`).
    pub fn subject_for(self, kind: &str) -> String {
        format!("embedfleet.work.{}.{kind}", self.name())
    }

    pub fn consumer(self) -> String {
        format!("embedfleet-{}", self.name())
    }

    pub fn dead_subject(self) -> String {
        format!("embedfleet.dead.{}", self.name())
    }

    /// The stage whose consumer is `name` (`embedfleet-train`).
    pub fn from_consumer(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.consumer() == name)
    }

    /// The longest one task of this stage may take by default (`--max-task-seconds` changes it):
    /// an event or a generate task takes seconds; ingesting a corpus, scoring a checkpoint and
    /// training take longer.
    pub fn max_task_time(self) -> std::time::Duration {
        let hours = |h: u64| std::time::Duration::from_secs(h * 3600);
        match self {
            Stage::Coordinate => hours(1),
            Stage::Generate => hours(1),
            Stage::Ingest | Stage::Evaluate => hours(6),
            Stage::Train => hours(72),
        }
    }

    /// Deliveries before a message goes to the dead letters. The coordinator's are many and short:
    /// an event that overtook the one it depends on waits for it (a delayed nak each time).
    pub fn max_deliver(self) -> i64 {
        match self {
            Stage::Coordinate => 60,
            Stage::Ingest | Stage::Generate | Stage::Train | Stage::Evaluate => 10,
        }
    }
}

pub fn events_subject(run_id: &str, kind: &str) -> String {
    format!("embedfleet.events.{run_id}.{kind}")
}
