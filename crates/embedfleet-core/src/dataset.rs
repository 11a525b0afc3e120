//! The dataset in the reference's layout: for each of `train` and `val`, `<split>_corpus.json`
//! `{chunk_id: text}`, `<split>_queries.json` `{query_id: question}`, `<split>_relevant_docs.json`
//! `{query_id: [chunk_id]}` and `<split>_dataset.json` `{queries, corpus, relevant_docs}`; eight files.

use crate::store::{ArtifactStore, StoreError};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetSplit {
    Train,
    Val,
}

impl DatasetSplit {
    pub const ALL: [DatasetSplit; 2] = [DatasetSplit::Train, DatasetSplit::Val];

    pub fn name(self) -> &'static str {
        match self {
            DatasetSplit::Train => "train",
            DatasetSplit::Val => "val",
        }
    }
}

/// Questions, passages and which passages answer which question. Maps keep insertion order, as
/// the reference's Python dicts do, so files round-trip byte for byte.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QaDataset {
    pub queries: IndexMap<String, String>,
    pub corpus: IndexMap<String, String>,
    pub relevant_docs: IndexMap<String, Vec<String>>,
    /// LlamaIndex writes `"mode": "text"`; kept so its files and ours look alike.
    #[serde(default = "text_mode")]
    pub mode: String,
}

fn text_mode() -> String {
    "text".to_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{source_name}: not a dataset file ({message}); expected keys queries, corpus, relevant_docs")]
    Malformed { source_name: String, message: String },
    #[error("{source_name}: query '{query}' lists relevant document '{doc}', which is not in the corpus")]
    MissingCorpusId { source_name: String, query: String, doc: String },
    #[error("{source_name}: relevant_docs names query '{query}', which is not in queries")]
    MissingQuery { source_name: String, query: String },
    #[error("{source_name}: the dataset has no queries with relevant documents")]
    Empty { source_name: String },
    #[error("{location} already holds a different dataset; pass --overwrite to replace it, or choose another --output-dir")]
    WouldOverwrite { location: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QaDataset {
    pub fn new() -> Self {
        Self { mode: text_mode(), ..Default::default() }
    }

    /// Reads a `<split>_dataset.json` written by embedfleet or by the Python reference.
    pub fn from_json(source_name: &str, bytes: &[u8]) -> Result<Self, DatasetError> {
        serde_json::from_slice(bytes).map_err(|e| DatasetError::Malformed { source_name: source_name.to_owned(), message: e.to_string() })
    }

    pub fn load(path: &Path) -> Result<Self, DatasetError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path)
            .map_err(|e| DatasetError::Malformed { source_name: name.clone(), message: format!("cannot read it: {e}") })?;
        let dataset = Self::from_json(&name, &bytes)?;
        dataset.validate(&name)?;
        Ok(dataset)
    }

    /// Every relevant id must exist; a dataset with no usable query is refused.
    pub fn validate(&self, source_name: &str) -> Result<(), DatasetError> {
        for (query, docs) in &self.relevant_docs {
            if !self.queries.contains_key(query) {
                return Err(DatasetError::MissingQuery { source_name: source_name.into(), query: query.clone() });
            }
            if let Some(doc) = docs.iter().find(|d| !self.corpus.contains_key(*d)) {
                return Err(DatasetError::MissingCorpusId { source_name: source_name.into(), query: query.clone(), doc: doc.clone() });
            }
        }
        if !self.relevant_docs.values().any(|d| !d.is_empty()) {
            return Err(DatasetError::Empty { source_name: source_name.into() });
        }
        Ok(())
    }

    /// (question, passage) pairs in query order, one per relevant document.
    pub fn pairs(&self) -> Vec<(&str, &str, &str)> {
        self.queries
            .iter()
            .flat_map(|(qid, q)| {
                self.relevant_docs
                    .get(qid)
                    .into_iter()
                    .flatten()
                    .filter_map(move |cid| self.corpus.get(cid).map(|passage| (cid.as_str(), q.as_str(), passage.as_str())))
            })
            .collect()
    }

    /// The four files of one split, named as the reference names them.
    pub fn files(&self, split: DatasetSplit) -> Vec<(String, Vec<u8>)> {
        let name = split.name();
        vec![
            (format!("{name}_corpus.json"), pretty_json(&self.corpus)),
            (format!("{name}_queries.json"), pretty_json(&self.queries)),
            (format!("{name}_relevant_docs.json"), pretty_json(&self.relevant_docs)),
            (format!("{name}_dataset.json"), pretty_json(self)),
        ]
    }
}

/// Pretty JSON with a final newline, as a person would want to read the files.
pub fn pretty_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).expect("maps of strings always serialize");
    out.push(b'\n');
    out
}

