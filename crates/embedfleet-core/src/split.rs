//! Train/validation split. By default whole documents go to one side, because overlapping chunks of
//! one document on both sides leak validation text into training (a known defect of the reference).

use crate::chunk::Chunk;
use crate::ids::DocId;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SplitBy {
    /// No document has chunks on both sides.
    #[default]
    Document,
    /// Chunks are shuffled and cut, as the reference does.
    Chunk,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitConfig {
    pub train_ratio: f64,
    pub seed: u64,
    pub by: SplitBy,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self { train_ratio: 0.8, seed: 42, by: SplitBy::Document }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SplitError {
    #[error("--train-ratio must be strictly between 0 and 1, got {0}")]
    BadRatio(f64),
    #[error("{what} cannot be split into non-empty train and validation sets; add documents, or use --split-by chunk")]
    TooFew { what: String },
}

/// Chunk indices on each side, each side in the original chunk order.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitIndices {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

pub fn split_chunks(chunks: &[Chunk], config: &SplitConfig) -> Result<SplitIndices, SplitError> {
    if !(config.train_ratio > 0.0 && config.train_ratio < 1.0) {
        return Err(SplitError::BadRatio(config.train_ratio));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let target = (chunks.len() as f64 * config.train_ratio).round() as usize;
    let mut train = match config.by {
        SplitBy::Chunk => {
            if chunks.len() < 2 {
                return Err(SplitError::TooFew { what: format!("{} chunk(s)", chunks.len()) });
            }
            let mut order: Vec<usize> = (0..chunks.len()).collect();
            order.shuffle(&mut rng);
            order.truncate(target.clamp(1, chunks.len() - 1));
            order.into_iter().collect::<HashSet<_>>()
        }
        SplitBy::Document => {
            let mut docs: Vec<&DocId> = Vec::new();
            let mut sizes: HashMap<&DocId, usize> = HashMap::new();
            for c in chunks {
                let n = sizes.entry(&c.doc_id).or_insert(0);
                if *n == 0 {
                    docs.push(&c.doc_id);
                }
                *n += 1;
            }
            if docs.len() < 2 {
                return Err(SplitError::TooFew { what: format!("{} document(s)", docs.len()) });
            }
            docs.shuffle(&mut rng);
            // Whole documents go to train until it holds its share of chunks; at least one
            // document stays on each side.
            let mut chosen = HashSet::new();
            let mut count = 0;
            for (i, doc) in docs.iter().enumerate() {
                let remaining = docs.len() - i;
                if chosen.is_empty() || (count < target && remaining > 1) {
                    chosen.insert(*doc);
                    count += sizes[doc];
                }
            }
            (0..chunks.len()).filter(|&i| chosen.contains(&chunks[i].doc_id)).collect()
        }
    };
    let mut train_idx: Vec<usize> = train.drain().collect();
    train_idx.sort_unstable();
    let train_set: HashSet<usize> = train_idx.iter().copied().collect();
    let val = (0..chunks.len()).filter(|i| !train_set.contains(i)).collect();
    Ok(SplitIndices { train: train_idx, val })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkConfig, chunk_documents};
    use crate::ingest::Document;

    fn corpus(docs: usize) -> Vec<Chunk> {
        let docs: Vec<Document> = (0..docs)
            .map(|i| Document {
                id: DocId::from_identity(&i.to_string()),
                text: format!("doc {i} ").repeat(40 + 37 * (i % 5)),
                url: None,
                title: None,
                source: i.to_string(),
            })
            .collect();
        chunk_documents(&docs, &ChunkConfig { size: 200, overlap: 40 }).unwrap()
    }

    #[test]
    fn document_split_never_puts_a_document_on_both_sides() {
        let chunks = corpus(50);
        for seed in 0..20 {
            let s = split_chunks(&chunks, &SplitConfig { seed, ..Default::default() }).unwrap();
            let train_docs: HashSet<_> = s.train.iter().map(|&i| &chunks[i].doc_id).collect();
            assert!(s.val.iter().all(|&i| !train_docs.contains(&chunks[i].doc_id)));
            assert_eq!(s.train.len() + s.val.len(), chunks.len());
            let share = s.train.len() as f64 / chunks.len() as f64;
            assert!((share - 0.8).abs() < 0.1, "train share {share}");
        }
    }

    #[test]
    fn split_is_deterministic_under_seed() {
        let chunks = corpus(30);
        let cfg = SplitConfig { by: SplitBy::Chunk, ..Default::default() };
        let a = split_chunks(&chunks, &cfg).unwrap();
        assert_eq!(a, split_chunks(&chunks, &cfg).unwrap());
        assert_eq!(a.train.len(), (chunks.len() as f64 * 0.8).round() as usize);
        assert_ne!(a, split_chunks(&chunks, &SplitConfig { seed: 7, ..cfg }).unwrap());
    }

    #[test]
    fn too_few_documents_or_bad_ratio() {
        let one = corpus(1);
        assert!(matches!(split_chunks(&one, &SplitConfig::default()), Err(SplitError::TooFew { .. })));
        assert!(matches!(split_chunks(&one, &SplitConfig { train_ratio: 1.0, ..Default::default() }), Err(SplitError::BadRatio(_))));
    }
}
