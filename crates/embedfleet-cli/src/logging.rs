use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    // The bus's connection events are workers' diagnostics: a command says what it did, not how it connected.
    let filter = EnvFilter::try_from_env("EMBEDFLEET_LOG").unwrap_or_else(|_| EnvFilter::new("warn,embedfleet=info,embedfleet_bus=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
