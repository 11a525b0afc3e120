//! The sentence-transformers folder around the transformer: which modules it chains
//! (`modules.json`), how it pools, whether it normalises, its max sequence length and prompts.
//! Read the way sentence-transformers 6.2 reads them, from folders that 2.x–3.x wrote (most hub
//! models) and from folders 5.x–6.x write (module types under `sentence_transformers.base.*`, the
//! max length in tokenizer_config.json, pooling as `{"pooling_mode": "cls"}`).

use crate::config::{ModelConfig, ModuleEntry, PoolingConfig, read_json};
use crate::error::ModelError;
use crate::models::Family;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The names sentence-transformers has given the Transformer module's own config over the years.
const TRANSFORMER_CONFIGS: &[&str] = &[
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
];

#[derive(Debug)]
pub struct Layout {
    /// The folder holding config.json, the weights and the tokenizer (the root in every layout
    /// since 2.0; `0_Transformer/` in the first releases).
    pub transformer_dir: PathBuf,
    /// None for a bare transformers folder.
    pub pooling: Option<PoolingConfig>,
    pub normalize: bool,
    /// `max_seq_length` from the Transformer module's config (older layouts).
    declared_max_seq_length: Option<usize>,
    pub do_lower_case: bool,
    pub prompts: Map<String, Value>,
    pub default_prompt_name: Option<String>,
}

enum Kind {
    Transformer,
    Pooling,
    Normalize,
}

fn module_kind(entry: &ModuleEntry) -> Option<Kind> {
    // Every spelling of the same three classes: `sentence_transformers.models.Pooling` (2.x–3.x),
    // `…sentence_transformer.modules.pooling.Pooling` and `…base.modules.transformer.Transformer` (5.x–6.x).
    match entry.kind.rsplit('.').next()? {
        "Transformer" => Some(Kind::Transformer),
        "Pooling" => Some(Kind::Pooling),
        "Normalize" => Some(Kind::Normalize),
        _ => None,
    }
}

impl Layout {
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let modules_path = dir.join("modules.json");
        let mut modules: Vec<ModuleEntry> = if modules_path.exists() { read_json(&modules_path)? } else { Vec::new() };
        modules.sort_by_key(|m| m.idx);
        let mut transformer_dir = None;
        let mut pooling = None;
        let mut normalize = false;
        for (position, entry) in modules.iter().enumerate() {
            let unsupported = || ModelError::UnsupportedModule { kind: entry.kind.clone(), path: entry.path.clone() };
            // A path must stay inside the folder.
            if Path::new(&entry.path).components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                return Err(ModelError::InvalidConfig(format!(
                    "{}: module path '{}' leaves the folder",
                    modules_path.display(),
                    entry.path
                )));
            }
            match module_kind(entry).ok_or_else(unsupported)? {
                Kind::Transformer if position == 0 => transformer_dir = Some(dir.join(&entry.path)),
                Kind::Pooling if position == 1 => {
                    pooling = Some(PoolingConfig::load(&dir.join(&entry.path).join("config.json"))?);
                }
                Kind::Normalize if position == 2 => normalize = true,
                _ => return Err(unsupported()),
            }
        }
        if !modules.is_empty() && (transformer_dir.is_none() || pooling.is_none()) {
            return Err(ModelError::InvalidConfig(format!("{} must list a Transformer then a Pooling module", modules_path.display())));
        }
        let transformer_dir = transformer_dir.unwrap_or_else(|| dir.to_owned());
        let module_config: Value = match TRANSFORMER_CONFIGS.iter().map(|f| transformer_dir.join(f)).find(|p| p.exists()) {
            Some(path) => read_json(&path)?,
            None => Value::Object(Map::new()),
        };
        let st_config: Value = match dir.join("config_sentence_transformers.json") {
            p if p.exists() => read_json(&p)?,
            _ => Value::Object(Map::new()),
        };
        Ok(Self {
            transformer_dir,
            pooling,
            normalize,
            declared_max_seq_length: module_config["max_seq_length"].as_u64().map(|n| n as usize),
            do_lower_case: module_config["do_lower_case"].as_bool().unwrap_or(false),
            prompts: st_config["prompts"].as_object().cloned().unwrap_or_default(),
            default_prompt_name: st_config["default_prompt_name"].as_str().map(str::to_owned),
        })
    }

    /// The max sequence length sentence-transformers 6.2 would use: the module config's
    /// `max_seq_length` if set, else the tokenizer's `model_max_length` capped at the model's
    /// `max_position_embeddings`. Also capped at what the family's position table covers, where a
    /// longer input would fail in Python too.
    pub fn max_seq_length(&self, config: &ModelConfig, family_limit: usize) -> Result<usize, ModelError> {
        let max_positions = config.max_position_embeddings().filter(|&n| n > 0).map(|n| n as usize);
        let length = match self.declared_max_seq_length {
            Some(n) => n,
            None => {
                let tokenizer_config = self.transformer_dir.join("tokenizer_config.json");
                let from_tokenizer = if tokenizer_config.exists() {
                    let v: Value = read_json(&tokenizer_config)?;
                    // Tokenizers without a limit say 1e30, which serde reads as a float.
                    v["model_max_length"].as_f64().filter(|n| *n >= 1.0).map(|n| n.min(usize::MAX as f64) as usize)
                } else {
                    None
                };
                match (from_tokenizer, max_positions) {
                    (Some(t), Some(p)) => t.min(p),
                    (Some(t), None) => t,
                    (None, Some(p)) => p,
                    (None, None) => family_limit,
                }
            }
        };
        if length == 0 {
            return Err(ModelError::InvalidConfig("max_seq_length is 0".into()));
        }
        if length > family_limit {
            tracing::warn!(
                max_seq_length = length,
                limit = family_limit,
                "max_seq_length is longer than the model's position table; inputs are cut to the limit"
            );
        }
        Ok(length.min(family_limit))
    }
}

/// config.json as saving writes it: what was read, naming the family's base-model class (whose
/// checkpoint keys have no prefix) and the fp32 weights saving writes.
pub fn saved_config(config: &ModelConfig, family: &Family) -> Value {
    let mut json = config.json().clone();
    json.insert("architectures".into(), Value::from(vec![family.architecture]));
    json.insert("model_type".into(), family.model_type.into());
    for key in ["torch_dtype", "dtype"] {
        if json.contains_key(key) {
            json.insert(key.into(), "float32".into());
        }
    }
    Value::Object(json)
}

/// Removes weight files other than model.safetensors (an older .bin, a sharded index and its shards).
pub fn remove_other_weights(dir: &Path) -> Result<(), ModelError> {
    for index in ["model.safetensors.index.json", "pytorch_model.bin.index.json"] {
        let path = dir.join(index);
        if path.exists() {
            for shard in crate::weights::shard_files(&path).unwrap_or_default() {
                remove(&dir.join(shard))?;
            }
            remove(&path)?;
        }
    }
    remove(&dir.join("pytorch_model.bin"))
}

fn remove(path: &Path) -> Result<(), ModelError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ModelError::Write { path: path.to_owned(), source: e }),
        _ => Ok(()),
    }
}
