//! Tokenization as sentence-transformers does it: strip the text, add special tokens, truncate to
//! `max_seq_length`, and pad each batch only to its own longest member.

use crate::error::ModelError;
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tokenizers::{PaddingParams, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: i64,
}

/// Token ids, token types and attention mask, `[batch, longest]`, on one device.
pub struct TokenBatch {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
}

impl TextTokenizer {
    pub fn load(dir: &Path, max_seq_length: usize) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::MissingFile {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "a tokenizer.json is required"),
            });
        }
        let mut inner = Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        // tokenizer.json often bakes in fixed padding/truncation (MiniLM's: 128); the model's
        // max_seq_length is what counts, and padding is per batch.
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let pad_id = inner.get_padding().map(|p: &PaddingParams| p.pad_id as i64).unwrap_or(0);
        inner.with_padding(None);
        Ok(Self { inner, pad_id })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token counts after truncation, with special tokens; used to sort texts by length.
    pub fn encode_ids(&self, texts: &[&str]) -> Result<Vec<(Vec<u32>, Vec<u32>)>, ModelError> {
        let stripped: Vec<&str> = texts.iter().map(|t| t.trim()).collect();
        let encodings =
            self.inner.encode_batch(stripped, true).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(encodings.into_iter().map(|e| (e.get_ids().to_vec(), e.get_type_ids().to_vec())).collect())
    }

    /// Pads already-encoded texts into one batch.
    pub fn pad(&self, encoded: &[&(Vec<u32>, Vec<u32>)], device: Device) -> TokenBatch {
        let longest = encoded.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0).max(1);
        let n = encoded.len();
        let mut ids = vec![self.pad_id; n * longest];
        let mut types = vec![0i64; n * longest];
        let mut mask = vec![0i64; n * longest];
        for (row, (tok, ty)) in encoded.iter().enumerate() {
            for (col, (&t, &y)) in tok.iter().zip(ty).enumerate() {
                ids[row * longest + col] = t as i64;
                types[row * longest + col] = y as i64;
                mask[row * longest + col] = 1;
            }
        }
        let shape = [n as i64, longest as i64];
        let to = |v: Vec<i64>| Tensor::from_slice(&v).view(shape).to_kind(Kind::Int64).to_device(device);
        TokenBatch { input_ids: to(ids), token_type_ids: to(types), attention_mask: to(mask) }
    }

    pub fn batch(&self, texts: &[&str], device: Device) -> Result<TokenBatch, ModelError> {
        let encoded = self.encode_ids(texts)?;
        Ok(self.pad(&encoded.iter().collect::<Vec<_>>(), device))
    }
}
