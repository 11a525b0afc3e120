//! The process's malloc, for libtorch's tensors.
//!
//! libtorch takes CPU tensor memory from the C allocator. glibc serves every block over its mmap
//! threshold (32 MiB at most) straight from the kernel and unmaps it on free, so a training step
//! that makes and drops the same 50–100 MiB activations (attention scores above all) pays a page
//! fault and a zeroed page per 4 KiB, every step: 20–30 % of the process's CPU time went to the
//! kernel. jemalloc replaces malloc process-wide (`tikv-jemalloc-sys` with
//! `override_allocator_on_supported_platforms`, so libtorch's allocations go to it too), and here
//! it is told to keep freed pages for reuse instead of returning them to the kernel after a delay.
//! Measured on MiniLM training, 1 thread: system time 11–14 s → 1.5 s of a 45 s run, peak RSS 7 %
//! lower than glibc's (tools/reference/compare_training.py reports both).

/// jemalloc's "every arena" index for `arena.<i>.*` settings (`MALLCTL_ARENAS_ALL`).
#[cfg(not(target_env = "msvc"))]
const ALL_ARENAS: u32 = 4096;

/// Keeps freed memory for reuse (jemalloc's decay off), once per process; the process holds its
/// high-water mark until it exits. A decay set in `MALLOC_CONF` wins.
pub fn keep_freed_tensor_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(not(target_env = "msvc"))]
        {
            if std::env::var("MALLOC_CONF").is_ok_and(|c| c.contains("decay")) {
                return;
            }
            let settings = [
                "arenas.dirty_decay_ms".to_string(),
                "arenas.muzzy_decay_ms".to_string(),
                format!("arena.{ALL_ARENAS}.dirty_decay_ms"),
                format!("arena.{ALL_ARENAS}.muzzy_decay_ms"),
            ];
            for name in settings {
                let name = std::ffi::CString::new(name).expect("no NUL in a setting name");
                let mut never: isize = -1;
                // SAFETY: a documented mallctl write of an ssize_t; jemalloc copies the value.
                let rc = unsafe {
                    tikv_jemalloc_sys::mallctl(
                        name.as_ptr(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        (&mut never as *mut isize).cast(),
                        std::mem::size_of::<isize>(),
                    )
                };
                if rc != 0 {
                    tracing::debug!(setting = ?name, rc, "jemalloc setting not applied");
                }
            }
        }
    });
}
