//! Sentence-embedding models on libtorch: one [`models::Encoder`] per model family (BERT, MPNet,
//! XLM-RoBERTa, ModernBERT, Qwen3) built from `config.json`, the sentence-transformers pipeline around it (tokenizer,
//! pooling, normalization, prompts), and the folder layouts Python's `SentenceTransformer(path)`
//! reads and writes.

#[cfg(feature = "jemalloc")]
mod allocator;
pub mod args;
pub mod config;
mod encoder;
mod error;
mod folder;
mod kernels;
mod layers;
pub mod models;
pub mod pooling;
mod precision;
pub mod resolve;
pub mod tokenize;
pub mod weights;

pub use args::RuntimeArgs;
pub use config::{ModelConfig, PoolingMode};
pub use embedfleet_report::ModelCard;
pub use encoder::{LoadOptions, QUERY_PROMPT_NAME, SentenceEncoder};
pub use error::ModelError;
pub use models::BertConfig;
pub use precision::{
    Bf16Support, Precision, PrecisionKind, PrecisionSetting, bf16_support, describe_precision, parse_device, resolve_precision,
};
pub use resolve::{resolve_fleet_model, resolve_model};
pub use tch::{Device, Kind, Tensor};

/// Uses every core for intra-op parallelism unless `threads` says otherwise.
pub fn set_threads(threads: Option<usize>) {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    tch::set_num_threads(n as i32);
}
