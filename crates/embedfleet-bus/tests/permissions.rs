//! A closed fleet against a real nats-server: the authorization of deploy/nats/auth.conf (one user
//! per role) lets each role do its work and nothing more, an unauthenticated client is refused, and
//! TLS works with a private CA (`--nats-ca`) and with client certificates (mutual TLS).

use embedfleet_bus::messages::{Message, RunSpec};
use embedfleet_bus::testing::NatsServer;
use embedfleet_bus::{Bus, BusOptions, Stage};
use embedfleet_core::testing::TestCerts;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const ROLES: [&str; 5] = ["coordinator", "generator", "trainer", "evaluator", "cli"];

fn auth_conf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/auth.conf")
}

fn password(role: &str) -> String {
    format!("{role}-test-password")
}

fn server_with_roles() -> NatsServer {
    let vars: Vec<(String, String)> =
        ROLES.iter().map(|r| (format!("EMBEDFLEET_NATS_{}_PASSWORD", r.to_uppercase()), password(r))).collect();
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    NatsServer::start_with_config("include ./auth.conf\n", &[("auth.conf", &auth_conf())], &env)
}

async fn connect_as(server: &NatsServer, role: &str) -> Result<Bus, embedfleet_bus::BusError> {
    let mut options = BusOptions::new(server.url()).connect_timeout(Duration::from_secs(20)).owns_layout(role == "coordinator");
    options.user_password = Some((role.to_owned(), password(role)));
    Bus::connect(&options).await
}

