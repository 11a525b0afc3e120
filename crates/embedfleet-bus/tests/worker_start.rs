//! A worker whose NATS server goes away between setting the layout up and creating its stage's
//! consumer stays live and unready, and becomes ready once the server is back, instead of exiting.

use embedfleet_bus::health::Health;
use embedfleet_bus::testing::NatsServer;
use embedfleet_bus::worker::{TaskError, TaskHandler, WorkerConfig, run_worker};
use embedfleet_bus::{Bus, BusOptions, Message, Stage};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Idle;

impl TaskHandler for Idle {
    async fn handle(&self, _message: Message, _deliveries: i64) -> Result<(), TaskError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_server_restarts_before_its_consumer_exists_becomes_ready_when_it_is_back() {
    let mut server = NatsServer::start();
    let bus = Bus::connect(&BusOptions::new(server.url()).connect_timeout(Duration::from_secs(30))).await.unwrap();
    server.stop();
    let health = Arc::new(Health::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = WorkerConfig::new(Stage::ALL[0], Duration::from_secs(30), 1, Duration::from_secs(1));
    let worker = tokio::spawn(run_worker(bus, Arc::new(Idle), config, health.clone(), async {
        let _ = stopped.await;
    }));
    // Longer than a JetStream request waits for its answer (5 s), so the first request fails.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(!worker.is_finished(), "the worker must wait for its server, not exit: {:?}", worker.await);
    assert!(!health.is_ready());

    server.restart();
    let started = Instant::now();
    while !health.is_ready() {
        assert!(started.elapsed() < Duration::from_secs(60), "not ready a minute after the server came back\n{}", server.log());
        assert!(!worker.is_finished(), "the worker exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), worker).await.expect("the worker stops").expect("worker task");
    assert!(result.is_ok(), "{result:?}");
}
