//! Turning an LLM answer into questions worth training on. Models wrap questions in preambles,
//! number them in many styles, repeat themselves and copy sentences from the chunk; each of those
//! would be a junk training pair, so each is dropped and counted by reason.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Mutex;

/// Drops by reason. Reported after a run so a user can tell a bad prompt or model from bad luck.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterStats {
    /// "Here are two questions…", "Questions:", "I hope this helps".
    pub preamble: u64,
    /// A line that is neither a preamble nor a question (an answer, a remark).
    pub not_a_question: u64,
    /// Fewer words than `FilterConfig::min_words`.
    pub too_short: u64,
    /// Copies a long run of the chunk word for word: a lookup, not a question.
    pub copied_from_chunk: u64,
    pub duplicate_in_chunk: u64,
    /// Already asked for another chunk: two chunks would claim the same question.
    pub duplicate_in_corpus: u64,
    /// Good questions beyond the number asked for.
    pub over_limit: u64,
}

impl FilterStats {
    pub fn total(&self) -> u64 {
        self.preamble
            + self.not_a_question
            + self.too_short
            + self.copied_from_chunk
            + self.duplicate_in_chunk
            + self.duplicate_in_corpus
            + self.over_limit
    }

    pub fn add(&mut self, other: &FilterStats) {
        self.preamble += other.preamble;
        self.not_a_question += other.not_a_question;
        self.too_short += other.too_short;
        self.copied_from_chunk += other.copied_from_chunk;
        self.duplicate_in_chunk += other.duplicate_in_chunk;
        self.duplicate_in_corpus += other.duplicate_in_corpus;
        self.over_limit += other.over_limit;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FilterConfig {
    pub min_words: usize,
    /// A question sharing this many consecutive words with the chunk is a copy.
    pub max_copied_run: usize,
    /// A question whose longest shared run is at least this fraction of its words is a copy…
    pub max_copied_fraction: f64,
    /// …when that run is at least this long, so "What is the borrow checker?" may still name a
    /// three-word term the chunk uses.
    pub min_run_for_fraction: usize,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self { min_words: 3, max_copied_run: 12, max_copied_fraction: 0.8, min_run_for_fraction: 5 }
    }
}

/// One non-empty line of an answer, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Question(String),
    Preamble(String),
    NotAQuestion(String),
}

/// Splits an answer into lines, strips numbering and bullets, and classifies each line. Lines that
/// are only a label ("Question 1:", "**Questions**") vanish without a count: they carry no text.
pub fn parse_answer(answer: &str) -> Vec<Line> {
    answer
        .lines()
        .filter_map(|raw| {
            let text = clean_line(raw);
            (!text.is_empty()).then(|| classify(raw, text))
        })
        .collect()
}

/// Removes list markers, question labels, markdown emphasis and wrapping quotes.
pub fn clean_line(raw: &str) -> String {
    let without_emphasis = raw.replace("**", "").replace("__", "");
    let mut s = without_emphasis.trim().trim_start_matches('#').trim_start_matches('>').trim();
    loop {
        let next = strip_marker(s).trim_start();
        if next.len() == s.len() {
            break;
        }
        s = next;
    }
    let s = s.trim();
    let quotes: &[char] = &['"', '\'', '“', '”', '‘', '’', '`'];
    let unquoted = s.trim_start_matches(quotes).trim_end_matches(quotes);
    // Only a wrapping pair of quotes is removed; a line that merely ends in a quote keeps it.
    let s = if unquoted.len() + 2 <= s.len() && s.starts_with(quotes) && s.ends_with(quotes) { unquoted } else { s };
    // A lone opening quote with no closing one anywhere ("\"What is X?") is the model's, not the text's.
    let s = match s.strip_prefix(['"', '“']) {
        Some(rest) if !rest.contains(['"', '”']) => rest,
        _ => s,
    };
    s.trim().to_owned()
}

