//! The rest of what a server or a user's file can say: `Retry-After` / `retry-after-ms` headers
//! (seconds, HTTP dates, garbage), error bodies, `usage` objects, and prompt templates.
#![no_main]

use arbitrary::Arbitrary;
use embedfleet_generator::PromptTemplate;
use embedfleet_generator::client::{MAX_RETRY_AFTER, error_message, parse_retry_after, parse_usage};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};

#[derive(Debug, Arbitrary)]
struct Input {
    retry_after_ms: Option<String>,
    retry_after: Option<String>,
    /// Seconds since the epoch of "now", within what SystemTime can hold.
    now: u32,
    body: Vec<u8>,
    template: String,
    context: String,
    questions: u8,
}

fuzz_target!(|input: Input| {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(input.now));
    if let Some(wait) = parse_retry_after(input.retry_after_ms.as_deref(), input.retry_after.as_deref(), now) {
        assert!(wait <= MAX_RETRY_AFTER, "{wait:?}");
    }
    let message = error_message(&input.body);
    assert!(message.chars().count() <= 4 * 1024 + input.body.len());
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&input.body) {
        parse_usage(&value);
    }
    if let Ok(template) = PromptTemplate::parse(&input.template, "fuzz") {
        let prompt = template.render(&input.context, input.questions as usize);
        assert!(prompt.contains(input.context.as_str()));
        assert!(prompt.contains(&input.questions.to_string()));
    }
});
