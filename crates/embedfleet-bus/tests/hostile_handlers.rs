//! A handler that panics, or that never finishes, must not pin its message: the heartbeat that
//! keeps a message from every other worker stops with it. A panic dead-letters the task at once
//! with the reason (and tells the coordinator); a task past its time limit is stopped and retried.

use embedfleet_bus::health::Health;
use embedfleet_bus::subjects::DEAD_STREAM;
use embedfleet_bus::testing::NatsServer;
use embedfleet_bus::worker::{TaskError, TaskHandler, WorkerConfig, run_worker};
use embedfleet_bus::{Bus, BusOptions, Message, Stage};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Panics;

impl TaskHandler for Panics {
    async fn handle(&self, _message: Message, _deliveries: i64) -> Result<(), TaskError> {
        panic!("index out of bounds in a hostile input");
    }
}

/// Never returns; counts how often it was given the task.
struct Hangs(Arc<AtomicUsize>);

impl TaskHandler for Hangs {
    async fn handle(&self, _message: Message, _deliveries: i64) -> Result<(), TaskError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

async fn dead_letters(bus: &Bus) -> Vec<String> {
    let mut stream = bus.js.get_stream(DEAD_STREAM).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut reasons = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            reasons.push(m.headers.get("Embedfleet-Reason").map(|v| v.to_string()).unwrap_or_default());
        }
    }
    reasons
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_dead_letters_its_task_within_the_ack_wait() {
    let server = NatsServer::start();
    let bus = Bus::connect(&BusOptions::new(server.url()).connect_timeout(Duration::from_secs(30))).await.unwrap();
    let ack_wait = Duration::from_secs(6);
    let config = WorkerConfig::new(Stage::Train, ack_wait, 1, Duration::from_secs(1));
    tokio::spawn(run_worker(bus.clone(), Arc::new(Panics), config, Arc::new(Health::default()), std::future::pending()));
    bus.publish(Stage::Train, &Message::TrainTask { run_id: "r-panic".parse().unwrap() }).await.unwrap();
    let started = Instant::now();
    let reasons = loop {
        let reasons = dead_letters(&bus).await;
        if !reasons.is_empty() {
            break reasons;
        }
        assert!(started.elapsed() < ack_wait, "not dead-lettered within the ack wait ({ack_wait:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reasons[0].contains("panicked") && reasons[0].contains("hostile input"), "{reasons:?}");
    // The coordinator was told: the run's failure is on the coordinate subject.
    let mut stream = bus.js.get_stream(embedfleet_bus::subjects::WORK_STREAM).await.unwrap();
    let info = stream.info().await.unwrap();
    assert!(info.state.messages >= 1, "StageFailed published for the run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_its_time_limit_is_stopped_and_given_again() {
    let server = NatsServer::start();
    let bus = Bus::connect(&BusOptions::new(server.url()).connect_timeout(Duration::from_secs(30))).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    // An ack wait far longer than the limit: only the limit can free the task this soon.
    let mut config = WorkerConfig::new(Stage::Evaluate, Duration::from_secs(120), 1, Duration::from_secs(1));
    config.max_task_time = Some(Duration::from_secs(1));
    tokio::spawn(run_worker(bus.clone(), Arc::new(Hangs(calls.clone())), config, Arc::new(Health::default()), std::future::pending()));
    bus.publish(Stage::Evaluate, &Message::EvaluateTask { run_id: "r-hang".parse().unwrap(), label: "step-0".parse().unwrap() })
        .await
        .unwrap();
    let started = Instant::now();
    // Stopped after 1 s, retried after the first back-off (2 s): given again well inside the ack wait.
    while calls.load(Ordering::SeqCst) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the hung task was never given again ({} calls)",
            calls.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
