use clap::Args;
use embedfleet_model::{Device, LoadOptions, ModelError, Precision, SentenceEncoder, parse_device, resolve_model};
use embedfleet_core::StoreOptions;

/// How a model runs; shared by every command that encodes.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, env = "EMBEDFLEET_DEVICE", default_value = "auto")]
    pub device: String,
    /// Number format of the matrix products: fp32, or bf16 (CPUs with avx512_bf16/AMX, CUDA).
    #[arg(long, env = "EMBEDFLEET_PRECISION", default_value = "fp32")]
    pub precision: Precision,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long, env = "EMBEDFLEET_THREADS")]
    pub threads: Option<usize>,
}

impl RuntimeArgs {
    pub fn device(&self) -> Result<Device, ModelError> {
        parse_device(&self.device)
    }

    /// Resolves a folder, s3:// prefix or hub id and loads it.
    pub async fn load(&self, spec: &str, store: &StoreOptions) -> anyhow::Result<SentenceEncoder> {
        embedfleet_model::set_threads(self.threads);
        let dir = resolve_model(spec, store).await?;
        let options = LoadOptions { device: self.device()?, precision: self.precision };
        let model = tokio::task::spawn_blocking(move || SentenceEncoder::load(&dir, options)).await??;
        Ok(model)
    }
}
