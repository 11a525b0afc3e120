//! Pooling as sentence-transformers 6.2's `Pooling` module does it, mode by mode: which positions
//! count (padding never; the prompt not when `include_prompt` is false) and how they are combined.

use crate::config::PoolingMode;
use tch::{Kind, Tensor};

/// The positions pooling reads: the attention mask, less the first `prompt_length` real tokens
/// of each row (after any left padding).
fn without_prompt(attention_mask: &Tensor, prompt_length: i64) -> Tensor {
    let pad_lengths = attention_mask.to_kind(Kind::Int).argmax(1, false);
    let seq = attention_mask.size()[1];
    let positions = Tensor::arange(seq, (Kind::Int64, attention_mask.device())).unsqueeze(0);
    let prompt = positions.lt_tensor(&(pad_lengths + prompt_length).unsqueeze(1));
    attention_mask.masked_fill(&prompt, 0)
}

/// Sentence embeddings `[batch, hidden]` from token embeddings `[batch, seq, hidden]`.
pub fn pool(tokens: &Tensor, attention_mask: &Tensor, mode: PoolingMode, prompt_length: Option<i64>) -> Tensor {
    let original = attention_mask;
    let attention_mask = match prompt_length {
        Some(n) if n > 0 => without_prompt(attention_mask, n),
        _ => attention_mask.shallow_clone(),
    };
    let mask = attention_mask.to_kind(tokens.kind()).unsqueeze(-1);
    match mode {
        PoolingMode::Cls => {
            // The first position pooling reads: 0 unless padding is on the left or a prompt is left out.
            let first = attention_mask.to_kind(Kind::Int).argmax(1, false);
            let hidden = tokens.size()[2];
            tokens.gather(1, &first.view([-1, 1, 1]).expand([-1, 1, hidden], false), false).squeeze_dim(1)
        }
        PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
            let summed = (tokens * &mask).sum_dim_intlist(1, false, tokens.kind());
            let counts = mask.sum_dim_intlist(1, false, tokens.kind()).clamp_min(1e-9);
            if mode == PoolingMode::Mean { summed / counts } else { summed / counts.sqrt() }
        }
        PoolingMode::Max => tokens.masked_fill(&mask.eq(0.0), f64::NEG_INFINITY).amax(1, false),
        PoolingMode::WeightedMean => {
            // Weights 1, 2, 3, … from the first real token (left padding shifts them, the prompt does not).
            let seq = tokens.size()[1];
            let pad_lengths = original.to_kind(Kind::Int).argmax(1, false).to_kind(tokens.kind());
            let weights =
                Tensor::arange_start(1, seq + 1, (tokens.kind(), tokens.device())).view([1, -1, 1]) - pad_lengths.view([-1, 1, 1]);
            let weighted = &mask * weights;
            let summed = (tokens * &weighted).sum_dim_intlist(1, false, tokens.kind());
            summed / weighted.sum_dim_intlist(1, false, tokens.kind()).clamp_min(1e-9)
        }
        PoolingMode::LastToken => {
            let (_, seq, hidden) = tokens.size3().expect("token embeddings are [batch, seq, hidden]");
            let (values, indices) = attention_mask.flip([1]).max_dim(1, false);
            let indices = indices.where_self(&values.ne(0), &Tensor::from(seq - 1).to_device(tokens.device()));
            let last = (Tensor::from(seq - 1).to_device(tokens.device()) - indices).view([-1, 1, 1]).expand([-1, 1, hidden], false);
            (tokens * &mask).gather(1, &last, false).squeeze_dim(1)
        }
    }
}

/// L2 normalisation as torch.nn.functional.normalize (eps 1e-12).
pub fn normalize(x: &Tensor) -> Tensor {
    let norm = x.norm_scalaropt_dim(2.0, 1, true).clamp_min(1e-12);
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.view([-1])).unwrap()
    }

    #[test]
    fn modes_ignore_padding() {
        let tokens = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 100.0, 100.0]).view([1, 3, 2]);
        let mask = Tensor::from_slice(&[1i64, 1, 0]).view([1, 3]);
        assert_eq!(values(pool(&tokens, &mask, PoolingMode::Mean, None)), vec![2.0, 3.0]);
        assert_eq!(values(pool(&tokens, &mask, PoolingMode::Max, None)), vec![3.0, 4.0]);
        assert_eq!(values(pool(&tokens, &mask, PoolingMode::Cls, None)), vec![1.0, 2.0]);
        assert_eq!(values(pool(&tokens, &mask, PoolingMode::LastToken, None)), vec![3.0, 4.0]);
        // weights 1 and 2: (1*1 + 2*3) / 3, (1*2 + 2*4) / 3
        assert_eq!(values(pool(&tokens, &mask, PoolingMode::WeightedMean, None)), vec![7.0 / 3.0, 10.0 / 3.0]);
        let sqrt = values(pool(&tokens, &mask, PoolingMode::MeanSqrtLen, None));
        assert!((sqrt[0] - 4.0 / 2f32.sqrt()).abs() < 1e-6 && (sqrt[1] - 6.0 / 2f32.sqrt()).abs() < 1e-6);
        let n = normalize(&Tensor::from_slice(&[3.0f32, 4.0]).view([1, 2]));
        assert_eq!(values(n), vec![0.6, 0.8]);
    }

    #[test]
    fn left_padding_and_prompt_exclusion() {
        // Row 0 is left-padded by one; the prompt is the first real token of each row.
        let tokens = Tensor::from_slice(&[0.0f32, 10.0, 20.0, 30.0, 1.0, 2.0, 3.0, 4.0]).view([2, 4, 1]);
        let mask = Tensor::from_slice(&[0i64, 1, 1, 1, 1, 1, 1, 1]).view([2, 4]);
        assert_eq!(values(pool(&tokens, &mask, PoolingMode::Cls, None)), vec![10.0, 1.0]);
        assert_eq!(values(pool(&tokens, &mask, PoolingMode::Cls, Some(1))), vec![20.0, 2.0]);
        assert_eq!(values(pool(&tokens, &mask, PoolingMode::LastToken, Some(1))), vec![30.0, 4.0]);
        assert_eq!(values(pool(&tokens, &mask, PoolingMode::Mean, Some(1))), vec![25.0, 3.0]);
        // Weights keep their positions when the prompt is left out: row 1 weights 2, 3, 4 on 2, 3, 4.
        let w = values(pool(&tokens, &mask, PoolingMode::WeightedMean, Some(1)));
        assert!((w[1] - (4.0 + 9.0 + 16.0) / 9.0).abs() < 1e-6, "{w:?}");
    }
}
