//! A corpus cut into shards of consecutive chunks: the unit one generate task reads and writes.
//! The fleet and the local `generate` both stream the corpus into shards and assemble the dataset
//! from them, so neither ever holds the whole corpus, chunk list or question set, and both make the
//! same dataset from the same input.

use crate::chunk::Chunk;
use crate::generate::ChunkFailure;
use crate::ids::DocId;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// The most tasks one run may have. It bounds the run record's set of finished tasks (one bit
/// each: 128 KiB at this limit); a bigger corpus needs bigger tasks (`--chunks-per-task`).
pub const MAX_TASKS: u32 = 1 << 20;

/// Where a run's shards live in a store, under `prefix` (`runs/<run>` in the fleet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardKeys {
    prefix: String,
}

impl ShardKeys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.trim_end_matches('/').to_owned() }
    }

    fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() { rest.to_owned() } else { format!("{}/{rest}", self.prefix) }
    }

    /// The chunks of one task: a JSON array of [`Chunk`].
    pub fn chunks(&self, task: u32) -> String {
        self.key(&format!("chunks/task-{task:05}.json"))
    }

    /// The questions one task wrote: [`TaskQuestions`].
    pub fn questions(&self, task: u32) -> String {
        self.key(&format!("questions/task-{task:05}.json"))
    }

    /// The [`CorpusIndex`], written once every shard is.
    pub fn index(&self) -> String {
        self.key("chunks/index.json")
    }
}

/// What assembling needs to know of the whole corpus without reading it again: how it was cut,
/// and each document's chunk count in order (the train/validation split is by document). One
/// entry per document, never per chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CorpusIndex {
    pub chunks_per_task: u32,
    pub tasks: u32,
    pub chunks: u64,
    /// Every document with text, in corpus order, and how many chunks it has.
    pub documents: Vec<(DocId, u32)>,
}

/// Consecutive chunks of a corpus: one task's input.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    pub task: u32,
    /// Position of the shard's first chunk in the corpus.
    pub first: u64,
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "the corpus needs more than {max} generate tasks of {per} chunks; pass a larger --chunks-per-task (at least {needed}) or split the corpus into several runs",
    max = MAX_TASKS
)]
pub struct TooManyTasks {
    pub per: u32,
    /// A task size that would fit the chunks seen so far.
    pub needed: u64,
}

/// Cuts a stream of documents' chunks into shards of `chunks_per_task`, remembering only each
/// document's chunk count.
#[derive(Debug)]
pub struct Sharder {
    current: Vec<Chunk>,
    first: u64,
    index: CorpusIndex,
}

impl Sharder {
    pub fn new(chunks_per_task: u32) -> Self {
        let per = chunks_per_task.max(1);
        Self { current: Vec::with_capacity(per as usize), first: 0, index: CorpusIndex { chunks_per_task: per, ..Default::default() } }
    }

    /// Adds one document's chunks; returns the shards they completed, in order.
    pub fn push_document(&mut self, chunks: Vec<Chunk>) -> Result<Vec<Shard>, TooManyTasks> {
        let Some(first) = chunks.first() else { return Ok(Vec::new()) };
        self.index.documents.push((first.doc_id.clone(), chunks.len() as u32));
        let mut full = Vec::new();
        for chunk in chunks {
            self.current.push(chunk);
            self.index.chunks += 1;
            if self.current.len() as u32 == self.index.chunks_per_task {
                full.push(self.cut()?);
            }
        }
        Ok(full)
    }

    /// Chunks seen so far.
    pub fn chunks(&self) -> u64 {
        self.index.chunks
    }

    fn cut(&mut self) -> Result<Shard, TooManyTasks> {
        if self.index.tasks >= MAX_TASKS {
            return Err(TooManyTasks { per: self.index.chunks_per_task, needed: self.index.chunks.div_ceil(u64::from(MAX_TASKS)) * 2 });
        }
        let chunks = std::mem::replace(&mut self.current, Vec::with_capacity(self.index.chunks_per_task as usize));
        let shard = Shard { task: self.index.tasks, first: self.first, chunks };
        self.first += shard.chunks.len() as u64;
        self.index.tasks += 1;
        Ok(shard)
    }

    /// The last, partial shard (if any) and the index of the whole corpus.
    pub fn finish(mut self) -> Result<(Option<Shard>, CorpusIndex), TooManyTasks> {
        let last = if self.current.is_empty() { None } else { Some(self.cut()?) };
        Ok((last, self.index))
    }
}

/// What one generate task wrote: questions per chunk (in chunk order; a chunk that failed or was
/// not asked is absent) and the chunks that failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskQuestions {
    pub questions: IndexMap<String, Vec<String>>,
    pub failures: Vec<ChunkFailure>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkConfig, chunk_document};
    use crate::ingest::Document;

    fn doc(i: usize, words: usize) -> Document {
        Document { id: DocId::from_identity(&i.to_string()), text: "word ".repeat(words), url: None, title: None, source: i.to_string() }
    }

    #[test]
    fn shards_hold_consecutive_chunks_across_documents() {
        let config = ChunkConfig { size: 100, overlap: 20 };
        let docs: Vec<Document> = (0..7).map(|i| doc(i, 20 + 37 * i)).collect();
        let all: Vec<Chunk> = docs.iter().flat_map(|d| chunk_document(d, &config)).collect();
        let mut sharder = Sharder::new(4);
        let mut shards = Vec::new();
        for d in &docs {
            shards.extend(sharder.push_document(chunk_document(d, &config)).unwrap());
        }
        let (last, index) = sharder.finish().unwrap();
        shards.extend(last);
        assert_eq!(index.chunks, all.len() as u64);
        assert_eq!(index.tasks as usize, shards.len());
        assert_eq!(index.tasks as usize, all.len().div_ceil(4));
        let joined: Vec<Chunk> = shards.iter().flat_map(|s| s.chunks.clone()).collect();
        assert_eq!(joined, all);
        for (t, s) in shards.iter().enumerate() {
            assert_eq!(s.task as usize, t);
            assert_eq!(s.first, 4 * t as u64);
        }
        let counts: Vec<u32> = index.documents.iter().map(|(_, n)| *n).collect();
        let expected: Vec<u32> = docs.iter().map(|d| chunk_document(d, &config).len() as u32).collect();
        assert_eq!(counts, expected);
    }

    #[test]
    fn too_many_tasks_is_an_error_that_names_the_flag() {
        let mut sharder = Sharder::new(1);
        sharder.index.tasks = MAX_TASKS;
        let chunk = chunk_document(&doc(0, 3), &ChunkConfig::default());
        let err = sharder.push_document(chunk).unwrap_err();
        assert!(err.to_string().contains("--chunks-per-task"), "{err}");
    }

    #[test]
    fn keys_are_under_the_prefix() {
        assert_eq!(ShardKeys::new("runs/r1/").chunks(3), "runs/r1/chunks/task-00003.json");
        assert_eq!(ShardKeys::new("").questions(12), "questions/task-00012.json");
        assert_eq!(ShardKeys::new("runs/r1").index(), "runs/r1/chunks/index.json");
    }
}
