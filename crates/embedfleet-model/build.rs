//! Compiles `csrc/onednn_linear.cpp` against libtorch's headers (`LIBTORCH`, which
//! `.cargo/config.toml` points at `.deps/libtorch`). Without the headers or a C++ compiler the
//! crate builds without it, and the layers use libtorch's plain matrix products. The tests get
//! libtorch's run path like every crate's (`build-support/libtorch_rpath.rs`).

use std::path::PathBuf;

mod rpath {
    include!("../../build-support/libtorch_rpath.rs");
    pub fn link() {
        main()
    }
}

/// Tests of code for instructions this machine lacks are marked ignored, with the reason, so the
/// test summary counts them as skipped instead of passing them untested. The tests run where they
/// are built (a CI machine builds its own), and each asserts the instructions again at run time.
fn detect_host_cpu() {
    println!("cargo::rustc-check-cfg=cfg(host_avx512_bf16)");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512bf16")
    {
        println!("cargo:rustc-cfg=host_avx512_bf16");
    }
}

fn main() {
    rpath::link();
    detect_host_cpu();
    println!("cargo:rerun-if-changed=csrc/onednn_linear.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo::rustc-check-cfg=cfg(onednn_linear)");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        println!("cargo:warning=LIBTORCH is not set: building without the packed oneDNN linear layers");
        return;
    };
    let include = libtorch.join("include");
    if !include.join("ATen").join("core").join("dispatch").join("Dispatcher.h").is_file() {
        println!("cargo:warning=no libtorch headers under {}: building without the packed oneDNN linear layers", include.display());
        return;
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let built = cc::Build::new()
        .cpp(true)
        .file("csrc/onednn_linear.cpp")
        .include(&include)
        .include(include.join("torch").join("csrc").join("api").join("include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag_if_supported("-w")
        .opt_level(2)
        .try_compile("embedfleet_onednn_linear");
    match built {
        Ok(()) => println!("cargo:rustc-cfg=onednn_linear"),
        Err(e) => println!("cargo:warning=building without the packed oneDNN linear layers: {e}"),
    }
}
