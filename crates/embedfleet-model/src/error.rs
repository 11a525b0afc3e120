use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The fleet does not load models from there (see `embedfleet_core::model_source`).
    #[error(transparent)]
    RefusedSource(#[from] embedfleet_core::model_source::RefusedSource),
    #[error("model file {path} is missing or unreadable: {source}")]
    MissingFile { path: PathBuf, source: std::io::Error },
    #[error("unsupported architecture '{model_type}'; embedfleet runs: {supported}")]
    UnsupportedArchitecture { model_type: String, supported: String },
    #[error("modules.json chains a {kind} module (at '{path}'); embedfleet runs Transformer → Pooling → Normalize models only")]
    UnsupportedModule { kind: String, path: String },
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    #[error("weights in {path} are corrupt or do not fit the config: {message}")]
    BadWeights { path: PathBuf, message: String },
    #[error("the tokenizer ({tokenizer_vocab} tokens) does not match the model's vocabulary ({model_vocab})")]
    TokenizerMismatch { tokenizer_vocab: usize, model_vocab: i64 },
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error(
        "model '{id}' is not in the local Hugging Face cache and the hub cannot be reached ({reason}); pass a local sentence-transformers folder with --model, or download it where the hub is reachable"
    )]
    NotCached { id: String, reason: String },
    #[error("model location '{0}' is neither a folder, an s3:// prefix nor a hub id")]
    BadLocation(String),
    #[error("CUDA was asked for but is not available; use --device cpu")]
    NoCuda,
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] embedfleet_core::StoreError),
}

impl embedfleet_core::Transient for ModelError {
    fn is_transient(&self) -> bool {
        match self {
            // The hub or the store unreachable: the same load may work in a minute.
            ModelError::NotCached { .. } => true,
            ModelError::Store(e) => e.is_transient(),
            ModelError::Write { .. } => true,
            _ => false,
        }
    }
}
