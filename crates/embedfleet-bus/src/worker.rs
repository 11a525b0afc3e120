//! The loop every worker runs around its stage function: pull a message, decode it, keep it alive
//! with in-progress acks while the handler works, ack only after the handler's outputs are written,
//! back off and retry failures, and dead-letter what can never succeed (marking its run failed).

use crate::bus::{Bus, MAX_DELIVER};
use crate::health::Health;
use crate::messages::{Message, decode};
use crate::metrics;
use crate::subjects::Stage;
use async_nats::jetstream::AckKind;
use futures::StreamExt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Worth another delivery (a store hiccup, an LLM outage).
    #[error("{0}")]
    Retry(String),
    /// Can never succeed (bad input); dead-letter at once.
    #[error("{0}")]
    Fatal(String),
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
    let consumer = bus.consumer(stage, config.ack_wait).await?;
    health.set_ready(true);
    metrics::UP.with_label_values(&[stage.name()]).set(1);
    tokio::spawn(watch_pending(consumer.clone(), stage, health.clone(), bus.client.clone()));

    let permits = Arc::new(Semaphore::new(config.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
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
                    let (bus, handler, ack_wait) = (bus.clone(), handler.clone(), config.ack_wait);
                    tasks.spawn(async move {
                        handle_one(&bus, handler.as_ref(), stage, ack_wait, msg).await;
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

async fn handle_one<H: TaskHandler>(bus: &Bus, handler: &H, stage: Stage, ack_wait: Duration, msg: async_nats::jetstream::Message) {
    let name = stage.name();
    let deliveries = msg.info().map(|i| i.delivered).unwrap_or(1);
    if deliveries > 1 {
        metrics::REDELIVERED.with_label_values(&[name]).inc();
    }
    let message = match decode(&msg.payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "undecodable message; dead-lettering it");
            dead_letter(bus, stage, &msg, &e.to_string(), deliveries, None).await;
            return;
        }
    };
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
    let run_id = message.run_id().to_owned();
    let result = handler.handle(message, deliveries).await;
    heartbeat.abort();
    metrics::PROCESSING.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            if let Err(e) = msg.double_ack().await {
                tracing::warn!(error = %e, "ack not confirmed; the message may be redelivered (outputs are idempotent)");
            }
            metrics::MESSAGES.with_label_values(&[name, "ok"]).inc();
        }
        Err(TaskError::Retry(reason)) if deliveries < MAX_DELIVER => {
            tracing::warn!(run_id, reason, deliveries, "task failed; will retry");
            metrics::MESSAGES.with_label_values(&[name, "failed"]).inc();
            let delay = Duration::from_secs(1 << deliveries.clamp(0, 5));
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
        }
        Err(e) => {
            tracing::error!(run_id, reason = %e, deliveries, "task can never succeed; dead-lettering it");
            dead_letter(bus, stage, &msg, &e.to_string(), deliveries, Some(&run_id)).await;
        }
    }
}

async fn dead_letter(bus: &Bus, stage: Stage, msg: &async_nats::jetstream::Message, reason: &str, deliveries: i64, run_id: Option<&str>) {
    metrics::MESSAGES.with_label_values(&[stage.name(), "dead_letter"]).inc();
    if let Err(e) = bus.dead_letter(stage, &msg.payload, reason, deliveries).await {
        // Keep the message rather than lose it: it will come back after ack_wait.
        tracing::error!(error = %e, "dead letter not stored; leaving the message for redelivery");
        return;
    }
    if let Some(run_id) = run_id {
        let failed = Message::StageFailed { run_id: run_id.to_owned(), stage: stage.name().into(), reason: reason.to_owned() };
        if let Err(e) = bus.publish(Stage::Coordinate, &failed).await {
            tracing::error!(error = %e, "could not mark the run failed");
        }
    }
    let _ = msg.ack_with(AckKind::Term).await;
}

/// Publishes the consumer's backlog and the connection state as metrics and readiness.
async fn watch_pending(mut consumer: async_nats::jetstream::consumer::PullConsumer, stage: Stage, health: Arc<Health>, client: async_nats::Client) {
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
