use tch::{Device, Kind};

/// The number format of the matrix products. Weights, residuals and layer norms stay fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "float32" | "f32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!("unknown precision '{other}'; use fp32 or bf16")),
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
