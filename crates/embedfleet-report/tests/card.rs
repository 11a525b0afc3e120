//! The model card's front matter is YAML the hub reads: `base_model`, `library_name`, tags, the
//! metric names and a `model-index` whose numbers are the evaluation's.

mod common;

use embedfleet_report::card::{ModelCard, ModelFacts, render};

fn front_matter(card: &str) -> serde_yaml::Value {
    let rest = card.strip_prefix("---\n").expect("front matter first");
    serde_yaml::from_str(&rest[..rest.find("\n---\n").expect("front matter ends")]).expect("YAML")
}

#[test]
fn the_card_front_matter_is_yaml_with_the_evaluation() {
    let report = common::sample_report();
    let card = ModelCard {
        base_model: "sentence-transformers/all-MiniLM-L6-v2".into(),
        training_data: "464 (question, passage) pairs".into(),
        evaluation: report.models.clone(),
        evaluation_size: Some((116, 58)),
        training: report.training.clone(),
        dataset: report.dataset.clone(),
        location: "out/model".into(),
        checksums: vec![("model.safetensors".into(), "ab".repeat(32))],
        ..Default::default()
    };
    let facts = ModelFacts { dimension: 384, max_seq_length: 256, pooling: "mean".into(), normalize: true };
    let text = render(&card, &facts);
    let meta = front_matter(&text);
    assert_eq!(meta["base_model"].as_str(), Some("sentence-transformers/all-MiniLM-L6-v2"));
    assert_eq!(meta["library_name"].as_str(), Some("sentence-transformers"));
    assert_eq!(meta["pipeline_tag"].as_str(), Some("sentence-similarity"));
    let tags: Vec<&str> = meta["tags"].as_sequence().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(tags.contains(&"dataset_size:464") && tags.contains(&"embedfleet"), "{tags:?}");
    let index = &meta["model-index"][0];
    assert_eq!(index["name"].as_str(), Some("SentenceTransformer based on sentence-transformers/all-MiniLM-L6-v2"));
    let metrics = index["results"][0]["metrics"].as_sequence().unwrap();
    let tuned = report.models.last().unwrap();
    assert_eq!(metrics.len(), tuned.metrics.len());
    for (m, (name, value)) in metrics.iter().zip(&tuned.metrics) {
        assert_eq!(m["value"].as_f64(), Some(*value), "{name}");
        assert!(m["name"].as_str().unwrap().starts_with("Cosine "));
    }
    // The body: every metric base against fine-tuned, training, usage, no placeholder links.
    assert!(text.contains("| Cosine NDCG@10 | 0.8310 | 0.8920 | +0.0610 |"), "{text}");
    assert!(text.contains("[sentence-transformers/all-MiniLM-L6-v2](https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2)"));
    assert!(
        text.contains("SentenceTransformer(\"out/model\")")
            && text.contains("SentenceTransformerEmbeddingFunction(model_name=\"out/model\")")
    );
    assert!(text.contains("- Training time: 1 min 21 s (11.4 pairs/s)") && text.contains("- Device: cpu (2 threads), precision fp32"));
    for link in text.split("](").skip(1) {
        let url = link.split(')').next().unwrap();
        assert!(url.starts_with("https://") && url.len() > "https://x.y/".len(), "a placeholder link: {url}");
    }

    // A name that needs quoting in YAML survives it.
    let odd = ModelCard { base_model: "my: model # \"v2\"".into(), ..card };
    assert_eq!(front_matter(&render(&odd, &facts))["base_model"].as_str(), Some("my: model # \"v2\""));
}
