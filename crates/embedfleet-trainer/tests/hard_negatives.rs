//! Hard negatives against sentence-transformers 6.2 on the real all-MiniLM-L6-v2
//! (tests/fixtures/hard_negatives_reference.json, by tools/reference/make_negatives_fixture.py):
//! mining picks the negatives `mine_hard_negatives` picks, and the first step's MNRL loss with
//! negative columns, plain and under GradCache, is the reference's.

use embedfleet_core::QaDataset;
use embedfleet_core::config::Sampling;
use embedfleet_trainer::MnrlLoss;
use embedfleet_trainer::mining::{MineSettings, mine};
use embedfleet_trainer::train::cached_step;
use serde::Deserialize;
use std::path::PathBuf;

mod common;
use common::{minilm, minilm_without_dropout};
use embedfleet_model::{LoadOptions, SentenceEncoder};

#[derive(Deserialize)]
struct Settings {
    range_min: usize,
    range_max: usize,
    relative_margin: f64,
    num_negatives: usize,
    sampling_strategy: String,
}

#[derive(Deserialize)]
struct Mining {
    settings: Settings,
    queries: Vec<String>,
    positives: Vec<String>,
    extra_corpus: Vec<String>,
    negatives: Vec<Vec<String>>,
}

#[derive(Deserialize)]
struct Mnrl {
    scale: f64,
    anchors: Vec<String>,
    positives: Vec<String>,
    negatives: Vec<Vec<String>>,
    loss: f64,
    cached_mini_batch_size: usize,
    cached_loss: f64,
}

#[derive(Deserialize)]
struct Fixture {
    mining: Mining,
    mnrl: Mnrl,
}

fn fixture() -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hard_negatives_reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn mining_picks_the_negatives_sentence_transformers_picks() {
    let fx = fixture().mining;
    // Ids without a document part: the same-document rule stays out, the margin decides alone.
    let mut d = QaDataset::new();
    for (i, p) in fx.positives.iter().enumerate() {
        d.corpus.insert(format!("pos{i}"), p.clone());
    }
    for (i, p) in fx.extra_corpus.iter().enumerate() {
        d.corpus.insert(format!("extra{i}"), p.clone());
    }
    for (i, q) in fx.queries.iter().enumerate() {
        d.queries.insert(format!("q{i}"), q.clone());
        d.relevant_docs.insert(format!("q{i}"), vec![format!("pos{i}")]);
    }
    assert_eq!(fx.settings.sampling_strategy, "top");
    let settings = MineSettings {
        negatives: fx.settings.num_negatives,
        range_min: fx.settings.range_min,
        range_max: fx.settings.range_max,
        relative_margin: fx.settings.relative_margin,
        sampling: Sampling::Top,
        seed: 42,
        query_prompt: None,
        // sentence-transformers mines on whole passages.
        inverse_cloze: false,
    };
    let model = SentenceEncoder::load(&minilm(), LoadOptions::default()).unwrap();
    let (mined, report) = mine(&model, &d, &settings, 32).unwrap();
    assert_eq!(report.without_document, fx.queries.len());
    for (i, expected) in fx.negatives.iter().enumerate() {
        let got: Vec<&str> = mined.0[&format!("q{i}")].iter().map(|c| d.corpus[c].as_str()).collect();
        assert_eq!(got, *expected, "question {i}: {}", fx.queries[i]);
    }
    let total: usize = fx.negatives.iter().map(Vec::len).sum();
    eprintln!("mining: all {} questions' {total} negatives identical to mine_hard_negatives; {report:?}", fx.queries.len());
    assert!(report.dropped_margin > 0, "the margin had something to drop: {report:?}");
}

