//! MultipleNegativesRankingLoss as sentence-transformers defines it: every question scored against
//! every passage of the batch by cosine similarity times a scale (20), cross-entropy with each
//! question's own passage as the target; optionally symmetric (passages against questions too).
//!
//! Hard negatives are extra candidate rows after the positives, as sentence-transformers stacks
//! (anchor, positive, negative_1, …, negative_n) columns: every question is scored against every
//! positive and every negative of the batch, so one question's negatives are the others' too.

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
    /// Mean loss over the batch for question embeddings `[batch, dim]` and candidates
    /// `[batch + negatives, dim]`: row i of the first `batch` is question i's positive, the rest
    /// are hard negatives (none for plain MNRL).
    pub fn compute(&self, questions: &Tensor, candidates: &Tensor) -> Tensor {
        let n = questions.size()[0];
        assert!(candidates.size()[0] >= n, "every question needs its positive among the candidates");
        let scores = cos_sim(questions, candidates) * self.scale;
        let targets = Tensor::arange(n, (Kind::Int64, scores.device()));
        let forward = scores.cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, 0.0);
        if !self.symmetric {
            return forward;
        }
        // Passages to questions: only the positives have a question of their own
        // (sentence-transformers' "doc_to_query" direction, averaged per direction).
        let backward = scores.narrow(1, 0, n).transpose(0, 1).cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, 0.0);
        (forward + backward) / 2.0
    }
}

/// The training loss: MNRL, or with Matryoshka dimensions the sum of MNRL over the embeddings cut
/// to each dimension (sentence-transformers' MatryoshkaLoss with weights 1). Cutting happens
/// after pooling; `cos_sim` re-normalises what is left, as MatryoshkaLoss's `shrink` does.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingLoss {
    pub mnrl: MnrlLoss,
    /// Largest first; empty for plain MNRL.
    pub matryoshka_dims: Vec<usize>,
}

impl From<MnrlLoss> for TrainingLoss {
    fn from(mnrl: MnrlLoss) -> Self {
        Self { mnrl, matryoshka_dims: Vec::new() }
    }
}

impl TrainingLoss {
    pub fn compute(&self, questions: &Tensor, candidates: &Tensor) -> Tensor {
        if self.matryoshka_dims.is_empty() {
            return self.mnrl.compute(questions, candidates);
        }
        let full = questions.size()[1];
        let mut total: Option<Tensor> = None;
        for &d in &self.matryoshka_dims {
            // Checked against the model before training; a larger one would only repeat the full size.
            let d = (d as i64).min(full);
            let part = self.mnrl.compute(&questions.narrow(1, 0, d), &candidates.narrow(1, 0, d));
            total = Some(match total {
                Some(t) => t + part,
                None => part,
            });
        }
        total.expect("at least one dimension")
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

    #[test]
    fn matryoshka_sums_mnrl_over_each_cut() {
        let q = Tensor::from_slice(&[1.0f32, 0.0, 0.5, 0.0, 1.0, -0.5]).view([2, 3]);
        let p = Tensor::from_slice(&[0.6f32, 0.8, 0.1, 0.0, 1.0, 0.9]).view([2, 3]);
        let mnrl = MnrlLoss::default();
        let plain = TrainingLoss { mnrl, matryoshka_dims: Vec::new() };
        let value = |t: Tensor| f64::try_from(t).unwrap();
        assert_eq!(value(plain.compute(&q, &p)), value(mnrl.compute(&q, &p)));
        let m = TrainingLoss { mnrl, matryoshka_dims: vec![3, 2] };
        let expected = value(mnrl.compute(&q, &p)) + value(mnrl.compute(&q.narrow(1, 0, 2), &p.narrow(1, 0, 2)));
        assert!((value(m.compute(&q, &p)) - expected).abs() < 1e-6);
        // The first two dimensions alone are what test_matches_a_hand_computation scores.
        let two = TrainingLoss { mnrl, matryoshka_dims: vec![2] };
        let q2 = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let p2 = Tensor::from_slice(&[0.6f32, 0.8, 0.0, 1.0]).view([2, 2]);
        assert!((value(two.compute(&q, &p)) - value(mnrl.compute(&q2, &p2))).abs() < 1e-6);
    }

    #[test]
    fn hard_negatives_are_extra_columns_for_every_question() {
        let q = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        // Positives, then one negative per question.
        let c = Tensor::from_slice(&[0.6f32, 0.8, 0.0, 1.0, 1.0, 0.0, 0.8, 0.6]).view([4, 2]);
        let loss = f64::try_from(MnrlLoss::default().compute(&q, &c)).unwrap();
        // Row 0 scores 12, 0, 20, 16 → target 0; row 1 scores 16, 20, 0, 12 → target 1.
        let e = f64::exp;
        let row0 = -(e(12.0) / (e(12.0) + e(0.0) + e(20.0) + e(16.0))).ln();
        let row1 = -(e(20.0) / (e(16.0) + e(20.0) + e(0.0) + e(12.0))).ln();
        assert!((loss - (row0 + row1) / 2.0).abs() < 1e-5, "{loss}");
        // Symmetric: the backward direction sees only the positives' columns.
        let sym = f64::try_from(MnrlLoss { symmetric: true, ..Default::default() }.compute(&q, &c)).unwrap();
        let col0 = -(e(12.0) / (e(12.0) + e(16.0))).ln();
        let col1 = -(e(20.0) / (e(0.0) + e(20.0))).ln();
        assert!((sym - ((row0 + row1) / 2.0 + (col0 + col1) / 2.0) / 2.0).abs() < 1e-5, "{sym}");
    }
}
