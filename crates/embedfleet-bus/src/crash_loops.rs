//! Tasks whose worker died at every delivery (OOM-killed, a segfault, a node lost). Their handler
//! never returned, so the worker loop never saw an error to dead-letter; JetStream just stops
//! redelivering after `max_deliver` and says so in an advisory. The advisories are kept in a stream
//! (see [`crate::subjects::ADVISORY_STREAM`]); the coordinator reads them with
//! [`watch_crash_loops`], dead-letters each such task with the reason and fails its run, naming
//! the stage — so a run never waits forever on a task nobody will finish.

use crate::bus::{Bus, BusError};
use crate::messages::decode;
use crate::subjects::{ADVISORY_CONSUMER, ADVISORY_STREAM, Stage, WORK_STREAM};
use crate::worker::dead_letter;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures::StreamExt;
use serde::Deserialize;
use std::future::Future;
use std::time::Duration;

/// The parts of `io.nats.jetstream.advisory.v1.max_deliver` that matter here.
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    consumer: String,
    stream_seq: u64,
    deliveries: i64,
}

pub fn crash_reason(deliveries: i64) -> String {
    format!(
        "the worker died {deliveries} times while handling this task (killed, out of memory or crashed) and it was given up; \
         see the worker's logs and resources"
    )
}

/// Consumes the advisories until `shutdown` resolves, reconnecting as needed.
pub async fn watch_crash_loops(bus: Bus, shutdown: impl Future<Output = ()> + Send) -> Result<(), BusError> {
    let setup = |e: &dyn std::fmt::Display| BusError::Setup { what: ADVISORY_CONSUMER.into(), message: e.to_string() };
    let stream = bus.js.get_stream(ADVISORY_STREAM).await.map_err(|e| setup(&e))?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(ADVISORY_CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| setup(&e))?;
    tokio::pin!(shutdown);
    loop {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read crash-loop advisories; retrying");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                m = messages.next() => m,
            };
            let Some(Ok(advisory)) = next else { break };
            match handle(&bus, &advisory.payload).await {
                Ok(()) => {
                    let _ = advisory.double_ack().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "crash-loop advisory not handled yet; retrying");
                    let _ = advisory.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))).await;
                }
            }
        }
    }
}

async fn handle(bus: &Bus, payload: &[u8]) -> Result<(), BusError> {
    let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(payload) else {
        tracing::warn!("unreadable max-deliveries advisory ignored");
        return Ok(());
    };
    let Some(stage) = Stage::from_consumer(&advisory.consumer) else { return Ok(()) };
    let err = |e: &dyn std::fmt::Display| BusError::Setup { what: WORK_STREAM.into(), message: e.to_string() };
    let work = bus.js.get_stream(WORK_STREAM).await.map_err(|e| err(&e))?;
    let message = match work.get_raw_message(advisory.stream_seq).await {
        Ok(m) => m,
        // Acked after all (a slow handler), or already handled by another coordinator.
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(()),
        Err(e) => return Err(err(&e)),
    };
    let run_id = decode(&message.payload).ok().map(|m| m.run_id().clone());
    let reason = crash_reason(advisory.deliveries);
    tracing::error!(stage = stage.name(), run_id = ?run_id.as_ref().map(|r| r.as_str()), deliveries = advisory.deliveries, "crash loop: dead-lettering the task");
    if !dead_letter(bus, stage, &message.payload, &reason, advisory.deliveries, run_id.as_ref()).await {
        return Err(BusError::Publish { subject: stage.dead_subject(), message: "dead letter not stored".into() });
    }
    // Nobody will deliver it again; it must not linger in the work queue.
    if let Err(e) = work.delete_message(advisory.stream_seq).await {
        tracing::debug!(error = %e, "crash-looped task already gone from the work stream");
    }
    Ok(())
}
