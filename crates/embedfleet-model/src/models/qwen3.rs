//! Qwen3 (Qwen3-Embedding-0.6B, 4B, 8B): a causal decoder used as an encoder. Pre-norm layers with
//! RMSNorm, grouped-query attention whose queries and keys are RMS-normalised per head before the
//! rotary embedding (Qwen3's addition over Qwen2), a SwiGLU feed-forward block, and a final norm.
//! transformers' Qwen3Model (sdpa path) is the reference: position ids are 0..seq whatever the
//! padding (the tokenizer pads on the left, so a padded row's first real token is not at 0), and
//! the causal mask is combined with the padding mask only when some row is padded.

use super::{Encoder, Family};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::layers::{Rotary, RotaryAngles, check_heads, linear};
use crate::precision::{Precision, PrecisionKind};
use crate::tokenize::TokenBatch;
use serde::Deserialize;
use serde_json::Value;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

pub const FAMILY: Family = Family {
    model_type: "qwen3",
    example: "Qwen/Qwen3-Embedding-0.6B",
    architecture: "Qwen3Model",
    // Qwen3ForCausalLM and the task heads keep the decoder under `model.`; their lm_head / score
    // weights are not read.
    checkpoint_prefixes: &["model."],
    passthrough: &[],
    build,
};

/// config.json as the hub's checkpoints write it (`rope_theta`, `rope_scaling`) or as transformers 5
/// saves it (`rope_parameters`). Defaults are Qwen3Config's, which are not always the obvious ones:
/// an absent `head_dim` is 128 and an absent `num_key_value_heads` is 32 (null means one per head).
#[derive(Debug, Deserialize)]
struct Qwen3Config {
    vocab_size: i64,
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    #[serde(default = "default_kv_heads")]
    num_key_value_heads: Option<i64>,
    #[serde(default = "default_head_dim")]
    head_dim: Option<i64>,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: i64,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    attention_dropout: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<Value>,
    #[serde(default)]
    rope_parameters: Option<Value>,
    #[serde(default)]
    use_sliding_window: bool,
    #[serde(default)]
    sliding_window: Option<i64>,
    #[serde(default = "default_max_window_layers")]
    max_window_layers: i64,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default = "default_causal")]
    is_causal: bool,
    #[serde(default)]
    pad_token_id: Option<i64>,
}

fn default_kv_heads() -> Option<i64> {
    Some(32)
}
fn default_head_dim() -> Option<i64> {
    Some(128)
}
fn default_act() -> String {
    "silu".into()
}
fn default_max_positions() -> i64 {
    32768
}
fn default_eps() -> f64 {
    1e-6
}
fn default_max_window_layers() -> i64 {
    28
}
fn default_causal() -> bool {
    true
}

fn unsupported(what: String) -> ModelError {
    ModelError::UnsupportedArchitecture {
        model_type: format!("qwen3 with {what}"),
        supported: "qwen3 with causal full attention in every layer, default rotary embeddings and silu".into(),
    }
}

impl Qwen3Config {
    /// The rotary base as transformers 5 resolves it: `rope_scaling` (when set) or `rope_parameters`
    /// first, then the top-level `rope_theta`, then 10,000.
    fn rope_theta(&self) -> Result<f64, ModelError> {
        let params =
            [&self.rope_scaling, &self.rope_parameters].into_iter().flatten().find(|v| v.as_object().is_some_and(|o| !o.is_empty()));
        if let Some(p) = params {
            let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
            if kind != "default" {
                return Err(unsupported(format!("rope_type {kind}")));
            }
        }
        let theta = params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).or(self.rope_theta).unwrap_or(10_000.0);
        if theta.is_nan() || theta <= 0.0 {
            return Err(ModelError::InvalidConfig(format!("rope_theta is {theta}")));
        }
        Ok(theta)
    }

    /// Refuses sliding-window layers: Qwen3-Embedding has none, and a window would change which
    /// keys each query sees.
    fn check_full_attention(&self) -> Result<(), ModelError> {
        if let Some(types) = &self.layer_types {
            if types.len() as i64 != self.num_hidden_layers {
                return Err(ModelError::InvalidConfig(format!(
                    "layer_types has {} entries for {} layers",
                    types.len(),
                    self.num_hidden_layers
                )));
            }
            if let Some(other) = types.iter().find(|t| *t != "full_attention") {
                return Err(unsupported(format!("{other} layers")));
            }
        } else if self.use_sliding_window && self.sliding_window.is_some() && self.max_window_layers < self.num_hidden_layers {
            return Err(unsupported("sliding-window attention (use_sliding_window)".into()));
        }
        if !self.is_causal {
            return Err(unsupported("bidirectional attention (is_causal: false)".into()));
        }
        Ok(())
    }
}

