//! The model card (`README.md` of a saved model), shaped like the cards sentence-transformers
//! writes: YAML front matter the Hugging Face hub reads (`base_model`, `library_name`, tags,
//! `metrics` and a `model-index` with the evaluation), then every metric base against fine-tuned,
//! how it was trained, and how to use it.

use crate::charts::dims::{ndcg_at, scored_dims};
use crate::data::{DatasetFacts, ModelResult, TrainingFacts};
use crate::html::duration;
use crate::summary::verdict;
use std::fmt::Write as _;
use std::path::Path;

/// What a saved model's card says about it. Every field may be empty: a checkpoint saved for the
/// evaluators gets a short card, the final model a full one.
#[derive(Debug, Clone, Default)]
pub struct ModelCard {
    /// The hub id or name of the model this one was fine-tuned from (see [`base_model_name`]).
    pub base_model: String,
    /// A phrase for what it was trained on, e.g. `928 (question, passage) pairs`.
    pub training_data: String,
    /// Metrics of this model alone, for when no comparison is known.
    pub metrics: Vec<(String, f64)>,
    /// The final evaluation, base first; the last model is the one this card describes.
    pub evaluation: Vec<ModelResult>,
    /// Validation questions and passages behind `evaluation`.
    pub evaluation_size: Option<(usize, usize)>,
    pub training: Option<TrainingFacts>,
    pub dataset: Option<DatasetFacts>,
    /// The folder the usage examples load, as the user will find it (`out/model`).
    pub location: String,
    /// SHA-256 of each file of the model (this card aside), by path in the folder: a copy can be
    /// checked against them (`embedfleet results --download` does).
    pub checksums: Vec<(String, String)>,
}

/// Facts of the saved model itself.
#[derive(Debug, Clone, Default)]
pub struct ModelFacts {
    pub dimension: i64,
    pub max_seq_length: usize,
    /// `mean`, `cls`, …
    pub pooling: String,
    pub normalize: bool,
}

/// The hub's name for an evaluation metric (`cosine_ndcg@10`) and its display name
/// (`Cosine NDCG@10`), from a CSV-style name (`cosine-NDCG@10`).
pub fn hub_metric(name: &str) -> (String, String) {
    let (function, metric) = name.split_once('-').unwrap_or(("cosine", name));
    let mut display_fn: Vec<char> = function.chars().collect();
    if let Some(c) = display_fn.first_mut() {
        *c = c.to_ascii_uppercase();
    }
    (format!("{function}_{}", metric.to_ascii_lowercase()), format!("{} {metric}", display_fn.into_iter().collect::<String>()))
}

/// Whether `s` reads as a hub id (`org/name` or `name`), not a path or URL.
pub fn is_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    !s.is_empty()
        && parts.len() <= 2
        && !s.starts_with('.')
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
}

/// The name a card gives the model it was fine-tuned from. A hub id or an `s3://` location stays
/// as the user gave it. A local folder is never named by its path: a hub-cache folder
/// (`models--org--name/snapshots/…`) is `org/name`; a folder whose own card loads it by a hub id
/// (`SentenceTransformer('org/name')`, as sentence-transformers' cards do) gets that id; any other
/// folder its name.
pub fn base_model_name(spec: &str, folder_card: Option<&str>) -> String {
    let path = Path::new(spec);
    if !path.is_dir() {
        // A folder on another machine (a fleet worker's) is still named by its last part.
        let looks_local = !spec.contains("://") && (spec.starts_with('/') || spec.starts_with('.') || !is_hub_id(spec));
        return match path.file_name().and_then(|n| n.to_str()) {
            Some(name) if looks_local => name.to_owned(),
            _ => spec.to_owned(),
        };
    }
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    for component in canonical.components().rev() {
        if let Some(rest) = component.as_os_str().to_str().and_then(|c| c.strip_prefix("models--")) {
            return rest.replacen("--", "/", 1);
        }
    }
    if let Some(card) = folder_card.filter(|c| !c.contains("- embedfleet\n")) {
        for open in ["SentenceTransformer('", "SentenceTransformer(\""] {
            if let Some(id) = card.split(open).nth(1).and_then(|rest| rest.split(['\'', '"']).next())
                && is_hub_id(id)
                && id.contains('/')
            {
                return id.to_owned();
            }
        }
    }
    canonical.file_name().and_then(|n| n.to_str()).unwrap_or(spec).to_owned()
}

