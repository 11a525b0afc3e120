//! The seam between the family-agnostic pipeline (tokenizer, pooling, normalisation, training,
//! saving) and each model family's network. A family is one file: its config, its layers, and a
//! [`Family`] entry in [`FAMILIES`] saying how its checkpoints are named.
//!
//! The pipeline hands every family the same padded [`TokenBatch`] (ids, token types, attention
//! mask, padding on whichever side the tokenizer asks for) and takes back one hidden state per
//! token. Positions, attention masks (bidirectional, causal, sliding-window), rotary or relative
//! position terms and unpadding are the family's business, so a decoder with last-token pooling
//! and left padding fits without the pipeline knowing.

mod bert;
mod modernbert;
mod mpnet;
mod qwen3;
mod xlm_roberta;

pub use bert::BertConfig;

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::precision::Precision;
use crate::tokenize::TokenBatch;
use tch::{Tensor, nn};

/// One family's network, its variables registered under the checkpoint's own names.
pub trait Encoder: Send {
    /// Last hidden states `[batch, seq, hidden]` in fp32. With `train`, dropout is on and the
    /// result carries gradients. `precision` is the number format of the matrix products.
    fn forward(&self, batch: &TokenBatch, train: bool, precision: Precision) -> Tensor;

    /// Width of the hidden states (the embedding dimension before any pooling).
    fn hidden_size(&self) -> i64;

    /// The longest input, special tokens included, that the position embeddings cover.
    fn max_positions(&self) -> usize;
}

/// How a family is recognised, built, loaded and saved.
pub struct Family {
    /// `model_type` in config.json.
    pub model_type: &'static str,
    /// A model of this family sentence-transformers users start from, for error messages and docs.
    pub example: &'static str,
    /// The transformers class saving names in config.json's `architectures`, whose checkpoint keys
    /// are the variables' names without a prefix.
    pub architecture: &'static str,
    /// Key prefixes of checkpoints saved with a task head (`bert.` in BertForMaskedLM), stripped on load.
    pub checkpoint_prefixes: &'static [&'static str],
    /// Checkpoint tensors the encoder does not use but saving writes back (the pooler), so transformers
    /// loads a saved folder without "newly initialized" warnings.
    pub passthrough: &'static [&'static str],
    pub build: BuildEncoder,
}

/// How a family makes its network: its variables registered under the path, its shape read from the config.
pub type BuildEncoder = fn(&nn::Path, &ModelConfig) -> Result<Box<dyn Encoder>, ModelError>;

pub const FAMILIES: &[Family] = &[bert::FAMILY, mpnet::FAMILY, xlm_roberta::FAMILY, modernbert::FAMILY, qwen3::FAMILY];

/// The family of a config, or an error that lists every supported one.
pub fn family_of(config: &ModelConfig) -> Result<&'static Family, ModelError> {
    let model_type = config.model_type();
    FAMILIES
        .iter()
        .find(|f| f.model_type == model_type)
        .ok_or_else(|| ModelError::UnsupportedArchitecture { model_type: model_type.to_owned(), supported: supported_list() })
}

/// "bert (e.g. BAAI/bge-small-en), mpnet (e.g. …), …".
pub fn supported_list() -> String {
    FAMILIES.iter().map(|f| format!("{} (e.g. {})", f.model_type, f.example)).collect::<Vec<_>>().join(", ")
}
