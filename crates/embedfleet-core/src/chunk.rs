//! Character-based chunking with overlap, like the reference's splitter (1000 characters, 200
//! overlap), measured in Unicode scalar values so a multi-byte character is never cut.

use crate::ids::{ChunkId, DocId};
use crate::ingest::Document;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkConfig {
    /// Most characters in one chunk.
    pub size: usize,
    /// Characters shared by consecutive chunks of one document.
    pub overlap: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        Self { size: 1000, overlap: 200 }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("chunk overlap ({overlap}) must be smaller than half the chunk size ({size}); lower --chunk-overlap or raise --chunk-size")]
pub struct ChunkConfigError {
    pub size: usize,
    pub overlap: usize,
}

impl ChunkConfig {
    pub fn validate(&self) -> Result<(), ChunkConfigError> {
        // Each chunk must advance past its overlap with a margin left for boundary snapping.
        // Saturating: `--chunk-overlap` near usize::MAX would otherwise wrap to a small number and pass.
        if self.size == 0 || self.overlap.saturating_mul(2) >= self.size {
            return Err(ChunkConfigError { size: self.size, overlap: self.overlap });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub id: ChunkId,
    pub doc_id: DocId,
    pub text: String,
    /// Character range of this chunk within its document.
    pub start: usize,
    pub end: usize,
    /// Character range, relative to `text`, that no neighbouring chunk shares. A question drawn
    /// from it has exactly one right chunk.
    pub own_start: usize,
    pub own_end: usize,
}

impl Chunk {
    /// The part of the text no other chunk contains.
    pub fn own_text(&self) -> &str {
        let (a, b) = char_range_to_bytes(&self.text, self.own_start, self.own_end);
        &self.text[a..b]
    }
}

/// Splits every document; chunk ids follow document order, so the same corpus gives the same ids.
pub fn chunk_documents(docs: &[Document], config: &ChunkConfig) -> Result<Vec<Chunk>, ChunkConfigError> {
    config.validate()?;
    Ok(docs.iter().flat_map(|d| chunk_document(d, config)).collect())
}

pub fn chunk_document(doc: &Document, config: &ChunkConfig) -> Vec<Chunk> {
    let bounds = chunk_bounds(&doc.text, config);
    let offsets: Vec<usize> = doc.text.char_indices().map(|(i, _)| i).chain([doc.text.len()]).collect();
    let last = bounds.len().saturating_sub(1);
    bounds
        .iter()
        .enumerate()
        .map(|(i, &(start, end))| {
            let own_start = if i > 0 { bounds[i - 1].1.saturating_sub(start) } else { 0 };
            let own_end = if i < last { bounds[i + 1].0 - start } else { end - start };
            Chunk {
                id: ChunkId::new(&doc.id, i),
                doc_id: doc.id.clone(),
                text: doc.text[offsets[start]..offsets[end]].to_owned(),
                start,
                end,
                own_start: own_start.min(own_end),
                own_end,
            }
        })
        .collect()
}

/// Character ranges `[start, end)` covering the whole text. A chunk ends at the best boundary in its
/// last fifth (paragraph, then line, then sentence, then white space), else at the size limit; the
/// next one starts exactly `overlap` characters before that end.
pub fn chunk_bounds(text: &str, config: &ChunkConfig) -> Vec<(usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let mut bounds = Vec::new();
    if n == 0 {
        return bounds;
    }
    let mut start = 0;
    loop {
        let limit = start + config.size;
        if limit >= n {
            bounds.push((start, n));
            break;
        }
        let earliest = (start + config.size * 4 / 5).max(start + config.overlap + 1);
        let end = best_boundary(&chars, earliest, limit).unwrap_or(limit);
        bounds.push((start, end));
        start = end - config.overlap;
    }
    bounds
}

/// The end position (exclusive) in `earliest..=limit` right after the strongest boundary, the
/// latest one among equals so chunks stay close to the size asked for.
fn best_boundary(chars: &[char], earliest: usize, limit: usize) -> Option<usize> {
    let rank = |end: usize| -> u8 {
        let prev = chars[end - 1];
        let before = if end >= 2 { chars[end - 2] } else { ' ' };
        if prev == '\n' && before == '\n' {
            4
        } else if prev == '\n' {
            3
        } else if prev.is_whitespace() && matches!(before, '.' | '?' | '!' | '。' | '！' | '？') {
            2
        } else if prev.is_whitespace() {
            1
        } else {
            0
        }
    };
    (earliest..=limit).rev().map(|end| (rank(end), end)).filter(|&(r, _)| r > 0).max_by_key(|&(r, end)| (r, end)).map(|(_, end)| end)
}

fn char_range_to_bytes(text: &str, start: usize, end: usize) -> (usize, usize) {
    let mut indices = text.char_indices().map(|(i, _)| i).chain([text.len()]);
    let a = indices.nth(start).unwrap_or(text.len());
    let b = if end > start { indices.nth(end - start - 1).unwrap_or(text.len()) } else { a };
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Document {
        Document { id: DocId::from_identity("t"), text: text.to_owned(), url: None, title: None, source: "t".into() }
    }

    fn sample_text(words: usize) -> String {
        (0..words)
            .map(|i| match i % 17 {
                16 => "end.\n\n".to_owned(),
                7 => format!("wörd{i}. "),
                3 => "日本語テキスト ".to_owned(),
                _ => format!("w{i} "),
            })
            .collect()
    }

    fn check_cover_and_overlap(text: &str, config: ChunkConfig) {
        let d = doc(text);
        let chunks = chunk_document(&d, &config);
        let n = text.chars().count();
        assert_eq!(chunks.first().unwrap().start, 0);
        assert_eq!(chunks.last().unwrap().end, n, "every character is in some chunk");
        for c in &chunks {
            assert!(c.end - c.start <= config.size, "chunk longer than the size");
            let expected: String = text.chars().skip(c.start).take(c.end - c.start).collect();
            assert_eq!(c.text, expected, "chunk text is exactly its range");
        }
        for pair in chunks.windows(2) {
            assert_eq!(pair[0].end - pair[1].start, config.overlap, "consecutive chunks overlap as configured");
            assert!(pair[1].start > pair[0].start);
            // The unique parts never overlap, so an own-text query has one right chunk.
            assert!(pair[0].start + pair[0].own_end <= pair[1].start + pair[1].own_start);
        }
    }

    #[test]
    fn covers_every_character_with_configured_overlap() {
        let text = sample_text(3000);
        check_cover_and_overlap(&text, ChunkConfig::default());
        check_cover_and_overlap(&text, ChunkConfig { size: 300, overlap: 50 });
        check_cover_and_overlap(&text, ChunkConfig { size: 100, overlap: 0 });
    }

    #[test]
    fn multibyte_text_without_spaces() {
        // No boundary at all: cut at the size limit, still on character boundaries.
        let text: String = "日本語🙂é".repeat(500);
        check_cover_and_overlap(&text, ChunkConfig { size: 128, overlap: 32 });
    }

    #[test]
    fn prefers_paragraph_then_sentence_boundaries() {
        let mut text = "a".repeat(850);
        text.push_str(". then more words here\n\nnext paragraph ");
        text.push_str(&"b ".repeat(400));
        let chunks = chunk_document(&doc(&text), &ChunkConfig::default());
        assert!(chunks[0].text.ends_with("here\n\n"), "{:?}", &chunks[0].text[800..]);
    }

    #[test]
    fn short_document_is_one_chunk_and_ids_are_stable() {
        let d = doc("short text");
        let a = chunk_document(&d, &ChunkConfig::default());
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].own_text(), "short text");
        assert_eq!(a, chunk_document(&d, &ChunkConfig::default()));
    }

    #[test]
    fn rejects_overlap_too_large() {
        assert!(ChunkConfig { size: 100, overlap: 50 }.validate().is_err());
        assert!(ChunkConfig { size: 100, overlap: 49 }.validate().is_ok());
        // An overlap whose double does not fit in a usize is refused, not wrapped.
        assert!(ChunkConfig { size: 100, overlap: usize::MAX / 2 + 1 }.validate().is_err());
        assert!(ChunkConfig { size: usize::MAX, overlap: usize::MAX }.validate().is_err());
    }
}
