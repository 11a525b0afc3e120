//! Matryoshka against sentence-transformers 6.2 on the real all-MiniLM-L6-v2
//! (tests/fixtures/matryoshka_reference.json, by tools/reference/make_matryoshka_fixture.py): the
//! first step's MatryoshkaLoss over MNRL, plain, with negative columns and under GradCache, and the
//! InformationRetrievalEvaluator's metrics and CSV name with `truncate_dim`.

use embedfleet_core::QaDataset;
use embedfleet_evaluator::csv::{csv_file_name, dim_csv_name};
use embedfleet_evaluator::{EvalOptions, PreparedDataset, evaluate_model, named_metrics};
use embedfleet_model::{LoadOptions, SentenceEncoder};
use embedfleet_trainer::train::cached_step;
use embedfleet_trainer::{MnrlLoss, TrainingLoss};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

mod common;
use common::{minilm, minilm_without_dropout};

#[derive(Deserialize)]
struct Loss {
    scale: f64,
    pairs: f64,
    with_negatives: f64,
    cached_mini_batch_size: usize,
    cached_with_negatives: f64,
    mnrl_at_each_dim_with_negatives: BTreeMap<String, f64>,
}

#[derive(Deserialize)]
struct Evaluation {
    truncate_dim: usize,
    name: String,
    csv_files: Vec<String>,
    queries: BTreeMap<String, String>,
    corpus: BTreeMap<String, String>,
    relevant_docs: BTreeMap<String, Vec<String>>,
    metrics: BTreeMap<String, f64>,
}

#[derive(Deserialize)]
struct Fixture {
    dims: Vec<usize>,
    loss: Loss,
    evaluation: Evaluation,
}

#[derive(Deserialize)]
struct Columns {
    anchors: Vec<String>,
    positives: Vec<String>,
    negatives: Vec<Vec<String>>,
}

#[derive(Deserialize)]
struct NegativesFixture {
    mnrl: Columns,
}

fn read<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn first_step_matryoshka_loss_is_sentence_transformers() {
    let fx: Fixture = read("matryoshka_reference.json");
    let cols = read::<NegativesFixture>("hard_negatives_reference.json").mnrl;
    let tmp = tempfile::tempdir().unwrap();
    let model = minilm_without_dropout(tmp.path());
    let anchors: Vec<&str> = cols.anchors.iter().map(String::as_str).collect();
    let positives: Vec<&str> = cols.positives.iter().map(String::as_str).collect();
    let candidates: Vec<&str> = cols.positives.iter().chain(cols.negatives.iter().flatten()).map(String::as_str).collect();
    // Given in an order of our own: the loss sorts them, as MatryoshkaLoss does.
    let config = embedfleet_core::TrainConfig { matryoshka_dims: vec![64, 384, 128, 256], ..Default::default() };
    let loss_fn =
        TrainingLoss { mnrl: MnrlLoss { scale: fx.loss.scale, symmetric: false }, matryoshka_dims: config.matryoshka_dims_descending() };
    assert_eq!(loss_fn.matryoshka_dims, fx.dims);

    let embed = |texts: &[&str]| model.forward(&model.tokenizer().batch(texts, model.device()).unwrap(), true);
    let q = embed(&anchors);
    let pairs = f64::try_from(loss_fn.compute(&q, &embed(&positives))).unwrap();
    let c = embed(&candidates);
    let with_negatives = f64::try_from(loss_fn.compute(&q, &c)).unwrap();
    let cached = cached_step(&model, &anchors, &candidates, None, fx.loss.cached_mini_batch_size, &loss_fn, 42, 0).unwrap();
    eprintln!(
        "first-step MatryoshkaLoss {:?}: pairs {pairs:.7} (reference {:.7}), with negatives {with_negatives:.7} ({:.7}), GradCache {cached:.7} ({:.7})",
        fx.dims, fx.loss.pairs, fx.loss.with_negatives, fx.loss.cached_with_negatives
    );
    assert!((pairs - fx.loss.pairs).abs() <= 1e-4, "{pairs} vs {}", fx.loss.pairs);
    assert!((with_negatives - fx.loss.with_negatives).abs() <= 1e-4, "{with_negatives} vs {}", fx.loss.with_negatives);
    assert!((cached - fx.loss.cached_with_negatives).abs() <= 1e-4, "{cached} vs {}", fx.loss.cached_with_negatives);
    // Each term of the sum is MNRL at one cut.
    for (dim, expected) in &fx.loss.mnrl_at_each_dim_with_negatives {
        let d: i64 = dim.parse().unwrap();
        let one = TrainingLoss { mnrl: loss_fn.mnrl, matryoshka_dims: vec![d as usize] };
        let got = f64::try_from(one.compute(&q, &c)).unwrap();
        assert!((got - expected).abs() <= 1e-4, "MNRL at {dim}: {got} vs {expected}");
    }
}

#[test]
fn truncated_evaluation_is_the_reference_evaluators() {
    let fx = read::<Fixture>("matryoshka_reference.json").evaluation;
    let mut d = QaDataset::new();
    d.queries = fx.queries.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    d.corpus = fx.corpus.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    d.relevant_docs = fx.relevant_docs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let data = PreparedDataset::new(&d).unwrap();
    let model = SentenceEncoder::load(&minilm(), LoadOptions::default()).unwrap();

    let cut = EvalOptions { truncate_dim: Some(fx.truncate_dim), ..Default::default() };
    let at_dim = evaluate_model(&model, &data, &cut).unwrap();
    assert_eq!(at_dim.dim, Some(fx.truncate_dim));
    let matryoshka = EvalOptions { matryoshka_dims: vec![fx.truncate_dim, 128], ..Default::default() };
    let both = evaluate_model(&model, &data, &matryoshka).unwrap();
    assert_eq!(both.dims.iter().map(|d| d.dim).collect::<Vec<_>>(), [128, fx.truncate_dim], "largest first");
    assert_eq!(both.dim, Some(384), "the main evaluation keeps every dimension");

    let ours = named_metrics(&at_dim.metrics);
    let from_dims = named_metrics(&both.dims[1].metrics);
    assert_eq!(ours.len(), fx.metrics.len());
    for (name, v) in &ours {
        // cosine-NDCG@10 -> val_dim_64_cosine_ndcg@10
        let key = format!("{}_{}", fx.name, name.replace('-', "_").to_lowercase());
        let reference = fx.metrics[&key];
        assert!((v - reference).abs() <= 1e-6, "{key}: {v} vs {reference}");
        assert!((from_dims[name] - v).abs() <= 1e-12, "{name}: one encoding cut two ways must agree");
    }
    assert!((ours["cosine-NDCG@10"] - named_metrics(&both.metrics)["cosine-NDCG@10"]).abs() > 1e-6, "the cut changes the ranking");
    assert_eq!(vec![csv_file_name(&dim_csv_name("val", fx.truncate_dim))], fx.csv_files);
    eprintln!(
        "NDCG@10 at {} dimensions: {:.4} (reference {:.4})",
        fx.truncate_dim,
        ours["cosine-NDCG@10"],
        fx.metrics[&format!("{}_cosine_ndcg@10", fx.name)]
    );

    let too_big = EvalOptions { truncate_dim: Some(385), ..Default::default() };
    let err = evaluate_model(&model, &data, &too_big).unwrap_err().to_string();
    assert!(err.contains("--truncate-dim 385") && err.contains("384"), "{err}");
}
