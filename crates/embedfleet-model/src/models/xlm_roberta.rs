//! XLM-RoBERTa (multilingual-e5, bge-m3, paraphrase-multilingual-*): BERT's layers and checkpoint
//! names, with RoBERTa's position ids, which start past `pad_token_id` and skip pad tokens, so the
//! position table's first `pad_token_id + 1` rows are never a real token's.
//! Its SentencePiece tokenizer comes from tokenizer.json like any other.

use super::bert::{Bert, BertConfig};
use super::{Encoder, Family};
use crate::error::ModelError;
use crate::layers::positions_after_padding;
use crate::precision::Precision;
use crate::tokenize::TokenBatch;
use tch::Tensor;

pub const FAMILY: Family = Family {
    model_type: "xlm-roberta",
    example: "intfloat/multilingual-e5-base",
    architecture: "XLMRobertaModel",
    checkpoint_prefixes: &["roberta.", "xlm_roberta."],
    passthrough: &["pooler."],
    build: |root, config| {
        let mut bert: BertConfig = config.parse()?;
        // transformers' XLMRobertaConfig default
        let padding_idx = *bert.pad_token_id.get_or_insert(1);
        if padding_idx < 0 || padding_idx + 1 >= bert.max_position_embeddings {
            return Err(ModelError::InvalidConfig(format!(
                "pad_token_id {padding_idx} leaves no positions in max_position_embeddings {}",
                bert.max_position_embeddings
            )));
        }
        Ok(Box::new(XlmRoberta { bert: Bert::new(root, &bert, FAMILY.model_type)?, padding_idx }))
    },
};

pub struct XlmRoberta {
    bert: Bert,
    padding_idx: i64,
}

impl Encoder for XlmRoberta {
    fn forward(&self, batch: &TokenBatch, train: bool, precision: Precision) -> Tensor {
        let positions = positions_after_padding(&batch.input_ids, self.padding_idx);
        self.bert.forward_at(batch, &positions, train, precision)
    }

    fn hidden_size(&self) -> i64 {
        self.bert.hidden_size()
    }

    fn max_positions(&self) -> usize {
        (self.bert.position_table_size() - self.padding_idx - 1).max(0) as usize
    }
}
