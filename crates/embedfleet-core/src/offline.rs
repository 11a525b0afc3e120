//! The offline question generator, the embedded default when no LLM is configured: pseudo-queries
//! cropped from the part of a chunk that no other chunk shares, so each has exactly one right chunk.

use crate::chunk::Chunk;
use crate::generate::{GenerateError, QuestionGenerator};
use crate::ids::derive_seed;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
pub struct OfflineGenerator {
    pub seed: u64,
    pub min_words: usize,
    pub max_words: usize,
}

impl OfflineGenerator {
    pub fn new(seed: u64) -> Self {
        Self { seed, min_words: 8, max_words: 24 }
    }

    /// Up to `n` distinct spans; the same chunk and seed always give the same spans.
    pub fn spans(&self, chunk: &Chunk, n: usize) -> Vec<String> {
        let own: Vec<&str> = chunk.own_text().split_whitespace().collect();
        // A chunk too short to have a private middle falls back to its whole text.
        let words = if own.len() >= self.min_words { own } else { chunk.text.split_whitespace().collect() };
        if words.is_empty() {
            return Vec::new();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(self.seed, chunk.id.as_str()));
        let mut out: Vec<String> = Vec::with_capacity(n);
        for _ in 0..n * 8 {
            if out.len() == n {
                break;
            }
            let len = rng.random_range(self.min_words..=self.max_words).min(words.len());
            let start = rng.random_range(0..=words.len() - len);
            let span = words[start..start + len].join(" ");
            if !out.contains(&span) {
                out.push(span);
            }
        }
        out
    }
}

impl QuestionGenerator for OfflineGenerator {
    fn concurrency(&self) -> usize {
        64
    }

    async fn questions(&self, chunk: &Chunk, n: usize) -> Result<Vec<String>, GenerateError> {
        Ok(self.spans(chunk, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkConfig, chunk_document};
    use crate::ids::DocId;
    use crate::ingest::Document;

    #[test]
    fn spans_come_from_the_private_part_and_are_deterministic() {
        let text: String = (0..600).map(|i| format!("t{i} ")).collect();
        let doc = Document { id: DocId::from_identity("d"), text, url: None, title: None, source: "d".into() };
        let chunks = chunk_document(&doc, &ChunkConfig::default());
        assert!(chunks.len() >= 3);
        let generator = OfflineGenerator::new(42);
        for (i, chunk) in chunks.iter().enumerate() {
            let spans = generator.spans(chunk, 2);
            assert_eq!(spans.len(), 2);
            assert_eq!(spans, generator.spans(chunk, 2));
            for span in &spans {
                let words = span.split_whitespace().count();
                assert!((8..=24).contains(&words), "{words} words");
                assert!(chunk.own_text().contains(span.as_str()));
                for (j, other) in chunks.iter().enumerate() {
                    if i != j {
                        assert!(!other.text.contains(span.as_str()), "span of chunk {i} is also in chunk {j}");
                    }
                }
            }
        }
        assert_ne!(OfflineGenerator::new(1).spans(&chunks[0], 2), generator.spans(&chunks[0], 2));
    }
}
