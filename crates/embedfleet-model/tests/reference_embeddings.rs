//! embedfleet-model against sentence-transformers 6.2.0 on the real all-MiniLM-L6-v2 weights.
//! The fixture comes from tools/reference/make_model_fixture.py.

mod common;

use common::{cosine, minilm_dir};
use embedfleet_model::{LoadOptions, ModelCard, SentenceEncoder, Tensor};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    texts: Vec<String>,
    embeddings: Vec<Vec<f32>>,
    token_counts: Vec<usize>,
    max_seq_length: usize,
}

fn fixture() -> Fixture {
    let raw = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minilm_reference.json")).unwrap();
    serde_json::from_slice(&raw).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let (n, d) = t.size2().unwrap();
    let flat: Vec<f32> = Vec::try_from(t.contiguous().view([-1])).unwrap();
    (0..n as usize).map(|i| flat[i * d as usize..(i + 1) * d as usize].to_vec()).collect()
}

fn assert_matches_reference(ours: &[Vec<f32>], fx: &Fixture) {
    let mut worst_cos = 1.0f64;
    let mut worst_abs = 0.0f32;
    for (i, (a, b)) in ours.iter().zip(&fx.embeddings).enumerate() {
        let cos = cosine(a, b);
        let abs = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(cos >= 0.99999, "text {i} {:?}: cosine {cos}", fx.texts[i]);
        assert!(abs <= 1e-4, "text {i} {:?}: max abs diff {abs}", fx.texts[i]);
        worst_cos = worst_cos.min(cos);
        worst_abs = worst_abs.max(abs);
    }
    eprintln!("{} texts: min cosine {worst_cos:.9}, max abs diff {worst_abs:.3e}", ours.len());
}

#[test]
fn embeddings_match_sentence_transformers() {
    let fx = fixture();
    assert!(fx.texts.len() >= 200);
    let model = SentenceEncoder::load(&minilm_dir(), LoadOptions::default()).unwrap();
    assert_eq!(model.max_seq_length(), fx.max_seq_length);

    let texts: Vec<&str> = fx.texts.iter().map(String::as_str).collect();
    let counts: Vec<usize> = model.tokenizer().encode_ids(&texts).unwrap().iter().map(|(ids, _)| ids.len()).collect();
    assert_eq!(counts, fx.token_counts, "token counts after truncation");

    let ours = rows(&model.encode(&texts, 32, None).unwrap());
    assert_eq!(ours.len(), fx.embeddings.len());
    assert_matches_reference(&ours, &fx);
}

#[test]
fn saved_folder_reloads_with_identical_embeddings() {
    let fx = fixture();
    let texts: Vec<&str> = fx.texts.iter().take(40).map(String::as_str).collect();
    let model = SentenceEncoder::load(&minilm_dir(), LoadOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let card = ModelCard { base_model: "sentence-transformers/all-MiniLM-L6-v2".into(), ..Default::default() };
    model.save(dir.path(), &card).unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "README.md",
    ] {
        assert!(dir.path().join(file).exists(), "{file} not saved");
    }
    let reloaded = SentenceEncoder::load(dir.path(), LoadOptions::default()).unwrap();
    let a = model.encode(&texts, 16, None).unwrap();
    let b = reloaded.encode(&texts, 16, None).unwrap();
    assert_eq!(f64::try_from((a - b).abs().max()).unwrap(), 0.0);
}

#[test]
fn batch_size_does_not_change_embeddings() {
    let fx = fixture();
    let texts: Vec<&str> = fx.texts.iter().take(50).map(String::as_str).collect();
    let model = SentenceEncoder::load(&minilm_dir(), LoadOptions::default()).unwrap();
    let one = model.encode(&texts, 1, None).unwrap();
    let many = model.encode(&texts, 50, None).unwrap();
    let diff = f64::try_from((one - many).abs().max()).unwrap();
    assert!(diff < 1e-5, "padding changed embeddings by {diff}");
}