/// [`base_model_name`] reading the card of a local folder itself.
pub fn describe_base_model(spec: &str) -> String {
    let card = std::fs::read_to_string(Path::new(spec).join("README.md")).ok();
    base_model_name(spec, card.as_deref())
}

/// A YAML double-quoted scalar (JSON's string syntax is a subset of it).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

fn front_matter(card: &ModelCard) -> String {
    let mut s = String::from("---\n");
    s.push_str("library_name: sentence-transformers\npipeline_tag: sentence-similarity\n");
    s.push_str("tags:\n- sentence-transformers\n- sentence-similarity\n- feature-extraction\n- embedfleet\n");
    if let Some(t) = &card.training {
        let _ = writeln!(s, "- dataset_size:{}", t.pairs_per_epoch);
        if !t.matryoshka_dims.is_empty() {
            let _ = writeln!(s, "- loss:MatryoshkaLoss");
        }
        let _ = writeln!(s, "- loss:MultipleNegativesRankingLoss");
    }
    if !card.base_model.is_empty() {
        let _ = writeln!(s, "base_model: {}", yaml_str(&card.base_model));
    }
    if !card.checksums.is_empty() {
        s.push_str("embedfleet_model_sha256:\n");
        for (file, sum) in &card.checksums {
            let _ = writeln!(s, "  {}: {sum}", yaml_str(file));
        }
    }
    if let Some(model) = card.evaluation.last() {
        s.push_str("metrics:\n");
        for name in model.metrics.keys() {
            let _ = writeln!(s, "- {}", hub_metric(name).0);
        }
        let model_name = if card.base_model.is_empty() {
            "SentenceTransformer fine-tuned with embedfleet".to_string()
        } else {
            format!("SentenceTransformer based on {}", card.base_model)
        };
        let _ = writeln!(s, "model-index:\n- name: {}\n  results:", yaml_str(&model_name));
        let _ = writeln!(
            s,
            "  - task:\n      type: information-retrieval\n      name: Information Retrieval\n    dataset:\n      name: {0}\n      type: {0}\n    metrics:",
            yaml_str("val")
        );
        for (name, value) in &model.metrics {
            let (id, display) = hub_metric(name);
            let _ = writeln!(s, "    - type: {id}\n      value: {value}\n      name: {}", yaml_str(&display));
        }
    }
    s.push_str("---\n");
    s
}

