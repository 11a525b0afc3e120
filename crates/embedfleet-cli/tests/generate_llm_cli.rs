//! `embedfleet generate --generator llm` against a local OpenAI-compatible server.

use embedfleet_generator::testing::{ServerBehavior, TestServer};
use std::path::Path;
use std::process::{Command, Output};

const CORPUS: &str = r#"[
 {"url": "https://a", "content": "Tidewater stores points in shards of 24 hours. The compactor merges blocks every ten minutes and keeps the WAL small."},
 {"url": "https://b", "content": "Alert rules fire when a query crosses a threshold for the pending duration. Notifications go to Slack, email or PagerDuty."},
 {"url": "https://c", "content": "Backups are taken with tw backup create and restored with tw backup restore. POISON marks this page for the test server."},
 {"url": "https://d", "content": "Retention policies delete shards older than the configured duration, thirty days by default, during the hourly sweep."},
 {"url": "https://e", "content": "Tokens start with twk_ and carry roles. The admin role may create and revoke tokens and change retention policies."}
]"#;

fn generate(dir: &Path, base_url: &str, extra: &[&str]) -> Output {
    let corpus = dir.join("corpus.json");
    std::fs::write(&corpus, CORPUS).unwrap();
    Command::new(env!("CARGO_BIN_EXE_embedfleet"))
        .current_dir(dir)
        .args(["generate", "--generator", "llm", "--input", corpus.to_str().unwrap(), "--output-dir", "data"])
        .args(["--llm-base-url", base_url, "--llm-model", "test-model", "--llm-max-attempts", "2", "--llm-timeout", "5"])
        .args(["--llm-cache-dir", dir.join("cache").to_str().unwrap()])
        .args(extra)
        .env("EMBEDFLEET_LOG", "error")
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_chunk_is_listed_and_a_rerun_asks_only_for_it() {
    let server = TestServer::start(ServerBehavior { fail_prompts_containing: Some("POISON".into()), ..Default::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let o = tokio::task::spawn_blocking({
        let (d, url) = (dir.path().to_owned(), server.base_url());
        move || generate(&d, &url, &[])
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "one failed chunk: exit status 1 + 1; {stderr}");
    let failures = std::fs::read_to_string(dir.path().join("generation_failures.jsonl")).unwrap();
    assert_eq!(failures.lines().count(), 1, "{failures}");
    assert!(dir.path().join("data/train_dataset.json").exists(), "the other chunks are written");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("requests") && stdout.contains("$"), "{stdout}");

    // The server recovers; a re-run answers the four good chunks from the cache.
    server.update(|b| b.fail_prompts_containing = None);
    server.clear_records();
    let o = tokio::task::spawn_blocking({
        let (d, url) = (dir.path().to_owned(), server.base_url());
        move || generate(&d, &url, &["--overwrite"])
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(server.request_count(), 1, "only the failed chunk is asked again");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_connection_and_wrong_key_are_one_line_errors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/v1");
    let o = tokio::task::spawn_blocking({
        let d = dir.path().to_owned();
        move || generate(&d, &url, &[])
    })
    .await
    .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("127.0.0.1:{port}")), "{}", String::from_utf8_lossy(&o.stderr));

    let server = TestServer::start(ServerBehavior { require_key: Some("right".into()), ..Default::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let o = tokio::task::spawn_blocking({
        let (d, url) = (dir.path().to_owned(), server.base_url());
        move || {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_embedfleet"));
            std::fs::write(d.join("corpus.json"), CORPUS).unwrap();
            cmd.current_dir(&d)
                .args(["generate", "--generator", "llm", "--input", "corpus.json", "--output-dir", "data"])
                .args(["--llm-base-url", &url, "--llm-cache-dir", "cache", "--llm-concurrency", "1"])
                .env("OPENAI_API_KEY", "wrong")
                .env("EMBEDFLEET_LOG", "error")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("401") || stderr.to_lowercase().contains("key"), "{stderr}");
    assert_eq!(server.request_count(), 1, "a 401 is not retried");
    assert!(!dir.path().join("data").exists(), "nothing written");
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_answers_belong_to_the_endpoint_that_gave_them() {
    // Two servers that both call their model "test-model", as local vLLM or llama.cpp servers do.
    let first = TestServer::start(ServerBehavior::default()).await.unwrap();
    let second = TestServer::start(ServerBehavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |url: String| {
        let d = dir.path().to_owned();
        tokio::task::spawn_blocking(move || generate(&d, &url, &["--overwrite"]))
    };
    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let cache_dir = dir.path().join("cache");

    let o = run(first.base_url()).await.unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(first.request_count(), 5);
    assert!(stdout(&o).contains(&format!("no chunk of 5 came from the resume cache {}", cache_dir.display())), "{}", stdout(&o));

    // Same model name, same cache, another server: every chunk is asked again.
    let o = run(second.base_url()).await.unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(second.request_count(), 5, "answers of another endpoint were served from the cache");
    assert!(stdout(&o).contains("no chunk of 5 came from the resume cache"), "{}", stdout(&o));

    // Back to the first server: all five from the cache, and the summary says whose they were.
    let o = run(first.base_url()).await.unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(first.request_count(), 5, "nothing asked again");
    let expected = format!(
        "5 of 5 chunks answered from the resume cache {}, not asked again: 5 from test-model at {}/chat/completions",
        cache_dir.display(),
        first.base_url()
    );
    assert!(stdout(&o).contains(&expected), "wanted {expected:?} in:\n{}", stdout(&o));
}
