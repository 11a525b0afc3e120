//! Chaos, with a fixed seed: three runs at once on a fleet of two coordinators (two messages in
//! hand each), two offline generators (the fast ones, whose events race ahead), a trainer and an
//! evaluator, while at seeded moments a worker of each kind is SIGKILLed and replaced, nats-server
//! restarts and the S3 server goes away for 10 s. Every run must end done with exactly the
//! dataset a local `embedfleet generate` makes, every checkpoint its schedule has, the step count of
//! an undisturbed run, and nothing in the dead letters.
//!
//! `EMBEDFLEET_CHAOS_SEED=<n>` replays another schedule.

mod fleet;

use embedfleet_bus::layout;
use embedfleet_coordinator::RunState;
use embedfleet_core::chunk::chunk_documents;
use embedfleet_core::dataset::read_dataset;
use embedfleet_core::generate::{assemble_dataset, generate_questions};
use embedfleet_core::ingest::parse_json_documents;
use embedfleet_core::progress::NoProgress;
use embedfleet_core::{DatasetConfig, DatasetSplit, IngestOptions, OfflineGenerator, QaDataset};
use embedfleet_trainer::batching::{TrainPair, epoch_batches};
use fleet::{Fleet, Worker, dead_letters};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BATCH: usize = 4;
const EPOCHS: usize = 6;
const EVALUATION_STEPS: usize = 5;

/// Documents `range` of the sample corpus as one run's corpus file.
fn corpus_part(dir: &Path, name: &str, range: std::ops::Range<usize>) -> PathBuf {
    let raw = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/sample-corpus.json")).unwrap();
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&raw).unwrap();
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec(&docs[range]).unwrap()).unwrap();
    path
}

/// What an undisturbed local run makes of the corpus: the two datasets, as `embedfleet generate`
/// (same stage functions, same defaults) writes them.
async fn expected_dataset(run: &str, corpus: &Path) -> (QaDataset, QaDataset) {
    let config = DatasetConfig::default();
    let text = std::fs::read_to_string(corpus).unwrap();
    // `submit` keeps the file's name, which names documents without an id or url.
    let key = format!("{}/{}", layout::input_prefix(run), corpus.file_name().unwrap().to_str().unwrap());
    let docs = parse_json_documents(Path::new(&key), &text, &IngestOptions::default()).unwrap();
    let chunks = chunk_documents(&docs, &config.chunk_config()).unwrap();
    let outcome = generate_questions(&OfflineGenerator::new(config.seed), &chunks, config.questions_per_chunk, &NoProgress).await;
    let (train, val, _) = assemble_dataset(&chunks, &outcome.questions, &config.split_config()).unwrap();
    (train, val)
}

