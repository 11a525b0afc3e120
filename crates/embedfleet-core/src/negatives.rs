//! Mined hard negatives beside a dataset: `{split}_negatives.json`, `{query_id: [chunk_id, …]}`,
//! closest first. A separate file, so the eight files of the reference layout stay exactly as the
//! reference reads them; the chunk ids point into the same split's corpus.
//!
//! Also the export to the JSON Lines that sentence-transformers and FlagEmbedding train on.

use crate::dataset::{DatasetSplit, QaDataset, pretty_json};
use clap::ValueEnum;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Query id → its negatives' chunk ids, closest first; a query the guard left nothing for has an
/// empty list. Kept in the dataset's query order so the file is stable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HardNegatives(pub IndexMap<String, Vec<String>>);

#[derive(Debug, thiserror::Error)]
pub enum NegativesError {
    #[error("{source_name}: not a negatives file ({message}); expected {{\"query id\": [\"chunk id\", …]}}")]
    Malformed { source_name: String, message: String },
    #[error(
        "{source_name} names query '{query}', which the training set does not have; it was mined from another dataset: delete it or mine again"
    )]
    UnknownQuery { source_name: String, query: String },
    #[error(
        "{source_name}: negative '{chunk}' of query '{query}' is not in the training corpus; it was mined from another dataset: delete it or mine again"
    )]
    UnknownChunk { source_name: String, query: String, chunk: String },
    #[error("{source_name}: negative '{chunk}' of query '{query}' is one of its own relevant chunks")]
    PositiveAsNegative { source_name: String, query: String, chunk: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The JSON Lines layouts other trainers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    /// One `{"query", "pos", "neg"}` line per negative: sentence-transformers' (anchor, positive,
    /// negative) triplets, the default output of its `mine_hard_negatives`.
    #[default]
    Triplet,
    /// One `{"query", "pos", "neg_1", …, "neg_N"}` line per question that has all N negatives:
    /// sentence-transformers' n-tuples (every row needs the same columns, so shorter ones are left out).
    NTuple,
    /// One `{"query", "pos": [..], "neg": [..]}` line per question: FlagEmbedding's training format.
    Flag,
}

impl HardNegatives {
    /// `train_negatives.json`.
    pub fn file_name(split: DatasetSplit) -> String {
        format!("{}_negatives.json", split.name())
    }

    /// The negatives file beside a dataset file: `data/train_dataset.json` →
    /// `data/train_negatives.json`; any other `NAME.json` → `NAME_negatives.json`.
    pub fn path_beside(dataset: &Path) -> PathBuf {
        let name = dataset.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = name.strip_suffix("_dataset.json").or_else(|| name.strip_suffix(".json")).unwrap_or(&name);
        dataset.with_file_name(format!("{stem}_negatives.json"))
    }

    pub fn from_json(source_name: &str, bytes: &[u8]) -> Result<Self, NegativesError> {
        serde_json::from_slice(bytes).map_err(|e| NegativesError::Malformed { source_name: source_name.to_owned(), message: e.to_string() })
    }

    pub fn to_json(&self) -> Vec<u8> {
        pretty_json(self)
    }

