//! MPNet (all-mpnet-base-v2, multi-qa-mpnet-*): BERT-like post-norm layers plus a relative position
//! bias, T5-style buckets of the signed distance between tokens, learned per head, computed once and
//! added to every layer's attention scores. Positions are RoBERTa-style, past padding index 1.

use super::{Encoder, Family};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::kernels::cpu_attention::DistanceBias;
use crate::layers::dropout::dropout;
use crate::layers::{
    AttentionMask, AttentionNames, LayerShape, Lazy, PostNormLayer, TokenLayout, check_activation, check_heads, padding_mask,
    positions_after_padding,
};
use crate::precision::{Precision, PrecisionKind};
use crate::tokenize::TokenBatch;
use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

pub const FAMILY: Family = Family {
    model_type: "mpnet",
    example: "sentence-transformers/all-mpnet-base-v2",
    architecture: "MPNetModel",
    checkpoint_prefixes: &["mpnet."],
    passthrough: &["pooler."],
    build,
};

const NAMES: AttentionNames = AttentionNames {
    query: &["attention", "attn", "q"],
    key: &["attention", "attn", "k"],
    value: &["attention", "attn", "v"],
    output: &["attention", "attn", "o"],
    norm: &["attention", "LayerNorm"],
};

/// transformers' MPNetEmbeddings uses 1 as the padding index whatever `pad_token_id` says.
const PADDING_IDX: i64 = 1;
/// MPNetEncoder calls compute_position_bias with its default of 32 buckets, not the config's count.
const BUCKETS: i64 = 32;
const MAX_DISTANCE: i64 = 128;

#[derive(Debug, Deserialize)]
struct MpnetConfig {
    vocab_size: i64,
    hidden_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    intermediate_size: i64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: i64,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    attention_probs_dropout_prob: f64,
    #[serde(default = "default_buckets")]
    relative_attention_num_buckets: i64,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_max_positions() -> i64 {
    512
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}
fn default_buckets() -> i64 {
    32
}

fn build(root: &nn::Path, config: &ModelConfig) -> Result<Box<dyn Encoder>, ModelError> {
    let c: MpnetConfig = config.parse()?;
    check_activation("mpnet", &c.hidden_act)?;
    check_heads(c.hidden_size, c.num_attention_heads)?;
    if c.relative_attention_num_buckets < BUCKETS {
        return Err(ModelError::InvalidConfig(format!(
            "relative_attention_num_buckets is {}; MPNet looks up {BUCKETS} buckets",
            c.relative_attention_num_buckets
        )));
    }
    if c.max_position_embeddings <= PADDING_IDX + 1 {
        return Err(ModelError::InvalidConfig(format!("max_position_embeddings {} is too small", c.max_position_embeddings)));
    }
    let h = c.hidden_size;
    let emb = root / "embeddings";
    let shape = LayerShape {
        hidden: h,
        intermediate: c.intermediate_size,
        heads: c.num_attention_heads,
        layer_norm_eps: c.layer_norm_eps,
        activation: c.hidden_act.clone(),
        hidden_dropout: c.hidden_dropout_prob,
        attention_dropout: c.attention_probs_dropout_prob,
    };
    Ok(Box::new(Mpnet {
        word: nn::embedding(&emb / "word_embeddings", c.vocab_size, h, Default::default()),
        position: nn::embedding(&emb / "position_embeddings", c.max_position_embeddings, h, Default::default()),
        norm: nn::layer_norm(&emb / "LayerNorm", vec![h], nn::LayerNormConfig { eps: c.layer_norm_eps, ..Default::default() }),
        dropout: c.hidden_dropout_prob,
        layers: (0..c.num_hidden_layers).map(|i| PostNormLayer::new(&(root / "encoder" / "layer" / i), &NAMES, &shape)).collect(),
        relative_bias: nn::embedding(
            root / "encoder" / "relative_attention_bias",
            c.relative_attention_num_buckets,
            c.num_attention_heads,
            Default::default(),
        ),
        hidden: h,
        max_positions: c.max_position_embeddings,
    }))
}

struct Mpnet {
    word: nn::Embedding,
    position: nn::Embedding,
    norm: nn::LayerNorm,
    dropout: f64,
    layers: Vec<PostNormLayer>,
    relative_bias: nn::Embedding,
    hidden: i64,
    max_positions: i64,
}

/// The bucket of each (query, key) pair's signed distance, `[seq, seq]`, with the same float
/// operations as transformers so that bucket edges fall where they fall there.
fn relative_buckets(seq: i64, device: Device) -> Tensor {
    let context = Tensor::arange(seq, (Kind::Int64, device)).unsqueeze(1);
    let memory = Tensor::arange(seq, (Kind::Int64, device)).unsqueeze(0);
    buckets(&(context - memory))
}

/// The buckets of the distances from −(seq − 1) to seq − 1 (key − query), in that order.
fn buckets_by_distance(seq: i64, device: Device) -> Tensor {
    buckets(&Tensor::arange_start_step(seq - 1, -seq, -1, (Kind::Int64, device)))
}

/// transformers' `relative_position_bucket` of `n` = query − key.
fn buckets(n: &Tensor) -> Tensor {
    let half = BUCKETS / 2;
    let ret = n.lt(0).to_kind(Kind::Int64) * half;
    let n = n.abs();
    let max_exact = half / 2;
    let is_small = n.lt(max_exact);
    let large = ((n.to_kind(Kind::Float) / max_exact as f64).log() / (MAX_DISTANCE as f64 / max_exact as f64).ln()
        * (half - max_exact) as f64)
        .to_kind(Kind::Int64)
        + max_exact;
    let large = large.clamp_max(half - 1);
    ret + n.where_self(&is_small, &large)
}

impl Encoder for Mpnet {
    fn forward(&self, batch: &TokenBatch, train: bool, precision: Precision) -> Tensor {
        let seq = batch.input_ids.size()[1];
        let layout = TokenLayout::new(&batch.attention_mask);
        let positions = positions_after_padding(&batch.input_ids, PADDING_IDX);
        let x = self.word.forward(&layout.pack_ids(&batch.input_ids)) + self.position.forward(&layout.pack_ids(&positions));
        let compute = precision.kind();
        let mut x = dropout(&self.norm.forward(&x), self.dropout, train).to_kind(compute);
        // The bias depends on the distance only: the kernel reads it per distance, libtorch's
        // attention as [1, heads, seq, seq] + [batch, 1, 1, seq], bias and padding in one term.
        // Both are rounded to the compute kind, as the libtorch path always rounded its mask.
        let device = x.device();
        let by_distance =
            Lazy::new(|| DistanceBias::new(&self.relative_bias.forward(&buckets_by_distance(seq, device)).to_kind(compute).tr()));
        let additive = Lazy::new(|| {
            let bias = self.relative_bias.forward(&relative_buckets(seq, batch.attention_mask.device())).permute([2, 0, 1]).unsqueeze(0);
            bias.to_kind(compute) + padding_mask(&batch.attention_mask, compute)
        });
        let mask = AttentionMask::PositionBias { by_distance: &by_distance, additive: &additive };
        for layer in &self.layers {
            x = layer.forward(&x, &layout, mask, train, precision);
        }
        layout.unpack(&x).to_kind(Kind::Float)
    }

