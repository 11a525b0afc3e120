//! How long the `pytorch_model.bin` reader takes on pickles crafted to make a naive reader
//! quadratic (appends to a list memoised again after each: each would copy the whole list), against honest ones of
//! the same size: the honest ones take time linear in their size; the crafted ones are refused
//! once they ask for more than 16 steps per byte, after time linear in their size too.
//!
//! `cargo test --release -p embedfleet-model --bench pickle_bench`

use embedfleet_model::weights::pickle::read_checkpoint;
use std::io::Cursor;
use std::time::Instant;

fn pickle(n: usize, memoized: bool) -> Vec<u8> {
    let mut file = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.\x80\x02}.".to_vec();
    file.extend_from_slice(&[0x80, 4, b']']);
    for _ in 0..n {
        file.extend_from_slice(&[b'K', 0, b'a']);
        if memoized {
            file.push(0x94);
        }
    }
    file.push(b'.');
    file
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("| appends | bytes | honest: ms | ns per byte | crafted: ms | ns per byte | crafted outcome |");
    println!("|---|---|---|---|---|---|---|");
    for n in [10_000usize, 100_000, 1_000_000, 4_000_000] {
        let (honest, crafted) = (pickle(n, false), pickle(n, true));
        let t = Instant::now();
        let _ = read_checkpoint(Cursor::new(&honest));
        let honest_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let outcome = match read_checkpoint(Cursor::new(&crafted)) {
            Err(e) if e.to_string().contains("crafted") => "refused as crafted",
            Err(_) => "refused (not a state dict)",
            Ok(_) => "read",
        };
        let crafted_ms = t.elapsed().as_secs_f64() * 1e3;
        let per_byte = |ms: f64, len: usize| ms * 1e6 / len as f64;
        println!(
            "| {n} | {} | {honest_ms:.1} | {:.1} | {crafted_ms:.1} | {:.1} | {outcome} |",
            honest.len(),
            per_byte(honest_ms, honest.len()),
            per_byte(crafted_ms, crafted.len())
        );
    }
}
