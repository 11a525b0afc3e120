pub mod encode;
pub mod evaluate;
pub mod generate;
pub mod llm_args;
pub mod model_args;
pub mod storage;
