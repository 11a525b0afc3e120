use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    embedfleet_cli::run(embedfleet_cli::Cli::parse())
}
