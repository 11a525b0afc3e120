//! Inverse cloze (Lee, Chang and Toutanova, 2019): a pseudo-query that is a verbatim span of its
//! passage is cut out of that passage before training and validation. A model trained on spans
//! that stay in their passage learns to match words, which the offline generator's spans teach
//! easily and human questions punish; with the span gone, the only way to find the passage is what
//! the rest of it is about. Questions an LLM wrote are not in their passage, so this leaves them be.

use crate::dataset::QaDataset;

/// What [`cut_questions_from_positives`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClozeCuts {
    /// (question, passage) pairs whose question was cut out of the passage.
    pub cut: usize,
    /// Pairs whose question is not (or no longer, after an overlapping cut) verbatim in the passage.
    pub not_found: usize,
    /// Pairs whose question is the whole passage: kept, since an empty passage teaches nothing.
    pub whole_passage: usize,
}

impl std::fmt::Display for ClozeCuts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "inverse cloze: {} questions cut out of their passages, {} not found verbatim, {} left in (the whole passage)",
            self.cut, self.not_found, self.whole_passage
        )
    }
}

/// The dataset with every question that appears word for word in one of its relevant passages cut
/// out of that passage (whitespace may differ: the offline generator joins words with one space).
/// Several questions of one passage are all cut. Queries and ids are unchanged.
pub fn cut_questions_from_positives(dataset: &QaDataset) -> (QaDataset, ClozeCuts) {
    let mut out = dataset.clone();
    let mut cuts = ClozeCuts::default();
    for (qid, question) in &dataset.queries {
        let words: Vec<&str> = question.split_whitespace().collect();
        for cid in dataset.relevant_docs.get(qid).into_iter().flatten() {
            let Some(passage) = out.corpus.get_mut(cid) else {
                continue;
            };
            match remove_word_run(passage, &words) {
                Some(rest) if rest.trim().is_empty() => cuts.whole_passage += 1,
                Some(rest) => {
                    *passage = rest;
                    cuts.cut += 1;
                }
                None => cuts.not_found += 1,
            }
        }
    }
    (out, cuts)
}

/// `text` with the first run of whitespace-separated `words` replaced by one space; None when the
/// run is not there (or `words` is empty).
fn remove_word_run(text: &str, words: &[&str]) -> Option<String> {
    if words.is_empty() {
        return None;
    }
    let spans: Vec<(usize, &str)> = text
        .split_whitespace()
        .map(|w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
        .collect();
    let first = spans
        .windows(words.len())
        .position(|run| run.iter().zip(words).all(|((_, w), q)| w == q))?;
    let (start, _) = spans[first];
    let (last_at, last) = spans[first + words.len() - 1];
    let end = last_at + last.len();
    Some(format!("{} {}", &text[..start], &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dataset(pairs: &[(&str, &str)], passages: &[(&str, &str)]) -> QaDataset {
        let mut d = QaDataset::new();
        for (cid, text) in passages {
            d.corpus.insert((*cid).into(), (*text).into());
        }
        for (i, (question, cid)) in pairs.iter().enumerate() {
            d.queries.insert(format!("q{i}"), (*question).into());
            d.relevant_docs.insert(format!("q{i}"), vec![(*cid).into()]);
        }
        d
    }

    #[test]
    fn a_span_is_cut_across_line_breaks_and_a_question_is_left_alone() {
        let d = dataset(
            &[
                ("port number for\nthe source", "c1"),
                ("How do I set the port?", "c1"),
                ("other words", "c2"),
            ],
            &[
                (
                    "c1",
                    "1. The port number\nfor the source origin.\n\n2. The host",
                ),
                ("c2", "other words"),
            ],
        );
        let (cut, cuts) = cut_questions_from_positives(&d);
        assert_eq!(cut.corpus["c1"], "1. The   origin.\n\n2. The host");
        assert_eq!(
            cut.corpus["c2"], "other words",
            "a question that is the whole passage stays in"
        );
        assert_eq!(
            cuts,
            ClozeCuts {
                cut: 1,
                not_found: 1,
                whole_passage: 1
            }
        );
        assert_eq!(cut.queries, d.queries);
        assert_eq!(cut.relevant_docs, d.relevant_docs);
    }

    #[test]
    fn both_spans_of_one_passage_are_cut() {
        let d = dataset(
            &[("alpha beta", "c"), ("delta epsilon", "c")],
            &[("c", "alpha beta gamma delta epsilon zeta")],
        );
        let (cut, cuts) = cut_questions_from_positives(&d);
        assert_eq!(
            cut.corpus["c"].split_whitespace().collect::<Vec<_>>(),
            ["gamma", "zeta"]
        );
        assert_eq!(cuts.cut, 2);
    }

    #[test]
    fn a_word_must_match_whole() {
        // "cat" is inside "concatenate" but is not a word of it.
        assert_eq!(remove_word_run("concatenate files", &["cat"]), None);
        assert_eq!(remove_word_run("", &["cat"]), None);
        assert_eq!(remove_word_run("cat", &[]), None);
    }

    proptest! {
        /// Any text (multi-byte, any whitespace) and any run of its words: the cut never panics,
        /// keeps the words before and after, and the run's words are gone from where they were.
        #[test]
        fn cutting_a_run_keeps_the_rest(text in "[a-zé日 \\n\\t]{0,80}", from in 0usize..20, len in 1usize..6) {
            let words: Vec<&str> = text.split_whitespace().collect();
            prop_assume!(from + len <= words.len());
            let run = &words[from..from + len];
            let first = words.windows(len).position(|w| w == run).unwrap();
            let rest = remove_word_run(&text, run).expect("the run is in the text");
            let mut expected: Vec<&str> = words[..first].to_vec();
            expected.extend(&words[first + len..]);
            prop_assert_eq!(rest.split_whitespace().collect::<Vec<_>>(), expected);
        }
    }
}
