//! The merge with the base (`--merge-with-base`) on a tiny BERT trained for real: weight 0 is the
//! base exactly, weight 1 the fine-tuned model exactly, and `auto` is never below either on
//! validation. Written back into a saved folder, the merged weights are what loads.

use embedfleet_core::{MergeWithBase, Metric, QaDataset};
use embedfleet_evaluator::{EvalOptions, PreparedDataset, evaluate_model};
use embedfleet_model::{BertConfig, LoadOptions, SentenceEncoder, Tensor};
use embedfleet_trainer::merge::{MergeError, MergePair, merge_saved_model, merge_with_base};
use embedfleet_trainer::{TrainConfig, TrainJob, TrainOptions, train};
use std::path::PathBuf;

fn tokenizer_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.deps/all-MiniLM-L6-v2");
    assert!(dir.join("tokenizer.json").exists(), "run scripts/setup.sh first");
    dir
}

fn tiny() -> SentenceEncoder {
    let mut config = BertConfig::tiny(30522);
    config.hidden_dropout_prob = 0.0;
    config.attention_probs_dropout_prob = 0.0;
    SentenceEncoder::random(config, &tokenizer_dir(), 7, LoadOptions::default()).unwrap()
}

const TOPICS: &[&str] = &["compaction", "retention", "replication", "backup", "alerting", "tokens", "quotas", "shards"];

fn dataset(chunks: usize, variant: usize) -> QaDataset {
    let mut d = QaDataset::new();
    for c in 0..chunks {
        let topic = TOPICS[c % TOPICS.len()];
        let id = format!("d{c:03}-0000");
        d.corpus.insert(id.clone(), format!("Section {c} explains {topic} in detail: setting {c} controls {topic} behaviour number {c}."));
        let qid = format!("{id}-q{variant}");
        d.queries.insert(qid.clone(), format!("how does setting {c} change {topic} (variant {variant})?"));
        d.relevant_docs.insert(qid, vec![id.clone()]);
    }
    d
}

fn weights(model: &SentenceEncoder) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = model.var_store().variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|((_, x), (_, y))| f64::try_from((x - y).abs().max()).unwrap()).fold(0.0, f64::max)
}

#[test]
fn merge_is_the_base_at_0_the_finetuned_model_at_1_and_auto_is_never_below_either() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny();
    let mut model = tiny();
    let config = TrainConfig { epochs: 3, batch_size: 8, evaluation_steps: 0, learning_rate: Some(2e-3), ..Default::default() };
    let train_set = dataset(24, 0);
    let val = PreparedDataset::new(&dataset(24, 1)).unwrap();
    let output = dir.path().join("model");
    train(&mut model, &train_set, Some(&val), &TrainJob::new(config, "tiny"), &output, TrainOptions::default()).unwrap();
    // What training kept (the best checkpoint or the base) is what gets merged.
    let mut kept = SentenceEncoder::load(&output, LoadOptions::default()).unwrap();
    let trained = weights(&kept);
    let base_weights = weights(&base);
    assert!(max_diff(&trained, &base_weights) > 1e-4, "training moved the weights");

    let pair = MergePair::new(&kept, &base).unwrap();
    pair.apply(&mut kept, 0.0);
    assert_eq!(max_diff(&weights(&kept), &base_weights), 0.0, "weight 0 is the base, exactly");
    pair.apply(&mut kept, 1.0);
    assert_eq!(max_diff(&weights(&kept), &trained), 0.0, "weight 1 is the fine-tuned model, exactly");
    pair.apply(&mut kept, 0.5);
    let half: Vec<(String, Tensor)> = trained.iter().zip(&base_weights).map(|((n, t), (_, b))| (n.clone(), (t + b) * 0.5)).collect();
    assert!(max_diff(&weights(&kept), &half) < 1e-6, "weight 0.5 is the average");

    // auto: scored on validation, never below the base (0) or the fine-tuned model (1).
    let options = EvalOptions::default();
    let metric = Metric::default();
    pair.apply(&mut kept, 1.0);
    let outcome = merge_with_base(&mut kept, &base, MergeWithBase::Auto, &val, &options, &metric).unwrap().expect("a merge");
    let value_at = |w: f64| outcome.candidates.iter().find(|c| c.weight == w).unwrap().value;
    let kept_value = value_at(outcome.weight);
    assert!(kept_value >= value_at(0.0) && kept_value >= value_at(1.0), "{outcome:?}");
    assert_eq!(outcome.candidates.len(), 5);
    assert!(outcome.reason.contains(&format!("weight {}", outcome.weight)), "{}", outcome.reason);
    let now = evaluate_model(&kept, &val, &options).unwrap().metric(&metric.to_string()).unwrap();
    assert_eq!(now, kept_value, "the model holds the kept weight's weights");

    // Off does nothing; a fixed weight is taken as given.
    assert!(merge_with_base(&mut kept, &base, MergeWithBase::Off, &val, &options, &metric).unwrap().is_none());
    let saved = merge_saved_model(&output, &base, MergeWithBase::Weight(0.0), &val, &options, &metric, LoadOptions::default())
        .unwrap()
        .expect("a merge");
    assert_eq!(saved.weight, 0.0);
    let reloaded = SentenceEncoder::load(&output, LoadOptions::default()).unwrap();
    assert_eq!(max_diff(&weights(&reloaded), &base_weights), 0.0, "the folder now holds the base's weights");
}

#[test]
fn models_of_different_shapes_are_refused() {
    let base = tiny();
    let mut config = BertConfig::tiny(30522);
    config.hidden_size *= 2;
    config.intermediate_size *= 2;
    let other = SentenceEncoder::random(config, &tokenizer_dir(), 7, LoadOptions::default()).unwrap();
    let err = MergePair::new(&other, &base).err().expect("refused");
    assert!(matches!(err, MergeError::Mismatch { .. }));
    assert!(err.to_string().contains("--merge-with-base off"), "{err}");
}
