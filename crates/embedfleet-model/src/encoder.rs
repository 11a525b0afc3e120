//! A sentence-transformers model: Transformer → Pooling → (Normalize), loaded from and saved to
//! the sentence-transformers folder layout so Python loads what embedfleet writes, and back.

use crate::bert::Bert;
use crate::config::{BertConfig, ModuleEntry, PoolingConfig, PoolingMode, read_json};
use crate::error::ModelError;
use crate::pooling::{normalize, pool};
use crate::precision::Precision;
use crate::tokenize::{TextTokenizer, TokenBatch};
use embedfleet_report::{ModelCard, ModelFacts};
use serde_json::json;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor, nn};

/// Files copied unchanged from the source folder on save.
const TOKENIZER_FILES: &[&str] =
    &["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "added_tokens.json"];

pub struct SentenceEncoder {
    vs: nn::VarStore,
    bert: Bert,
    config: BertConfig,
    tokenizer: TextTokenizer,
    pooling: PoolingMode,
    normalize: bool,
    max_seq_length: usize,
    /// Named prompts from config_sentence_transformers.json (bge's query instruction, …).
    prompts: serde_json::Map<String, serde_json::Value>,
    source_dir: PathBuf,
    precision: Precision,
    /// Checkpoint tensors the encoder does not use (BERT's pooler), written back on save so
    /// transformers loads the folder without "newly initialized" warnings.
    passthrough: Vec<(String, Tensor)>,
}

#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub device: Device,
    pub precision: Precision,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, precision: Precision::Fp32 }
    }
}

impl SentenceEncoder {
    pub fn load(dir: &Path, options: LoadOptions) -> Result<Self, ModelError> {
        let config = BertConfig::load(dir)?;
        let modules: Vec<ModuleEntry> =
            if dir.join("modules.json").exists() { read_json(&dir.join("modules.json"))? } else { Vec::new() };
        let pooling_dir = modules
            .iter()
            .find(|m| m.kind.ends_with("Pooling"))
            .map(|m| dir.join(&m.path))
            .unwrap_or_else(|| dir.join("1_Pooling"));
        // A bare transformers folder (no sentence-transformers files) gets mean pooling, as
        // sentence-transformers itself does.
        let pooling = if pooling_dir.join("config.json").exists() {
            read_json::<PoolingConfig>(&pooling_dir.join("config.json"))?.mode()?
        } else {
            PoolingMode::Mean
        };
        let normalize = modules.iter().any(|m| m.kind.ends_with("Normalize"));
        let st_config: serde_json::Value = if dir.join("sentence_bert_config.json").exists() {
            read_json(&dir.join("sentence_bert_config.json"))?
        } else {
            json!({})
        };
        let max_seq_length = st_config["max_seq_length"]
            .as_u64()
            .map(|n| n as usize)
            .unwrap_or(config.max_position_embeddings as usize)
            .min(config.max_position_embeddings as usize);
        let prompts = if dir.join("config_sentence_transformers.json").exists() {
            let c: serde_json::Value = read_json(&dir.join("config_sentence_transformers.json"))?;
            c["prompts"].as_object().cloned().unwrap_or_default()
        } else {
            Default::default()
        };
        let tokenizer = TextTokenizer::load(dir, max_seq_length)?;
        if tokenizer.vocab_size() as i64 > config.vocab_size {
            return Err(ModelError::TokenizerMismatch {
                tokenizer_vocab: tokenizer.vocab_size(),
                model_vocab: config.vocab_size,
            });
        }
        let mut vs = nn::VarStore::new(options.device);
        let bert = Bert::new(&vs.root(), &config);
        let passthrough = load_weights(&mut vs, dir)?;
        Ok(Self {
            vs,
            bert,
            config,
            tokenizer,
            pooling,
            normalize,
            max_seq_length,
            prompts,
            source_dir: dir.to_owned(),
            precision: options.precision,
            passthrough,
        })
    }

    /// A randomly initialised model with `config`, using the tokenizer files of `tokenizer_dir`:
    /// tiny models for fast tests.
    pub fn random(config: BertConfig, tokenizer_dir: &Path, seed: i64, options: LoadOptions) -> Result<Self, ModelError> {
        config.check()?;
        tch::manual_seed(seed);
        let max_seq_length = config.max_position_embeddings as usize;
        let tokenizer = TextTokenizer::load(tokenizer_dir, max_seq_length)?;
        let vs = nn::VarStore::new(options.device);
        let bert = Bert::new(&vs.root(), &config);
        Ok(Self {
            vs,
            bert,
            config,
            tokenizer,
            pooling: PoolingMode::Mean,
            normalize: true,
            max_seq_length,
            prompts: Default::default(),
            source_dir: tokenizer_dir.to_owned(),
            precision: options.precision,
            passthrough: Vec::new(),
        })
    }

