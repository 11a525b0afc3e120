//! Building blocks the encoder families share: the post-norm transformer layer of BERT, MPNet and
//! XLM-RoBERTa (they differ only in its parameter names), mixed-precision linear layers, padding
//! masks, RoBERTa-style position ids, and the rotary position embeddings of ModernBERT and Qwen3.

use crate::kernels::cpu_attention::{self, DistanceBias, Span};
pub mod dropout;

use crate::kernels::onednn;
use crate::precision::{Precision, PrecisionKind, cached};
use dropout::dropout;
use std::cell::OnceCell;
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

/// What a layer adds to its attention scores before the softmax.
#[derive(Clone, Copy)]
pub enum AttentionMask<'a> {
    /// Padding only (BERT, XLM-RoBERTa): `None` when the batch has none, else the additive mask
    /// of [`padding_mask`].
    Padding(Option<&'a Tensor>),
    /// Padding plus a bias by the key's distance from the query (MPNet's relative position bias):
    /// [`cpu_attention`] reads the bias by distance and skips the padding; libtorch's attention
    /// takes both as one `[batch, heads, seq, seq]` additive mask. Each is made when a layer first
    /// asks for it, so a forward makes only the one its path reads.
    PositionBias { by_distance: &'a Lazy<'a, DistanceBias>, additive: &'a Lazy<'a, Tensor> },
}

impl<'a> AttentionMask<'a> {
    fn additive(self) -> Option<&'a Tensor> {
        match self {
            AttentionMask::Padding(mask) => mask,
            AttentionMask::PositionBias { additive, .. } => Some(additive.get()),
        }
    }

    fn distance_bias(self) -> Option<&'a DistanceBias> {
        match self {
            AttentionMask::Padding(_) => None,
            AttentionMask::PositionBias { by_distance, .. } => Some(by_distance.get()),
        }
    }
}

/// A value made on first use, within the forward that holds it.
pub struct Lazy<'a, T> {
    value: OnceCell<T>,
    make: Box<dyn Fn() -> T + 'a>,
}

impl<'a, T> Lazy<'a, T> {
    pub fn new(make: impl Fn() -> T + 'a) -> Self {
        Lazy { value: OnceCell::new(), make: Box::new(make) }
    }

    fn get(&self) -> &T {
        self.value.get_or_init(|| (self.make)())
    }
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

    /// The query, key and value projections as one matrix product `[tokens, 3 × hidden]`: one
    /// large GEMM keeps the cores busier than three narrow ones.
    fn qkv(&self, x: &Tensor, kind: Kind, onednn: bool) -> Tensor {
        let (q, k, v) = (&self.query, &self.key, &self.value);
        let w = cached(&q.ws, "qkv.weight", kind, || Tensor::cat(&[&q.ws, &k.ws, &v.ws], 0).to_kind(kind));
        let b = match (&q.bs, &k.bs, &v.bs) {
            (Some(qb), Some(kb), Some(vb)) => Some(cached(qb, "qkv.bias", kind, || Tensor::cat(&[qb, kb, vb], 0).to_kind(kind))),
            _ => None,
        };
        if onednn {
            let packed = packed_weight(&q.ws, "qkv.onednn", kind, x, || w.shallow_clone());
            if let Some(out) = packed.and_then(|p| onednn::linear(x, &p, b.as_ref(), onednn::Activation::None).ok()) {
                return out;
            }
        }
        x.linear(&w, b.as_ref())
    }

    /// The feed-forward block's first product and its activation.
    fn intermediate(&self, x: &Tensor, compute: Kind, onednn: bool) -> Tensor {
        if onednn {
            let layer = &self.intermediate;
            let fused = match self.activation.as_str() {
                "relu" => onednn::Activation::Relu,
                "gelu_new" | "gelu_pytorch_tanh" => onednn::Activation::GeluTanh,
                _ => onednn::Activation::Gelu,
            };
            let packed = packed_weight(&layer.ws, "onednn", compute, x, || layer.ws.to_kind(compute));
            let bias = layer.bs.as_ref().map(|b| cached(b, "cast", compute, || b.to_kind(compute)));
            if let Some(out) = packed.and_then(|p| onednn::linear(x, &p, bias.as_ref(), fused).ok()) {
                return out;
            }
        }
        activation(&self.activation, &linear(&self.intermediate, x, compute))
    }

