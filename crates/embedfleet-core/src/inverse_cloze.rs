//! Inverse cloze (Lee, Chang and Toutanova, 2019): a pseudo-query that is a verbatim span of its
//! passage is cut out of that passage before training and validation. A model trained on spans
//! that stay in their passage learns to match words, which the offline generator's spans teach
//! easily and human questions punish; with the span gone, the only way to find the passage is what
//! the rest of it is about. Questions an LLM wrote are not in their passage, so this leaves them be.

use std::ops::Range;

use indexmap::IndexMap;

use crate::dataset::QaDataset;

/// What [`cut_questions_from_positives`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClozeCuts {
    /// (question, passage) pairs whose question was cut out of the passage.
    pub cut: usize,
    /// Pairs whose question is not verbatim in the passage (an LLM's question, say).
    pub not_found: usize,
    /// Pairs left in because cutting them too would empty the passage, which teaches nothing.
    pub left_in: usize,
}

impl ClozeCuts {
    /// Whether most questions were found word for word in their passages: spans of the text, as
    /// the offline generator makes, rather than questions someone wrote.
    pub fn questions_are_spans(&self) -> bool {
        self.cut + self.left_in > self.not_found
    }
}

impl std::fmt::Display for ClozeCuts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "inverse cloze: {} questions cut out of their passages, {} not found verbatim, {} left in (cutting them would empty the passage)",
            self.cut, self.not_found, self.left_in
        )
    }
}

/// The dataset with every question that appears word for word in one of its relevant passages cut
/// out of that passage (whitespace may differ: the offline generator joins words with one space).
/// Every question is looked for in the passage as written, and the union of what was found is cut,
/// so a question that overlaps another one of the same passage goes too. Queries and ids are
/// unchanged.
pub fn cut_questions_from_positives(dataset: &QaDataset) -> (QaDataset, ClozeCuts) {
    let mut cuts = ClozeCuts::default();
    // passage id → the word ranges of its questions, in question order.
    let mut found: IndexMap<&str, Vec<Range<usize>>> = IndexMap::new();
    let mut words_of: IndexMap<&str, Vec<(usize, &str)>> = IndexMap::new();
    for (qid, question) in &dataset.queries {
        let question: Vec<&str> = question.split_whitespace().collect();
        for cid in dataset.relevant_docs.get(qid).into_iter().flatten() {
            let Some(passage) = dataset.corpus.get(cid) else {
                continue;
            };
            let words = words_of.entry(cid.as_str()).or_insert_with(|| word_spans(passage));
            match find_run(words, &question) {
                Some(range) => found.entry(cid.as_str()).or_default().push(range),
                None => cuts.not_found += 1,
            }
        }
    }
    let mut out = dataset.clone();
    for (cid, ranges) in found {
        let words = &words_of[cid];
        let mut covered = vec![false; words.len()];
        for range in ranges {
            let leaves_a_word = covered.iter().enumerate().any(|(i, &c)| !c && !range.contains(&i));
            if !leaves_a_word {
                cuts.left_in += 1;
                continue;
            }
            covered[range].iter_mut().for_each(|c| *c = true);
            cuts.cut += 1;
        }
        out.corpus[cid] = remove_covered_words(&dataset.corpus[cid], words, &covered);
    }
    (out, cuts)
}

/// The whitespace-separated words of `text` with their byte offsets.
fn word_spans(text: &str) -> Vec<(usize, &str)> {
    text.split_whitespace().map(|w| (w.as_ptr() as usize - text.as_ptr() as usize, w)).collect()
}

/// The word range of the first run of `run` in `words`; None when it is not there (or `run` is empty).
fn find_run(words: &[(usize, &str)], run: &[&str]) -> Option<Range<usize>> {
    if run.is_empty() {
        return None;
    }
    let first = words.windows(run.len()).position(|w| w.iter().zip(run).all(|((_, a), b)| a == b))?;
    Some(first..first + run.len())
}