/// The steps and evaluation points of an undisturbed training on `train`.
fn expected_schedule(train: &QaDataset) -> (u64, Vec<String>) {
    let pairs: Vec<TrainPair> =
        train.pairs().into_iter().map(|(c, q, p)| TrainPair { chunk_id: c.into(), question: q.into(), passage: p.into() }).collect();
    let mut labels = vec!["step-0".to_string()];
    let mut step = 0;
    for epoch in 0..EPOCHS {
        let batches = epoch_batches(&pairs, BATCH, embedfleet_core::config::defaults::SEED, epoch);
        for b in 0..batches.len() {
            step += 1;
            if step % EVALUATION_STEPS == 0 || b + 1 == batches.len() {
                labels.push(format!("step-{step}"));
            }
        }
    }
    labels.sort();
    labels.dedup();
    (step as u64, labels)
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(&'static str),
    RestartNats,
    S3Outage,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_runs_survive_seeded_kills_a_nats_restart_and_an_s3_outage() {
    let seed: u64 = std::env::var("EMBEDFLEET_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261201);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fleet = Fleet::start();
    let model = fleet.tiny_model_in_store().await;
    let fast = [("EMBEDFLEET_ACK_WAIT", "3".to_string()), ("EMBEDFLEET_PARALLEL", "2".to_string())];
    let kinds = ["embedfleet-coordinator", "embedfleet-generator", "embedfleet-trainer", "embedfleet-evaluator"];
    let mut workers: Vec<(&str, Worker)> = Vec::new();
    for kind in kinds {
        let replicas = if matches!(kind, "embedfleet-coordinator" | "embedfleet-generator") { 2 } else { 1 };
        for _ in 0..replicas {
            workers.push((kind, fleet.spawn(kind, &fast)));
        }
    }

    let runs: Vec<(String, PathBuf)> = (0..3)
        .map(|i| {
            let name = format!("run-chaos-{i}");
            let corpus = corpus_part(fleet.dir.path(), &name, i * 7..i * 7 + 7);
            (name, corpus)
        })
        .collect();
    for (run, corpus) in &runs {
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
            "--chunks-per-task",
            "2",
            "--batch-size",
            &BATCH.to_string(),
            "--epochs",
            &EPOCHS.to_string(),
            "--evaluation-steps",
            &EVALUATION_STEPS.to_string(),
            "--checkpoint-every",
            "2",
            "--learning-rate",
            "0.0005",
        ]);
        assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stderr), fleet.logs());
    }

    // Seeded fault schedule within the first 15 s (the runs take longer): one kill of each kind, one nats restart, one
    // 10 s S3 outage, in random order at random moments.
    let mut faults: Vec<(Duration, Fault)> = kinds
        .iter()
        .map(|k| Fault::Kill(k))
        .chain([Fault::RestartNats, Fault::S3Outage])
        .map(|f| (Duration::from_millis(rng.random_range(500..15_000)), f))
        .collect();
    faults.sort_by_key(|(at, _)| *at);
    eprintln!("chaos seed {seed}: {faults:?}");
    let bus = fleet.bus().await;
    let started = Instant::now();
    let mut pending = faults.into_iter().peekable();
    let mut outage_until: Option<Instant> = None;
    let mut finished: Vec<Option<Duration>> = vec![None; runs.len()];
    loop {
        if let Some(until) = outage_until.filter(|u| Instant::now() >= *u) {
            let _ = until;
            fleet.s3.start_again();
            outage_until = None;
        }
        while let Some((at, fault)) = pending.peek().copied() {
            if started.elapsed() < at {
                break;
            }
            pending.next();
            // A fault after every run ended would test nothing.
            let mut running = 0;
            for (run, _) in &runs {
                if !matches!(embedfleet_coordinator::worker::load_record(&bus, run).await, Ok((Some(r), _)) if r.state.is_terminal()) {
                    running += 1;
                }
            }
            assert!(running > 0, "{fault:?} at {at:?} came after every run had ended; make the runs longer");
            match fault {
                Fault::Kill(kind) => {
                    let i = workers.iter().position(|(k, _)| *k == kind).unwrap();
                    workers[i].1.kill9();
                    let replacement = fleet.spawn(kind, &fast);
                    workers[i].1 = replacement;
                }
                Fault::RestartNats => fleet.nats.restart(),
                Fault::S3Outage if outage_until.is_none() => {
                    fleet.s3.stop();
                    outage_until = Some(Instant::now() + Duration::from_secs(10));
                }
                Fault::S3Outage => {}
            }
        }
        let mut all_over = true;
        for (i, (run, _)) in runs.iter().enumerate() {
            match embedfleet_coordinator::worker::load_record(&bus, run).await {
                Ok((Some(r), _)) if r.state.is_terminal() => {
                    finished[i].get_or_insert(started.elapsed());
                }
                _ => all_over = false,
            }
        }
        if all_over && pending.peek().is_none() && outage_until.is_none() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(220), "runs stuck after {:?}\n{}", started.elapsed(), fleet.logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let store = fleet.store();
    for (run, corpus) in &runs {
        let r = fleet.wait_for(&bus, run, Duration::from_secs(5), |_| true).await;
        assert_eq!(r.state, RunState::Done, "{run}: {r:?}\n{}", fleet.logs());
        let (train, val) = expected_dataset(run, corpus).await;
        let got_train = read_dataset(&store, &layout::data(run), DatasetSplit::Train).await.unwrap();
        let got_val = read_dataset(&store, &layout::data(run), DatasetSplit::Val).await.unwrap();
        assert_eq!(got_train, train, "{run}: the train set is exactly what a local run makes");
        assert_eq!(got_val, val, "{run}: the validation set is exactly what a local run makes");
        assert_eq!(r.questions as usize, train.queries.len() + val.queries.len());
        let (steps, labels) = expected_schedule(&train);
        assert_eq!(r.steps, steps, "{run}: the step count of an undisturbed run");
        let mut scored: Vec<String> = r.evaluations.keys().map(|l| l.to_string()).collect();
        scored.sort();
        assert_eq!(scored, labels, "{run}: every checkpoint of the schedule, scored once");
        assert!(store.exists(&format!("{}/model.safetensors", layout::model(run))).await.unwrap());
        assert!(store.exists(&layout::report(run)).await.unwrap());
    }
    let dead = dead_letters(&bus).await;
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    eprintln!("chaos seed {seed}: runs ended at {finished:?}; all checks passed at {:.1} s", started.elapsed().as_secs_f64());
}
