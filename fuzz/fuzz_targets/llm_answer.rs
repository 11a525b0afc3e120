//! What an LLM server sends back: the body of a 200 answer (choices, usage) and the answer's text
//! through the parser and the question filters. The first byte picks whether the rest is a body
//! or the answer text itself, and how many questions were asked for.
#![no_main]

use embedfleet_generator::FilterConfig;
use embedfleet_generator::client::parse_completion;
use embedfleet_generator::filter::{Line, QuestionFilter, clean_line, normalize, parse_answer};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;

const CHUNK: &str = "Cargo is the Rust package manager. It downloads dependencies, compiles packages, makes \
                     distributable packages, and uploads them to crates.io, the Rust community's package registry.";

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let content = if pick & 1 == 0 {
        match parse_completion(rest) {
            Ok(completion) => completion.content,
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        }
    } else {
        String::from_utf8_lossy(rest).into_owned()
    };
    for line in parse_answer(&content) {
        let (Line::Question(text) | Line::Preamble(text) | Line::NotAQuestion(text)) = line;
        assert!(!text.is_empty());
        clean_line(&text);
    }
    // The chunk is the answer itself half the time, so the copy detector sees real overlaps.
    let chunk = if pick & 2 == 0 { CHUNK.to_owned() } else { content.clone() };
    let want = (pick >> 2) as usize % 5;
    let filter = QuestionFilter::new(FilterConfig::default());
    let already = vec!["What does Cargo do?".to_owned()];
    let first = filter.select(&content, &chunk, want, &[]);
    assert!(first.questions.len() <= want);
    let keys: HashSet<String> = first.questions.iter().map(|q| normalize(q)).collect();
    assert_eq!(keys.len(), first.questions.len(), "duplicates kept: {:?}", first.questions);
    // A second answer for the same corpus never hands out a question already taken.
    let second = filter.select(&content, "another chunk", want, &already);
    assert!(second.questions.len() <= want.saturating_sub(already.len()));
    assert!(second.questions.iter().all(|q| !keys.contains(&normalize(q))));
});