/// One leading marker: "1.", "1)", "(1)", "-", "*", "•", "Q1:", "Question 1:", "Question:".
fn strip_marker(s: &str) -> &str {
    for bullet in ["- ", "* ", "• ", "– ", "— ", "+ "] {
        if let Some(rest) = s.strip_prefix(bullet) {
            return rest;
        }
    }
    if let Some(rest) = strip_number(s) {
        return rest;
    }
    if let Some(inner) = s.strip_prefix('(') {
        let digits = inner.len() - inner.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 && inner[digits..].starts_with(')') {
            return &inner[digits + 1..];
        }
    }
    let lower = s.to_ascii_lowercase();
    // Small models label their one question: "The question: …", "Generated question: …".
    for label in ["the question:", "generated question:", "example question:", "sample question:"] {
        if lower.starts_with(label) {
            return &s[label.len()..];
        }
    }
    for label in ["question", "q"] {
        if lower.starts_with(label) {
            let rest = s[label.len()..].trim_start().trim_start_matches('#');
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let after = rest[digits..].trim_start();
            // "Question 1:", "Q1.", "Q2 -", "Question:" but not "Quantum…" or "Question 1 asks…".
            for sep in [":", ".", ")", " -", "-", "–"] {
                if let Some(tail) = after.strip_prefix(sep) {
                    if sep == "." && tail.starts_with(|c: char| c.is_ascii_digit()) {
                        continue;
                    }
                    if digits > 0 || sep == ":" {
                        return tail;
                    }
                }
            }
            if digits > 0 && after.is_empty() {
                return after;
            }
        }
    }
    s
}

/// "1." / "1)" / "1:" / "1 -" followed by a space or the end; not "1.5 million".
fn strip_number(s: &str) -> Option<&str> {
    let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || digits > 3 {
        return None;
    }
    let rest = &s[digits..];
    for sep in [".", ")", ":", " -", " –"] {
        if let Some(tail) = rest.strip_prefix(sep) {
            if tail.is_empty() || tail.starts_with(char::is_whitespace) {
                return Some(tail);
            }
            // The reference's `^\d+[\).\s]` also accepts "1.What"; a digit after the dot is a number.
            if sep == "." && !tail.starts_with(|c: char| c.is_ascii_digit()) {
                return Some(tail);
            }
        }
    }
    None
}

const PREAMBLE_STARTS: &[&str] = &[
    "here are",
    "here is",
    "here's",
    "sure",
    "certainly",
    "of course",
    "okay",
    "ok,",
    "ok.",
    "below are",
    "the following",
    "i hope",
    "i have",
    "i've",
    "let me know",
    "feel free",
    "note:",
    "these questions",
    "these are",
    "as a teacher",
    "as a professor",
    // Assistant chatter that small chat models answer with instead of questions.
    "i'm ready",
    "i am ready",
    "i'm happy to",
    "i'd be happy",
    "i would be happy",
    "what's the question",
    "what is the question",
    "what's your question",
    "what is your question",
    "how can i help",
    "how can i assist",
    "what's your favorite",
    "what is your favorite",
];

const ANSWER_STARTS: &[&str] = &["answer:", "answer ", "a:", "a)", "a.", "ans:", "correct answer"];

/// Words that open a quiz question even without a question mark ("Explain how …").
const QUESTION_OPENERS: &[&str] = &[
    "what",
    "why",
    "how",
    "when",
    "where",
    "which",
    "who",
    "whom",
    "whose",
    "is",
    "are",
    "was",
    "were",
    "do",
    "does",
    "did",
    "can",
    "could",
    "should",
    "would",
    "will",
    "has",
    "have",
    "explain",
    "describe",
    "discuss",
    "compare",
    "contrast",
    "list",
    "name",
    "identify",
    "define",
    "outline",
    "summarize",
    "summarise",
    "state",
    "give",
    "provide",
    "evaluate",
    "analyze",
    "analyse",
    "illustrate",
    "justify",
];

