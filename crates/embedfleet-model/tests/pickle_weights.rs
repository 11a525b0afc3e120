//! The torch.save reader against files torch itself wrote (tools/reference/make_family_fixtures.py):
//! every dtype, strided and offset views, shared storages, both the zip and the legacy format; then
//! fuzzed with malformed input, which must give an error and never a panic.

use embedfleet_model::weights::pickle::read_checkpoint;
use embedfleet_model::{Kind, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::io::Cursor;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/pickle/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[derive(serde::Deserialize)]
struct Expected {
    dtype: String,
    shape: Vec<i64>,
    values: Vec<f64>,
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Float => "float32",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Double => "float64",
        Kind::Int64 => "int64",
        Kind::Int => "int32",
        Kind::Int16 => "int16",
        Kind::Int8 => "int8",
        Kind::Uint8 => "uint8",
        Kind::Bool => "bool",
        _ => "other",
    }
}

fn check_against_torch(file: &str) {
    let expected: BTreeMap<String, Expected> = serde_json::from_slice(&fixture("dtypes.json")).unwrap();
    let tensors: BTreeMap<String, Tensor> = read_checkpoint(Cursor::new(fixture(file))).unwrap().into_iter().collect();
    assert_eq!(tensors.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{file}: tensor names");
    for (name, want) in &expected {
        let t = &tensors[name];
        assert_eq!(kind_name(t.kind()), want.dtype, "{file}: {name} dtype");
        assert_eq!(t.size(), want.shape, "{file}: {name} shape");
        let got: Vec<f64> = Vec::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        // serde_json parses decimals to within an ulp, not exactly: compare at that precision.
        assert_eq!(got.len(), want.values.len(), "{file}: {name} values");
        for (g, w) in got.iter().zip(&want.values) {
            assert!((g - w).abs() <= 1e-15 * w.abs().max(1.0), "{file}: {name}: {g} != {w}");
        }
    }
}

#[test]
fn zip_checkpoint_matches_torch() {
    check_against_torch("dtypes.bin");
}

#[test]
fn legacy_checkpoint_matches_torch() {
    check_against_torch("dtypes_legacy.bin");
}

/// Where the first zip member's bytes (data.pkl, which torch writes first) sit in the file.
fn first_member_data(bytes: &[u8]) -> std::ops::Range<usize> {
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let size = u32::from_le_bytes(bytes[18..22].try_into().unwrap()) as usize;
    let start = 30 + u16_at(26) + u16_at(28);
    start..start + size
}

fn iterations() -> usize {
    std::env::var("EMBEDFLEET_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}

/// One random change: flip bits, overwrite with extreme values, cut, insert or duplicate bytes.
fn mutate(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>, range: std::ops::Range<usize>) {
    let pick = |rng: &mut ChaCha8Rng| rng.random_range(range.clone());
    match rng.random_range(0..6) {
        0 => {
            let at = pick(rng);
            bytes[at] ^= 1 << rng.random_range(0..8);
        }
        1 => {
            let at = pick(rng);
            bytes[at] = [0x00, 0xFF, 0x7F, 0x80][rng.random_range(0..4)];
        }
        2 => {
            let at = pick(rng);
            let len = rng.random_range(1..=8).min(bytes.len() - at);
            bytes[at..at + len].fill(0xFF);
        }
        3 => {
            let at = pick(rng);
            bytes.truncate(at);
        }
        4 => {
            let at = pick(rng);
            let junk: Vec<u8> = (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
            bytes.splice(at..at, junk);
        }
        _ => {
            let at = pick(rng);
            let len = rng.random_range(1..32).min(bytes.len() - at);
            let copy = bytes[at..at + len].to_vec();
            bytes.splice(at..at, copy);
        }
    }
}

fn read(bytes: Vec<u8>) -> bool {
    read_checkpoint(Cursor::new(bytes)).is_ok()
}

#[test]
fn malformed_files_are_errors_not_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x70_6b6c);
    let zip = fixture("dtypes.bin");
    let legacy = fixture("dtypes_legacy.bin");
    let program = first_member_data(&zip);
    assert!(read(zip.clone()) && read(legacy.clone()));
    let n = iterations();
    let mut parsed = [0usize; 3];
    for i in 0..n {
        // Anywhere in the zip (its directory, headers and records), inside the pickle program of a
        // zip that stays well-formed, and anywhere in a legacy file; one to four changes each.
        let (mut bytes, range, slot) = match i % 3 {
            0 => (zip.clone(), 0..zip.len(), 0),
            1 => (zip.clone(), program.clone(), 1),
            _ => (legacy.clone(), 0..legacy.len(), 2),
        };
        for _ in 0..rng.random_range(1..=4) {
            let range = range.start.min(bytes.len().saturating_sub(1))..range.end.min(bytes.len());
            if range.is_empty() {
                break;
            }
            mutate(&mut rng, &mut bytes, range);
        }
        parsed[slot] += read(bytes) as usize;
    }
    eprintln!(
        "{n} mutated checkpoints read without a panic; still readable: zip {}, pickle {}, legacy {}",
        parsed[0], parsed[1], parsed[2]
    );
}

/// Random opcode sequences with plausible arguments, run by the pickle machine (as the first
/// pickle of a legacy file).
#[test]
fn random_pickle_programs_are_errors_not_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x6f70);
    let ops: &[u8] = b"(.0129NJKMXIGctaeslud}])qrhjQRb\x80\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x93\x94\x95\x81CBUT";
    for _ in 0..iterations() * 5 {
        let mut p = vec![0x80, 2];
        for _ in 0..rng.random_range(1..60) {
            let op = ops[rng.random_range(0..ops.len())];
            p.push(op);
            match op {
                b'J' | b'r' | b'j' | b'X' | b'B' | b'T' => {
                    let v: u32 = if rng.random_bool(0.8) { rng.random_range(0..8) } else { rng.random() };
                    p.extend(v.to_le_bytes());
                }
                b'K' | b'q' | b'h' | 0x8a | 0x8c | b'C' | b'U' => p.push(rng.random_range(0..10)),
                b'M' => p.extend(rng.random::<u16>().to_le_bytes()),
                b'G' | 0x95 | 0x8d => p.extend(rng.random::<u64>().to_le_bytes()),
                b'c' => p.extend_from_slice(
                    [&b"torch._utils\n_rebuild_tensor_v2\n"[..], b"collections\nOrderedDict\n", b"torch\nFloatStorage\n"]
                        [rng.random_range(0..3)],
                ),
                _ => {}
            }
            // Sometimes text for the length-prefixed opcodes just written.
            if rng.random_bool(0.3) {
                p.extend_from_slice(b"storage");
            }
        }
        p.push(b'.');
        let _ = read_checkpoint(Cursor::new(p));
    }
}

