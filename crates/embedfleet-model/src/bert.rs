//! A BERT encoder in tch, named so its variables match the Hugging Face checkpoint keys
//! (`embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.weight`, …).

use crate::config::BertConfig;
use crate::precision::{Precision, PrecisionKind};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

#[derive(Debug)]
struct Embeddings {
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: nn::Embedding,
    norm: nn::LayerNorm,
    dropout: f64,
}

#[derive(Debug)]
struct Layer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attn_out: nn::Linear,
    attn_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    out_norm: nn::LayerNorm,
}

#[derive(Debug)]
pub struct Bert {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    heads: i64,
    head_dim: i64,
    activation: String,
    hidden_dropout: f64,
    attention_dropout: f64,
}

impl Bert {
    pub fn new(root: &nn::Path, config: &BertConfig) -> Self {
        let h = config.hidden_size;
        let ln = nn::LayerNormConfig { eps: config.layer_norm_eps, ..Default::default() };
        let emb = root / "embeddings";
        let embeddings = Embeddings {
            word: nn::embedding(&emb / "word_embeddings", config.vocab_size, h, Default::default()),
            position: nn::embedding(&emb / "position_embeddings", config.max_position_embeddings, h, Default::default()),
            token_type: nn::embedding(&emb / "token_type_embeddings", config.type_vocab_size, h, Default::default()),
            norm: nn::layer_norm(&emb / "LayerNorm", vec![h], ln),
            dropout: config.hidden_dropout_prob,
        };
        let linear = |p: nn::Path, i, o| nn::linear(p, i, o, Default::default());
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = root / "encoder" / "layer" / i;
                let att = &l / "attention";
                Layer {
                    query: linear(&att / "self" / "query", h, h),
                    key: linear(&att / "self" / "key", h, h),
                    value: linear(&att / "self" / "value", h, h),
                    attn_out: linear(&att / "output" / "dense", h, h),
                    attn_norm: nn::layer_norm(&att / "output" / "LayerNorm", vec![h], ln),
                    intermediate: linear(&l / "intermediate" / "dense", h, config.intermediate_size),
                    output: linear(&l / "output" / "dense", config.intermediate_size, h),
                    out_norm: nn::layer_norm(&l / "output" / "LayerNorm", vec![h], ln),
                }
            })
            .collect();
        Bert {
            embeddings,
            layers,
            heads: config.num_attention_heads,
            head_dim: h / config.num_attention_heads,
            activation: config.hidden_act.clone(),
            hidden_dropout: config.hidden_dropout_prob,
            attention_dropout: config.attention_probs_dropout_prob,
        }
    }

    /// Token embeddings `[batch, seq, hidden]` (fp32) for `input_ids` and `attention_mask` `[batch, seq]`.
    /// With bf16 the matrix products run in bf16 while residuals and layer norms stay fp32, as
    /// PyTorch autocast does.
    pub fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, attention_mask: &Tensor, train: bool, precision: Precision) -> Tensor {
        let (batch, seq) = input_ids.size2().expect("input ids are [batch, seq]");
        let positions = Tensor::arange(seq, (Kind::Int64, input_ids.device())).unsqueeze(0);
        let e = &self.embeddings;
        let x = e.word.forward(input_ids) + e.position.forward(&positions) + e.token_type.forward(token_type_ids);
        let mut x = e.norm.forward(&x).dropout(e.dropout, train);

        let compute = precision.kind();
        // Additive mask: 0 where attended, the most negative value where padded, broadcast over
        // heads and query positions.
        let mask = (attention_mask.to_kind(compute).ones_like() - attention_mask.to_kind(compute))
            .view([batch, 1, 1, seq])
            * min_value(compute);
        let split = |t: Tensor| t.view([batch, seq, self.heads, self.head_dim]).transpose(1, 2);
        for layer in &self.layers {
            let xc = x.to_kind(compute);
            let q = split(linear(&layer.query, &xc, compute));
            let k = split(linear(&layer.key, &xc, compute));
            let v = split(linear(&layer.value, &xc, compute));
            let dropout = if train { self.attention_dropout } else { 0.0 };
            let ctx = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), dropout, false, None, false)
                .transpose(1, 2)
                .contiguous()
                .view([batch, seq, self.heads * self.head_dim]);
            let attn = linear(&layer.attn_out, &ctx, compute).to_kind(Kind::Float).dropout(self.hidden_dropout, train);
            x = layer.attn_norm.forward(&(attn + &x));
            let inter = activation(&self.activation, &linear(&layer.intermediate, &x.to_kind(compute), compute));
            let out = linear(&layer.output, &inter, compute).to_kind(Kind::Float).dropout(self.hidden_dropout, train);
            x = layer.out_norm.forward(&(out + &x));
        }
        x
    }
}

fn linear(layer: &nn::Linear, x: &Tensor, kind: Kind) -> Tensor {
    if kind == Kind::Float {
        return layer.forward(x);
    }
    let bias = layer.bs.as_ref().map(|b| b.to_kind(kind));
    x.linear(&layer.ws.to_kind(kind), bias.as_ref())
}

fn activation(name: &str, x: &Tensor) -> Tensor {
    match name {
        "relu" => x.relu(),
        "gelu_new" | "gelu_pytorch_tanh" => x.gelu("tanh"),
        _ => x.gelu("none"),
    }
}

fn min_value(kind: Kind) -> f64 {
    match kind {
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Half => -65504.0,
        _ => f32::MIN as f64,
    }
}
