//! A sentence-transformers model: Transformer → Pooling → (Normalize), loaded from and saved to
//! the sentence-transformers folder layout so Python loads what embedfleet writes, and back. The
//! Transformer is any family behind the [`Encoder`] seam; everything here is family-agnostic.

use crate::config::{ModelConfig, PoolingConfig, PoolingMode};
use crate::error::ModelError;
use crate::folder::Layout;
use crate::models::{Encoder, Family, family_of};
use crate::pooling::{normalize, pool};
use crate::precision::Precision;
use crate::tokenize::{TextTokenizer, TokenBatch};
use embedfleet_report::{ModelCard, ModelFacts};
use serde_json::json;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor, nn};

/// Files copied unchanged from the source folder on save: the fast tokenizer, its settings, and the
/// slow tokenizers' vocabularies that older transformers versions look for.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "vocab.json",
    "merges.txt",
];

/// The name sentence-transformers models give the prompt for search queries in
/// config_sentence_transformers.json.
pub const QUERY_PROMPT_NAME: &str = "query";

pub struct SentenceEncoder {
    vs: nn::VarStore,
    encoder: Box<dyn Encoder>,
    family: &'static Family,
    config: ModelConfig,
    tokenizer: TextTokenizer,
    pooling: PoolingMode,
    /// false: pooling leaves the prompt's tokens out (INSTRUCTOR-style models).
    include_prompt: bool,
    normalize: bool,
    max_seq_length: usize,
    do_lower_case: bool,
    /// Named prompts from config_sentence_transformers.json (bge's query instruction, …).
    prompts: serde_json::Map<String, serde_json::Value>,
    default_prompt_name: Option<String>,
    source_dir: PathBuf,
    precision: Precision,
    /// Checkpoint tensors the encoder does not use (the pooler), written back on save so
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
    /// Loads a sentence-transformers folder of either layout (2.x–3.x or 5.x–6.x), or a bare
    /// transformers folder (mean pooling, as sentence-transformers gives it).
    pub fn load(dir: &Path, options: LoadOptions) -> Result<Self, ModelError> {
        crate::precision::warn_if_emulated(options.precision, options.device);
        let layout = Layout::read(dir)?;
        let model_dir = layout.transformer_dir.clone();
        let config = ModelConfig::load(&model_dir)?;
        let family = family_of(&config)?;
        let mut vs = nn::VarStore::new(options.device);
        let encoder = (family.build)(&vs.root(), &config)?;
        let max_seq_length = layout.max_seq_length(&config, encoder.max_positions())?;
        let tokenizer = TextTokenizer::load_with(&model_dir, max_seq_length, layout.do_lower_case)?;
        check_vocabulary(&tokenizer, &config)?;
        let pooling = layout.pooling.unwrap_or_else(|| PoolingConfig::new(encoder.hidden_size(), PoolingMode::Mean));
        if pooling.dimension != encoder.hidden_size() {
            return Err(ModelError::InvalidConfig(format!(
                "the pooling config says the token embeddings have {} dimensions, the model makes {}",
                pooling.dimension,
                encoder.hidden_size()
            )));
        }
        let passthrough = crate::weights::load_into(
            &mut vs,
            &model_dir,
            &crate::weights::KeyRules { strip_prefixes: family.checkpoint_prefixes, passthrough: family.passthrough },
        )?;
        Ok(Self {
            vs,
            encoder,
            family,
            config,
            tokenizer,
            pooling: pooling.mode,
            include_prompt: pooling.include_prompt,
            normalize: layout.normalize,
            max_seq_length,
            do_lower_case: layout.do_lower_case,
            prompts: layout.prompts,
            default_prompt_name: layout.default_prompt_name,
            source_dir: model_dir,
            precision: options.precision,
            passthrough,
        })
    }

    /// A randomly initialised model with `config` (a [`crate::BertConfig`] or any family's
    /// config.json), using the tokenizer files of `tokenizer_dir`: tiny models for fast tests.
    pub fn random(config: impl Into<ModelConfig>, tokenizer_dir: &Path, seed: i64, options: LoadOptions) -> Result<Self, ModelError> {
        let config = config.into();
        let family = family_of(&config)?;
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(options.device);
        let encoder = (family.build)(&vs.root(), &config)?;
        let max_seq_length = (config.max_position_embeddings().unwrap_or(512).max(1) as usize).min(encoder.max_positions());
        let tokenizer = TextTokenizer::load(tokenizer_dir, max_seq_length)?;
        check_vocabulary(&tokenizer, &config)?;
        Ok(Self {
            vs,
            encoder,
            family,
            config,
            tokenizer,
            pooling: PoolingMode::Mean,
            include_prompt: true,
            normalize: true,
            max_seq_length,
            do_lower_case: false,
            prompts: Default::default(),
            default_prompt_name: None,
            source_dir: tokenizer_dir.to_owned(),
            precision: options.precision,
            passthrough: Vec::new(),
        })
    }

