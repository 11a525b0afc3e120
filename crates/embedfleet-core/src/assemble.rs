//! Assembling the dataset from a corpus's shards, streamed: each shard's chunks and questions are
//! read in order and written straight into the eight files, so memory holds a few shards whatever
//! the corpus's size. The files are byte for byte what [`crate::dataset::write_dataset`] writes for
//! the same dataset held in memory.

use crate::chunk::Chunk;
use crate::dataset::{DatasetError, DatasetSplit};
use crate::generate::DatasetSummary;
use crate::ids::QueryId;
use crate::shard::{CorpusIndex, ShardKeys, TaskQuestions};
use crate::split::{SplitConfig, SplitError, split_corpus};
use crate::store::{ArtifactStore, ObjectWriter, StoreError};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

/// Shards read ahead of the one being written: reads overlap the writes.
const READ_AHEAD: usize = 8;
/// Bytes gathered before a write to the store.
const FLUSH_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{location} is not what a generate task writes: {message}")]
    Malformed { location: String, message: String },
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("the split left {train} training and {val} validation questions; both need some. Add documents or change --train-ratio")]
    OneSided { train: usize, val: usize },
}

impl crate::Transient for AssembleError {
    fn is_transient(&self) -> bool {
        match self {
            AssembleError::Store(e) => e.is_transient(),
            AssembleError::Dataset(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// A JSON object written entry by entry, byte for byte as serde_json's pretty printer writes the
/// whole map, into one object of the store.
struct JsonObjectWriter {
    out: ObjectWriter,
    buf: Vec<u8>,
    entries: u64,
}

impl JsonObjectWriter {
    fn new(out: ObjectWriter) -> Self {
        Self { out, buf: b"{".to_vec(), entries: 0 }
    }

    fn key(&mut self, key: &str) {
        self.buf.extend_from_slice(if self.entries == 0 { b"\n  " } else { b",\n  " });
        self.entries += 1;
        serde_json::to_writer(&mut self.buf, key).expect("a string always serializes");
        self.buf.extend_from_slice(b": ");
    }

    async fn string(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.key(key);
        serde_json::to_writer(&mut self.buf, value).expect("a string always serializes");
        self.flush_if_full().await
    }

    async fn list(&mut self, key: &str, values: &[&str]) -> Result<(), StoreError> {
        self.key(key);
        if values.is_empty() {
            self.buf.extend_from_slice(b"[]");
        } else {
            self.buf.push(b'[');
            for (i, v) in values.iter().enumerate() {
                self.buf.extend_from_slice(if i == 0 { b"\n    " } else { b",\n    " });
                serde_json::to_writer(&mut self.buf, v).expect("a string always serializes");
            }
            self.buf.extend_from_slice(b"\n  ]");
        }
        self.flush_if_full().await
    }

    async fn flush_if_full(&mut self) -> Result<(), StoreError> {
        if self.buf.len() >= FLUSH_BYTES {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(FLUSH_BYTES + 4096));
            self.out.write(full.into()).await?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<u64, StoreError> {
        self.buf.extend_from_slice(if self.entries == 0 { b"}\n" } else { b"\n}\n" });
        let rest = std::mem::take(&mut self.buf);
        self.out.write(rest.into()).await?;
        self.out.finish().await
    }
}

/// The three single-purpose files of one split, being written.
struct SplitFiles {
    corpus: JsonObjectWriter,
    queries: JsonObjectWriter,
    relevant_docs: JsonObjectWriter,
}

/// The eight dataset files, written as chunks arrive. They are staged under
/// `<prefix>/.partial-<nonce>/`, a folder of this writer's own (two coordinator replicas may
/// assemble the same run at once), and moved into place by [`StagedDataset::commit`], so a
/// failure or a refused overwrite leaves any dataset already there untouched.
pub struct DatasetWriter {
    store: ArtifactStore,
    prefix: String,
    staging: String,
    train: SplitFiles,
    val: SplitFiles,
    summary: DatasetSummary,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_owned() } else { format!("{}/{name}", prefix.trim_end_matches('/')) }
}

/// The names of the eight files, in the order they are written.
fn file_names() -> Vec<String> {
    let mut names = Vec::new();
    for split in DatasetSplit::ALL {
        for part in ["corpus", "queries", "relevant_docs", "dataset"] {
            names.push(format!("{}_{part}.json", split.name()));
        }
    }
    names
}

impl DatasetWriter {
    pub fn new(store: &ArtifactStore, prefix: &str) -> Self {
        let staging = join(prefix, &format!(".partial-{:016x}", rand::random::<u64>()));
        let files = |split: DatasetSplit| {
            let open = |part: &str| JsonObjectWriter::new(store.writer(&join(&staging, &format!("{}_{part}.json", split.name()))));
            SplitFiles { corpus: open("corpus"), queries: open("queries"), relevant_docs: open("relevant_docs") }
        };
        Self {
            store: store.clone(),
            prefix: prefix.to_owned(),
            train: files(DatasetSplit::Train),
            val: files(DatasetSplit::Val),
            staging: staging.clone(),
            summary: DatasetSummary::default(),
        }
    }

    /// Adds one chunk to its side's corpus, and its questions (each answered by it alone).
    pub async fn add(&mut self, chunk: &Chunk, questions: &[String], train: bool) -> Result<(), StoreError> {
        let files = if train { &mut self.train } else { &mut self.val };
        let id = chunk.id.as_str();
        files.corpus.string(id, &chunk.text).await?;
        for (k, q) in questions.iter().enumerate() {
            let qid = QueryId::new(&chunk.id, k).to_string();
            files.queries.string(&qid, q).await?;
            files.relevant_docs.list(&qid, &[id]).await?;
        }
        let n = questions.len();
        self.summary.chunks += 1;
        self.summary.questions += n;
        if train {
            self.summary.train_chunks += 1;
            self.summary.train_queries += n;
        } else {
            self.summary.val_chunks += 1;
            self.summary.val_queries += n;
        }
        Ok(())
    }

    /// Completes the staged files, `<split>_dataset.json` included. `documents` goes into the
    /// summary as given (the writer sees chunks, not documents).
    pub async fn finish(self, documents: usize) -> Result<StagedDataset, StoreError> {
        let staging = self.staging.clone();
        // The two splits are completed side by side: composing a dataset file re-reads its parts.
        let finish = |split: DatasetSplit, files: SplitFiles| {
            let (store, staging) = (&self.store, &staging);
            async move {
                files.corpus.finish().await?;
                files.queries.finish().await?;
                files.relevant_docs.finish().await?;
                compose_dataset_file(store, staging, split).await
            }
        };
        let (train, val) = futures::join!(finish(DatasetSplit::Train, self.train), finish(DatasetSplit::Val, self.val));
        train?;
        val?;
        Ok(StagedDataset { store: self.store, prefix: self.prefix, staging, summary: DatasetSummary { documents, ..self.summary } })
    }
}

/// `<split>_dataset.json` (`{queries, corpus, relevant_docs, mode}`) from the three staged files,
/// streamed: the nested maps are the files' own lines, indented one level more.
async fn compose_dataset_file(store: &ArtifactStore, staging: &str, split: DatasetSplit) -> Result<u64, StoreError> {
    let name = split.name();
    let mut out = store.writer(&join(staging, &format!("{name}_dataset.json")));
    out.write(Bytes::from_static(b"{\n")).await?;
    for (i, part) in ["queries", "corpus", "relevant_docs"].into_iter().enumerate() {
        let head = format!("{}  \"{part}\": ", if i == 0 { "" } else { ",\n" });
        out.write(head.into()).await?;
        let key = join(staging, &format!("{name}_{part}.json"));
        let mut parts = store.get_stream(&key).await?;
        // A newline is written only once more bytes follow it: the file's final one is dropped.
        let mut newline_pending = false;
        while let Some(bytes) = parts.try_next().await? {
            let mut indented = Vec::with_capacity(bytes.len() + bytes.len() / 16);
            for &b in bytes.iter() {
                if newline_pending {
                    indented.extend_from_slice(b"\n  ");
                    newline_pending = false;
                }
                if b == b'\n' {
                    newline_pending = true;
                } else {
                    indented.push(b);
                }
            }
            out.write(indented.into()).await?;
        }
    }
    out.write(Bytes::from_static(b",\n  \"mode\": \"text\"\n}\n")).await?;
    out.finish().await
}

/// The eight files, complete and staged; nothing is in place until [`StagedDataset::commit`].
pub struct StagedDataset {
    store: ArtifactStore,
    prefix: String,
    staging: String,
    pub summary: DatasetSummary,
}

impl StagedDataset {
    /// Moves the files into place and returns their keys. An existing, different dataset is kept
    /// (and the staged one removed) unless `overwrite`; the same one again is fine.
    pub async fn commit(self, overwrite: bool) -> Result<Vec<String>, DatasetError> {
        let staging = self.staging.clone();
        let names = file_names();
        if !overwrite {
            for name in &names {
                let (old, new) = (join(&self.prefix, name), join(&staging, name));
                if self.store.size(&old).await?.is_some() && !same_bytes(&self.store, &old, &self.store, &new).await? {
                    let location = self.store.describe(&old);
                    self.discard().await;
                    return Err(DatasetError::WouldOverwrite { location });
                }
            }
        }
        let mut written = Vec::with_capacity(names.len());
        for name in &names {
            let target = join(&self.prefix, name);
            self.store.rename(&join(&staging, name), &target).await?;
            written.push(target);
        }
        self.store.remove_empty_dir(&staging);
        Ok(written)
    }

    /// Copies the files into `out` under `prefix`, streamed, and removes the staged ones: for a
    /// dataset staged in scratch space, so the output is touched only once the dataset is whole.
    /// The same rule as [`StagedDataset::commit`] for a different dataset already there.
    pub async fn commit_into(self, out: &ArtifactStore, prefix: &str, overwrite: bool) -> Result<Vec<String>, DatasetError> {
        let staging = self.staging.clone();
        let names = file_names();
        if !overwrite {
            for name in &names {
                let old = join(prefix, name);
                if out.size(&old).await?.is_some() && !same_bytes(out, &old, &self.store, &join(&staging, name)).await? {
                    self.discard().await;
                    return Err(DatasetError::WouldOverwrite { location: out.describe(&old) });
                }
            }
        }
        let mut written = Vec::with_capacity(names.len());
        for name in &names {
            let target = join(prefix, name);
            let mut parts = self.store.get_stream(&join(&staging, name)).await?;
            let mut writer = out.writer(&target);
            while let Some(part) = parts.try_next().await? {
                writer.write(part).await?;
            }
            writer.finish().await?;
            written.push(target);
        }
        self.discard().await;
        Ok(written)
    }

    /// Removes the staged files.
    pub async fn discard(self) {
        let staging = self.staging.clone();
        for name in file_names() {
            let _ = self.store.delete(&join(&staging, &name)).await;
        }
        self.store.remove_empty_dir(&staging);
    }
}

/// Whether two objects, perhaps in two stores, hold the same bytes.
async fn same_bytes(a: &ArtifactStore, a_key: &str, b: &ArtifactStore, b_key: &str) -> Result<bool, StoreError> {
    use sha2::{Digest, Sha256};
    if a.size(a_key).await? != b.size(b_key).await? {
        return Ok(false);
    }
    let mut digests = Vec::with_capacity(2);
    for (store, key) in [(a, a_key), (b, b_key)] {
        let mut hasher = Sha256::new();
        let mut parts = store.get_stream(key).await?;
        while let Some(part) = parts.try_next().await? {
            hasher.update(&part);
        }
        digests.push(hasher.finalize());
    }
    Ok(digests[0] == digests[1])
}

/// Reads what one task left: its chunks and its questions.
async fn read_shard(store: &ArtifactStore, keys: &ShardKeys, task: u32) -> Result<(Vec<Chunk>, TaskQuestions), AssembleError> {
    let chunks_key = keys.chunks(task);
    let chunks: Vec<Chunk> = serde_json::from_slice(&store.get(&chunks_key).await?)
        .map_err(|e| AssembleError::Malformed { location: store.describe(&chunks_key), message: e.to_string() })?;
    let questions_key = keys.questions(task);
    let questions: TaskQuestions = serde_json::from_slice(&store.get(&questions_key).await?)
        .map_err(|e| AssembleError::Malformed { location: store.describe(&questions_key), message: e.to_string() })?;
    Ok((chunks, questions))
}

/// Splits the corpus and writes the dataset of every task's questions under `out_prefix` of
/// `out`, streamed from the shards under `keys` in `source`. Every chunk is in its side's corpus
/// (a retrieval candidate even without questions); each question's only relevant chunk is its own.
/// The files are staged; the caller commits them.
pub async fn assemble_shards(
    source: &ArtifactStore,
    keys: &ShardKeys,
    index: &CorpusIndex,
    split: &SplitConfig,
    out: &ArtifactStore,
    out_prefix: &str,
) -> Result<StagedDataset, AssembleError> {
    let selection = split_corpus(&index.documents, index.chunks, split)?;
    let mut writer = DatasetWriter::new(out, out_prefix);
    let mut shards = futures::stream::iter(0..index.tasks).map(|task| read_shard(source, keys, task)).buffered(READ_AHEAD);
    let mut position = 0u64;
    let no_questions: Vec<String> = Vec::new();
    while let Some(shard) = shards.next().await {
        let (chunks, mut questions) = shard?;
        for chunk in &chunks {
            let qs = questions.questions.swap_remove(chunk.id.as_str());
            let train = selection.is_train(position, &chunk.doc_id);
            writer.add(chunk, qs.as_ref().unwrap_or(&no_questions), train).await?;
            position += 1;
        }
    }
    let staged = writer.finish(index.documents.len()).await?;
    let s = &staged.summary;
    if s.train_queries == 0 || s.val_queries == 0 {
        let (train, val) = (s.train_queries, s.val_queries);
        staged.discard().await;
        return Err(AssembleError::OneSided { train, val });
    }
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkConfig, chunk_document};
    use crate::dataset::write_dataset;
    use crate::generate::assemble_dataset;
    use crate::ids::{ChunkId, DocId};
    use crate::ingest::Document;
    use crate::shard::Sharder;
    use crate::split::SplitBy;
    use indexmap::IndexMap;
    use proptest::prelude::*;

    fn docs(sizes: &[usize]) -> Vec<Document> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Document {
                id: DocId::from_identity(&format!("d{i}")),
                text: format!("doc {i} \"quoted\" ü\t").repeat(n),
                url: None,
                title: None,
                source: i.to_string(),
            })
            .collect()
    }

    /// Writes shards and questions as the generate tasks would, then assembles both ways.
    /// None when the split leaves a side without questions: an error both ways.
    async fn both_ways(
        sizes: &[usize],
        per: u32,
        questions_of: impl Fn(usize) -> usize,
        split: SplitConfig,
    ) -> Option<(tempfile::TempDir, tempfile::TempDir)> {
        let config = ChunkConfig { size: 120, overlap: 20 };
        let docs = docs(sizes);
        let shards_dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::local(shards_dir.path()).unwrap();
        let keys = ShardKeys::new("runs/r");
        let mut sharder = Sharder::new(per);
        let mut all_chunks = Vec::new();
        let mut all_questions: IndexMap<ChunkId, Vec<String>> = IndexMap::new();
        let mut shards = Vec::new();
        for d in &docs {
            let chunks = chunk_document(d, &config);
            all_chunks.extend(chunks.clone());
            shards.extend(sharder.push_document(chunks).unwrap());
        }
        let (last, index) = sharder.finish().unwrap();
        shards.extend(last);
        let mut position = 0;
        for shard in &shards {
            store.put(&keys.chunks(shard.task), serde_json::to_vec(&shard.chunks).unwrap()).await.unwrap();
            let mut part = TaskQuestions::default();
            for c in &shard.chunks {
                let n = questions_of(position);
                position += 1;
                if n == usize::MAX {
                    continue; // a chunk that failed: no entry at all
                }
                let qs: Vec<String> = (0..n).map(|k| format!("q{k} of {}? \u{1F642}", c.id)).collect();
                all_questions.insert(c.id.clone(), qs.clone());
                part.questions.insert(c.id.to_string(), qs);
            }
            store.put(&keys.questions(shard.task), serde_json::to_vec(&part).unwrap()).await.unwrap();
        }
        let streamed_dir = tempfile::tempdir().unwrap();
        let out = ArtifactStore::local(streamed_dir.path()).unwrap();
        let (train, val, summary) = assemble_dataset(&all_chunks, &all_questions, &split).unwrap();
        let staged = match assemble_shards(&store, &keys, &index, &split, &out, "data").await {
            Err(AssembleError::OneSided { train: t, val: v }) => {
                assert_eq!((t, v), (train.queries.len(), val.queries.len()));
                assert!(t == 0 || v == 0);
                return None;
            }
            other => other.unwrap(),
        };
        assert_eq!(staged.summary, summary);
        staged.commit(false).await.unwrap();
        let memory_dir = tempfile::tempdir().unwrap();
        write_dataset(&ArtifactStore::local(memory_dir.path()).unwrap(), "data", &train, &val, false).await.unwrap();
        Some((streamed_dir, memory_dir))
    }

    fn assert_same_files(a: &std::path::Path, b: &std::path::Path) {
        for name in file_names() {
            let (x, y) = (std::fs::read(a.join("data").join(&name)).unwrap(), std::fs::read(b.join("data").join(&name)).unwrap());
            assert!(x == y, "{name} differs:\n{}\n---\n{}", String::from_utf8_lossy(&x), String::from_utf8_lossy(&y));
        }
        let left: Vec<_> = std::fs::read_dir(a.join("data"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".partial"))
            .collect();
        assert!(left.is_empty(), "staging is cleared: {left:?}");
    }

    #[tokio::test]
    async fn streamed_files_equal_the_in_memory_ones_byte_for_byte() {
        let split = SplitConfig::default();
        let (a, b) = both_ways(&[3, 40, 1, 17, 9, 25, 2], 3, |i| [2, 0, 1, usize::MAX, 3][i % 5], split).await.unwrap();
        assert_same_files(a.path(), b.path());
        let by_chunk = SplitConfig { by: SplitBy::Chunk, seed: 7, ..Default::default() };
        let (a, b) = both_ways(&[5, 5, 30], 1, |_| 2, by_chunk).await.unwrap();
        assert_same_files(a.path(), b.path());
    }

    #[tokio::test]
    async fn a_different_dataset_is_not_replaced_unless_asked() {
        let (dir, _) = both_ways(&[10, 10, 10], 4, |_| 2, SplitConfig::default()).await.unwrap();
        let store = ArtifactStore::local(dir.path()).unwrap();
        let before = std::fs::read(dir.path().join("data/train_queries.json")).unwrap();
        // The same dataset again is fine.
        let mut writer = DatasetWriter::new(&store, "data");
        let doc = &docs(&[4])[0];
        for (i, c) in chunk_document(doc, &ChunkConfig { size: 120, overlap: 20 }).iter().enumerate() {
            writer.add(c, &["other?".to_owned()], i % 2 == 0).await.unwrap();
        }
        let staged = writer.finish(1).await.unwrap();
        let err = staged.commit(false).await.unwrap_err();
        assert!(matches!(err, DatasetError::WouldOverwrite { .. }), "{err}");
        assert_eq!(std::fs::read(dir.path().join("data/train_queries.json")).unwrap(), before, "nothing was touched");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("data"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".partial"))
            .collect();
        assert!(left.is_empty(), "the refused files are removed: {left:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn any_corpus_streams_to_the_same_bytes(sizes in proptest::collection::vec(1usize..30, 2..9), per in 1u32..6, seed in 0u64..50, by_chunk: bool) {
            let split = SplitConfig { seed, by: if by_chunk { SplitBy::Chunk } else { SplitBy::Document }, ..Default::default() };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                // A split that leaves a side without questions is the same error both ways.
                if let Some((a, b)) = both_ways(&sizes, per, |i| (i * 7 + seed as usize) % 4, split).await {
                    assert_same_files(a.path(), b.path());
                }
            });
        }
    }
}