    pub fn load(path: &Path) -> Result<Self, NegativesError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path)
            .map_err(|e| NegativesError::Malformed { source_name: name.clone(), message: format!("cannot read it: {e}") })?;
        Self::from_json(&name, &bytes)
    }

    /// Written whole to a temporary file and renamed, so a crash never leaves half a file that a
    /// later `finetune` would take for mined negatives.
    pub fn save(&self, path: &Path) -> Result<(), NegativesError> {
        let err = |e| NegativesError::Write { path: path.to_owned(), source: e };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let tmp = path.with_extension("json.partial");
        std::fs::write(&tmp, self.to_json()).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Every query and chunk must be the training set's, and no negative may be its query's own
    /// positive: a stale file from another dataset is refused, not trained on.
    pub fn validate(&self, dataset: &QaDataset, source_name: &str) -> Result<(), NegativesError> {
        for (query, chunks) in &self.0 {
            if !dataset.queries.contains_key(query) {
                return Err(NegativesError::UnknownQuery { source_name: source_name.into(), query: query.clone() });
            }
            let positives = dataset.relevant_docs.get(query);
            for chunk in chunks {
                if !dataset.corpus.contains_key(chunk) {
                    return Err(NegativesError::UnknownChunk {
                        source_name: source_name.into(),
                        query: query.clone(),
                        chunk: chunk.clone(),
                    });
                }
                if positives.is_some_and(|p| p.contains(chunk)) {
                    return Err(NegativesError::PositiveAsNegative {
                        source_name: source_name.into(),
                        query: query.clone(),
                        chunk: chunk.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The first `n` negatives of `query` (fewer when the guard left fewer).
    pub fn of(&self, query: &str, n: usize) -> &[String] {
        self.0.get(query).map(|v| &v[..v.len().min(n)]).unwrap_or(&[])
    }

    /// JSON Lines of (question, positive passage, negatives) in the dataset's query order, one
    /// positive per line as the pairs are trained. Returns the text and the number of lines.
    pub fn export_jsonl(&self, dataset: &QaDataset, format: ExportFormat, n: usize) -> (String, usize) {
        let mut out = String::new();
        let mut lines = 0;
        let mut push = |value: serde_json::Value| {
            out.push_str(&serde_json::to_string(&value).expect("strings serialize"));
            out.push('\n');
            lines += 1;
        };
        for (query_id, question) in &dataset.queries {
            let negatives: Vec<&str> = self.of(query_id, n).iter().filter_map(|c| dataset.corpus.get(c)).map(String::as_str).collect();
            for positive in dataset.relevant_docs.get(query_id).into_iter().flatten().filter_map(|c| dataset.corpus.get(c)) {
                match format {
                    ExportFormat::Triplet => {
                        for neg in &negatives {
                            push(serde_json::json!({"query": question, "pos": positive, "neg": neg}));
                        }
                    }
                    ExportFormat::NTuple if negatives.len() == n => {
                        let mut row = serde_json::Map::new();
                        row.insert("query".into(), question.as_str().into());
                        row.insert("pos".into(), positive.as_str().into());
                        for (i, neg) in negatives.iter().enumerate() {
                            row.insert(format!("neg_{}", i + 1), (*neg).into());
                        }
                        push(serde_json::Value::Object(row));
                    }
                    ExportFormat::NTuple => {}
                    ExportFormat::Flag => push(serde_json::json!({"query": question, "pos": [positive], "neg": negatives})),
                }
            }
        }
        (out, lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> QaDataset {
        let mut d = QaDataset::new();
        for (id, text) in [("da-0000", "alpha"), ("da-0001", "beta"), ("db-0000", "gamma"), ("db-0001", "delta")] {
            d.corpus.insert(id.into(), text.into());
        }
        d.queries.insert("da-0000-q0".into(), "what is alpha?".into());
        d.queries.insert("db-0000-q0".into(), "what is gamma?".into());
        d.relevant_docs.insert("da-0000-q0".into(), vec!["da-0000".into()]);
        d.relevant_docs.insert("db-0000-q0".into(), vec!["db-0000".into()]);
        d
    }

    fn negatives() -> HardNegatives {
        let mut n = HardNegatives::default();
        n.0.insert("da-0000-q0".into(), vec!["db-0000".into(), "db-0001".into()]);
        n.0.insert("db-0000-q0".into(), vec!["da-0001".into()]);
        n
    }

    #[test]
    fn the_file_lies_beside_the_dataset() {
        assert_eq!(HardNegatives::path_beside(Path::new("data/train_dataset.json")), Path::new("data/train_negatives.json"));
        assert_eq!(HardNegatives::path_beside(Path::new("x/mine.json")), Path::new("x/mine_negatives.json"));
        assert_eq!(HardNegatives::file_name(DatasetSplit::Train), "train_negatives.json");
    }

    #[test]
    fn round_trips_and_refuses_a_stale_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_negatives.json");
        negatives().save(&path).unwrap();
        let back = HardNegatives::load(&path).unwrap();
        assert_eq!(back, negatives());
        back.validate(&dataset(), "f").unwrap();
        assert_eq!(back.of("da-0000-q0", 1), ["db-0000"]);
        assert_eq!(back.of("db-0000-q0", 5), ["da-0001"]);
        assert!(back.of("nope", 5).is_empty());

        let mut stale = negatives();
        stale.0.insert("zz-q0".into(), vec![]);
        assert!(matches!(stale.validate(&dataset(), "f"), Err(NegativesError::UnknownQuery { .. })));
        let mut stale = negatives();
        stale.0["da-0000-q0"].push("dz-0009".into());
        assert!(matches!(stale.validate(&dataset(), "f"), Err(NegativesError::UnknownChunk { .. })));
        let mut own = negatives();
        own.0["da-0000-q0"].push("da-0000".into());
        assert!(matches!(own.validate(&dataset(), "f"), Err(NegativesError::PositiveAsNegative { .. })));
        assert!(matches!(HardNegatives::from_json("f", b"[1]"), Err(NegativesError::Malformed { .. })));
    }

    #[test]
    fn exports_the_three_layouts() {
        let (d, n) = (dataset(), negatives());
        let (text, lines) = n.export_jsonl(&d, ExportFormat::Triplet, 5);
        assert_eq!(lines, 3);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first, serde_json::json!({"query": "what is alpha?", "pos": "alpha", "neg": "gamma"}));
        let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text.lines().next().unwrap())
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["query", "pos", "neg"], "column order is what sentence-transformers trains on");

        let (text, lines) = n.export_jsonl(&d, ExportFormat::NTuple, 2);
        assert_eq!(lines, 1, "the query with one negative is left out of 2-tuples");
        assert!(text.contains("\"neg_2\":\"delta\""), "{text}");

        let (text, lines) = n.export_jsonl(&d, ExportFormat::Flag, 1);
        assert_eq!(lines, 2);
        assert!(text.starts_with(r#"{"query":"what is alpha?","pos":["alpha"],"neg":["gamma"]}"#), "{text}");
    }
}
