//! How a model runs: the flags every command and worker that encodes or trains shares.

use crate::{Device, LoadOptions, ModelError, PrecisionSetting, SentenceEncoder, parse_device, resolve_model, resolve_precision};
use clap::Args;
use embedfleet_core::StoreOptions;

/// How a model runs; shared by every command that encodes.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, env = "EMBEDFLEET_DEVICE", default_value = "auto")]
    pub device: String,
    /// Number format of the matrix products: auto (bf16 where the CPU has AVX-512 BF16 or AMX, or
    /// the GPU is Ampere or later; fp32 elsewhere), fp32, or bf16.
    #[arg(long, env = "EMBEDFLEET_PRECISION", default_value = "auto")]
    pub precision: PrecisionSetting,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long, env = "EMBEDFLEET_THREADS")]
    pub threads: Option<usize>,
}

impl RuntimeArgs {
    pub fn device(&self) -> Result<Device, ModelError> {
        parse_device(&self.device)
    }

    pub fn load_options(&self) -> Result<LoadOptions, ModelError> {
        crate::set_threads(self.threads);
        let device = self.device()?;
        Ok(LoadOptions { device, precision: resolve_precision(self.precision, device) })
    }

    /// Resolves a folder, s3:// prefix or hub id and loads it.
    pub async fn load(&self, spec: &str, store: &StoreOptions) -> Result<SentenceEncoder, ModelError> {
        let options = self.load_options()?;
        let dir = resolve_model(spec, store).await?;
        tokio::task::spawn_blocking(move || SentenceEncoder::load(&dir, options))
            .await
            .map_err(|e| ModelError::InvalidConfig(format!("loading thread: {e}")))?
    }
}
