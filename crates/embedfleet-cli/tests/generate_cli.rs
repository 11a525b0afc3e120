//! `embedfleet generate` as a user runs it: the sample corpus, and each kind of bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn embedfleet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_embedfleet")).args(args).env("EMBEDFLEET_LOG", "error").output().unwrap()
}

fn sample_corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/sample-corpus.json")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[test]
fn sample_corpus_gives_the_eight_files_and_a_summary() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("data");
    let o = embedfleet(&["generate", "--input", sample_corpus().to_str().unwrap(), "--output-dir", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(files_in(&dir).len(), 8);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("documents") && stdout.contains("questions"), "{stdout}");

    // The reference's snake_case spellings work too, and the same input gives the same files.
    let again = out.path().join("again");
    let o = embedfleet(&[
        "generate",
        "--input",
        sample_corpus().to_str().unwrap(),
        "--output_dir",
        again.to_str().unwrap(),
        "--chunk_size",
        "1000",
        "--num_questions_per_chunk",
        "2",
        "--train_ratio",
        "0.8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in files_in(&dir) {
        assert_eq!(std::fs::read(dir.join(&name)).unwrap(), std::fs::read(again.join(&name)).unwrap(), "{name}");
    }

    // A different dataset in the way is refused and left untouched, unless --overwrite.
    let before = std::fs::read(dir.join("train_dataset.json")).unwrap();
    let corpus = sample_corpus();
    let args = ["generate", "--input", corpus.to_str().unwrap(), "--output-dir", dir.to_str().unwrap(), "--seed", "7"];
    let o = embedfleet(&args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert_eq!(std::fs::read(dir.join("train_dataset.json")).unwrap(), before);
    let o = embedfleet(&[&args[..], &["--overwrite"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read(dir.join("train_dataset.json")).unwrap(), before);
}

fn assert_fails_cleanly(input_body: Option<&str>, extra: &[&str], expect: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("corpus.json");
    if let Some(body) = input_body {
        std::fs::write(&input, body).unwrap();
    }
    let out = tmp.path().join("out");
    let o = embedfleet(&[&["generate", "--input", input.to_str().unwrap(), "--output-dir", out.to_str().unwrap()], extra].concat());
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains(expect), "expected '{expect}' in: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(files_in(&out).is_empty(), "no partial files: {:?}", files_in(&out));
}

#[test]
fn bad_inputs_fail_with_one_line_and_no_files() {
    assert_fails_cleanly(None, &[], "does not exist");
    assert_fails_cleanly(Some("[{\"content\": \"a\"},\n{\"content\": ]"), &[], "line 2");
    assert_fails_cleanly(Some("[]"), &[], "no text found");
    assert_fails_cleanly(Some("[{\"html\": \"x\"}]"), &[], "--text-field");
    assert_fails_cleanly(Some("[{\"content\": \"only one document here\"}]"), &[], "--split-by chunk");
    assert_fails_cleanly(Some("[{\"content\": \"a b\"},{\"content\": \"c d\"}]"), &["--chunk-overlap", "900"], "--chunk-overlap");
}

#[test]
fn unreachable_s3_fails_with_what_to_check() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = Command::new(env!("CARGO_BIN_EXE_embedfleet"))
        .args(["generate", "--input", sample_corpus().to_str().unwrap(), "--output-dir", "s3://bucket/data"])
        .args(["--s3-endpoint", &format!("http://127.0.0.1:{port}")])
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .env("EMBEDFLEET_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("s3://bucket/data"), "{}", stderr(&o));
}

#[test]
fn corpus_in_many_scripts_becomes_a_dataset() {
    // Russian, Greek, Arabic, Hebrew, Hindi, Chinese, Japanese, Korean, Thai and emoji; the
    // Japanese and Arabic records are whole HTML pages. Byte 512 of three records falls inside a
    // character, which used to panic in the HTML sniffing.
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/multiscript-corpus.json");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("data");
    let o = embedfleet(&[
        "generate",
        "--generator",
        "offline",
        "--input",
        corpus.to_str().unwrap(),
        "--output-dir",
        dir.to_str().unwrap(),
        "--chunk-size",
        "300",
        "--chunk-overlap",
        "60",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(files_in(&dir).len(), 8);
    let records: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&corpus).unwrap()).unwrap();
    let mut texts = String::new();
    for split in ["train", "val"] {
        let d: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(format!("{split}_dataset.json"))).unwrap()).unwrap();
        assert!(!d["queries"].as_object().unwrap().is_empty(), "{split} has questions");
        for text in d["corpus"].as_object().unwrap().values() {
            texts.push_str(text.as_str().unwrap());
        }
    }
    // Every language made it through, and the HTML pages lost their markup.
    for needle in ["Хранилище", "αποθήκη", "المخزن", "המאגר", "भंडार", "存储", "ストア", "저장소", "ที่เก็บข้อมูล", "🙂🚀"]
    {
        assert!(texts.contains(needle), "{needle} is missing from the dataset");
    }
    assert!(!texts.contains("<p>") && !texts.contains("メニュー"), "HTML records became clean text");
    assert_eq!(records.len(), 10);
}
