//! The fleet under the disorder a real cluster produces, against the real parts (nats-server,
//! SeaweedFS, the worker binaries): a worker that dies at every delivery, a user who cancels during
//! generation and during training, three generators sharing one budget, and hostile or mistaken
//! input.

mod fleet;

use embedfleet_bus::layout;
use embedfleet_bus::messages::{Message, RunSpec};
use embedfleet_bus::subjects::Stage;
use embedfleet_coordinator::RunState;
use embedfleet_generator::testing::{ServerBehavior, TestServer};
use fleet::{Fleet, corpus, dead_letters, sample};
use futures::StreamExt;
use std::time::{Duration, Instant};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trainer_that_dies_at_every_delivery_fails_its_run_with_one_dead_letter() {
    let mut fleet = Fleet::start();
    let model = fleet.tiny_model_in_store().await;
    let corpus = corpus(fleet.dir.path(), 6);
    let _coordinator = fleet.spawn("embedfleet-coordinator", &[]);
    let _generator = fleet.spawn("embedfleet-generator", &[]);
    // Aborts (SIGABRT, as an OOM kill ends a process: no error returned, nothing acked) at its
    // first training step, every time.
    let crashing = [("EMBEDFLEET_TEST_ABORT_AT_STEP", "1".to_string()), ("EMBEDFLEET_ACK_WAIT", "2".to_string())];
    let mut trainer = fleet.spawn("embedfleet-trainer", &crashing);

    let run = "run-crash";
    let o = fleet.cli(&["submit", "--input", corpus.to_str().unwrap(), "--run-id", run, "--model-id", model.as_str(), "--batch-size", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bus = fleet.bus().await;
    // Kubernetes restarts a crashed pod; so does this loop.
    let started = Instant::now();
    let mut restarts = 0;
    let record = loop {
        if let Ok((Some(r), _)) = embedfleet_coordinator::worker::load_record(&bus, run).await
            && r.state.is_terminal()
        {
            break r;
        }
        if trainer.exited() {
            restarts += 1;
            trainer = fleet.spawn("embedfleet-trainer", &crashing);
        }
        assert!(started.elapsed() < Duration::from_secs(240), "the crash loop was never noticed\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(record.state, RunState::Failed, "{record:?}");
    let error = record.error.unwrap_or_default();
    assert!(error.starts_with("train:") && error.contains("died") && error.contains("times"), "{error}");
    assert!(restarts >= Stage::Train.max_deliver() as usize - 1, "{restarts} restarts");
    let dead = dead_letters(&bus).await;
    let train_dead: Vec<_> = dead.iter().filter(|(s, _)| s == &Stage::Train.dead_subject()).collect();
    assert_eq!(train_dead.len(), 1, "one dead letter for the task: {dead:?}");
    assert!(train_dead[0].1.contains("died"), "{train_dead:?}");
    assert_eq!(dead.len(), 1, "nothing else was dead-lettered: {dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_during_generation_stops_publishing_and_generators_skip_the_rest() {
    let llm = TestServer::start(ServerBehavior { latency: Duration::from_millis(300), ..Default::default() }).await.unwrap();
    let mut fleet = Fleet::start();
    let corpus = corpus(fleet.dir.path(), 20);
    let _coordinator = fleet.spawn("embedfleet-coordinator", &[]);
    let llm_env = vec![
        ("EMBEDFLEET_LLM_BASE_URL", llm.base_url()),
        ("EMBEDFLEET_LLM_MODEL", "test-model".to_string()),
        ("EMBEDFLEET_LLM_CONCURRENCY", "1".to_string()),
    ];
    let generator = fleet.spawn("embedfleet-generator", &llm_env);
    let bus = fleet.bus().await;
    let mut tasks = bus.client.subscribe(Stage::Generate.subjects()).await.unwrap();

    let run = "run-cancel-generate";
    let o = fleet.cli(&[
        "submit",
        "--input",
        corpus.to_str().unwrap(),
        "--run-id",
        run,
        "--generator",
        "llm",
        "--chunks-per-task",
        "1",
        "--model-id",
        "unused",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    fleet.wait_for(&bus, run, Duration::from_secs(60), |r| r.tasks_done() >= 2).await;
    let asked = Instant::now();
    let o = fleet.cli(&["cancel", run]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = fleet.wait_for(&bus, run, Duration::from_secs(30), |r| r.state.is_terminal()).await;
    assert_eq!(r.state, RunState::Cancelled);
    assert!(asked.elapsed() < Duration::from_secs(30));
    assert!(r.tasks_done() < r.ingest.tasks, "cancelled before the end: {r:?}");
    assert!(r.outbox.is_empty());

    // Nothing of the run is published once its record says cancelled.
    let mut published = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), tasks.next()).await {
        published += 1;
    }
    assert!(published > 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(tokio::time::timeout(Duration::from_millis(500), tasks.next()).await.is_err(), "a task was published after the cancel");

    // The generator skips what was queued instead of asking the LLM for it.
    let started = Instant::now();
    loop {
        let skipped = sample(&generator.metrics().await, "embedfleet_generator_tasks_skipped_total");
        if skipped >= 1.0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no queued task was skipped\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let requests = llm.request_count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(llm.request_count(), requests, "no LLM request for a cancelled run");
    let o = fleet.cli(&["watch", run]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("was cancelled"), "{}", stderr(&o));
    assert!(generator.ready().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_during_training_stops_the_trainer_within_a_step_and_keeps_its_checkpoint() {
    let mut fleet = Fleet::start();
    let model = fleet.tiny_model_in_store().await;
    let corpus = corpus(fleet.dir.path(), 30);
    let _coordinator = fleet.spawn("embedfleet-coordinator", &[]);
    let _generator = fleet.spawn("embedfleet-generator", &[]);
    let _evaluator = fleet.spawn("embedfleet-evaluator", &[]);
    let trainer = fleet.spawn("embedfleet-trainer", &[]);
    let run = "run-cancel-train";
    let o = fleet.cli(&[
        "submit",
        "--input",
        corpus.to_str().unwrap(),
        "--run-id",
        run,
        "--model-id",
        model.as_str(),
        "--batch-size",
        "4",
        "--epochs",
        "200",
        "--evaluation-steps",
        "1000",
        "--checkpoint-every",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bus = fleet.bus().await;
    let store = fleet.store();
    let started = Instant::now();
    while !store.list(&layout::resume(run)).await.unwrap().iter().any(|k| k.ends_with("state.json")) {
        assert!(started.elapsed() < Duration::from_secs(120), "no resume checkpoint\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let o = fleet.cli(&["cancel", run]);
    assert!(o.status.success(), "{}", stderr(&o));
    let asked = Instant::now();
    let r = fleet.wait_for(&bus, run, Duration::from_secs(30), |r| r.state.is_terminal()).await;
    assert_eq!(r.state, RunState::Cancelled);
    // The trainer stops within a step or so of the cancel being recorded (it looks every second).
    let steps_at = |m: &str| sample(m, "embedfleet_trainer_steps_total");
    let mut last = steps_at(&trainer.metrics().await);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = steps_at(&trainer.metrics().await);
        if now == last {
            break;
        }
        last = now;
        assert!(asked.elapsed() < Duration::from_secs(30), "training went on after the cancel\n{}", fleet.logs());
    }
    assert!(fleet.logs().contains("training stopped"), "{}", fleet.logs());
    assert!(store.list(&layout::resume(run)).await.unwrap().iter().any(|k| k.ends_with("state.json")), "the last checkpoint is kept");
    assert!(trainer.ready().await, "the trainer serves other runs");
    let metrics = trainer.metrics().await;
    assert_eq!(
        sample(&metrics, "embedfleet_worker_consumer_redelivered_total{stage=\"train\"}"),
        0.0,
        "the task was acked, not left to redeliver"
    );
    assert!(dead_letters(&bus).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_generators_share_one_budget_and_keep_what_was_paid_for() {
    let llm = TestServer::start(ServerBehavior { latency: Duration::from_millis(50), ..Default::default() }).await.unwrap();
    let mut fleet = Fleet::start();
    let corpus = corpus(fleet.dir.path(), 12);
    let _coordinator = fleet.spawn("embedfleet-coordinator", &[]);
    // $1 per 1k tokens both ways: a request costs about $0.4, its worst case a little more.
    let llm_env = vec![
        ("EMBEDFLEET_LLM_BASE_URL", llm.base_url()),
        ("EMBEDFLEET_LLM_MODEL", "test-model".to_string()),
        ("EMBEDFLEET_LLM_CONCURRENCY", "1".to_string()),
        ("EMBEDFLEET_LLM_MAX_TOKENS", "64".to_string()),
        ("EMBEDFLEET_PRICE_INPUT_PER_1K", "1".to_string()),
        ("EMBEDFLEET_PRICE_OUTPUT_PER_1K", "1".to_string()),
        ("EMBEDFLEET_LLM_RPM", "100000".to_string()),
        ("EMBEDFLEET_LLM_TPM", "100000000".to_string()),
    ];
    let generators: Vec<_> = (0..3).map(|_| fleet.spawn("embedfleet-generator", &llm_env)).collect();
    let bus = fleet.bus().await;

    let run = "run-budget";
    let budget = 6.0;
    let o = fleet.cli(&[
        "submit",
        "--input",
        corpus.to_str().unwrap(),
        "--run-id",
        run,
        "--generator",
        "llm",
        "--chunks-per-task",
        "2",
        "--model-id",
        "unused",
        "--max-cost-usd",
        &budget.to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = fleet.wait_for(&bus, run, Duration::from_secs(120), |r| r.state.is_terminal()).await;
    assert_eq!(r.state, RunState::BudgetReached, "{r:?}");
    // Let tasks that were in flight report.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = fleet.wait_for(&bus, run, Duration::from_secs(5), |_| true).await;
    assert!(r.ingest.chunks >= 20, "a corpus big enough to outrun the budget: {} chunks", r.ingest.chunks);
    assert!(r.spent_usd <= budget + 1e-9, "spent {} of {budget}", r.spent_usd);
    assert!(r.spent_usd > budget / 2.0, "the budget was used, not abandoned early: {}", r.spent_usd);
    assert!(r.error.as_deref().unwrap_or_default().contains("budget reached"), "{r:?}");
    let entry = bus.budgets.get(run).await.unwrap().expect("the run's ledger");
    let ledger: embedfleet_generator::cost::SharedLedger = serde_json::from_slice(&entry).unwrap();
    assert!(ledger.spent <= budget + 1e-9 && ledger.limit == budget, "{ledger:?}");
    assert!((ledger.spent - r.spent_usd).abs() < 1e-6, "{ledger:?} vs {}", r.spent_usd);

    // Every question paid for is in the store, and the record counts them.
    let store = fleet.store();
    let mut kept = 0u64;
    for key in store.list(&format!("{}/questions", layout::run(run))).await.unwrap() {
        let part: layout::TaskQuestions = serde_json::from_slice(&store.get(&key).await.unwrap()).unwrap();
        kept += part.questions.values().map(|q| q.len() as u64).sum::<u64>();
    }
    assert_eq!(kept, r.questions);
    assert!(r.questions > 0 && r.questions < 2 * r.ingest.chunks, "{} of {}", r.questions, 2 * r.ingest.chunks);
    assert!(llm.request_count() as u64 >= r.questions / 2, "requests {}", llm.request_count());
    let o = fleet.cli(&["status", run]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("budget_reached"), "{}", String::from_utf8_lossy(&o.stdout));

    // The same generators go on serving another run.
    let second = tempfile::tempdir().unwrap();
    let small = fleet::corpus(second.path(), 3);
    let o = fleet.cli(&[
        "submit",
        "--input",
        small.to_str().unwrap(),
        "--run-id",
        "run-after-budget",
        "--generator",
        "llm",
        "--model-id",
        "unused",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r2 = fleet.wait_for(&bus, "run-after-budget", Duration::from_secs(60), |r| r.state != RunState::Generating).await;
    assert_eq!(r2.tasks_done(), r2.ingest.tasks, "{r2:?}");
    for g in &generators {
        assert!(g.ready().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_ids_bad_settings_and_oversized_messages_are_refused_and_workers_stay_ready() {
    let mut fleet = Fleet::start();
    let corpus = corpus(fleet.dir.path(), 3);
    let coordinator = fleet.spawn("embedfleet-coordinator", &[]);
    let generator = fleet.spawn("embedfleet-generator", &[]);
    let trainer = fleet.spawn("embedfleet-trainer", &[]);
    let evaluator = fleet.spawn("embedfleet-evaluator", &[]);
    let bus = fleet.bus().await;
    let input = corpus.to_str().unwrap();

    // Refused by submit before anything is uploaded or published, naming what is wrong.
    let cases: [(&[&str], &str); 6] = [
        (&["--run-id", "a/../b"], "invalid run id"),
        (&["--run-id", "x/../../y"], "invalid run id"),
        (&["--batch-size", "0"], "--batch-size"),
        (&["--metric", "cosine-ndcg@10"], "--metric"),
        (&["--epochs", "0"], "--epochs"),
        (&["--train-ratio", "1.5"], "--train-ratio"),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["submit", "--input", input, "--model-id", "unused"];
        args.extend_from_slice(extra);
        let o = fleet.cli(&args);
        assert!(!o.status.success(), "{extra:?} was accepted");
        assert!(stderr(&o).contains(expected), "{extra:?}: {}", stderr(&o));
    }
    assert!(fleet.store().list("runs").await.unwrap().is_empty(), "nothing uploaded");
    let o = fleet.cli(&["status", "../../etc"]);
    assert!(!o.status.success() && stderr(&o).contains("invalid run id"), "{}", stderr(&o));

    // Messages that did not come through the CLI: hostile ids, a spec reading another run's input,
    // a message far larger than any real one.
    let raw = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let hostile = [
        (Stage::Train, raw(serde_json::json!({"schema": 3, "type": "train_task", "run_id": "x/../.."}))),
        (Stage::Evaluate, raw(serde_json::json!({"schema": 3, "type": "evaluate_task", "run_id": "r", "label": "../../etc"}))),
        (
            Stage::Generate,
            raw(serde_json::json!({"schema": 3, "type": "generate_task", "run_id": ".hidden", "task": 0, "first": 0, "count": 1})),
        ),
        (Stage::Generate, vec![b' '; 70 * 1024]),
    ];
    for (stage, payload) in &hostile {
        // On the subject of the type the message claims (the task type of its stage when it has none).
        let claimed = serde_json::from_slice::<serde_json::Value>(payload).ok().and_then(|v| v["type"].as_str().map(str::to_owned));
        let kind = claimed.unwrap_or_else(|| format!("{}_task", stage.name()));
        bus.js.publish(stage.subject_for(&kind), payload.clone().into()).await.unwrap().await.unwrap();
    }
    let spec = RunSpec { input_key: "runs/someone-else/input/corpus.json".into(), ..Default::default() };
    bus.publish(Stage::Coordinate, &Message::RunSubmitted { run_id: "run-foreign".parse().unwrap(), spec }).await.unwrap();
    let r = fleet.wait_for(&bus, "run-foreign", Duration::from_secs(20), |r| r.state.is_terminal()).await;
    assert_eq!(r.state, RunState::Failed);
    assert!(r.error.as_deref().unwrap().contains("not under runs/run-foreign/input/"), "{r:?}");

    let started = Instant::now();
    let dead = loop {
        let dead = dead_letters(&bus).await;
        if dead.len() >= hostile.len() {
            break dead;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{dead:?}\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reasons: Vec<&str> = dead.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(reasons.iter().filter(|r| r.contains("invalid run id")).count(), 2, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("invalid checkpoint label")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("larger than any embedfleet message")), "{reasons:?}");
    assert!(!std::path::Path::new("/etc/embedfleet-escape").exists());
    for w in [&coordinator, &generator, &trainer, &evaluator] {
        assert!(w.ready().await, "{} stays ready", w.name);
    }
    // And they still work: a good run gets through generation.
    let o = fleet.cli(&["submit", "--input", input, "--run-id", "run-good", "--model-id", "unused"]);
    assert!(o.status.success(), "{}", stderr(&o));
    fleet.wait_for(&bus, "run-good", Duration::from_secs(60), |r| r.state != RunState::Generating).await;
}
