//! The fleet at sizes the old control plane could not take, in CI's time: a run of more than
//! 20,000 generate tasks (the old run record passed NATS's 1 MiB limit near 15,000) whose fan-out
//! starts while its corpus is still being read, with a small run submitted meanwhile that must not
//! wait behind it; a 100,000-chunk run whose generator and coordinator are SIGKILLed during the
//! fan-out; and corpora too big for a run's limits, refused with the limit named. Each dataset
//! must be byte for byte what a local `embedfleet generate` writes.

mod fleet;

use embedfleet_bus::layout;
use embedfleet_bus::messages::{Message, RunSpec};
use embedfleet_bus::{Bus, Stage};
use embedfleet_coordinator::{RunRecord, RunState};
use fleet::{Fleet, Worker, corpus, object_sha256, synthetic_site};
use std::path::Path;
use std::time::{Duration, Instant};

const FILES: [&str; 8] = [
    "train_corpus.json",
    "train_queries.json",
    "train_relevant_docs.json",
    "train_dataset.json",
    "val_corpus.json",
    "val_queries.json",
    "val_relevant_docs.json",
    "val_dataset.json",
];

/// A local `embedfleet generate` of `corpus` into `out`.
fn local_generate(fleet: &Fleet, corpus: &Path, out: &Path) {
    let o = fleet.cli(&["generate", "--input", corpus.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--generator", "offline"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Questions in a local dataset.
fn local_questions(local: &Path) -> u64 {
    ["train_queries.json", "val_queries.json"]
        .iter()
        .map(|f| {
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&std::fs::read(local.join(f)).unwrap()).unwrap().len()
                as u64
        })
        .sum()
}

/// The fleet's dataset of `run` is byte for byte the local one in `local`.
async fn assert_same_dataset(fleet: &Fleet, run: &str, local: &Path) {
    let local_store = embedfleet_core::ArtifactStore::local(local).unwrap();
    for name in FILES {
        let ours = object_sha256(&fleet.store(), &format!("{}/{name}", layout::data(run))).await;
        assert_eq!(ours, object_sha256(&local_store, name).await, "{name} of run {run} differs from the local generate's");
    }
}

async fn wait_ready(workers: &[&Worker]) {
    for w in workers {
        let started = Instant::now();
        while !w.ready().await {
            assert!(started.elapsed() < Duration::from_secs(60), "{} never became ready", w.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The two big runs take both cores for a minute or more each: side by side, their servers start too
/// slowly for the harness. They take turns.
static ONE_BIG_RUN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn record_size(bytes: &[u8]) -> (RunRecord, usize) {
    (serde_json::from_slice(bytes).unwrap(), bytes.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_of_twenty_thousand_tasks_fans_out_at_once_and_shares_the_fleet() {
    let _turn = ONE_BIG_RUN_AT_A_TIME.lock().await;
    let mut fleet = Fleet::start();
    let site = fleet.dir.path().join("site.jsonl");
    synthetic_site(&site, 2_100, 1);
    let local = fleet.dir.path().join("local");
    local_generate(&fleet, &site, &local);

    let model = fleet.tiny_model_in_store().await;
    let generator_env = [("EMBEDFLEET_PARALLEL", "8".to_string())];
    let coordinators = [fleet.spawn("embedfleet-coordinator", &[]), fleet.spawn("embedfleet-coordinator", &[])];
    let generators = [fleet.spawn("embedfleet-generator", &generator_env), fleet.spawn("embedfleet-generator", &generator_env)];
    let trainer = fleet.spawn("embedfleet-trainer", &[]);
    let evaluator = fleet.spawn("embedfleet-evaluator", &[]);
    wait_ready(&[&coordinators[0], &coordinators[1], &generators[0], &generators[1], &trainer, &evaluator]).await;
    let bus = fleet.bus().await;

    let o =
        fleet.cli(&["submit", "--input", site.to_str().unwrap(), "--run-id", "big", "--generator", "offline", "--chunks-per-task", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let submitted = Instant::now();

    // Fan-out starts before the corpus is all read: a task is done while shards are still written.
    let mut largest = 0;
    let early = loop {
        if let Ok(Some(entry)) = bus.runs.entry("big").await {
            let (r, size) = record_size(&entry.value);
            largest = largest.max(size);
            if r.tasks_done() > 0 {
                break r;
            }
        }
        assert!(submitted.elapsed() < Duration::from_secs(120), "no task done in 2 minutes\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!early.ingest.complete, "the first task was done only after the whole corpus was read: {early:?}");
    let first_task = submitted.elapsed();

    // A small run submitted now gets its first task done within seconds and goes all the way
    // while the big run is still generating.
    let small = corpus(fleet.dir.path(), 6);
    let small_args = ["submit", "--input", small.to_str().unwrap(), "--run-id", "small", "--model-id", model.as_str()];
    let o = fleet.cli(&[&small_args[..], &["--batch-size", "4", "--epochs", "1", "--evaluation-steps", "5"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let small_submitted = Instant::now();
    let r = fleet.wait_for(&bus, "small", Duration::from_secs(60), |r| r.tasks_done() > 0).await;
    let small_first = small_submitted.elapsed();
    assert!(small_first < Duration::from_secs(30), "the small run's first task took {small_first:?}: {r:?}");
    let small_done = fleet.wait_for(&bus, "small", Duration::from_secs(300), |r| r.state.is_terminal()).await;
    assert_eq!(small_done.state, RunState::Done, "{small_done:?}\n{}", fleet.logs());
    let big_then = embedfleet_coordinator::worker::load_record(&bus, "big").await.unwrap().0.unwrap();
    assert_eq!(big_then.state, RunState::Generating, "the small run should finish while the big one generates");

    // The big run: every task done, the record small throughout, the dataset the local one.
    let started = Instant::now();
    let done = loop {
        let entry = bus.runs.entry("big").await.unwrap().unwrap();
        let (r, size) = record_size(&entry.value);
        largest = largest.max(size);
        if r.state != RunState::Generating && r.state != RunState::Assembling {
            break r;
        }
        assert!(started.elapsed() < Duration::from_secs(900), "the big run is stuck: {r:?}\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done.state, RunState::Training, "{done:?}");
    assert!(done.ingest.tasks >= 20_000, "{} tasks", done.ingest.tasks);
    assert_eq!(done.tasks_done(), done.ingest.tasks);
    assert_eq!(done.questions, local_questions(&local));
    assert!(largest < 8 * 1024, "the run record reached {largest} bytes");
    assert_same_dataset(&fleet, "big", &local).await;
    let o = fleet.cli(&["cancel", "big"]);
    assert!(o.status.success());
    eprintln!(
        "{} tasks: first task done {first_task:?} after submit, the whole dataset {:?}; record at most {largest} bytes; \
         the small run's first task {small_first:?} after its submit, done after {:?}",
        done.ingest.tasks,
        submitted.elapsed(),
        small_submitted.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generator_and_a_coordinator_killed_during_fan_out_lose_nothing() {
    let _turn = ONE_BIG_RUN_AT_A_TIME.lock().await;
    let mut fleet = Fleet::start();
    let site = fleet.dir.path().join("site.jsonl");
    synthetic_site(&site, 10_000, 2);
    let local = fleet.dir.path().join("local");
    local_generate(&fleet, &site, &local);

    // A short ack wait, so the killed ones' messages come back soon.
    let env = [("EMBEDFLEET_ACK_WAIT", "6".to_string())];
    let mut coordinators = vec![fleet.spawn("embedfleet-coordinator", &env), fleet.spawn("embedfleet-coordinator", &env)];
    let mut generators = vec![fleet.spawn("embedfleet-generator", &env), fleet.spawn("embedfleet-generator", &env)];
    wait_ready(&[&coordinators[0], &coordinators[1], &generators[0], &generators[1]]).await;
    let bus = fleet.bus().await;
    let o = fleet.cli(&["submit", "--input", site.to_str().unwrap(), "--run-id", "chaos", "--generator", "offline"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let started = Instant::now();
    let r = fleet.wait_for(&bus, "chaos", Duration::from_secs(300), |r| r.tasks_done() > 0).await;
    eprintln!("killing a generator and a coordinator at {:?}: {} of {}+ tasks done", started.elapsed(), r.tasks_done(), r.ingest.tasks);
    generators[0].kill9();
    coordinators[0].kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    generators.push(fleet.spawn("embedfleet-generator", &env));
    coordinators.push(fleet.spawn("embedfleet-coordinator", &env));
    let done =
        fleet.wait_for(&bus, "chaos", Duration::from_secs(900), |r| !matches!(r.state, RunState::Generating | RunState::Assembling)).await;
    assert_eq!(done.state, RunState::Training, "{done:?}\n{}", fleet.logs());
    assert!(done.ingest.chunks >= 90_000, "{} chunks", done.ingest.chunks);
    assert_eq!(done.questions, local_questions(&local));
    assert_same_dataset(&fleet, "chaos", &local).await;
    eprintln!("{} chunks in {} tasks assembled {:?} after submit", done.ingest.chunks, done.ingest.tasks, started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corpus_too_big_for_a_run_is_refused_naming_the_limit() {
    let mut fleet = Fleet::start();
    // 3 MB of text in chunks of 2 characters, one chunk a task: about 1.5 million tasks, more
    // than a run may have.
    let site = fleet.dir.path().join("site.jsonl");
    synthetic_site(&site, 400, 3);
    let too_many = ["--chunk-size", "2", "--chunk-overlap", "0", "--chunks-per-task", "1", "--model-id", "unused"];
    let o = fleet.cli(&[&["submit", "--input", site.to_str().unwrap(), "--run-id", "huge"][..], &too_many].concat());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "accepted: {stderr}");
    assert!(stderr.contains("1048576") && stderr.contains("--chunks-per-task"), "{stderr}");
    assert!(fleet.store().list("runs").await.unwrap().is_empty(), "nothing uploaded");

    // The same spec from another client is refused by the coordinator: the run fails with the
    // reason, visible to `status`.
    let coordinator = fleet.spawn("embedfleet-coordinator", &[]);
    wait_ready(&[&coordinator]).await;
    let bus: Bus = fleet.bus().await;
    let key = "runs/huge/input/site.jsonl";
    fleet.store().put_file(&site, key).await.unwrap();
    let mut spec = RunSpec { input_key: key.into(), chunks_per_task: Some(1), ..Default::default() };
    (spec.dataset.chunk_size, spec.dataset.chunk_overlap) = (2, 0);
    bus.publish(Stage::Coordinate, &Message::RunSubmitted { run_id: "huge".parse().unwrap(), spec }).await.unwrap();
    let r = fleet.wait_for(&bus, "huge", Duration::from_secs(30), |r| r.state.is_terminal()).await;
    assert_eq!(r.state, RunState::Failed);
    let reason = r.error.unwrap();
    assert!(reason.contains("1048576") && reason.contains("--chunks-per-task"), "{reason}");
    let o = fleet.cli(&["status", "huge"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("--chunks-per-task"), "{}", String::from_utf8_lossy(&o.stdout));
}