fn evaluation_section(s: &mut String, card: &ModelCard) {
    let Some(model) = card.evaluation.last() else {
        if !card.metrics.is_empty() {
            s.push_str("\n## Evaluation\n\n| Metric | Value |\n|:--|--:|\n");
            for (name, value) in &card.metrics {
                let _ = writeln!(s, "| {name} | {value:.4} |");
            }
        }
        return;
    };
    s.push_str("\n## Evaluation\n\n");
    if let Some((queries, passages)) = card.evaluation_size {
        let _ = writeln!(
            s,
            "On the validation set ({queries} questions, each to be found among {passages} passages that training never saw), with the metrics of sentence-transformers' `InformationRetrievalEvaluator`:\n"
        );
    }
    let models = &card.evaluation;
    let _ = write!(s, "| Metric |");
    for m in models {
        let _ = write!(s, " {} |", m.name);
    }
    if models.len() > 1 {
        s.push_str(" Change |");
    }
    s.push_str("\n|:--|");
    for _ in 0..models.len() + usize::from(models.len() > 1) {
        s.push_str("--:|");
    }
    s.push('\n');
    let mut rows: Vec<(String, Vec<Option<f64>>)> =
        vec![(format!("Hit rate@{}", model.hit_rate.k), models.iter().map(|m| Some(m.hit_rate.rate)).collect())];
    for name in model.metrics.keys() {
        rows.push((hub_metric(name).1, models.iter().map(|m| m.metrics.get(name).copied()).collect()));
    }
    for (name, values) in rows {
        let _ = write!(s, "| {name} |");
        for v in &values {
            let _ = write!(s, " {} |", v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()));
        }
        if let (Some(Some(first)), Some(Some(last)), true) = (values.first(), values.last(), values.len() > 1) {
            let _ = write!(s, " {:+.4} |", last - first);
        }
        s.push('\n');
    }
    let v = verdict(models);
    if !v.text.is_empty() {
        let _ = writeln!(s, "\n{}", v.text);
    }
    dims_table(s, models);
    if card.dataset.as_ref().is_some_and(|d| d.offline_spans()) {
        let _ = writeln!(s, "\n{}", crate::data::OFFLINE_SPANS_CAVEAT);
    }
}

/// NDCG@10 and the hit rate at each Matryoshka dimension, every model side by side.
fn dims_table(s: &mut String, models: &[crate::ModelResult]) {
    let dims = scored_dims(models);
    if dims.is_empty() {
        return;
    }
    s.push_str("\n### By embedding dimension (Matryoshka)\n\nThe embeddings cut to their first D dimensions (`truncate_dim=D`), each cut scored as above:\n\n| Dimensions |");
    for m in models {
        let _ = write!(s, " {0} NDCG@10 | {0} hit rate |", m.name);
    }
    s.push_str("\n|--:|");
    for _ in models {
        s.push_str("--:|--:|");
    }
    s.push('\n');
    for dim in dims {
        let _ = write!(s, "| {dim} |");
        for m in models {
            match m.dims.iter().find(|d| d.dim == dim) {
                Some(d) => {
                    let ndcg = ndcg_at(m, dim).map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
                    let _ = write!(s, " {ndcg} | {:.4} |", d.hit_rate.rate);
                }
                None => s.push_str(" - | - |"),
            }
        }
        s.push('\n');
    }
}

fn training_section(s: &mut String, card: &ModelCard) {
    s.push_str("\n## Training details\n");
    if let Some(d) = &card.dataset {
        s.push_str("\n### Dataset\n\n");
        if let Some(n) = d.documents {
            let _ = writeln!(s, "- Documents: {n}");
        }
        let _ = writeln!(s, "- Chunks: {} (training {}, validation {})", d.chunks, d.train_chunks, d.val_chunks);
        let _ = writeln!(s, "- Questions: {} training, {} validation; generator: {}", d.train_questions, d.val_questions, d.generator);
        let _ = writeln!(s, "- Split: by {}", d.split_by);
        if let Some(llm) = &d.llm {
            let _ = writeln!(
                s,
                "- LLM: {}, {} requests, {} prompt + {} completion tokens, ${:.4}",
                llm.model, llm.requests, llm.prompt_tokens, llm.completion_tokens, llm.cost_usd
            );
        }
    } else if !card.training_data.is_empty() {
        let _ = writeln!(s, "\n- Training data: {}", card.training_data);
    }
    let Some(t) = &card.training else { return };
    let _ = writeln!(
        s,
        "- Columns: question and passage; each question's own passage is its positive, the other passages of the batch its negatives"
    );
    let _ = writeln!(s, "\n### Loss\n\n{}", t.loss);
    s.push_str("\n### Hyperparameters\n\n");
    let _ = writeln!(s, "- Epochs: {}", t.epochs);
    let _ = writeln!(
        s,
        "- Batch size: {}{}",
        t.batch_size,
        t.mini_batch_size.map(|m| format!(" (GradCache, mini-batches of {m})")).unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "- Learning rate: {:e}, linear warm-up over {:.0}% of the steps, then linear decay",
        t.learning_rate,
        t.warmup_ratio * 100.0
    );
    let _ = writeln!(s, "- Weight decay: {}, gradient norm clipped at {}", t.weight_decay, t.max_grad_norm);
    let _ = writeln!(s, "- Evaluation every {} steps; the best checkpoint by {} is kept", t.evaluation_steps, t.metric);
    let _ = writeln!(s, "- Seed: {}", t.seed);
    s.push_str("\n### Training time and hardware\n\n");
    let _ = writeln!(s, "- Steps: {} ({} pairs per epoch)", t.steps, t.pairs_per_epoch);
    let _ = writeln!(s, "- Training time: {} ({:.1} pairs/s)", duration(t.seconds), t.pairs_per_second);
    let _ = writeln!(s, "- Device: {}, precision {}", t.device, t.precision);
    match t.best_step {
        Some(step) => {
            let _ = writeln!(s, "- Kept checkpoint: step {step}");
        }
        None => {
            let _ = writeln!(s, "- Kept: the base model (no checkpoint beat it)");
        }
    }
    if let Some(merge) = &t.merge {
        let _ = writeln!(s, "- Merge with the base: {merge}");
    }
}

