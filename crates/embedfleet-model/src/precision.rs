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