fn classify(raw: &str, text: String) -> Line {
    let lower = text.to_lowercase();
    let raw_lower = raw.trim().to_lowercase();
    let last = text.trim_end_matches(['"', '\'', ')', '”', '*', ' ']).chars().last();
    if last == Some(':') || PREAMBLE_STARTS.iter().any(|p| lower.starts_with(p)) {
        return Line::Preamble(text);
    }
    if ANSWER_STARTS.iter().any(|p| raw_lower.starts_with(p) || lower.starts_with(p)) {
        return Line::NotAQuestion(text);
    }
    if last == Some('?') || last == Some('？') {
        return Line::Question(text);
    }
    let first = lower.split(|c: char| !c.is_alphanumeric()).next().unwrap_or("");
    if QUESTION_OPENERS.contains(&first) { Line::Question(text) } else { Line::NotAQuestion(text) }
}

/// Lowercase alphanumeric words: the form duplicates and copies are judged in.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase()).collect()
}

/// Lowercase, punctuation stripped, white space collapsed: "What is X?" and "what is x" are one.
pub fn normalize(question: &str) -> String {
    words(question).join(" ")
}

/// The longest run of consecutive words the question shares with the chunk.
pub fn longest_copied_run(question: &str, chunk: &str) -> usize {
    let q = words(question);
    let c = words(chunk);
    // Dynamic programming over the longest common substring of words, one row at a time.
    let mut prev = vec![0usize; c.len() + 1];
    let mut best = 0;
    for qw in &q {
        let mut row = vec![0usize; c.len() + 1];
        for (j, cw) in c.iter().enumerate() {
            if qw == cw {
                row[j + 1] = prev[j] + 1;
                best = best.max(row[j + 1]);
            }
        }
        prev = row;
    }
    best
}

impl FilterConfig {
    pub fn copies_chunk(&self, question: &str, chunk: &str) -> bool {
        let n = words(question).len();
        let run = longest_copied_run(question, chunk);
        run >= self.max_copied_run || (run >= self.min_run_for_fraction && n > 0 && run as f64 >= self.max_copied_fraction * n as f64)
    }
}

/// Questions a chunk yielded, and what was dropped on the way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub questions: Vec<String>,
    pub stats: FilterStats,
}

/// The filter with its memory of every question accepted in this corpus.
#[derive(Debug, Default)]
pub struct QuestionFilter {
    config: FilterConfig,
    seen: Mutex<HashSet<String>>,
}

impl QuestionFilter {
    pub fn new(config: FilterConfig) -> Self {
        Self { config, seen: Mutex::new(HashSet::new()) }
    }

    pub fn config(&self) -> &FilterConfig {
        &self.config
    }

    /// Marks questions as taken without filtering them (answers restored from the cache).
    pub fn remember(&self, questions: &[String]) {
        let mut seen = self.seen.lock().expect("not poisoned");
        seen.extend(questions.iter().map(|q| normalize(q)));
    }