/// Writes the eight files under `prefix` of `store`. Everything is serialized before the first
/// write, and each file is written atomically, so a failure leaves no half-written file. An
/// existing, different dataset is kept unless `overwrite`.
pub async fn write_dataset(
    store: &ArtifactStore,
    prefix: &str,
    train: &QaDataset,
    val: &QaDataset,
    overwrite: bool,
) -> Result<Vec<String>, DatasetError> {
    let files: Vec<(String, Vec<u8>)> = train.files(DatasetSplit::Train).into_iter().chain(val.files(DatasetSplit::Val)).collect();
    let key = |name: &str| if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
    if !overwrite {
        for (name, bytes) in &files {
            if let Some(existing) = store.get_opt(&key(name)).await?
                && existing.as_ref() != bytes.as_slice()
            {
                return Err(DatasetError::WouldOverwrite { location: store.describe(&key(name)) });
            }
        }
    }
    let mut written = Vec::with_capacity(files.len());
    for (name, bytes) in files {
        store.put(&key(&name), bytes).await?;
        written.push(key(&name));
    }
    Ok(written)
}

/// Reads one split's `_dataset.json` from a store and validates it. The file is parsed as it
/// arrives, so memory holds the dataset, not the dataset and its file too (a million-chunk
/// training set's file is a gigabyte).
pub async fn read_dataset(store: &ArtifactStore, prefix: &str, split: DatasetSplit) -> Result<QaDataset, DatasetError> {
    let name = format!("{}_dataset.json", split.name());
    let key = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
    let source_name = store.describe(&key);
    let reader = store.blocking_reader(&key).await?;
    let parse = move || -> Result<QaDataset, DatasetError> {
        let reader = std::io::BufReader::with_capacity(1 << 20, reader);
        let dataset: QaDataset = serde_json::from_reader(reader).map_err(|e| {
            if e.is_io() {
                // The store went away mid-read: an outage, not a malformed file.
                DatasetError::Store(StoreError::Backend { op: "read", location: source_name.clone(), message: e.to_string() })
            } else {
                DatasetError::Malformed { source_name: source_name.clone(), message: e.to_string() }
            }
        })?;
        dataset.validate(&source_name)?;
        Ok(dataset)
    };
    tokio::task::spawn_blocking(parse)
        .await
        .map_err(|e| DatasetError::Malformed { source_name: key, message: format!("reading it stopped: {e}") })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> QaDataset {
        let mut d = QaDataset::new();
        d.corpus.insert("c2".into(), "zwei".into());
        d.corpus.insert("c1".into(), "eins 🙂".into());
        d.queries.insert("q1".into(), "what is eins?".into());
        d.relevant_docs.insert("q1".into(), vec!["c1".into()]);
        d
    }

    #[test]
    fn reference_layout_loads() {
        // As LlamaIndex's EmbeddingQAFinetuneDataset.save_json writes it.
        let raw = br#"{"queries": {"7f0e-uuid": "What is X?"}, "corpus": {"node-1": "X is a thing.", "node-2": "Y."},
                       "relevant_docs": {"7f0e-uuid": ["node-1"]}, "mode": "text"}"#;
        let d = QaDataset::from_json("ref", raw).unwrap();
        d.validate("ref").unwrap();
        assert_eq!(d.pairs(), vec![("node-1", "What is X?", "X is a thing.")]);
        // Order of the corpus is kept as written.
        assert_eq!(d.corpus.keys().collect::<Vec<_>>(), ["node-1", "node-2"]);
    }

    #[test]
    fn validation_names_the_missing_id() {
        let mut d = sample();
        d.relevant_docs.insert("q1".into(), vec!["c9".into()]);
        let err = d.validate("x").unwrap_err().to_string();
        assert!(err.contains("'c9'"), "{err}");
        assert!(matches!(QaDataset::new().validate("x"), Err(DatasetError::Empty { .. })));
        assert!(matches!(QaDataset::from_json("x", b"{\"corpus\": 3}"), Err(DatasetError::Malformed { .. })));
    }

    #[tokio::test]
    async fn eight_files_round_trip_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::local(dir.path()).unwrap();
        let (train, val) = (sample(), sample());
        let written = write_dataset(&store, "", &train, &val, false).await.unwrap();
        assert_eq!(written.len(), 8);
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "train_corpus.json",
                "train_dataset.json",
                "train_queries.json",
                "train_relevant_docs.json",
                "val_corpus.json",
                "val_dataset.json",
                "val_queries.json",
                "val_relevant_docs.json"
            ]
        );
        assert_eq!(read_dataset(&store, "", DatasetSplit::Train).await.unwrap(), train);
        let corpus: IndexMap<String, String> = serde_json::from_slice(&std::fs::read(dir.path().join("val_corpus.json")).unwrap()).unwrap();
        assert_eq!(corpus, val.corpus);

        // Same content again is fine; different content is refused unless asked.
        write_dataset(&store, "", &train, &val, false).await.unwrap();
        let mut other = sample();
        other.queries.insert("q1".into(), "changed?".into());
        let err = write_dataset(&store, "", &other, &val, false).await.unwrap_err();
        assert!(matches!(err, DatasetError::WouldOverwrite { .. }), "{err}");
        assert_eq!(read_dataset(&store, "", DatasetSplit::Train).await.unwrap(), train, "nothing was touched");
        write_dataset(&store, "", &other, &val, true).await.unwrap();
        assert_eq!(read_dataset(&store, "", DatasetSplit::Train).await.unwrap(), other);
    }
}
