include!("../../build/libtorch_rpath.rs");
