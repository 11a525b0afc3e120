//! Self-attention for bf16 inference on CPUs with AVX-512 (F, BW and BF16), over the real tokens of each
//! sequence only.
//!
//! Why it exists: with 32-wide heads (MiniLM, bge-small) libtorch's CPU flash attention ran at a
//! quarter of the speed of its own bf16 matrix products, and took about 30 % of a bf16 encode.
//! Its query-key products have an inner dimension of 32 and go through a general GEMM call per
//! block, and bf16 gained nothing over fp32 there. This kernel does one (sequence, head) at a time:
//! keys are packed in pairs so that one `vdpbf16ps` scores 16 keys, a row of scores stays in L1,
//! and no padding is ever scored.
//!
//! The numerics follow libtorch's kernel: query-key products accumulate in fp32, the softmax runs
//! in fp32, its unnormalised weights are rounded to bf16 for the product with the values, which
//! accumulates in fp32, and the row sum divides at the end.
//!
//! A bias by the key's distance from the query (MPNet's relative position bias) is added to the
//! scaled scores, read from a row per head ([`DistanceBias`]) instead of a `[heads, seq, seq]` mask.

use std::sync::atomic::{AtomicUsize, Ordering};
use tch::{Device, Kind, Tensor};

/// One sequence's rows in a token matrix: rows `start..start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub len: usize,
}

/// A bias added to each score by the key's signed distance from its query, per head: the same for
/// every sequence, so one row of `2 × reach − 1` values per head stands for a `[seq, seq]` mask.
pub struct DistanceBias {
    /// `[heads, 2 × reach − 1 + 64]` fp32: entry `reach − 1 + (key − query)`, zeros past the last
    /// distance for the keys the kernel pads each span with.
    table: Tensor,
    reach: usize,
}

impl DistanceBias {
    /// `by_distance` `[heads, 2 × reach − 1]`: column `reach − 1 + (key − query)` holds the bias of
    /// that distance, for sequences of up to `reach` tokens.
    pub fn new(by_distance: &Tensor) -> Self {
        let (heads, width) = by_distance.size2().expect("distance bias is [heads, distances]");
        assert!(width % 2 == 1, "distances run from −(reach − 1) to reach − 1");
        let padding = Tensor::zeros([heads, 16 * KEY_BLOCKS as i64], (Kind::Float, Device::Cpu));
        let table = Tensor::cat(&[by_distance.to_device(Device::Cpu).to_kind(Kind::Float), padding], 1).contiguous();
        DistanceBias { table, reach: (width as usize).div_ceil(2) }
    }

    /// The bias of query `i` and key `j`, as the kernel reads it.
    #[cfg(test)]
    fn at(&self, head: usize, i: usize, j: usize) -> f32 {
        f32::try_from(self.table.get(head as i64).get((self.reach - 1 + j - i) as i64)).unwrap()
    }
}

/// Whether this CPU has the instructions the kernel needs.
pub fn cpu_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *SUPPORTED.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the kernel serves heads of this width: values go through in blocks of 32 columns.
pub fn head_dim_supported(head_dim: i64) -> bool {
    head_dim > 0 && head_dim % 32 == 0
}

/// Whether the layers use the kernel where it applies: on CPUs without AMX, unless
/// `EMBEDFLEET_CPU_ATTENTION=0`. On CPUs with AMX libtorch's kernel runs its products on the AMX
/// tiles, and this kernel was measured only without them; `EMBEDFLEET_CPU_ATTENTION=1` uses it there
/// too, to compare.
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| match std::env::var("EMBEDFLEET_CPU_ATTENTION").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => !cpu_has_amx(),
    })
}

/// Whether the CPU has AMX tiles for bf16 (Linux's /proc/cpuinfo flag; elsewhere assumed not).
pub(crate) fn cpu_has_amx() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|info| info.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "amx_bf16")))
}

