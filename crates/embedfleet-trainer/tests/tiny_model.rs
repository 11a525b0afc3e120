//! Trainer behaviour on a tiny randomly initialised BERT (fast), with MiniLM's real tokenizer.

use embedfleet_core::{HardNegatives, MiningConfig, QaDataset};
use embedfleet_evaluator::PreparedDataset;
use embedfleet_model::{BertConfig, LoadOptions, SentenceEncoder, Tensor};
use embedfleet_trainer::train::cached_step;
use embedfleet_trainer::{MnrlLoss, TrainConfig, TrainError, TrainJob, TrainOptions, train};
use std::path::PathBuf;

fn tokenizer_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.deps/all-MiniLM-L6-v2");
    assert!(dir.join("tokenizer.json").exists(), "run scripts/setup.sh first");
    dir
}

/// libtorch's RNG is global to the process and tests run on parallel threads: each test holds this
/// lock so model initialisation and dropout draws are not interleaved with another test's.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn tiny(dropout: f64) -> SentenceEncoder {
    let mut config = BertConfig::tiny(30522);
    config.hidden_dropout_prob = dropout;
    config.attention_probs_dropout_prob = dropout;
    SentenceEncoder::random(config, &tokenizer_dir(), 7, LoadOptions::default()).unwrap()
}

const TOPICS: &[&str] = &[
    "compaction",
    "retention",
    "replication",
    "backup",
    "alerting",
    "tokens",
    "queries",
    "ingestion",
    "dashboards",
    "tls",
    "quotas",
    "clustering",
    "upgrades",
    "storage",
    "metrics",
    "webhooks",
    "roles",
    "indexes",
    "shards",
    "latency",
];

fn dataset(chunks: usize) -> QaDataset {
    let mut d = QaDataset::new();
    for c in 0..chunks {
        let topic = TOPICS[c % TOPICS.len()];
        let id = format!("d{c:03}-0000");
        d.corpus.insert(id.clone(), format!("Section {c} explains {topic} in detail: setting {c} controls {topic} behaviour number {c}."));
        for q in 0..2 {
            let qid = format!("{id}-q{q}");
            d.queries.insert(qid.clone(), format!("how does setting {c} change {topic} (variant {q})?"));
            d.relevant_docs.insert(qid, vec![id.clone()]);
        }
    }
    d
}

fn weights(model: &SentenceEncoder) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = model.var_store().variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    a.iter().zip(b).map(|((_, x), (_, y))| f64::try_from((x - y).abs().max()).unwrap()).fold(0.0, f64::max)
}

fn config() -> TrainConfig {
    TrainConfig { epochs: 2, batch_size: 8, evaluation_steps: 4, learning_rate: Some(1e-3), ..Default::default() }
}

fn job(config: TrainConfig) -> TrainJob {
    TrainJob::new(config, "tiny")
}

#[test]
fn cached_loss_equals_the_plain_loss_and_gradients() {
    let _serial = serial();
    let d = dataset(12);
    let pairs = d.pairs();
    let questions: Vec<&str> = pairs.iter().step_by(2).map(|p| p.1).collect();
    let passages: Vec<&str> = pairs.iter().step_by(2).map(|p| p.2).collect();
    let loss_fn = MnrlLoss::default();

    let plain = tiny(0.0);
    let q = plain.forward(&plain.tokenizer().batch(&questions, plain.device()).unwrap(), true);
    let p = plain.forward(&plain.tokenizer().batch(&passages, plain.device()).unwrap(), true);
    let loss = loss_fn.compute(&q, &p);
    loss.backward();
    let plain_loss = f64::try_from(&loss).unwrap();

    let cached = tiny(0.0);
    let cached_loss = cached_step(&cached, &questions, &passages, None, 5, &loss_fn.into(), 42, 0).unwrap();
    assert!((plain_loss - cached_loss).abs() < 1e-5, "{plain_loss} vs {cached_loss}");
    let grads = |m: &SentenceEncoder| -> Vec<(String, Tensor)> { weights(m).into_iter().map(|(n, t)| (n, t.grad())).collect() };
    let mut worst = 0.0f64;
    for ((name, a), (_, b)) in grads(&plain).iter().zip(grads(&cached)) {
        // Some gradients are zero in exact arithmetic (key biases: softmax ignores a per-row
        // constant) and only float noise in practice; measure those against a floor.
        let scale = f64::try_from(a.abs().max()).unwrap().max(1e-4);
        let rel = f64::try_from((a - &b).abs().max()).unwrap() / scale;
        assert!(rel < 1e-3, "{name}: relative gradient difference {rel}");
        worst = worst.max(rel);
    }
    eprintln!("cached vs plain: loss {plain_loss} vs {cached_loss}, worst relative gradient difference {worst:.2e}");
}

