//! Fleet benchmark, printed as ratios measured in one invocation on one machine:
//! 1. chunks/s of LLM question generation with 1 generator process and with 3, against the LLM
//!    test server at 300 ms per answer (goal: 3 processes at least 2.7 times one);
//! 2. the fleet's overhead against `embedfleet run` on the same small job (tiny model, offline
//!    questions): submit → done against the local command's wall time.
//!
//! `cargo test -p embedfleet-cli --bench fleet_bench` (after `cargo build --workspace --bins`).

#[path = "../tests/fleet/mod.rs"]
mod fleet;

use embedfleet_coordinator::RunState;
use embedfleet_generator::testing::{ServerBehavior, TestServer};
use fleet::{Fleet, corpus, tiny_model};
use std::time::{Duration, Instant};

async fn generation_rate(generators: usize, docs: usize) -> (f64, u32, f64) {
    let llm = TestServer::start(ServerBehavior { latency: Duration::from_millis(300), ..Default::default() }).await.unwrap();
    let mut fleet = Fleet::start();
    let corpus = corpus(fleet.dir.path(), docs);
    let env = vec![
        ("EMBEDFLEET_LLM_BASE_URL", llm.base_url()),
        ("EMBEDFLEET_LLM_MODEL", "test-model".to_string()),
        // Limits far above what the test server can answer: the bench measures the fleet, not a limit.
        ("EMBEDFLEET_LLM_RPM", "100000".to_string()),
        ("EMBEDFLEET_LLM_TPM", "100000000".to_string()),
        // One request in flight per process: the scaling measured is the fleet's, not a process's.
        ("EMBEDFLEET_LLM_CONCURRENCY", "1".to_string()),
    ];
    let _c = fleet.spawn("embedfleet-coordinator", &[]);
    let workers: Vec<_> = (0..generators).map(|_| fleet.spawn("embedfleet-generator", &env)).collect();
    let bus = fleet.bus().await;
    for w in &workers {
        while !w.ready().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let started = Instant::now();
    let run = format!("bench-gen-{generators}");
    let o = fleet.cli(&[
        "submit",
        "--input",
        corpus.to_str().unwrap(),
        "--run-id",
        &run,
        "--generator",
        "llm",
        "--chunks-per-task",
        "1",
        "--model-id",
        "unused",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = fleet.wait_for(&bus, &run, Duration::from_secs(600), |r| r.state != RunState::Generating).await;
    let seconds = started.elapsed().as_secs_f64();
    (r.ingest.chunks as f64 / seconds, r.ingest.chunks as u32, seconds)
}

async fn overhead() -> (f64, f64) {
    let mut fleet = Fleet::start();
    let model = tiny_model(fleet.dir.path());
    let corpus = corpus(fleet.dir.path(), 20);
    let training = ["--batch-size", "8", "--evaluation-steps", "10", "--epochs", "1"];

    let started = Instant::now();
    let out = fleet.dir.path().join("local");
    let mut local = vec![
        "run",
        "--input",
        corpus.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--model-id",
        model.to_str().unwrap(),
        "--generator",
        "offline",
        "--threads",
        "1",
        "--device",
        "cpu",
    ];
    local.extend(training);
    let o = fleet.cli(&local);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let local_s = started.elapsed().as_secs_f64();

    let _c = fleet.spawn("embedfleet-coordinator", &[]);
    let g = fleet.spawn("embedfleet-generator", &[]);
    let t = fleet.spawn("embedfleet-trainer", &[]);
    let e = fleet.spawn("embedfleet-evaluator", &[]);
    for w in [&g, &t, &e] {
        while !w.ready().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let bus = fleet.bus().await;
    let started = Instant::now();
    let mut submit =
        vec!["submit", "--input", corpus.to_str().unwrap(), "--run-id", "bench-overhead", "--model-id", model.to_str().unwrap()];
    submit.extend(training);
    let o = fleet.cli(&submit);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = fleet.wait_for(&bus, "bench-overhead", Duration::from_secs(600), |r| r.state.is_terminal()).await;
    assert_eq!(r.state, RunState::Done);
    (local_s, started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (one, chunks, t1) = generation_rate(1, 24).await;
    let (three, _, t3) = generation_rate(3, 24).await;
    println!("generation, LLM at 300 ms per answer, {chunks} chunks:");
    println!("  1 generator   {one:6.2} chunks/s ({t1:.1} s)");
    println!("  3 generators  {three:6.2} chunks/s ({t3:.1} s)");
    println!("  ratio         {:6.2} (goal >= 2.7)", three / one);
    let (local, fleet) = overhead().await;
    println!("same job (20 documents, tiny model, offline questions):");
    println!("  embedfleet run     {local:6.1} s");
    println!("  fleet submit→done  {fleet:6.1} s");
    println!("  overhead           {:+6.1} s ({:+.1}%)", fleet - local, (fleet / local - 1.0) * 100.0);
}