fn build(root: &nn::Path, config: &ModelConfig) -> Result<Box<dyn Encoder>, ModelError> {
    let c: Qwen3Config = config.parse()?;
    if !matches!(c.hidden_act.as_str(), "silu" | "swish") {
        return Err(unsupported(format!("hidden_act {}", c.hidden_act)));
    }
    c.check_full_attention()?;
    let heads = c.num_attention_heads;
    let kv_heads = c.num_key_value_heads.unwrap_or(heads);
    // Qwen3Config always has a head_dim; transformers falls back to hidden / heads only if it is null.
    let head_dim = match c.head_dim {
        Some(d) => d,
        None => {
            check_heads(c.hidden_size, heads)?;
            c.hidden_size / heads
        }
    };
    for (name, v) in [("vocab_size", c.vocab_size), ("hidden_size", c.hidden_size), ("intermediate_size", c.intermediate_size)] {
        if v <= 0 {
            return Err(ModelError::InvalidConfig(format!("{name} is {v}")));
        }
    }
    if c.num_hidden_layers < 0 {
        return Err(ModelError::InvalidConfig(format!("num_hidden_layers is {}", c.num_hidden_layers)));
    }
    if heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 {
        return Err(ModelError::InvalidConfig(format!("num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")));
    }
    if head_dim <= 0 || head_dim % 2 != 0 {
        return Err(ModelError::InvalidConfig(format!("head_dim {head_dim} is not positive and even; rotary embeddings rotate pairs")));
    }
    let theta = c.rope_theta()?;
    let h = c.hidden_size;
    let eps = c.rms_norm_eps;
    let lin = |p: nn::Path, i, o, bias| nn::linear(p, i, o, nn::LinearConfig { bias, ..Default::default() });
    let layers = (0..c.num_hidden_layers)
        .map(|i| {
            let p = root / "layers" / i;
            let attn = &p / "self_attn";
            let mlp = &p / "mlp";
            Layer {
                input_norm: RmsNorm::new(&p / "input_layernorm", h, eps),
                q_proj: lin(&attn / "q_proj", h, heads * head_dim, c.attention_bias),
                k_proj: lin(&attn / "k_proj", h, kv_heads * head_dim, c.attention_bias),
                v_proj: lin(&attn / "v_proj", h, kv_heads * head_dim, c.attention_bias),
                o_proj: lin(&attn / "o_proj", heads * head_dim, h, c.attention_bias),
                q_norm: RmsNorm::new(&attn / "q_norm", head_dim, eps),
                k_norm: RmsNorm::new(&attn / "k_norm", head_dim, eps),
                post_norm: RmsNorm::new(&p / "post_attention_layernorm", h, eps),
                gate_proj: lin(&mlp / "gate_proj", h, c.intermediate_size, false),
                up_proj: lin(&mlp / "up_proj", h, c.intermediate_size, false),
                down_proj: lin(&mlp / "down_proj", c.intermediate_size, h, false),
            }
        })
        .collect();
    let padding_idx = c.pad_token_id.filter(|&p| (0..c.vocab_size).contains(&p)).unwrap_or(-1);
    Ok(Box::new(Qwen3 {
        embed_tokens: nn::embedding(root / "embed_tokens", c.vocab_size, h, nn::EmbeddingConfig { padding_idx, ..Default::default() }),
        layers,
        norm: RmsNorm::new(root / "norm", h, eps),
        rotary: Rotary::new(head_dim, theta, root.device()),
        heads,
        kv_heads,
        head_dim,
        attention_dropout: c.attention_dropout,
        hidden: h,
        max_positions: c.max_position_embeddings,
    }))
}

/// Qwen3RMSNorm: `weight * x / sqrt(mean(x²) + eps)` over the last dimension, always in fp32.
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(p: nn::Path, size: i64, eps: f64) -> Self {
        RmsNorm { weight: p.var("weight", &[size], nn::Init::Const(1.0)), eps }
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        // The same operations in the same order as transformers, so fp32 results agree to the last bits.
        let x = x.to_kind(Kind::Float);
        let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, None::<Kind>);
        &self.weight * (x * (variance + self.eps).rsqrt())
    }
}

#[derive(Debug)]
struct Layer {
    input_norm: RmsNorm,
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    o_proj: nn::Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    post_norm: RmsNorm,
    gate_proj: nn::Linear,
    up_proj: nn::Linear,
    down_proj: nn::Linear,
}

struct Qwen3 {
    embed_tokens: nn::Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    rotary: Rotary,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    attention_dropout: f64,
    hidden: i64,
    max_positions: i64,
}

