//! The loop every worker runs around its stage function: pull a message, decode it, keep it alive
//! with in-progress acks while the handler works, ack only after the handler's outputs are written,
//! back off and retry failures, and dead-letter what can never succeed (marking its run failed).

use crate::bus::Bus;
use crate::health::Health;
use crate::messages::{Message, decode};
use crate::metrics;
use crate::subjects::Stage;
use async_nats::jetstream::AckKind;
use embedfleet_core::RunId;
use embedfleet_core::Transient;
use futures::StreamExt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How a task failed, which decides what happens to its message.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Worth another delivery after a back-off: an outage of the store, NATS, the LLM server or the
    /// hub. Dead-lettered only when the stage's delivery limit is spent.
    #[error("{0}")]
    Transient(BoxError),
    /// Can never succeed (bad input): dead-lettered at once, its run failed with the reason.
    #[error("{0}")]
    Fatal(BoxError),
    /// An event that overtook the one it depends on: delivered again shortly.
    #[error("not yet: {0}")]
    NotYet(String),
}

impl TaskError {
    /// Transient or fatal, as the error itself says.
    pub fn classify<E: std::error::Error + Transient + Send + Sync + 'static>(e: E) -> Self {
        if e.is_transient() { TaskError::Transient(Box::new(e)) } else { TaskError::Fatal(Box::new(e)) }
    }

    pub fn transient(e: impl Into<BoxError>) -> Self {
        TaskError::Transient(e.into())
    }

    pub fn fatal(e: impl Into<BoxError>) -> Self {
        TaskError::Fatal(e.into())
    }
}

impl From<crate::BusError> for TaskError {
    fn from(e: crate::BusError) -> Self {
        TaskError::classify(e)
    }
}

impl From<embedfleet_core::StoreError> for TaskError {
    fn from(e: embedfleet_core::StoreError) -> Self {
        TaskError::classify(e)
    }
}

/// Back-off before redelivering a transient failure: 2 s, 4 s, … up to a minute, so that an outage
/// of a few minutes costs a task time, not its run.
pub fn transient_delay(deliveries: i64) -> Duration {
    Duration::from_secs((1u64 << deliveries.clamp(1, 6)).min(60))
}

/// Wait before an early event is looked at again: short, it is usually a moment behind.
pub fn not_yet_delay(deliveries: i64) -> Duration {
    Duration::from_millis((250u64 << deliveries.clamp(0, 4)).min(3000))
}

/// What one stage does with one message.
pub trait TaskHandler: Send + Sync + 'static {
    fn handle(&self, message: Message, deliveries: i64) -> impl Future<Output = Result<(), TaskError>> + Send;
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub stage: Stage,
    /// A message whose worker stops sending progress for this long goes to another worker.
    pub ack_wait: Duration,
    /// Messages handled at once.
    pub parallel: usize,
    /// How long shutdown waits for messages in hand.
    pub grace: Duration,
    /// The longest one task may take: past it the handler is stopped, its heartbeat ends, and the
    /// task is retried (and dead-lettered once its deliveries are spent). None: no limit.
    pub max_task_time: Option<Duration>,
}

impl WorkerConfig {
    /// The stage's settings with its default task time limit ([`Stage::max_task_time`]).
    pub fn new(stage: Stage, ack_wait: Duration, parallel: usize, grace: Duration) -> Self {
        Self { stage, ack_wait, parallel, grace, max_task_time: Some(stage.max_task_time()) }
    }
}

