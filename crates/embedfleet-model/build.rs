//! Compiles `csrc/onednn_linear.cpp` against libtorch's headers (`LIBTORCH`, which
//! `.cargo/config.toml` points at `.deps/libtorch`). Without the headers or a C++ compiler the
//! crate builds without it, and the layers use libtorch's plain matrix products. The tests get
//! libtorch's run path like every crate's (`build/libtorch_rpath.rs`).

use std::path::PathBuf;

mod rpath {
    include!("../../build/libtorch_rpath.rs");
    pub fn link() {
        main()
    }
}

fn main() {
    rpath::link();
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