#[test]
fn mining_on_cut_passages_measures_the_margin_against_the_positive_training_uses() {
    // A span question whose positive holds it word for word, and a chunk of another document on the
    // same subject. Against the whole positive (MiniLM: 0.80) that chunk (0.54) looks far enough
    // below to be a negative; against the positive training sees, the span cut out (0.24), it is
    // closer to the question than the answer is, and the guard drops it.
    let span = "the retention policy deletes old segments after thirty days.";
    let mut d = QaDataset::new();
    d.corpus.insert(
        "d00000000000a-0000".into(),
        format!("Backups are written to the bucket every night at two. Then {span} Restores need the admin role."),
    );
    d.corpus.insert("d00000000000b-0000".into(), "Deleting a segment frees its disk space.".into());
    for (i, filler) in
        ["The dashboard shows query latency per node.", "Install the agent with the package manager.", "Tokens expire after one hour."]
            .iter()
            .enumerate()
    {
        d.corpus.insert(format!("d00000000000{}-0000", ["c", "d", "e"][i]), (*filler).into());
    }
    d.queries.insert("q0".into(), span.into());
    d.relevant_docs.insert("q0".into(), vec!["d00000000000a-0000".into()]);
    let model = SentenceEncoder::load(&minilm(), LoadOptions::default()).unwrap();
    let settings = MineSettings {
        negatives: 1,
        range_min: 0,
        range_max: 4,
        relative_margin: 0.05,
        sampling: Sampling::Top,
        seed: 42,
        query_prompt: None,
        inverse_cloze: false,
    };
    let (whole, whole_report) = mine(&model, &d, &settings, 32).unwrap();
    let (cut, cut_report) = mine(&model, &d, &MineSettings { inverse_cloze: true, ..settings }, 32).unwrap();
    eprintln!("whole passages: {:?} {whole_report:?}\ncut passages: {:?} {cut_report:?}", whole.0["q0"], cut.0["q0"]);
    assert_eq!(whole.0["q0"], ["d00000000000b-0000"], "against the whole positive the paraphrase passes the margin");
    assert_ne!(cut.0["q0"].first().map(String::as_str), Some("d00000000000b-0000"), "against the cut positive it does not");
    assert!(cut_report.dropped_margin > whole_report.dropped_margin, "{cut_report:?} vs {whole_report:?}");
}

#[test]
fn first_step_loss_with_hard_negatives_is_sentence_transformers() {
    let fx = fixture().mnrl;
    let tmp = tempfile::tempdir().unwrap();
    let model = minilm_without_dropout(tmp.path());
    let anchors: Vec<&str> = fx.anchors.iter().map(String::as_str).collect();
    // Positives, then negative column 1, then column 2: sentence-transformers' candidate order.
    let candidates: Vec<&str> = fx.positives.iter().chain(fx.negatives.iter().flatten()).map(String::as_str).collect();
    let loss_fn = MnrlLoss { scale: fx.scale, symmetric: false };

    let q = model.forward(&model.tokenizer().batch(&anchors, model.device()).unwrap(), true);
    let c = model.forward(&model.tokenizer().batch(&candidates, model.device()).unwrap(), true);
    let plain = f64::try_from(loss_fn.compute(&q, &c)).unwrap();
    let cached = cached_step(&model, &anchors, &candidates, None, fx.cached_mini_batch_size, &loss_fn.into(), 42, 0).unwrap();
    eprintln!(
        "first-step MNRL with {} negative columns: {plain:.7} (sentence-transformers {:.7}, |diff| {:.1e}); GradCache {cached:.7} (CachedMNRL {:.7}, |diff| {:.1e})",
        fx.negatives.len(),
        fx.loss,
        (plain - fx.loss).abs(),
        fx.cached_loss,
        (cached - fx.cached_loss).abs()
    );
    assert!((plain - fx.loss).abs() <= 1e-4, "{plain} vs {}", fx.loss);
    assert!((cached - fx.cached_loss).abs() <= 1e-4, "{cached} vs {}", fx.cached_loss);
    // The negatives matter: without them the loss is lower.
    let without = f64::try_from(loss_fn.compute(&q, &c.narrow(0, 0, anchors.len() as i64))).unwrap();
    assert!(without < plain, "{without} vs {plain}");
}
