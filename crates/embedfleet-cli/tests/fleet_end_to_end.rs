//! The fleet against the real parts: nats-server, SeaweedFS, the LLM test server, and the worker
//! binaries as child processes. One run survives a killed generator, a nats-server restart and a
//! second coordinator; the LLM sees the fleet-wide rate limit; /metrics moves.

mod fleet;

use embedfleet_bus::layout;
use embedfleet_coordinator::RunState;
use embedfleet_core::dataset::read_dataset;
use embedfleet_core::{DatasetSplit, QaDataset};
use embedfleet_generator::testing::{ServerBehavior, TestServer};
use embedfleet_model::{LoadOptions, SentenceEncoder};
use fleet::{Fleet, corpus, sample};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_survives_a_killed_generator_a_nats_restart_and_two_coordinators() {
    let llm = TestServer::start(ServerBehavior { latency: Duration::from_millis(150), ..Default::default() }).await.unwrap();
    let mut fleet = Fleet::start();
    let model = fleet.tiny_model_in_store().await;
    let corpus = corpus(fleet.dir.path(), 16);
    // 120 requests a minute for the whole fleet, two a second: three generators must share it.
    let rpm = 120u32;
    let llm_env = |c: &str| {
        vec![
            ("EMBEDFLEET_LLM_BASE_URL", llm.base_url()),
            ("EMBEDFLEET_LLM_MODEL", "test-model".to_string()),
            ("EMBEDFLEET_LLM_RPM", rpm.to_string()),
            ("EMBEDFLEET_LLM_CONCURRENCY", c.to_string()),
            ("EMBEDFLEET_ACK_WAIT", "5".to_string()),
        ]
    };
    let _coordinator_a = fleet.spawn("embedfleet-coordinator", &[]);
    let _coordinator_b = fleet.spawn("embedfleet-coordinator", &[]);
    let mut generator_a = fleet.spawn("embedfleet-generator", &llm_env("4"));
    let generator_b = fleet.spawn("embedfleet-generator", &llm_env("4"));
    let generator_c = fleet.spawn("embedfleet-generator", &llm_env("4"));
    let trainer = fleet.spawn("embedfleet-trainer", &[]);
    let evaluator = fleet.spawn("embedfleet-evaluator", &[]);

    let run = "run-e2e";
    let o = fleet.cli(&[
        "submit",
        "--input",
        corpus.to_str().unwrap(),
        "--run-id",
        run,
        "--generator",
        "llm",
        "--model-id",
        model.as_str(),
        "--chunks-per-task",
        "2",
        "--batch-size",
        "8",
        "--evaluation-steps",
        "5",
        "--epochs",
        "1",
        "--learning-rate",
        "0.0005",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), run);

    let bus = fleet.bus().await;
    // Kill one generator once some tasks are done: its message is redelivered after ack_wait.
    fleet.wait_for(&bus, run, Duration::from_secs(60), |r| r.tasks_done() >= 3).await;
    let mut handled = 0.0;
    for g in [&generator_a, &generator_b, &generator_c] {
        handled += sample(&g.metrics().await, "embedfleet_worker_messages_total{outcome=\"ok\",stage=\"generate\"}");
    }
    assert!(handled >= 3.0, "the scrape shows the generators' counters moving: {handled}");
    generator_a.kill9();

    // Restart nats-server while the run is generating: workers reconnect and go on.
    fleet.nats.restart();

    let done = fleet.wait_for(&bus, run, Duration::from_secs(240), |r| r.state.is_terminal()).await;
    let bus = fleet.bus().await;
    assert_eq!(done.state, RunState::Done, "{done:?}\n{}", fleet.logs());
    assert_eq!(done.failed_chunks, 0);

    // Every chunk has its questions exactly once.
    let store = fleet.store();
    let index: embedfleet_core::shard::CorpusIndex =
        serde_json::from_slice(&store.get(&layout::shards(run).index()).await.unwrap()).unwrap();
    let mut chunks: Vec<embedfleet_core::Chunk> = Vec::new();
    for task in 0..index.tasks {
        chunks.extend(
            serde_json::from_slice::<Vec<embedfleet_core::Chunk>>(&store.get(&layout::shards(run).chunks(task)).await.unwrap()).unwrap(),
        );
    }
    assert_eq!(chunks.len() as u64, index.chunks);
    let train = read_dataset(&store, &layout::data(run), DatasetSplit::Train).await.unwrap();
    let val = read_dataset(&store, &layout::data(run), DatasetSplit::Val).await.unwrap();
    let mut per_chunk = std::collections::HashMap::<String, usize>::new();
    for d in [&train, &val] {
        for docs in d.relevant_docs.values() {
            *per_chunk.entry(docs[0].clone()).or_default() += 1;
        }
    }
    assert_eq!(per_chunk.len(), chunks.len(), "every chunk has questions");
    assert!(per_chunk.values().all(|&n| n == 2), "two questions per chunk, none twice: {per_chunk:?}");
    assert_eq!(done.questions as usize, chunks.len() * 2);

    // The fleet-wide limit held at the LLM: never more than rpm/60 + burst requests in any second.
    let max_per_second = llm.max_in_window(Duration::from_secs(1));
    assert!(max_per_second <= (rpm / 60 + 1) as usize, "{max_per_second} requests in one second with 3 generators");

    // No stage ran twice although two coordinators saw every event.
    let trainer_metrics = trainer.metrics().await;
    assert_eq!(sample(&trainer_metrics, "embedfleet_worker_messages_total{outcome=\"ok\",stage=\"train\"}"), 1.0, "{trainer_metrics}");
    assert!(sample(&trainer_metrics, "embedfleet_trainer_steps_total") > 0.0);
    assert!(sample(&evaluator.metrics().await, "embedfleet_evaluator_ndcg_at_10") > 0.0);
    assert!(generator_c.ready().await);

    // The run's folder: dataset, checkpoints, the best model (loadable), CSVs, report.
    for split in ["train", "val"] {
        for kind in ["corpus", "queries", "relevant_docs", "dataset"] {
            assert!(store.exists(&format!("{}/{split}_{kind}.json", layout::data(run))).await.unwrap());
        }
    }
    assert!(done.checkpoints.contains("step-0") && done.checkpoints.len() >= 2, "{:?}", done.checkpoints);
    let report: serde_json::Value = serde_json::from_slice(&store.get(&layout::report(run)).await.unwrap()).unwrap();
    assert_eq!(report["best"].as_str(), done.best.as_deref());
    assert!(store.exists(&format!("{}/Information-Retrieval_evaluation_step-0_results.csv", layout::results(run))).await.unwrap());
    assert!(store.exists(&format!("{}/metrics.svg", layout::results(run))).await.unwrap());
    let local = fleet.dir.path().join("best-model");
    store.get_dir(&layout::model(run), &local).await.unwrap();
    let best = SentenceEncoder::load(&local, LoadOptions::default()).unwrap();
    assert_eq!(best.dimension(), 32);
    let _ = QaDataset::new();

    // Every metric the Grafana dashboard queries is in a live scrape of the workers.
    let mut scraped = String::new();
    for w in [&_coordinator_a, &generator_b, &trainer, &evaluator] {
        scraped.push_str(&w.metrics().await);
    }
    let dashboard =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/dashboards/embedfleet.json"))
            .unwrap();
    let mut missing = Vec::new();
    for name in metric_names(&dashboard) {
        if !scraped.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "dashboard metrics not exported: {missing:?}");

    // The CLI reads it back.
    let o = fleet.cli(&["results", run]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("NDCG@10"));
    let o = fleet.cli(&["watch", run]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("done"), "{}", String::from_utf8_lossy(&o.stdout));
    let o = fleet.cli(&["status"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(run));
    let o = fleet.cli(&["status", "no-such-run"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no run named"));
    drop(bus);
}

/// `embedfleet_*` names in a text, e.g. a dashboard's queries.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("embedfleet_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}
