//! The round-trip filter with the real all-MiniLM-L6-v2, and a query log matched against a chunked
//! corpus by URL, document id, answer text and chunk id, with the queries that match nothing kept
//! aside and listed.

use embedfleet_core::QaDataset;
use embedfleet_core::chunk::chunk_documents;
use embedfleet_core::ingest::{IngestOptions, load_documents};
use embedfleet_core::query_file::read_query_log;
use embedfleet_evaluator::query_log::match_queries;
use embedfleet_evaluator::round_trip::round_trip_filter;
use embedfleet_model::{LoadOptions, SentenceEncoder};
use std::path::PathBuf;

fn minilm() -> SentenceEncoder {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.deps/all-MiniLM-L6-v2");
    assert!(dir.join("config.json").exists(), "run scripts/setup.sh first");
    SentenceEncoder::load(&dir, LoadOptions::default()).unwrap()
}

const PASSAGES: [(&str, &str); 4] = [
    ("c-backup", "To back up the database, run the dump command nightly and copy the archive to another machine."),
    ("c-tls", "TLS certificates are renewed automatically thirty days before they expire; the server reloads them without a restart."),
    ("c-quota", "Each tenant has a storage quota; writes beyond it are refused with an error until old data is deleted."),
    ("c-index", "An index speeds up lookups on a column at the cost of slower writes and more disk space."),
];

#[test]
fn the_round_trip_drops_questions_their_own_chunk_does_not_answer() {
    let mut d = QaDataset::new();
    for (id, text) in PASSAGES {
        d.corpus.insert(id.into(), text.into());
    }
    let questions = [
        ("q-backup", "how do I back up my database every night?", "c-backup"),
        ("q-tls", "when are TLS certificates renewed?", "c-tls"),
        ("q-quota", "what happens when a tenant goes over its storage quota?", "c-quota"),
        // Labelled with the wrong chunk: the index passage does not answer it, the TLS one does.
        ("q-wrong", "does the server need a restart after a new certificate?", "c-index"),
        ("q-index", "why would an index make writes slower?", "c-index"),
    ];
    for (qid, text, chunk) in questions {
        d.queries.insert(qid.into(), text.into());
        d.relevant_docs.insert(qid.into(), vec![chunk.into()]);
    }
    let (kept, report) = round_trip_filter(&minilm(), &d, 1, 8, None).unwrap();
    assert_eq!((report.kept, report.dropped), (4, 1), "{report:?}");
    assert_eq!(report.examples, ["does the server need a restart after a new certificate?"]);
    assert!(!kept.queries.contains_key("q-wrong") && !kept.relevant_docs.contains_key("q-wrong"));
    assert_eq!(kept.corpus.len(), 4, "the corpus stays whole");
    // With the whole corpus as the top K, nothing fails.
    let (_, all) = round_trip_filter(&minilm(), &d, 4, 8, None).unwrap();
    assert_eq!((all.kept, all.dropped), (5, 0));
}

#[test]
fn a_query_log_matches_by_url_doc_id_answer_and_chunk_and_lists_what_matches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("site.json");
    let docs: Vec<serde_json::Value> = PASSAGES
        .iter()
        .map(|(id, text)| serde_json::json!({"id": id, "url": format!("https://docs.example.com/{id}/"), "text": text}))
        .collect();
    std::fs::write(&corpus, serde_json::to_vec(&docs).unwrap()).unwrap();
    let documents = load_documents(&corpus, &IngestOptions::default()).unwrap();
    let chunks = chunk_documents(&documents, &Default::default()).unwrap();
    let quota_chunk = chunks.iter().find(|c| c.text.contains("quota")).unwrap().id.as_str().to_owned();
    let log = dir.path().join("log.csv");
    std::fs::write(
        &log,
        format!(
            "query,url,doc_id,answer,chunk_id\r\n\
             nightly backups,HTTPS://docs.example.com/c-backup#how,,,\r\n\
             \"cert renewal, when?\",,c-tls,,\r\n\
             slow writes with an index,,,\"slower  WRITES and more disk\",\r\n\
             over quota,,,,{quota_chunk}\r\n\
             gone page,https://docs.example.com/removed,,,\r\n\
             never said,,,the moon is made of cheese,\r\n"
        ),
    )
    .unwrap();
    let rows = read_query_log(&log).unwrap();
    let matched = match_queries(&rows, &documents, &chunks);
    assert_eq!(matched.rows, 6);
    assert_eq!(matched.dataset.queries.len(), 4);
    assert_eq!(matched.dataset.corpus.len(), chunks.len(), "every chunk is in the corpus");
    let relevant = |line: usize| matched.dataset.relevant_docs[&format!("line-{line}")].clone();
    let chunk_of = |word: &str| chunks.iter().find(|c| c.text.contains(word)).unwrap().id.as_str().to_owned();
    assert_eq!(relevant(2), [chunk_of("back up")], "by URL: scheme and host case, slash and fragment ignored");
    assert_eq!(relevant(3), [chunk_of("TLS")], "by the corpus record's id");
    assert_eq!(relevant(4), [chunk_of("index")], "by answer text: case and white space ignored");
    assert_eq!(relevant(5), [quota_chunk]);
    let lines: Vec<usize> = matched.unmatched.iter().map(|u| u.line).collect();
    assert_eq!(lines, [6, 7]);
    assert!(matched.unmatched[0].reason.contains("no document has url https://docs.example.com/removed"));
    assert!(matched.unmatched[1].reason.contains("no chunk contains the answer"));
    // Document labels: each matched query's documents, for the document-level hit rate.
    assert_eq!(matched.documents.relevant.len(), 4);
    assert!(matched.documents.relevant.iter().all(|d| d.len() == 1));
}
