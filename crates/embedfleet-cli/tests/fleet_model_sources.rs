//! A fleet loads models only from the sources its operator allowed: a run naming a local folder or
//! an `s3://` prefix outside the list fails at once with the reason (the coordinator refuses it),
//! and a trainer handed such a run anyway dead-letters the task with the reason.

mod fleet;

use embedfleet_bus::Stage;
use embedfleet_bus::layout;
use embedfleet_bus::messages::{Message, RunSpec};
use embedfleet_coordinator::RunState;
use fleet::{Fleet, corpus, dead_letters};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn models_from_unlisted_sources_are_refused_with_the_reason() {
    let mut fleet = Fleet::start();
    let corpus = corpus(fleet.dir.path(), 4);
    let _coordinator = fleet.spawn("embedfleet-coordinator", &[]);
    let trainer = fleet.spawn("embedfleet-trainer", &[]);
    let bus = fleet.bus().await;
    let store = fleet.store();
    // A model the trainer's disk holds, and one in the bucket outside the allowed `models/` folder.
    let local = fleet.dir.path().join("secret-model");
    std::fs::create_dir_all(&local).unwrap();
    let outside = format!("{}/runs/someone-else/model", fleet.store_url());
    for (run, model) in [("run-local-model", local.to_str().unwrap().to_owned()), ("run-foreign-model", outside)] {
        let o = fleet.cli(&["submit", "--input", corpus.to_str().unwrap(), "--run-id", run, "--model-id", &model]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r = fleet.wait_for(&bus, run, Duration::from_secs(30), |r| r.state.is_terminal()).await;
        assert_eq!(r.state, RunState::Failed, "{r:?}");
        let reason = r.error.unwrap();
        assert!(reason.contains("--allowed-model-sources") && reason.contains("models/"), "{reason}");
    }

    // Past the coordinator (a spec written by hand): the trainer refuses too.
    let run = "run-sneaky";
    let spec = RunSpec { input_key: format!("runs/{run}/input/corpus.json"), model_id: "/etc".into(), ..Default::default() };
    store.put(&layout::spec(run), serde_json::to_vec(&spec).unwrap()).await.unwrap();
    bus.publish(Stage::Train, &Message::TrainTask { run_id: run.parse().unwrap() }).await.unwrap();
    let started = Instant::now();
    let dead = loop {
        let dead = dead_letters(&bus).await;
        if let Some(d) = dead.into_iter().find(|(subject, _)| subject.ends_with(".train")) {
            break d;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no dead letter\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(dead.1.contains("local path") && dead.1.contains("--allowed-model-sources"), "{dead:?}");
    assert!(trainer.ready().await, "the trainer keeps serving");
}