    /// `x` `[tokens, hidden]`, the real tokens of the batch `layout` describes, in the compute kind;
    /// `attn_mask` (padding, relative position bias) is added to the attention scores. With bf16
    /// everything runs in bf16 but the layer norms' statistics and parameters, which stay fp32
    /// (PyTorch's mixed layer norm): autocast also keeps the residual additions in fp32, which
    /// costs conversions and memory traffic at every layer and changed no embedding measurably
    /// (min cosine to fp32 0.99995 either way on MiniLM).
    pub fn forward(&self, x: &Tensor, layout: &TokenLayout, attn_mask: AttentionMask, train: bool, precision: Precision) -> Tensor {
        let compute = precision.kind();
        let x_compute = x.to_kind(compute);
        let onednn = onednn_serves(&x_compute, train);
        let qkv = self.qkv(&x_compute, compute, onednn);
        let ctx = match self.cpu_attention_spans(&qkv, layout, train) {
            // The kernel reads the token rows as they are, packed or not, and skips the padding.
            Some(spans) => cpu_attention::attend(&qkv, spans, self.heads as usize, self.head_dim as usize, attn_mask.distance_bias()),
            None => {
                let (batch, seq) = (layout.batch, layout.seq);
                let qkv = layout.unpack(&qkv).view([batch, seq, 3, self.heads, self.head_dim]).permute([2, 0, 3, 1, 4]);
                let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
                let ctx = attention(&q, &k, &v, attn_mask.additive(), self.attention_dropout, train).transpose(1, 2).contiguous().view([
                    batch,
                    seq,
                    self.heads * self.head_dim,
                ]);
                layout.pack(&ctx)
            }
        };
        let x = self.attn_norm.forward(&self.residual(&self.attn_out, &ctx, x, train, compute, onednn));
        let inter = self.intermediate(&x.to_kind(compute), compute, onednn);
        self.out_norm.forward(&self.residual(&self.output, &inter, &x, train, compute, onednn))
    }

    /// The sequences' rows when [`cpu_attention`] serves this call: bf16 inference on a CPU that
    /// has AVX-512 BF16, and heads a multiple of 32 wide.
    fn cpu_attention_spans<'l>(&self, qkv: &Tensor, layout: &'l TokenLayout, train: bool) -> Option<&'l [Span]> {
        let serves = !train
            && !qkv.requires_grad()
            && qkv.kind() == Kind::BFloat16
            && qkv.device() == Device::Cpu
            && cpu_attention::head_dim_supported(self.head_dim)
            && cpu_attention::cpu_supported()
            && cpu_attention::enabled();
        if serves { layout.spans() } else { None }
    }

    /// `residual + dropout(x Wᵀ + b)`. Without dropout, one product accumulates into `residual + b`:
    /// libtorch adds a bias by first copying it, broadcast, into the output, which costs a third of
    /// a narrow product's time; here that pass also does the residual addition.
    fn residual(&self, layer: &nn::Linear, x: &Tensor, residual: &Tensor, train: bool, compute: Kind, onednn: bool) -> Tensor {
        let stream = residual.kind();
        if (train && self.hidden_dropout > 0.0) || stream != compute {
            return dropout(&linear(layer, x, compute).to_kind(stream), self.hidden_dropout, train) + residual;
        }
        let w = cached(&layer.ws, "cast", compute, || layer.ws.to_kind(compute));
        let bias = layer.bs.as_ref().map(|b| cached(b, "cast", compute, || b.to_kind(compute)));
        if onednn {
            let packed = packed_weight(&layer.ws, "onednn", compute, x, || w.shallow_clone());
            if let Some(out) = packed.and_then(|p| onednn::linear_add(x, residual, &p, bias.as_ref()).ok()) {
                return out;
            }
        }
        let mut out = match &bias {
            Some(b) => residual + b,
            None => residual.copy(),
        };
        let _ = out.addmm_(x, &w.tr());
        out
    }
}

/// Whether the products of this forward go through oneDNN with packed weights: inference on the
/// CPU, in bf16 or fp32, inside an inference scope (which keeps the packed weights for the whole
/// encode call).
fn onednn_serves(x: &Tensor, train: bool) -> bool {
    !train
        && matches!(x.kind(), Kind::BFloat16 | Kind::Float)
        && x.device() == Device::Cpu
        && !x.requires_grad()
        && crate::precision::in_inference_scope()
        && onednn::available()
}

