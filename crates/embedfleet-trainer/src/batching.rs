//! Batches that never hold two questions of the same chunk, nor the same text twice. The
//! reference feeds pairs in file order, so a chunk's questions share a batch and each one's
//! positive becomes the other's negative; here every other passage in a batch is a true negative.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;

/// One training example: a question and the chunk it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainPair {
    pub chunk_id: String,
    pub question: String,
    pub passage: String,
}

/// The batches of one epoch, as indices into the pairs: shuffled under `seed + epoch`, then filled
/// greedily, a pair waiting for the next batch when its chunk or a text is already in this one.
/// Every pair is used exactly once per epoch; only the last batch may be smaller.
pub fn epoch_batches(pairs: &[TrainPair], batch_size: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed.wrapping_add(epoch as u64)));
    let mut remaining = order;
    let mut batches = Vec::new();
    while !remaining.is_empty() {
        let mut batch = Vec::with_capacity(batch_size);
        let mut chunks = HashSet::new();
        let mut texts: HashSet<&str> = HashSet::new();
        let mut rest = Vec::with_capacity(remaining.len());
        for &i in &remaining {
            let p = &pairs[i];
            let clash = chunks.contains(p.chunk_id.as_str())
                || texts.contains(p.question.as_str())
                || texts.contains(p.passage.as_str());
            if batch.len() < batch_size && !clash {
                chunks.insert(p.chunk_id.as_str());
                texts.insert(p.question.as_str());
                texts.insert(p.passage.as_str());
                batch.push(i);
            } else {
                rest.push(i);
            }
        }
        batches.push(batch);
        remaining = rest;
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(chunks: usize, per_chunk: usize) -> Vec<TrainPair> {
        (0..chunks)
            .flat_map(|c| {
                (0..per_chunk).map(move |q| TrainPair {
                    chunk_id: format!("c{c}"),
                    question: format!("question {q} of {c}"),
                    passage: format!("passage {c}"),
                })
            })
            .collect()
    }

    #[test]
    fn no_chunk_twice_in_a_batch_and_every_pair_once() {
        let pairs = pairs(37, 2);
        for epoch in 0..3 {
            let batches = epoch_batches(&pairs, 8, 42, epoch);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..pairs.len()).collect::<Vec<_>>(), "every pair exactly once");
            for b in &batches {
                let chunks: HashSet<_> = b.iter().map(|&i| &pairs[i].chunk_id).collect();
                assert_eq!(chunks.len(), b.len(), "a chunk twice in one batch");
                assert!(b.len() <= 8);
            }
            // Short batches only where the leftovers all clash with each other.
            assert!(batches.len() <= pairs.len().div_ceil(8) + 1, "{} batches", batches.len());
        }
        assert_ne!(epoch_batches(&pairs, 8, 42, 0), epoch_batches(&pairs, 8, 42, 1), "reshuffled each epoch");
        assert_eq!(epoch_batches(&pairs, 8, 42, 0), epoch_batches(&pairs, 8, 42, 0), "deterministic");
    }

    #[test]
    fn identical_questions_never_share_a_batch() {
        let mut p = pairs(10, 1);
        p[3].question = p[5].question.clone();
        for b in epoch_batches(&p, 10, 1, 0) {
            assert!(!(b.contains(&3) && b.contains(&5)));
        }
    }
}