    pub fn dimension(&self) -> i64 {
        self.encoder.hidden_size()
    }
    pub fn device(&self) -> Device {
        self.vs.device()
    }
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    /// The model family's `model_type` (`bert`, `mpnet`, `xlm-roberta`).
    pub fn model_type(&self) -> &'static str {
        self.family.model_type
    }
    pub fn pooling(&self) -> PoolingMode {
        self.pooling
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

    /// The prompt this model's queries get in evaluation, mining and training. `setting` is
    /// `--query-prompt`: the name of one of the model's prompts, the prompt's text, or `none`.
    /// Without a setting it is the model's own `query` prompt when its config has a non-empty one
    /// (Qwen3-Embedding's instruction), exactly as sentence-transformers applies it with the
    /// evaluator's `query_prompt_name="query"` and the trainer's `prompts` argument on the question
    /// column; passages get none. A model without one gets none, as before.
    pub fn query_prompt(&self, setting: Option<&str>) -> Option<String> {
        let prompt = match setting {
            None => self.named_prompt(QUERY_PROMPT_NAME)?,
            Some(s) if s.is_empty() || s.eq_ignore_ascii_case("none") => return None,
            Some(s) => self.named_prompt(s).unwrap_or(s),
        };
        (!prompt.is_empty()).then(|| prompt.to_owned())
    }

    /// A batch of `texts` with `prompt` before each, as sentence-transformers' trainer builds one
    /// (its data collator prepends the prompt, and records the prompt's length when pooling leaves
    /// the prompt out).
    pub fn prompted_batch(&self, texts: &[&str], prompt: Option<&str>) -> Result<TokenBatch, ModelError> {
        let Some(prompt) = prompt.filter(|p| !p.is_empty()) else {
            return self.tokenizer.batch(texts, self.device());
        };
        let prompted: Vec<String> = texts.iter().map(|t| format!("{prompt}{t}")).collect();
        let mut batch = self.tokenizer.batch(&prompted.iter().map(String::as_str).collect::<Vec<_>>(), self.device())?;
        if !self.include_prompt {
            batch.prompt_length = Some(self.tokenizer.prompt_length(prompt)?);
        }
        Ok(batch)
    }

    /// Sentence embeddings `[batch, dim]` with gradients when `train` (dropout on) — the trainer's path.
    pub fn forward(&self, batch: &TokenBatch, train: bool) -> Tensor {
        let tokens = self.encoder.forward(batch, train, self.precision);
        let prompt_length = if self.include_prompt { None } else { batch.prompt_length };
        let pooled = pool(&tokens, &batch.attention_mask, self.pooling, prompt_length);
        if self.normalize { normalize(&pooled) } else { pooled }
    }

    /// Embeddings `[texts, dim]`, fp32 on the CPU, in input order. Texts are sorted by length so
    /// each batch pads only to its own longest member, and batches are cut by tokens: `batch_size`
    /// is the count for the longest texts, shorter ones go more to a batch (see
    /// [`token_budget_batches`]).
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
        let mut prompt_length = None;
        let texts: Vec<&str> = match prompt {
            Some(p) if !p.is_empty() => {
                if !self.include_prompt {
                    prompt_length = Some(self.tokenizer.prompt_length(p)?);
                }
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
        // No gradient is taken here, so weight casts and fused projections are made once per call.
        let _casts = crate::precision::InferenceScope::enter();
        let lengths: Vec<usize> = order.iter().map(|&i| encoded[i].0.len()).collect();
        let mut start = 0;
        for end in token_budget_batches(&lengths, batch_size) {
            let idx = &order[start..end];
            start = end;
            let mut batch = self.tokenizer.pad(&idx.iter().map(|&i| &encoded[i]).collect::<Vec<_>>(), self.device());
            batch.prompt_length = prompt_length;
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

    /// Writes the weights alone, as `model.safetensors` in `dir` (float32, sorted names), and removes
    /// any other weight file there: how [`Self::save`] writes them, and how a merge with the base
    /// replaces them in a saved folder.
    pub fn write_weights(&self, dir: &Path) -> Result<(), ModelError> {
        let variables = self.vs.variables();
        let mut named: Vec<(String, Tensor)> =
            variables.into_iter().map(|(name, t)| (name, t.detach().to_kind(Kind::Float).to_device(Device::Cpu).contiguous())).collect();
        named.extend(self.passthrough.iter().map(|(n, t)| (n.clone(), t.shallow_clone())));
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let weights = dir.join("model.safetensors");
        std::fs::create_dir_all(dir).map_err(|e| ModelError::Write { path: dir.to_owned(), source: e })?;
        // Written beside and renamed over: a model loaded from this very file (a merge) may still map it.
        let partial = dir.join("model.safetensors.partial");
        Tensor::write_safetensors(&named, &partial)?;
        std::fs::rename(&partial, &weights).map_err(|e| ModelError::Write { path: weights.clone(), source: e })?;
        // A resave over the source folder must not leave older weight files that loaders prefer or mix in.
        crate::folder::remove_other_weights(dir)
    }

    /// Writes a complete sentence-transformers folder that `SentenceTransformer(dir)` loads, in the
    /// layout both sentence-transformers 2.x–3.x and 6.x read.
    pub fn save(&self, dir: &Path, card: &ModelCard) -> Result<(), ModelError> {
        let write = |path: PathBuf, bytes: Vec<u8>| -> Result<(), ModelError> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| ModelError::Write { path: parent.to_owned(), source: e })?;
            }
            std::fs::write(&path, bytes).map_err(|e| ModelError::Write { path, source: e })
        };
        let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("json values serialize");

        write(dir.join("config.json"), pretty(&crate::folder::saved_config(&self.config, self.family)))?;

        self.write_weights(dir)?;

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
            std::fs::create_dir_all(dir.join("2_Normalize")).map_err(|e| ModelError::Write { path: dir.join("2_Normalize"), source: e })?;
        }
        write(dir.join("modules.json"), pretty(&json!(modules)))?;
        let pooling = PoolingConfig { dimension: self.dimension(), mode: self.pooling, include_prompt: self.include_prompt };
        write(dir.join("1_Pooling/config.json"), pretty(&pooling.to_json()))?;
        write(
            dir.join("sentence_bert_config.json"),
            pretty(&json!({"max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case})),
        )?;
        write(
            dir.join("config_sentence_transformers.json"),
            pretty(&json!({
                "__version__": {"embedfleet": env!("CARGO_PKG_VERSION")},
                "model_type": "SentenceTransformer",
                "prompts": self.prompts,
                "default_prompt_name": self.default_prompt_name,
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

/// Where to cut texts sorted longest first into batches: the first batch holds `batch_size` texts,
/// and every later one as many as fit the same token grid (rows × its longest text), up to
/// [`MAX_ROWS_PER_BATCH`] × `batch_size`. Short texts (questions) then go through in few wide
/// matrix products, while memory stays bounded by the first batch's. Returns each batch's end.
fn token_budget_batches(lengths: &[usize], batch_size: usize) -> Vec<usize> {
    let batch_size = batch_size.max(1);
    let budget = lengths.first().copied().unwrap_or(1).max(1) * batch_size;
    let max_rows = batch_size * MAX_ROWS_PER_BATCH;
    let mut ends = Vec::new();
    let mut start = 0;
    while start < lengths.len() {
        // Sorted longest first: a batch's grid is its first text's length × its rows.
        let longest = lengths[start].max(1);
        let rows = (budget / longest).clamp(batch_size, max_rows);
        start = (start + rows).min(lengths.len());
        ends.push(start);
    }
    ends
}

/// How many times `batch_size` rows a batch of short texts may hold.
const MAX_ROWS_PER_BATCH: usize = 16;

fn check_vocabulary(tokenizer: &TextTokenizer, config: &ModelConfig) -> Result<(), ModelError> {
    let model_vocab = config.vocab_size().unwrap_or(i64::MAX);
    if tokenizer.vocab_size() as i64 > model_vocab {
        return Err(ModelError::TokenizerMismatch { tokenizer_vocab: tokenizer.vocab_size(), model_vocab });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::token_budget_batches;

    #[test]
    fn batches_are_cut_by_tokens() {
        // The longest texts fill batch_size rows; texts a quarter as long go four times as many.
        let lengths: Vec<usize> = [vec![200; 5], vec![50; 30], vec![3; 100]].concat();
        let ends = token_budget_batches(&lengths, 2);
        assert_eq!(ends[..3], [2, 4, 6], "two rows of 200 tokens, then the fifth long one opens a batch of its own length");
        // From index 6 on, texts of 50 tokens: 400 / 50 = 8 rows each.
        assert_eq!(ends[3..6], [14, 22, 30]);
        // Tiny texts stop at 16 × batch_size rows.
        assert!(ends.windows(2).all(|w| w[1] - w[0] <= 32));
        assert_eq!(*ends.last().unwrap(), lengths.len());
        assert!(token_budget_batches(&[], 32).is_empty());
        assert_eq!(token_budget_batches(&[0, 0, 0], 0), vec![1, 2, 3]);
    }
}
