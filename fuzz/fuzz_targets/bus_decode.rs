//! Any bytes on a work subject: what `embedfleet_bus::messages::decode` makes of them, and that a
//! message it accepts survives being published again unchanged.
#![no_main]

use embedfleet_bus::messages::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = decode(data) else { return };
    let again = decode(&encode(&message)).expect("an encoded message decodes");
    assert_eq!(again, message);
    assert!(!message.dedup_id().is_empty());
    let _ = message.run_id();
});
