//! Where the fleet may load a model from. A submitted run names its base model (and its mining
//! model); without a check, anyone who can submit could make the trainer read any folder on its
//! disk or any `s3://` prefix its credentials reach, and copy it into the run's results. The
//! operator allows sources instead: hub ids, and `s3://` prefixes on a list. Local paths are never
//! allowed in the fleet (they mean nothing across machines, and everything on the worker's disk).

/// The sources a fleet accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSources {
    /// Hugging Face hub ids (`org/name`).
    pub hub: bool,
    /// `s3://bucket/prefix/` prefixes, each ending with `/`.
    pub s3_prefixes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RefusedSource(pub String);

impl ModelSources {
    /// `hub,s3://bucket/models/,…`: `hub` allows hub ids; each `s3://` entry allows that prefix.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut sources = ModelSources { hub: false, s3_prefixes: Vec::new() };
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "hub" {
                sources.hub = true;
            } else if let Some(rest) = entry.strip_prefix("s3://") {
                let (bucket, _) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() || entry.contains("..") {
                    return Err(format!("'{entry}' is not an s3://bucket/prefix/"));
                }
                sources.s3_prefixes.push(format!("{}/", entry.trim_end_matches('/')));
            } else {
                return Err(format!("'{entry}' is neither `hub` nor an s3:// prefix (local folders are never allowed in the fleet)"));
            }
        }
        Ok(sources)
    }

    /// The default of a fleet whose store is `store` (`s3://bucket[/prefix]`): hub ids, and the
    /// store's own `models/` folder.
    pub fn default_for_store(store: &str) -> Self {
        let mut sources = ModelSources { hub: true, s3_prefixes: Vec::new() };
        if store.starts_with("s3://") {
            sources.s3_prefixes.push(format!("{}/models/", store.trim_end_matches('/')));
        }
        sources
    }

    /// What the list allows, for messages.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if self.hub {
            parts.push("hub ids".into());
        }
        parts.extend(self.s3_prefixes.iter().map(|p| format!("{p}…")));
        if parts.is_empty() { "nothing".into() } else { parts.join(", ") }
    }

    /// Ok when the fleet may load `model` (a hub id or an `s3://` location); Err with a reason
    /// that says what is allowed and which flag changes it.
    pub fn check(&self, model: &str) -> Result<(), RefusedSource> {
        let refuse = |why: String| {
            Err(RefusedSource(format!(
                "model '{}' {why}; this fleet loads models from {} (the operator sets --allowed-model-sources)",
                model.chars().take(200).collect::<String>(),
                self.describe()
            )))
        };
        if let Some(rest) = model.strip_prefix("s3://") {
            let location = format!("s3://{}/", rest.trim_end_matches('/'));
            if rest.split('/').any(|part| part == ".." || part == ".") {
                return refuse("is not a plain s3:// prefix".into());
            }
            if self.s3_prefixes.iter().any(|p| location.starts_with(p.as_str())) {
                return Ok(());
            }
            return refuse("is not under an allowed s3:// prefix".into());
        }
        if is_hub_id(model) {
            return if self.hub { Ok(()) } else { refuse("is a hub id, and hub ids are not allowed".into()) };
        }
        refuse("is a local path or an unknown kind of location, and a fleet never loads those".into())
    }
}

/// `name` or `org/name`, of letters, digits, `-`, `_` and `.`, not starting with `.` or `-`.
pub fn is_hub_id(model: &str) -> bool {
    let parts: Vec<&str> = model.split('/').collect();
    (1..=2).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty() && !p.starts_with(['.', '-']) && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_allowed_prefixes_pass_and_nothing_else() {
        let sources = ModelSources::parse("hub, s3://models-bucket/base").unwrap();
        assert!(sources.check("BAAI/bge-small-en").is_ok());
        assert!(sources.check("all-MiniLM-L6-v2").is_ok());
        assert!(sources.check("s3://models-bucket/base/minilm").is_ok());
        assert!(sources.check("s3://models-bucket/base").is_ok());
        for refused in [
            "/etc",
            "./model",
            "../../runs/other/model",
            "/tmp/tiny-model",
            "s3://models-bucket/basement/x",
            "s3://other/base/minilm",
            "s3://models-bucket/base/../../secrets",
            "gs://x/y",
            "a/b/c",
            ".hidden",
            "",
        ] {
            let err = sources.check(refused).unwrap_err();
            assert!(err.0.contains("--allowed-model-sources"), "{refused}: {err}");
        }
        let s3_only = ModelSources::parse("s3://m/").unwrap();
        assert!(s3_only.check("BAAI/bge-small-en").unwrap_err().0.contains("hub ids are not allowed"));
        assert!(ModelSources::parse("/models").is_err());
        assert!(ModelSources::parse("s3://").is_err());
    }

    #[test]
    fn the_default_is_the_hub_and_the_store_s_models_folder() {
        let sources = ModelSources::default_for_store("s3://embedfleet");
        assert!(sources.check("s3://embedfleet/models/minilm").is_ok());
        assert!(sources.check("s3://embedfleet/runs/r1/model").is_err());
        assert!(sources.check("BAAI/bge-small-en").is_ok());
        assert_eq!(ModelSources::default_for_store("/shared/dir").s3_prefixes, Vec::<String>::new());
    }
}
