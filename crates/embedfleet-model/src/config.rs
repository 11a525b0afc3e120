//! The JSON files of a sentence-transformers folder, in both layouts: the one sentence-transformers
//! 2.x–3.x wrote (and most hub models still ship) and the one 5.x–6.x writes.

use crate::error::ModelError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// `config.json` as transformers wrote it. The family named by `model_type` reads its own fields
/// from it; saving writes it back with only `architectures` (and the weights' dtype) changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    json: Map<String, Value>,
}

impl ModelConfig {
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let value: Value = read_json(&path)?;
        Self::from_json(value).map_err(|e| ModelError::InvalidConfig(format!("{}: {e}", path.display())))
    }

    pub fn from_json(value: Value) -> Result<Self, ModelError> {
        match value {
            Value::Object(json) => Ok(Self { json }),
            _ => Err(ModelError::InvalidConfig("config.json is not a JSON object".into())),
        }
    }

    /// transformers' `model_type`; folders from before it existed are BERTs.
    pub fn model_type(&self) -> &str {
        self.json.get("model_type").and_then(Value::as_str).unwrap_or("bert")
    }

    pub fn json(&self) -> &Map<String, Value> {
        &self.json
    }

    /// Sets one field (tests use it to switch dropout off).
    pub fn set(&mut self, key: &str, value: Value) {
        self.json.insert(key.to_owned(), value);
    }

    /// The family's view of the config, with transformers' defaults for absent keys.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ModelError> {
        T::deserialize(Value::Object(self.json.clone()))
            .map_err(|e| ModelError::InvalidConfig(format!("config.json ({}): {e}", self.model_type())))
    }

    pub fn vocab_size(&self) -> Option<i64> {
        self.json.get("vocab_size").and_then(Value::as_i64)
    }

    pub fn max_position_embeddings(&self) -> Option<i64> {
        self.json.get("max_position_embeddings").and_then(Value::as_i64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolingMode {
    #[serde(rename = "cls")]
    Cls,
    #[serde(rename = "mean")]
    Mean,
    #[serde(rename = "max")]
    Max,
    #[serde(rename = "mean_sqrt_len_tokens")]
    MeanSqrtLen,
    #[serde(rename = "weightedmean")]
    WeightedMean,
    #[serde(rename = "lasttoken")]
    LastToken,
}

impl PoolingMode {
    /// In the order sentence-transformers lists the old `pooling_mode_*` flags.
    const LEGACY: [(&'static str, PoolingMode); 6] = [
        ("pooling_mode_cls_token", PoolingMode::Cls),
        ("pooling_mode_max_tokens", PoolingMode::Max),
        ("pooling_mode_mean_tokens", PoolingMode::Mean),
        ("pooling_mode_mean_sqrt_len_tokens", PoolingMode::MeanSqrtLen),
        ("pooling_mode_weightedmean_tokens", PoolingMode::WeightedMean),
        ("pooling_mode_lasttoken", PoolingMode::LastToken),
    ];

    pub fn name(self) -> &'static str {
        match self {
            PoolingMode::Cls => "cls",
            PoolingMode::Mean => "mean",
            PoolingMode::Max => "max",
            PoolingMode::MeanSqrtLen => "mean_sqrt_len_tokens",
            PoolingMode::WeightedMean => "weightedmean",
            PoolingMode::LastToken => "lasttoken",
        }
    }
}

/// `1_Pooling/config.json`, in either layout: 6.x writes `{"embedding_dimension", "pooling_mode",
/// "include_prompt"}`, older versions `{"word_embedding_dimension", "pooling_mode_cls_token": bool, …}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolingConfig {
    pub dimension: i64,
    pub mode: PoolingMode,
    pub include_prompt: bool,
}

impl PoolingConfig {
    pub fn new(dimension: i64, mode: PoolingMode) -> Self {
        Self { dimension, mode, include_prompt: true }
    }

    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let value: Value = read_json(path)?;
        Self::from_json(&value).map_err(|e| ModelError::InvalidConfig(format!("{}: {e}", path.display())))
    }

    pub fn from_json(value: &Value) -> Result<Self, String> {
        let dimension = value["embedding_dimension"]
            .as_i64()
            .or_else(|| value["word_embedding_dimension"].as_i64())
            .ok_or("neither embedding_dimension nor word_embedding_dimension is set")?;
        let modes: Vec<PoolingMode> = match &value["pooling_mode"] {
            Value::Null => {
                let set: Vec<PoolingMode> =
                    PoolingMode::LEGACY.iter().filter(|(key, _)| value[*key].as_bool() == Some(true)).map(|(_, m)| *m).collect();
                // No flag set means mean pooling, as sentence-transformers reads it.
                if set.is_empty() { vec![PoolingMode::Mean] } else { set }
            }
            mode @ Value::String(_) => vec![parse_mode(mode)?],
            Value::Array(list) => list.iter().map(parse_mode).collect::<Result<_, _>>()?,
            other => return Err(format!("pooling_mode {other} is neither a name nor a list")),
        };
        let [mode] = modes[..] else {
            let names: Vec<&str> = modes.iter().map(|m| m.name()).collect();
            return Err(format!("it concatenates several pooling modes ({}); embedfleet pools with exactly one", names.join(" + ")));
        };
        let include_prompt = value["include_prompt"].as_bool().unwrap_or(true);
        Ok(Self { dimension, mode, include_prompt })
    }

    /// The layout every sentence-transformers version reads: 2.x–3.x need `word_embedding_dimension`
    /// and the `pooling_mode_*` flags, and 6.x converts them without a warning. `include_prompt`
    /// is written only when false, since 2.x before 2.4 refuses keys it does not know.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("word_embedding_dimension".into(), self.dimension.into());
        for (key, mode) in PoolingMode::LEGACY {
            out.insert(key.into(), (mode == self.mode).into());
        }
        if !self.include_prompt {
            out.insert("include_prompt".into(), false.into());
        }
        Value::Object(out)
    }
}