    pub fn dimension(&self) -> i64 {
        self.config.hidden_size
    }
    pub fn device(&self) -> Device {
        self.vs.device()
    }
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }
    pub fn config(&self) -> &BertConfig {
        &self.config
    }
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }
    pub fn precision(&self) -> Precision {
        self.precision
    }
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The text of a named prompt (`query`, …) from the model's config, if it has one.
    pub fn named_prompt(&self, name: &str) -> Option<&str> {
        self.prompts.get(name).and_then(|v| v.as_str())
    }

    /// Sentence embeddings `[batch, dim]` with gradients when `train` (dropout on) — the trainer's path.
    pub fn forward(&self, batch: &TokenBatch, train: bool) -> Tensor {
        let tokens = self.bert.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, train, self.precision);
        let pooled = pool(&tokens, &batch.attention_mask, self.pooling);
        if self.normalize { normalize(&pooled) } else { pooled }
    }

    /// Embeddings `[texts, dim]`, fp32 on the CPU, in input order. Texts are sorted by length so
    /// each batch pads only to its own longest member.
    pub fn encode(&self, texts: &[&str], batch_size: usize, prompt: Option<&str>) -> Result<Tensor, ModelError> {
        self.encode_with_progress(texts, batch_size, prompt, &mut |_| {})
    }

    pub fn encode_with_progress(
        &self,
        texts: &[&str],
        batch_size: usize,
        prompt: Option<&str>,
        on_batch: &mut dyn FnMut(usize),
    ) -> Result<Tensor, ModelError> {
        let prompted: Vec<String>;
        let texts: Vec<&str> = match prompt {
            Some(p) if !p.is_empty() => {
                prompted = texts.iter().map(|t| format!("{p}{t}")).collect();
                prompted.iter().map(String::as_str).collect()
            }
            _ => texts.to_vec(),
        };
        if texts.is_empty() {
            return Ok(Tensor::zeros([0, self.dimension()], (Kind::Float, Device::Cpu)));
        }
        // Identical texts are encoded once, so they get bit-identical vectors whatever batch they
        // would have been padded in; exact score ties then rank as in the reference.
        let mut unique: Vec<&str> = Vec::new();
        let mut slot_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let slots: Vec<usize> = texts
            .iter()
            .map(|t| {
                *slot_of.entry(t).or_insert_with(|| {
                    unique.push(t);
                    unique.len() - 1
                })
            })
            .collect();
        let mut copies = vec![0usize; unique.len()];
        slots.iter().for_each(|&s| copies[s] += 1);
        let encoded = self.tokenizer.encode_ids(&unique)?;
        let mut order: Vec<usize> = (0..unique.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].0.len()));
        let mut out = Tensor::zeros([unique.len() as i64, self.dimension()], (Kind::Float, Device::Cpu));
        let _guard = tch::no_grad_guard();
        for idx in order.chunks(batch_size.max(1)) {
            let batch = self.tokenizer.pad(&idx.iter().map(|&i| &encoded[i]).collect::<Vec<_>>(), self.device());
            let emb = self.forward(&batch, false).to_kind(Kind::Float).to_device(Device::Cpu);
            let index = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
            out = out.index_copy(0, &index, &emb);
            // Progress counts input texts, duplicates included.
            let covered: usize = idx.iter().map(|&i| copies[i]).sum();
            on_batch(covered);
        }
        if unique.len() == texts.len() {
            return Ok(out);
        }
        let gather = Tensor::from_slice(&slots.iter().map(|&s| s as i64).collect::<Vec<_>>());
        Ok(out.index_select(0, &gather))
    }

    /// Writes a complete sentence-transformers folder that `SentenceTransformer(dir)` loads.
    pub fn save(&self, dir: &Path, card: &ModelCard) -> Result<(), ModelError> {
        let write = |path: PathBuf, bytes: Vec<u8>| -> Result<(), ModelError> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| ModelError::Write { path: parent.to_owned(), source: e })?;
            }
            std::fs::write(&path, bytes).map_err(|e| ModelError::Write { path, source: e })
        };
        let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("json values serialize");

        let mut config = serde_json::to_value(&self.config).expect("config serializes");
        config["architectures"] = json!(["BertModel"]);
        write(dir.join("config.json"), pretty(&config))?;

        let variables = self.vs.variables();
        let mut named: Vec<(String, Tensor)> = variables
            .into_iter()
            .map(|(name, t)| (name, t.detach().to_kind(Kind::Float).to_device(Device::Cpu).contiguous()))
            .collect();
        named.extend(self.passthrough.iter().map(|(n, t)| (n.clone(), t.shallow_clone())));
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let weights = dir.join("model.safetensors");
        std::fs::create_dir_all(dir).map_err(|e| ModelError::Write { path: dir.to_owned(), source: e })?;
        Tensor::write_safetensors(&named, &weights)?;

        for name in TOKENIZER_FILES {
            let src = self.source_dir.join(name);
            if src.exists() && self.source_dir != dir {
                std::fs::copy(&src, dir.join(name)).map_err(|e| ModelError::Write { path: dir.join(name), source: e })?;
            }
        }
        let mut modules = vec![
            json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
            json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
        ];
        if self.normalize {
            modules.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
            std::fs::create_dir_all(dir.join("2_Normalize"))
                .map_err(|e| ModelError::Write { path: dir.join("2_Normalize"), source: e })?;
        }
        write(dir.join("modules.json"), pretty(&json!(modules)))?;
        let pooling = PoolingConfig::new(self.dimension(), self.pooling);
        write(dir.join("1_Pooling/config.json"), pretty(&serde_json::to_value(pooling).expect("serializes")))?;
        write(
            dir.join("sentence_bert_config.json"),
            pretty(&json!({"max_seq_length": self.max_seq_length, "do_lower_case": false})),
        )?;
        write(
            dir.join("config_sentence_transformers.json"),
            pretty(&json!({
                "__version__": {"embedfleet": env!("CARGO_PKG_VERSION")},
                "model_type": "SentenceTransformer",
                "prompts": self.prompts,
                "default_prompt_name": null,
                "similarity_fn_name": "cosine"
            })),
        )?;
        let facts = ModelFacts {
            dimension: self.dimension(),
            max_seq_length: self.max_seq_length,
            pooling: format!("{:?}", self.pooling).to_lowercase(),
            normalize: self.normalize,
        };
        write(dir.join("README.md"), embedfleet_report::card::render(card, &facts).into_bytes())?;
        Ok(())
    }
}

