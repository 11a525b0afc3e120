//! `embedfleet run` end to end on a small corpus with MiniLM: it ends with the summary and
//! the path of a report.html that a real browser opens with the numbers of report.json, and the
//! model's card is a sentence-transformers card whose model-index holds those numbers.

#[path = "../../embedfleet-report/tests/chrome/mod.rs"]
mod chrome;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The real all-MiniLM-L6-v2, copied under the test's folder so that a local path leaking into the
/// card would be the test's own. A random model's gain over 12 steps is chance; MiniLM's on these
/// spans is not (+0.06 NDCG@10 on this corpus, from the first evaluation on).
fn minilm_copy(dir: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &to.join(entry.file_name()));
            } else {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    let path = dir.join("all-MiniLM-L6-v2");
    copy(&root().join(".deps/all-MiniLM-L6-v2"), &path);
    path
}

/// The YAML between the first two `---` lines of a card.
fn front_matter(card: &str) -> serde_yaml::Value {
    let rest = card.strip_prefix("---\n").expect("the card starts with front matter");
    let end = rest.find("\n---\n").expect("the front matter ends");
    serde_yaml::from_str(&rest[..end]).expect("the front matter is YAML")
}

#[test]
fn run_writes_a_report_a_browser_opens_and_a_card_with_its_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<Value> = serde_json::from_slice(&std::fs::read(root().join("examples/sample-corpus.json")).unwrap()).unwrap();
    let corpus = dir.path().join("corpus.json");
    std::fs::write(&corpus, serde_json::to_vec(&docs[..12]).unwrap()).unwrap();
    let model = minilm_copy(dir.path());
    let out = dir.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_embedfleet"))
        .args(["run", "--input", corpus.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--model-id", model.to_str().unwrap()])
        .args(["--generator", "offline", "--epochs", "1", "--batch-size", "8", "--evaluation-steps", "4", "--learning-rate", "0.0005"])
        // Whole passages: this test is about the report, and in 12 steps spans left in their passage
        // beat the base reliably, while spans cut out of it (the default) often keep the base.
        .args(["--inverse-cloze", "false"])
        .env("EMBEDFLEET_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));

    // The summary block ends the output: the headline, the verdict, where the model and report are.
    let summary = &stdout[stdout.rfind("== summary").expect("a summary block")..];
    assert!(summary.contains("Hit rate@5") && summary.contains("NDCG@10") && summary.contains("vs base"), "{summary}");
    // Every difference comes with its paired-bootstrap interval, and the verdict claims only what
    // the interval supports (20 questions here: a gain of about 0.06 whose interval reaches 0).
    assert!(summary.contains("  finetuned NDCG@10: +") && summary.contains("(95 % interval "), "{summary}");
    let page = out.join("results/report.html");
    assert!(summary.contains(&format!("report   {}", page.display())), "{summary}");
    assert!(summary.contains(&format!("model    {}", out.join("model").display())), "{summary}");
    for file in ["results/metrics.svg", "results/training.svg", "model/training.svg", "model/README.md"] {
        assert!(out.join(file).exists(), "{file} missing");
    }

    let report: Value = serde_json::from_slice(&std::fs::read(out.join("results/report.json")).unwrap()).unwrap();
    let models = report["models"].as_array().unwrap();
    let primary = &report["comparisons"][0];
    assert_eq!(primary["measure"], "NDCG@10");
    let claimed = match primary["difference"].as_str().unwrap() {
        "better" => "finetuned is better than base",
        "worse" => "finetuned is worse than base",
        _ => "No measurable difference between finetuned and base",
    };
    assert!(summary.contains(claimed), "the verdict follows the interval {primary}: {summary}");
    if primary["interval"]["low"].as_f64().unwrap() <= 0.0 {
        assert!(!summary.contains("is better than"), "no gain claimed that the interval does not support");
    }
    assert_eq!(models[0]["name"], "base");
    assert_eq!(models[1]["name"], "finetuned");

    // The card: YAML front matter the hub reads, with the real numbers of the final evaluation.
    let card = std::fs::read_to_string(out.join("model/README.md")).unwrap();
    let meta = front_matter(&card);
    assert_eq!(
        meta["base_model"].as_str(),
        Some("sentence-transformers/all-MiniLM-L6-v2"),
        "the hub id its own card gives, never a local path"
    );
    let tmp = dir.path().to_str().unwrap();
    for line in card.lines().filter(|l| l.contains(tmp)) {
        assert!(line.contains("SentenceTransformer(") || line.contains("model_name="), "a local path outside the usage examples: {line}");
    }
    assert_eq!(meta["library_name"].as_str(), Some("sentence-transformers"));
    let tags: Vec<&str> = meta["tags"].as_sequence().unwrap().iter().filter_map(|t| t.as_str()).collect();
    assert!(tags.contains(&"sentence-transformers") && tags.contains(&"loss:MultipleNegativesRankingLoss"), "{tags:?}");
    let result = &meta["model-index"][0]["results"][0];
    assert_eq!(result["task"]["type"].as_str(), Some("information-retrieval"));
    let card_metrics = result["metrics"].as_sequence().unwrap();
    let finetuned = models[1]["metrics"].as_object().unwrap();
    assert_eq!(card_metrics.len(), finetuned.len(), "every metric of the evaluation");
    for (m, (name, value)) in card_metrics.iter().zip(finetuned) {
        let expected = format!("cosine_{}", name.trim_start_matches("cosine-").to_lowercase());
        assert_eq!(m["type"].as_str(), Some(expected.as_str()));
        assert_eq!(m["value"].as_f64(), value.as_f64(), "{name}: card and report.json agree");
    }
    let listed: Vec<&str> = meta["metrics"].as_sequence().unwrap().iter().filter_map(|t| t.as_str()).collect();
    assert!(listed.contains(&"cosine_ndcg@10"));
    assert!(card.contains("## Usage") && card.contains("SentenceTransformerEmbeddingFunction") && card.contains("Training time"));
    assert!(!card.contains("https://github.com/)"), "no placeholder links");
    // The run left --precision at auto: the card says what was chosen, and why.
    let chosen = if embedfleet_model::bf16_support(embedfleet_model::Device::Cpu).native { "bf16 (" } else { "fp32 (" };
    assert!(card.contains(&format!(", precision {chosen}")), "the precision auto chose, with its reason:\n{card}");

    // The page in a real browser holds the same numbers.
    let mut browser = chrome::Chrome::start();
    let errors = browser.open(&page);
    assert!(errors.0.is_empty(), "{:?}", errors.0);
    for (i, m) in models.iter().enumerate() {
        let shown = browser.eval(&format!(
            "document.querySelector('#headline-table tbody tr:nth-child({}) td[data-metric=\"NDCG@10\"]').dataset.value",
            i + 1
        ));
        assert_eq!(shown.as_str().unwrap().parse::<f64>().unwrap(), m["metrics"]["cosine-NDCG@10"].as_f64().unwrap());
        let hit = browser.eval(&format!(
            "document.querySelector('#headline-table tbody tr:nth-child({}) td[data-metric=\"Hit rate@5\"]').dataset.value",
            i + 1
        ));
        assert_eq!(hit.as_str().unwrap().parse::<f64>().unwrap(), m["hit_rate"]["rate"].as_f64().unwrap());
    }
    assert_eq!(browser.eval("document.getElementById('verdict').textContent"), report["verdict"]);
    let cards = browser.eval("document.querySelectorAll('#questions article.q').length").as_u64().unwrap();
    let per_query = std::fs::read_to_string(out.join("results/per_query.jsonl")).unwrap();
    let rank = |q: &Value, m: &str| q["rank"][m].as_u64().unwrap_or(u64::MAX);
    let (mut improved, mut worse) = (0u64, 0u64);
    for q in per_query.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()) {
        match rank(&q, "finetuned").cmp(&rank(&q, "base")) {
            std::cmp::Ordering::Less => improved += 1,
            std::cmp::Ordering::Greater => worse += 1,
            std::cmp::Ordering::Equal => {}
        }
    }
    assert_eq!(cards, improved.min(25) + worse.min(25), "one card per question whose rank moved (up to 25 each way)");
    assert!(improved > 0, "fine-tuning moved some question up: {summary}\n{}", &per_query[..per_query.len().min(3000)]);
    assert!(browser.eval("document.documentElement.scrollWidth").as_u64().unwrap() <= 1280, "no horizontal overflow at 1280 px");

    // `evaluate` on the run's validation set, as the run scored it, gives the run's numbers, and
    // says what offline spans measure though no dataset facts come with the file.
    let evaluate = |cloze: &str, results: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_embedfleet"))
            .args(["evaluate", "--base-model", model.to_str().unwrap(), "--finetuned-model", out.join("model").to_str().unwrap()])
            .args([
                "--val-dataset",
                out.join("data/val_dataset.json").to_str().unwrap(),
                "--results-dir",
                dir.path().join(results).to_str().unwrap(),
            ])
            .args(["--inverse-cloze", cloze])
            .env("EMBEDFLEET_LOG", "error")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
        let report: Value = serde_json::from_slice(&std::fs::read(dir.path().join(results).join("report.json")).unwrap()).unwrap();
        (stdout, report)
    };
    let ndcg = |report: &Value, i: usize| report["models"][i]["metrics"]["cosine-NDCG@10"].as_f64().unwrap();
    let (whole, whole_report) = evaluate("false", "eval-whole");
    for i in 0..2 {
        assert!(
            (ndcg(&whole_report, i) - ndcg(&report, i)).abs() < 1e-6,
            "model {i}: evaluate {} against the run's {}",
            ndcg(&whole_report, i),
            ndcg(&report, i)
        );
    }
    assert!(whole.contains("pseudo-queries"), "{whole}");
    assert!(!whole.contains("cut out of their passages,"), "nothing cut with --inverse-cloze false: {whole}");
    let (cut, cut_report) = evaluate("true", "eval-cut");
    assert!(cut.contains("questions cut out of their passages"), "{cut}");
    assert!(cut.contains("pseudo-queries"), "{cut}");
    assert!(
        ndcg(&cut_report, 0) < ndcg(&whole_report, 0),
        "a span cut out of its passage is harder to place: {} vs {}",
        ndcg(&cut_report, 0),
        ndcg(&whole_report, 0)
    );
}
