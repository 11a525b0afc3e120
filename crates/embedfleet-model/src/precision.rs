use tch::{Device, Kind};

pub use embedfleet_core::{Precision, PrecisionSetting};

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

/// Whether bf16 matrix products run on instructions made for them on a device, and why: the one
/// fact `--precision auto` decides by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bf16Support {
    pub native: bool,
    /// What was found, for the log and the run's facts ("CPU has AMX", "GPU compute capability 7.5").
    pub reason: String,
}

/// What `device` offers bf16. On a CPU, AVX-512 BF16 or AMX make bf16 faster than fp32; without
/// them libtorch and oneDNN emulate it, about 6× slower than fp32 (encode on a 2-core AVX2 EPYC:
/// 3.3 against 19.5 texts/s, docs/performance.md). oneDNN's own cap, `ONEDNN_MAX_CPU_ISA`, is
/// honoured: set below `AVX512_CORE_BF16` it keeps libtorch's products off those instructions, so
/// they count as absent (it also lets one machine measure what an AVX2 machine does). On CUDA,
/// compute capability 8.0 (Ampere) and later has bf16 tensor cores.
///
/// Read once per device and process: the answer is asked for at every model load and every time
/// the run's facts are written, and finding it reads /proc/cpuinfo or starts `nvidia-smi`.
pub fn bf16_support(device: Device) -> Bf16Support {
    static KNOWN: std::sync::Mutex<Vec<(Device, Bf16Support)>> = std::sync::Mutex::new(Vec::new());
    let mut known = KNOWN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, support)) = known.iter().find(|(d, _)| *d == device) {
        return support.clone();
    }
    let support = match device {
        Device::Cpu => cpu_bf16_support(),
        Device::Cuda(index) => cuda_bf16_support(index),
        other => Bf16Support { native: false, reason: format!("{other:?} is not measured; fp32 is the safe choice") },
    };
    known.push((device, support.clone()));
    support
}

fn cpu_bf16_support() -> Bf16Support {
    let (native, reason) = match std::env::var("ONEDNN_MAX_CPU_ISA") {
        Ok(cap) if !isa_cap_allows_bf16(&cap) => (false, format!("ONEDNN_MAX_CPU_ISA={cap} keeps the CPU off its bf16 instructions")),
        _ if crate::kernels::cpu_attention::cpu_has_amx() => (true, "CPU has AMX".to_owned()),
        _ if crate::kernels::cpu_attention::cpu_supported() => (true, "CPU has AVX-512 BF16".to_owned()),
        _ => (false, "CPU has neither AVX-512 BF16 nor AMX, so bf16 would be emulated".to_owned()),
    };
    Bf16Support { native, reason }
}

/// Whether a value of oneDNN's `ONEDNN_MAX_CPU_ISA` leaves bf16 instructions in use: the levels
/// from `AVX512_CORE_BF16` up (the AMX, FP16 and AVX10 ones), and `ALL`/`DEFAULT`.
fn isa_cap_allows_bf16(cap: &str) -> bool {
    let cap = cap.trim().to_ascii_uppercase();
    cap.is_empty() || ["BF16", "AMX", "FP16", "AVX10", "ALL", "DEFAULT"].iter().any(|level| cap.contains(level))
}

fn cuda_bf16_support(index: usize) -> Bf16Support {
    // tch does not expose the compute capability; nvidia-smi, which ships with the driver, does.
    // CUDA_VISIBLE_DEVICES renumbers the devices libtorch sees, and nvidia-smi takes its entries.
    let id = std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .and_then(|v| v.split(',').nth(index).map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| index.to_string());
    let capability = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader", "-i", &id])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok());
    match capability {
        Some(cc) if cc >= 8.0 => Bf16Support { native: true, reason: format!("GPU compute capability {cc} has bf16 tensor cores") },
        Some(cc) => Bf16Support { native: false, reason: format!("GPU compute capability {cc} has no bf16 tensor cores") },
        None => Bf16Support {
            native: false,
            reason: "the GPU's compute capability could not be read (nvidia-smi); pass --precision bf16 on Ampere or later".to_owned(),
        },
    }
}

