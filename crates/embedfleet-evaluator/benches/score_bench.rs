//! The scoring, top-k and metrics part of an evaluation on fixed embeddings, for
//! tools/bench/eval_bench.py: `score_bench DIR` reads `queries.f32`, `corpus.f32` (row-major
//! float32), `meta.json` ({dim, query_ids, corpus_ids, relevant_docs}) and prints timings and
//! metrics as JSON.

use embedfleet_core::QaDataset;
use embedfleet_evaluator::{EvalOptions, PreparedDataset, evaluate_embeddings};
use embedfleet_model::Tensor;
use std::path::Path;
use std::time::Instant;

fn read_f32(path: &Path, dim: i64) -> Tensor {
    let bytes = std::fs::read(path).expect("embeddings file");
    let floats: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Tensor::from_slice(&floats).view([-1, dim])
}

fn main() {
    // `cargo bench` adds `--bench`; the one other argument is the folder.
    let dir = std::env::args().skip(1).find(|a| a != "--bench").expect("usage: score_bench DIR");
    let dir = Path::new(&dir);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    let dim = meta["dim"].as_i64().unwrap();
    let mut dataset = QaDataset::new();
    for id in meta["query_ids"].as_array().unwrap() {
        dataset.queries.insert(id.as_str().unwrap().into(), String::new());
    }
    for id in meta["corpus_ids"].as_array().unwrap() {
        dataset.corpus.insert(id.as_str().unwrap().into(), String::new());
    }
    for (q, docs) in meta["relevant_docs"].as_object().unwrap() {
        dataset.relevant_docs.insert(q.clone(), docs.as_array().unwrap().iter().map(|d| d.as_str().unwrap().into()).collect());
    }
    let data = PreparedDataset::new(&dataset).unwrap();
    let (q, c) = (read_f32(&dir.join("queries.f32"), dim), read_f32(&dir.join("corpus.f32"), dim));
    embedfleet_model::set_threads(std::env::var("OMP_NUM_THREADS").ok().and_then(|t| t.parse().ok()));
    let started = Instant::now();
    let evaluation = evaluate_embeddings(&data, &q, &c, &EvalOptions::default());
    let total = started.elapsed().as_secs_f64();
    let metrics: serde_json::Map<String, serde_json::Value> =
        evaluation.metrics[0].1.named().into_iter().map(|(n, v)| (format!("cosine-{n}"), v.into())).collect();
    println!(
        "{}",
        serde_json::json!({"seconds": total, "rank_s": evaluation.timings.rank_s, "metrics_s": evaluation.timings.metrics_s, "metrics": metrics})
    );
}