#[test]
fn resumed_run_ends_where_an_uninterrupted_one_does() {
    let _serial = serial();
    let d = dataset(20);
    let mut cfg = config();
    cfg.checkpoint_every = 2;
    cfg.evaluation_steps = 0;

    let full_dir = tempfile::tempdir().unwrap();
    let mut full = tiny(0.1);
    let outcome = train(&mut full, &d, None, &job(cfg.clone()), full_dir.path(), TrainOptions::default()).unwrap();
    assert!(outcome.steps >= 8);

    let dir = tempfile::tempdir().unwrap();
    let mut first = tiny(0.1);
    let mut stop = job(cfg.clone());
    stop.stop_after = Some(5); // interrupted after step 5; the last checkpoint is step 4
    train(&mut first, &d, None, &stop, dir.path(), TrainOptions::default()).unwrap();
    drop(first);

    let mut resumed = tiny(0.1); // a fresh process would start from the base weights again
    let outcome2 =
        train(&mut resumed, &d, None, &job(cfg.clone()), dir.path(), TrainOptions { resume: true, ..Default::default() }).unwrap();
    assert_eq!(outcome2.steps, outcome.steps);
    let diff = max_diff(&weights(&full), &weights(&resumed));
    assert!(diff < 1e-6, "weights differ by {diff}");
    let log_a: Vec<f64> = outcome.log.iter().map(|r| r.loss).collect();
    let log_b: Vec<f64> = outcome2.log.iter().map(|r| r.loss).collect();
    assert_eq!(log_a.len(), log_b.len());
    for (a, b) in log_a.iter().zip(&log_b) {
        assert!((a - b).abs() < 1e-6, "{log_a:?}\n{log_b:?}");
    }
}

