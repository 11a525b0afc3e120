//! The question prompt: the reference's default, or a user's template read from a file.

use crate::LlmError;
use std::path::Path;

/// LlamaIndex's `DEFAULT_QA_GENERATE_PROMPT_TMPL` (generate_qa_embedding_pairs), character for
/// character, stray closing quote included: users compare our questions with the reference's, and
/// a "fixed" prompt would make different questions.
pub const DEFAULT_TEMPLATE: &str = "Context information is below.\n\n---------------------\n{context_str}\n---------------------\n\nGiven the context information and not prior knowledge.\ngenerate only questions based on the below query.\n\nYou are a Teacher/ Professor. Your task is to setup {num_questions_per_chunk} questions for an upcoming quiz/examination. The questions should be diverse in nature across the document. Restrict the questions to the context information provided.\"\n";

const CONTEXT: &str = "context_str";
const COUNT: &str = "num_questions_per_chunk";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Context,
    Count,
}

/// A parsed template. Placeholders follow Python's `str.format`, which the reference uses, so a
/// template written for LlamaIndex works unchanged: `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate {
    source: String,
    parts: Vec<Part>,
}

impl Default for PromptTemplate {
    fn default() -> Self {
        Self::parse(DEFAULT_TEMPLATE, "the default prompt").expect("the default template is valid")
    }
}

impl PromptTemplate {
    /// Parses `text`; `origin` names it in errors (a path, "the default prompt").
    pub fn parse(text: &str, origin: &str) -> Result<Self, LlmError> {
        let problem = |problem: String| LlmError::Template { origin: origin.to_owned(), problem };
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[i + 1..];
                    let Some(close) = rest.find('}') else {
                        return Err(problem(format!("unclosed '{{' at byte {i}; write '{{{{' for a literal brace")));
                    };
                    let part = match &rest[..close] {
                        CONTEXT => Part::Context,
                        COUNT => Part::Count,
                        other => {
                            return Err(problem(format!(
                                "unknown placeholder {{{other}}}; only {{{CONTEXT}}} and {{{COUNT}}} are filled in \
                                 (write '{{{{' and '}}}}' for literal braces)"
                            )));
                        }
                    };
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                    parts.push(part);
                    // Skip the placeholder's name and its closing brace.
                    while let Some((j, _)) = chars.peek() {
                        if *j > i + 1 + close {
                            break;
                        }
                        chars.next();
                    }
                }
                '}' => return Err(problem(format!("unmatched '}}' at byte {i}; write '}}}}' for a literal brace"))),
                c => literal.push(c),
            }
        }
        parts.push(Part::Text(literal));
        parts.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
        for (name, part) in [(CONTEXT, Part::Context), (COUNT, Part::Count)] {
            if !parts.contains(&part) {
                return Err(problem(format!(
                    "the placeholder {{{name}}} is missing; a template needs both {{{CONTEXT}}} (the chunk's text) \
                     and {{{COUNT}}} (how many questions to ask for)"
                )));
            }
        }
        Ok(Self { source: text.to_owned(), parts })
    }

    pub fn from_file(path: &Path) -> Result<Self, LlmError> {
        let text = std::fs::read_to_string(path).map_err(|source| LlmError::ReadTemplate { path: path.to_owned(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The template as written: part of the cache key, so editing the prompt invalidates old answers.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt for one chunk. The chunk's text is inserted as is, braces and all.
    pub fn render(&self, context: &str, questions: usize) -> String {
        let mut out = String::with_capacity(self.source.len() + context.len());
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Context => out.push_str(context),
                Part::Count => out.push_str(&questions.to_string()),
            }
        }
        out
    }
}

/// What goes before the examples in a prompt.
pub const EXAMPLES_INTRO: &str = "\nThe people who will search this documentation ask questions like these:\n";
/// What follows them: the style to write in.
pub const EXAMPLES_STYLE: &str = "Write the questions the way these people ask: the same length, wording and tone (short, keyword-like, conversational or misspelled where theirs are), not as exam questions. Do not copy these examples; ask about the context above.\n";

/// Queries people really asked (`--example-queries`), shown in each prompt as examples of how they
/// ask (Promptagator's few-shot prompting). Each chunk sees its own seeded sample, so the same seed
/// and chunk give the same prompt, and a run says which examples a chunk saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExampleQueries {
    queries: Vec<String>,
    per_prompt: usize,
    seed: u64,
}

impl ExampleQueries {
    /// `queries` deduplicated in order; `per_prompt` of them go into each prompt.
    pub fn new(queries: impl IntoIterator<Item = String>, per_prompt: usize, seed: u64) -> Result<Self, LlmError> {
        let mut seen = std::collections::HashSet::new();
        let queries: Vec<String> = queries
            .into_iter()
            .map(|q| q.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|q| !q.is_empty() && seen.insert(q.clone()))
            .collect();
        if queries.is_empty() {
            return Err(LlmError::InvalidConfig("--example-queries holds no query".into()));
        }
        if per_prompt == 0 || per_prompt > 50 {
            return Err(LlmError::InvalidConfig(format!("--examples-per-prompt {per_prompt}: use 1 to 50")));
        }
        Ok(Self { queries, per_prompt, seed })
    }

