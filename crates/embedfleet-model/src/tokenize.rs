//! Tokenization as sentence-transformers does it: the text as given (6.x no longer strips it), special
//! tokens added, truncated to `max_seq_length` on the tokenizer's truncation side, and each batch
//! padded only to its own longest member, on the side `tokenizer_config.json` names (decoders pad on
//! the left).

use crate::error::ModelError;
use std::collections::HashSet;
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tokenizers::normalizers::{Lowercase, Sequence};
use tokenizers::{PaddingDirection, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: i64,
    pad_left: bool,
    special_ids: HashSet<u32>,
}

/// One text's token ids and token types, special tokens included ([`TextTokenizer::encode_ids`]).
pub type EncodedText = (Vec<u32>, Vec<u32>);

/// Token ids, token types and attention mask, `[batch, longest]`, on one device.
pub struct TokenBatch {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
    /// Leading prompt tokens that pooling leaves out (a model whose pooling has `include_prompt: false`).
    pub prompt_length: Option<i64>,
}

/// How `tokenizer_config.json` (transformers' settings for the tokenizer) asks to pad and truncate.
#[derive(Debug, Default, serde::Deserialize)]
struct TokenizerSettings {
    pad_token: Option<serde_json::Value>,
    padding_side: Option<String>,
    truncation_side: Option<String>,
}

fn token_text(v: &serde_json::Value) -> Option<&str> {
    v.as_str().or_else(|| v["content"].as_str())
}

impl TextTokenizer {
    pub fn load(dir: &Path, max_seq_length: usize) -> Result<Self, ModelError> {
        Self::load_with(dir, max_seq_length, false)
    }

    /// `lowercase`: sentence_bert_config.json's `do_lower_case`, which puts a lowercasing step in
    /// front of the tokenizer's own normalizer.
    pub fn load_with(dir: &Path, max_seq_length: usize, lowercase: bool) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::MissingFile {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "a tokenizer.json is required"),
            });
        }
        let mut inner = Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let settings: TokenizerSettings = match dir.join("tokenizer_config.json") {
            p if p.exists() => crate::config::read_json(&p)?,
            _ => TokenizerSettings::default(),
        };
        let side = |s: &Option<String>, what: &str| -> Result<Option<bool>, ModelError> {
            match s.as_deref() {
                None => Ok(None),
                Some("left") => Ok(Some(true)),
                Some("right") => Ok(Some(false)),
                Some(other) => {
                    Err(ModelError::InvalidConfig(format!("tokenizer_config.json: {what} is '{other}'; it must be 'left' or 'right'")))
                }
            }
        };
        let truncate_left = side(&settings.truncation_side, "truncation_side")?.unwrap_or(false);
        let baked = inner.get_padding().cloned();
        let pad_left = side(&settings.padding_side, "padding_side")?
            .unwrap_or(matches!(baked.as_ref().map(|p| p.direction), Some(PaddingDirection::Left)));
        // The pad token transformers uses is tokenizer_config.json's; tokenizer.json's own padding
        // block is often absent (XLM-R) or baked in for another tool. Padding must use the real pad
        // id: RoBERTa-style position ids are counted from it.
        let named_pad = settings.pad_token.as_ref().and_then(token_text).and_then(|t| inner.token_to_id(t));
        let pad_id = named_pad.or(baked.as_ref().map(|p| p.pad_id)).unwrap_or(0) as i64;
        // tokenizer.json often bakes in fixed padding/truncation (MiniLM's: 128); the model's
        // max_seq_length is what counts, and padding is per batch.
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: if truncate_left { TruncationDirection::Left } else { TruncationDirection::Right },
            }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        inner.with_padding(None);
        if lowercase {
            let mut steps = vec![Lowercase.into()];
            steps.extend(inner.get_normalizer().cloned());
            inner.with_normalizer(Some(Sequence::new(steps)));
        }
        let special_ids = inner.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special).map(|(id, _)| id).collect();
        Ok(Self { inner, pad_id, pad_left, special_ids })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids and types after truncation, with special tokens.
    pub fn encode_ids(&self, texts: &[&str]) -> Result<Vec<EncodedText>, ModelError> {
        let encodings = self.inner.encode_batch(texts.to_vec(), true).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(encodings.into_iter().map(|e| (e.get_ids().to_vec(), e.get_type_ids().to_vec())).collect())
    }

    /// How many leading tokens a prompt takes, as sentence-transformers counts them: the prompt
    /// tokenized alone, less a trailing special token (its [SEP] or </s>).
    pub fn prompt_length(&self, prompt: &str) -> Result<i64, ModelError> {
        let (ids, _) = self.encode_ids(&[prompt])?.pop().expect("one text in, one encoding out");
        let trailing_special = ids.last().is_some_and(|id| self.special_ids.contains(id));
        Ok(ids.len() as i64 - trailing_special as i64)
    }

    /// Pads already-encoded texts into one batch.
    pub fn pad(&self, encoded: &[&EncodedText], device: Device) -> TokenBatch {
        let longest = encoded.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0).max(1);
        let n = encoded.len();
        let mut ids = vec![self.pad_id; n * longest];
        let mut types = vec![0i64; n * longest];
        let mut mask = vec![0i64; n * longest];
        for (row, (tok, ty)) in encoded.iter().enumerate() {
            let start = row * longest + if self.pad_left { longest - tok.len() } else { 0 };
            for (col, (&t, &y)) in tok.iter().zip(ty).enumerate() {
                ids[start + col] = t as i64;
                types[start + col] = y as i64;
                mask[start + col] = 1;
            }
        }
        let shape = [n as i64, longest as i64];
        let to = |v: Vec<i64>| Tensor::from_slice(&v).view(shape).to_kind(Kind::Int64).to_device(device);
        TokenBatch { input_ids: to(ids), token_type_ids: to(types), attention_mask: to(mask), prompt_length: None }
    }

    pub fn batch(&self, texts: &[&str], device: Device) -> Result<TokenBatch, ModelError> {
        let encoded = self.encode_ids(texts)?;
        Ok(self.pad(&encoded.iter().collect::<Vec<_>>(), device))
    }
}
