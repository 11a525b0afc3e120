//! Building blocks the encoder families share: the post-norm transformer layer of BERT, MPNet and
//! XLM-RoBERTa (they differ only in its parameter names), mixed-precision linear layers, padding
//! masks, RoBERTa-style position ids, and the rotary position embeddings of ModernBERT and Qwen3.

use crate::precision::{Precision, PrecisionKind};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// Where a layer's attention parameters sit under `encoder.layer.N` in a checkpoint.
pub struct AttentionNames {
    pub query: &'static [&'static str],
    pub key: &'static [&'static str],
    pub value: &'static [&'static str],
    pub output: &'static [&'static str],
    pub norm: &'static [&'static str],
}

fn at<'a>(root: &nn::Path<'a>, segments: &[&str]) -> nn::Path<'a> {
    let (first, rest) = segments.split_first().expect("parameter names have at least one segment");
    rest.iter().fold(root / *first, |p, s| &p / *s)
}

/// The shape every family's layer shares.
pub struct LayerShape {
    pub hidden: i64,
    pub intermediate: i64,
    pub heads: i64,
    pub layer_norm_eps: f64,
    pub activation: String,
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
}

/// Self-attention then a feed-forward block, each followed by dropout, a residual and LayerNorm.
#[derive(Debug)]
pub struct PostNormLayer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attn_out: nn::Linear,
    attn_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    out_norm: nn::LayerNorm,
    heads: i64,
    head_dim: i64,
    activation: String,
    hidden_dropout: f64,
    attention_dropout: f64,
}

impl PostNormLayer {
    pub fn new(layer: &nn::Path, names: &AttentionNames, shape: &LayerShape) -> Self {
        let h = shape.hidden;
        let ln = nn::LayerNormConfig { eps: shape.layer_norm_eps, ..Default::default() };
        let linear = |p: nn::Path, i, o| nn::linear(p, i, o, Default::default());
        PostNormLayer {
            query: linear(at(layer, names.query), h, h),
            key: linear(at(layer, names.key), h, h),
            value: linear(at(layer, names.value), h, h),
            attn_out: linear(at(layer, names.output), h, h),
            attn_norm: nn::layer_norm(at(layer, names.norm), vec![h], ln),
            intermediate: linear(layer / "intermediate" / "dense", h, shape.intermediate),
            output: linear(layer / "output" / "dense", shape.intermediate, h),
            out_norm: nn::layer_norm(layer / "output" / "LayerNorm", vec![h], ln),
            heads: shape.heads,
            head_dim: h / shape.heads,
            activation: shape.activation.clone(),
            hidden_dropout: shape.hidden_dropout,
            attention_dropout: shape.attention_dropout,
        }
    }

    /// `x` `[batch, seq, hidden]` fp32; `attn_mask` is added to the attention scores (padding,
    /// relative position bias), in the compute kind. With bf16 the matrix products run in bf16 while
    /// residuals and layer norms stay fp32, as PyTorch autocast does.
    pub fn forward(&self, x: &Tensor, attn_mask: &Tensor, train: bool, precision: Precision) -> Tensor {
        let (batch, seq, _) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let compute = precision.kind();
        let split = |t: Tensor| t.view([batch, seq, self.heads, self.head_dim]).transpose(1, 2);
        let xc = x.to_kind(compute);
        let q = split(linear(&self.query, &xc, compute));
        let k = split(linear(&self.key, &xc, compute));
        let v = split(linear(&self.value, &xc, compute));
        let dropout = if train { self.attention_dropout } else { 0.0 };
        let ctx = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(attn_mask), dropout, false, None, false)
            .transpose(1, 2)
            .contiguous()
            .view([batch, seq, self.heads * self.head_dim]);
        let attn = linear(&self.attn_out, &ctx, compute).to_kind(Kind::Float).dropout(self.hidden_dropout, train);
        let x = self.attn_norm.forward(&(attn + x));
        let inter = activation(&self.activation, &linear(&self.intermediate, &x.to_kind(compute), compute));
        let out = linear(&self.output, &inter, compute).to_kind(Kind::Float).dropout(self.hidden_dropout, train);
        self.out_norm.forward(&(out + &x))
    }
}

