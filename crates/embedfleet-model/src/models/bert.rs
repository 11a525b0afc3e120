//! BERT (bge-*-en, e5, MiniLM, …) in tch, named so its variables match the Hugging Face checkpoint
//! keys (`embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.weight`, …).
//! XLM-RoBERTa reuses it with other position ids.

use super::{Encoder, Family};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::layers::dropout::dropout;
use crate::layers::{AttentionMask, AttentionNames, LayerShape, PostNormLayer, TokenLayout, check_activation, check_heads, padding_mask};
use crate::precision::{Precision, PrecisionKind};
use crate::tokenize::TokenBatch;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

pub const FAMILY: Family = Family {
    model_type: "bert",
    example: "BAAI/bge-small-en",
    architecture: "BertModel",
    checkpoint_prefixes: &["bert."],
    passthrough: &["pooler."],
    build: |root, config| Ok(Box::new(Bert::new(root, &config.parse::<BertConfig>()?, "bert")?)),
};

pub const NAMES: AttentionNames = AttentionNames {
    query: &["attention", "self", "query"],
    key: &["attention", "self", "key"],
    value: &["attention", "self", "value"],
    output: &["attention", "output", "dense"],
    norm: &["attention", "output", "LayerNorm"],
};

/// The fields of a BERT-layout config.json, with transformers' defaults.
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
    /// Checks what the layers need (the family itself is checked by `model_type`).
    pub fn check(&self) -> Result<(), ModelError> {
        check_activation(&self.model_type, &self.hidden_act)?;
        check_heads(self.hidden_size, self.num_attention_heads)?;
        match self.extra.get("position_embedding_type").and_then(|v| v.as_str()) {
            None | Some("absolute") => Ok(()),
            Some(other) => Err(ModelError::UnsupportedArchitecture {
                model_type: format!("{} with position_embedding_type {other}", self.model_type),
                supported: format!("{} with absolute position embeddings", self.model_type),
            }),
        }
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

impl From<BertConfig> for ModelConfig {
    fn from(config: BertConfig) -> Self {
        ModelConfig::from_json(serde_json::to_value(config).expect("config serializes")).expect("a struct is an object")
    }
}

#[derive(Debug)]
struct Embeddings {
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: nn::Embedding,
    norm: nn::LayerNorm,
    dropout: f64,
}

#[derive(Debug)]
pub struct Bert {
    embeddings: Embeddings,
    layers: Vec<PostNormLayer>,
    hidden: i64,
    max_positions: i64,
}

impl Bert {
    pub fn new(root: &nn::Path, config: &BertConfig, model_type: &str) -> Result<Self, ModelError> {
        let config = BertConfig { model_type: model_type.to_owned(), ..config.clone() };
        config.check()?;
        let h = config.hidden_size;
        let emb = root / "embeddings";
        let ln = nn::LayerNormConfig { eps: config.layer_norm_eps, ..Default::default() };
        let embeddings = Embeddings {
            word: nn::embedding(&emb / "word_embeddings", config.vocab_size, h, Default::default()),
            position: nn::embedding(&emb / "position_embeddings", config.max_position_embeddings, h, Default::default()),
            token_type: nn::embedding(&emb / "token_type_embeddings", config.type_vocab_size, h, Default::default()),
            norm: nn::layer_norm(&emb / "LayerNorm", vec![h], ln),
            dropout: config.hidden_dropout_prob,
        };
        let shape = LayerShape {
            hidden: h,
            intermediate: config.intermediate_size,
            heads: config.num_attention_heads,
            layer_norm_eps: config.layer_norm_eps,
            activation: config.hidden_act.clone(),
            hidden_dropout: config.hidden_dropout_prob,
            attention_dropout: config.attention_probs_dropout_prob,
        };
        let layers = (0..config.num_hidden_layers).map(|i| PostNormLayer::new(&(root / "encoder" / "layer" / i), &NAMES, &shape)).collect();
        Ok(Bert { embeddings, layers, hidden: h, max_positions: config.max_position_embeddings })
    }

    /// Token embeddings `[batch, seq, hidden]` for explicit position ids `[batch or 1, seq]`.
    pub fn forward_at(&self, batch: &TokenBatch, positions: &Tensor, train: bool, precision: Precision) -> Tensor {
        self.forward_laid_out(batch, positions, &TokenLayout::new(&batch.attention_mask), train, precision)
    }

    fn forward_laid_out(&self, batch: &TokenBatch, positions: &Tensor, layout: &TokenLayout, train: bool, precision: Precision) -> Tensor {
        let e = &self.embeddings;
        let x = e.word.forward(&layout.pack_ids(&batch.input_ids))
            + e.position.forward(&layout.pack_ids(positions))
            + e.token_type.forward(&layout.pack_ids(&batch.token_type_ids));
        // The residual stream runs in the compute kind; layer norms take bf16 in and keep their
        // statistics and parameters in fp32.
        let mut x = dropout(&e.norm.forward(&x), e.dropout, train).to_kind(precision.kind());
        let mask = layout.has_padding().then(|| padding_mask(&batch.attention_mask, precision.kind()));
        for layer in &self.layers {
            x = layer.forward(&x, layout, AttentionMask::Padding(mask.as_ref()), train, precision);
        }
        layout.unpack(&x).to_kind(Kind::Float)
    }

    pub fn position_table_size(&self) -> i64 {
        self.max_positions
    }
}

impl Encoder for Bert {
    fn forward(&self, batch: &TokenBatch, train: bool, precision: Precision) -> Tensor {
        let seq = batch.input_ids.size()[1];
        let positions = Tensor::arange(seq, (Kind::Int64, batch.input_ids.device())).unsqueeze(0);
        self.forward_at(batch, &positions, train, precision)
    }

    fn hidden_size(&self) -> i64 {
        self.hidden
    }

    fn max_positions(&self) -> usize {
        self.max_positions.max(0) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Unpadding changes which rows go through the matrix products, never the result.
    #[test]
    fn packed_and_padded_batches_give_the_same_token_embeddings() {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let bert = Bert::new(&vs.root(), &BertConfig::tiny(100), "bert").unwrap();
        let ids = Tensor::from_slice2(&[[1i64, 5, 9, 13, 2, 0, 0, 0], [1, 7, 2, 0, 0, 0, 0, 0], [1, 3, 4, 5, 6, 7, 8, 2]]);
        let mask = ids.ne(0).to_kind(Kind::Int64);
        let batch =
            TokenBatch { token_type_ids: ids.zeros_like(), input_ids: ids, attention_mask: mask.shallow_clone(), prompt_length: None };
        let positions = Tensor::arange(8, (Kind::Int64, Device::Cpu)).unsqueeze(0);
        let real = mask.unsqueeze(-1).to_kind(Kind::Float);
        for precision in [Precision::Fp32, Precision::Bf16] {
            let padded = bert.forward_laid_out(&batch, &positions, &TokenLayout::packing_from(&mask, 1.0), false, precision);
            let packed_layout = TokenLayout::packing_from(&mask, 0.0);
            assert!(packed_layout.is_packed());
            let packed = bert.forward_laid_out(&batch, &positions, &packed_layout, false, precision);
            let diff = f64::try_from((padded * &real - packed * &real).abs().max()).unwrap();
            let limit = if precision == Precision::Fp32 { 1e-5 } else { 2e-2 };
            assert!(diff < limit, "{precision:?}: max abs diff {diff}");
        }
    }
}
