//! Finished chunks on disk, so a rerun after a crash, a budget stop or Ctrl-C pays only for the
//! chunks not done yet.

use crate::LlmError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What one chunk yielded, and who answered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    pub chunk_id: String,
    pub model: String,
    /// The chat-completions URL that answered. Local servers name their model whatever they were
    /// given, so the model name alone does not say which model wrote the questions.
    #[serde(default)]
    pub endpoint: String,
    pub questions: Vec<String>,
    /// Fewer questions than asked even after the retry; kept, because asking again costs money
    /// and the same model on the same chunk is unlikely to do better.
    pub short: bool,
}

impl CachedAnswer {
    /// "model at endpoint", how a summary names where an answer came from.
    pub fn origin(&self) -> String {
        let endpoint = if self.endpoint.is_empty() { "an unrecorded endpoint" } else { &self.endpoint };
        format!("{} at {endpoint}", self.model)
    }
}

/// The key of a chunk's answer: everything that changes what the LLM is asked, and who is asked
/// (the endpoint: two servers may serve different models under one name). Fields are
/// length-prefixed so no two different inputs can concatenate to the same bytes.
pub fn cache_key(chunk_text: &str, template: &str, model: &str, endpoint: &str, questions: usize) -> String {
    let mut hasher = Sha256::new();
    // v2 added the endpoint; v1 answers are simply not found, and asked again.
    hasher.update(b"embedfleet-generator/v2");
    for field in [chunk_text.as_bytes(), template.as_bytes(), model.as_bytes(), endpoint.as_bytes()] {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field);
    }
    hasher.update((questions as u64).to_le_bytes());
    hex::encode(hasher.finalize())
}

#[derive(Debug, Clone)]
pub struct AnswerCache {
    dir: PathBuf,
}

impl AnswerCache {
    pub fn open(dir: &Path) -> Result<Self, LlmError> {
        std::fs::create_dir_all(dir).map_err(|source| LlmError::Cache { op: "create", path: dir.to_owned(), source })?;
        Ok(Self { dir: dir.to_owned() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The stored answer; a file that does not parse (a crash mid-write on a filesystem without
    /// atomic rename) counts as absent, so the chunk is simply asked again.
    pub async fn get(&self, key: &str) -> Result<Option<CachedAnswer>, LlmError> {
        let path = self.path(key);
        match tokio::fs::read(&path).await {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(answer) => Ok(Some(answer)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable cached answer");
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LlmError::Cache { op: "read", path, source }),
        }
    }

    /// Writes to a temporary file in the same directory and renames it over the key, so a reader
    /// (or a crash) never sees half a file.
    pub async fn put(&self, key: &str, answer: &CachedAnswer) -> Result<(), LlmError> {
        let path = self.path(key);
        let tmp = self.dir.join(format!(".{key}.{}.{:x}.tmp", std::process::id(), rand::random::<u64>()));
        let bytes = serde_json::to_vec_pretty(answer).expect("answers serialize");
        let write = async {
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, &path).await
        };
        if let Err(source) = write.await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(LlmError::Cache { op: "write", path, source });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_every_input() {
        let url = "http://a:8000/v1/chat/completions";
        let base = cache_key("text", "tmpl", "m", url, 2);
        assert_eq!(base, cache_key("text", "tmpl", "m", url, 2));
        assert_eq!(base.len(), 64);
        for other in [
            cache_key("text2", "tmpl", "m", url, 2),
            cache_key("text", "tmpl2", "m", url, 2),
            cache_key("text", "tmpl", "m2", url, 2),
            cache_key("text", "tmpl", "m", "http://b:8000/v1/chat/completions", 2),
            cache_key("text", "tmpl", "m", url, 3),
            cache_key("tex", "ttmpl", "m", url, 2),
            cache_key("text", "tmpl", "m", &format!("{url}2"), 2),
        ] {
            assert_ne!(base, other);
        }
    }

    #[tokio::test]
    async fn round_trip_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = AnswerCache::open(&dir.path().join("nested/cache")).unwrap();
        let answer = CachedAnswer {
            chunk_id: "c".into(),
            model: "m".into(),
            endpoint: "http://e/v1/chat/completions".into(),
            questions: vec!["q?".into()],
            short: true,
        };
        assert_eq!(answer.origin(), "m at http://e/v1/chat/completions");
        assert_eq!(cache.get("k").await.unwrap(), None);
        cache.put("k", &answer).await.unwrap();
        assert_eq!(cache.get("k").await.unwrap(), Some(answer));
        let leftovers: Vec<_> = std::fs::read_dir(cache.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("k.json")], "no temporary files left");
        std::fs::write(cache.dir().join("bad.json"), "{ half").unwrap();
        assert_eq!(cache.get("bad").await.unwrap(), None);
        // A file written before answers recorded their endpoint still reads, and says so.
        std::fs::write(cache.dir().join("old.json"), r#"{"chunk_id":"c","model":"m","questions":[],"short":false}"#).unwrap();
        assert_eq!(cache.get("old").await.unwrap().unwrap().origin(), "m at an unrecorded endpoint");
    }
}
