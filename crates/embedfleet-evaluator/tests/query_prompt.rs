//! The query prompt in evaluation, on the Qwen3 fixture (embedfleet-model's, saved by
//! sentence-transformers 6.2 with Qwen3-Embedding's `query` instruction): a model whose config has a
//! `query` prompt gets it before every query unless `--query-prompt` says otherwise, as
//! `InformationRetrievalEvaluator(query_prompt_name="query")` encodes them; passages get none.

use embedfleet_core::QaDataset;
use embedfleet_evaluator::{EvalOptions, Evaluation, PreparedDataset, TOP_PASSAGES, evaluate_model};
use embedfleet_model::{LoadOptions, SentenceEncoder};
use std::path::PathBuf;

fn qwen3() -> SentenceEncoder {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../embedfleet-model/tests/fixtures/qwen3");
    SentenceEncoder::load(&dir, LoadOptions::default()).unwrap()
}

fn dataset() -> QaDataset {
    let topics = ["compaction", "retention", "replication", "backups", "alerting", "quotas", "clustering", "upgrades"];
    let mut d = QaDataset::new();
    for (i, topic) in topics.iter().enumerate() {
        let (qid, cid) = (format!("q{i}"), format!("d{i:03}-0000"));
        d.corpus.insert(cid.clone(), format!("The {topic} settings: how {topic} works and which options change it."));
        d.queries.insert(qid.clone(), format!("how do I configure {topic}?"));
        d.relevant_docs.insert(qid, vec![cid]);
    }
    d
}

/// Every retrieved passage's score, query by query.
fn scores(e: &Evaluation) -> Vec<f64> {
    e.per_query.iter().flat_map(|q| q.top.iter().map(|r| r.score)).collect()
}

fn evaluate(model: &SentenceEncoder, setting: Option<&str>) -> Vec<f64> {
    let data = PreparedDataset::new(&dataset()).unwrap();
    let options = EvalOptions { query_prompt: setting.map(str::to_owned), ..Default::default() };
    scores(&evaluate_model(model, &data, &options).unwrap())
}

#[test]
fn a_models_query_prompt_is_applied_unless_turned_off() {
    let model = qwen3();
    let instruction = model.named_prompt("query").unwrap().to_owned();
    assert!(instruction.starts_with("Instruct: ") && instruction.ends_with("\nQuery:"), "{instruction:?}");
    assert_eq!(model.query_prompt(None).as_deref(), Some(instruction.as_str()));
    assert_eq!(model.query_prompt(Some("none")), None);
    // Qwen3-Embedding's `document` prompt is empty, which is no prompt.
    assert_eq!(model.query_prompt(Some("document")), None);
    assert_eq!(model.query_prompt(Some("query: ")).as_deref(), Some("query: "));

    let by_default = evaluate(&model, None);
    assert_eq!(by_default.len(), 8 * TOP_PASSAGES, "8 queries, their best passages");
    assert_eq!(by_default, evaluate(&model, Some("query")), "the default is the model's `query` prompt");
    assert_eq!(by_default, evaluate(&model, Some(&instruction)), "the prompt given as text");
    let bare = evaluate(&model, Some("none"));
    assert_ne!(by_default, bare, "--query-prompt none leaves the queries bare");

    // The bare scores are those of the queries encoded without any prompt.
    let d = dataset();
    let queries: Vec<&str> = d.queries.values().map(String::as_str).collect();
    let corpus: Vec<&str> = d.corpus.values().map(String::as_str).collect();
    let scores = model.encode(&queries, 32, None).unwrap().matmul(&model.encode(&corpus, 32, None).unwrap().tr());
    let best = f64::try_from(scores.get(0).max()).unwrap();
    assert!((bare[0] - best).abs() < 1e-6, "{} vs {best}", bare[0]);
}
