//! The questions behind the numbers: which ones the candidate model answers better or worse than
//! the base, by how much, and the passages each model put first.

use crate::data::{ModelResult, RunReport};

/// One validation question under every model of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionChange<'a> {
    pub query_id: &'a str,
    pub text: &'a str,
    /// The passages that answer it.
    pub relevant: &'a [String],
    /// Rank of the right passage under each model, in the report's model order.
    pub ranks: Vec<Option<usize>>,
    /// Reciprocal rank under the candidate minus under the base: what this question adds to the
    /// change in MRR, so the order of the list is the order of the metric's movement.
    pub gain: f64,
}

/// Questions sorted into better, worse and unchanged, base against candidate.
#[derive(Debug, Clone, Default)]
pub struct Changes<'a> {
    /// Largest gain first.
    pub improved: Vec<QuestionChange<'a>>,
    /// Largest loss first.
    pub worse: Vec<QuestionChange<'a>>,
    pub unchanged: usize,
}

fn reciprocal(rank: Option<usize>) -> f64 {
    rank.map(|r| 1.0 / r as f64).unwrap_or(0.0)
}

/// `a` ranks the right passage higher than `b` (a missing rank is the lowest).
pub fn ranks_better(a: Option<usize>, b: Option<usize>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a < b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Compares the first model (the base) with the last. With fewer than two models nothing changed.
pub fn changes(report: &RunReport) -> Changes<'_> {
    let (Some(base), Some(candidate)) = (report.base(), report.candidate()) else { return Changes::default() };
    let mut out = Changes::default();
    for (i, b) in base.questions.iter().enumerate() {
        // Every model scored the same validation set in the same order; look up by id anyway, so
        // results from different runs of the evaluator cannot be paired wrongly.
        let rank_of = |m: &ModelResult| match m.questions.get(i) {
            Some(q) if q.query_id == b.query_id => q.rank,
            _ => m.questions.iter().find(|q| q.query_id == b.query_id).and_then(|q| q.rank),
        };
        let ranks: Vec<Option<usize>> = report.models.iter().map(rank_of).collect();
        let (before, after) = (b.rank, rank_of(candidate));
        let change = QuestionChange {
            query_id: &b.query_id,
            text: report.validation.queries.get(&b.query_id).map(String::as_str).unwrap_or(""),
            relevant: report.validation.relevant_docs.get(&b.query_id).map(Vec::as_slice).unwrap_or(&[]),
            ranks,
            gain: reciprocal(after) - reciprocal(before),
        };
        if ranks_better(after, before) {
            out.improved.push(change);
        } else if ranks_better(before, after) {
            out.worse.push(change);
        } else {
            out.unchanged += 1;
        }
    }
    out.improved.sort_by(|a, b| b.gain.total_cmp(&a.gain).then_with(|| a.query_id.cmp(b.query_id)));
    out.worse.sort_by(|a, b| a.gain.total_cmp(&b.gain).then_with(|| a.query_id.cmp(b.query_id)));
    out
}

/// The first `max_chars` characters of `text` with runs of whitespace made one space, cut at a
/// word boundary and marked with an ellipsis when something was left out.
pub fn snippet(text: &str, max_chars: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= max_chars {
        return collapsed;
    }
    let cut: String = collapsed.chars().take(max_chars).collect();
    // Back up to the last space unless that would drop most of the snippet (one long word).
    let trimmed = match cut.rfind(' ') {
        Some(i) if i >= cut.len() / 2 => &cut[..i],
        _ => cut.as_str(),
    };
    format!("{}…", trimmed.trim_end_matches(|c: char| c.is_ascii_punctuation() || c == ' '))
}

/// A passage's snippet. A chunk after the first of its document begins `overlap` characters before
/// the previous chunk's end, usually inside a word; the partial word is dropped and an ellipsis
/// says the text goes on from before.
pub fn passage_snippet(chunk_id: &str, text: &str, max_chars: usize) -> String {
    let continues = chunk_id.rsplit_once('-').and_then(|(_, n)| n.parse::<u32>().ok()).is_some_and(|n| n > 0);
    if !continues || !text.starts_with(|c: char| c.is_alphanumeric()) {
        return snippet(text, max_chars);
    }
    match text.char_indices().take(40).find(|(_, c)| c.is_whitespace()) {
        Some((i, _)) => format!("…{}", snippet(&text[i..], max_chars)),
        None => format!("…{}", snippet(text, max_chars)),
    }
}