fn run_id() -> embedfleet_core::RunId {
    "r-perm".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_its_own_work_and_nothing_else() {
    let server = server_with_roles();
    // The coordinator creates the layout, writes a record and sends a generate task.
    let coordinator = connect_as(&server, "coordinator").await.expect("the coordinator connects");
    coordinator.runs.put("r-perm", br#"{"state":"generating"}"#.to_vec().into()).await.expect("the coordinator writes run records");
    let task = Message::GenerateTask { run_id: run_id(), task: 0, first: 0, count: 1 };
    coordinator.publish(Stage::Generate, &task).await.expect("the coordinator sends tasks");

    // A generator binds to the layout, takes the task, acks it, reports, and reads the record.
    let generator = connect_as(&server, "generator").await.expect("the generator connects");
    let consumer = generator.consumer(Stage::Generate, Duration::from_secs(30)).await.expect("the generator makes its consumer");
    let mut batch = consumer.fetch().max_messages(1).expires(Duration::from_secs(5)).messages().await.expect("fetch");
    let message = futures::StreamExt::next(&mut batch).await.expect("a task").expect("a message");
    message.ack().await.expect("the generator acks its task");
    let done = Message::GenerateDone { run_id: run_id(), task: 0, questions: 2, failed_chunks: 0, spent_usd: 0.0, budget_reached: false };
    generator.publish(Stage::Coordinate, &done).await.expect("the generator reports to the coordinator");
    assert!(generator.runs.get("r-perm").await.expect("the generator reads run records").is_some());
    generator.rate.put("limit", b"1".to_vec().into()).await.expect("the generator writes the shared rate limit");

    // What a generator must not do is refused by the server, and the server logs it.
    let submit = Message::RunSubmitted { run_id: "r-forged".parse().unwrap(), spec: RunSpec::default() };
    assert!(generator.publish(Stage::Coordinate, &submit).await.is_err(), "a generator submitted a run");
    let forged = Message::EvaluateDone { run_id: run_id(), label: "step-0".parse().unwrap(), value: 1.0 };
    assert!(generator.publish(Stage::Coordinate, &forged).await.is_err(), "a generator wrote an evaluation");
    assert!(generator.runs.put("r-perm", br#"{"state":"done"}"#.to_vec().into()).await.is_err(), "a generator wrote a run record");

    // The trainer, the evaluator and the CLI each send their own messages.
    let trainer = connect_as(&server, "trainer").await.expect("the trainer connects");
    let saved = Message::CheckpointSaved { run_id: run_id(), label: "step-0".parse().unwrap(), step: 0 };
    trainer.publish(Stage::Coordinate, &saved).await.expect("the trainer reports checkpoints");
    assert!(trainer.publish(Stage::Coordinate, &forged).await.is_err(), "the trainer wrote an evaluation");
    let evaluator = connect_as(&server, "evaluator").await.expect("the evaluator connects");
    evaluator.publish(Stage::Coordinate, &forged).await.expect("the evaluator reports scores");
    assert!(evaluator.publish(Stage::Train, &Message::TrainTask { run_id: run_id() }).await.is_err(), "the evaluator sent a train task");
    let cli = connect_as(&server, "cli").await.expect("the CLI connects");
    cli.publish(Stage::Coordinate, &submit).await.expect("the CLI submits runs");
    cli.publish(Stage::Coordinate, &Message::CancelRun { run_id: run_id() }).await.expect("the CLI cancels runs");
    assert!(cli.runs.get("r-perm").await.expect("the CLI reads run records").is_some());
    assert!(cli.runs.put("r-perm", b"{}".to_vec().into()).await.is_err(), "the CLI wrote a run record");
    assert!(cli.publish(Stage::Coordinate, &done).await.is_err(), "the CLI forged a generate result");

    let started = Instant::now();
    while !server.log().contains(r#"Publish Violation - User "generator", Subject "embedfleet.work.coordinate.run_submitted""#) {
        assert!(started.elapsed() < Duration::from_secs(10), "the server did not log the refusals:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_credentials_or_with_wrong_ones_are_refused() {
    let server = server_with_roles();
    let anonymous = Bus::connect(&BusOptions::new(server.url()).connect_timeout(Duration::from_secs(3))).await;
    assert!(anonymous.is_err(), "an unauthenticated client connected");
    let mut wrong = BusOptions::new(server.url()).connect_timeout(Duration::from_secs(3));
    wrong.user_password = Some(("coordinator".into(), "guess".into()));
    let err = Bus::connect(&wrong).await.err().expect("a wrong password is refused").to_string();
    assert!(!err.contains("guess"), "the password is not repeated in errors: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_mutual_tls() {
    let certs = TestCerts::generate();
    let files = [("ca.pem", certs.path("ca.pem")), ("server.pem", certs.path("server.pem")), ("server.key", certs.path("server.key"))];
    let files: Vec<(&str, &std::path::Path)> = files.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let server = NatsServer::start_with_config("tls { cert_file: \"./server.pem\"\n key_file: \"./server.key\" }\n", &files, &[]);
    let mut options = BusOptions::new(server.url()).connect_timeout(Duration::from_secs(3));
    options.tls = true;
    assert!(Bus::connect(&options).await.is_err(), "a server signed by an unknown CA was trusted");
    options.ca = Some(certs.path("ca.pem"));
    options.connect_timeout = Some(Duration::from_secs(20));
    let bus = Bus::connect(&options).await.expect("--nats-ca reaches the server");
    bus.runs.put("tls", b"ok".to_vec().into()).await.unwrap();

    // Mutual TLS: the server verifies client certificates against the same CA.
    let mtls = NatsServer::start_with_config(
        "tls { cert_file: \"./server.pem\"\n key_file: \"./server.key\"\n ca_file: \"./ca.pem\"\n verify: true }\n",
        &files,
        &[],
    );
    let mut options = BusOptions::new(mtls.url()).connect_timeout(Duration::from_secs(3));
    options.tls = true;
    options.ca = Some(certs.path("ca.pem"));
    assert!(Bus::connect(&options).await.is_err(), "a client without a certificate was let in");
    options.client_cert = Some((certs.path("client.pem"), certs.path("client.key")));
    options.connect_timeout = Some(Duration::from_secs(20));
    let bus = Bus::connect(&options).await.expect("a client certificate signed by the CA is let in");
    bus.runs.put("mtls", b"ok".to_vec().into()).await.unwrap();
}