/// The precision to run with on `device`: the one asked for, or for `auto` bf16 where it is native
/// and fp32 elsewhere. The choice and its reason are logged.
pub fn resolve_precision(setting: PrecisionSetting, device: Device) -> Precision {
    if let Some(fixed) = setting.fixed() {
        return fixed;
    }
    let support = bf16_support(device);
    let precision = if support.native { Precision::Bf16 } else { Precision::Fp32 };
    tracing::info!(%precision, reason = %support.reason, "--precision auto chose {precision}");
    precision
}

/// Warns, once a process, when bf16 is asked for where it is emulated: it works, only slower.
pub(crate) fn warn_if_emulated(precision: Precision, device: Device) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if precision != Precision::Bf16 {
        return;
    }
    let support = bf16_support(device);
    if !support.native {
        WARNED.call_once(|| {
            tracing::warn!(
                reason = %support.reason,
                "bf16 runs here, but emulated: about 6x slower than fp32 on an AVX2 CPU (docs/performance.md); \
                 use --precision auto or fp32"
            );
        });
    }
}

/// The precision with what the hardware offers, for the run's facts, the report and the card:
/// `bf16 (CPU has AMX)`, `fp32 (bf16 not native: CPU has neither …)`.
pub fn describe_precision(precision: Precision, device: Device) -> String {
    let support = bf16_support(device);
    match (precision, support.native) {
        (Precision::Bf16, true) | (Precision::Fp32, false) => format!("{precision} ({})", support.reason),
        (Precision::Bf16, false) => format!("bf16, emulated ({})", support.reason),
        (Precision::Fp32, true) => format!("fp32 (bf16 was available: {})", support.reason),
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

/// Weights cast to the compute kind, kept for the length of an inference scope.
///
/// In bf16 every matrix product needs its weight in bf16. Training must cast on every forward (the
/// cast is part of the graph that carries the gradient to the fp32 weights), but encoding and
/// evaluation would cast the same unchanged weights again for every batch; PyTorch's autocast keeps
/// such casts for the length of its region too. Entries are keyed by the weight's storage and its
/// version counter, which libtorch bumps on every in-place update, so a stale cast is never used.
mod cast_cache {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use tch::{Kind, Tensor};

    type Key = (usize, i64, &'static str, Kind);

    thread_local! {
        static CASTS: RefCell<Option<HashMap<Key, Tensor>>> = const { RefCell::new(None) };
    }

    /// While alive, [`cached`] keeps what it makes (on this thread). Use only where no gradient is
    /// taken: a kept tensor is shared by every forward of the scope.
    pub struct InferenceScope {
        outer: bool,
    }

    impl InferenceScope {
        pub fn enter() -> Self {
            let outer = CASTS.with(|c| {
                let mut c = c.borrow_mut();
                let outer = c.is_none();
                if outer {
                    *c = Some(HashMap::new());
                }
                outer
            });
            InferenceScope { outer }
        }
    }

    impl Drop for InferenceScope {
        fn drop(&mut self) {
            if self.outer {
                CASTS.with(|c| *c.borrow_mut() = None);
            }
        }
    }

    /// Whether an [`InferenceScope`] is open on this thread.
    pub fn in_inference_scope() -> bool {
        CASTS.with(|c| c.borrow().is_some())
    }

    /// `make()`, or inside an [`InferenceScope`] the tensor made earlier from the same `source`
    /// (same storage, same version) for the same `purpose` and kind.
    pub fn cached(source: &Tensor, purpose: &'static str, kind: Kind, make: impl FnOnce() -> Tensor) -> Tensor {
        let key = (source.data_ptr() as usize, source.internal_version(), purpose, kind);
        let hit = CASTS.with(|c| c.borrow().as_ref().map(|m| m.get(&key).map(Tensor::shallow_clone)));
        match hit {
            None => make(),
            Some(Some(t)) => t,
            Some(None) => {
                let t = make();
                CASTS.with(|c| {
                    if let Some(m) = c.borrow_mut().as_mut() {
                        m.insert(key, t.shallow_clone());
                    }
                });
                t
            }
        }
    }
}

pub use cast_cache::{InferenceScope, cached, in_inference_scope};

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn auto_follows_the_cpu_and_fixed_settings_are_kept() {
        let support = bf16_support(Device::Cpu);
        let expected = if support.native { Precision::Bf16 } else { Precision::Fp32 };
        assert_eq!(resolve_precision(PrecisionSetting::Auto, Device::Cpu), expected, "{support:?}");
        assert_eq!(resolve_precision(PrecisionSetting::Fp32, Device::Cpu), Precision::Fp32);
        assert_eq!(resolve_precision(PrecisionSetting::Bf16, Device::Cpu), Precision::Bf16);
        // Native exactly where the kernel's instructions or AMX are (unless oneDNN is capped).
        if std::env::var_os("ONEDNN_MAX_CPU_ISA").is_none() {
            let has = crate::kernels::cpu_attention::cpu_supported() || crate::kernels::cpu_attention::cpu_has_amx();
            assert_eq!(support.native, has, "{support:?}");
        }
        println!("this CPU: auto chooses {expected} ({})", support.reason);
    }

    #[test]
    fn onednn_caps_below_bf16_count_as_no_bf16() {
        for cap in ["AVX2", "avx2", "SSE41", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX2_VNNI"] {
            assert!(!isa_cap_allows_bf16(cap), "{cap}");
        }
        for cap in ["AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "ALL", "DEFAULT", ""] {
            assert!(isa_cap_allows_bf16(cap), "{cap}");
        }
    }

    #[test]
    fn descriptions_say_what_the_hardware_offers() {
        let native = bf16_support(Device::Cpu).native;
        let bf16 = describe_precision(Precision::Bf16, Device::Cpu);
        assert!(bf16.starts_with("bf16"), "{bf16}");
        assert_eq!(bf16.contains("emulated"), !native, "{bf16}");
        assert!(describe_precision(Precision::Fp32, Device::Cpu).starts_with("fp32 ("));
    }

    #[test]
    fn casts_are_kept_within_a_scope_and_never_stale() {
        let mut w = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        let made = std::cell::Cell::new(0);
        let cast = |w: &Tensor| {
            cached(w, "cast", Kind::BFloat16, || {
                made.set(made.get() + 1);
                w.to_kind(Kind::BFloat16)
            })
        };
        let _ = cast(&w);
        let _ = cast(&w);
        assert_eq!(made.get(), 2, "outside a scope nothing is kept");
        {
            let _scope = InferenceScope::enter();
            let first = cast(&w);
            let again = cast(&w);
            assert_eq!(made.get(), 3, "the second cast in a scope is the kept one");
            assert_eq!(first.data_ptr(), again.data_ptr());
            let _ = w.g_mul_scalar_(2.0); // an optimizer step: same storage, new version
            let updated = cast(&w);
            assert_eq!(made.get(), 4, "an updated weight is cast again");
            assert_eq!(f64::try_from(updated.sum(Kind::Float)).unwrap(), 32.0);
            {
                let _inner = InferenceScope::enter();
                let _ = cast(&w);
                assert_eq!(made.get(), 4, "a nested scope shares the outer one's casts");
            }
            let _ = cast(&w);
            assert_eq!(made.get(), 4, "the inner scope's end keeps the outer one's");
        }
        let _ = cast(&w);
        assert_eq!(made.get(), 5, "the scope's end drops what it kept");
    }
}
