//! The coordinator's control plane alone, at a size no machine here could do the work of: a run
//! of 10 million chunks (1.25 million generate tasks of 8 chunks, an LLM run's task size) driven
//! through the real coordinator loop, a real nats-server and the real runs KV bucket, with
//! synthetic events instead of work: the ingest stage reports its shards at once, and a fake
//! generator answers every generate task as soon as it arrives. It prints, at every tenth of the
//! run, the events applied per second, the cost per event, and the run record's size: they stay
//! flat from the first task to the last.
//!
//! `cargo test --release -p embedfleet-cli --bench control_plane -- [--chunks 10000000]
//! [--chunks-per-task 8] [--tasks-in-flight 32]` (the debug profile works too, slower).

use embedfleet_bus::health::Health;
use embedfleet_bus::messages::{Message, RunSpec, decode};
use embedfleet_bus::testing::NatsServer;
use embedfleet_bus::worker::{WorkerConfig, run_worker};
use embedfleet_bus::{Bus, BusOptions, Stage};
use embedfleet_coordinator::worker::{Coordinator, CoordinatorConfig};
use embedfleet_coordinator::{RunRecord, RunState};
use embedfleet_core::{ArtifactStore, RunId};
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(|v| v.parse().expect("a number")).unwrap_or(default)
}

/// Answers the run's ingest task with its shards, all at once, in twenty progress reports.
async fn fake_ingest(bus: Bus, run_id: RunId, chunks: u64, per_task: u64) {
    let consumer = bus.consumer(Stage::Ingest, Duration::from_secs(30)).await.unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let message = messages.next().await.unwrap().unwrap();
    message.ack().await.unwrap();
    let tasks = chunks.div_ceil(per_task) as u32;
    for i in 1..=20u32 {
        let ready = (u64::from(tasks) * u64::from(i) / 20) as u32;
        let m = Message::ChunksReady {
            run_id: run_id.clone(),
            tasks: ready,
            chunks: (u64::from(ready) * per_task).min(chunks),
            documents: chunks / 10,
            complete: i == 20,
        };
        bus.publish(Stage::Coordinate, &m).await.unwrap();
    }
}

/// Answers every generate task at once with a `GenerateDone` of two questions a chunk.
async fn fake_generator(bus: Bus) {
    let consumer = bus.consumer(Stage::Generate, Duration::from_secs(30)).await.unwrap();
    let mut messages = consumer.stream().max_messages_per_batch(512).messages().await.unwrap();
    while let Some(Ok(message)) = messages.next().await {
        let Ok(Message::GenerateTask { run_id, task, count, .. }) = decode(&message.payload) else { continue };
        let done = Message::GenerateDone { run_id, task, questions: 2 * count, failed_chunks: 0, spent_usd: 0.0, budget_reached: false };
        let bus = bus.clone();
        tokio::spawn(async move {
            bus.publish(Stage::Coordinate, &done).await.unwrap();
            message.ack().await.unwrap();
        });
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let chunks = arg(&args, "--chunks", 10_000_000);
    let per_task = arg(&args, "--chunks-per-task", 8);
    let in_flight = arg(&args, "--tasks-in-flight", 32) as u32;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::local(dir.path()).unwrap();
    let run_id = RunId::new("control-plane").unwrap();
    let input_key = format!("runs/{run_id}/input/corpus.jsonl");
    store.put(&input_key, b"{}".to_vec()).await.unwrap();
    let options = BusOptions::new(nats.url()).connect_timeout(Duration::from_secs(10));
    let connect = || Bus::connect(&options);
    let bus = connect().await.unwrap();

    // The coordinator as its binary runs it: the event loop with its group commit.
    let coordinator =
        Arc::new(Coordinator::new(bus.clone(), store.clone(), CoordinatorConfig { tasks_in_flight: in_flight, ..Default::default() }));
    let config = WorkerConfig::new(Stage::Coordinate, Duration::from_secs(30), 256, Duration::from_secs(5));
    tokio::spawn(run_worker(connect().await.unwrap(), coordinator, config, Arc::new(Health::default()), std::future::pending()));
    tokio::spawn(fake_ingest(connect().await.unwrap(), run_id.clone(), chunks, per_task));
    tokio::spawn(fake_generator(connect().await.unwrap()));

    let spec = RunSpec { input_key, chunks_per_task: Some(per_task as usize), ..Default::default() };
    let started = Instant::now();
    bus.publish(Stage::Coordinate, &Message::RunSubmitted { run_id: run_id.clone(), spec }).await.unwrap();
    let tasks = chunks.div_ceil(per_task);
    println!("control plane: {chunks} chunks in {tasks} generate tasks of {per_task}, {in_flight} tasks in flight");
    println!("| tasks done | seconds | events/s (last tenth) | µs per event | record bytes |");
    println!("|---|---|---|---|---|");
    let (mut next_tenth, mut last_done, mut last_t) = (1u64, 0u64, 0.0f64);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(Some(entry)) = bus.runs.entry(run_id.as_str()).await else { continue };
        let r: RunRecord = serde_json::from_slice(&entry.value).unwrap();
        let done = u64::from(r.tasks_done());
        let t = started.elapsed().as_secs_f64();
        let finished = r.state != RunState::Generating;
        if done >= tasks * next_tenth / 10 || finished {
            let rate = (done - last_done) as f64 / (t - last_t).max(1e-9);
            println!("| {done} | {t:.1} | {rate:.0} | {:.0} | {} |", 1e6 / rate.max(1e-9), entry.value.len());
            (last_done, last_t) = (done, t);
            next_tenth = (done * 10 / tasks) + 1;
        }
        if finished {
            println!("state {} after {t:.1} s: {:.0} events/s overall", r.state.name(), done as f64 / t);
            break;
        }
        assert!(t < 3600.0, "the run did not finish generating in an hour: {done} of {tasks}");
    }
}
