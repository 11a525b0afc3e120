//! The process's malloc, for libtorch's tensors.
//!
//! libtorch takes CPU tensor memory from the C allocator. glibc serves every block over its mmap
//! threshold (32 MiB at most) straight from the kernel and unmaps it on free, so a training step
//! that makes and drops the same 50–100 MiB activations (attention scores above all) pays a page
//! fault and a zeroed page per 4 KiB, every step: 20–30 % of the process's CPU time went to the
//! kernel. jemalloc replaces malloc process-wide (`tikv-jemalloc-sys` with
//! `override_allocator_on_supported_platforms`, so libtorch's allocations go to it too), and its
//! options below keep freed pages for the next batch instead of returning them to the kernel:
//! no decay, and no separate arena for blocks over 8 MiB (that arena returns them at once).
//! Measured on MiniLM training, 1 thread: system time 11–14 s → 1.5 s of a 45 s run, peak RSS
//! lower than glibc's. The process holds its high-water mark until it exits. `MALLOC_CONF` in the
//! environment still overrides any of these.

// Naming the crate links it: jemalloc's malloc then replaces the C library's in every binary that
// uses this crate.
#[cfg(not(target_env = "msvc"))]
use tikv_jemalloc_sys as _;

/// jemalloc reads its options from this symbol as it starts (before `main`), so they hold for
/// every allocation, the first ones included. C declares it `const char *malloc_conf`: an
/// `Option<&c_char>` has exactly a C pointer's layout (the language promises it).
#[cfg(not(target_env = "msvc"))]
#[used]
// SAFETY: jemalloc (unprefixed here: `override_allocator_on_supported_platforms` turns on
// `unprefixed_malloc_on_supported_platforms`) reads this symbol once, as it initialises, as a pointer to a
// NUL-terminated options string; the static is never written, and a C string literal ends with its NUL. No other
// object in the process defines `malloc_conf` (glibc does not; a second definition in the binary would fail to
// link). Where jemalloc stays prefixed (it then reads `_rjem_malloc_conf`), nothing reads this symbol.
#[unsafe(export_name = "malloc_conf")]
static MALLOC_CONF: Option<&std::ffi::c_char> =
    // SAFETY: the pointer is the first byte of a `'static` C string literal: valid, aligned, never freed.
    Some(unsafe { &*c"dirty_decay_ms:-1,muzzy_decay_ms:-1,oversize_threshold:0".as_ptr() });
