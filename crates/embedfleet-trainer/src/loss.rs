//! MultipleNegativesRankingLoss as sentence-transformers defines it: every question scored against
//! every passage of the batch by cosine similarity times a scale (20), cross-entropy with each
//! question's own passage as the target; optionally symmetric (passages against questions too).

use tch::{Kind, Reduction, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MnrlLoss {
    pub scale: f64,
    pub symmetric: bool,
}

impl Default for MnrlLoss {
    fn default() -> Self {
        Self { scale: 20.0, symmetric: false }
    }
}

impl MnrlLoss {
    /// Mean loss over the batch for question and passage embeddings `[batch, dim]`.
    pub fn compute(&self, questions: &Tensor, passages: &Tensor) -> Tensor {
        let scores = cos_sim(questions, passages) * self.scale;
        let n = scores.size()[0];
        let targets = Tensor::arange(n, (Kind::Int64, scores.device()));
        let forward = scores.cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, 0.0);
        if !self.symmetric {
            return forward;
        }
        let backward = scores.transpose(0, 1).cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, 0.0);
        (forward + backward) / 2.0
    }
}

/// Pairwise cosine similarity `[a, b]`, normalising with eps 1e-12 as torch's `normalize`.
pub fn cos_sim(a: &Tensor, b: &Tensor) -> Tensor {
    let an = a / a.norm_scalaropt_dim(2.0, 1, true).clamp_min(1e-12);
    let bn = b / b.norm_scalaropt_dim(2.0, 1, true).clamp_min(1e-12);
    an.matmul(&bn.transpose(0, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_hand_computation() {
        // Two questions, two passages, already unit length.
        let q = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let p = Tensor::from_slice(&[0.6f32, 0.8, 0.0, 1.0]).view([2, 2]);
        let loss = f64::try_from(MnrlLoss::default().compute(&q, &p)).unwrap();
        // Row 0 scores: 20*0.6=12, 0 → target 0. Row 1: 20*0.8=16, 20 → target 1.
        let row0 = -(12f64.exp() / (12f64.exp() + 1.0)).ln();
        let row1 = -(20f64.exp() / (16f64.exp() + 20f64.exp())).ln();
        assert!((loss - (row0 + row1) / 2.0).abs() < 1e-5, "{loss}");

        let sym = f64::try_from(MnrlLoss { symmetric: true, ..Default::default() }.compute(&q, &p)).unwrap();
        // Columns: col 0 scores 12, 16 → target 0; col 1 scores 0, 20 → target 1.
        let col0 = -(12f64.exp() / (12f64.exp() + 16f64.exp())).ln();
        let col1 = -(20f64.exp() / (1.0 + 20f64.exp())).ln();
        assert!((sym - ((row0 + row1) / 2.0 + (col0 + col1) / 2.0) / 2.0).abs() < 1e-5, "{sym}");
    }
}
