// Shared build script of every crate whose binaries or tests link libtorch (included with
// `include!`). torch-sys links libtorch but gives the binaries no run path, so without this they
// would only start with LD_LIBRARY_PATH set.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=EMBEDFLEET_LINK_CUDA");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    // Resolve the .deps symlink so the run path points at the cache, which outlives a checkout.
    let lib = std::fs::canonicalize(&lib).map(|p| p.display().to_string()).unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // On CUDA machines libtorch_cuda registers the CUDA kernels from its static initialisers, but
    // nothing references it by symbol, so --as-needed drops it; keep it (Dockerfile.gpu sets this).
    if std::env::var("EMBEDFLEET_LINK_CUDA").is_ok_and(|v| v == "1")
        && std::path::Path::new(&lib).join("libtorch_cuda.so").exists()
    {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
