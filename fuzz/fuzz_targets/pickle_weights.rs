//! `pytorch_model.bin` as a hostile file: the zip archive and the legacy format, the pickle machine
//! and the tensor records must give an error, never a panic, a hang, or memory out of proportion to
//! the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = embedfleet_model::weights::pickle::read_checkpoint(std::io::Cursor::new(data));
});