/// `weight` (as `make` casts it) packed for oneDNN, made once per inference scope; None if oneDNN
/// refused it, and the caller then uses libtorch's product.
fn packed_weight(weight: &Tensor, purpose: &'static str, kind: Kind, x: &Tensor, make: impl FnOnce() -> Tensor) -> Option<Tensor> {
    let rows = x.size().first().copied().unwrap_or(1);
    let packed = cached(weight, purpose, kind, || onednn::pack_weight(&make(), rows).unwrap_or_else(|_| Tensor::new()));
    packed.defined().then_some(packed)
}

/// Scaled dot-product attention `[batch, heads, seq, head_dim]` with an additive mask. Without
/// dropout, libtorch's fused kernel (flash attention on the CPU). With it, the CPU has no fused
/// kernel and libtorch's fallback draws its mask serially and guards the softmax against fully
/// masked rows (which the finite padding mask never makes), so the few steps are written out here.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 || q.device() != tch::Device::Cpu {
        let p = if train { p } else { 0.0 };
        return Tensor::scaled_dot_product_attention(q, k, v, mask, p, false, None, false);
    }
    let scale = 1.0 / (q.size()[3] as f64).sqrt();
    let scores = q.matmul(&k.transpose(-2, -1)) * scale;
    let scores = match mask {
        Some(mask) => scores + mask,
        None => scores,
    };
    let probs = dropout(&scores.softmax(-1, scores.kind()), p, train);
    probs.matmul(v)
}

/// Where the real tokens of a padded batch are.
///
/// A random training batch pads every text to its longest one. The token-wise work of a layer (the
/// projections, the feed-forward block, the norms: nearly all the FLOPs) is done on the real tokens
/// only, packed as `[tokens, hidden]`; attention alone runs on the padded `[batch, seq]` grid, where
/// the mask hides the padding. A batch with little padding is not packed: the copies in and out of
/// the grid would cost more than the padding does.
pub struct TokenLayout {
    pub batch: i64,
    pub seq: i64,
    /// Flat positions (`row × seq + column`) of the real tokens; None: every position is kept.
    real: Option<Tensor>,
    padded: bool,
    attention_mask: Tensor,
    /// Each sequence's rows in the token matrix, made on first use (see [`TokenLayout::spans`]).
    spans: std::sync::OnceLock<Option<Vec<Span>>>,
}

/// The share of padding from which a batch is packed (measured on MiniLM, bf16 and fp32, CPU).
pub const PACK_FROM_PADDING: f64 = 0.10;

/// [`PACK_FROM_PADDING`], or `EMBEDFLEET_UNPAD_FROM` (a share of padding; 1 never packs, 0 always
/// does) for benchmarks that compare both ways.
fn pack_from_padding() -> f64 {
    static VALUE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *VALUE.get_or_init(|| {
        std::env::var("EMBEDFLEET_UNPAD_FROM")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|v: &f64| (0.0..=1.0).contains(v))
            .unwrap_or(PACK_FROM_PADDING)
    })
}

impl TokenLayout {
    /// Whether any position of the batch is padding (without it, attention needs no padding mask,
    /// and libtorch's fused kernel runs faster without one).
    pub fn has_padding(&self) -> bool {
        self.padded
    }

    pub fn new(attention_mask: &Tensor) -> Self {
        Self::packing_from(attention_mask, pack_from_padding())
    }

    /// Packs when at least `threshold` of the grid is padding (and there is some).
    pub fn packing_from(attention_mask: &Tensor, threshold: f64) -> Self {
        let (batch, seq) = attention_mask.size2().expect("attention mask is [batch, seq]");
        let positions = (batch * seq).max(1);
        let real_tokens = i64::try_from(attention_mask.sum(Kind::Int64)).unwrap_or(positions);
        let padding = 1.0 - real_tokens as f64 / positions as f64;
        let real = (padding >= threshold && padding > 0.0).then(|| attention_mask.reshape([-1]).nonzero().squeeze_dim(1));
        TokenLayout { batch, seq, real, padded: padding > 0.0, attention_mask: attention_mask.shallow_clone(), spans: Default::default() }
    }

