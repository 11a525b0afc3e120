//! Broken or unsupported model folders give errors a user can act on.

mod common;

use common::minilm_dir;
use embedfleet_model::{LoadOptions, ModelError, SentenceEncoder};
use std::path::Path;

fn copy_model(to: &Path) {
    for entry in std::fs::read_dir(minilm_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    std::fs::create_dir_all(to.join("1_Pooling")).unwrap();
    std::fs::copy(minilm_dir().join("1_Pooling/config.json"), to.join("1_Pooling/config.json")).unwrap();
}

fn load(dir: &Path) -> ModelError {
    match SentenceEncoder::load(dir, LoadOptions::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_weights() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert!(matches!(load(dir.path()), ModelError::MissingFile { .. }));
}

#[test]
fn corrupt_weights() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    std::fs::write(dir.path().join("model.safetensors"), b"not a safetensors file").unwrap();
    let err = load(dir.path());
    assert!(matches!(err, ModelError::BadWeights { .. }), "{err}");
}

/// Loading reads a safetensors file one tensor at a time from its header's offsets, so every lie a
/// header can tell must be an error, not a read past the file or a panic.
#[test]
fn safetensors_headers_that_lie_are_errors() {
    let write = |dir: &Path, header: serde_json::Value, data: usize| {
        let header = serde_json::to_vec(&header).unwrap();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header);
        bytes.extend(vec![0u8; data]);
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    };
    let name = "embeddings.word_embeddings.weight";
    let cases = [
        (
            "offsets past the end of the file",
            serde_json::json!({name: {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}),
            8,
            "offsets",
        ),
        (
            "offsets that do not fit the shape",
            serde_json::json!({name: {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}),
            16,
            "offsets",
        ),
        ("offsets backwards", serde_json::json!({name: {"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}}), 16, "offsets"),
        ("an unknown dtype", serde_json::json!({name: {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}), 1, "dtype"),
        ("no shape", serde_json::json!({name: {"dtype": "F32", "data_offsets": [0, 4]}}), 4, "shape"),
        (
            "a dimension that overflows",
            serde_json::json!({name: {"dtype": "F32", "shape": [u64::MAX, 4], "data_offsets": [0, 4]}}),
            4,
            "shape",
        ),
        ("a tensor the model lacks", serde_json::json!({"unused": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}), 4, "missing"),
    ];
    for (what, header, data, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_model(dir.path());
        write(dir.path(), header, data);
        let err = load(dir.path());
        assert!(matches!(err, ModelError::BadWeights { .. }), "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: {err}");
    }
    // A header length past the file.
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    std::fs::write(dir.path().join("model.safetensors"), 1_000_000u64.to_le_bytes()).unwrap();
    assert!(matches!(load(dir.path()), ModelError::BadWeights { .. }));
}

#[test]
fn unsupported_architecture_names_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    config["model_type"] = "gpt2".into();
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let err = load(dir.path());
    assert!(matches!(err, ModelError::UnsupportedArchitecture { .. }));
    let text = err.to_string();
    for family in ["gpt2", "bert", "mpnet", "xlm-roberta", "sentence-transformers/all-mpnet-base-v2"] {
        assert!(text.contains(family), "{family} missing from: {err}");
    }
}

fn write_json(path: &Path, value: serde_json::Value) {
    std::fs::write(path, serde_json::to_vec(&value).unwrap()).unwrap();
}

#[test]
fn modules_embedfleet_does_not_run_are_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    write_json(
        &dir.path().join("modules.json"),
        serde_json::json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        ]),
    );
    let err = load(dir.path());
    assert!(matches!(err, ModelError::UnsupportedModule { .. }) && err.to_string().contains("Dense"), "{err}");
}

#[test]
fn module_paths_outside_the_folder_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    write_json(
        &dir.path().join("modules.json"),
        serde_json::json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "../elsewhere", "type": "sentence_transformers.models.Pooling"},
        ]),
    );
    assert!(load(dir.path()).to_string().contains("leaves the folder"));
}

#[test]
fn concatenated_pooling_modes_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    write_json(
        &dir.path().join("1_Pooling/config.json"),
        serde_json::json!({"embedding_dimension": 384, "pooling_mode": ["cls", "mean"], "include_prompt": true}),
    );
    let err = load(dir.path()).to_string();
    assert!(err.contains("cls + mean") && err.contains("1_Pooling"), "{err}");
}

#[test]
fn pooling_dimension_that_does_not_fit_the_model() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    write_json(&dir.path().join("1_Pooling/config.json"), serde_json::json!({"embedding_dimension": 768, "pooling_mode": "mean"}));
    assert!(load(dir.path()).to_string().contains("768"));
}

#[test]
fn corrupt_pickle_weights() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"PK\x03\x04 truncated zip").unwrap();
    let err = load(dir.path());
    assert!(matches!(err, ModelError::BadWeights { .. }) && err.to_string().contains("pytorch_model.bin"), "{err}");
}

#[test]
fn missing_shard() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    write_json(
        &dir.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": {"embeddings.word_embeddings.weight": "model-00001-of-00002.safetensors"}}),
    );
    let err = load(dir.path());
    assert!(matches!(err, ModelError::MissingFile { .. }) && err.to_string().contains("model-00001-of-00002"), "{err}");
}

#[test]
fn tokenizer_larger_than_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    config["vocab_size"] = 1000.into();
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    assert!(matches!(load(dir.path()), ModelError::TokenizerMismatch { .. }));
}

#[test]
fn weights_that_do_not_fit_the_config() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    config["num_hidden_layers"] = 7.into();
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let err = load(dir.path());
    assert!(err.to_string().contains("encoder.layer.6"), "{err}");
}
