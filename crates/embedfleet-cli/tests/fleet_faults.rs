//! Faults the fleet must survive or report: a trainer killed mid-training resumes from its last
//! checkpoint on redelivery; malformed, unknown-schema and poison messages are dead-lettered with
//! the reason while the worker keeps serving.

mod fleet;

use embedfleet_bus::layout;
use embedfleet_bus::messages::Message;
use embedfleet_bus::subjects::{DEAD_STREAM, Stage};
use embedfleet_coordinator::RunState;
use fleet::{Fleet, corpus, sample};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trainer_killed_mid_training_resumes_from_its_last_checkpoint() {
    let mut fleet = Fleet::start();
    let model = fleet.tiny_model_in_store().await;
    let corpus = corpus(fleet.dir.path(), 40);
    let short_ack = [("EMBEDFLEET_ACK_WAIT", "4".to_string())];
    let _coordinator = fleet.spawn("embedfleet-coordinator", &[]);
    let _generator = fleet.spawn("embedfleet-generator", &[]);
    let _evaluator = fleet.spawn("embedfleet-evaluator", &[]);
    let mut trainer = fleet.spawn("embedfleet-trainer", &short_ack);

    let run = "run-resume";
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
        "--evaluation-steps",
        "4",
        "--epochs",
        "2",
        "--chunks-per-task",
        "16",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bus = fleet.bus().await;
    let store = fleet.store();

    // Wait for a resume checkpoint in the store, then kill the trainer without warning.
    let started = std::time::Instant::now();
    loop {
        let keys = store.list(&layout::resume(run)).await.unwrap();
        if keys.iter().any(|k| k.ends_with("state.json")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no resume checkpoint\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = fleet.wait_for(&bus, run, Duration::from_secs(5), |_| true).await;
    assert_eq!(before.state, RunState::Training);
    assert!(!before.train_done);
    trainer.kill9();

    let replacement = fleet.spawn("embedfleet-trainer", &short_ack);
    let done = fleet.wait_for(&bus, run, Duration::from_secs(240), |r| r.state.is_terminal()).await;
    assert_eq!(done.state, RunState::Done, "{done:?}\n{}", fleet.logs());
    let metrics = replacement.metrics().await;
    assert_eq!(sample(&metrics, "embedfleet_worker_consumer_redelivered_total{stage=\"train\"}"), 1.0, "{metrics}");
    // Fewer steps in the replacement than in the whole run: it started from the checkpoint.
    let steps_after_restart = sample(&metrics, "embedfleet_trainer_steps_total");
    assert!(steps_after_restart > 0.0 && (steps_after_restart as u64) < done.steps, "{steps_after_restart} of {}", done.steps);
    assert!(fleet.logs().contains("resuming training"), "{}", fleet.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_unknown_and_poison_messages_are_dead_lettered_and_the_worker_keeps_serving() {
    let mut fleet = Fleet::start();
    let _coordinator = fleet.spawn("embedfleet-coordinator", &[]);
    let generator = fleet.spawn("embedfleet-generator", &[]);
    let bus = fleet.bus().await;

    // Not JSON; a schema this worker does not speak; a task for chunks that do not exist.
    bus.js.publish(Stage::Generate.subject_for("generate_task"), "garbage{".into()).await.unwrap().await.unwrap();
    bus.js
        .publish(Stage::Generate.subject_for("generate_task"), br#"{"schema": 99, "type": "generate_task"}"#.to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // A poison task of a real run: a task past the end of its corpus, which has no shard.
    let small = corpus(fleet.dir.path(), 3);
    let o = fleet.cli(&["submit", "--input", small.to_str().unwrap(), "--run-id", "run-poison", "--model-id", "unused"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fleet.wait_for(&bus, "run-poison", Duration::from_secs(20), |_| true).await;
    bus.publish(Stage::Generate, &Message::GenerateTask { run_id: "run-poison".parse().unwrap(), task: 999, first: 10_000, count: 8 })
        .await
        .unwrap();

    let mut stream = bus.js.get_stream(DEAD_STREAM).await.unwrap();
    let started = std::time::Instant::now();
    while stream.info().await.unwrap().state.messages < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "dead letters: {}\n{}",
            stream.info().await.unwrap().state.messages,
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut reasons = Vec::new();
    for seq in 1..=3 {
        let m = stream.get_raw_message(seq).await.unwrap();
        let headers = m.headers;
        reasons.push(headers.get("Embedfleet-Reason").map(|v| v.to_string()).unwrap_or_default());
    }
    assert!(reasons.iter().any(|r| r.contains("not JSON")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("schema version 99")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("has no task 999")), "{reasons:?}");
    let metrics = generator.metrics().await;
    assert_eq!(sample(&metrics, "embedfleet_worker_messages_total{outcome=\"dead_letter\",stage=\"generate\"}"), 3.0, "{metrics}");
    assert!(generator.ready().await, "the worker is still serving");

    // The poison task's run was marked failed with the reason.
    let failed = fleet.wait_for(&bus, "run-poison", Duration::from_secs(20), |r| r.state.is_terminal()).await;
    assert_eq!(failed.state, RunState::Failed);
    assert!(failed.error.as_deref().unwrap_or_default().contains("has no task 999"), "{failed:?}");

    // And it still does real work: a run submitted now completes its generation.
    let corpus = corpus(fleet.dir.path(), 6);
    let o = fleet.cli(&["submit", "--input", corpus.to_str().unwrap(), "--run-id", "run-after", "--model-id", "unused"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = fleet.wait_for(&bus, "run-after", Duration::from_secs(60), |r| r.state != RunState::Generating).await;
    assert_eq!(r.tasks_done(), r.ingest.tasks);

    // A submit with a missing corpus publishes nothing; an unknown run is named.
    let o = fleet.cli(&["submit", "--input", "/no/such/corpus.json"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = fleet.cli(&["cancel", "no-such-run"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no run named"));
}