/// How a rank reads in a table: `1`, or `> 100` when it is beyond the depth searched.
pub fn rank_label(rank: Option<usize>, depth: usize) -> String {
    match (rank, depth) {
        (Some(r), _) => r.to_string(),
        (None, 0) => "not found".into(),
        (None, d) => format!("> {d}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{HitRate, QuestionResult, Retrieved};
    use embedfleet_core::QaDataset;

    fn model(name: &str, ranks: &[(&str, Option<usize>)]) -> ModelResult {
        ModelResult {
            name: name.into(),
            source: name.into(),
            hit_rate: HitRate { k: 5, hits: 0, total: ranks.len(), rate: 0.0 },
            metrics: Default::default(),
            questions: ranks
                .iter()
                .map(|(q, r)| QuestionResult {
                    query_id: (*q).into(),
                    rank: *r,
                    top: vec![Retrieved { corpus_id: "c".into(), score: 0.5 }],
                    ndcg: None,
                })
                .collect(),
            depth: 100,
            step: None,
            ..Default::default()
        }
    }

    fn report(models: Vec<ModelResult>) -> RunReport {
        let mut validation = QaDataset::new();
        for q in ["a", "b", "c", "d", "e", "f"] {
            validation.queries.insert(q.into(), format!("question {q}?"));
            validation.relevant_docs.insert(q.into(), vec![format!("chunk-{q}")]);
        }
        RunReport { title: "t".into(), models, validation, ..Default::default() }
    }

    #[test]
    fn better_and_worse_follow_the_rank_of_the_right_passage() {
        let base = model("base", &[("a", Some(3)), ("b", Some(1)), ("c", None), ("d", Some(2)), ("e", Some(4)), ("f", None)]);
        let tuned = model("tuned", &[("a", Some(1)), ("b", Some(1)), ("c", Some(50)), ("d", Some(5)), ("e", None), ("f", None)]);
        let r = report(vec![base, tuned]);
        let c = changes(&r);
        let ids = |v: &[QuestionChange]| v.iter().map(|q| q.query_id.to_owned()).collect::<Vec<_>>();
        // a: 1/1 - 1/3 = 0.667 gains more than c: 1/50 - 0 = 0.02.
        assert_eq!(ids(&c.improved), ["a", "c"]);
        // e drops out entirely (-0.25), d falls from 2 to 5 (-0.3): d lost more.
        assert_eq!(ids(&c.worse), ["d", "e"]);
        assert_eq!(c.unchanged, 2, "b (1 → 1) and f (missing both times)");
        assert_eq!(c.improved[0].ranks, [Some(3), Some(1)]);
        assert!((c.improved[0].gain - (1.0 - 1.0 / 3.0)).abs() < 1e-12);
        assert_eq!(c.worse[1].ranks, [Some(4), None]);
        assert_eq!(c.improved[0].text, "question a?");
        assert_eq!(c.improved[0].relevant, ["chunk-a".to_owned()]);
    }

    #[test]
    fn the_middle_model_is_shown_but_the_last_decides() {
        let r = report(vec![model("base", &[("a", Some(2))]), model("other", &[("a", Some(9))]), model("tuned", &[("a", Some(1))])]);
        let c = changes(&r);
        assert_eq!(c.improved.len(), 1);
        assert_eq!(c.improved[0].ranks, [Some(2), Some(9), Some(1)]);
    }

    #[test]
    fn ranks_are_matched_by_question_id_not_position() {
        let r = report(vec![model("base", &[("a", Some(2)), ("b", Some(1))]), model("tuned", &[("b", Some(3)), ("a", Some(1))])]);
        let c = changes(&r);
        assert_eq!(c.improved[0].query_id, "a");
        assert_eq!(c.improved[0].ranks, [Some(2), Some(1)]);
        assert_eq!(c.worse[0].query_id, "b");
        assert_eq!(c.worse[0].ranks, [Some(1), Some(3)]);
    }

    #[test]
    fn one_model_has_nothing_to_compare() {
        let r = report(vec![model("base", &[("a", Some(2))])]);
        let c = changes(&r);
        assert!(c.improved.is_empty() && c.worse.is_empty());
        assert_eq!(c.unchanged, 0);
    }

    #[test]
    fn a_continuation_chunk_loses_its_partial_first_word() {
        assert_eq!(passage_snippet("d0123456789ab-0003", "tus: firing, labels", 50), "…firing, labels");
        assert_eq!(
            passage_snippet("d0123456789ab-0000", "tus: firing, labels", 50),
            "tus: firing, labels",
            "a first chunk starts its document"
        );
        assert_eq!(
            passage_snippet("d0123456789ab-0002", "\"firing\" now", 50),
            "\"firing\" now",
            "it starts at punctuation, not inside a word"
        );
        assert_eq!(passage_snippet("llama-index-uuid", "tus: firing", 50), "tus: firing", "ids without a chunk number are left alone");
        assert_eq!(passage_snippet("d0123456789ab-0001", "éé fin", 50), "…fin");
    }

    #[test]
    fn snippets_of_any_text_never_panic_and_stay_short() {
        // Multi-byte letters, digits, punctuation and every kind of white space, in seeded random
        // order: the cuts must land on character boundaries whatever the text.
        let alphabet: Vec<char> = "aZ9-.,)\"\u{a0}\u{3000} \n\t\u{e9}\u{4e2d}\u{1f600}\u{0301}\u{5d0}".chars().collect();
        let mut state: u64 = 20261201;
        for _ in 0..3000 {
            let mut next = || {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) as usize
            };
            let len = next() % 120;
            let text: String = (0..len).map(|_| alphabet[next() % alphabet.len()]).collect();
            let id = format!("d0123456789ab-{:04}", next() % 3);
            let max = next() % 60;
            let out = passage_snippet(&id, &text, max);
            assert!(out.chars().count() <= max + 2, "{text:?} → {out:?}");
        }
    }

    #[test]
    fn snippets_collapse_whitespace_and_cut_at_a_word() {
        assert_eq!(snippet("short\n\n text", 50), "short text");
        assert_eq!(snippet("the quick brown fox jumps over the lazy dog", 20), "the quick brown fox…");
        assert_eq!(snippet("word, another, third", 16), "word, another…");
        // One long word is cut inside, and multi-byte characters are never split.
        assert_eq!(snippet("ééééééééééééééé", 5), "ééééé…");
        assert_eq!(snippet("", 5), "");
    }

    #[test]
    fn ranks_read_plainly() {
        assert_eq!(rank_label(Some(3), 100), "3");
        assert_eq!(rank_label(None, 100), "> 100");
        assert_eq!(rank_label(None, 0), "not found");
        assert!(ranks_better(Some(1), None));
        assert!(!ranks_better(None, None));
        assert!(!ranks_better(Some(2), Some(2)));
    }
}