/// `qkv` `[rows, 3 × heads × head_dim]` in bf16 on the CPU (queries, then keys, then values, each
/// head by head) → the attention context `[rows, heads × head_dim]` in bf16. Each span attends to
/// itself only; rows outside every span are zero. `bias`, when given, covers spans of up to its
/// reach. Call only when [`cpu_supported`] and [`head_dim_supported`] hold.
pub fn attend(qkv: &Tensor, spans: &[Span], heads: usize, head_dim: usize, bias: Option<&DistanceBias>) -> Tensor {
    assert!(cpu_supported() && head_dim_supported(head_dim as i64), "cpu_attention::attend called where it is not supported");
    let qkv = qkv.contiguous();
    assert_eq!(qkv.kind(), Kind::BFloat16);
    assert_eq!(qkv.device(), Device::Cpu);
    let (rows, width) = qkv.size2().expect("qkv is [rows, 3 × hidden]");
    let hidden = heads * head_dim;
    assert_eq!(width as usize, 3 * hidden, "qkv width");
    assert!(spans.iter().all(|s| s.start + s.len <= rows as usize), "a span runs past the rows");
    // Each (span, head) is one worker's alone: spans must not overlap (in order, each starting where
    // or after the one before ends). An empty span has nothing to do and is left out.
    let spans: Vec<Span> = spans.iter().copied().filter(|s| s.len > 0).collect();
    assert!(spans.windows(2).all(|w| w[0].start + w[0].len <= w[1].start), "spans are out of order or overlap");
    assert_eq!(qkv.data_ptr() as usize % 4, 0, "qkv is 4-byte aligned (bf16 pairs are read as one 32-bit word)");
    let covered: usize = spans.iter().map(|s| s.len).sum();
    let out = if covered == rows as usize {
        Tensor::empty([rows, hidden as i64], (Kind::BFloat16, Device::Cpu))
    } else {
        Tensor::zeros([rows, hidden as i64], (Kind::BFloat16, Device::Cpu))
    };
    let longest = spans.iter().map(|s| s.len).max().unwrap_or(0);
    if longest == 0 {
        return out;
    }
    if let Some(b) = bias {
        assert!(longest <= b.reach && b.table.size()[0] == heads as i64, "the distance bias covers every span and head");
    }
    let work = Work {
        src: qkv.data_ptr() as *const u16,
        dst: out.data_ptr() as *mut u16,
        hidden,
        head_dim,
        scale: 1.0 / (head_dim as f32).sqrt(),
        bias: bias.map(|b| (b.table.data_ptr() as *const f32, b.table.size()[1] as usize, b.reach)),
    };
    let items = spans.len() * heads;
    let next = AtomicUsize::new(0);
    let worker = || {
        let mut scratch = Scratch::new(longest, head_dim);
        loop {
            let item = next.fetch_add(1, Ordering::Relaxed);
            if item >= items {
                break;
            }
            let (span, head) = (spans[item / heads], item % heads);
            // SAFETY: attend_head's contract holds. `cpu_supported()` was asserted on entry. `qkv` is a contiguous
            // [rows, 3 × hidden] bf16 matrix and `out` a fresh [rows, hidden] one (asserted, made above), both alive until
            // after the scoped threads end; every span ends by `rows` (asserted) and `head < heads`; `head_dim` is a
            // multiple of 32 (asserted); `scratch` was made for the longest span and this head width; a bias covers the
            // longest span and every head (asserted), and `DistanceBias::new` made its table `2 × reach − 1 + 64` wide.
            // The spans are non-empty and do not overlap (asserted above), so the one worker that takes an item
            // (`fetch_add`) is the only one to touch its rows in its head's columns; `qkv`'s data is 4-byte aligned
            // (asserted).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::attend_head(&work, span, head, &mut scratch)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (span, head, &mut scratch, &work);
        }
    };
    let threads = (tch::get_num_threads().max(1) as usize).min(items);
    if threads <= 1 {
        worker();
    } else {
        std::thread::scope(|s| {
            for _ in 1..threads {
                s.spawn(worker);
            }
            worker();
        });
    }
    out
}

/// Where the rows live; shared read-only by the workers.
struct Work {
    src: *const u16,
    dst: *mut u16,
    hidden: usize,
    head_dim: usize,
    scale: f32,
    /// The distance bias: its table, the table's row width, its reach.
    bias: Option<(*const f32, usize, usize)>,
}

// SAFETY: a `Work` is shared only by `attend`'s scoped workers. Through it they only read `src` and the bias table,
// which nothing writes meanwhile, and write `dst` at disjoint places (each (span, head) item its own rows and columns,
// given spans that do not overlap); the tensors behind the pointers outlive the scoped threads.
unsafe impl Sync for Work {}

/// A worker's buffers, sized for the longest span.
struct Scratch {
    /// Keys transposed in bf16 pairs: `[head_dim / 2][keys]`, each u32 two adjacent dimensions.
    keys: Vec<u32>,
    /// Values in bf16 pairs of adjacent keys: `[keys / 2][head_dim]`.
    values: Vec<u32>,
    /// Scores of up to [`ROWS`] query rows, `[ROWS][keys]` in fp32.
    scores: Vec<f32>,
    /// The same rows' unnormalised softmax weights in bf16.
    weights: Vec<u16>,
}

/// Query rows scored together, so that each loaded block of keys serves several rows.
const ROWS: usize = 4;

impl Scratch {
    fn new(longest: usize, head_dim: usize) -> Self {
        let keys = padded_keys(longest);
        Scratch {
            keys: vec![0; head_dim / 2 * keys],
            values: vec![0; keys / 2 * head_dim],
            scores: vec![0.0; ROWS * keys],
            weights: vec![0; ROWS * keys],
        }
    }
}

/// Blocks of 16 keys scored together per row.
const KEY_BLOCKS: usize = 4;

