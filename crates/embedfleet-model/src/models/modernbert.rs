//! ModernBERT (gte-modernbert-base, modernbert-embed-base): pre-norm layers with rotary position
//! embeddings, GeGLU feed-forward blocks, usually no biases, and attention that alternates between
//! global layers and local ones that see only a sliding window of neighbours, each kind with its own
//! rotary base. transformers' ModernBertModel (sdpa path, no unpadding) is the reference: padded
//! keys are masked out of every layer, padded queries are computed and then ignored by pooling.

use super::{Encoder, Family};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::layers::{Rotary, RotaryAngles, activation, check_activation, check_heads, linear};
use crate::precision::{Precision, PrecisionKind};
use crate::tokenize::TokenBatch;
use serde::Deserialize;
use std::collections::HashMap;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

pub const FAMILY: Family = Family {
    model_type: "modernbert",
    example: "Alibaba-NLP/gte-modernbert-base",
    architecture: "ModernBertModel",
    // ModernBertForMaskedLM and the classification heads keep the encoder under `model.`.
    checkpoint_prefixes: &["model."],
    passthrough: &[],
    build,
};

const GLOBAL: &str = "full_attention";
const LOCAL: &str = "sliding_attention";

/// config.json as hub checkpoints write it (`global_attn_every_n_layers`, `global_rope_theta`,
/// `local_rope_theta`) or as transformers 5 saves it (`layer_types`, `rope_parameters`); the newer
/// keys win where both are present, as in ModernBertConfig.
#[derive(Debug, Deserialize)]
struct ModernBertConfig {
    vocab_size: i64,
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    #[serde(default = "default_act")]
    hidden_activation: String,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: i64,
    #[serde(default = "default_eps")]
    norm_eps: f64,
    #[serde(default)]
    norm_bias: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    attention_dropout: f64,
    #[serde(default)]
    embedding_dropout: f64,
    #[serde(default)]
    mlp_dropout: f64,
    #[serde(default = "default_local_attention")]
    local_attention: i64,
    #[serde(default = "default_every_n")]
    global_attn_every_n_layers: i64,
    #[serde(default)]
    global_rope_theta: Option<f64>,
    #[serde(default)]
    local_rope_theta: Option<f64>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    rope_parameters: Option<HashMap<String, Option<RopeParameters>>>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pad_token_id: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct RopeParameters {
    #[serde(default)]
    rope_type: Option<String>,
    #[serde(default)]
    rope_theta: Option<f64>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_max_positions() -> i64 {
    8192
}
fn default_eps() -> f64 {
    1e-5
}
fn default_local_attention() -> i64 {
    128
}
fn default_every_n() -> i64 {
    3
}

fn unsupported(what: String) -> ModelError {
    ModelError::UnsupportedArchitecture {
        model_type: format!("modernbert with {what}"),
        supported: "modernbert with default rotary embeddings".into(),
    }
}

impl ModernBertConfig {
    /// Whether each layer is global, from `layer_types` or every n-th layer counting from 0.
    fn global_layers(&self) -> Result<Vec<bool>, ModelError> {
        if let Some(types) = &self.layer_types {
            if types.len() as i64 != self.num_hidden_layers {
                return Err(ModelError::InvalidConfig(format!(
                    "layer_types has {} entries for {} layers",
                    types.len(),
                    self.num_hidden_layers
                )));
            }
            return types
                .iter()
                .map(|t| match t.as_str() {
                    GLOBAL => Ok(true),
                    LOCAL => Ok(false),
                    other => Err(ModelError::InvalidConfig(format!("layer_types has '{other}'; ModernBERT has {GLOBAL} and {LOCAL}"))),
                })
                .collect();
        }
        let n = self.global_attn_every_n_layers;
        if n <= 0 {
            return Err(ModelError::InvalidConfig(format!("global_attn_every_n_layers is {n}")));
        }
        Ok((0..self.num_hidden_layers).map(|i| i % n == 0).collect())
    }

    /// The rotary base of one kind of layer.
    fn rope_theta(&self, layer_type: &str) -> Result<f64, ModelError> {
        if let Some(scaling) = &self.rope_scaling {
            return Err(unsupported(format!("rope_scaling {scaling}")));
        }
        let params = self.rope_parameters.as_ref().and_then(|p| p.get(layer_type)).and_then(Option::as_ref);
        if let Some(kind) = params.and_then(|p| p.rope_type.as_deref()).filter(|k| *k != "default") {
            return Err(unsupported(format!("rope_type {kind}")));
        }
        let legacy =
            if layer_type == GLOBAL { self.global_rope_theta.unwrap_or(160_000.0) } else { self.local_rope_theta.unwrap_or(10_000.0) };
        let theta = params.and_then(|p| p.rope_theta).unwrap_or(legacy);
        if theta.is_nan() || theta <= 0.0 {
            return Err(ModelError::InvalidConfig(format!("rope_theta of {layer_type} is {theta}")));
        }
        Ok(theta)
    }
}

fn build(root: &nn::Path, config: &ModelConfig) -> Result<Box<dyn Encoder>, ModelError> {
    let c: ModernBertConfig = config.parse()?;
    check_activation("modernbert", &c.hidden_activation)?;
    check_heads(c.hidden_size, c.num_attention_heads)?;
    let head_dim = c.hidden_size / c.num_attention_heads;
    if head_dim % 2 != 0 {
        return Err(ModelError::InvalidConfig(format!("head size {head_dim} is odd; rotary embeddings rotate pairs")));
    }
    if c.local_attention < 0 {
        return Err(ModelError::InvalidConfig(format!("local_attention is {}", c.local_attention)));
    }
    let global = c.global_layers()?;
    let (global_theta, local_theta) = (c.rope_theta(GLOBAL)?, c.rope_theta(LOCAL)?);
    let h = c.hidden_size;
    let norm = |p: nn::Path| Norm::new(p, h, c.norm_eps, c.norm_bias);
    let lin = |p: nn::Path, i, o, bias| nn::linear(p, i, o, nn::LinearConfig { bias, ..Default::default() });
    let emb = root / "embeddings";
    let padding_idx = c.pad_token_id.filter(|&p| (0..c.vocab_size).contains(&p)).unwrap_or(-1);
    let layers = global
        .iter()
        .enumerate()
        .map(|(i, &is_global)| {
            let p = root / "layers" / i;
            let attn = &p / "attn";
            let mlp = &p / "mlp";
            Layer {
                // transformers gives layer 0 an Identity here: the embeddings were just normalised.
                attn_norm: (i > 0).then(|| norm(&p / "attn_norm")),
                wqkv: lin(&attn / "Wqkv", h, 3 * h, c.attention_bias),
                wo: lin(&attn / "Wo", h, h, c.attention_bias),
                mlp_norm: norm(&p / "mlp_norm"),
                wi: lin(&mlp / "Wi", h, 2 * c.intermediate_size, c.mlp_bias),
                mlp_out: lin(&mlp / "Wo", c.intermediate_size, h, c.mlp_bias),
                global: is_global,
            }
        })
        .collect();
    Ok(Box::new(ModernBert {
        tok_embeddings: nn::embedding(&emb / "tok_embeddings", c.vocab_size, h, nn::EmbeddingConfig { padding_idx, ..Default::default() }),
        norm: norm(&emb / "norm"),
        layers,
        final_norm: norm(root / "final_norm"),
        heads: c.num_attention_heads,
        head_dim,
        // The window is ±local_attention/2 tokens, both ends included (transformers' sliding_window).
        half_window: c.local_attention / 2,
        global_rotary: Rotary::new(head_dim, global_theta, root.device()),
        local_rotary: Rotary::new(head_dim, local_theta, root.device()),
        activation: c.hidden_activation,
        embedding_dropout: c.embedding_dropout,
        attention_dropout: c.attention_dropout,
        mlp_dropout: c.mlp_dropout,
        hidden: h,
        max_positions: c.max_position_embeddings,
    }))
}

/// LayerNorm whose bias is optional (`norm_bias`), which tch's LayerNorm cannot express.
#[derive(Debug)]
struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl Norm {
    fn new(p: nn::Path, size: i64, eps: f64, bias: bool) -> Self {
        Norm {
            weight: p.var("weight", &[size], nn::Init::Const(1.0)),
            bias: bias.then(|| p.var("bias", &[size], nn::Init::Const(0.0))),
            eps,
        }
    }
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm([x.size().last().copied().unwrap_or(0)], Some(&self.weight), self.bias.as_ref(), self.eps, true)
    }
}

#[derive(Debug)]
struct Layer {
    attn_norm: Option<Norm>,
    wqkv: nn::Linear,
    wo: nn::Linear,
    mlp_norm: Norm,
    wi: nn::Linear,
    mlp_out: nn::Linear,
    global: bool,
}

struct ModernBert {
    tok_embeddings: nn::Embedding,
    norm: Norm,
    layers: Vec<Layer>,
    final_norm: Norm,
    heads: i64,
    head_dim: i64,
    half_window: i64,
    global_rotary: Rotary,
    local_rotary: Rotary,
    activation: String,
    embedding_dropout: f64,
    attention_dropout: f64,
    mlp_dropout: f64,
    hidden: i64,
    max_positions: i64,
}

impl ModernBert {
    fn layer(&self, layer: &Layer, x: &Tensor, mask: Option<&Tensor>, rope: &RotaryAngles, train: bool, precision: Precision) -> Tensor {
        let (batch, seq, _) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let compute = precision.kind();
        let normed = layer.attn_norm.as_ref().map_or_else(|| x.shallow_clone(), |n| n.forward(x));
        let qkv = linear(&layer.wqkv, &normed.to_kind(compute), compute).view([batch, seq, 3, self.heads, self.head_dim]);
        let part = |i: i64| qkv.select(2, i).transpose(1, 2);
        let (q, k, v) = (rope.apply(&part(0)), rope.apply(&part(1)), part(2));
        let dropout = if train { self.attention_dropout } else { 0.0 };
        let ctx = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, dropout, false, None, false).transpose(1, 2).contiguous().view([
            batch,
            seq,
            self.hidden,
        ]);
        let attn = linear(&layer.wo, &ctx, compute).to_kind(Kind::Float).dropout(self.attention_dropout, train);
        let x = x + attn;
        let wi = linear(&layer.wi, &layer.mlp_norm.forward(&x).to_kind(compute), compute);
        let gated = wi.chunk(2, -1);
        let inner = (activation(&self.activation, &gated[0]) * &gated[1]).dropout(self.mlp_dropout, train);
        let out = linear(&layer.mlp_out, &inner, compute).to_kind(Kind::Float);
        &x + out
    }
}