/// Copies checkpoint tensors into the variables, accepting keys with or without a `bert.` prefix,
/// and returns the pooler's tensors (kept for saving); other heads (MLM, NSP) are dropped.
fn load_weights(vs: &mut nn::VarStore, dir: &Path) -> Result<Vec<(String, Tensor)>, ModelError> {
    let safetensors = dir.join("model.safetensors");
    let bin = dir.join("pytorch_model.bin");
    let (path, tensors) = if safetensors.exists() {
        let t = Tensor::read_safetensors(&safetensors)
            .map_err(|e| ModelError::BadWeights { path: safetensors.clone(), message: e.to_string() })?;
        (safetensors, t)
    } else if bin.exists() {
        let t = Tensor::loadz_multi(&bin).map_err(|e| ModelError::BadWeights {
            path: bin.clone(),
            message: format!("{e}; convert it to model.safetensors"),
        })?;
        (bin, t)
    } else {
        return Err(ModelError::MissingFile {
            path: safetensors,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no model.safetensors or pytorch_model.bin"),
        });
    };
    let mut by_name: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(name, t)| (name.strip_prefix("bert.").map(str::to_owned).unwrap_or(name), t))
        .collect();
    let mut variables = vs.variables();
    let _guard = tch::no_grad_guard();
    for (name, var) in variables.iter_mut() {
        let src = by_name.remove(name).ok_or_else(|| ModelError::BadWeights {
            path: path.clone(),
            message: format!("tensor '{name}' is missing"),
        })?;
        if src.size() != var.size() {
            return Err(ModelError::BadWeights {
                path: path.clone(),
                message: format!("tensor '{name}' has shape {:?}, the config wants {:?}", src.size(), var.size()),
            });
        }
        var.f_copy_(&src.to_kind(Kind::Float))?;
    }
    let mut passthrough: Vec<(String, Tensor)> =
        by_name.into_iter().filter(|(name, _)| name.starts_with("pooler.")).map(|(n, t)| (n, t.to_kind(Kind::Float))).collect();
    passthrough.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(passthrough)
}
