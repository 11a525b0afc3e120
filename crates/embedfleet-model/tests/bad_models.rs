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

#[test]
fn unsupported_architecture_names_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    config["model_type"] = "gpt2".into();
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let err = load(dir.path());
    assert!(matches!(err, ModelError::UnsupportedArchitecture { .. }));
    assert!(err.to_string().contains("gpt2") && err.to_string().contains("bert"), "{err}");
}

#[test]
fn tokenizer_larger_than_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    config["vocab_size"] = 1000.into();
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    assert!(matches!(load(dir.path()), ModelError::TokenizerMismatch { .. }));
}

#[test]
fn weights_that_do_not_fit_the_config() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    config["num_hidden_layers"] = 7.into();
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let err = load(dir.path());
    assert!(err.to_string().contains("encoder.layer.6"), "{err}");
}
