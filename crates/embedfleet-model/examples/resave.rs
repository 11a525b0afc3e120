//! Loads a sentence-transformers folder and saves it with embedfleet's writer, for the round-trip
//! check against Python (`tools/reference/check_saved_model.py --saved OUT`):
//! `cargo run -p embedfleet-model --example resave -- .deps/all-MiniLM-L6-v2 /tmp/resaved`

use embedfleet_model::{LoadOptions, ModelCard, SentenceEncoder};
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (from, to) = match (args.get(1), args.get(2)) {
        (Some(f), Some(t)) => (f, t),
        _ => return Err("usage: resave FROM_FOLDER TO_FOLDER".into()),
    };
    let model = SentenceEncoder::load(Path::new(from), LoadOptions::default())?;
    model.save(Path::new(to), &ModelCard { base_model: from.clone(), ..Default::default() })?;
    println!("saved {to}");
    Ok(())
}
