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
    // Documents in order of first appearance with their chunk counts: what a streamed corpus's
    // index holds.
    let mut documents: Vec<(DocId, u32)> = Vec::new();
    let mut position: HashMap<&DocId, usize> = HashMap::new();
    for c in chunks {
        match position.get(&c.doc_id) {
            Some(&i) => documents[i].1 += 1,
            None => {
                position.insert(&c.doc_id, documents.len());
                documents.push((c.doc_id.clone(), 1));
            }
        }
    }
    let train = split_corpus(&documents, chunks.len() as u64, config)?;
    let (train, val) = (0..chunks.len()).partition(|&i| train.is_train(i as u64, &chunks[i].doc_id));
    Ok(SplitIndices { train, val })
}

/// Which chunks go to training, decided from the corpus's documents and size alone (a streamed
/// corpus's [`crate::shard::CorpusIndex`]), so a corpus of any size is split without holding it.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainSelection {
    /// Whole documents: a chunk trains when its document does.
    Documents(HashSet<DocId>),
    /// Chunks by position in the corpus (one flag each).
    Chunks(Vec<bool>),
}

impl TrainSelection {
    /// Whether the chunk at `position` (of document `doc`) is a training chunk.
    pub fn is_train(&self, position: u64, doc: &DocId) -> bool {
        match self {
            TrainSelection::Documents(docs) => docs.contains(doc),
            TrainSelection::Chunks(flags) => flags.get(position as usize).copied().unwrap_or(false),
        }
    }
}

/// Splits a corpus of `chunks` chunks whose documents, in order, have the given chunk counts.
pub fn split_corpus(documents: &[(DocId, u32)], chunks: u64, config: &SplitConfig) -> Result<TrainSelection, SplitError> {
    if !(config.train_ratio > 0.0 && config.train_ratio < 1.0) {
        return Err(SplitError::BadRatio(config.train_ratio));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let n = chunks as usize;
    let target = (n as f64 * config.train_ratio).round() as usize;
    Ok(match config.by {
        SplitBy::Chunk => {
            if n < 2 {
                return Err(SplitError::TooFew { what: format!("{n} chunk(s)") });
            }
            let mut order: Vec<u32> = (0..n as u32).collect();
            order.shuffle(&mut rng);
            let mut flags = vec![false; n];
            for &i in &order[..target.clamp(1, n - 1)] {
                flags[i as usize] = true;
            }
            TrainSelection::Chunks(flags)
        }
        SplitBy::Document => {
            if documents.len() < 2 {
                return Err(SplitError::TooFew { what: format!("{} document(s)", documents.len()) });
            }
            let mut order: Vec<&(DocId, u32)> = documents.iter().collect();
            order.shuffle(&mut rng);
            // Whole documents go to train until it holds its share of chunks; at least one
            // document stays on each side.
            let mut chosen = HashSet::new();
            let mut count = 0;
            for (i, (doc, size)) in order.iter().enumerate() {
                let remaining = order.len() - i;
                if chosen.is_empty() || (count < target && remaining > 1) {
                    chosen.insert(doc.clone());
                    count += *size as usize;
                }
            }
            TrainSelection::Documents(chosen)
        }
    })
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
