//! Hand-written compute paths that libtorch's own do not cover well on CPUs: attention for bf16
//! over each sequence's real tokens (AVX-512 BF16), and oneDNN products with weights packed once.
//! Each is used only where it applies and was measured faster; libtorch's path serves the rest.

pub mod cpu_attention;
pub mod onednn;