/// Activations the post-norm families use, by their transformers names.
pub const ACTIVATIONS: &[&str] = &["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"];

pub fn check_activation(model_type: &str, name: &str) -> Result<(), crate::ModelError> {
    if ACTIVATIONS.contains(&name) {
        return Ok(());
    }
    Err(crate::ModelError::UnsupportedArchitecture {
        model_type: format!("{model_type} with activation {name}"),
        supported: format!("{model_type} with {}", ACTIVATIONS.join(", ")),
    })
}

pub fn check_heads(hidden: i64, heads: i64) -> Result<(), crate::ModelError> {
    if heads <= 0 || hidden % heads != 0 {
        return Err(crate::ModelError::InvalidConfig(format!(
            "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
        )));
    }
    Ok(())
}

pub fn linear(layer: &nn::Linear, x: &Tensor, kind: Kind) -> Tensor {
    if kind == Kind::Float {
        return layer.forward(x);
    }
    let bias = layer.bs.as_ref().map(|b| b.to_kind(kind));
    x.linear(&layer.ws.to_kind(kind), bias.as_ref())
}

pub fn activation(name: &str, x: &Tensor) -> Tensor {
    match name {
        "relu" => x.relu(),
        "gelu_new" | "gelu_pytorch_tanh" => x.gelu("tanh"),
        _ => x.gelu("none"),
    }
}

/// The most negative finite value of a kind, which transformers adds for masked positions.
pub fn min_value(kind: Kind) -> f64 {
    match kind {
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Half => -65504.0,
        _ => f32::MIN as f64,
    }
}

/// Additive mask `[batch, 1, 1, seq]`: 0 where attended, the most negative value where padded.
pub fn padding_mask(attention_mask: &Tensor, kind: Kind) -> Tensor {
    let (batch, seq) = attention_mask.size2().expect("attention mask is [batch, seq]");
    (attention_mask.to_kind(kind).ones_like() - attention_mask.to_kind(kind)).view([batch, 1, 1, seq]) * min_value(kind)
}

/// RoBERTa's position ids (fairseq's `make_positions`): real tokens count up from `padding_idx + 1`,
/// pad tokens get `padding_idx`. They follow the token ids, not the attention mask.
pub fn positions_after_padding(input_ids: &Tensor, padding_idx: i64) -> Tensor {
    let real = input_ids.ne(padding_idx).to_kind(Kind::Int);
    (real.cumsum(1, Kind::Int) * &real).to_kind(Kind::Int64) + padding_idx
}

/// transformers' default rotary position embeddings (no scaling), for one rotary base.
#[derive(Debug)]
pub struct Rotary {
    inv_freq: Tensor,
}

/// cos and sin `[1, 1, seq, head_dim]` in fp32 for positions 0..seq.
pub struct RotaryAngles {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    /// `1 / theta^(2i/d)` in fp32, computed as torch does so the angles match bit for bit.
    pub fn new(head_dim: i64, theta: f64, device: Device) -> Self {
        let exponents = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float) / head_dim as f64;
        Rotary { inv_freq: Tensor::pow_scalar(theta, &exponents).reciprocal().to_device(device) }
    }

    /// The angles of positions 0..seq. The halves repeat, as transformers' rotate_half pairs
    /// dimension i with i + head_dim/2.
    pub fn angles(&self, seq: i64, device: Device) -> RotaryAngles {
        let positions = Tensor::arange(seq, (Kind::Float, device)).unsqueeze(1);
        let freqs = positions * self.inv_freq.to_device(device).unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(0).unsqueeze(0);
        RotaryAngles { cos: emb.cos(), sin: emb.sin() }
    }
}

impl RotaryAngles {
    /// Rotates `[batch, heads, seq, head_dim]` in fp32 and returns to the input's kind, as
    /// apply_rotary_pos_emb does under bf16.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        (&xf * &self.cos + rotate_half(&xf) * &self.sin).to_kind(x.kind())
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let (x1, x2) = (x.narrow(-1, 0, half), x.narrow(-1, half, half));
    Tensor::cat(&[&x2.neg(), &x1], -1)
}
