//! `embedfleet evaluate --queries LOG --corpus CORPUS` with the real all-MiniLM-L6-v2: the log's
//! queries scored against every chunk of the corpus, the ones that match nothing counted and
//! listed, every difference with a paired-bootstrap interval (summary, comparison.csv, report.json,
//! report.html), and the change check when the two models embed alike. `run` refuses to evaluate on
//! the queries it shows the generator as examples.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sample_corpus(dir: &Path) -> (PathBuf, Vec<Value>) {
    let docs: Vec<Value> = serde_json::from_slice(&std::fs::read(root().join("examples/sample-corpus.json")).unwrap()).unwrap();
    let docs: Vec<Value> = docs[..8].to_vec();
    let path = dir.join("corpus.json");
    std::fs::write(&path, serde_json::to_vec(&docs).unwrap()).unwrap();
    (path, docs)
}

/// A few words from the middle of a document: an answer that is in the corpus.
fn phrase(doc: &Value) -> String {
    let text = ["content", "text", "page_content", "body"].iter().find_map(|f| doc[f].as_str()).expect("a text field");
    text.split_whitespace().skip(12).take(8).collect::<Vec<_>>().join(" ")
}

#[test]
fn evaluate_on_a_query_log_reports_intervals_unmatched_queries_and_the_change_check() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, docs) = sample_corpus(dir.path());
    let mut log = String::new();
    for (i, doc) in docs.iter().enumerate() {
        let answer = phrase(doc);
        let query = answer.split_whitespace().take(5).collect::<Vec<_>>().join(" ");
        match doc["url"].as_str() {
            Some(url) if i % 2 == 0 => log.push_str(&serde_json::json!({"query": query, "url": url}).to_string()),
            _ => log.push_str(&serde_json::json!({"query": query, "answer": answer}).to_string()),
        }
        log.push('\n');
    }
    log.push_str(&serde_json::json!({"query": "a page that is gone", "url": "https://example.invalid/gone"}).to_string());
    log.push('\n');
    let log_path = dir.path().join("log.jsonl");
    std::fs::write(&log_path, log).unwrap();
    let results = dir.path().join("results");
    let minilm = root().join(".deps/all-MiniLM-L6-v2");
    let o = Command::new(env!("CARGO_BIN_EXE_embedfleet"))
        .args(["evaluate", "--queries", log_path.to_str().unwrap(), "--corpus", corpus.to_str().unwrap()])
        .args(["--model", &format!("base={}", minilm.display()), "--model", &format!("copy={}", minilm.display())])
        .args(["--results-dir", results.to_str().unwrap()])
        .env("EMBEDFLEET_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("9 queries, 8 matched, 1 matched nothing"), "{stdout}");
    assert!(stdout.contains("line 9: \"a page that is gone\": no document has url https://example.invalid/gone"), "{stdout}");
    assert!(stdout.contains("Doc hit rate@5"), "{stdout}");
    // The same model twice: the change check says so, and no interval claims a difference.
    assert!(stdout.contains("copy is unchanged: its embeddings are exactly base's"), "{stdout}");
    assert!(stdout.contains("NDCG@10: +0.0000 (95 % interval +0.0000 to +0.0000, 8 questions), no measurable difference"), "{stdout}");

    let unmatched = std::fs::read_to_string(results.join("unmatched_queries.jsonl")).unwrap();
    assert_eq!(unmatched.lines().count(), 1);
    let report: Value = serde_json::from_slice(&std::fs::read(results.join("report.json")).unwrap()).unwrap();
    let comparisons = report["comparisons"].as_array().unwrap();
    assert_eq!(comparisons.len(), 2, "NDCG@10 and the hit rate");
    assert_eq!(comparisons[0]["difference"], "no_measurable_difference");
    assert_eq!(comparisons[0]["interval"]["questions"], 8);
    assert_eq!(report["models"][0]["embeddings_digest"], report["models"][1]["embeddings_digest"]);
    assert!(report["models"][0]["document_hit_rate"]["total"] == 8);
    let csv = std::fs::read_to_string(results.join("comparison.csv")).unwrap();
    assert!(csv.starts_with("model,base,measure,base_value,value,difference,ci_low,ci_high,questions,resamples,verdict\r\n"), "{csv}");
    assert!(csv.contains("copy,base,NDCG@10,") && csv.contains(",8,10000,no measurable difference\r\n"), "{csv}");
    let page = std::fs::read_to_string(results.join("report.html")).unwrap();
    assert!(page.contains(r#"<table id="intervals">"#) && page.contains("copy is unchanged"), "the page has the intervals and the verdict");
    assert!(
        page.contains("8 queries from the log") && page.contains("1 of the log's 9 queries matched nothing"),
        "the page says what was scored"
    );
}

#[test]
fn run_refuses_to_evaluate_on_its_own_example_queries() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = sample_corpus(dir.path());
    let log = dir.path().join("log.csv");
    std::fs::write(&log, "query,url\nhow do I reset my password,https://x.example/a\nwhat is a token,https://x.example/b\n").unwrap();
    let examples = dir.path().join("examples.csv");
    std::fs::write(&examples, "query\nwhat is a  TOKEN\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_embedfleet"))
        .args(["run", "--input", corpus.to_str().unwrap(), "--output-dir", dir.path().join("out").to_str().unwrap()])
        .args(["--queries", log.to_str().unwrap(), "--example-queries", examples.to_str().unwrap()])
        .env("EMBEDFLEET_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("1 of the 2 queries in --queries") && stderr.contains("Split the log in two"), "{stderr}");
    assert!(!dir.path().join("out").exists(), "refused before anything was written");
}
