use tch::{Device, Kind};

pub use embedfleet_core::Precision;

/// The tensor kind of a precision's matrix products.
pub trait PrecisionKind {
    fn kind(self) -> Kind;
}

impl PrecisionKind for Precision {
    fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

/// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device, crate::ModelError> {
    match spec {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        cuda if cuda.starts_with("cuda") => {
            if !tch::Cuda::is_available() {
                return Err(crate::ModelError::NoCuda);
            }
            let index = cuda.strip_prefix("cuda:").map(|i| i.parse().unwrap_or(0)).unwrap_or(0);
            Ok(Device::Cuda(index))
        }
        other => Err(crate::ModelError::InvalidConfig(format!("unknown device '{other}'; use auto, cpu or cuda"))),
    }
}