#[test]
fn hostile_shapes_are_refused() {
    // A well-formed file whose only tensor claims more elements than its storage holds.
    let mut p = b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQK\x00K\x05\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRs.".to_vec();
    // Legacy framing: magic, protocol, system info, the program, the storage keys, the storage.
    let mut file = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.\x80\x02}.".to_vec();
    file.append(&mut p);
    file.extend_from_slice(b"\x80\x02]q\x00X\x01\x00\x00\x000a.");
    file.extend_from_slice(&2u64.to_le_bytes());
    file.extend_from_slice(&[0u8; 8]);
    let err = read_checkpoint(Cursor::new(file.clone())).unwrap_err().to_string();
    assert!(err.contains("reaches element 4 of a storage of 2"), "{err}");
    // The same with a storage that really holds five elements reads.
    let ok = file.len() - 16;
    file.truncate(ok);
    let mut p5 = file.clone();
    let at = p5.windows(6).position(|w| w == b"cpuK\x02t").unwrap() + 4;
    p5[at] = 5;
    p5.extend_from_slice(&5u64.to_le_bytes());
    p5.extend_from_slice(&[0u8; 20]);
    let t = read_checkpoint(Cursor::new(p5)).unwrap();
    assert_eq!(t[0].1.size(), vec![5]);
}

/// `]` EMPTY_LIST, then `n` times BININT1 0 and APPEND, each followed by MEMOIZE when `memoized`:
/// every append then finds the list shared with the memo again, so a machine that copies a shared
/// list before changing it does n²/2 work for 4n bytes.
fn quadratic_pickle(n: usize, memoized: bool) -> Vec<u8> {
    let mut p = vec![0x80, 4, b']'];
    for _ in 0..n {
        p.extend_from_slice(&[b'K', 0, b'a']);
        if memoized {
            p.push(0x94);
        }
    }
    p.push(b'.');
    // Legacy framing around it, as the file reader expects.
    let mut file = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.\x80\x02}.".to_vec();
    file.extend(p);
    file
}

#[test]
fn a_pickle_crafted_to_be_quadratic_is_refused_and_a_long_honest_one_is_read() {
    // 200,000 appends to a memoised list: 2 × 10¹⁰ copied items for 600 KB.
    let err = read_checkpoint(Cursor::new(quadratic_pickle(200_000, true))).unwrap_err().to_string();
    assert!(err.contains("refused as crafted"), "{err}");
    // The same appends to a list the memo does not hold cost one step each: the pickle is read
    // (and then refused for what it is, a list where a dict of tensors belongs).
    let err = read_checkpoint(Cursor::new(quadratic_pickle(200_000, false))).unwrap_err().to_string();
    assert!(!err.contains("crafted"), "{err}");
    // A few appends to a memoised list, as real files have, are fine.
    let err = read_checkpoint(Cursor::new(quadratic_pickle(100, true))).unwrap_err().to_string();
    assert!(!err.contains("crafted"), "{err}");
}

#[test]
fn a_large_crafted_pickle_is_refused_before_its_copies_fill_memory() {
    // 4,000,000 memoised appends (16 MB): the work budget alone would allow 2.6 × 10⁸ copied
    // items, every one kept alive by the memo. The copy cap refuses it after a few thousand.
    let err = read_checkpoint(Cursor::new(quadratic_pickle(4_000_000, true))).unwrap_err().to_string();
    assert!(err.contains("copies more than") && err.contains("refused as crafted"), "{err}");
}
