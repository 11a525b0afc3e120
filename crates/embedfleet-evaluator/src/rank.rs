//! Exact top-k retrieval by matrix multiplication over bounded blocks of queries and corpus.
//!
//! The ranking is the reference's (sentence-transformers 6.2, see
//! tools/reference/IR_EVALUATOR_NOTES.md): float32 score descending, then corpus id ascending, so
//! metrics agree even when scores tie exactly. A tie that straddles a block's top-k cut keeps every
//! tied candidate, so the result does not depend on block sizes.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreFunction {
    Cosine,
    Dot,
}

impl ScoreFunction {
    pub fn name(self) -> &'static str {
        match self {
            ScoreFunction::Cosine => "cosine",
            ScoreFunction::Dot => "dot",
        }
    }

    /// Scores `[queries, corpus]`.
    pub fn scores(self, queries: &Tensor, corpus: &Tensor) -> Tensor {
        match self {
            ScoreFunction::Cosine => normalize(queries).matmul(&normalize(corpus).transpose(0, 1)),
            ScoreFunction::Dot => queries.matmul(&corpus.transpose(0, 1)),
        }
    }
}

impl std::str::FromStr for ScoreFunction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" | "cos_sim" => Ok(ScoreFunction::Cosine),
            "dot" | "dot_score" => Ok(ScoreFunction::Dot),
            other => Err(format!("unknown score function '{other}'; use cosine or dot")),
        }
    }
}

fn normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, 1, true).clamp_min(1e-12)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub corpus_index: usize,
    pub score: f64,
}

/// Block sizes that bound memory: one block of scores is `query_block × corpus_block` floats.
#[derive(Debug, Clone, Copy)]
pub struct Blocks {
    /// The reference's `corpus_chunk_size`; the same value gives the same tie-breaking.
    pub corpus: usize,
    pub queries: usize,
}

impl Default for Blocks {
    fn default() -> Self {
        Self { corpus: 50_000, queries: 512 }
    }
}

/// The best `k` corpus entries per query, best first.
pub fn top_k(queries: &Tensor, corpus: &Tensor, corpus_ids: &[&str], function: ScoreFunction, k: usize, blocks: Blocks) -> Vec<Vec<Hit>> {
    let (nq, _) = queries.size2().expect("queries are [n, dim]");
    let (nc, _) = corpus.size2().expect("corpus is [n, dim]");
    assert_eq!(nc as usize, corpus_ids.len());
    let _guard = tch::no_grad_guard();
    let mut best: Vec<Vec<(f32, usize)>> = vec![Vec::with_capacity(2 * k); nq as usize];
    let order = |a: &(f32, usize), b: &(f32, usize)| {
        b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal).then_with(|| corpus_ids[a.1].cmp(corpus_ids[b.1]))
    };
    for q0 in (0..nq).step_by(blocks.queries.max(1)) {
        let q = queries.narrow(0, q0, (blocks.queries as i64).min(nq - q0));
        for c0 in (0..nc).step_by(blocks.corpus.max(1)) {
            let c = corpus.narrow(0, c0, (blocks.corpus as i64).min(nc - c0));
            let scores = function.scores(&q, &c).to_kind(Kind::Float).contiguous();
            let width = c.size()[0];
            let kk = (k as i64).min(width);
            let (values, indices) = scores.topk(kk, 1, true, true);
            // Rows where more entries tie with the k-th score than topk kept need all of them.
            let threshold = values.narrow(1, kk - 1, 1);
            let at_or_above: Vec<i64> = Vec::try_from(scores.ge_tensor(&threshold).sum_dim_intlist(1, false, Kind::Int64)).expect("counts");
            let values: Vec<f32> = Vec::try_from(values.contiguous().view([-1])).expect("f32 scores");
            let indices: Vec<i64> = Vec::try_from(indices.contiguous().view([-1])).expect("i64 indices");
            for (row, count) in at_or_above.iter().enumerate() {
                let list = &mut best[q0 as usize + row];
                if *count > kk {
                    let all: Vec<f32> = Vec::try_from(scores.get(row as i64)).expect("f32 row");
                    let cut = values[row * kk as usize + kk as usize - 1];
                    list.extend(all.iter().enumerate().filter(|(_, s)| **s >= cut).map(|(i, s)| (*s, c0 as usize + i)));
                } else {
                    let span = row * kk as usize..(row + 1) * kk as usize;
                    list.extend(values[span.clone()].iter().zip(&indices[span]).map(|(s, i)| (*s, c0 as usize + *i as usize)));
                }
                list.sort_by(order);
                list.truncate(k);
            }
        }
    }
    best.into_iter().map(|list| list.into_iter().map(|(score, corpus_index)| Hit { corpus_index, score: score as f64 }).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_break_by_corpus_id_whatever_the_blocks() {
        // Four equal scores straddle every block's cut; the smallest ids must win.
        let corpus = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]).view([5, 2]);
        let queries = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        let ids = ["d9", "d10", "d2", "a", "z"];
        for corpus_block in [1, 2, 3, 50] {
            let hits = top_k(&queries, &corpus, &ids, ScoreFunction::Dot, 2, Blocks { corpus: corpus_block, queries: 1 });
            let order: Vec<&str> = hits[0].iter().map(|h| ids[h.corpus_index]).collect();
            assert_eq!(order, ["a", "d10"], "block {corpus_block}");
        }
    }

    #[test]
    fn finds_the_best_across_blocks() {
        let corpus = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 0.7, 0.7, -1.0, 0.0, 0.9, 0.1]).view([5, 2]);
        let queries = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        let ids = ["a", "b", "c", "d", "e"];
        for blocks in [Blocks { corpus: 2, queries: 1 }, Blocks::default()] {
            let hits = top_k(&queries, &corpus, &ids, ScoreFunction::Cosine, 3, blocks);
            let order: Vec<usize> = hits[0].iter().map(|h| h.corpus_index).collect();
            assert_eq!(order, [0, 4, 2]);
            assert!((hits[0][0].score - 1.0).abs() < 1e-6);
        }
    }
}
