//! The evaluator against sentence-transformers 6.2.0's InformationRetrievalEvaluator.
//! Fixtures: tools/reference/make_eval_fixture.py; rules: tools/reference/IR_EVALUATOR_NOTES.md.

use embedfleet_core::QaDataset;
use embedfleet_evaluator::csv::{csv_file_name, csv_header};
use embedfleet_evaluator::metrics::MetricsConfig;
use embedfleet_evaluator::rank::{Blocks, ScoreFunction};
use embedfleet_evaluator::{EvalOptions, Evaluation, PreparedDataset, evaluate_embeddings, evaluate_model};
use embedfleet_model::{LoadOptions, SentenceEncoder, Tensor};
use indexmap::IndexMap;
use serde_json::Value;
use std::path::PathBuf;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `accuracy@1` → the reference's value for `fixed_cosine_accuracy@1`.
fn reference_value(metrics: &Value, prefix: &str, function: &str, name: &str) -> f64 {
    let key = format!("{prefix}_{function}_{}", name.to_lowercase());
    metrics[&key].as_f64().unwrap_or_else(|| panic!("reference has no {key}"))
}

fn assert_metrics_equal(ours: &Evaluation, reference: &Value, prefix: &str, tolerance: f64) -> usize {
    let mut compared = 0;
    for (function, metrics) in &ours.metrics {
        for (name, value) in metrics.named() {
            let expected = reference_value(reference, prefix, function.name(), &name);
            assert!((value - expected).abs() <= tolerance, "{}-{name}: ours {value}, reference {expected}", function.name());
            compared += 1;
        }
    }
    compared
}

fn config_of(v: &Value) -> MetricsConfig {
    let ks = |key: &str| v[key].as_array().unwrap().iter().map(|k| k.as_u64().unwrap() as usize).collect();
    MetricsConfig {
        accuracy_at_k: ks("accuracy_at_k"),
        precision_recall_at_k: ks("precision_recall_at_k"),
        mrr_at_k: ks("mrr_at_k"),
        ndcg_at_k: ks("ndcg_at_k"),
        map_at_k: v.get("map_at_k").map(|_| ks("map_at_k")).unwrap_or(vec![100]),
    }
}

fn embeddings(map: &Value, ids: &[String]) -> Tensor {
    let flat: Vec<f32> = ids.iter().flat_map(|id| map[id].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32)).collect();
    Tensor::from_slice(&flat).view([ids.len() as i64, -1])
}

#[test]
fn fixed_embeddings_with_ties_give_the_reference_metrics_exactly() {
    let fx = fixture("fixed_embeddings.json");
    let ids = |key: &str| -> Vec<String> { fx[key].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect() };
    let (query_ids, corpus_ids) = (ids("query_ids"), ids("corpus_ids"));
    let mut dataset = QaDataset::new();
    for id in &query_ids {
        dataset.queries.insert(id.clone(), fx["queries"][id].as_str().unwrap().to_owned());
    }
    for id in &corpus_ids {
        dataset.corpus.insert(id.clone(), fx["corpus"][id].as_str().unwrap().to_owned());
    }
    for (id, rel) in fx["relevant_docs"].as_object().unwrap() {
        dataset.relevant_docs.insert(id.clone(), rel.as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_owned()).collect());
    }
    let data = PreparedDataset::new(&dataset).unwrap();
    let evaluated: Vec<String> = ids("evaluated_query_ids");
    assert_eq!(data.query_ids, evaluated, "queries without relevant documents are dropped");
    assert_eq!(data.dropped_queries, 2);
    let q = embeddings(&fx["query_embeddings"], &data.query_ids);
    let c = embeddings(&fx["corpus_embeddings"], &corpus_ids);

    let chunk = fx["evaluator_args"]["corpus_chunk_size"].as_u64().unwrap() as usize;
    let mut options = EvalOptions {
        functions: vec![ScoreFunction::Dot, ScoreFunction::Cosine],
        blocks: Blocks { corpus: chunk, queries: 512 },
        ..Default::default()
    };
    options.metrics = config_of(&fx["evaluator_args"]);
    let ours = evaluate_embeddings(&data, &q, &c, &options);
    let compared = assert_metrics_equal(&ours, &fx["metrics"], "fixed", 1e-9);
    assert_eq!(compared, 30);

    // The whole ranking, ties included, is the reference's: check it through the CSV-visible
    // metrics of a cut inside chunks too (max_k 10 < chunk size).
    let variant = &fx["variants"][0];
    options.metrics = config_of(variant);
    for corpus_block in [7, 50, 1000] {
        options.blocks.corpus = corpus_block;
        let ours = evaluate_embeddings(&data, &q, &c, &options);
        assert_metrics_equal(&ours, &variant["metrics"], "fixed", 1e-9);
    }

    // The header is the reference's, byte for byte.
    let header = fx["csv_text"].as_str().unwrap().lines().next().unwrap();
    assert_eq!(csv_header(&[ScoreFunction::Cosine, ScoreFunction::Dot], &config_of(&fx["evaluator_args"])), header);
    assert_eq!(csv_file_name("fixed"), fx["csv_file_name"].as_str().unwrap());
}

fn minilm_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.deps/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").exists(), "run scripts/setup.sh first");
    dir
}

#[test]
fn real_model_end_to_end_matches_the_reference_csv() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_val.json");
    let dataset = QaDataset::load(&path).unwrap();
    let data = PreparedDataset::new(&dataset).unwrap();
    assert!(data.query_ids.len() >= 300 && data.corpus_ids.len() >= 1000);
    let model = SentenceEncoder::load(&minilm_dir(), LoadOptions::default()).unwrap();
    let ours = evaluate_model(&model, &data, &EvalOptions::default()).unwrap();

    let csv = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_val_results.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let values: Vec<f64> = lines.next().unwrap().split(',').map(|v| v.parse().unwrap()).collect();
    let reference: IndexMap<&str, f64> = header.iter().copied().zip(values).collect();
    let mut worst = 0.0f64;
    for (function, metrics) in &ours.metrics {
        for (name, value) in metrics.named() {
            let expected = reference[format!("{}-{name}", function.name()).as_str()];
            assert!((value - expected).abs() <= 1e-4, "{name}: ours {value}, reference {expected}");
            worst = worst.max((value - expected).abs());
        }
    }
    eprintln!("{} queries x {} chunks: largest metric difference {worst:.2e}", data.query_ids.len(), data.corpus_ids.len());

    // And the CSV header is byte-identical.
    assert_eq!(csv_header(&[ScoreFunction::Cosine], &MetricsConfig::default()), header.join(","));
}