/// Runs until `shutdown` resolves, then stops pulling, lets messages in hand finish (or naks them
/// after the grace period, so another worker takes them), and drains the connection.
pub async fn run_worker<H: TaskHandler>(
    bus: Bus,
    handler: Arc<H>,
    config: WorkerConfig,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), crate::BusError> {
    let stage = config.stage;
    metrics::init(stage.name());
    tokio::pin!(shutdown);
    // The server may go away between the layout's set-up and this request (a restart, a JetStream
    // still recovering): the worker stays live and unready and asks again.
    let mut delay = Duration::from_millis(200);
    let consumer = loop {
        match bus.consumer(stage, config.ack_wait).await {
            Ok(consumer) => break consumer,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot create the stage's consumer; retrying");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    };
    health.set_ready(true);
    metrics::UP.with_label_values(&[stage.name()]).set(1);
    tokio::spawn(watch_pending(consumer.clone(), stage, health.clone(), bus.client.clone()));

    let permits = Arc::new(Semaphore::new(config.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    'outer: loop {
        // Pull only as many as this worker can work on: a bigger batch would park messages here
        // while other replicas sit idle.
        let mut messages = match consumer.stream().max_messages_per_batch(config.parallel.max(1)).messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull messages; retrying");
                tokio::select! {
                    _ = &mut shutdown => break 'outer,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break 'outer,
                p = permits.clone().acquire_owned() => p.expect("semaphore never closes"),
            };
            let next = tokio::select! {
                _ = &mut shutdown => break 'outer,
                m = messages.next() => m,
            };
            match next {
                Some(Ok(msg)) => {
                    let (bus, handler, limits) = (bus.clone(), handler.clone(), Limits::of(&config));
                    tasks.spawn(async move {
                        handle_one(&bus, handler.as_ref(), stage, limits, msg).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "message stream error; re-subscribing");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue 'outer;
                }
                None => continue 'outer,
            }
            while tasks.try_join_next().is_some() {}
        }
    }
    health.set_ready(false);
    metrics::UP.with_label_values(&[stage.name()]).set(0);
    tracing::info!(in_hand = tasks.len(), "shutting down: finishing messages in hand");
    if tokio::time::timeout(config.grace, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        // Dropping the tasks drops their messages unacked; the server redelivers them.
        tasks.abort_all();
    }
    let _ = bus.client.drain().await;
    Ok(())
}

/// The time settings one message is handled under.
#[derive(Debug, Clone, Copy)]
struct Limits {
    ack_wait: Duration,
    max_task_time: Option<Duration>,
}

impl Limits {
    fn of(config: &WorkerConfig) -> Self {
        Self { ack_wait: config.ack_wait, max_task_time: config.max_task_time }
    }
}

/// Runs the handler on one message, catching a panic and stopping it at the time limit, so that
/// neither leaves the heartbeat running (which would keep the message from every other worker).
async fn guarded<H: TaskHandler>(handler: &H, message: Message, deliveries: i64, stage: Stage, limits: Limits) -> Result<(), TaskError> {
    use futures::FutureExt;
    let run = std::panic::AssertUnwindSafe(handler.handle(message, deliveries)).catch_unwind();
    let outcome = match limits.max_task_time {
        Some(limit) => match tokio::time::timeout(limit, run).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(TaskError::transient(format!(
                    "the {} task ran past its time limit of {} s (--max-task-seconds); stopped",
                    stage.name(),
                    limit.as_secs()
                )));
            }
        },
        None => run.await,
    };
    outcome.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        // A panic is a bug met on this input: the same input would meet it again.
        Err(TaskError::fatal(format!("the {} worker panicked on this task: {what}", stage.name())))
    })
}

