//! The generate stage: questions for every chunk from a [`QuestionGenerator`], then the dataset.
//! The CLI, `embedfleet run` and the fleet's coordinator and generator workers all go through here.

use crate::assemble::{AssembleError, StagedDataset, assemble_shards};
use crate::chunk::{Chunk, ChunkConfigError, chunk_document};
use crate::config::DatasetConfig;
use crate::dataset::QaDataset;
use crate::ids::{ChunkId, QueryId};
use crate::ingest::{IngestError, IngestOptions, for_each_document};
use crate::progress::Progress;
use crate::shard::{CorpusIndex, Shard, ShardKeys, Sharder, TaskQuestions, TooManyTasks};
use crate::split::{SplitConfig, SplitError, split_chunks};
use crate::store::{ArtifactStore, StoreError};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::Path;

/// Something that writes questions a chunk answers: the offline span cropper or an LLM.
pub trait QuestionGenerator: Send + Sync {
    /// How many chunks may be in flight at once.
    fn concurrency(&self) -> usize {
        1
    }

    /// Up to `n` questions whose right answer is `chunk`.
    fn questions(&self, chunk: &Chunk, n: usize) -> impl Future<Output = Result<Vec<String>, GenerateError>> + Send;
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum GenerateError {
    /// Nothing more can succeed until a setting changes (a wrong API key, an unknown model): stop
    /// starting chunks.
    #[error("{0}")]
    Fatal(String),
    /// The LLM server cannot be reached at all (not running, still booting): stop starting chunks.
    /// Locally that ends the command; on the fleet the task is retried later.
    #[error("{0}")]
    Unavailable(String),
    /// The budget is spent: stop starting chunks; the answers already paid for are kept.
    #[error("{0}")]
    BudgetReached(String),
    /// This chunk failed after its retries; others may still succeed.
    #[error("{0}")]
    ChunkFailed(String),
}

/// Why a generation stopped before every chunk was asked.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationStop {
    Fatal(String),
    Unavailable(String),
    BudgetReached(String),
}