/// `text` with each maximal run of covered words replaced by one space; the text between the
/// words that stay (line breaks, punctuation attached to them) is kept as it was.
fn remove_covered_words(text: &str, words: &[(usize, &str)], covered: &[bool]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied_to = 0;
    let mut i = 0;
    while i < words.len() {
        if !covered[i] {
            i += 1;
            continue;
        }
        let start = words[i].0;
        while i < words.len() && covered[i] {
            i += 1;
        }
        let (last_at, last) = words[i - 1];
        out.push_str(&text[copied_to..start]);
        out.push(' ');
        copied_to = last_at + last.len();
    }
    out.push_str(&text[copied_to..]);
    out
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
            &[("port number for\nthe source", "c1"), ("How do I set the port?", "c1"), ("other words", "c2")],
            &[("c1", "1. The port number\nfor the source origin.\n\n2. The host"), ("c2", "other words")],
        );
        let (cut, cuts) = cut_questions_from_positives(&d);
        assert_eq!(cut.corpus["c1"], "1. The   origin.\n\n2. The host");
        assert_eq!(cut.corpus["c2"], "other words", "a question that is the whole passage stays in");
        assert_eq!(cuts, ClozeCuts { cut: 1, not_found: 1, left_in: 1 });
        assert_eq!(cut.queries, d.queries);
        assert_eq!(cut.relevant_docs, d.relevant_docs);
    }

    #[test]
    fn both_spans_of_one_passage_are_cut() {
        let d = dataset(&[("alpha beta", "c"), ("delta epsilon", "c")], &[("c", "alpha beta gamma delta epsilon zeta")]);
        let (cut, cuts) = cut_questions_from_positives(&d);
        assert_eq!(cut.corpus["c"].split_whitespace().collect::<Vec<_>>(), ["gamma", "zeta"]);
        assert_eq!(cuts.cut, 2);
    }

    #[test]
    fn overlapping_spans_are_cut_as_their_union_found_in_the_passage_as_written() {
        // The offline generator's spans of one chunk often overlap: "c d e" is no longer in the
        // passage once "b c d" is cut, but its words are still there to be matched.
        let d = dataset(&[("b c d", "p"), ("c d e", "p"), ("f", "p")], &[("p", "a b c d e f g")]);
        let (cut, cuts) = cut_questions_from_positives(&d);
        assert_eq!(cut.corpus["p"].split_whitespace().collect::<Vec<_>>(), ["a", "g"]);
        assert_eq!(cuts, ClozeCuts { cut: 3, not_found: 0, left_in: 0 });
    }

    #[test]
    fn a_span_that_would_empty_the_passage_is_left_in() {
        let d = dataset(&[("a b c", "p"), ("b c d", "p")], &[("p", "a b c d")]);
        let (cut, cuts) = cut_questions_from_positives(&d);
        assert_eq!(cut.corpus["p"].split_whitespace().collect::<Vec<_>>(), ["d"]);
        assert_eq!(cuts, ClozeCuts { cut: 1, not_found: 0, left_in: 1 });
    }

    #[test]
    fn a_word_must_match_whole() {
        // "cat" is inside "concatenate" but is not a word of it.
        assert_eq!(find_run(&word_spans("concatenate files"), &["cat"]), None);
        assert_eq!(find_run(&word_spans(""), &["cat"]), None);
        assert_eq!(find_run(&word_spans("cat"), &[]), None);
        assert_eq!(find_run(&word_spans("a cat, a cat"), &["a", "cat"]), Some(2..4));
    }

    proptest! {
        /// Any text (multi-byte, any whitespace) and any choice of its words: the cut never
        /// panics and leaves exactly the words that were not chosen, in order.
        #[test]
        fn cutting_covered_words_keeps_the_rest(text in "[a-zé日 \\n\\t.]{0,80}", mask in proptest::collection::vec(any::<bool>(), 0..40)) {
            let words = word_spans(&text);
            let covered: Vec<bool> = (0..words.len()).map(|i| mask.get(i).copied().unwrap_or(false)).collect();
            let rest = remove_covered_words(&text, &words, &covered);
            let expected: Vec<&str> = words.iter().zip(&covered).filter(|(_, c)| !**c).map(|((_, w), _)| *w).collect();
            prop_assert_eq!(rest.split_whitespace().collect::<Vec<_>>(), expected);
        }

        /// Any run of a text's words is found, at its first occurrence.
        #[test]
        fn a_found_run_is_the_run(text in "[a-zé日 \\n\\t]{0,80}", from in 0usize..20, len in 1usize..6) {
            let words = word_spans(&text);
            prop_assume!(from + len <= words.len());
            let run: Vec<&str> = words[from..from + len].iter().map(|(_, w)| *w).collect();
            let found = find_run(&words, &run).expect("the run is in the text");
            prop_assert!(found.start <= from);
            prop_assert_eq!(words[found].iter().map(|(_, w)| *w).collect::<Vec<_>>(), run);
        }
    }
}