    /// Where each sequence's real tokens sit among the rows the layers see: one after another
    /// when packed, at `row × seq` onwards when not. None when a row's real tokens are not one
    /// run (the mask then is not plain padding).
    pub fn spans(&self) -> Option<&[Span]> {
        self.spans
            .get_or_init(|| {
                let mask = Vec::<i64>::try_from(self.attention_mask.to_kind(Kind::Int64).reshape([-1])).ok()?;
                let seq = self.seq as usize;
                let mut spans = Vec::with_capacity(self.batch as usize);
                let mut packed_start = 0;
                for (b, row) in mask.chunks(seq.max(1)).enumerate() {
                    let first = row.iter().position(|&m| m != 0).unwrap_or(0);
                    let len = row.iter().filter(|&&m| m != 0).count();
                    if row[first..first + len].contains(&0) {
                        return None;
                    }
                    let start = if self.real.is_some() { packed_start } else { b * seq + first };
                    packed_start += len;
                    spans.push(Span { start, len });
                }
                Some(spans)
            })
            .as_deref()
    }

    /// `[batch, seq, …]` → `[tokens, …]`.
    pub fn pack(&self, x: &Tensor) -> Tensor {
        let flat = x.flatten(0, 1);
        match &self.real {
            Some(real) => flat.index_select(0, real),
            None => flat,
        }
    }

    /// `[tokens, width]` → `[batch, seq, width]`, zeros at the padding.
    pub fn unpack(&self, x: &Tensor) -> Tensor {
        let width = x.size()[1];
        match &self.real {
            Some(real) => Tensor::zeros([self.batch * self.seq, width], (x.kind(), x.device()))
                .index_copy(0, real, x)
                .view([self.batch, self.seq, width]),
            None => x.view([self.batch, self.seq, width]),
        }
    }

    #[cfg(test)]
    pub fn is_packed(&self) -> bool {
        self.real.is_some()
    }

    /// Ids or positions `[batch or 1, seq]` as `[tokens]`.
    pub fn pack_ids(&self, ids: &Tensor) -> Tensor {
        self.pack(&ids.expand([self.batch, self.seq], false).unsqueeze(-1)).squeeze_dim(1)
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
        return Err(crate::ModelError::InvalidConfig(format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}")));
    }
    Ok(())
}

pub fn linear(layer: &nn::Linear, x: &Tensor, kind: Kind) -> Tensor {
    if kind == Kind::Float {
        return layer.forward(x);
    }
    let bias = layer.bs.as_ref().map(|b| cached(b, "cast", kind, || b.to_kind(kind)));
    x.linear(&cached(&layer.ws, "cast", kind, || layer.ws.to_kind(kind)), bias.as_ref())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_the_real_tokens_in_order_and_zeros_the_padding() {
        let mask = Tensor::from_slice2(&[[1i64, 1, 1, 0], [1, 0, 0, 0], [0, 1, 1, 1]]);
        let layout = TokenLayout::packing_from(&mask, 0.1);
        assert!(layout.is_packed());
        let x = Tensor::arange(24, (Kind::Float, tch::Device::Cpu)).view([3, 4, 2]);
        let packed = layout.pack(&x);
        assert_eq!(packed.size(), [7, 2]);
        let firsts: Vec<f32> = Vec::try_from(packed.select(1, 0)).unwrap();
        assert_eq!(firsts, [0.0, 2.0, 4.0, 8.0, 18.0, 20.0, 22.0]);
        let back = layout.unpack(&packed);
        let expected = &x * mask.unsqueeze(-1).to_kind(Kind::Float);
        assert!(back.equal(&expected));
        let ids = layout.pack_ids(&Tensor::arange(4, (Kind::Int64, tch::Device::Cpu)).unsqueeze(0));
        assert_eq!(Vec::<i64>::try_from(ids).unwrap(), [0, 1, 2, 0, 1, 2, 3]);
    }

    #[test]
    fn a_batch_without_enough_padding_is_not_packed() {
        let mask = Tensor::from_slice2(&[[1i64; 20], [1; 20]]);
        assert!(!TokenLayout::packing_from(&mask, 0.0).is_packed(), "no padding: nothing to pack");
        let mut row = [1i64; 20];
        row[19] = 0;
        let mask = Tensor::from_slice2(&[[1i64; 20], row]);
        assert!(!TokenLayout::packing_from(&mask, 0.1).is_packed(), "2.5 % padding");
        assert!(TokenLayout::packing_from(&mask, 0.0).is_packed());
        let layout = TokenLayout::packing_from(&mask, 1.0);
        let x = Tensor::ones([2, 20, 3], (Kind::Float, tch::Device::Cpu));
        assert_eq!(layout.pack(&x).size(), [40, 3]);
        assert_eq!(layout.unpack(&layout.pack(&x)).size(), [2, 20, 3]);
    }
}
