//! Chunking any documents with any `--chunk-size`/`--chunk-overlap`, then what follows in
//! `generate`: offline questions, the split and the dataset, and the chunk list the fleet stores.
#![no_main]

use arbitrary::Arbitrary;
use embedfleet_core::chunk::chunk_documents;
use embedfleet_core::generate::assemble_dataset;
use embedfleet_core::ids::DocId;
use embedfleet_core::{Chunk, ChunkConfig, Document, OfflineGenerator, SplitBy, SplitConfig};
use indexmap::IndexMap;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    size: u16,
    overlap: u16,
    /// Replaces size and overlap by extremes a flag can carry (usize::MAX and friends).
    extreme: u8,
    questions: u8,
    seed: u64,
    ratio: u8,
    by_chunk: bool,
    texts: Vec<String>,
}

fn extremes(pick: u8, size: usize, overlap: usize) -> (usize, usize) {
    match pick {
        0 => (usize::MAX, usize::MAX),
        1 => (size, usize::MAX / 2 + 1),
        2 => (usize::MAX, overlap),
        3 => (size, usize::MAX),
        4 => (0, overlap),
        _ => (size, overlap),
    }
}

fuzz_target!(|input: Input| {
    let (size, overlap) = extremes(input.extreme, input.size as usize, input.overlap as usize);
    let config = ChunkConfig { size, overlap };
    let docs: Vec<Document> = input
        .texts
        .iter()
        .enumerate()
        .map(|(i, text)| Document {
            id: DocId::from_identity(&i.to_string()),
            text: text.clone(),
            url: None,
            title: None,
            source: i.to_string(),
        })
        .collect();
    let Ok(chunks) = chunk_documents(&docs, &config) else { return };
    for doc in &docs {
        let mine: Vec<&Chunk> = chunks.iter().filter(|c| c.doc_id == doc.id).collect();
        let n = doc.text.chars().count();
        if n == 0 {
            assert!(mine.is_empty());
            continue;
        }
        assert_eq!(mine[0].start, 0);
        assert_eq!(mine.last().unwrap().end, n, "every character is in a chunk");
        for c in &mine {
            assert!(c.end > c.start && c.end - c.start <= size);
            assert!(c.own_start <= c.own_end && c.own_end <= c.end - c.start);
            let expected: String = doc.text.chars().skip(c.start).take(c.end - c.start).collect();
            assert_eq!(c.text, expected);
            assert!(c.text.contains(c.own_text()));
        }
        for pair in mine.windows(2) {
            assert_eq!(pair[0].end - pair[1].start, overlap);
            assert!(pair[0].start + pair[0].own_end <= pair[1].start + pair[1].own_start);
        }
    }
    // The fleet stores the chunk list as JSON and generators read it back.
    let stored = serde_json::to_vec(&chunks).unwrap();
    let read: Vec<Chunk> = serde_json::from_slice(&stored).unwrap();
    assert_eq!(read, chunks);

    let want = (input.questions % 6) as usize;
    let offline = OfflineGenerator::new(input.seed);
    let mut questions = IndexMap::new();
    for chunk in &chunks {
        let spans = offline.spans(chunk, want);
        assert!(spans.len() <= want);
        for span in &spans {
            assert!(span.split_whitespace().all(|w| chunk.text.contains(w)), "{span:?} is not from the chunk");
        }
        questions.insert(chunk.id.clone(), spans);
    }
    let split = SplitConfig {
        train_ratio: input.ratio as f64 / 255.0,
        seed: input.seed,
        by: if input.by_chunk { SplitBy::Chunk } else { SplitBy::Document },
    };
    if let Ok((train, val, summary)) = assemble_dataset(&chunks, &questions, &split) {
        assert_eq!(summary.train_chunks + summary.val_chunks, summary.chunks);
        for d in [&train, &val] {
            if !d.queries.is_empty() {
                d.validate("fuzz").unwrap();
            }
        }
    }
});
