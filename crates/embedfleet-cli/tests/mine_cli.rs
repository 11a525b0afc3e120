//! `embedfleet mine` as a user runs it on `embedfleet generate` output of the sample corpus with the
//! real all-MiniLM-L6-v2; `run` and `finetune` with `--hard-negatives` on a tiny model; and each
//! kind of bad input, refused in one line that names the flag.

use embedfleet_model::{BertConfig, LoadOptions, ModelCard, SentenceEncoder};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn embedfleet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_embedfleet")).args(args).env("EMBEDFLEET_LOG", "error").output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn minilm() -> String {
    let dir = root().join(".deps/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").exists(), "run scripts/setup.sh first");
    dir.display().to_string()
}

fn generate(input: &Path, out: &Path) {
    let o = embedfleet(&["generate", "--input", input.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--generator", "offline"]);
    assert!(o.status.success(), "{}", text(&o));
}

fn document_of(chunk: &str) -> &str {
    chunk.rsplit_once('-').unwrap().0
}

#[test]
fn mine_writes_guarded_negatives_for_the_sample_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    generate(&root().join("examples/sample-corpus.json"), &data);
    let train = data.join("train_dataset.json");
    let jsonl = tmp.path().join("triplets.jsonl");
    let o = embedfleet(&[
        "mine",
        "--train-dataset",
        train.to_str().unwrap(),
        "--model-id",
        &minilm(),
        "--hard-negatives",
        "3",
        "--export-jsonl",
        jsonl.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("the guard dropped") && stdout.contains("own document") && stdout.contains("within the margin"), "{stdout}");
    // Offline spans: mined against the passages training sees, the spans cut out.
    assert!(stdout.contains("questions cut out (inverse cloze)"), "{stdout}");

    // The file beside the dataset: every training question, negatives from other documents only.
    let dataset: Value = serde_json::from_slice(&std::fs::read(&train).unwrap()).unwrap();
    let negatives: serde_json::Map<String, Value> =
        serde_json::from_slice(&std::fs::read(data.join("train_negatives.json")).unwrap()).unwrap();
    let queries = dataset["queries"].as_object().unwrap();
    assert_eq!(negatives.keys().collect::<Vec<_>>(), queries.keys().collect::<Vec<_>>(), "every question, in file order");
    let mut total = 0;
    for (qid, negs) in &negatives {
        let negs: Vec<&str> = negs.as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
        assert!(negs.len() <= 3);
        let positive = dataset["relevant_docs"][qid][0].as_str().unwrap();
        for &n in &negs {
            assert!(dataset["corpus"].get(n).is_some(), "{n} is a training chunk");
            assert_ne!(document_of(n), document_of(positive), "{qid}: {n} is from the positive's own document");
        }
        total += negs.len();
    }
    assert!(total >= queries.len() * 2, "most questions get their negatives: {total} for {}", queries.len());
    // The 8-file layout is untouched and still loads.
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 9);

    // The triplets sentence-transformers trains on: one line per negative, in column order.
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), total);
    let keys: Vec<&String> = lines[0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["query", "pos", "neg"]);

    // A second mine does not silently replace the first.
    let again = embedfleet(&["mine", "--train-dataset", train.to_str().unwrap(), "--model-id", &minilm()]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("--overwrite"), "{}", text(&again));
}

#[test]
fn bad_mining_input_is_one_line_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere/train_dataset.json");
    let cases: [(&[&str], &str); 6] = [
        (&[], "--train-dataset"),
        (&["--range-min", "60", "--range-max", "50"], "--range-min"),
        (&["--relative-margin", "1"], "--relative-margin"),
        (&["--relative-margin=-0.5"], "--relative-margin"),
        (&["--hard-negatives", "0"], "--hard-negatives"),
        (&["--hard-negatives", "9", "--range-max", "5"], "--range-max"),
    ];
    for (extra, flag) in cases {
        let o = embedfleet(&[&["mine", "--train-dataset", missing.to_str().unwrap(), "--model-id", "nowhere"], extra].concat());
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(flag), "{extra:?}: expected {flag} in {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    // The same checks guard finetune and run before anything loads.
    let o = embedfleet(&["finetune", "--train-dataset", missing.to_str().unwrap(), "--hard-negatives", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--hard-negatives"), "{}", text(&o));
}

#[test]
fn run_mines_before_training_and_finetune_reuses_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let docs: Vec<Value> = serde_json::from_slice(&std::fs::read(root().join("examples/sample-corpus.json")).unwrap()).unwrap();
    let corpus = tmp.path().join("corpus.json");
    std::fs::write(&corpus, serde_json::to_vec(&docs[..12]).unwrap()).unwrap();
    let model =
        SentenceEncoder::random(BertConfig::tiny(30522), &root().join(".deps/all-MiniLM-L6-v2"), 3, LoadOptions::default()).unwrap();
    let model_dir = tmp.path().join("tiny-model");
    model.save(&model_dir, &ModelCard::default()).unwrap();
    let out = tmp.path().join("out");
    let train_flags =
        ["--epochs", "1", "--batch-size", "8", "--evaluation-steps", "0", "--learning-rate", "0.0005", "--hard-negatives", "2"];
    let o = embedfleet(
        &[
            &[
                "run",
                "--input",
                corpus.to_str().unwrap(),
                "--output-dir",
                out.to_str().unwrap(),
                "--model-id",
                model_dir.to_str().unwrap(),
                "--generator",
                "offline",
            ][..],
            &train_flags,
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("== mine") && stdout.contains("the guard dropped"), "{stdout}");
    let negatives = out.join("data/train_negatives.json");
    assert!(negatives.exists());
    let card = std::fs::read_to_string(out.join("model/README.md")).unwrap();
    assert!(card.contains("hard negatives"), "the card says how it was trained");

    let data = out.join("data");
    let o = embedfleet(
        &[
            &[
                "finetune",
                "--model-id",
                model_dir.to_str().unwrap(),
                "--train-dataset",
                data.join("train_dataset.json").to_str().unwrap(),
                "--val-dataset",
                data.join("val_dataset.json").to_str().unwrap(),
                "--output-path",
                tmp.path().join("ft").to_str().unwrap(),
                "--mini-batch-size",
                "3",
            ][..],
            &train_flags,
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("hard negatives from {}", negatives.display())), "{}", text(&o));
}