/// Keys of a span of `len` tokens as the kernel stores them: whole groups of [`KEY_BLOCKS`] blocks,
/// zero past `len`.
fn padded_keys(len: usize) -> usize {
    len.next_multiple_of(16 * KEY_BLOCKS)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{KEY_BLOCKS, ROWS, Scratch, Span, Work, padded_keys};
    use std::arch::x86_64::*;
    use std::mem::transmute;

    /// One head of one span.
    ///
    /// Every pointer it forms follows from what the `SAFETY` comments call the span bounds: token
    /// rows are addressed as `row(i)` only for `i < len` (and `i = 0`), so inside the span's rows;
    /// columns only inside this head's `d` query, key or value columns (`head × d + d ≤ hidden`);
    /// the scratch buffers are sized for [`padded_keys`]`(longest) ≥ keys_padded` keys.
    ///
    /// # Safety
    /// - The CPU has AVX-512F, BW and BF16 ([`super::cpu_supported`]).
    /// - `work.src` points to a live, contiguous `[rows, 3 × work.hidden]` bf16 matrix whose address
    ///   is a multiple of 4 bytes, with `span.start + span.len ≤ rows` and `span.start < rows` (an
    ///   empty span too: the address of its first key row is formed).
    /// - `work.dst` points to a live, contiguous `[rows, work.hidden]` bf16 matrix, and nothing else
    ///   reads or writes its rows `span.start..span.start + span.len` in columns
    ///   `head × work.head_dim..(head + 1) × work.head_dim` during the call.
    /// - `work.head_dim` is a positive multiple of 32 and `(head + 1) × work.head_dim ≤ work.hidden`.
    /// - `scratch` was made by `Scratch::new(longest, work.head_dim)` with `longest ≥ span.len`.
    /// - If `work.bias` is `Some((table, width, reach))`: `span.len ≤ reach`, and `table` points to a
    ///   live, contiguous fp32 matrix of at least `head + 1` rows of
    ///   `width = 2 × reach − 1 + 16 × KEY_BLOCKS` values (what [`super::DistanceBias::new`] makes).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn attend_head(work: &Work, span: Span, head: usize, scratch: &mut Scratch) {
        let (d, len) = (work.head_dim, span.len);
        let stride = 3 * work.hidden;
        let keys_padded = padded_keys(len);
        // SAFETY: called only with `i < len` or `i = 0`, so `span.start + i < rows` (span bounds and the contract):
        // the result is the start of a row of `src`.
        let row = |i: usize| unsafe { work.src.add((span.start + i) * stride) };
        let (q_col, k_col, v_col) = (head * d, work.hidden + head * d, 2 * work.hidden + head * d);
        // SAFETY: the CPU has AVX-512F and BW (the contract). Key and value `j` are `d` values at `k_col` and `v_col` of
        // row `j`, and `v_col + d ≤ 3 × hidden = stride`, so they lie in row `j`, which is in `src` for `j < len` (and
        // `row(0)` is, for `len = 0`); the rows are `stride` values apart, `6 × hidden` bytes: a multiple of 4, and
        // `15 × 6 × hidden / 4` fits an i32 (unchecked: it would not past 95 million columns). `d` is a multiple of 32,
        // `keys_padded` of 64, and `scratch` holds `d / 2 × padded_keys(longest)` keys and as many values, with
        // `padded_keys(longest) ≥ keys_padded` (the contract).
        unsafe {
            pack_keys(scratch, len, keys_padded, d, |j| row(j).add(k_col));
            pack_values(scratch, len, keys_padded, d, |j| row(j).add(v_col));
        }
        let mut i = 0;
        while i < len {
            let n = (len - i).min(ROWS);
            // SAFETY: called only with `r < n ≤ len − i`, so `i + r < len`: the query's `d` columns at `q_col` lie in the
            // span's row `i + r` (span bounds). The address is a multiple of 4 bytes, as `score_rows` needs: `src` is
            // (the contract) and `(span.start + i + r) × stride + q_col` is an even number of bf16 values.
            let q = |r: usize| unsafe { row(i + r).add(q_col) } as *const u32;
            // Query i + r's biases start at distance −(i + r): its key j reads entry j.
            // SAFETY: called only with `r < n`, so `i + r < len ≤ reach` (the contract) and `reach − 1 − (i + r) ≥ 0`:
            // the result lies in row `head` of the table.
            let bias = |r: usize| work.bias.map(|(table, width, reach)| unsafe { table.add(head * width + reach - 1 - (i + r)) });
            let scores = &mut scratch.scores[..n * keys_padded];
            // SAFETY: score_rows' contract holds. The CPU has AVX-512F and BF16 (ours). Each `q(r)`, `r < n`, starts `d / 2`
            // readable query pairs, 4-byte aligned (above). Each `bias(r)` starts `keys_padded` readable values: they end
            // at entry `reach − 2 − (i + r) + keys_padded ≤ reach + len + 61 ≤ 2 × reach + 61 < width` of row `head`
            // (`keys_padded ≤ len + 63`); with a bias the `n = ROWS` path passes only non-null `bias(r)`. `keys_padded`
            // is a multiple of 64, `scratch.keys` holds `d / 2 × padded_keys(longest) ≥ d / 2 × keys_padded` values,
            // and `scores` holds `n × keys_padded`: `ROWS` rows, or one chunk of `keys_padded` per single row.
            unsafe {
                if n == ROWS {
                    let bias = work.bias.is_some().then(|| std::array::from_fn(|r| bias(r).unwrap_or(std::ptr::null())));
                    score_rows::<ROWS>(std::array::from_fn(q), bias, &scratch.keys, keys_padded, d / 2, work.scale, scores);
                } else {
                    for (r, scores) in scores.chunks_mut(keys_padded).enumerate() {
                        score_rows::<1>([q(r)], bias(r).map(|b| [b]), &scratch.keys, keys_padded, d / 2, work.scale, scores);
                    }
                }
            }
            let mut inverse_sums = [0f32; ROWS];
            for (r, inverse_sum) in inverse_sums.iter_mut().enumerate().take(n) {
                let scores = &scratch.scores[r * keys_padded..(r + 1) * keys_padded];
                let weights = &mut scratch.weights[r * keys_padded..(r + 1) * keys_padded];
                // SAFETY: the CPU has AVX-512F and BF16 (ours); `len ≤ keys_padded = scores.len() = weights.len()`, a
                // multiple of 16.
                *inverse_sum = unsafe { softmax_weights(scores, len, weights) }.recip();
            }
            // SAFETY: called only with `r < n`, so output row `span.start + i + r < span.start + len ≤ rows`, and the
            // head's columns start at `head × d < hidden`: the result lies in `dst`.
            let dst = |r: usize| unsafe { work.dst.add((span.start + i + r) * work.hidden + head * d) };
            // SAFETY: weighted_values' contract holds. The CPU has AVX-512F and BF16 (ours); `keys_padded` is a multiple of
            // 64 and `d` of 32; `scratch.values` holds `padded_keys(longest) / 2 × d ≥ keys_padded / 2 × d` values and
            // `scratch.weights` `ROWS × padded_keys(longest)`, rows `row0..row0 + R` with `row0 + R ≤ n ≤ ROWS`. The
            // weights buffer, a `Vec<u16>` of at least 512 bytes, is 4-byte aligned only because Rust's default allocator
            // takes it from malloc, which aligns blocks of 16 bytes or more to 16 on x86_64 (glibc and jemalloc alike):
            // Rust promises 2. `dst(row0 + r)` starts `d` writable values of an output row of this span (above), which
            // only this call touches (the contract).
            unsafe {
                if n == ROWS {
                    weighted_values::<ROWS>(scratch, 0, keys_padded, d, &inverse_sums, dst);
                } else {
                    for r in 0..n {
                        weighted_values::<1>(scratch, r, keys_padded, d, &inverse_sums, &dst);
                    }
                }
            }
            i += n;
        }
    }

    /// `keys[p][j]` = dimensions 2p and 2p + 1 of key j (zero past `len`).
    ///
    /// # Safety
    /// - The CPU has AVX-512F.
    /// - `key(0)`, and `key(1)` when `len > 1`, may be called (they are, even for `len = 0`); for
    ///   `j < len`, `key(j)` points to `d` readable bf16 values, and the keys are equally spaced:
    ///   `key(j) = key(0) + j × s` bytes, with `s` a multiple of 4 and `15 × s / 4 ≤ i32::MAX`.
    /// - `d` is even, `keys_padded` is a multiple of 16, and `scratch.keys` holds at least
    ///   `d / 2 × keys_padded` values.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_keys(scratch: &mut Scratch, len: usize, keys_padded: usize, d: usize, key: impl Fn(usize) -> *const u16) {
        let keys = scratch.keys.as_mut_ptr();
        let first = key(0) as *const i32;
        // Rows are equally spaced: one gather takes pair p of 16 consecutive keys.
        let stride = if len > 1 { (key(1) as usize - key(0) as usize) / 4 } else { 0 } as i32;
        let offsets = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(stride));
        for block in (0..keys_padded).step_by(16) {
            let live = lanes_before(len, block);
            let rows = first.wrapping_add(block * stride as usize);
            for p in 0..d / 2 {
                // SAFETY: the CPU has AVX-512F (the contract). Lane `l` reads 4 bytes at `rows + p + l × stride` i32s, which
                // is `key(block + l) + 4p` bytes by the equal spacing: dimensions `2p, 2p + 1 < d` of key `block + l`.
                // Only the `live` lanes, `block + l < len`, read; masked-off lanes touch no memory, and a gather needs no
                // alignment. (`wrapping_add` above: `rows` may lie past the keys; it is only dereferenced for live lanes.)
                let pairs = unsafe { _mm512_mask_i32gather_epi32::<4>(_mm512_setzero_si512(), live, offsets, rows.wrapping_add(p)) };
                // SAFETY: 16 values at `p × keys_padded + block`, with `p < d / 2` and `block + 16 ≤ keys_padded` (both
                // multiples of 16): inside the `d / 2 × keys_padded` values of `scratch.keys` (the contract). Unaligned store.
                unsafe { _mm512_storeu_si512(keys.add(p * keys_padded + block) as *mut _, pairs) };
            }
        }
    }

    /// `values[jp][x]` = dimension x of keys 2jp (low half) and 2jp + 1 (high half), zero past `len`.
    ///
    /// # Safety
    /// - The CPU has AVX-512F and BW.
    /// - For `j < len`, `value(j)` points to `d` readable bf16 values.
    /// - `d` is a multiple of 32, and `scratch.values` holds at least `keys_padded / 2 × d` values.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn pack_values(scratch: &mut Scratch, len: usize, keys_padded: usize, d: usize, value: impl Fn(usize) -> *const u16) {
        // Lane 2x takes element x of the first row, lane 2x + 1 element x of the second (32 + x).
        let low: [i16; 32] = std::array::from_fn(|l| (l / 2 + 32 * (l % 2)) as i16);
        let high: [i16; 32] = std::array::from_fn(|l| (16 + l / 2 + 32 * (l % 2)) as i16);
        // SAFETY: each array is 32 × 2 = 64 bytes, what a 512-bit load reads; an unaligned load needs no alignment.
        let (low, high) = unsafe { (_mm512_loadu_si512(low.as_ptr() as *const _), _mm512_loadu_si512(high.as_ptr() as *const _)) };
        let load = |j: usize, col: usize| {
            // SAFETY: `j < len` is checked here, so `value(j)` starts `d` readable values (the contract), and `load` is
            // called only with `col` a multiple of 32 below `d`, a multiple of 32: the 32 values read lie in them.
            if j < len { unsafe { _mm512_loadu_si512(value(j).add(col) as *const _) } } else { _mm512_setzero_si512() }
        };
        let values = scratch.values.as_mut_ptr();
        for jp in 0..keys_padded / 2 {
            for col in (0..d).step_by(32) {
                let (a, b) = (load(2 * jp, col), load(2 * jp + 1, col));
                // SAFETY: the CPU has AVX-512BW for the permutes (the contract). The stores write 16 values each at
                // `jp × d + col` and `jp × d + col + 16`, ending by `jp × d + col + 32 ≤ (jp + 1) × d ≤ keys_padded / 2 × d`:
                // inside `scratch.values` (the contract). Unaligned stores.
                unsafe {
                    _mm512_storeu_si512(values.add(jp * d + col) as *mut _, _mm512_permutex2var_epi16(a, low, b));
                    _mm512_storeu_si512(values.add(jp * d + col + 16) as *mut _, _mm512_permutex2var_epi16(a, high, b));
                }
            }
        }
    }

    /// `scores[r × keys_padded + j]` = scale × (q_r · key j) + `bias[r][j]` for every padded key, in
    /// fp32. `R` rows and [`KEY_BLOCKS`] blocks of 16 keys at a time: each loaded key block serves
    /// `R` rows, and the `R` × [`KEY_BLOCKS`] independent sums hide the latency of `vdpbf16ps`.
    ///
    /// # Safety
    /// - The CPU has AVX-512F and BF16.
    /// - Each `q[r]` points to `pairs` readable bf16 pairs and is 4-byte aligned (see [`broadcast_pair`]).
    /// - With `bias`, each `bias[r]` points to `keys_padded` readable fp32 values.
    /// - `keys_padded` is a multiple of `16 × KEY_BLOCKS`, `keys.len() ≥ pairs × keys_padded`, and
    ///   `scores.len() ≥ R × keys_padded`.
    // The indices address several arrays in lock step (accumulators, key blocks, rows): clearer than iterators.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn score_rows<const R: usize>(
        q: [*const u32; R],
        bias: Option<[*const f32; R]>,
        keys: &[u32],
        keys_padded: usize,
        pairs: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        let scale = _mm512_set1_ps(scale);
        for block in (0..keys_padded).step_by(16 * KEY_BLOCKS) {
            let mut acc = [[_mm512_setzero_ps(); KEY_BLOCKS]; R];
            // SAFETY: `block < keys_padded ≤ keys.len()` (the contract).
            let mut base = unsafe { keys.as_ptr().add(block) };
            for p in 0..pairs {
                // SAFETY: `__m512` and `__m512bh` are both 64-byte vectors of plain bits: every bit pattern is valid.
                let mut k = [_mm512_setzero_ps(); KEY_BLOCKS].map(|z| -> __m512bh { unsafe { transmute::<__m512, __m512bh>(z) } });
                for b in 0..KEY_BLOCKS {
                    // SAFETY: `base` is `keys + p × keys_padded + block`; the 16 values at `16 × b` end by
                    // `p × keys_padded + block + 16 × KEY_BLOCKS ≤ (p + 1) × keys_padded ≤ keys.len()` (the contract).
                    // Unaligned load; `__m512i` → `__m512bh`: 64-byte vectors of plain bits.
                    k[b] = unsafe { transmute::<__m512i, __m512bh>(_mm512_loadu_si512(base.add(16 * b) as *const _)) };
                }
                for r in 0..R {
                    // SAFETY: `p < pairs`: a pair of query `r`, readable and 4-byte aligned (the contract).
                    let qp = unsafe { broadcast_pair(q[r].add(p)) };
                    for b in 0..KEY_BLOCKS {
                        acc[r][b] = _mm512_dpbf16_ps(acc[r][b], k[b], qp);
                    }
                }
                // The next pair's block. After the last pair this points past `keys` and is never read: `wrapping_add`,
                // since `add` would require the result in bounds.
                base = base.wrapping_add(keys_padded);
            }
            for r in 0..R {
                for b in 0..KEY_BLOCKS {
                    let at = block + 16 * b;
                    let score = match bias {
                        // SAFETY: `at + 16 ≤ keys_padded`: inside the `keys_padded` values at `bias[r]` (the contract). Unaligned.
                        Some(bias) => _mm512_fmadd_ps(acc[r][b], scale, unsafe { _mm512_loadu_ps(bias[r].add(at)) }),
                        None => _mm512_mul_ps(acc[r][b], scale),
                    };
                    // SAFETY: `r < R` and `at + 16 ≤ keys_padded`: inside `scores`, `R × keys_padded` values (the
                    // contract). Unaligned store.
                    unsafe { _mm512_storeu_ps(scores.as_mut_ptr().add(r * keys_padded + at), score) };
                }
            }
        }
    }

    /// The lanes of the 16 positions from `start` that lie before `len`.
    fn lanes_before(len: usize, start: usize) -> __mmask16 {
        match len.saturating_sub(start) {
            n if n >= 16 => 0xffff,
            n => ((1u32 << n) - 1) as __mmask16,
        }
    }

    /// A pair of bf16 values in all 16 lanes, loaded straight into the vector register (through a
    /// general register it costs a second, slower instruction per broadcast).
    ///
    /// # Safety
    /// The CPU has AVX-512F and BF16, and `pair` points to 4 readable bytes (any alignment: the
    /// read is unaligned, which the compiler still folds into one `vpbroadcastd` from memory).
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn broadcast_pair(pair: *const u32) -> __m512bh {
        // SAFETY: `pair` points to 4 readable bytes (the contract); `read_unaligned` needs no alignment.
        let bits = unsafe { std::ptr::read_unaligned(pair) };
        // SAFETY: `__m512i` → `__m512bh`: 64-byte vectors of plain bits, every pattern valid.
        unsafe { transmute::<__m512i, __m512bh>(_mm512_set1_epi32(bits as i32)) }
    }

    /// exp(score − max) of the first `len` scores, rounded to bf16 into `weights` (zeros after
    /// them); returns their fp32 sum.
    ///
    /// # Safety
    /// The CPU has AVX-512F and BF16; `len ≤ scores.len()`, and `weights.len()` is a multiple of 16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn softmax_weights(scores: &[f32], len: usize, weights: &mut [u16]) -> f32 {
        let tail = |j: usize| lanes_before(len, j);
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for j in (0..len).step_by(16) {
            // SAFETY: `j < len ≤ scores.len()` (the contract), and the mask `tail(j)` loads only the lanes before `len`
            // (masked-off lanes touch no memory). Unaligned load.
            max = _mm512_max_ps(max, unsafe { _mm512_mask_loadu_ps(max, tail(j), scores.as_ptr().add(j)) });
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
        let mut sum = _mm512_setzero_ps();
        for j in (0..weights.len()).step_by(16) {
            let e = if j < len {
                // SAFETY: as above: `j < len ≤ scores.len()`, and only the lanes before `len` load.
                let s = unsafe { _mm512_maskz_loadu_ps(tail(j), scores.as_ptr().add(j)) };
                _mm512_maskz_mov_ps(tail(j), exp(_mm512_sub_ps(s, max)))
            } else {
                _mm512_setzero_ps()
            };
            sum = _mm512_add_ps(sum, e);
            // SAFETY: `__m256bh` → `__m256i`: 32-byte vectors of plain bits, every bit pattern valid.
            let bf: __m256i = unsafe { transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(e)) };
            // SAFETY: `j + 16 ≤ weights.len()`, a multiple of 16 (the contract): the 16 bf16 lie in `weights`. Unaligned store.
            unsafe { _mm256_storeu_si256(weights.as_mut_ptr().add(j) as *mut __m256i, bf) };
        }
        _mm512_reduce_add_ps(sum)
    }

    /// e^x for x ≤ 0: 2^n × e^r with |r| ≤ ln 2 / 2, the degree-5 Taylor polynomial for e^r
    /// (relative error below 3e-6, a thousandth of the bf16 rounding that follows), and
    /// `vscalefps` for 2^n.
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(1.0 / 120.0);
        for c in [1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// Output rows = (weights · values) × inverse sum, in bf16, 32 columns at a time.
    ///
    /// # Safety
    /// - The CPU has AVX-512F and BF16.
    /// - `keys_padded` is a multiple of 4 and `d` a multiple of 32; `scratch.values` holds at least
    ///   `keys_padded / 2 × d` values, and `scratch.weights` at least `(row0 + R) × keys_padded`, in
    ///   a buffer whose address is a multiple of 4 (its pairs go through [`broadcast_pair`]).
    /// - For `r < R`, `dst(row0 + r)` points to `d` writable bf16 values that nothing else reads or
    ///   writes during the call.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn weighted_values<const R: usize>(
        scratch: &Scratch,
        row0: usize,
        keys_padded: usize,
        d: usize,
        inverse_sums: &[f32],
        dst: impl Fn(usize) -> *mut u16,
    ) {
        // SAFETY: `(row0 + r) × keys_padded < (row0 + R) × keys_padded ≤ scratch.weights.len()` (the contract).
        let weights: [*const u32; R] =
            std::array::from_fn(|r| unsafe { scratch.weights.as_ptr().add((row0 + r) * keys_padded) as *const u32 });
        for col in (0..d).step_by(32) {
            // Even and odd key pairs go to separate sums, so that 4 × R chains hide the latency.
            let (mut even_lo, mut even_hi) = ([_mm512_setzero_ps(); R], [_mm512_setzero_ps(); R]);
            let (mut odd_lo, mut odd_hi) = ([_mm512_setzero_ps(); R], [_mm512_setzero_ps(); R]);
            // SAFETY: `col < d ≤ keys_padded / 2 × d ≤ scratch.values.len()` (the contract).
            let mut v = unsafe { scratch.values.as_ptr().add(col) };
            // keys_padded is a multiple of 64: pairs come in twos.
            for jp in (0..keys_padded / 2).step_by(2) {
                // SAFETY: called only with the four pointers below, each the start of 16 values inside `scratch.values`.
                // Unaligned load; `__m512i` → `__m512bh`: 64-byte vectors of plain bits.
                let load = |at: *const u32| -> __m512bh { unsafe { transmute::<__m512i, __m512bh>(_mm512_loadu_si512(at as *const _)) } };
                // SAFETY: `v` is `scratch.values + jp × d + col` (it moves `2 × d` per two pairs), so the loads read values
                // `jp × d + col..+ 32` and `(jp + 1) × d + col..+ 32`, which end by `(jp + 2) × d ≤ keys_padded / 2 × d`
                // (`col + 32 ≤ d`; `jp` and `keys_padded / 2` are even): inside `scratch.values` (the contract).
                let (v0, v1, v2, v3) = unsafe { (load(v), load(v.add(16)), load(v.add(d)), load(v.add(d + 16))) };
                for r in 0..R {
                    // SAFETY: `jp + 1 < keys_padded / 2`: pairs within row `row0 + r`'s `keys_padded` weights (above),
                    // 4-byte aligned as the contract's buffer is and `(row0 + r) × keys_padded` is even.
                    let (a, b) = unsafe { (broadcast_pair(weights[r].add(jp)), broadcast_pair(weights[r].add(jp + 1))) };
                    even_lo[r] = _mm512_dpbf16_ps(even_lo[r], v0, a);
                    even_hi[r] = _mm512_dpbf16_ps(even_hi[r], v1, a);
                    odd_lo[r] = _mm512_dpbf16_ps(odd_lo[r], v2, b);
                    odd_hi[r] = _mm512_dpbf16_ps(odd_hi[r], v3, b);
                }
                // The next two pairs' row. After the last two this points past `scratch.values` and is never read:
                // `wrapping_add`, since `add` would require the result in bounds.
                v = v.wrapping_add(2 * d);
            }
            for r in 0..R {
                let inv = _mm512_set1_ps(inverse_sums[row0 + r]);
                for (half, sum) in [_mm512_add_ps(even_lo[r], odd_lo[r]), _mm512_add_ps(even_hi[r], odd_hi[r])].into_iter().enumerate() {
                    // SAFETY: `__m256bh` → `__m256i`: 32-byte vectors of plain bits, every bit pattern valid.
                    let bf: __m256i = unsafe { transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(_mm512_mul_ps(sum, inv))) };
                    // SAFETY: columns `col + 16 × half..+ 16`, which end by `col + 32 ≤ d`, of the `d` values at
                    // `dst(row0 + r)`, `r < R`: writable and ours alone (the contract). Unaligned store.
                    unsafe { _mm256_storeu_si256(dst(row0 + r).add(col + 16 * half) as *mut __m256i, bf) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libtorch's attention of each span on its own, in `kind`, from the same bf16 inputs, with
    /// `bias` as a full `[heads, len, len]` additive mask.
    fn reference_in(qkv: &Tensor, spans: &[Span], heads: i64, head_dim: i64, kind: Kind, bias: Option<&DistanceBias>) -> Tensor {
        let rows = qkv.size()[0];
        let hidden = heads * head_dim;
        let out = Tensor::zeros([rows, hidden], (Kind::Float, Device::Cpu));
        for s in spans {
            let part = qkv
                .narrow(0, s.start as i64, s.len as i64)
                .to_kind(kind)
                .view([1, s.len as i64, 3, heads, head_dim])
                .permute([2, 0, 3, 1, 4]);
            let len = s.len as i64;
            let mask = bias.map(|b| {
                let query = Tensor::arange(len, (Kind::Int64, Device::Cpu)).unsqueeze(1);
                let key = Tensor::arange(len, (Kind::Int64, Device::Cpu)).unsqueeze(0);
                let entry = (key - query + (b.reach as i64 - 1)).flatten(0, 1);
                b.table.index_select(1, &entry).view([1, heads, len, len]).to_kind(kind)
            });
            let ctx =
                Tensor::scaled_dot_product_attention(&part.get(0), &part.get(1), &part.get(2), mask.as_ref(), 0.0, false, None, false);
            out.narrow(0, s.start as i64, s.len as i64).copy_(&ctx.transpose(1, 2).reshape([s.len as i64, hidden]));
        }
        out
    }

    fn reference(qkv: &Tensor, spans: &[Span], heads: i64, head_dim: i64) -> Tensor {
        reference_in(qkv, spans, heads, head_dim, Kind::Float, None)
    }

    const NEEDS_AVX512_BF16: &str = "needs a CPU with AVX-512F, BW and BF16, which the machine that built the tests lacks";

    #[test]
    fn only_heads_a_multiple_of_32_wide_are_served() {
        assert!(!head_dim_supported(8) && !head_dim_supported(0) && head_dim_supported(32) && head_dim_supported(64));
    }

    /// Where the kernel cannot run the layers use libtorch's kernel (`layers::tests` covers that
    /// path); this says which one this machine takes.
    #[test]
    fn the_kernel_is_used_exactly_where_the_cpu_has_the_instructions() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            cpu_supported(),
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512bf16")
        );
        #[cfg(not(target_arch = "x86_64"))]
        assert!(!cpu_supported());
    }

    #[test]
    #[cfg_attr(not(host_avx512_bf16), ignore = "needs a CPU with AVX-512F, BW and BF16; this one lacks them")]
    fn matches_libtorch_attention_span_by_span() {
        assert!(cpu_supported(), "{NEEDS_AVX512_BF16}");
        tch::manual_seed(3);
        for ((heads, head_dim), biased) in [(2i64, 32i64), (3, 64)].into_iter().flat_map(|shape| [(shape, false), (shape, true)]) {
            // Lengths around the 16-key blocks and the 4-row tiles; a gap of unused rows between
            // spans stays zero.
            let lengths = [1usize, 2, 5, 16, 17, 63, 64, 65, 130, 256, 300];
            let mut spans = Vec::new();
            let mut start = 0;
            for len in lengths {
                spans.push(Span { start, len });
                start += len + 3;
            }
            let rows = start as i64;
            let qkv = (Tensor::randn([rows, 3 * heads * head_dim], (Kind::Float, Device::Cpu)) * 2.0).to_kind(Kind::BFloat16);
            // A bias as large as MPNet's (its relative position embeddings are about ±3), held in
            // bf16 as the layers hold it; a reach past the longest span, as a padded batch has.
            let reach = 320;
            let bias = biased.then(|| {
                DistanceBias::new(&(Tensor::randn([heads, 2 * reach - 1], (Kind::Float, Device::Cpu)) * 3.0).to_kind(Kind::BFloat16))
            });
            let ours = attend(&qkv, &spans, heads as usize, head_dim as usize, bias.as_ref()).to_kind(Kind::Float);
            let expected = reference_in(&qkv, &spans, heads, head_dim, Kind::Float, bias.as_ref());
            // The output is bf16 (8 bits of mantissa) and the weights are rounded to bf16 before
            // the product with the values: libtorch's own bf16 kernel errs as much.
            let libtorch_bf16 = reference_in(&qkv, &spans, heads, head_dim, Kind::BFloat16, bias.as_ref());
            let error = |x: &Tensor| {
                let d = (x - &expected).abs();
                (f64::try_from(d.max()).unwrap(), f64::try_from(d.mean(Kind::Float)).unwrap())
            };
            let ((max, mean), (their_max, their_mean)) = (error(&ours), error(&libtorch_bf16));
            assert!(
                max <= 1.2 * their_max && mean <= 1.2 * their_mean,
                "heads {heads} × {head_dim}, bias {biased}: max / mean abs diff to fp32 {max} / {mean}, libtorch's bf16 kernel {their_max} / {their_mean}"
            );
            let gaps: f64 =
                spans.iter().map(|s| f64::try_from(ours.narrow(0, (s.start + s.len) as i64, 3).abs().sum(Kind::Float)).unwrap()).sum();
            assert_eq!(gaps, 0.0, "rows outside every span stay zero");
        }
    }

    #[test]
    #[cfg_attr(not(host_avx512_bf16), ignore = "needs a CPU with AVX-512F, BW and BF16; this one lacks them")]
    fn extreme_scores_give_finite_weights() {
        assert!(cpu_supported(), "{NEEDS_AVX512_BF16}");
        // Scores of ±1e4 underflow e^x for all but the largest; a row must still sum to one.
        let (heads, head_dim, len) = (1i64, 32i64, 40i64);
        let qkv = (Tensor::randn([len, 3 * heads * head_dim], (Kind::Float, Device::Cpu)) * 100.0).to_kind(Kind::BFloat16);
        let spans = [Span { start: 0, len: len as usize }];
        let ours = attend(&qkv, &spans, 1, 32, None).to_kind(Kind::Float);
        assert!(bool::try_from(ours.isfinite().all()).unwrap());
        let expected = reference(&qkv, &spans, heads, head_dim);
        let rel = f64::try_from((&ours - &expected).abs().max()).unwrap() / f64::try_from(expected.abs().max()).unwrap();
        assert!(rel < 2e-2, "relative max diff {rel}");
    }

    #[test]
    fn the_distance_table_reads_as_the_full_mask() {
        // Entry reach − 1 + (key − query), zero past the last distance.
        let by_distance = Tensor::arange(2 * 5 - 1, (Kind::Float, Device::Cpu)).view([1, 9]);
        let bias = DistanceBias::new(&by_distance);
        assert_eq!(bias.reach, 5);
        for (i, j) in [(0, 0), (4, 0), (0, 4), (2, 3), (3, 2)] {
            assert_eq!(bias.at(0, i, j), (4 + j - i) as f32, "query {i}, key {j}");
        }
        assert_eq!(bias.at(0, 0, 5 + 63), 0.0, "the kernel's padded keys read zeros");
    }
}
