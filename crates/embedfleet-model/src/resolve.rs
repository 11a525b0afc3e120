//! Where a model comes from: a local folder, an `s3://` prefix (downloaded once into a cache), or a
//! Hugging Face hub id (through hf-hub's cache, `HF_HOME`, and `HF_HUB_OFFLINE`).

use crate::error::ModelError;
use crate::weights::{WEIGHT_FILES, shard_files};
use embedfleet_core::{ArtifactStore, StoreOptions};
use std::path::{Path, PathBuf};

/// Files a sentence-transformers folder needs besides its weights (one of `WEIGHT_FILES`); the
/// others are optional.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
const OPTIONAL: &[&str] = &[
    "modules.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];

pub async fn resolve_model(spec: &str, store: &StoreOptions) -> Result<PathBuf, ModelError> {
    let local = Path::new(spec);
    if local.is_dir() {
        return Ok(local.to_owned());
    }
    if spec.starts_with("s3://") {
        return from_s3(spec, store).await;
    }
    from_hub_id(spec).await
}

/// A model for a fleet worker: only from a source `sources` allows (a refused one is an error that
/// says what is allowed), and never from a local folder, even one whose path looks like a hub id.
pub async fn resolve_fleet_model(
    spec: &str,
    store: &StoreOptions,
    sources: &embedfleet_core::model_source::ModelSources,
) -> Result<PathBuf, ModelError> {
    sources.check(spec)?;
    if spec.starts_with("s3://") {
        return from_s3(spec, store).await;
    }
    from_hub_id(spec).await
}

/// An `s3://` prefix, downloaded once into the cache.
async fn from_s3(spec: &str, store: &StoreOptions) -> Result<PathBuf, ModelError> {
    let cache = cache_dir().join("s3").join(embedfleet_core::DocId::from_identity(spec).as_str());
    if !cache.join("config.json").exists() {
        let src = ArtifactStore::open(spec, store)?;
        let tmp = cache.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        let n = src.get_dir("", &tmp).await?;
        if n == 0 {
            return Err(ModelError::BadLocation(format!("{spec} holds no files")));
        }
        std::fs::rename(&tmp, &cache).map_err(|e| ModelError::Write { path: cache.clone(), source: e })?;
    }
    Ok(cache)
}

/// A Hugging Face hub id.
async fn from_hub_id(spec: &str) -> Result<PathBuf, ModelError> {
    if spec.starts_with('.') || spec.starts_with('/') || spec.contains("://") || spec.split('/').count() > 2 {
        return Err(ModelError::BadLocation(format!("{spec} (no such folder)")));
    }
    let id = spec.to_owned();
    tokio::task::spawn_blocking(move || from_hub(&id)).await.map_err(|e| ModelError::BadLocation(e.to_string()))?
}

fn cache_dir() -> PathBuf {
    embedfleet_core::cache::cache_subdir("models")
}

fn from_hub(id: &str) -> Result<PathBuf, ModelError> {
    let cache = hf_hub::Cache::from_env();
    let repo = cache.model(id.to_owned());
    if let Some(files) = REQUIRED.iter().map(|f| repo.get(f)).collect::<Option<Vec<_>>>() {
        let folder = files[0].parent().expect("a cached file has a folder").to_owned();
        if cached_weights(&repo, &folder) {
            return Ok(folder);
        }
    }
    let offline = std::env::var("HF_HUB_OFFLINE").map(|v| v == "1" || v.eq_ignore_ascii_case("true")).unwrap_or(false);
    if offline {
        return Err(ModelError::NotCached { id: id.to_owned(), reason: "HF_HUB_OFFLINE is set".into() });
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| ModelError::NotCached { id: id.to_owned(), reason: e.to_string() })?;
    let remote = api.model(id.to_owned());
    let mut folder = None;
    for file in REQUIRED {
        let path = remote.get(file).map_err(|e| ModelError::NotCached { id: id.to_owned(), reason: e.to_string() })?;
        folder.get_or_insert_with(|| path.parent().expect("a downloaded file has a folder").to_owned());
    }
    let folder = folder.expect("REQUIRED is not empty");
    // The first weight file the repository has, as transformers prefers them; an index brings its shards.
    let mut found = false;
    for file in WEIGHT_FILES {
        let Ok(path) = remote.get(file) else { continue };
        if file.ends_with(".index.json") {
            for shard in shard_files(&path)? {
                remote.get(&shard).map_err(|e| ModelError::NotCached { id: id.to_owned(), reason: e.to_string() })?;
            }
        }
        found = true;
        break;
    }
    if !found {
        return Err(ModelError::NotCached { id: id.to_owned(), reason: "the repository has no weight file".into() });
    }
    for file in OPTIONAL {
        // Absent optional files are normal (bare transformers repos have no modules.json).
        let _ = remote.get(file);
    }
    Ok(folder)
}

/// Whether the hub cache holds a complete set of weights for the folder.
fn cached_weights(repo: &hf_hub::CacheRepo, folder: &Path) -> bool {
    WEIGHT_FILES.iter().any(|file| match repo.get(file) {
        Some(path) if file.ends_with(".index.json") => {
            shard_files(&path).map(|shards| shards.iter().all(|s| folder.join(s).exists())).unwrap_or(false)
        }
        Some(_) => true,
        None => false,
    })
}
