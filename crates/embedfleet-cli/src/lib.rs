//! The `embedfleet` command. `main.rs` only parses arguments; everything else starts here.

mod commands;
mod logging;
mod progress;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub use commands::generate::GenerateArgs;

#[derive(Debug, Parser)]
#[command(name = "embedfleet", version, about = "Fine-tune embedding models on your own documents")]
pub struct Cli {
    /// Log format: text for people, json for log collectors.
    #[arg(long, global = true, env = "EMBEDFLEET_LOG_FORMAT", default_value = "text")]
    pub log_format: logging::LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Chunk documents, write questions for each chunk, split, and write the 8 dataset files.
    Generate(GenerateArgs),
    /// Embed texts (one per line) with a sentence-transformers model.
    Encode(commands::encode::EncodeArgs),
    /// Score models on a validation set and compare them (hit rate, NDCG, MRR, MAP, …).
    Evaluate(commands::evaluate::EvaluateArgs),
    /// Mine hard negatives for the training questions, behind a false-negative guard.
    Mine(commands::mine::MineArgs),
    /// Fine-tune a model on the dataset with MultipleNegativesRankingLoss.
    Finetune(commands::finetune::FinetuneArgs),
    /// Generate, fine-tune and evaluate in one process.
    Run(commands::run::RunArgs),
    /// Fleet: upload a corpus and start a run on the workers; prints the run id.
    Submit(commands::fleet::SubmitArgs),
    /// Fleet: the runs, or one run's stages with counts.
    Status(commands::fleet::StatusArgs),
    /// Fleet: live progress of a run until it is done or failed.
    Watch(commands::fleet::RunArg),
    /// Fleet: the comparison table of a finished run; --download DIR takes the model and report home.
    Results(commands::download::ResultsArgs),
    /// Fleet: stop a run.
    Cancel(commands::fleet::RunArg),
}

pub fn run(cli: Cli) -> ExitCode {
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Generate(args) => commands::generate::run(args).await,
            Command::Encode(args) => commands::encode::run(args).await,
            Command::Evaluate(args) => commands::evaluate::run(args).await,
            Command::Mine(args) => commands::mine::run(args).await,
            Command::Finetune(args) => commands::finetune::run(args).await,
            Command::Run(args) => commands::run::run(args).await,
            Command::Submit(args) => commands::fleet::submit(args).await,
            Command::Status(args) => commands::fleet::status(args).await,
            Command::Watch(args) => commands::fleet::watch(args).await,
            Command::Results(args) => commands::download::results(args).await,
            Command::Cancel(args) => commands::fleet::cancel(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