#[test]
fn best_checkpoint_is_kept_and_the_base_when_nothing_beats_it() {
    let _serial = serial();
    let train_set = dataset(24);
    let val = PreparedDataset::new(&dataset(10)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny(0.1);
    let outcome = train(&mut model, &train_set, Some(&val), &job(config()), dir.path(), TrainOptions::default()).unwrap();
    let saved = SentenceEncoder::load(dir.path(), LoadOptions::default()).unwrap();
    let value = embedfleet_evaluator::evaluate_model(&saved, &val, &Default::default()).unwrap().metric("cosine-NDCG@10").unwrap();
    assert!((value - outcome.best_value.unwrap()).abs() < 1e-6, "the saved model is the best one: {value} vs {:?}", outcome.best_value);
    assert!(outcome.best_value >= outcome.base_value);
    let csv = std::fs::read_to_string(dir.path().join("eval/Information-Retrieval_evaluation_val_results.csv")).unwrap();
    assert!(csv.starts_with("epoch,steps,cosine-Accuracy@1"));
    assert!(csv.lines().count() >= 4, "base + every 4 steps + epoch ends:\n{csv}");
    assert!(dir.path().join("training_log.csv").exists() && dir.path().join("training.svg").exists());

    // A learning rate of zero cannot beat the base: the output says so and holds the base.
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny(0.1);
    let before = weights(&model);
    let mut cfg = config();
    cfg.learning_rate = Some(0.0);
    let outcome = train(&mut model, &train_set, Some(&val), &job(cfg), dir.path(), TrainOptions::default()).unwrap();
    assert!(!outcome.improved());
    let saved = SentenceEncoder::load(dir.path(), LoadOptions::default()).unwrap();
    assert!(max_diff(&before, &weights(&saved)) < 1e-7);
}

#[test]
fn bad_setups_are_refused() {
    let _serial = serial();
    let d = dataset(3);
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny(0.0);
    let err =
        train(&mut model, &d, None, &job(TrainConfig { batch_size: 32, ..config() }), dir.path(), TrainOptions::default()).unwrap_err();
    assert!(matches!(err, TrainError::TooFewPairs { pairs: 6, batch: 32 }), "{err}");

    let err =
        train(&mut model, &dataset(20), None, &job(config()), dir.path(), TrainOptions { resume: true, ..Default::default() }).unwrap_err();
    assert!(matches!(err, TrainError::NoCheckpoint(_)), "{err}");

    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let err = train(&mut model, &dataset(20), None, &job(config()), dir.path(), TrainOptions::default()).unwrap_err();
    assert!(matches!(err, TrainError::OutputInUse(_)), "{err}");
    assert!(dir.path().join("notes.txt").exists());
}

/// Two negatives per question, chunks of other topics (as mining would give them).
fn negatives_of(d: &QaDataset, chunks: usize) -> HardNegatives {
    let mut n = HardNegatives::default();
    for qid in d.queries.keys() {
        let c: usize = qid[1..4].parse().unwrap();
        n.0.insert(qid.clone(), vec![format!("d{:03}-0000", (c + 1) % chunks), format!("d{:03}-0000", (c + 5) % chunks)]);
    }
    n
}

fn with_negatives(count: usize) -> TrainConfig {
    TrainConfig { mining: MiningConfig { hard_negatives: Some(count), ..Default::default() }, evaluation_steps: 0, ..config() }
}

#[test]
fn hard_negatives_train_the_same_under_grad_cache() {
    let _serial = serial();
    let d = dataset(12);
    let negatives = negatives_of(&d, 12);
    let run = |config: TrainConfig| {
        let dir = tempfile::tempdir().unwrap();
        let mut model = tiny(0.0);
        train(&mut model, &d, None, &job(config).with_negatives(negatives.clone()), dir.path(), TrainOptions::default()).unwrap()
    };
    let plain = run(with_negatives(2));
    let cached = run(TrainConfig { mini_batch_size: Some(3), ..with_negatives(2) });
    // The whole loss curve, not the weights: AdamW turns float noise in gradients that are zero
    // in exact arithmetic (see cached_loss_equals_the_plain_loss_and_gradients) into lr-sized steps.
    assert_eq!(plain.steps, cached.steps);
    for (a, b) in plain.log.iter().zip(&cached.log) {
        assert!((a.loss - b.loss).abs() < 1e-4, "step {}: {} vs {}", a.step, a.loss, b.loss);
    }
    assert!(plain.facts.loss.contains("hard negatives"), "{}", plain.facts.loss);

    // The negatives are in the loss: one per question gives another first step than two.
    let one = run(with_negatives(1));
    assert!((one.log[0].loss - plain.log[0].loss).abs() > 1e-6, "{} vs {}", one.log[0].loss, plain.log[0].loss);
    let none = run(config());
    assert!(none.log[0].loss < one.log[0].loss, "more candidates, higher first loss: {} vs {}", none.log[0].loss, one.log[0].loss);
}

/// Spans of their own passage, as the offline generator writes them (one space between words,
/// while the passage has a line break inside the span).
fn span_dataset(chunks: usize) -> QaDataset {
    let mut d = QaDataset::new();
    for c in 0..chunks {
        let topic = TOPICS[c % TOPICS.len()];
        let id = format!("d{c:03}-0000");
        d.corpus.insert(id.clone(), format!("Section {c} explains {topic}\nin detail: setting {c} controls {topic} behaviour number {c}."));
        let qid = format!("{id}-q0");
        d.queries.insert(qid.clone(), format!("{c} explains {topic} in detail:"));
        d.relevant_docs.insert(qid, vec![id.clone()]);
    }
    d
}

#[test]
fn inverse_cloze_trains_on_passages_without_their_spans() {
    let _serial = serial();
    let run = |d: &QaDataset, inverse_cloze: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut model = tiny(0.0);
        let config = TrainConfig { cloze: embedfleet_core::InverseCloze { inverse_cloze }, evaluation_steps: 0, ..config() };
        train(&mut model, d, None, &job(config), dir.path(), TrainOptions::default()).unwrap()
    };
    let spans = span_dataset(16);
    let cut = run(&spans, true);
    assert!(cut.facts.loss.contains("16 questions that were word for word in their passage were cut out of it"), "{}", cut.facts.loss);
    let whole = run(&spans, false);
    assert!(!whole.facts.loss.contains("inverse cloze"), "{}", whole.facts.loss);
    // Same model, same batches: only the passages differ, and with them the very first loss.
    assert!((cut.log[0].loss - whole.log[0].loss).abs() > 1e-6, "{} vs {}", cut.log[0].loss, whole.log[0].loss);
    // Questions written as questions are not in their passage: nothing is cut, nothing is said.
    let questions = run(&dataset(8), true);
    assert!(!questions.facts.loss.contains("inverse cloze"), "{}", questions.facts.loss);
}