impl Encoder for ModernBert {
    fn forward(&self, batch: &TokenBatch, train: bool, precision: Precision) -> Tensor {
        let (b, seq) = batch.input_ids.size2().expect("input ids are [batch, seq]");
        let device = batch.input_ids.device();
        let mut x = self.norm.forward(&self.tok_embeddings.forward(&batch.input_ids)).dropout(self.embedding_dropout, train);

        // Boolean masks `[batch, 1, seq, seq]`, true where a query may attend a key: padded keys
        // never, and in local layers only keys within the window. As in transformers' sdpa path,
        // the global layers pass no mask when nothing is padded.
        let keys = batch.attention_mask.ne(0).view([b, 1, 1, seq]);
        // Passing the mask is always correct, so a failed read keeps it.
        let padded = i64::try_from(keys.logical_not().any().to_kind(Kind::Int64)).map_or(true, |n| n != 0);
        let global_mask = padded.then(|| keys.expand([b, 1, seq, seq], false));
        let idx = Tensor::arange(seq, (Kind::Int64, device));
        let near = (idx.unsqueeze(1) - idx.unsqueeze(0)).abs().le(self.half_window).view([1, 1, seq, seq]);
        let local_mask = keys.logical_and(&near);

        let global_rope = self.global_rotary.angles(seq, device);
        let local_rope = self.local_rotary.angles(seq, device);
        for layer in &self.layers {
            let (mask, rope) = if layer.global { (global_mask.as_ref(), &global_rope) } else { (Some(&local_mask), &local_rope) };
            x = self.layer(layer, &x, mask, rope, train, precision);
        }
        self.final_norm.forward(&x)
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
    use serde_json::json;
    use tch::Device;

    fn config(extra: serde_json::Value) -> ModernBertConfig {
        let mut base = json!({
            "vocab_size": 64, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 4, "num_attention_heads": 2
        });
        base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn hub_and_transformers_5_configs_give_the_same_layers() {
        let hub = config(json!({"global_attn_every_n_layers": 3, "global_rope_theta": 160000.0, "local_rope_theta": 10000.0}));
        let saved = config(json!({
            "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 160000.0},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
        }));
        for c in [&hub, &saved] {
            assert_eq!(c.global_layers().unwrap(), [true, false, false, true]);
            assert_eq!((c.rope_theta(GLOBAL).unwrap(), c.rope_theta(LOCAL).unwrap()), (160000.0, 10000.0));
        }
        // Defaults are transformers': every third layer global, bases 160,000 and 10,000.
        let bare = config(json!({}));
        assert_eq!(bare.global_layers().unwrap(), [true, false, false, true]);
        assert_eq!(bare.rope_theta(LOCAL).unwrap(), 10000.0);
    }

    #[test]
    fn unsupported_rope_and_bad_layer_types_are_errors() {
        let yarn = config(json!({"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1.0}}}));
        assert!(matches!(yarn.rope_theta(GLOBAL), Err(ModelError::UnsupportedArchitecture { .. })));
        let short = config(json!({"layer_types": ["full_attention"]}));
        assert!(matches!(short.global_layers(), Err(ModelError::InvalidConfig(_))));
        let zero = config(json!({"global_attn_every_n_layers": 0}));
        assert!(matches!(zero.global_layers(), Err(ModelError::InvalidConfig(_))));
    }

    #[test]
    fn a_missing_field_is_named() {
        let c = ModelConfig::from_json(json!({"model_type": "modernbert", "vocab_size": 64, "hidden_size": 16})).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let err = build(&vs.root(), &c).err().unwrap().to_string();
        assert!(err.contains("intermediate_size"), "{err}");
    }
}