impl std::fmt::Display for GenerationStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl GenerationStop {
    pub fn reason(&self) -> &str {
        match self {
            GenerationStop::Fatal(r) | GenerationStop::Unavailable(r) | GenerationStop::BudgetReached(r) => r,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkFailure {
    pub chunk_id: ChunkId,
    pub error: String,
}

#[derive(Debug, Default)]
pub struct GenerationOutcome {
    /// Questions per chunk, in chunk order; a chunk that failed or was not started is absent.
    pub questions: IndexMap<ChunkId, Vec<String>>,
    pub failures: Vec<ChunkFailure>,
    /// Why the run stopped early, when a generator said nothing more can succeed.
    pub stopped: Option<GenerationStop>,
}

/// Asks `generator` for `n` questions per chunk, `generator.concurrency()` chunks at a time.
/// A chunk failure is recorded and the others go on; a fatal error stops new chunks from starting
/// while those in flight finish, so no answer already paid for is lost.
pub async fn generate_questions<G: QuestionGenerator>(
    generator: &G,
    chunks: &[Chunk],
    n: usize,
    progress: &dyn Progress,
) -> GenerationOutcome {
    progress.start("questions", Some(chunks.len() as u64));
    // A hand-driven FuturesUnordered rather than `stream.map(..).buffer_unordered(..)`: the latter's
    // closure makes the whole future lose `Send` under higher-ranked lifetimes, and workers need it.
    let limit = generator.concurrency().max(1);
    let mut pending = chunks.iter().enumerate();
    let mut running = FuturesUnordered::new();
    let mut ordered: Vec<Option<Result<Vec<String>, GenerateError>>> = vec![None; chunks.len()];
    let mut stopped: Option<GenerationStop> = None;
    loop {
        while running.len() < limit && stopped.is_none() {
            let Some((i, chunk)) = pending.next() else { break };
            running.push(async move { (i, generator.questions(chunk, n).await) });
        }
        let Some((i, result)) = running.next().await else { break };
        let stop = match &result {
            Err(GenerateError::Fatal(r)) => Some(GenerationStop::Fatal(r.clone())),
            Err(GenerateError::Unavailable(r)) => Some(GenerationStop::Unavailable(r.clone())),
            Err(GenerateError::BudgetReached(r)) => Some(GenerationStop::BudgetReached(r.clone())),
            _ => None,
        };
        if let Some(stop) = stop {
            stopped.get_or_insert(stop);
        }
        progress.advance(1);
        ordered[i] = Some(result);
    }
    progress.finish();

    let mut outcome = GenerationOutcome { stopped, ..Default::default() };
    for (chunk, result) in chunks.iter().zip(ordered) {
        match result {
            Some(Ok(questions)) => {
                outcome.questions.insert(chunk.id.clone(), questions);
            }
            Some(Err(GenerateError::ChunkFailed(error))) => outcome.failures.push(ChunkFailure { chunk_id: chunk.id.clone(), error }),
            Some(Err(GenerateError::Fatal(_) | GenerateError::Unavailable(_) | GenerateError::BudgetReached(_))) | None => {}
        }
    }
    outcome
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub documents: usize,
    pub chunks: usize,
    pub questions: usize,
    pub train_chunks: usize,
    pub train_queries: usize,
    pub val_chunks: usize,
    pub val_queries: usize,
}

/// Splits the chunks and builds both datasets. Every chunk of a side is in its corpus (it is a
/// retrieval candidate even without questions); each question's only relevant chunk is its own.
pub fn assemble_dataset(
    chunks: &[Chunk],
    questions: &IndexMap<ChunkId, Vec<String>>,
    split: &SplitConfig,
) -> Result<(QaDataset, QaDataset, DatasetSummary), SplitError> {
    let sides = split_chunks(chunks, split)?;
    let build = |indices: &[usize]| {
        let mut dataset = QaDataset::new();
        for &i in indices {
            let chunk = &chunks[i];
            dataset.corpus.insert(chunk.id.to_string(), chunk.text.clone());
            for (k, q) in questions.get(&chunk.id).into_iter().flatten().enumerate() {
                let qid = QueryId::new(&chunk.id, k).to_string();
                dataset.queries.insert(qid.clone(), q.clone());
                dataset.relevant_docs.insert(qid, vec![chunk.id.to_string()]);
            }
        }
        dataset
    };
    let (train, val) = (build(&sides.train), build(&sides.val));
    let documents = chunks.iter().map(|c| &c.doc_id).collect::<std::collections::HashSet<_>>().len();
    let summary = DatasetSummary {
        documents,
        chunks: chunks.len(),
        questions: train.queries.len() + val.queries.len(),
        train_chunks: train.corpus.len(),
        train_queries: train.queries.len(),
        val_chunks: val.corpus.len(),
        val_queries: val.queries.len(),
    };
    Ok((train, val, summary))
}

/// Chunks per shard in the local `generate`: big enough that an LLM's concurrency rarely drains
/// at a shard's end, small enough that a shard's chunks and questions are a few megabytes.
pub const LOCAL_SHARD_CHUNKS: u32 = 2048;

#[derive(Debug, thiserror::Error)]
pub enum GenerateDatasetError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Chunk(#[from] ChunkConfigError),
    #[error(transparent)]
    TooManyTasks(#[from] TooManyTasks),
    #[error("question generation stopped: {0}. Answers so far are kept in the resume cache; fix the cause and run again")]
    Stopped(GenerationStop),
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where [`generate_dataset`] reads and writes.
pub struct GenerateDatasetOptions<'a> {
    /// The corpus: a JSON/JSONL file or a directory.
    pub input: &'a Path,
    pub config: &'a DatasetConfig,
    /// Scratch space (a temporary directory): the corpus, chunked, and the questions, a shard at
    /// a time, and the dataset's files until they are committed.
    pub work: &'a ArtifactStore,
}

/// A dataset generated and staged in the scratch space (commit it into the output to put it in
/// place), and the chunks that got no questions.
pub struct GeneratedDataset {
    pub staged: StagedDataset,
    pub failures: Vec<ChunkFailure>,
}

/// The whole generate stage in one process, streamed: documents are read and chunked one at a
/// time on a blocking thread, each shard of [`LOCAL_SHARD_CHUNKS`] chunks gets its questions and
/// is set aside in `work`, and the dataset is assembled from the shards exactly as the fleet's
/// coordinator assembles it. Memory holds a few shards, whatever the corpus's size.
pub async fn generate_dataset<G: QuestionGenerator>(
    generator: &G,
    options: &GenerateDatasetOptions<'_>,
    progress: &dyn Progress,
) -> Result<GeneratedDataset, GenerateDatasetError> {
    let config = options.config;
    let chunk_config = config.chunk_config();
    chunk_config.validate()?;
    let (tx, mut shards) = tokio::sync::mpsc::channel::<Shard>(2);
    let input = options.input.to_owned();
    let ingest = IngestOptions { text_field: config.text_field.clone() };
    let reader = tokio::task::spawn_blocking(move || -> Result<CorpusIndex, GenerateDatasetError> {
        let mut sharder = Sharder::new(LOCAL_SHARD_CHUNKS);
        for_each_document(&input, &ingest, |doc| -> Result<(), GenerateDatasetError> {
            for shard in sharder.push_document(chunk_document(&doc, &chunk_config))? {
                // The receiver is gone only when generation stopped; its reason is the error.
                let _ = tx.blocking_send(shard);
            }
            Ok(())
        })?;
        let (last, index) = sharder.finish()?;
        if let Some(shard) = last {
            let _ = tx.blocking_send(shard);
        }
        Ok(index)
    });
    let keys = ShardKeys::new("");
    let mut failures = Vec::new();
    progress.start("questions", None);
    let per_shard = AdvanceOnly(progress);
    while let Some(shard) = shards.recv().await {
        let outcome = generate_questions(generator, &shard.chunks, config.questions_per_chunk, &per_shard).await;
        if let Some(stop) = outcome.stopped {
            drop(shards);
            let _ = reader.await;
            return Err(GenerateDatasetError::Stopped(stop));
        }
        let part = TaskQuestions {
            questions: outcome.questions.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            failures: outcome.failures,
        };
        failures.extend(part.failures.iter().cloned());
        options.work.put(&keys.chunks(shard.task), serde_json::to_vec(&shard.chunks).expect("chunks serialize")).await?;
        options.work.put(&keys.questions(shard.task), serde_json::to_vec(&part).expect("questions serialize")).await?;
    }
    progress.finish();
    let index = reader.await.map_err(|e| StoreError::Backend {
        op: "read",
        location: options.input.display().to_string(),
        message: e.to_string(),
    })??;
    tracing::info!(documents = index.documents.len(), chunks = index.chunks, "chunked");
    let staged = assemble_shards(options.work, &keys, &index, &config.split_config(), options.work, "dataset").await?;
    Ok(GeneratedDataset { staged, failures })
}

/// Passes a shard's progress on to the whole run's bar, without starting a bar per shard.
struct AdvanceOnly<'a>(&'a dyn Progress);

impl Progress for AdvanceOnly<'_> {
    fn start(&self, _phase: &str, _total: Option<u64>) {}
    fn advance(&self, steps: u64) {
        self.0.advance(steps);
    }
    fn message(&self, message: &str) {
        self.0.message(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkConfig, chunk_documents};
    use crate::ids::DocId;
    use crate::ingest::Document;
    use crate::progress::NoProgress;

    /// Fails on chunks whose index is in `fail`, and fatally at `fatal`.
    struct Scripted {
        fail: Vec<usize>,
        fatal: Option<usize>,
    }

    impl QuestionGenerator for Scripted {
        async fn questions(&self, chunk: &Chunk, n: usize) -> Result<Vec<String>, GenerateError> {
            let index: usize = chunk.id.as_str().rsplit('-').next().unwrap().parse().unwrap();
            if self.fatal == Some(index) {
                return Err(GenerateError::Fatal("budget spent".into()));
            }
            if self.fail.contains(&index) {
                return Err(GenerateError::ChunkFailed("HTTP 500".into()));
            }
            Ok((0..n).map(|k| format!("q{k} about {}?", chunk.id)).collect())
        }
    }

    fn chunks() -> Vec<Chunk> {
        let doc = Document { id: DocId::from_identity("a"), text: "word ".repeat(400), url: None, title: None, source: "a".into() };
        chunk_documents(&[doc], &ChunkConfig { size: 100, overlap: 20 }).unwrap()
    }

    #[tokio::test]
    async fn failures_are_recorded_and_fatal_stops_new_work() {
        let chunks = chunks();
        let out = generate_questions(&Scripted { fail: vec![2], fatal: None }, &chunks, 2, &NoProgress).await;
        assert_eq!(out.questions.len(), chunks.len() - 1);
        assert_eq!(out.failures, vec![ChunkFailure { chunk_id: chunks[2].id.clone(), error: "HTTP 500".into() }]);
        assert!(out.questions.values().all(|q| q.len() == 2));

        let out = generate_questions(&Scripted { fail: vec![], fatal: Some(5) }, &chunks, 1, &NoProgress).await;
        assert_eq!(out.stopped, Some(GenerationStop::Fatal("budget spent".into())));
        assert_eq!(out.questions.len(), 5, "chunks before the fatal one are kept, none after it start");
    }

    #[test]
    fn every_question_points_at_its_own_chunk() {
        let chunks = chunks();
        let mut questions = IndexMap::new();
        for c in &chunks {
            questions.insert(c.id.clone(), vec![format!("about {}?", c.id)]);
        }
        let split = SplitConfig { by: crate::split::SplitBy::Chunk, ..Default::default() };
        let (train, val, summary) = assemble_dataset(&chunks, &questions, &split).unwrap();
        assert_eq!(summary.chunks, chunks.len());
        assert_eq!(summary.questions, chunks.len());
        for d in [&train, &val] {
            d.validate("t").unwrap();
            for (qid, docs) in &d.relevant_docs {
                assert_eq!(d.queries[qid], format!("about {}?", docs[0]));
            }
        }
    }
}
