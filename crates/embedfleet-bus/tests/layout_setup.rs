//! Every worker sets the JetStream layout up as it starts, so a fleet starting at once sends many
//! set-up requests to a fresh server together. nats-server 2.9 (Debian's, which CI runs) crashed
//! when a stream update raced the stream's creation; the layout must be set up by create, and
//! updated only when a stream's settings really differ. A server that does not answer JetStream
//! requests yet (just restarted, recovering its streams, or started without JetStream) is asked
//! again within the connection's time limit.

use async_nats::jetstream::{self, stream};
use embedfleet_bus::options::BusOptions;
use embedfleet_bus::subjects::{WORK_STREAM, WORK_SUBJECTS};
use embedfleet_bus::testing::NatsServer;
use embedfleet_bus::{Bus, Stage};
use std::time::Duration;

const WORKERS: usize = 12;
const FRESH_SERVERS: usize = 12;
/// Generous: the server answers in milliseconds here, but CI's machine is shared.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect_all(url: &str) -> Vec<Result<Bus, embedfleet_bus::BusError>> {
    let tasks: Vec<_> = (0..WORKERS)
        .map(|i| {
            let options = BusOptions::new(url).client_name(format!("worker-{i}")).connect_timeout(CONNECT_TIMEOUT);
            tokio::spawn(async move { Bus::connect(&options).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("connect task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_starting_at_once_sets_the_layout_up_without_killing_the_server() {
    for round in 0..FRESH_SERVERS {
        let mut server = NatsServer::start();
        let results = connect_all(&server.url()).await;
        for (i, r) in results.iter().enumerate() {
            assert!(r.is_ok(), "round {round}, worker {i}: {:?}\n{}", r.as_ref().err(), server.log());
        }
        // Then each worker creates its stage's durable consumer, replicas of a stage together.
        let buses: Vec<Bus> = results.into_iter().map(Result::unwrap).collect();
        let consumers: Vec<_> = buses
            .iter()
            .enumerate()
            .map(|(i, bus)| {
                let bus = bus.clone();
                tokio::spawn(async move { bus.consumer(Stage::ALL[i % Stage::ALL.len()], Duration::from_secs(30)).await.map(|_| ()) })
            })
            .collect();
        for (i, c) in consumers.into_iter().enumerate() {
            let r = c.await.expect("consumer task");
            assert!(r.is_ok(), "round {round}, consumer of worker {i}: {r:?}\n{}", server.log());
        }
        assert!(server.is_running(), "round {round}: nats-server died during set-up\n{}", server.log());
        // The layout is usable: a KV write and a read through a fresh connection.
        let bus = &buses[0];
        bus.runs.put("probe", "1".into()).await.unwrap();
        assert_eq!(bus.runs.get("probe").await.unwrap().as_deref(), Some(&b"1"[..]));
    }
}

#[tokio::test]
async fn a_stream_left_with_other_settings_is_updated_and_a_restart_keeps_it() {
    let mut server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    // What an older deployment might have left: the work stream with a shorter dedup window.
    js.create_stream(stream::Config {
        name: WORK_STREAM.into(),
        subjects: vec![WORK_SUBJECTS.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        duplicate_window: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap();
    let options = BusOptions::new(server.url()).connect_timeout(CONNECT_TIMEOUT);
    let bus = Bus::connect(&options).await.unwrap();
    let info = bus.js.get_stream(WORK_STREAM).await.unwrap().cached_info().clone();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(600), "the older settings were updated");

    // After a restart the server recovers the streams from its store; setting up again is a no-op.
    drop(bus);
    server.restart();
    let results = connect_all(&server.url()).await;
    assert!(results.iter().all(|r| r.is_ok()), "{:?}", results.iter().filter_map(|r| r.as_ref().err()).collect::<Vec<_>>());
    assert!(server.is_running(), "{}", server.log());
}

#[tokio::test]
async fn a_server_that_gains_jetstream_later_is_set_up_once_it_answers() {
    let mut server = NatsServer::start_without_jetstream();
    let options = BusOptions::new(server.url()).connect_timeout(CONNECT_TIMEOUT);
    let connecting = tokio::spawn(async move { Bus::connect(&options).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!connecting.is_finished(), "set-up without JetStream must wait for it, not fail at once");
    server.enable_jetstream();
    let bus = tokio::time::timeout(CONNECT_TIMEOUT, connecting).await.expect("set-up finishes").expect("connect task");
    let bus = bus.unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    bus.runs.put("probe", "1".into()).await.unwrap();
    assert_eq!(bus.runs.get("probe").await.unwrap().as_deref(), Some(&b"1"[..]));
}

#[tokio::test]
async fn a_server_without_jetstream_is_named_when_the_time_limit_passes() {
    let server = NatsServer::start_without_jetstream();
    let options = BusOptions::new(server.url()).connect_timeout(Duration::from_secs(2));
    let error = Bus::connect(&options).await.err().expect("no JetStream, no bus");
    assert!(matches!(error, embedfleet_bus::BusError::Setup { .. }), "{error:?}");
    assert!(error.to_string().contains("Is JetStream enabled on the server (-js)?"), "{error}");
}