    /// The `query` column of a CSV or JSON Lines file (the query-log format; labels are not needed).
    pub fn from_file(path: &Path, per_prompt: usize, seed: u64) -> Result<Self, LlmError> {
        let rows = embedfleet_core::query_file::read_queries(path, embedfleet_core::query_file::Labels::Ignored)
            .map_err(|e| LlmError::InvalidConfig(format!("--example-queries: {e}")))?;
        Self::new(rows.into_iter().map(|r| r.query), per_prompt, seed)
    }

    /// Every example query, deduplicated.
    pub fn queries(&self) -> &[String] {
        &self.queries
    }

    /// The examples the chunk `chunk_id` sees: `per_prompt` of them (all when there are fewer),
    /// drawn without replacement by a generator seeded with the seed and the chunk's id.
    pub fn for_chunk(&self, chunk_id: &str) -> Vec<&str> {
        use rand::SeedableRng;
        use rand::seq::IndexedRandom;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(embedfleet_core::ids::derive_seed(self.seed, chunk_id));
        self.queries.choose_multiple(&mut rng, self.per_prompt.min(self.queries.len())).map(String::as_str).collect()
    }

    /// The text appended to the prompt of `chunk_id`.
    pub fn block(&self, chunk_id: &str) -> String {
        let mut out = String::from(EXAMPLES_INTRO);
        for q in self.for_chunk(chunk_id) {
            out.push_str("- ");
            out.push_str(q);
            out.push('\n');
        }
        out.push_str(EXAMPLES_STYLE);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_renders_like_python_format() {
        let prompt = PromptTemplate::default().render("Rust has {braces} in code.", 2);
        let expected = "Context information is below.\n\n---------------------\nRust has {braces} in code.\n\
            ---------------------\n\nGiven the context information and not prior knowledge.\n\
            generate only questions based on the below query.\n\nYou are a Teacher/ Professor. Your task is to \
            setup 2 questions for an upcoming quiz/examination. The questions should be diverse in nature across \
            the document. Restrict the questions to the context information provided.\"\n";
        assert_eq!(prompt, expected);
    }

    #[test]
    fn custom_template_with_escaped_braces() {
        let t = PromptTemplate::parse("Q{{json}}: {num_questions_per_chunk} from {context_str}.", "t").unwrap();
        assert_eq!(t.render("text", 3), "Q{json}: 3 from text.");
    }

    #[test]
    fn missing_or_unknown_placeholders_are_clear_errors() {
        let err = PromptTemplate::parse("Ask about {context_str}", "my.txt").unwrap_err().to_string();
        assert!(err.contains("my.txt") && err.contains("{num_questions_per_chunk} is missing"), "{err}");
        let err = PromptTemplate::parse("{num_questions_per_chunk} on {text}", "t").unwrap_err().to_string();
        assert!(err.contains("unknown placeholder {text}"), "{err}");
        assert!(PromptTemplate::parse("{context_str", "t").is_err());
        assert!(PromptTemplate::parse("} {context_str} {num_questions_per_chunk}", "t").is_err());
    }

    #[test]
    fn from_file_reports_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prompt.txt");
        let err = PromptTemplate::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("prompt.txt"), "{err}");
        std::fs::write(&path, "{context_str} -> {num_questions_per_chunk}").unwrap();
        assert_eq!(PromptTemplate::from_file(&path).unwrap().render("c", 1), "c -> 1");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn each_chunk_sees_its_own_seeded_sample_of_the_examples() {
        let queries: Vec<String> = (0..40).map(|i| format!("how do i do thing {i}")).collect();
        let examples = ExampleQueries::new(queries.clone(), 5, 7).unwrap();
        let a = examples.for_chunk("doc-0001");
        assert_eq!(a.len(), 5);
        assert_eq!(a, examples.for_chunk("doc-0001"), "the same chunk and seed give the same examples");
        assert_ne!(a, examples.for_chunk("doc-0002"), "another chunk sees another sample");
        assert_ne!(a, ExampleQueries::new(queries, 5, 8).unwrap().for_chunk("doc-0001"), "another seed, another sample");
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 5, "drawn without replacement");

        let prompt = PromptTemplate::default().render("CONTEXT", 2) + &examples.block("doc-0001");
        assert!(prompt.contains(EXAMPLES_INTRO) && prompt.ends_with(EXAMPLES_STYLE));
        for q in &a {
            assert!(prompt.contains(&format!("- {q}\n")), "{q} in the prompt");
        }
        let few = ExampleQueries::new(["a b".to_owned(), "a  b".to_owned(), " ".to_owned(), "c".to_owned()], 5, 0).unwrap();
        assert_eq!(few.queries(), ["a b", "c"], "deduplicated, blank dropped");
        assert_eq!(few.for_chunk("x").len(), 2, "all of them when there are fewer than asked");
        assert!(ExampleQueries::new(Vec::<String>::new(), 5, 0).is_err());
        assert!(ExampleQueries::new(["q".to_owned()], 0, 0).is_err());
    }
}
