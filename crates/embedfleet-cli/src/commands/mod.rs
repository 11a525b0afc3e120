pub mod encode;
pub mod generate;
pub mod model_args;
pub mod storage;
