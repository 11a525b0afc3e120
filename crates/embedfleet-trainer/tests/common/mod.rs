//! Helpers of the tests that run the real all-MiniLM-L6-v2 against sentence-transformers fixtures.

use embedfleet_model::{LoadOptions, SentenceEncoder};
use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn minilm() -> PathBuf {
    let dir = root().join(".deps/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").exists(), "run scripts/setup.sh first");
    dir
}

/// MiniLM with every dropout probability at 0, as the fixture's loss was computed.
pub fn minilm_without_dropout(tmp: &Path) -> SentenceEncoder {
    let dir = tmp.join("minilm");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in walk(&minilm()) {
        let rel = entry.strip_prefix(minilm()).unwrap().to_owned();
        std::fs::create_dir_all(dir.join(&rel).parent().unwrap()).unwrap();
        std::fs::copy(&entry, dir.join(&rel)).unwrap();
    }
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["hidden_dropout_prob"] = 0.0.into();
    config["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    SentenceEncoder::load(&dir, LoadOptions::default()).unwrap()
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}