fn parse_mode(v: &Value) -> Result<PoolingMode, String> {
    PoolingMode::deserialize(v).map_err(|_| {
        format!("unknown pooling_mode {v}; sentence-transformers' modes are cls, mean, max, mean_sqrt_len_tokens, weightedmean, lasttoken")
    })
}

/// One entry of `modules.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleEntry {
    pub idx: usize,
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::MissingFile { path: path.to_owned(), source: e })?;
    serde_json::from_slice(&bytes).map_err(|e| ModelError::InvalidConfig(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_pooling_layouts_read_the_same() {
        let old = json!({"word_embedding_dimension": 384, "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true});
        let new = json!({"embedding_dimension": 384, "pooling_mode": "mean", "include_prompt": true});
        assert_eq!(PoolingConfig::from_json(&old).unwrap(), PoolingConfig::from_json(&new).unwrap());
        let none_set = json!({"word_embedding_dimension": 8});
        assert_eq!(PoolingConfig::from_json(&none_set).unwrap().mode, PoolingMode::Mean);
        let last = json!({"embedding_dimension": 8, "pooling_mode": ["lasttoken"], "include_prompt": false});
        let last = PoolingConfig::from_json(&last).unwrap();
        assert_eq!((last.mode, last.include_prompt), (PoolingMode::LastToken, false));
        assert_eq!(PoolingConfig::from_json(&last.to_json()).unwrap(), last);
    }

    #[test]
    fn pooling_errors_say_what_is_wrong() {
        let two = json!({"word_embedding_dimension": 8, "pooling_mode_cls_token": true, "pooling_mode_max_tokens": true});
        assert!(PoolingConfig::from_json(&two).unwrap_err().contains("cls + max"));
        let unknown = json!({"embedding_dimension": 8, "pooling_mode": "median"});
        assert!(PoolingConfig::from_json(&unknown).unwrap_err().contains("lasttoken"));
        assert!(PoolingConfig::from_json(&json!({"pooling_mode": "cls"})).unwrap_err().contains("embedding_dimension"));
    }
}