impl Qwen3 {
    fn layer(&self, layer: &Layer, x: &Tensor, mask: Option<&Tensor>, rope: &RotaryAngles, train: bool, precision: Precision) -> Tensor {
        let (batch, seq, _) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let compute = precision.kind();
        let normed = layer.input_norm.forward(x).to_kind(compute);
        let split = |t: Tensor, n: i64| t.view([batch, seq, n, self.head_dim]);
        // Queries and keys: per-head RMSNorm and the rotation in fp32, as transformers does under
        // autocast (the norm's fp32 weight promotes them), then the compute kind for attention.
        let q = rope.apply(&layer.q_norm.forward(&split(linear(&layer.q_proj, &normed, compute), self.heads)).transpose(1, 2));
        let k = rope.apply(&layer.k_norm.forward(&split(linear(&layer.k_proj, &normed, compute), self.kv_heads)).transpose(1, 2));
        let (q, mut k) = (q.to_kind(compute), k.to_kind(compute));
        let mut v = split(linear(&layer.v_proj, &normed, compute), self.kv_heads).transpose(1, 2);
        let groups = self.heads / self.kv_heads;
        // As transformers' sdpa path: SDPA's own grouped-query support when there is no mask,
        // the key and value heads repeated when there is one.
        let gqa = groups > 1 && mask.is_none();
        if groups > 1 && mask.is_some() {
            k = repeat_kv(&k, groups);
            v = repeat_kv(&v, groups);
        }
        let dropout = if train { self.attention_dropout } else { 0.0 };
        let causal = mask.is_none() && seq > 1;
        let scale = (self.head_dim as f64).powf(-0.5);
        let ctx = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, dropout, causal, scale, gqa).transpose(1, 2).contiguous().view([
            batch,
            seq,
            self.heads * self.head_dim,
        ]);
        let x = x + linear(&layer.o_proj, &ctx, compute).to_kind(Kind::Float);
        let normed = layer.post_norm.forward(&x).to_kind(compute);
        let gate = linear(&layer.gate_proj, &normed, compute).silu();
        let up = linear(&layer.up_proj, &normed, compute);
        &x + linear(&layer.down_proj, &(gate * up), compute).to_kind(Kind::Float)
    }
}

/// `[batch, kv_heads, seq, d]` → `[batch, kv_heads * n, seq, d]`, each key/value head repeated for
/// the n query heads that share it.
fn repeat_kv(x: &Tensor, n: i64) -> Tensor {
    let (batch, kv_heads, seq, d) = x.size4().expect("keys are [batch, heads, seq, head_dim]");
    x.unsqueeze(2).expand([batch, kv_heads, n, seq, d], false).reshape([batch, kv_heads * n, seq, d])
}