    /// Picks up to `want - already.len()` new questions from `answer`. `already` are the chunk's
    /// questions from an earlier request, so a retry that repeats them is not counted twice.
    pub fn select(&self, answer: &str, chunk: &str, want: usize, already: &[String]) -> Selection {
        let mut stats = FilterStats::default();
        let mut in_chunk: HashSet<String> = already.iter().map(|q| normalize(q)).collect();
        let mut kept = Vec::new();
        let mut candidates = Vec::new();
        for line in parse_answer(answer) {
            match line {
                Line::Preamble(_) => stats.preamble += 1,
                Line::NotAQuestion(_) => stats.not_a_question += 1,
                Line::Question(q) if words(&q).len() < self.config.min_words => stats.too_short += 1,
                Line::Question(q) if self.config.copies_chunk(&q, chunk) => stats.copied_from_chunk += 1,
                Line::Question(q) => candidates.push(q),
            }
        }
        // One lock for the whole answer, so two chunks cannot both claim the same question.
        let mut seen = self.seen.lock().expect("not poisoned");
        for q in candidates {
            let key = normalize(&q);
            if !in_chunk.insert(key.clone()) {
                stats.duplicate_in_chunk += 1;
            } else if seen.contains(&key) {
                stats.duplicate_in_corpus += 1;
            } else if already.len() + kept.len() >= want {
                stats.over_limit += 1;
            } else {
                seen.insert(key);
                kept.push(q);
            }
        }
        Selection { questions: kept, stats }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn questions(answer: &str) -> Vec<String> {
        parse_answer(answer)
            .into_iter()
            .filter_map(|l| match l {
                Line::Question(q) => Some(q),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn strips_numbering_bullets_and_labels() {
        let answer = "1. What is ownership in Rust?\n2) Why does the borrow checker exist?\n- How are lifetimes inferred?\n\
                      * When is a value dropped?\nQ1: What does Box do?\nQuestion 2: Which trait enables cloning?\n\
                      **Question 3:** How is Rc different from Arc?\n(4) Where is the heap used?\n\
                      • Who maintains the standard library?\n5.What is a slice?\nQ: What is a trait object?\n\
                      ### Question 6\n\"Why are closures useful?\"";
        assert_eq!(
            questions(answer),
            vec![
                "What is ownership in Rust?",
                "Why does the borrow checker exist?",
                "How are lifetimes inferred?",
                "When is a value dropped?",
                "What does Box do?",
                "Which trait enables cloning?",
                "How is Rc different from Arc?",
                "Where is the heap used?",
                "Who maintains the standard library?",
                "What is a slice?",
                "What is a trait object?",
                "Why are closures useful?",
            ]
        );
    }

    #[test]
    fn numbers_that_are_content_are_kept() {
        assert_eq!(clean_line("1.5 million users chose what?"), "1.5 million users chose what?");
        assert_eq!(clean_line("Quantum states: what are they?"), "Quantum states: what are they?");
        assert_eq!(clean_line("2024 was the year of what?"), "2024 was the year of what?");
    }

    #[test]
    fn preambles_answers_and_remarks_are_not_questions() {
        let answer = "Here are two questions based on the context:\n\nQuestions:\n1. What is a crate?\n\
                      Answer: a compilation unit.\nI hope these questions help!\nThe text is about Rust.\n\
                      Sure! Here you go.\n2. Explain how cargo resolves features.";
        let lines = parse_answer(answer);
        let count = |f: fn(&Line) -> bool| lines.iter().filter(|l| f(l)).count();
        assert_eq!(count(|l| matches!(l, Line::Question(_))), 2, "{lines:?}");
        assert_eq!(count(|l| matches!(l, Line::Preamble(_))), 4, "{lines:?}");
        assert_eq!(count(|l| matches!(l, Line::NotAQuestion(_))), 2, "{lines:?}");
    }

    /// Lines SmolLM2-135M-Instruct wrote through llama.cpp for real documentation chunks.
    #[test]
    fn small_model_chatter_and_labels() {
        assert_eq!(clean_line("The question: \"What is the purpose of a web server?\""), "What is the purpose of a web server?");
        assert_eq!(clean_line("\"What is the purpose of the `curl` command?"), "What is the purpose of the `curl` command?");
        assert_eq!(clean_line("\"Why\" is a word; what does it ask?"), "\"Why\" is a word; what does it ask?");
        let answer = "I'm ready to assist. What's the question you're looking for?\nWhat's your favorite color?\n\
                      The question: \"How does SQLite handle tables?\"";
        assert_eq!(questions(answer), vec!["How does SQLite handle tables?"]);
        let lines = parse_answer(answer);
        assert_eq!(lines.iter().filter(|l| matches!(l, Line::Preamble(_))).count(), 2, "{lines:?}");
    }

    proptest::proptest! {
        /// Any answer text, multi-byte and quote-heavy lines included: no panic, and a kept line
        /// is a trimmed piece of its raw line with the emphasis markers removed.
        #[test]
        fn any_line_cleans_to_a_piece_of_itself(line in "(The question: |Question 1: |[\"“”'`*#>•-]|[0-9]{1,4}[.):]| |é|漢|[a-zA-Z?]{1,6}){0,12}") {
            let cleaned = clean_line(&line);
            proptest::prop_assert_eq!(cleaned.trim(), cleaned.as_str());
            proptest::prop_assert!(line.replace("**", "").replace("__", "").contains(&cleaned), "{:?} -> {:?}", line, cleaned);
            let _ = parse_answer(&format!("{line}\n{line}"));
        }
    }

    #[test]
    fn normalization_ignores_case_punctuation_and_spacing() {
        assert_eq!(normalize("  What IS   ownership?! "), "what is ownership");
        assert_eq!(normalize("what is ownership"), normalize("What is ownership?"));
    }

    #[test]
    fn copies_of_the_chunk_are_detected() {
        let chunk = "The borrow checker enforces that references never outlive the data they point to, and that \
                     mutable references are exclusive at any point in the program.";
        let config = FilterConfig::default();
        // 13 words verbatim.
        assert!(config.copies_chunk(
            "Does the borrow checker enforce that references never outlive the data they point to, and that mutable?",
            chunk
        ));
        // 6 of 7 words in one run.
        assert!(config.copies_chunk("mutable references are exclusive at any point?", chunk));
        assert_eq!(longest_copied_run("What does the borrow checker enforce?", chunk), 3);
        assert!(!config.copies_chunk("What does the borrow checker enforce?", chunk));
        assert!(!config.copies_chunk("Why must mutable references be exclusive?", chunk));
    }

    #[test]
    fn select_counts_every_drop_and_keeps_at_most_the_asked_number() {
        let filter = QuestionFilter::default();
        let chunk = "Cargo is the Rust package manager. It downloads dependencies, compiles packages, makes \
                     distributable packages, and uploads them to crates.io, the Rust community's package registry.";
        let answer = "Here are 3 questions:\n1. What does Cargo do?\n2. what does cargo do\n3. Why?\n\
                      4. It downloads dependencies, compiles packages, makes distributable packages, and uploads them?\n\
                      5. Where does Cargo upload packages?\n6. What is crates.io in relation to the Rust community?\n\
                      Answer: it is a registry.";
        let s = filter.select(answer, chunk, 2, &[]);
        assert_eq!(s.questions, vec!["What does Cargo do?", "Where does Cargo upload packages?"]);
        assert_eq!(
            s.stats,
            FilterStats {
                preamble: 1,
                not_a_question: 1,
                too_short: 1,
                copied_from_chunk: 1,
                duplicate_in_chunk: 1,
                duplicate_in_corpus: 0,
                over_limit: 1,
            }
        );
        assert_eq!(s.stats.total(), 6);

        // Another chunk's answer repeating an accepted question loses it to the first chunk.
        let other = filter.select("1. What does Cargo do?\n2. How does Cargo build a workspace?", "other", 2, &[]);
        assert_eq!(other.questions, vec!["How does Cargo build a workspace?"]);
        assert_eq!(other.stats.duplicate_in_corpus, 1);

        // A retry's answer tops up the chunk without re-counting what it already has.
        let already = vec!["What is a lockfile for?".to_owned()];
        filter.remember(&already);
        let retry = filter.select("1. What is a lockfile for?\n2. When is Cargo.lock updated?", "c", 2, &already);
        assert_eq!(retry.questions, vec!["When is Cargo.lock updated?"]);
        assert_eq!(retry.stats.duplicate_in_chunk, 1);
        assert_eq!(retry.stats.duplicate_in_corpus, 0);
    }
}
