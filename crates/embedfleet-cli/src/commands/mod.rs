pub mod generate;
pub mod storage;