impl Encoder for Qwen3 {
    fn forward(&self, batch: &TokenBatch, train: bool, precision: Precision) -> Tensor {
        let (b, seq) = batch.input_ids.size2().expect("input ids are [batch, seq]");
        let device = batch.input_ids.device();
        let mut x = self.embed_tokens.forward(&batch.input_ids);

        // Boolean mask `[batch, 1, seq, seq]`, true where a query may attend a key: earlier or
        // the same position, and not padding. Padded queries (left padding) see no key at all;
        // SDPA gives them zeros, and nothing reads them. Without padding there is no mask and
        // SDPA's is_causal does the masking, as in transformers.
        let keys = batch.attention_mask.ne(0).view([b, 1, 1, seq]);
        // Passing the mask is always correct, so a failed read keeps it.
        let padded = i64::try_from(keys.logical_not().any().to_kind(Kind::Int64)).map_or(true, |n| n != 0);
        let mask = padded.then(|| {
            let idx = Tensor::arange(seq, (Kind::Int64, device));
            let causal = idx.unsqueeze(1).ge_tensor(&idx.unsqueeze(0)).view([1, 1, seq, seq]);
            causal.logical_and(&keys)
        });

        let rope = self.rotary.angles(seq, device);
        for layer in &self.layers {
            x = self.layer(layer, &x, mask.as_ref(), &rope, train, precision);
        }
        self.norm.forward(&x)
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

    fn config(extra: Value) -> Qwen3Config {
        let mut base = json!({
            "vocab_size": 64, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4
        });
        base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn defaults_are_qwen3configs() {
        let c = config(json!({}));
        assert_eq!((c.head_dim, c.num_key_value_heads, c.rms_norm_eps), (Some(128), Some(32), 1e-6));
        assert_eq!(c.rope_theta().unwrap(), 10_000.0);
        // null asks for the fallbacks: one key/value head per query head, head_dim hidden / heads.
        let nulls = config(json!({"num_key_value_heads": null, "head_dim": null}));
        assert_eq!((nulls.head_dim, nulls.num_key_value_heads), (None, None));
    }

    #[test]
    fn hub_and_transformers_5_rope_keys_agree() {
        let hub = config(json!({"rope_theta": 1_000_000.0, "rope_scaling": null}));
        let saved = config(json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0}}));
        assert_eq!(hub.rope_theta().unwrap(), 1_000_000.0);
        assert_eq!(saved.rope_theta().unwrap(), 1_000_000.0);
        let yarn = config(json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}));
        assert!(matches!(yarn.rope_theta(), Err(ModelError::UnsupportedArchitecture { .. })));
        let old_key = config(json!({"rope_scaling": {"type": "linear", "factor": 2.0}}));
        assert!(old_key.rope_theta().is_err());
    }

    #[test]
    fn sliding_windows_and_bidirectional_attention_are_refused() {
        let window = config(json!({"use_sliding_window": true, "sliding_window": 4096, "max_window_layers": 1}));
        let err = window.check_full_attention().unwrap_err().to_string();
        assert!(err.contains("sliding-window"), "{err}");
        // Qwen3-Embedding's own setting: the flag off, or every layer below max_window_layers.
        assert!(config(json!({"use_sliding_window": false, "sliding_window": null})).check_full_attention().is_ok());
        assert!(
            config(json!({"use_sliding_window": true, "sliding_window": 4096, "max_window_layers": 28})).check_full_attention().is_ok()
        );
        let types = config(json!({"layer_types": ["full_attention", "sliding_attention"]}));
        assert!(types.check_full_attention().unwrap_err().to_string().contains("sliding_attention"));
        assert!(config(json!({"is_causal": false})).check_full_attention().is_err());
    }

    #[test]
    fn bad_shapes_are_named() {
        let build_with = |extra: Value| {
            let mut base = json!({"model_type": "qwen3", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 24,
                                  "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4});
            base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let vs = nn::VarStore::new(Device::Cpu);
            build(&vs.root(), &ModelConfig::from_json(base).unwrap()).err().map(|e| e.to_string())
        };
        assert_eq!(build_with(json!({})), None);
        assert!(build_with(json!({"num_key_value_heads": 3})).unwrap().contains("num_key_value_heads 3"));
        assert!(build_with(json!({"head_dim": 5})).unwrap().contains("head_dim 5"));
        assert!(build_with(json!({"hidden_act": "gelu"})).unwrap().contains("hidden_act gelu"));
        let missing = ModelConfig::from_json(json!({"model_type": "qwen3", "vocab_size": 64, "hidden_size": 16})).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(build(&vs.root(), &missing).err().unwrap().to_string().contains("intermediate_size"));
    }

    #[test]
    fn padding_on_the_left_does_not_change_a_rows_last_state_much() {
        // Rotary attention depends only on relative positions, so a row shifted right by left
        // padding ends in (almost) the same state as the same row alone: a check that the padded
        // keys are masked and the causal mask is applied, independent of any fixture.
        let c = ModelConfig::from_json(json!({"model_type": "qwen3", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}))
        .unwrap();
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = build(&vs.root(), &c).unwrap();
        let batch = |ids: &[i64], mask: &[i64], rows: i64| TokenBatch {
            input_ids: Tensor::from_slice(ids).view([rows, -1]),
            token_type_ids: Tensor::zeros([rows, ids.len() as i64 / rows], (Kind::Int64, Device::Cpu)),
            attention_mask: Tensor::from_slice(mask).view([rows, -1]),
            prompt_length: None,
        };
        let alone = model.forward(&batch(&[5, 6, 7], &[1, 1, 1], 1), false, Precision::Fp32);
        let padded = model.forward(&batch(&[0, 0, 5, 6, 7, 1, 2, 3, 4, 9], &[0, 0, 1, 1, 1, 1, 1, 1, 1, 1], 2), false, Precision::Fp32);
        let diff = f64::try_from((alone.select(1, 2).select(0, 0) - padded.select(1, 4).select(0, 0)).abs().max()).unwrap();
        assert!(diff < 1e-4, "left padding changed the last state by {diff}");
        // And causality: the first token's state does not depend on what follows it.
        let first = model.forward(&batch(&[5], &[1], 1), false, Precision::Fp32);
        let diff = f64::try_from((first.select(1, 0) - alone.select(1, 0)).abs().max()).unwrap();
        assert!(diff < 1e-5, "a later token changed an earlier state by {diff}");
    }
}
