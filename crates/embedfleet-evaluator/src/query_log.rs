//! A query log as an evaluation set: the questions people asked, each with what answered it.
//!
//! The file is CSV (a header row) or JSON Lines (one object a line). Every row has `query` and at
//! least one label saying what answered it:
//! - `url`: the page; every chunk of the document with that URL is relevant.
//! - `doc_id`: the document, by the `id` field of a JSON corpus record, its file path in a
//!   directory corpus, or its URL; every chunk of it is relevant.
//! - `answer`: a text; every chunk that contains it (case and white space ignored) is relevant.
//! - `chunk_id`: one chunk, by the id `generate` gives it.
//!
//! A query whose label matches nothing in the corpus is never dropped silently: it is returned in
//! [`QueryLog::unmatched`] with the reason, for the command to count and list.

use crate::DocumentLabels;
use aho_corasick::AhoCorasick;
use embedfleet_core::QaDataset;
use embedfleet_core::chunk::Chunk;
use embedfleet_core::ingest::Document;
pub use embedfleet_core::query_file::{LABELS, LoggedQuery, QueryLogError, read_query_log};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// A query that matched no chunk, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unmatched {
    pub line: usize,
    pub query: String,
    pub reason: String,
}

/// The log turned into an evaluation set over a chunked corpus.
#[derive(Debug, Clone)]
pub struct QueryLog {
    /// Queries with at least one relevant chunk; the corpus is every chunk.
    pub dataset: QaDataset,
    pub documents: DocumentLabels,
    pub unmatched: Vec<Unmatched>,
    /// Rows read, matched or not.
    pub rows: usize,
    /// The log's path as the user gave it (empty until the caller sets it).
    pub file: String,
}

/// A URL as pages are compared: no fragment, no trailing slash, scheme and host in lower case.
pub fn normalize_url(url: &str) -> String {
    let url = url.trim();
    let url = url.split_once('#').map_or(url, |(u, _)| u);
    let url = url.trim_end_matches('/');
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
            let host = host.to_ascii_lowercase();
            if path.is_empty() {
                format!("{}://{host}", scheme.to_ascii_lowercase())
            } else {
                format!("{}://{host}/{path}", scheme.to_ascii_lowercase())
            }
        }
        None => url.to_owned(),
    }
}

/// Lower case, runs of white space as one space: how answers are found in chunks.
fn fold(text: &str) -> String {
    text.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ")
}

/// Matches every row of the log against the corpus's documents and chunks.
pub fn match_queries(rows: &[LoggedQuery], documents: &[Document], chunks: &[Chunk]) -> QueryLog {
    let mut by_url: HashMap<String, Vec<&str>> = HashMap::new();
    let mut by_doc: HashMap<String, Vec<&str>> = HashMap::new();
    for d in documents {
        let id = d.id.as_str();
        if let Some(url) = &d.url {
            by_url.entry(normalize_url(url)).or_default().push(id);
            by_doc.entry(url.clone()).or_default().push(id);
        }
        by_doc.entry(d.source.clone()).or_default().push(id);
        by_doc.entry(id.to_owned()).or_default().push(id);
    }
    let mut chunks_of: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut of_chunk = HashMap::new();
    for c in chunks {
        chunks_of.entry(c.doc_id.as_str()).or_default().push(c.id.as_str());
        of_chunk.insert(c.id.as_str().to_owned(), c.doc_id.as_str().to_owned());
    }

    // Every answer is looked for in every chunk in one pass over the corpus.
    let answers: Vec<(usize, String)> =
        rows.iter().enumerate().filter_map(|(i, r)| r.answer.as_deref().map(fold).filter(|a| !a.is_empty()).map(|a| (i, a))).collect();
    let mut answered_by: HashMap<usize, Vec<&str>> = HashMap::new();
    if !answers.is_empty() {
        let automaton = AhoCorasick::new(answers.iter().map(|(_, a)| a.as_str())).expect("answers fit an automaton");
        for c in chunks {
            let mut seen = HashSet::new();
            for m in automaton.find_overlapping_iter(&fold(&c.text)) {
                if seen.insert(m.pattern().as_usize()) {
                    answered_by.entry(answers[m.pattern().as_usize()].0).or_default().push(c.id.as_str());
                }
            }
        }
    }

    let mut log = QueryLog {
        dataset: QaDataset::new(),
        documents: DocumentLabels { of_chunk, relevant: Vec::new() },
        unmatched: Vec::new(),
        rows: rows.len(),
        file: String::new(),
    };
    for c in chunks {
        log.dataset.corpus.insert(c.id.as_str().to_owned(), c.text.clone());
    }
    for (i, row) in rows.iter().enumerate() {
        let mut docs: Vec<&str> = Vec::new();
        let mut relevant: Vec<&str> = Vec::new();
        let mut missing = Vec::new();
        if let Some(url) = &row.url {
            match by_url.get(&normalize_url(url)) {
                Some(d) => docs.extend(d),
                None => missing.push(format!("no document has url {url}")),
            }
        }
        if let Some(id) = &row.doc_id {
            let derived = embedfleet_core::ids::DocId::from_identity(id);
            match by_doc.get(id.as_str()).or_else(|| by_doc.get(derived.as_str())) {
                Some(d) => docs.extend(d),
                None => missing.push(format!("no document has id or path {id}")),
            }
        }
        for d in &docs {
            relevant.extend(chunks_of.get(d).into_iter().flatten());
        }
        if let Some(answer) = &row.answer {
            match answered_by.get(&i) {
                Some(found) => relevant.extend(found),
                None => missing.push(format!("no chunk contains the answer {:?}", shorten(answer, 80))),
            }
        }
        if let Some(id) = &row.chunk_id {
            match log.dataset.corpus.contains_key(id) {
                true => relevant.push(log.dataset.corpus.get_key_value(id).map(|(k, _)| k.as_str()).unwrap_or(id)),
                false => missing.push(format!("no chunk has id {id}")),
            }
        }
        relevant.sort_unstable();
        relevant.dedup();
        if relevant.is_empty() {
            log.unmatched.push(Unmatched { line: row.line, query: row.query.clone(), reason: missing.join("; ") });
            continue;
        }
        let query_id = format!("line-{}", row.line);
        let mut wanted: HashSet<String> = docs.iter().map(|d| (*d).to_owned()).collect();
        wanted.extend(relevant.iter().filter_map(|c| log.documents.of_chunk.get(*c)).cloned());
        log.dataset.queries.insert(query_id.clone(), row.query.clone());
        log.dataset.relevant_docs.insert(query_id, relevant.iter().map(|c| (*c).to_owned()).collect());
        log.documents.relevant.push(wanted);
    }
    log
}

fn shorten(text: &str, n: usize) -> String {
    if text.chars().count() <= n { text.to_owned() } else { format!("{}…", text.chars().take(n).collect::<String>()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_compare_without_fragment_slash_or_host_case() {
        assert_eq!(normalize_url("HTTPS://Docs.Example.com/a/b/#part"), "https://docs.example.com/a/b");
        assert_eq!(normalize_url("https://x.org/"), "https://x.org");
        assert_eq!(normalize_url("https://x.org/Path"), "https://x.org/Path");
    }
}