    fn hidden_size(&self) -> i64 {
        self.hidden
    }

    fn max_positions(&self) -> usize {
        (self.max_positions - PADDING_IDX - 1).max(0) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_transformers() {
        // Values from transformers' MPNetEncoder.relative_position_bucket on the same distances.
        let b = relative_buckets(300, Device::Cpu);
        let row = |i: i64| Vec::<i64>::try_from(b.get(i)).unwrap();
        let r0 = row(0);
        // Keys after the query use the upper half: exact distances up to 7, then logarithmic buckets
        // up to 128 tokens away, then the last bucket.
        assert_eq!(&r0[..10], &[0, 17, 18, 19, 20, 21, 22, 23, 24, 24]);
        assert_eq!((r0[15], r0[16], r0[32], r0[127], r0[128], r0[299]), (25, 26, 28, 31, 31, 31));
        // Keys before it, the lower half.
        let r200 = row(200);
        assert_eq!((r200[199], r200[192], r200[0]), (1, 8, 15));
    }

    #[test]
    fn buckets_by_distance_are_the_rows_of_the_full_grid() {
        let seq = 300;
        let grid = relative_buckets(seq, Device::Cpu);
        let by_distance = Vec::<i64>::try_from(buckets_by_distance(seq, Device::Cpu)).unwrap();
        assert_eq!(by_distance.len(), 2 * seq as usize - 1);
        for i in [0, 1, 7, 150, 299] {
            let row = Vec::<i64>::try_from(grid.get(i)).unwrap();
            for (j, bucket) in row.iter().enumerate() {
                assert_eq!(by_distance[seq as usize - 1 + j - i as usize], *bucket, "query {i}, key {j}");
            }
        }
    }
}
