//! Linear layers through oneDNN with each weight packed once into its blocked layout
//! (`csrc/onednn_linear.cpp`), for inference on the CPU in bf16 and fp32.
//!
//! Why: libtorch's plain product re-lays out the weight on every call; oneDNN's own linear with a
//! packed weight ran the four shapes of a MiniLM layer 7–22 % faster in bf16 and 12–44 % in fp32
//! (8,192 rows, 2 threads, AVX-512 BF16), and it adds the bias, the GELU or the residual in the
//! same pass. When
//! the shim was not built, or an op fails, the callers use the plain products.

use tch::Tensor;

/// Whether the packed layers were compiled in and work on this machine (checked once, on a tiny
/// product) and are not switched off (`EMBEDFLEET_ONEDNN_LINEAR=0`, to compare).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var("EMBEDFLEET_ONEDNN_LINEAR").is_ok_and(|v| v == "0") {
            return false;
        }
        let w = Tensor::ones([16, 16], (tch::Kind::BFloat16, tch::Device::Cpu));
        let x = Tensor::ones([4, 16], (tch::Kind::BFloat16, tch::Device::Cpu));
        // Each of the 4 × 16 outputs is a sum of 16 ones.
        let works = pack_weight(&w, 4)
            .and_then(|p| linear(&x, &p, None, Activation::None))
            .is_ok_and(|y| y.size() == [4, 16] && f64::try_from(y.sum(tch::Kind::Float)).ok() == Some(1024.0));
        if !works {
            tracing::debug!("oneDNN packed linear layers unavailable; using libtorch's products");
        }
        works
    })
}

/// What follows the product inside the same oneDNN call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    Gelu,
    GeluTanh,
    Relu,
}

/// Why a packed op failed: oneDNN's message.
#[derive(Debug, thiserror::Error)]
#[error("oneDNN linear: {0}")]
pub struct OneDnnError(String);

impl OneDnnError {
    #[cfg(not(onednn_linear))]
    fn not_built() -> Self {
        OneDnnError("not built (no libtorch headers at build time)".into())
    }
}

/// `weight` `[out, in]` (bf16, CPU) packed for inputs of about `rows` rows.
pub fn pack_weight(weight: &Tensor, rows: i64) -> Result<Tensor, OneDnnError> {
    #[cfg(onednn_linear)]
    {
        // SAFETY: the shim reads `*weight` as an `at::Tensor`: tch's `C_tensor` is one, owned by `weight`, which the
        // borrow keeps alive through the call (the shim copies it, taking its own reference, before it returns). `call`
        // passes its zeroed 512-byte buffer and that length, and the shim writes at most that many bytes, NUL included.
        // The shim catches `std::exception` (c10::Error is one) and returns null instead of unwinding into Rust.
        call(|error, len| unsafe { ffi::embedfleet_pack_linear_weight(weight.as_ptr(), rows, error, len) })
    }
    #[cfg(not(onednn_linear))]
    {
        let _ = (weight, rows);
        Err(OneDnnError::not_built())
    }
}

/// `activation(x · packedᵀ + bias)`.
pub fn linear(x: &Tensor, packed: &Tensor, bias: Option<&Tensor>, activation: Activation) -> Result<Tensor, OneDnnError> {
    #[cfg(onednn_linear)]
    {
        let (attr, algorithm): (&[u8], Option<&[u8]>) = match activation {
            Activation::None => (b"none\0", None),
            Activation::Gelu => (b"gelu\0", Some(b"none\0")),
            Activation::GeluTanh => (b"gelu\0", Some(b"tanh\0")),
            Activation::Relu => (b"relu\0", None),
        };
        let bias = bias.map_or(std::ptr::null(), Tensor::as_ptr);
        // SAFETY: as in `pack_weight`: `x` and `packed` are live tensors borrowed for the call, and `bias` is null
        // (the shim checks) or a tensor borrowed the same way. `attr`, and `algorithm` when not null (the shim checks),
        // are NUL-terminated static strings, which the shim copies into `std::string`s. `call` passes its error buffer
        // and its length.
        call(|error, len| unsafe {
            ffi::embedfleet_packed_linear(
                x.as_ptr(),
                packed.as_ptr(),
                bias,
                attr.as_ptr().cast(),
                algorithm.map_or(std::ptr::null(), |a| a.as_ptr().cast()),
                error,
                len,
            )
        })
    }
    #[cfg(not(onednn_linear))]
    {
        let _ = (x, packed, bias, activation);
        Err(OneDnnError::not_built())
    }
}

/// `x · packedᵀ + bias + residual`.
pub fn linear_add(x: &Tensor, residual: &Tensor, packed: &Tensor, bias: Option<&Tensor>) -> Result<Tensor, OneDnnError> {
    #[cfg(onednn_linear)]
    {
        let bias = bias.map_or(std::ptr::null(), Tensor::as_ptr);
        // SAFETY: as in `pack_weight`: `x`, `residual` and `packed` are live tensors borrowed for the call, and `bias`
        // is null (the shim checks) or a tensor borrowed the same way; `call` passes its error buffer and its length.
        call(|error, len| unsafe { ffi::embedfleet_packed_linear_add(x.as_ptr(), residual.as_ptr(), packed.as_ptr(), bias, error, len) })
    }
    #[cfg(not(onednn_linear))]
    {
        let _ = (x, residual, packed, bias);
        Err(OneDnnError::not_built())
    }
}