async fn handle_one<H: TaskHandler>(bus: &Bus, handler: &H, stage: Stage, limits: Limits, msg: async_nats::jetstream::Message) {
    let ack_wait = limits.ack_wait;
    let name = stage.name();
    let deliveries = msg.info().map(|i| i.delivered).unwrap_or(1);
    if deliveries > 1 {
        metrics::REDELIVERED.with_label_values(&[name]).inc();
    }
    let message = match decode(&msg.payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "undecodable message; dead-lettering it");
            if dead_letter(bus, stage, &msg.payload, &e.to_string(), deliveries, None).await {
                let _ = msg.ack_with(AckKind::Term).await;
            }
            return;
        }
    };
    // Each kind of message has its own subject, which is what NATS permissions let a role send
    // to: a message whose type is not its subject's came around them.
    let expected = stage.subject_for(message.kind());
    if msg.subject.as_str() != expected {
        let reason = format!("a {} message on {}: refused (it belongs on {expected})", message.kind(), msg.subject);
        tracing::error!(reason, "message on the wrong subject; dead-lettering it");
        if dead_letter(bus, stage, &msg.payload, &reason, deliveries, None).await {
            let _ = msg.ack_with(AckKind::Term).await;
        }
        return;
    }
    let started = Instant::now();
    // Long work (training, a slow LLM) keeps the message with in-progress acks.
    let heartbeat = {
        let msg = msg.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ack_wait / 3).await;
                if msg.ack_with(AckKind::Progress).await.is_err() {
                    tracing::debug!("in-progress ack failed");
                }
            }
        })
    };
    let run_id = message.run_id().clone();
    let result = guarded(handler, message, deliveries, stage, limits).await;
    heartbeat.abort();
    metrics::PROCESSING.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
    let last_try = deliveries >= stage.max_deliver();
    match result {
        Ok(()) => {
            if let Err(e) = msg.double_ack().await {
                tracing::warn!(error = %e, "ack not confirmed; the message may be redelivered (outputs are idempotent)");
            }
            metrics::MESSAGES.with_label_values(&[name, "ok"]).inc();
        }
        Err(TaskError::NotYet(reason)) if !last_try => {
            tracing::debug!(%run_id, reason, deliveries, "event is early; looking again shortly");
            metrics::MESSAGES.with_label_values(&[name, "not_yet"]).inc();
            let _ = msg.ack_with(AckKind::Nak(Some(not_yet_delay(deliveries)))).await;
        }
        Err(TaskError::Transient(reason)) if !last_try => {
            let delay = transient_delay(deliveries);
            tracing::warn!(%run_id, %reason, deliveries, retry_in = ?delay, "task failed; will retry");
            metrics::MESSAGES.with_label_values(&[name, "failed"]).inc();
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
        }
        Err(e) => {
            let reason = match &e {
                TaskError::Fatal(_) => e.to_string(),
                _ => format!("{e} (still failing after {deliveries} deliveries)"),
            };
            tracing::error!(%run_id, reason, deliveries, "task can never succeed; dead-lettering it");
            if dead_letter(bus, stage, &msg.payload, &reason, deliveries, Some(&run_id)).await {
                let _ = msg.ack_with(AckKind::Term).await;
            }
        }
    }
}

/// Stores the message with its reason and tells the coordinator its run failed. False when the
/// dead letter could not be stored: the caller then keeps the message (it comes back after
/// ack_wait) rather than lose it.
pub(crate) async fn dead_letter(bus: &Bus, stage: Stage, payload: &[u8], reason: &str, deliveries: i64, run_id: Option<&RunId>) -> bool {
    metrics::MESSAGES.with_label_values(&[stage.name(), "dead_letter"]).inc();
    if let Err(e) = bus.dead_letter(stage, payload, reason, deliveries).await {
        tracing::error!(error = %e, "dead letter not stored; leaving the message for redelivery");
        return false;
    }
    if let Some(run_id) = run_id {
        let failed = Message::StageFailed { run_id: run_id.clone(), stage: stage.name().into(), reason: reason.to_owned() };
        if let Err(e) = bus.publish(Stage::Coordinate, &failed).await {
            tracing::error!(error = %e, "could not mark the run failed");
        }
    }
    true
}

/// Publishes the consumer's backlog and the connection state as metrics and readiness.
async fn watch_pending(
    mut consumer: async_nats::jetstream::consumer::PullConsumer,
    stage: Stage,
    health: Arc<Health>,
    client: async_nats::Client,
) {
    loop {
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        health.set_ready(connected);
        metrics::UP.with_label_values(&[stage.name()]).set(connected as i64);
        if let Ok(info) = consumer.info().await {
            metrics::PENDING.with_label_values(&[stage.name()]).set(info.num_pending as i64);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
