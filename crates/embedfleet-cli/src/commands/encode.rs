//! `embedfleet encode`: one text per input line in, one JSON array of floats per output line out.

use super::storage::StorageArgs;
use anyhow::{Context, Result, bail};
use clap::Args;
use embedfleet_model::RuntimeArgs;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Args)]
pub struct EncodeArgs {
    /// A sentence-transformers folder, an s3:// prefix, or a Hugging Face hub id.
    #[arg(long, env = "EMBEDFLEET_MODEL", alias = "model_id")]
    pub model: String,
    /// Text file with one text per line.
    #[arg(long, env = "EMBEDFLEET_INPUT")]
    pub input: PathBuf,
    /// JSON Lines output, one embedding per input line, same order.
    #[arg(long, env = "EMBEDFLEET_OUTPUT")]
    pub output: PathBuf,
    #[arg(long, env = "EMBEDFLEET_BATCH_SIZE", alias = "batch_size", default_value_t = 32)]
    pub batch_size: usize,
    /// Text put before every input (an instruction such as bge's query prefix). `query` or another
    /// name picks a prompt from the model's config.
    #[arg(long, env = "EMBEDFLEET_PROMPT")]
    pub prompt: Option<String>,
    /// Keep the first D dimensions of each embedding (sentence-transformers' truncate_dim), for a
    /// model trained with --matryoshka-dims. Cut after the model's own normalisation: re-normalise
    /// before comparing with dot products.
    #[arg(long, env = "EMBEDFLEET_TRUNCATE_DIM", alias = "truncate_dim")]
    pub truncate_dim: Option<usize>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

pub async fn run(args: EncodeArgs) -> Result<ExitCode> {
    if args.truncate_dim == Some(0) {
        bail!("--truncate-dim 0: keep at least 1 dimension");
    }
    let raw = std::fs::read_to_string(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
    let texts: Vec<&str> = raw.lines().collect();
    if texts.is_empty() {
        bail!("{} is empty; put one text per line", args.input.display());
    }
    let model = args.runtime.load(&args.model, &args.storage.options()).await?;
    let dim = model.dimension().max(0) as usize;
    if let Some(d) = args.truncate_dim.filter(|&d| d == 0 || d > dim) {
        bail!("--truncate-dim {d}: the model's embeddings have {dim} dimensions; use a dimension from 1 to {dim}");
    }
    let prompt = args.prompt.as_deref().map(|p| model.named_prompt(p).unwrap_or(p).to_owned());
    let progress = crate::progress::for_terminal();
    progress.start("encode", Some(texts.len() as u64));
    let embeddings = model.encode_with_progress(&texts, args.batch_size, prompt.as_deref(), &mut |n| progress.advance(n as u64))?;
    progress.finish();
    let embeddings = match args.truncate_dim {
        Some(d) => embeddings.narrow(1, 0, d as i64),
        None => embeddings,
    };
    let (n, d) = embeddings.size2()?;
    let flat: Vec<f32> = Vec::try_from(embeddings.contiguous().view([-1]))?;
    let tmp = args.output.with_extension("partial");
    let mut out = BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?);
    for row in flat.chunks(d as usize) {
        serde_json::to_writer(&mut out, row)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, &args.output)?;
    eprintln!("encoded {n} texts ({d} dimensions) to {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}
