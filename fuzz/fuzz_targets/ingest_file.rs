//! One file of a corpus directory (`--input DIR`): `.txt`, `.md` or `.html`, any bytes at all.
#![no_main]

use embedfleet_core::ingest::{looks_like_html, parse_file_document};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 5] = ["page.html", "notes.txt", "README.md", "deep/dir/PAGE.XHTML", "a.htm"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else { return };
    let name = NAMES[pick as usize % NAMES.len()];
    if let Some(doc) = parse_file_document(name, bytes) {
        assert!(!doc.text.trim().is_empty());
        assert_eq!(doc.source, name);
        if let Some(title) = &doc.title {
            assert!(!title.is_empty() && !title.contains('\n'), "title {title:?}");
        }
        // Clean text from HTML keeps at most one blank line between paragraphs.
        if name.to_ascii_lowercase().contains(".htm") || name.ends_with(".XHTML") {
            assert!(!doc.text.contains("\n\n\n"), "{:?}", doc.text);
        }
    }
    // The JSON path's HTML sniffing sees the same text.
    looks_like_html(&String::from_utf8_lossy(bytes));
});
