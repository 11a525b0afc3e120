//! Batches that never hold two questions of the same chunk, nor the same text twice. The
//! reference feeds pairs in file order, so a chunk's questions share a batch and each one's
//! positive becomes the other's negative; here every other passage in a batch is a true negative.
//!
//! With hard negatives the same holds for them: a chunk that is one question's negative is never
//! another question's positive in the same batch, since every question is scored against every
//! negative of its batch.

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

/// A mined hard negative of one pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Negative {
    pub chunk_id: String,
    pub text: String,
}

/// The batches of one epoch, as indices into the pairs: shuffled under `seed + epoch`, then filled
/// greedily, a pair waiting for the next batch when its chunk or a text is already in this one.
/// Every pair is used exactly once per epoch; only the last batch may be smaller.
pub fn epoch_batches(pairs: &[TrainPair], batch_size: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    epoch_batches_with_negatives(pairs, &[], batch_size, seed, epoch)
}

/// [`epoch_batches`] where pair i also brings `negatives[i]` (empty: none for any pair). A pair
/// also waits when one of its negatives is a positive of the batch, or its positive is a negative
/// there; the shuffle is the same as without negatives.
pub fn epoch_batches_with_negatives(
    pairs: &[TrainPair],
    negatives: &[Vec<Negative>],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    assert!(negatives.is_empty() || negatives.len() == pairs.len(), "one list of negatives per pair");
    let none: &[Negative] = &[];
    let negatives_of = |i: usize| negatives.get(i).map(Vec::as_slice).unwrap_or(none);
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed.wrapping_add(epoch as u64)));
    let mut remaining = order;
    let mut batches = Vec::new();
    while !remaining.is_empty() {
        let mut batch = Vec::with_capacity(batch_size);
        let mut chunks = HashSet::new();
        let mut texts: HashSet<&str> = HashSet::new();
        let mut negative_chunks: HashSet<&str> = HashSet::new();
        let mut negative_texts: HashSet<&str> = HashSet::new();
        let mut rest = Vec::with_capacity(remaining.len());
        for &i in &remaining {
            let p = &pairs[i];
            let negs = negatives_of(i);
            let clash = chunks.contains(p.chunk_id.as_str())
                || texts.contains(p.question.as_str())
                || texts.contains(p.passage.as_str())
                || negative_chunks.contains(p.chunk_id.as_str())
                || negative_texts.contains(p.passage.as_str())
                || negs.iter().any(|n| chunks.contains(n.chunk_id.as_str()) || texts.contains(n.text.as_str()));
            if batch.len() < batch_size && !clash {
                chunks.insert(p.chunk_id.as_str());
                texts.insert(p.question.as_str());
                texts.insert(p.passage.as_str());
                for n in negs {
                    negative_chunks.insert(n.chunk_id.as_str());
                    negative_texts.insert(n.text.as_str());
                }
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

/// The candidate passages of a batch: its positives in batch order, then each pair's first
/// negative, then each pair's second, … — sentence-transformers' column order for
/// (anchor, positive, negative_1, …, negative_n). A pair with fewer negatives leaves gaps out.
pub fn candidates<'a>(pairs: &'a [TrainPair], negatives: &'a [Vec<Negative>], batch: &[usize]) -> Vec<&'a str> {
    let mut out: Vec<&str> = batch.iter().map(|&i| pairs[i].passage.as_str()).collect();
    let most = batch.iter().map(|&i| negatives.get(i).map_or(0, Vec::len)).max().unwrap_or(0);
    for column in 0..most {
        out.extend(batch.iter().filter_map(|&i| negatives.get(i)?.get(column)).map(|n| n.text.as_str()));
    }
    out
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
    fn a_negative_never_shares_a_batch_with_its_chunk_as_a_positive() {
        let pairs = pairs(40, 2);
        // Each pair's negatives: the next three chunks, as mining near neighbours would give.
        let negatives: Vec<Vec<Negative>> = pairs
            .iter()
            .map(|p| {
                let c: usize = p.chunk_id[1..].parse().unwrap();
                (1..=3).map(|d| (c + d) % 40).map(|n| Negative { chunk_id: format!("c{n}"), text: format!("passage {n}") }).collect()
            })
            .collect();
        for epoch in 0..3 {
            let batches = epoch_batches_with_negatives(&pairs, &negatives, 8, 42, epoch);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..pairs.len()).collect::<Vec<_>>(), "every pair exactly once");
            for b in &batches {
                assert!(b.len() <= 8);
                let positives: HashSet<&str> = b.iter().map(|&i| pairs[i].chunk_id.as_str()).collect();
                assert_eq!(positives.len(), b.len(), "a chunk twice as a positive");
                for &i in b {
                    for n in &negatives[i] {
                        assert!(
                            !positives.contains(n.chunk_id.as_str()),
                            "epoch {epoch}: {} is a negative and a positive in {b:?}",
                            n.chunk_id
                        );
                    }
                }
            }
            // Near neighbours block each other, yet batches stay at least half full on average.
            assert!(batches.len() * 4 <= pairs.len(), "{} batches for {} pairs", batches.len(), pairs.len());
        }
        // Without negatives the batches are those of the plain rule.
        assert_eq!(epoch_batches_with_negatives(&pairs, &[], 8, 42, 0), epoch_batches(&pairs, 8, 42, 0));
    }

    #[test]
    fn candidates_are_positives_then_negative_columns() {
        let pairs = pairs(3, 1);
        let neg = |c: &str| Negative { chunk_id: c.into(), text: format!("neg {c}") };
        let negatives = vec![vec![neg("x"), neg("y")], vec![], vec![neg("z")]];
        assert_eq!(candidates(&pairs, &negatives, &[2, 0, 1]), ["passage 2", "passage 0", "passage 1", "neg z", "neg x", "neg y"]);
        assert_eq!(candidates(&pairs, &[], &[1, 0]), ["passage 1", "passage 0"]);
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
