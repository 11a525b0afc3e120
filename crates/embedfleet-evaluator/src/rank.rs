//! Exact top-k retrieval by matrix multiplication over bounded blocks of queries and corpus.
//!
//! Ties are broken exactly as the reference does, so metrics agree even when scores are equal:
//! per corpus block it takes `torch.topk(sorted=False)` candidates (the same libtorch kernel), keeps
//! the best `k` per query in a binary min-heap of `(score, corpus_id)` fed in that order (Python's
//! `heapq` algorithm), and finally sorts the heap's array by score, descending and stable.

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
    let mut heaps: Vec<Vec<(f64, usize)>> = vec![Vec::with_capacity(k); nq as usize];
    for q0 in (0..nq).step_by(blocks.queries.max(1)) {
        let q = queries.narrow(0, q0, (blocks.queries as i64).min(nq - q0));
        for c0 in (0..nc).step_by(blocks.corpus.max(1)) {
            let c = corpus.narrow(0, c0, (blocks.corpus as i64).min(nc - c0));
            let scores = function.scores(&q, &c);
            let kk = (k as i64).min(c.size()[0]);
            let (values, indices) = scores.topk(kk, 1, true, false);
            // The reference reads scores as Python floats: f32 widened to f64.
            let values: Vec<f32> = Vec::try_from(values.to_kind(Kind::Float).contiguous().view([-1])).expect("f32 scores");
            let indices: Vec<i64> = Vec::try_from(indices.contiguous().view([-1])).expect("i64 indices");
            for (row, (vals, idxs)) in values.chunks(kk as usize).zip(indices.chunks(kk as usize)).enumerate() {
                let heap = &mut heaps[(q0 as usize) + row];
                for (&score, &i) in vals.iter().zip(idxs) {
                    let item = (score as f64, c0 as usize + i as usize);
                    let less = |a: &(f64, usize), b: &(f64, usize)| tuple_less(a, b, corpus_ids);
                    if heap.len() < k {
                        heap_push(heap, item, &less);
                    } else {
                        heap_push_pop(heap, item, &less);
                    }
                }
            }
        }
    }
    heaps
        .into_iter()
        .map(|mut heap| {
            // Stable sort by score, descending, like sorted(..., reverse=True).
            heap.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal));
            heap.into_iter().map(|(score, corpus_index)| Hit { corpus_index, score }).collect()
        })
        .collect()
}

/// Python's comparison of `(score, corpus_id)` tuples.
fn tuple_less(a: &(f64, usize), b: &(f64, usize), ids: &[&str]) -> bool {
    match a.0.partial_cmp(&b.0) {
        Some(Ordering::Less) => true,
        Some(Ordering::Greater) => false,
        _ => ids[a.1] < ids[b.1],
    }
}

// A binary min-heap with the sift order of CPython's heapq, so equal items land where they do there.
fn heap_push<T: Copy>(heap: &mut Vec<T>, item: T, less: &dyn Fn(&T, &T) -> bool) {
    heap.push(item);
    let last = heap.len() - 1;
    sift_down(heap, 0, last, less);
}

fn heap_push_pop<T: Copy>(heap: &mut [T], item: T, less: &dyn Fn(&T, &T) -> bool) {
    if !heap.is_empty() && less(&heap[0], &item) {
        heap[0] = item;
        sift_up(heap, 0, less);
    }
}

/// Moves the item at `pos` towards the root (heapq's `_siftdown`).
fn sift_down<T: Copy>(heap: &mut [T], start: usize, mut pos: usize, less: &dyn Fn(&T, &T) -> bool) {
    let item = heap[pos];
    while pos > start {
        let parent = (pos - 1) >> 1;
        if less(&item, &heap[parent]) {
            heap[pos] = heap[parent];
            pos = parent;
        } else {
            break;
        }
    }
    heap[pos] = item;
}

/// Sinks the item at `pos` to a leaf along the smaller children, then back up (heapq's `_siftup`).
fn sift_up<T: Copy>(heap: &mut [T], mut pos: usize, less: &dyn Fn(&T, &T) -> bool) {
    let end = heap.len();
    let start = pos;
    let item = heap[pos];
    let mut child = 2 * pos + 1;
    while child < end {
        let right = child + 1;
        if right < end && !less(&heap[child], &heap[right]) {
            child = right;
        }
        heap[pos] = heap[child];
        pos = child;
        child = 2 * pos + 1;
    }
    heap[pos] = item;
    sift_down(heap, start, pos, less);
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn heap_keeps_the_largest() {
        let less = |a: &i32, b: &i32| a < b;
        let mut heap = Vec::new();
        for x in [5, 1, 9, 3, 7, 2, 8] {
            if heap.len() < 3 { heap_push(&mut heap, x, &less) } else { heap_push_pop(&mut heap, x, &less) }
        }
        heap.sort();
        assert_eq!(heap, [7, 8, 9]);
    }
}