#[cfg(onednn_linear)]
fn call(f: impl FnOnce(*mut std::ffi::c_char, usize) -> *mut torch_sys::C_tensor) -> Result<Tensor, OneDnnError> {
    let mut error = [0 as std::ffi::c_char; 512];
    let tensor = f(error.as_mut_ptr(), error.len());
    if tensor.is_null() {
        // SAFETY: `error` lives until the end of this function and holds a NUL within its 512 bytes: it starts zeroed,
        // and the shim's `write_error` copies at most `error_len − 1` bytes and puts a NUL in the last one. The message
        // is copied out before the buffer goes.
        let message = unsafe { std::ffi::CStr::from_ptr(error.as_ptr()) }.to_string_lossy().into_owned();
        return Err(OneDnnError(message));
    }
    // SAFETY: `f` is one of the shim's functions (the only callers pass those) and `tensor` is not null (checked
    // above), so the shim made it with `new at::Tensor(…)` and handed it over: nothing else frees it or keeps it.
    // tch's `Tensor` now owns it and frees it with `delete` (`at_free`) on drop.
    Ok(unsafe { Tensor::from_ptr(tensor) })
}

#[cfg(onednn_linear)]
mod ffi {
    use std::ffi::c_char;
    use torch_sys::C_tensor;

    // SAFETY: these are the signatures of the `extern "C"` definitions in csrc/onednn_linear.cpp: `at::Tensor*` is
    // tch's `C_tensor` pointer, `int64_t` is `i64`, `size_t` is `usize`, `char*` is `c_char`'s pointer. Each catches
    // `std::exception`, which libtorch's errors (c10::Error) and the standard library's derive from, so none unwinds
    // into Rust (through `extern "C"`, that would be undefined behaviour).
    unsafe extern "C" {
        pub fn embedfleet_pack_linear_weight(weight: *const C_tensor, rows: i64, error: *mut c_char, error_len: usize) -> *mut C_tensor;
        pub fn embedfleet_packed_linear(
            x: *const C_tensor,
            packed: *const C_tensor,
            bias: *const C_tensor,
            attr: *const c_char,
            algorithm: *const c_char,
            error: *mut c_char,
            error_len: usize,
        ) -> *mut C_tensor;
        pub fn embedfleet_packed_linear_add(
            x: *const C_tensor,
            other: *const C_tensor,
            packed: *const C_tensor,
            bias: *const C_tensor,
            error: *mut c_char,
            error_len: usize,
        ) -> *mut C_tensor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Built without the shim, every op says so instead of computing.
    #[test]
    #[cfg(not(onednn_linear))]
    fn without_the_shim_every_op_is_an_error() {
        let w = Tensor::ones([2, 2], (Kind::BFloat16, Device::Cpu));
        assert!(!available());
        assert!(pack_weight(&w, 2).is_err());
    }

    #[test]
    #[cfg_attr(not(onednn_linear), ignore = "built without the oneDNN shim: libtorch's headers were not found at build time")]
    // oneDNN's packed bf16 products need native bf16: on an AVX2-only CPU the probe is refused.
    #[cfg_attr(not(host_avx512_bf16), ignore = "needs a CPU with AVX-512F, BW and BF16; this one lacks them")]
    fn packed_products_match_libtorch() {
        assert!(
            available(),
            "the shim is built but not available: unset EMBEDFLEET_ONEDNN_LINEAR=0, or libtorch's oneDNN refused the probe"
        );
        tch::manual_seed(5);
        let x = Tensor::randn([37, 64], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let w = Tensor::randn([96, 64], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let b = Tensor::randn([96], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let residual = Tensor::randn([37, 96], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let packed = pack_weight(&w, 37).unwrap();
        let plain = x.to_kind(Kind::Float).linear(&w.to_kind(Kind::Float), Some(&b.to_kind(Kind::Float)));
        let close = |ours: &Tensor, expected: &Tensor, what: &str| {
            let diff = f64::try_from((ours.to_kind(Kind::Float) - expected).abs().max()).unwrap();
            let scale = f64::try_from(expected.abs().max()).unwrap();
            // bf16 output: 8 bits of mantissa.
            assert!(diff <= scale / 128.0, "{what}: max abs diff {diff} at scale {scale}");
        };
        close(&linear(&x, &packed, Some(&b), Activation::None).unwrap(), &plain, "linear");
        close(&linear(&x, &packed, Some(&b), Activation::Gelu).unwrap(), &plain.gelu("none"), "gelu");
        close(&linear(&x, &packed, Some(&b), Activation::GeluTanh).unwrap(), &plain.gelu("tanh"), "gelu tanh");
        close(&linear(&x, &packed, Some(&b), Activation::Relu).unwrap(), &plain.relu(), "relu");
        close(&linear_add(&x, &residual, &packed, Some(&b)).unwrap(), &(&plain + residual.to_kind(Kind::Float)), "linear + residual");
        // fp32 stays fp32: the products agree with libtorch's to rounding.
        let (x32, w32, b32) = (x.to_kind(Kind::Float), w.to_kind(Kind::Float), b.to_kind(Kind::Float));
        let packed32 = pack_weight(&w32, 37).unwrap();
        let ours = linear_add(&x32, &residual.to_kind(Kind::Float), &packed32, Some(&b32)).unwrap();
        assert_eq!(ours.kind(), Kind::Float);
        let diff = f64::try_from((ours - (&plain + residual.to_kind(Kind::Float))).abs().max()).unwrap();
        assert!(diff < 1e-4, "fp32 linear + residual: max abs diff {diff}");
        let wrong = Tensor::ones([5, 3], (Kind::BFloat16, Device::Cpu));
        assert!(linear(&wrong, &packed, None, Activation::None).is_err(), "a shape mismatch is an error, not a crash");
    }
}
