use crate::config::PoolingMode;
use tch::Tensor;

/// Sentence embeddings `[batch, hidden]` from token embeddings `[batch, seq, hidden]`, ignoring padding.
pub fn pool(tokens: &Tensor, attention_mask: &Tensor, mode: PoolingMode) -> Tensor {
    let mask = attention_mask.to_kind(tokens.kind()).unsqueeze(-1);
    match mode {
        PoolingMode::Cls => tokens.select(1, 0),
        PoolingMode::Mean => {
            let summed = (tokens * &mask).sum_dim_intlist(1, false, tokens.kind());
            let counts = mask.sum_dim_intlist(1, false, tokens.kind()).clamp_min(1e-9);
            summed / counts
        }
        PoolingMode::Max => {
            // Padding must never win the max.
            let masked = tokens.masked_fill(&mask.eq(0.0), -1e9);
            masked.amax(1, false)
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

    #[test]
    fn mean_and_max_ignore_padding() {
        let tokens = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 100.0, 100.0]).view([1, 3, 2]);
        let mask = Tensor::from_slice(&[1i64, 1, 0]).view([1, 3]);
        let mean = pool(&tokens, &mask, PoolingMode::Mean);
        assert_eq!(Vec::<f32>::try_from(mean.view([-1])).unwrap(), vec![2.0, 3.0]);
        let max = pool(&tokens, &mask, PoolingMode::Max);
        assert_eq!(Vec::<f32>::try_from(max.view([-1])).unwrap(), vec![3.0, 4.0]);
        let cls = pool(&tokens, &mask, PoolingMode::Cls);
        assert_eq!(Vec::<f32>::try_from(cls.view([-1])).unwrap(), vec![1.0, 2.0]);
        let n = normalize(&Tensor::from_slice(&[3.0f32, 4.0]).view([1, 2]));
        assert_eq!(Vec::<f32>::try_from(n.view([-1])).unwrap(), vec![0.6, 0.8]);
    }
}
