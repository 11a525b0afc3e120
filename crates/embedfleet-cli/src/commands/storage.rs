use clap::Args;
use embedfleet_core::{ArtifactStore, StoreOptions};

/// Where `s3://` locations live. Unset values come from the usual `AWS_*` variables.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// S3-compatible endpoint, e.g. http://127.0.0.1:8333 for a local server.
    #[arg(long, env = "EMBEDFLEET_S3_ENDPOINT", alias = "s3_endpoint")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default us-east-1).
    #[arg(long, env = "EMBEDFLEET_S3_REGION", alias = "s3_region")]
    pub s3_region: Option<String>,
    /// A PEM file of the CA that signed the S3 endpoint's certificate. Plain HTTP is used only
    /// when the endpoint says `http://`.
    #[arg(long, env = "EMBEDFLEET_S3_CA")]
    pub s3_ca: Option<std::path::PathBuf>,
}

impl StorageArgs {
    pub fn options(&self) -> StoreOptions {
        StoreOptions { endpoint: self.s3_endpoint.clone(), region: self.s3_region.clone(), ca: self.s3_ca.clone(), ..Default::default() }
    }

    pub fn open(&self, location: &str) -> Result<ArtifactStore, embedfleet_core::StoreError> {
        ArtifactStore::open(location, &self.options())
    }
}