fn usage_section(s: &mut String, card: &ModelCard) {
    let folder = if card.location.is_empty() { "." } else { &card.location };
    let folder = yaml_str(folder);
    let _ = write!(
        s,
        r#"
## Usage

The folder that holds this card is a complete sentence-transformers model.

### Sentence Transformers

```bash
pip install -U sentence-transformers
```

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer({folder})
embeddings = model.encode([
    "How often is the index compacted?",
    "Compaction runs every night and merges small segments.",
])
print(embeddings.shape)
print(model.similarity(embeddings[:1], embeddings[1:]))
```

### ChromaDB

```python
import chromadb
from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction

embed = SentenceTransformerEmbeddingFunction(model_name={folder})
client = chromadb.PersistentClient(path="chroma")
docs = client.get_or_create_collection("docs", embedding_function=embed, metadata={{"hnsw:space": "cosine"}})
docs.add(ids=["1", "2"], documents=["Compaction runs every night.", "Backups are kept for 30 days."])
print(docs.query(query_texts=["When does compaction run?"], n_results=1))
```
"#
    );
}

/// The whole card.
pub fn render(card: &ModelCard, facts: &ModelFacts) -> String {
    let mut s = front_matter(card);
    let title = if card.base_model.is_empty() {
        "Sentence embedding model fine-tuned with embedfleet".to_string()
    } else {
        format!("{} fine-tuned with embedfleet", card.base_model.rsplit('/').next().unwrap_or(&card.base_model))
    };
    let _ = writeln!(s, "\n# {title}\n");
    let from = match card.base_model.as_str() {
        "" => String::new(),
        id if is_hub_id(id) && id.contains('/') => format!(" fine-tuned from [{id}](https://huggingface.co/{id})"),
        name => format!(" fine-tuned from `{name}`"),
    };
    let on = if card.training_data.is_empty() { String::new() } else { format!(" on {}", card.training_data) };
    let _ = writeln!(
        s,
        "This is a [sentence-transformers](https://www.sbert.net) model{from}{on} with MultipleNegativesRankingLoss, by embedfleet {}. It maps text to a {}-dimensional dense vector space for semantic search and retrieval.",
        crate::EMBEDFLEET_VERSION,
        facts.dimension
    );
    s.push_str("\n## Model details\n\n- Model type: Sentence Transformer\n");
    if !card.base_model.is_empty() {
        let _ = writeln!(s, "- Base model: {}", card.base_model);
    }
    let _ = writeln!(s, "- Maximum sequence length: {} tokens", facts.max_seq_length);
    let _ = writeln!(s, "- Output dimensionality: {}", facts.dimension);
    if let Some(t) = card.training.as_ref().filter(|t| !t.matryoshka_dims.is_empty()) {
        let dims: Vec<String> = t.matryoshka_dims.iter().map(usize::to_string).collect();
        let _ = writeln!(
            s,
            "- Matryoshka dimensions: {} (trained so that the first D dimensions of an embedding work on their own; load with `truncate_dim=D`)",
            dims.join(", ")
        );
    }
    let _ = writeln!(s, "- Pooling: {}{}", facts.pooling, if facts.normalize { ", then normalized to unit length" } else { "" });
    s.push_str("- Similarity function: cosine\n");
    evaluation_section(&mut s, card);
    if card.training.is_some() || card.dataset.is_some() || !card.training_data.is_empty() {
        training_section(&mut s, card);
    }
    usage_section(&mut s, card);
    if let Some(&smallest) = card.training.as_ref().and_then(|t| t.matryoshka_dims.last()) {
        let folder = yaml_str(if card.location.is_empty() { "." } else { &card.location });
        let _ = writeln!(
            s,
            "\n### Smaller embeddings\n\nTrained with Matryoshka dimensions, so a cut embedding still works (see the table by dimension above):\n\n```python\nmodel = SentenceTransformer({folder}, truncate_dim={smallest})\n```"
        );
    }
    let _ = writeln!(s, "\n## Framework versions\n\n- embedfleet {} (libtorch through tch)", crate::EMBEDFLEET_VERSION);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_follow_the_hub() {
        assert_eq!(hub_metric("cosine-NDCG@10"), ("cosine_ndcg@10".to_owned(), "Cosine NDCG@10".to_owned()));
        assert_eq!(hub_metric("dot-Accuracy@1"), ("dot_accuracy@1".to_owned(), "Dot Accuracy@1".to_owned()));
    }

    #[test]
    fn hub_ids_are_not_paths() {
        assert!(is_hub_id("BAAI/bge-small-en"));
        assert!(is_hub_id("bert-base-uncased"));
        assert!(!is_hub_id("./model"));
        assert!(!is_hub_id("/root/.cache/x"));
        assert!(!is_hub_id("a/b/c"));
        assert!(!is_hub_id("s3://bucket/model"));
    }

    #[test]
    fn a_base_model_is_never_named_by_a_local_path() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(base_model_name("BAAI/bge-small-en", None), "BAAI/bge-small-en");
        assert_eq!(base_model_name("s3://models/bge", None), "s3://models/bge");
        assert_eq!(base_model_name("/srv/models/tiny-model", None), "tiny-model", "a folder elsewhere");
        let cached = dir.path().join("hub/models--BAAI--bge-small-en/snapshots/abc123");
        std::fs::create_dir_all(&cached).unwrap();
        assert_eq!(base_model_name(cached.to_str().unwrap(), None), "BAAI/bge-small-en");
        let folder = dir.path().join("all-MiniLM-L6-v2");
        std::fs::create_dir_all(&folder).unwrap();
        let card = "---\ntags:\n- sentence-transformers\n---\nmodel = SentenceTransformer('sentence-transformers/all-MiniLM-L6-v2')\n";
        assert_eq!(base_model_name(folder.to_str().unwrap(), Some(card)), "sentence-transformers/all-MiniLM-L6-v2");
        assert_eq!(base_model_name(folder.to_str().unwrap(), None), "all-MiniLM-L6-v2");
        // Our own card's usage names a folder, not the model's id.
        let ours = "---\ntags:\n- embedfleet\n---\nmodel = SentenceTransformer(\"out/model\")\n";
        assert_eq!(base_model_name(folder.to_str().unwrap(), Some(ours)), "all-MiniLM-L6-v2");
    }
}
