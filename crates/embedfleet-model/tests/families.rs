//! Every family against sentence-transformers 6.2 on the folders it saved
//! (tools/reference/make_family_fixtures.py, make_modernbert_fixture.py, make_qwen3_fixture.py):
//! token ids, fp32 and bf16 embeddings, the 6.x folder layout, every pooling mode with and without
//! the prompt, named prompts, pickle and sharded weights, and saving.

mod common;

use common::{agreement, copy_dir, fixtures, minilm_dir, rows};
use embedfleet_model::{LoadOptions, ModelCard, Precision, SentenceEncoder, Tensor};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Fixture {
    max_seq_length: usize,
    texts: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    #[serde(default)]
    embeddings: Vec<Vec<f32>>,
    #[serde(default)]
    prompted: Option<Prompted>,
    #[serde(default)]
    pooling_texts: Vec<String>,
    #[serde(default)]
    pooling_cases: Vec<PoolingCase>,
    /// ModernBERT's fixture: the same transformer mean-pooled, which reads every token's state.
    #[serde(default)]
    mean_pooling: Option<PoolingCase>,
}

#[derive(Deserialize)]
struct Prompted {
    prompt_name: String,
    embeddings: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct PoolingCase {
    pooling_config: serde_json::Value,
    modules: serde_json::Value,
    prompt: Option<String>,
    embeddings: Vec<Vec<f32>>,
}

fn fixture(name: &str) -> Fixture {
    let mut fx: Fixture = serde_json::from_slice(&std::fs::read(fixtures().join(format!("{name}_reference.json"))).unwrap()).unwrap();
    if fx.embeddings.is_empty() {
        // bert_st6's embeddings are MiniLM's (the script checks they are identical).
        #[derive(Deserialize)]
        struct Minilm {
            embeddings: Vec<Vec<f32>>,
        }
        let m: Minilm = serde_json::from_slice(&std::fs::read(fixtures().join("minilm_reference.json")).unwrap()).unwrap();
        fx.embeddings = m.embeddings;
    }
    fx
}

fn load(dir: &Path, precision: Precision) -> SentenceEncoder {
    SentenceEncoder::load(dir, LoadOptions { precision, ..Default::default() }).unwrap()
}

fn encode(model: &SentenceEncoder, texts: &[String], prompt: Option<&str>) -> Vec<Vec<f32>> {
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    rows(&model.encode(&texts, 32, prompt).unwrap())
}

/// The 6.2-saved BERT folder with MiniLM's weights put back (the fixture leaves them out).
fn bert_st6_folder(tmp: &Path) -> PathBuf {
    let dir = tmp.join("bert_st6");
    copy_dir(&fixtures().join("bert_st6"), &dir, &[]);
    std::fs::copy(minilm_dir().join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    dir
}

fn family_dir(name: &str, tmp: &Path) -> PathBuf {
    if name == "bert_st6" { bert_st6_folder(tmp) } else { fixtures().join(name) }
}

fn parity(name: &str) {
    let fx = fixture(name);
    let tmp = tempfile::tempdir().unwrap();
    let dir = family_dir(name, tmp.path());
    let model = load(&dir, Precision::Fp32);
    assert_eq!(model.max_seq_length(), fx.max_seq_length, "{name}: max_seq_length");
    assert!(fx.token_ids.iter().any(|ids| ids.len() == fx.max_seq_length), "{name}: some text reaches max_seq_length");

    let texts: Vec<&str> = fx.texts.iter().map(String::as_str).collect();
    let ids: Vec<Vec<u32>> = model.tokenizer().encode_ids(&texts).unwrap().into_iter().map(|(ids, _)| ids).collect();
    for (i, (ours, theirs)) in ids.iter().zip(&fx.token_ids).enumerate() {
        assert_eq!(ours, theirs, "{name}: token ids of text {i} {:?}", fx.texts[i]);
    }

    let ours = encode(&model, &fx.texts, None);
    let (cos, abs) = agreement(&ours, &fx.embeddings);
    eprintln!("{name} fp32 vs sentence-transformers, {} texts: min cosine {cos:.9}, max abs diff {abs:.3e}", ours.len());
    assert!(cos >= 0.99999 && abs <= 1e-5, "{name}: fp32 min cosine {cos}, max abs diff {abs}");

    let bf16 = load(&dir, Precision::Bf16);
    let (cos16, abs16) = agreement(&encode(&bf16, &fx.texts, None), &fx.embeddings);
    let (cos16_32, _) = agreement(&encode(&bf16, &fx.texts, None), &ours);
    eprintln!(
        "{name} bf16 vs sentence-transformers fp32: min cosine {cos16:.6}, max abs diff {abs16:.3e}; vs embedfleet fp32: {cos16_32:.6}"
    );
    assert!(cos16 >= 0.999, "{name}: bf16 min cosine {cos16}");
}

#[test]
fn mpnet_matches_sentence_transformers() {
    parity("mpnet");
}

#[test]
fn xlm_roberta_matches_sentence_transformers() {
    parity("xlm_roberta");
}

#[test]
fn modernbert_matches_sentence_transformers() {
    // CLS pooling as gte-modernbert-base; 183 of the texts are longer than the 16-token local window.
    parity("modernbert");
}

#[test]
fn modernbert_mean_pooling_matches_sentence_transformers() {
    // Mean pooling reads every real token's hidden state, so a wrong window edge, rotary angle or
    // padding mask anywhere in a padded batch shows here even where the CLS token hides it.
    let fx = fixture("modernbert");
    let case = fx.mean_pooling.as_ref().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mean");
    copy_dir(&fixtures().join("modernbert"), &dir, &["2_Normalize"]);
    std::fs::write(dir.join("modules.json"), serde_json::to_vec(&case.modules).unwrap()).unwrap();
    std::fs::write(dir.join("1_Pooling/config.json"), serde_json::to_vec(&case.pooling_config).unwrap()).unwrap();
    let model = load(&dir, Precision::Fp32);
    let (cos, abs) = agreement(&encode(&model, &fx.texts, None), &case.embeddings);
    let scale = case.embeddings.iter().flatten().fold(1.0f32, |m, x| m.max(x.abs()));
    eprintln!("modernbert mean pooling: min cosine {cos:.9}, max abs diff {abs:.2e} (values up to {scale:.1})");
    assert!(cos >= 0.99999 && abs <= 1e-5 * scale, "mean pooling: min cosine {cos}, max abs diff {abs}");
}

#[test]
fn qwen3_matches_sentence_transformers() {
    // Last-token pooling of a causal decoder, padded on the left as Qwen3-Embedding's tokenizer asks:
    // every embedding is the state of the <|endoftext|> the tokenizer appends, which has seen the
    // whole text through the causal mask, in batches where shorter rows start with padding.
    parity("qwen3");
}

#[test]
fn bert_folder_saved_by_sentence_transformers_6_loads() {
    parity("bert_st6");
}

fn named_prompt_parity(name: &str) {
    let fx = fixture(name);
    let prompted = fx.prompted.as_ref().unwrap();
    let model = load(&fixtures().join(name), Precision::Fp32);
    let prompt = model.named_prompt(&prompted.prompt_name).unwrap().to_owned();
    let texts = &fx.texts[..prompted.embeddings.len()];
    let (cos, abs) = agreement(&encode(&model, texts, Some(&prompt)), &prompted.embeddings);
    eprintln!("{name} with the {:?} prompt, {} texts: min cosine {cos:.9}, max abs diff {abs:.3e}", prompted.prompt_name, texts.len());
    assert!(cos >= 0.99999 && abs <= 1e-5, "{name} prompted: min cosine {cos}, max abs diff {abs}");
    // The prompt matters: without it the embeddings are others.
    let (plain, _) = agreement(&encode(&model, texts, None), &prompted.embeddings);
    assert!(plain < 0.999, "{name}: the prompt changed nothing (min cosine {plain})");
}

#[test]
fn named_prompt_is_applied_as_sentence_transformers_applies_it() {
    named_prompt_parity("xlm_roberta");
}

#[test]
fn qwen3_query_prompt_is_applied_as_sentence_transformers_applies_it() {
    // Qwen3-Embedding's instruction, with its newline, before every text (encode(prompt_name="query")).
    named_prompt_parity("qwen3");
}

#[test]
fn every_pooling_mode_matches_sentence_transformers() {
    let fx = fixture("xlm_roberta");
    assert_eq!(fx.pooling_cases.len(), 18, "6 modes × (no prompt, prompt, prompt left out)");
    let tmp = tempfile::tempdir().unwrap();
    for (i, case) in fx.pooling_cases.iter().enumerate() {
        // The pooling config and modules.json exactly as 6.2 saved them, over the same transformer.
        let dir = tmp.path().join(format!("case{i}"));
        copy_dir(&fixtures().join("xlm_roberta"), &dir, &["2_Normalize"]);
        std::fs::write(dir.join("modules.json"), serde_json::to_vec(&case.modules).unwrap()).unwrap();
        std::fs::write(dir.join("1_Pooling/config.json"), serde_json::to_vec(&case.pooling_config).unwrap()).unwrap();
        let model = load(&dir, Precision::Fp32);
        let ours = encode(&model, &fx.pooling_texts, case.prompt.as_deref());
        let (cos, abs) = agreement(&ours, &case.embeddings);
        let scale = case.embeddings.iter().flatten().fold(1.0f32, |m, x| m.max(x.abs()));
        eprintln!(
            "{} prompt {:?}: min cosine {cos:.9}, max abs diff {abs:.2e} (values up to {scale:.1})",
            case.pooling_config, case.prompt
        );
        assert!(
            cos >= 0.99999 && abs <= 1e-5 * scale,
            "{}, prompt {:?}: min cosine {cos}, max abs diff {abs}",
            case.pooling_config,
            case.prompt
        );
    }
}

/// The XLM-RoBERTa fixture with its weights replaced by another file set of the same tensors.
fn twin(variant: &str, tmp: &Path) -> PathBuf {
    let dir = tmp.join(variant);
    copy_dir(&fixtures().join("xlm_roberta"), &dir, &["model.safetensors"]);
    copy_dir(&fixtures().join(variant), &dir, &[]);
    dir
}

#[test]
fn pickle_and_sharded_weights_give_the_safetensors_embeddings() {
    let fx = fixture("xlm_roberta");
    let reference = encode(&load(&fixtures().join("xlm_roberta"), Precision::Fp32), &fx.texts, None);
    let tmp = tempfile::tempdir().unwrap();
    for variant in ["xlm_roberta_bin", "xlm_roberta_sharded"] {
        let dir = twin(variant, tmp.path());
        assert!(!dir.join("model.safetensors").exists());
        let (_, abs) = agreement(&encode(&load(&dir, Precision::Fp32), &fx.texts, None), &reference);
        assert_eq!(abs, 0.0, "{variant}: embeddings differ from the safetensors twin's");
    }
}

fn tensor_names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = Tensor::read_safetensors(path).unwrap().into_iter().map(|(n, _)| n).collect();
    names.sort();
    names
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn saved_folders_have_the_layout_both_sentence_transformers_generations_read() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, architecture, model_type) in [
        ("mpnet", "MPNetModel", "mpnet"),
        ("xlm_roberta", "XLMRobertaModel", "xlm-roberta"),
        ("bert_st6", "BertModel", "bert"),
        ("modernbert", "ModernBertModel", "modernbert"),
        ("qwen3", "Qwen3Model", "qwen3"),
    ] {
        let fx = fixture(name);
        let source = family_dir(name, tmp.path());
        let model = load(&source, Precision::Fp32);
        let out = tmp.path().join(format!("{name}-saved"));
        model.save(&out, &ModelCard { base_model: name.into(), ..Default::default() }).unwrap();

        let config = json(&out.join("config.json"));
        assert_eq!(config["architectures"], serde_json::json!([architecture]), "{name}");
        assert_eq!(config["model_type"], model_type, "{name}");
        assert_eq!(config["hidden_size"], json(&source.join("config.json"))["hidden_size"], "{name}: config kept");
        // The same tensor names as the checkpoint transformers wrote: no prefix, the pooler kept
        // (MiniLM's file also holds the position-id buffer that transformers no longer saves).
        let mut expected = tensor_names(&source.join("model.safetensors"));
        expected.retain(|n| n != "embeddings.position_ids");
        assert_eq!(tensor_names(&out.join("model.safetensors")), expected, "{name}");

        let modules = json(&out.join("modules.json"));
        let types: Vec<&str> = modules.as_array().unwrap().iter().map(|m| m["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling", "sentence_transformers.models.Normalize"],
            "{name}: the module names 2.x–3.x know, which 6.x maps"
        );
        let pooling = json(&out.join("1_Pooling/config.json"));
        assert_eq!(pooling["word_embedding_dimension"], model.dimension(), "{name}");
        let mode = match name {
            "modernbert" => "pooling_mode_cls_token",
            "qwen3" => "pooling_mode_lasttoken",
            _ => "pooling_mode_mean_tokens",
        };
        assert_eq!(pooling[mode], true, "{name}");
        assert!(pooling.get("pooling_mode").is_none() && pooling.get("include_prompt").is_none(), "{name}: {pooling}");
        assert_eq!(json(&out.join("sentence_bert_config.json"))["max_seq_length"], fx.max_seq_length, "{name}");
        for file in ["tokenizer.json", "tokenizer_config.json", "config_sentence_transformers.json", "README.md"] {
            assert!(out.join(file).exists(), "{name}: {file} not saved");
        }
        // Unchanged, so the padding side (Qwen3's left) and the pad token travel with the model.
        assert_eq!(json(&out.join("tokenizer_config.json")), json(&source.join("tokenizer_config.json")), "{name}");
        assert_eq!(
            json(&out.join("config_sentence_transformers.json"))["prompts"],
            json(&source.join("config_sentence_transformers.json"))["prompts"],
            "{name}: prompts kept"
        );

        let reloaded = load(&out, Precision::Fp32);
        assert_eq!(reloaded.max_seq_length(), fx.max_seq_length);
        let texts = &fx.texts[..60];
        let (_, abs) = agreement(&encode(&reloaded, texts, None), &encode(&model, texts, None));
        assert_eq!(abs, 0.0, "{name}: the saved folder embeds differently");
    }
}

#[test]
fn saving_over_a_pickle_folder_leaves_one_set_of_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = twin("xlm_roberta_bin", tmp.path());
    let model = load(&dir, Precision::Fp32);
    model.save(&dir, &ModelCard::default()).unwrap();
    assert!(dir.join("model.safetensors").exists() && !dir.join("pytorch_model.bin").exists());
    let texts = vec!["a short text".to_owned(), "Привет, мир! 東京".to_owned()];
    let (_, abs) = agreement(&encode(&load(&dir, Precision::Fp32), &texts, None), &encode(&model, &texts, None));
    assert_eq!(abs, 0.0);
}