#[test]
fn hard_negatives_need_mined_negatives_of_this_dataset() {
    let _serial = serial();
    let d = dataset(12);
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny(0.0);
    let err = train(&mut model, &d, None, &job(with_negatives(2)), dir.path(), TrainOptions::default()).unwrap_err();
    assert!(matches!(err, TrainError::NoNegatives(2)), "{err}");
    assert!(err.to_string().contains("--hard-negatives"), "{err}");
    // A file mined for another dataset is refused, not trained on.
    let stale = negatives_of(&dataset(20), 20);
    let err = train(&mut model, &d, None, &job(with_negatives(2)).with_negatives(stale), dir.path(), TrainOptions::default()).unwrap_err();
    assert!(matches!(err, TrainError::Negatives(_)), "{err}");
}

#[test]
fn matryoshka_trains_scores_each_dimension_and_says_so() {
    let _serial = serial();
    let train_set = dataset(24);
    let val = PreparedDataset::new(&dataset(10)).unwrap();
    let matryoshka = |mini: Option<usize>| TrainConfig { matryoshka_dims: vec![8, 32, 16], mini_batch_size: mini, ..config() };
    let run = |config: TrainConfig| {
        let dir = tempfile::tempdir().unwrap();
        let mut model = tiny(0.0);
        let outcome = train(&mut model, &train_set, Some(&val), &job(config), dir.path(), TrainOptions::default()).unwrap();
        (dir, outcome)
    };
    let (dir, outcome) = run(matryoshka(None));
    assert_eq!(outcome.facts.matryoshka_dims, [32, 16, 8]);
    assert!(outcome.facts.loss.starts_with("MatryoshkaLoss over dimensions 32, 16, 8"), "{}", outcome.facts.loss);
    for e in &outcome.evals {
        assert_eq!(e.dims.iter().map(|d| d.dim).collect::<Vec<_>>(), [32, 16, 8], "step {}", e.step);
    }
    // The full cut is the main evaluation itself.
    let last = outcome.evals.last().unwrap();
    assert_eq!(last.dims[0].metrics, last.metrics);
    for dim in [32, 16, 8] {
        let csv =
            std::fs::read_to_string(dir.path().join(format!("eval/Information-Retrieval_evaluation_val_dim_{dim}_results.csv"))).unwrap();
        assert!(csv.starts_with("epoch,steps,cosine-Accuracy@1"), "{csv}");
        assert_eq!(csv.lines().count(), 1 + outcome.evals.len(), "a row per evaluation at {dim}:\n{csv}");
    }
    let card = std::fs::read_to_string(dir.path().join("README.md")).unwrap();
    assert!(card.contains("- loss:MatryoshkaLoss") && card.contains("Matryoshka dimensions: 32, 16, 8"), "{card}");
    assert!(card.contains("| 8 |") && card.contains("truncate_dim=8"), "the card has the table by dimension and the usage:\n{card}");

    // GradCache gives the same loss curve; plain MNRL another.
    let (_dir, cached) = run(matryoshka(Some(3)));
    for (a, b) in outcome.log.iter().zip(&cached.log) {
        assert!((a.loss - b.loss).abs() < 1e-4, "step {}: {} vs {}", a.step, a.loss, b.loss);
    }
    let (_dir, plain) = run(config());
    assert!(plain.log[0].loss < outcome.log[0].loss, "a sum of three MNRL terms: {} vs {}", plain.log[0].loss, outcome.log[0].loss);
    assert!(plain.evals.iter().all(|e| e.dims.is_empty()));

    // A dimension the model does not have is refused before anything is written.
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny(0.0);
    let cfg = TrainConfig { matryoshka_dims: vec![64, 16], ..config() };
    let err = train(&mut model, &train_set, Some(&val), &job(cfg), dir.path(), TrainOptions::default()).unwrap_err();
    assert!(err.to_string().contains("--matryoshka-dims 64") && err.to_string().contains("32 dimensions"), "{err}");
    assert!(!dir.path().join("training_log.csv").exists());
}
