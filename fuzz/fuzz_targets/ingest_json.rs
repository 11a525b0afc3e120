//! A JSON array or JSON Lines corpus, as `embedfleet generate --input corpus.json` and the fleet's
//! coordinator (from S3) read it. The first byte picks the `--text-field`.
#![no_main]

use embedfleet_core::IngestOptions;
use embedfleet_core::ingest::parse_json_documents;
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::path::Path;

const FIELDS: [Option<&str>; 4] = [None, Some("content"), Some("md"), Some("")];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    // The CLI reads the file with read_to_string, which refuses bytes that are not UTF-8.
    let Ok(raw) = std::str::from_utf8(rest) else { return };
    let options = IngestOptions { text_field: FIELDS[pick as usize % FIELDS.len()].map(str::to_owned) };
    let Ok(docs) = parse_json_documents(Path::new("corpus.json"), raw, &options) else { return };
    let mut ids = HashSet::new();
    for doc in &docs {
        assert!(!doc.text.trim().is_empty(), "an empty document was kept");
        assert!(ids.insert(doc.id.clone()), "two documents share the id {}", doc.id);
        assert!(doc.id.as_str().len() == 13 && doc.id.as_str().starts_with('d'), "odd id {}", doc.id);
    }
});
