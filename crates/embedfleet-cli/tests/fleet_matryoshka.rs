//! Matryoshka on the fleet, against the real parts: the run spec carries the dimensions from
//! `submit` to the trainer (the loss) and to the evaluators (every metric at each dimension, a CSV
//! per checkpoint and dimension), and the stored model's card names them.

mod fleet;

use embedfleet_bus::layout;
use embedfleet_coordinator::RunState;
use embedfleet_evaluator::Evaluation;
use fleet::{Fleet, corpus, dead_letters};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dimensions_reach_the_trainer_and_every_evaluation() {
    let mut fleet = Fleet::start();
    let model = fleet.tiny_model_in_store().await;
    let corpus = corpus(fleet.dir.path(), 10);
    let _coordinator = fleet.spawn("embedfleet-coordinator", &[]);
    let _generator = fleet.spawn("embedfleet-generator", &[]);
    let _evaluator = fleet.spawn("embedfleet-evaluator", &[]);
    let _trainer = fleet.spawn("embedfleet-trainer", &[]);

    let run = "run-matryoshka";
    let o = fleet.cli(&[
        "submit",
        "--input",
        corpus.to_str().unwrap(),
        "--run-id",
        run,
        "--generator",
        "offline",
        "--model-id",
        model.as_str(),
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--evaluation-steps",
        "4",
        "--matryoshka-dims",
        "8,32,16",
    ]);
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stderr), fleet.logs());

    let bus = fleet.bus().await;
    let record = fleet.wait_for(&bus, run, Duration::from_secs(240), |r| r.state.is_terminal()).await;
    assert_eq!(record.state, RunState::Done, "{record:?}\n{}", fleet.logs());

    let store = fleet.store();
    let keys = store.list(&layout::results(run)).await.unwrap();
    let labels: Vec<String> = keys
        .iter()
        .filter_map(|k| k.rsplit('/').next()?.strip_suffix(".json").filter(|n| n.starts_with("step-")).map(str::to_owned))
        .collect();
    assert!(labels.iter().any(|l| l == "step-0") && labels.len() >= 2, "the base and a checkpoint were scored: {keys:?}");
    for label in &labels {
        let evaluation: Evaluation = serde_json::from_slice(&store.get(&layout::result(run, label)).await.unwrap()).unwrap();
        assert_eq!(evaluation.dims.iter().map(|d| d.dim).collect::<Vec<_>>(), [32, 16, 8], "{label}");
        for dim in [32, 16, 8] {
            let csv = format!("{}/Information-Retrieval_evaluation_{label}_dim_{dim}_results.csv", layout::results(run));
            assert!(keys.contains(&csv), "{csv} in {keys:?}");
        }
    }
    let card = String::from_utf8(store.get(&format!("{}/README.md", layout::model(run))).await.unwrap().to_vec()).unwrap();
    assert!(card.contains("Matryoshka dimensions: 32, 16, 8") && card.contains("MatryoshkaLoss"), "{card}");
    let comparison = String::from_utf8(store.get(&format!("{}/comparison.json", layout::results(run))).await.unwrap().to_vec()).unwrap();
    assert!(comparison.contains("\"dims\"") && comparison.contains("\"dim\": 8"), "{comparison}");
    let dead = dead_letters(&bus).await;
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");

    // A dimension the tiny model (32) does not have: the trainer fails the run saying why.
    let too_big = "run-matryoshka-too-big";
    let o = fleet.cli(&[
        "submit",
        "--input",
        corpus.to_str().unwrap(),
        "--run-id",
        too_big,
        "--generator",
        "offline",
        "--model-id",
        model.as_str(),
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--matryoshka-dims",
        "64,16",
    ]);
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stderr), fleet.logs());
    let record = fleet.wait_for(&bus, too_big, Duration::from_secs(240), |r| r.state.is_terminal()).await;
    assert_eq!(record.state, RunState::Failed, "{record:?}");
    let error = record.error.unwrap_or_default();
    assert!(error.contains("--matryoshka-dims 64") && error.contains("32 dimensions"), "{error}");
}
