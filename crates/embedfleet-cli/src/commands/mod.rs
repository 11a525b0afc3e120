pub mod encode;
pub mod evaluate;
pub mod generate;
pub mod model_args;
pub mod storage;
