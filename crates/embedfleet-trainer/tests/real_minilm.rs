//! A few fine-tuning steps of the real all-MiniLM-L6-v2, and a Python-compatible folder out.

use embedfleet_core::generate::assemble_dataset;
use embedfleet_core::progress::NoProgress;
use embedfleet_core::{ChunkConfig, IngestOptions, OfflineGenerator, SplitConfig};
use embedfleet_evaluator::PreparedDataset;
use embedfleet_model::{LoadOptions, SentenceEncoder};
use embedfleet_trainer::{TrainConfig, TrainJob, TrainOptions, train};
use std::path::PathBuf;

#[tokio::test]
async fn minilm_fine_tunes_and_saves_a_sentence_transformers_folder() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let docs = embedfleet_core::ingest::load_documents(&root.join("examples/sample-corpus.json"), &IngestOptions::default()).unwrap();
    let chunks = embedfleet_core::chunk::chunk_documents(&docs[..8], &ChunkConfig::default()).unwrap();
    let outcome = embedfleet_core::generate::generate_questions(&OfflineGenerator::new(1), &chunks, 1, &NoProgress).await;
    let (train_set, val, _) = assemble_dataset(&chunks, &outcome.questions, &SplitConfig::default()).unwrap();

    let minilm = root.join(".deps/all-MiniLM-L6-v2");
    let mut model = SentenceEncoder::load(&minilm, LoadOptions::default()).unwrap();
    let before: Vec<f32> = Vec::try_from(model.encode(&["what is compaction?"], 1, None).unwrap().view([-1])).unwrap();
    let config = TrainJob::new(
        TrainConfig { epochs: 1, batch_size: 4, evaluation_steps: 3, ..Default::default() },
        "sentence-transformers/all-MiniLM-L6-v2",
    );
    let dir = tempfile::tempdir().unwrap();
    let val = PreparedDataset::new(&val).unwrap();
    let outcome = tokio::task::spawn_blocking({
        let out = dir.path().to_owned();
        move || {
            let o = train(&mut model, &train_set, Some(&val), &config, &out, TrainOptions::default()).unwrap();
            (o, model)
        }
    })
    .await
    .unwrap();
    let (outcome, model) = outcome;
    assert!(outcome.steps >= 3);
    let after: Vec<f32> = Vec::try_from(model.encode(&["what is compaction?"], 1, None).unwrap().view([-1])).unwrap();
    assert_ne!(before, after, "training changed the weights");

    // The folder Python's SentenceTransformer(path) reads.
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "README.md",
        "training_log.csv",
        "training.svg",
        "eval/Information-Retrieval_evaluation_val_results.csv",
    ] {
        assert!(dir.path().join(file).exists(), "{file} missing");
    }
    let modules: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("modules.json")).unwrap()).unwrap();
    assert_eq!(modules[2]["type"], "sentence_transformers.models.Normalize");
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("sentence_bert_config.json")).unwrap()).unwrap();
    assert_eq!(st["max_seq_length"], 256);
    let card = std::fs::read_to_string(dir.path().join("README.md")).unwrap();
    assert!(card.contains("base_model: \"sentence-transformers/all-MiniLM-L6-v2\""), "{card}");
    let reloaded = SentenceEncoder::load(dir.path(), LoadOptions::default()).unwrap();
    assert_eq!(reloaded.dimension(), 384);
}
