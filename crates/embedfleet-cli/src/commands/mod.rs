pub mod encode;
pub mod evaluate;
pub mod finetune;
pub mod fleet;
pub mod generate;
pub mod run;
pub mod storage;
