//! Fine-tuning every model family (BERT, MPNet, XLM-RoBERTa, ModernBERT, Qwen3) with the trainer's loss and
//! optimizer, on the folders sentence-transformers 6.2 saved (embedfleet-model's fixtures): with dropout off
//! the first step's MNRL loss is sentence-transformers' on the same batch, and a few steps lower it.

use embedfleet_core::QaDataset;
use embedfleet_model::{LoadOptions, Precision, SentenceEncoder, Tensor};
use embedfleet_trainer::optim::AdamW;
use embedfleet_trainer::{AdamWConfig, MnrlLoss, TrainConfig, TrainJob, TrainOptions, train};
use serde::Deserialize;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../embedfleet-model/tests/fixtures")
}

#[derive(Deserialize)]
struct Mnrl {
    anchors: Vec<String>,
    positives: Vec<String>,
    scale: f64,
    loss: f64,
    /// Qwen3's fixture: the model's `query` prompt, and the loss with it before every anchor (the
    /// sentence-transformers trainer's `prompts` argument on the anchor column).
    #[serde(default)]
    query_prompt: Option<String>,
    #[serde(default)]
    loss_with_query_prompt: Option<f64>,
}

#[derive(Deserialize)]
struct Fixture {
    mnrl: Mnrl,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A copy of the family's fixture folder with every dropout probability at 0.
fn without_dropout(name: &str, tmp: &Path) -> PathBuf {
    let dir = tmp.join(name);
    copy_dir(&fixtures().join(name), &dir);
    if name == "bert_st6" {
        // The fixture leaves MiniLM's weights out; they are the ones setup installs.
        let minilm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.deps/all-MiniLM-L6-v2/model.safetensors");
        assert!(minilm.exists(), "run scripts/setup.sh first");
        std::fs::copy(minilm, dir.join("model.safetensors")).unwrap();
    }
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["hidden_dropout_prob"] = 0.0.into();
    config["attention_probs_dropout_prob"] = 0.0.into();
    // ModernBERT's own dropout keys (gte-modernbert-base has them at 0 already).
    for key in ["attention_dropout", "embedding_dropout", "mlp_dropout"] {
        if config.get(key).is_some() {
            config[key] = 0.0.into();
        }
    }
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    dir
}

fn batch_loss(model: &SentenceEncoder, mnrl: &Mnrl) -> Tensor {
    let anchors: Vec<&str> = mnrl.anchors.iter().map(String::as_str).collect();
    let positives: Vec<&str> = mnrl.positives.iter().map(String::as_str).collect();
    let q = model.forward(&model.tokenizer().batch(&anchors, model.device()).unwrap(), true);
    let p = model.forward(&model.tokenizer().batch(&positives, model.device()).unwrap(), true);
    MnrlLoss { scale: mnrl.scale, symmetric: false }.compute(&q, &p)
}

/// `lr`: the tiny random models take a large step; the real MiniLM a fine-tuning one.
fn first_step_and_a_few_more(name: &str, lr: f64) {
    first_steps(name, lr, Precision::Fp32, 1e-4);
}

/// Four steps on the fixture's batch in `precision`: the first loss is sentence-transformers' (fp32)
/// within `tolerance`, the fourth is lower, and nearly every tensor moved.
fn first_steps(name: &str, lr: f64, precision: Precision, tolerance: f64) {
    let fx: Fixture = serde_json::from_slice(&std::fs::read(fixtures().join(format!("{name}_reference.json"))).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model = SentenceEncoder::load(&without_dropout(name, tmp.path()), LoadOptions { precision, ..Default::default() }).unwrap();
    let before: Vec<(String, Tensor)> = model.var_store().variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
    let named: Vec<(String, Tensor)> = model.var_store().variables().into_iter().collect();
    let mut optimizer = AdamW::new(named, AdamWConfig::default());

    let mut losses = Vec::new();
    for _ in 0..4 {
        optimizer.zero_grad();
        let loss = batch_loss(&model, &fx.mnrl);
        loss.backward();
        losses.push(f64::try_from(&loss).unwrap());
        optimizer.step(lr);
    }
    let first = losses[0];
    eprintln!("{name} {precision:?}: first-step loss {first:.7} (sentence-transformers {:.7}), then {losses:?}", fx.mnrl.loss);
    assert!((first - fx.mnrl.loss).abs() <= tolerance, "{name}: first-step loss {first} vs sentence-transformers {}", fx.mnrl.loss);
    assert!(losses[3] < losses[0], "{name}: loss did not go down: {losses:?}");
    let vars = model.var_store().variables();
    let changed = before.iter().filter(|(n, t)| f64::try_from((&vars[n] - t).abs().max()).unwrap() > 0.0).count();
    assert!(changed * 10 >= before.len() * 9, "{name}: only {changed} of {} tensors changed", before.len());
}

#[test]
fn bert_fine_tunes_like_sentence_transformers() {
    first_step_and_a_few_more("bert_st6", 5e-5);
}

#[test]
fn mpnet_fine_tunes_like_sentence_transformers() {
    first_step_and_a_few_more("mpnet", 1e-3);
}

#[test]
fn xlm_roberta_fine_tunes_like_sentence_transformers() {
    first_step_and_a_few_more("xlm_roberta", 1e-3);
}

#[test]
fn modernbert_fine_tunes_like_sentence_transformers() {
    first_step_and_a_few_more("modernbert", 1e-3);
}

#[test]
fn qwen3_fine_tunes_like_sentence_transformers() {
    first_step_and_a_few_more("qwen3", 1e-3);
}

#[test]
fn qwen3_fine_tunes_in_bf16() {
    // bf16 matrix products with fp32 weights, norms and residuals: the loss is fp32's to bf16's
    // precision, and the gradients through the casts still lower it.
    first_steps("qwen3", 1e-3, Precision::Bf16, 0.05);
}

/// The fixture's 8 pairs as a training set: one chunk per pair, so one batch of 8 holds them all.
fn mnrl_dataset(mnrl: &Mnrl) -> QaDataset {
    let mut d = QaDataset::new();
    for (i, (question, passage)) in mnrl.anchors.iter().zip(&mnrl.positives).enumerate() {
        let (qid, cid) = (format!("q{i}"), format!("d{i:03}-0000"));
        d.corpus.insert(cid.clone(), passage.clone());
        d.queries.insert(qid.clone(), question.clone());
        d.relevant_docs.insert(qid, vec![cid]);
    }
    d
}

/// The first logged loss of `embedfleet finetune`'s loop with `config` on the fixture's batch.
fn first_training_loss(name: &str, config: TrainConfig) -> f64 {
    let fx: Fixture = serde_json::from_slice(&std::fs::read(fixtures().join(format!("{name}_reference.json"))).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut model = SentenceEncoder::load(&without_dropout(name, tmp.path()), LoadOptions::default()).unwrap();
    let config = TrainConfig { epochs: 1, batch_size: fx.mnrl.anchors.len(), evaluation_steps: 0, ..config };
    let job = TrainJob::new(config, name);
    let outcome = train(&mut model, &mnrl_dataset(&fx.mnrl), None, &job, &tmp.path().join("out"), TrainOptions::default()).unwrap();
    assert_eq!(outcome.steps, 1);
    outcome.log[0].loss
}

#[test]
fn qwen3_trains_with_its_query_prompt_as_sentence_transformers() {
    // The model's config has a `query` prompt, so training puts it before every question, as
    // SentenceTransformerTrainer does with prompts={"anchor": model.prompts["query"]}; GradCache too.
    let fx: Fixture = serde_json::from_slice(&std::fs::read(fixtures().join("qwen3_reference.json")).unwrap()).unwrap();
    let expected = fx.mnrl.loss_with_query_prompt.unwrap();
    assert!(fx.mnrl.query_prompt.as_deref().is_some_and(|p| p.starts_with("Instruct: ")));
    for mini in [None, Some(3)] {
        let loss = first_training_loss("qwen3", TrainConfig { mini_batch_size: mini, ..Default::default() });
        eprintln!("qwen3 first-step loss with the query prompt (mini-batch {mini:?}): {loss:.7} (sentence-transformers {expected:.7})");
        assert!((loss - expected).abs() <= 1e-4, "mini-batch {mini:?}: {loss} vs sentence-transformers {expected}");
    }
    // --query-prompt none trains on the bare questions, as the trainer without prompts.
    let bare = first_training_loss(
        "qwen3",
        TrainConfig { prompt: embedfleet_core::QueryPrompt { query_prompt: Some("none".into()) }, ..Default::default() },
    );
    assert!((bare - fx.mnrl.loss).abs() <= 1e-4, "without the prompt: {bare} vs sentence-transformers {}", fx.mnrl.loss);
}
