//! The JSON files of a sentence-transformers folder, read with the defaults transformers and
//! sentence-transformers apply when a key is absent.

use crate::error::ModelError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Architectures whose weights have the BERT layout this crate runs.


#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// RoBERTa-style models offset positions past the padding index.
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    /// Everything else in config.json, written back unchanged on save.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_model_type() -> String {
    "bert".into()
}
fn default_act() -> String {
    "gelu".into()
}
fn default_max_positions() -> i64 {
    512
}
fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}

impl BertConfig {
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        config.check()?;
        Ok(config)
    }

    pub fn check(&self) -> Result<(), ModelError> {
        let supported = ["bert"];
        if !supported.contains(&self.model_type.as_str()) {
            return Err(ModelError::UnsupportedArchitecture {
                model_type: self.model_type.clone(),
                supported: supported.join(", "),
            });
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu") {
            return Err(ModelError::UnsupportedArchitecture {
                model_type: format!("{} with activation {}", self.model_type, self.hidden_act),
                supported: "bert with gelu, gelu_new, gelu_pytorch_tanh or relu".into(),
            });
        }
        if self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(ModelError::InvalidConfig(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(())
    }

    /// A tiny randomly initialised model for fast tests.
    pub fn tiny(vocab_size: i64) -> Self {
        BertConfig {
            model_type: "bert".into(),
            vocab_size,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            hidden_act: "gelu".into(),
            max_position_embeddings: 128,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            pad_token_id: Some(0),
            extra: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolingMode {
    Cls,
    Mean,
    Max,
}

/// `1_Pooling/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolingConfig {
    pub word_embedding_dimension: i64,
    #[serde(default)]
    pub pooling_mode_cls_token: bool,
    #[serde(default)]
    pub pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pub pooling_mode_max_tokens: bool,
    #[serde(default)]
    pub pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pub pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pub pooling_mode_lasttoken: bool,
    #[serde(default)]
    pub include_prompt: Option<bool>,
}

impl PoolingConfig {
    pub fn mode(&self) -> Result<PoolingMode, ModelError> {
        let unsupported = self.pooling_mode_mean_sqrt_len_tokens
            || self.pooling_mode_weightedmean_tokens
            || self.pooling_mode_lasttoken;
        let chosen = [self.pooling_mode_cls_token, self.pooling_mode_mean_tokens, self.pooling_mode_max_tokens]
            .iter()
            .filter(|b| **b)
            .count();
        if unsupported || chosen != 1 {
            return Err(ModelError::InvalidConfig(
                "1_Pooling/config.json must choose exactly one of cls, mean or max pooling".into(),
            ));
        }
        Ok(if self.pooling_mode_cls_token {
            PoolingMode::Cls
        } else if self.pooling_mode_mean_tokens {
            PoolingMode::Mean
        } else {
            PoolingMode::Max
        })
    }

    pub fn new(dim: i64, mode: PoolingMode) -> Self {
        PoolingConfig {
            word_embedding_dimension: dim,
            pooling_mode_cls_token: mode == PoolingMode::Cls,
            pooling_mode_mean_tokens: mode == PoolingMode::Mean,
            pooling_mode_max_tokens: mode == PoolingMode::Max,
            pooling_mode_mean_sqrt_len_tokens: false,
            pooling_mode_weightedmean_tokens: false,
            pooling_mode_lasttoken: false,
            include_prompt: Some(true),
        }
    }
}

/// One entry of `modules.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleEntry {
    pub idx: usize,
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::MissingFile { path: path.to_owned(), source: e })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ModelError::InvalidConfig(format!("{}: {e}", path.display())))
}
