//! Hard-negative mining with a false-negative guard.
//!
//! Every training question is ranked against the training corpus with the evaluator's blocked
//! top-k (memory is one block of scores, never questions × chunks). Among the closest
//! `range_max` chunks that are not the positive, a candidate survives the guard only if it is
//! outside the positive's own document — chunks overlap, so a neighbour holds part of the answer —
//! and scores below `positive × (1 − relative_margin)` (NV-Retriever's TopK-PercPos). The first
//! `range_min` survivors are skipped and N are taken, the closest (`top`) or a seeded choice
//! (`random`). Window, margin and skipping follow sentence-transformers' `mine_hard_negatives`, so
//! the two mine comparable sets; the same-document rule is embedfleet's.

use embedfleet_core::config::{MiningConfig, Sampling, TrainConfig};
use embedfleet_core::ids::derive_seed;
use embedfleet_core::inverse_cloze::cut_questions_from_positives;
use embedfleet_core::{ChunkId, DocId, HardNegatives, QaDataset};
use embedfleet_evaluator::rank::{Blocks, ScoreFunction, top_k};
use embedfleet_model::SentenceEncoder;
use indexmap::IndexMap;
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;
use tch::{Kind, Tensor};

/// What mining needs besides the embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct MineSettings {
    pub negatives: usize,
    pub range_min: usize,
    pub range_max: usize,
    pub relative_margin: f64,
    pub sampling: Sampling,
    pub seed: u64,
    /// `--query-prompt` for the questions ([`SentenceEncoder::query_prompt`]); None: the mining
    /// model's own `query` prompt, if any, as its evaluation and training use.
    pub query_prompt: Option<String>,
    /// Embed each passage with its questions cut out (inverse cloze), as training will see it, so
    /// the margin is measured against the positive the loss uses rather than one that still holds
    /// the question's words. Chunks with the same text are still told by their whole text.
    pub inverse_cloze: bool,
}

impl MineSettings {
    /// From the shared flags; `negatives` is the count asked for.
    pub fn new(config: &MiningConfig, negatives: usize) -> Self {
        Self {
            negatives,
            range_min: config.range_min,
            range_max: config.range_max,
            relative_margin: config.relative_margin,
            sampling: config.sampling,
            seed: config.mining_seed,
            query_prompt: None,
            inverse_cloze: false,
        }
    }

    /// For training with `config`: its mining flags, its query prompt, and its passages.
    pub fn for_training(config: &TrainConfig, negatives: usize) -> Self {
        Self {
            query_prompt: config.prompt.query_prompt.clone(),
            inverse_cloze: config.cloze.inverse_cloze,
            ..Self::new(&config.mining, negatives)
        }
    }

    pub fn with_query_prompt(mut self, setting: Option<&str>) -> Self {
        self.query_prompt = setting.map(str::to_owned);
        self
    }
}

/// Why the guard turned a candidate down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// One of the question's own relevant chunks, or a chunk with the same text.
    Positive,
    /// Another chunk of the positive's document.
    SameDocument,
    /// Scores too close to the positive to be sure it is not another answer.
    Margin,
}

/// The false-negative guard of one question.
#[derive(Debug, Clone)]
pub struct Guard {
    positives: Vec<String>,
    documents: Vec<DocId>,
    threshold: f64,
}

impl Guard {
    /// `positive_scores`: the question's score with each of its positives. With several positives
    /// the lowest one sets the bar, as in sentence-transformers: the safer side.
    pub fn new(positives: &[&str], positive_scores: &[f32], relative_margin: f64) -> Self {
        let lowest = positive_scores.iter().copied().fold(f32::INFINITY, f32::min) as f64;
        Self {
            positives: positives.iter().map(|p| (*p).to_owned()).collect(),
            documents: positives.iter().filter_map(|p| ChunkId::from(*p).doc_id()).collect(),
            threshold: lowest * (1.0 - relative_margin),
        }
    }

    /// Whether any positive's document is known (ids of embedfleet's shape, `d<hex>-NNNN`); when
    /// none is, the same-document rule cannot apply.
    pub fn knows_documents(&self) -> bool {
        !self.documents.is_empty()
    }

    pub fn judge(&self, candidate: &str, score: f32) -> Result<(), Rejection> {
        if self.positives.iter().any(|p| p == candidate) {
            return Err(Rejection::Positive);
        }
        if let Some(doc) = ChunkId::from(candidate).doc_id()
            && self.documents.contains(&doc)
        {
            return Err(Rejection::SameDocument);
        }
        if (score as f64) < self.threshold { Ok(()) } else { Err(Rejection::Margin) }
    }
}

/// What the guard dropped and what was written, for the user and the note.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MiningReport {
    pub queries: usize,
    pub corpus: usize,
    /// Candidates looked at: the window of `range_max` per question.
    pub candidates: usize,
    pub dropped_same_document: usize,
    pub dropped_margin: usize,
    /// Chunks whose text equals a positive's, left out with the positives.
    pub duplicates_of_positive: usize,
    /// Survivors passed over by `--range-min`.
    pub skipped_range_min: usize,
    pub negatives: usize,
    /// Questions that got fewer than asked, and none at all.
    pub short: usize,
    pub empty: usize,
    /// Questions whose positive ids carry no document (not embedfleet's `d<hex>-NNNN`).
    pub without_document: usize,
    /// Questions cut out of their passages before the passages were embedded (inverse cloze).
    pub cut_from_passages: usize,
    pub embed_seconds: f64,
    pub search_seconds: f64,
}

impl MiningReport {
    /// A few lines for the terminal.
    pub fn summary(&self, asked: usize) -> String {
        let mut s = format!(
            "{} negatives for {} questions over {} chunks ({} asked per question); of {} candidates the guard dropped {} of the positive's own document and {} within the margin",
            self.negatives, self.queries, self.corpus, asked, self.candidates, self.dropped_same_document, self.dropped_margin
        );
        if self.cut_from_passages > 0 {
            s.push_str(&format!("; passages embedded as training sees them, {} questions cut out (inverse cloze)", self.cut_from_passages));
        }
        if self.duplicates_of_positive > 0 {
            s.push_str(&format!("; {} chunks repeat a positive's text and were left out with it", self.duplicates_of_positive));
        }
        if self.short > 0 {
            s.push_str(&format!(
                "\n{} questions got fewer than {asked} ({} none); widen --range-max or lower --relative-margin for more",
                self.short, self.empty
            ));
        }
        if self.without_document > 0 {
            s.push_str(&format!(
                "\n{} questions' chunk ids name no document, so the same-document rule could not apply to them",
                self.without_document
            ));
        }
        s
    }
}

/// The training set as mining sees it: queries with at least one relevant chunk, in file order.
struct Problem<'a> {
    query_ids: Vec<&'a str>,
    queries: Vec<&'a str>,
    positives: Vec<Vec<usize>>,
    corpus_ids: Vec<&'a str>,
    corpus: Vec<&'a str>,
}

impl<'a> Problem<'a> {
    fn new(dataset: &'a QaDataset) -> Self {
        let corpus_ids: Vec<&str> = dataset.corpus.keys().map(String::as_str).collect();
        let index: HashMap<&str, usize> = corpus_ids.iter().enumerate().map(|(i, c)| (*c, i)).collect();
        let mut p = Problem {
            query_ids: Vec::new(),
            queries: Vec::new(),
            positives: Vec::new(),
            corpus_ids,
            corpus: dataset.corpus.values().map(String::as_str).collect(),
        };
        for (qid, text) in &dataset.queries {
            let positives: Vec<usize> =
                dataset.relevant_docs.get(qid).into_iter().flatten().filter_map(|c| index.get(c.as_str()).copied()).collect();
            if !positives.is_empty() {
                p.query_ids.push(qid.as_str());
                p.queries.push(text.as_str());
                p.positives.push(positives);
            }
        }
        p
    }
}

/// Embeds the training set with `model` (each passage as [`MineSettings::inverse_cloze`] says) and
/// mines; the negatives come back in query order.
pub fn mine(
    model: &SentenceEncoder,
    dataset: &QaDataset,
    settings: &MineSettings,
    batch_size: usize,
) -> Result<(HardNegatives, MiningReport), embedfleet_model::ModelError> {
    let problem = Problem::new(dataset);
    let started = Instant::now();
    let prompt = model.query_prompt(settings.query_prompt.as_deref());
    let queries = model.encode(&problem.queries, batch_size, prompt.as_deref())?;
    // Same ids in the same order: only the texts that are embedded change.
    let cut = settings.inverse_cloze.then(|| cut_questions_from_positives(dataset));
    let passages: Vec<&str> = match &cut {
        Some((view, _)) => view.corpus.values().map(String::as_str).collect(),
        None => problem.corpus.clone(),
    };
    let corpus = model.encode(&passages, batch_size, None)?;
    let embed_seconds = started.elapsed().as_secs_f64();
    let input = MiningInput {
        query_ids: &problem.query_ids,
        queries: &queries,
        positives: &problem.positives,
        corpus_ids: &problem.corpus_ids,
        corpus_texts: &problem.corpus,
        corpus: &corpus,
    };
    let (negatives, mut report) = mine_embeddings(&input, settings, Blocks::default());
    report.embed_seconds = embed_seconds;
    report.cut_from_passages = cut.map_or(0, |(_, cuts)| cuts.cut);
    Ok((negatives, report))
}

/// What mining searches, embedded: the questions and the corpus.
#[derive(Clone, Copy)]
pub struct MiningInput<'a> {
    pub query_ids: &'a [&'a str],
    /// `[queries, dim]`.
    pub queries: &'a Tensor,
    /// `positives[i]`: query i's relevant chunks, as corpus indices.
    pub positives: &'a [Vec<usize>],
    pub corpus_ids: &'a [&'a str],
    /// The chunks' texts: a chunk that repeats a positive's text under another id is the positive,
    /// whatever its id.
    pub corpus_texts: &'a [&'a str],
    /// `[corpus, dim]`.
    pub corpus: &'a Tensor,
}

/// Mining on fixed embeddings: the pure part, for tests and the benchmark.
pub fn mine_embeddings(input: &MiningInput<'_>, settings: &MineSettings, blocks: Blocks) -> (HardNegatives, MiningReport) {
    let MiningInput { query_ids, queries, positives, corpus_ids, corpus_texts, corpus } = *input;
    let started = Instant::now();
    let _guard = tch::no_grad_guard();
    // Cosine as sentence-transformers mines: normalise once, then dot products.
    let normalize = |x: &Tensor| x.to_kind(Kind::Float) / x.to_kind(Kind::Float).norm_scalaropt_dim(2.0, 1, true).clamp_min(1e-12);
    let (q, c) = (normalize(queries), normalize(corpus));
    // The first chunk with each text stands for all chunks with it.
    let mut first_with: HashMap<&str, usize> = HashMap::new();
    let canonical: Vec<usize> = corpus_texts.iter().enumerate().map(|(i, t)| *first_with.entry(t).or_insert(i)).collect();
    let mut same_text: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, &first) in canonical.iter().enumerate() {
        same_text.entry(first).or_default().push(i);
    }
    // Each question's positives and every chunk with a positive's text.
    let excluded: Vec<Vec<usize>> = positives
        .iter()
        .map(|pos| {
            let mut all: Vec<usize> = pos.iter().flat_map(|&p| same_text[&canonical[p]].iter().copied()).collect();
            all.sort_unstable();
            all.dedup();
            all
        })
        .collect();
    let most_excluded = excluded.iter().map(Vec::len).max().unwrap_or(0);
    let hits = top_k(&q, &c, corpus_ids, ScoreFunction::Dot, settings.range_max + most_excluded, blocks);
    let positive_scores = pair_scores(&q, &c, positives);

    let mut report = MiningReport { queries: query_ids.len(), corpus: corpus_ids.len(), ..Default::default() };
    let mut out = IndexMap::with_capacity(query_ids.len());
    for (i, qid) in query_ids.iter().enumerate() {
        let pos_ids: Vec<&str> = positives[i].iter().map(|&p| corpus_ids[p]).collect();
        let guard = Guard::new(&pos_ids, &positive_scores[i], settings.relative_margin);
        if !guard.knows_documents() {
            report.without_document += 1;
        }
        report.duplicates_of_positive += excluded[i].len().saturating_sub(positives[i].len());
        let window = hits[i].iter().filter(|h| excluded[i].binary_search(&h.corpus_index).is_err()).take(settings.range_max);
        let mut survivors = Vec::new();
        for hit in window {
            report.candidates += 1;
            match guard.judge(corpus_ids[hit.corpus_index], hit.score as f32) {
                Ok(()) => survivors.push(hit.corpus_index),
                Err(Rejection::SameDocument) => report.dropped_same_document += 1,
                Err(Rejection::Margin) => report.dropped_margin += 1,
                Err(Rejection::Positive) => {}
            }
        }
        let skipped = survivors.len().min(settings.range_min);
        report.skipped_range_min += skipped;
        let pool = &survivors[skipped..];
        let chosen: Vec<usize> = match settings.sampling {
            Sampling::Top => pool.iter().take(settings.negatives).copied().collect(),
            Sampling::Random => {
                // One stream per question, so the choice does not depend on the order or the others.
                let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(settings.seed, qid));
                let mut picked = sample(&mut rng, pool.len(), settings.negatives.min(pool.len())).into_vec();
                // Closest first, as `top` writes them.
                picked.sort_unstable();
                picked.into_iter().map(|k| pool[k]).collect()
            }
        };
        report.negatives += chosen.len();
        if chosen.len() < settings.negatives {
            report.short += 1;
        }
        if chosen.is_empty() {
            report.empty += 1;
        }
        out.insert((*qid).to_owned(), chosen.into_iter().map(|k| corpus_ids[k].to_owned()).collect());
    }
    report.search_seconds = started.elapsed().as_secs_f64();
    (HardNegatives(out), report)
}

/// Each query's score with each of its positives, from the same normalised vectors as the ranking.
fn pair_scores(q: &Tensor, c: &Tensor, positives: &[Vec<usize>]) -> Vec<Vec<f32>> {
    let rows: Vec<i64> = positives.iter().enumerate().flat_map(|(i, p)| std::iter::repeat_n(i as i64, p.len())).collect();
    let cols: Vec<i64> = positives.iter().flatten().map(|&p| p as i64).collect();
    if rows.is_empty() {
        return vec![Vec::new(); positives.len()];
    }
    let device = q.device();
    let qs = q.index_select(0, &Tensor::from_slice(&rows).to_device(device));
    let cs = c.index_select(0, &Tensor::from_slice(&cols).to_device(device));
    let flat: Vec<f32> = Vec::try_from((qs * cs).sum_dim_intlist(1, false, Kind::Float).to_device(tch::Device::Cpu)).expect("f32 scores");
    let mut it = flat.into_iter();
    positives.iter().map(|p| it.by_ref().take(p.len()).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn settings(negatives: usize) -> MineSettings {
        MineSettings {
            negatives,
            range_min: 0,
            range_max: 10,
            relative_margin: 0.05,
            sampling: Sampling::Top,
            seed: 7,
            query_prompt: None,
            inverse_cloze: false,
        }
    }

    #[test]
    fn the_guard_refuses_the_positive_its_document_and_the_margin() {
        let guard = Guard::new(&["d00000000000a-0003"], &[0.80], 0.05);
        assert!(guard.knows_documents());
        assert_eq!(guard.judge("d00000000000a-0003", 0.1), Err(Rejection::Positive));
        // The overlapping neighbours of the positive, however low they score.
        assert_eq!(guard.judge("d00000000000a-0002", 0.1), Err(Rejection::SameDocument));
        assert_eq!(guard.judge("d00000000000a-0004", 0.79), Err(Rejection::SameDocument));
        // 0.80 × 0.95 = 0.76: below it is kept, at or above is not.
        assert_eq!(guard.judge("d00000000000b-0000", 0.7599), Ok(()));
        assert_eq!(guard.judge("d00000000000b-0000", 0.7601), Err(Rejection::Margin));
        assert_eq!(guard.judge("d00000000000b-0000", 0.85), Err(Rejection::Margin));
        // Margin 0: anything strictly below the positive.
        let zero = Guard::new(&["d00000000000a-0003"], &[0.5], 0.0);
        assert_eq!(zero.judge("d00000000000c-0001", 0.4999), Ok(()));
        assert_eq!(zero.judge("d00000000000c-0001", 0.5), Err(Rejection::Margin));
        // Several positives: the lowest sets the bar, and every positive's document is off limits.
        let two = Guard::new(&["d00000000000a-0003", "d00000000000e-0000"], &[0.9, 0.6], 0.1);
        assert_eq!(two.judge("d00000000000b-0000", 0.55), Err(Rejection::Margin));
        assert_eq!(two.judge("d00000000000b-0000", 0.53), Ok(()));
        assert_eq!(two.judge("d00000000000e-0007", 0.1), Err(Rejection::SameDocument));
        // Ids without a document (the reference's uuids): only the margin applies.
        let uuid = Guard::new(&["node-1"], &[0.8], 0.05);
        assert!(!uuid.knows_documents());
        assert_eq!(uuid.judge("node-2", 0.5), Ok(()));
    }

    /// Four documents of three chunks, one question per chunk near its chunk.
    fn toy(seed: u64) -> (Vec<String>, Tensor, Vec<Vec<usize>>, Vec<String>, Tensor) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let corpus_ids: Vec<String> = (0..4).flat_map(|d| (0..3).map(move |k| format!("d00000000000{d}-000{k}"))).collect();
        let dim = 8;
        let corpus: Vec<f32> = (0..corpus_ids.len() * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let corpus = Tensor::from_slice(&corpus).view([corpus_ids.len() as i64, dim as i64]);
        let noise: Vec<f32> = (0..corpus_ids.len() * dim).map(|_| rng.random_range(-0.3..0.3)).collect();
        let queries = &corpus + Tensor::from_slice(&noise).view([corpus_ids.len() as i64, dim as i64]);
        let query_ids: Vec<String> = corpus_ids.iter().map(|c| format!("{c}-q0")).collect();
        let positives: Vec<Vec<usize>> = (0..corpus_ids.len()).map(|i| vec![i]).collect();
        (query_ids, queries, positives, corpus_ids, corpus)
    }

    fn run(s: &MineSettings, blocks: Blocks, seed: u64) -> (HardNegatives, MiningReport, Tensor, Tensor, Vec<String>) {
        let (qids, q, pos, cids, c) = toy(seed);
        let texts: Vec<String> = cids.iter().map(|c| format!("text of {c}")).collect();
        let (qr, cr): (Vec<&str>, Vec<&str>) = (qids.iter().map(String::as_str).collect(), cids.iter().map(String::as_str).collect());
        let tr: Vec<&str> = texts.iter().map(String::as_str).collect();
        let input = MiningInput { query_ids: &qr, queries: &q, positives: &pos, corpus_ids: &cr, corpus_texts: &tr, corpus: &c };
        let (n, r) = mine_embeddings(&input, s, blocks);
        (n, r, q, c, cids)
    }

    #[test]
    fn mined_negatives_obey_the_guard_and_match_a_brute_force() {
        for seed in 0..5 {
            let s = MineSettings { negatives: 3, relative_margin: 0.1, ..settings(3) };
            let (mined, report, q, c, cids) = run(&s, Blocks { corpus: 5, queries: 3 }, seed);
            // The brute force: the whole score matrix, sorted, filtered by hand.
            let norm = |x: &Tensor| x / x.norm_scalaropt_dim(2.0, 1, true);
            let scores: Vec<Vec<f32>> = Vec::try_from(norm(&q).matmul(&norm(&c).transpose(0, 1))).unwrap();
            let mut dropped = (0, 0);
            for (i, row) in scores.iter().enumerate() {
                let mut order: Vec<usize> = (0..row.len()).filter(|&j| j != i).collect();
                order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(cids[a].cmp(&cids[b])));
                let doc = |j: usize| cids[j].rsplit_once('-').unwrap().0.to_owned();
                // Every candidate of the window is judged (and counted); the first three survive.
                let survivors: Vec<usize> = order
                    .iter()
                    .take(s.range_max)
                    .copied()
                    .filter(|&j| {
                        let same = doc(j) == doc(i);
                        let margin = row[j] as f64 >= row[i] as f64 * 0.9;
                        dropped.0 += same as usize;
                        dropped.1 += (!same && margin) as usize;
                        !same && !margin
                    })
                    .collect();
                let expected: Vec<String> = survivors.iter().take(3).map(|&j| cids[j].clone()).collect();
                assert_eq!(mined.0[&format!("{}-q0", cids[i])], expected, "seed {seed} query {i}");
            }
            assert_eq!((report.dropped_same_document, report.dropped_margin), dropped, "seed {seed}");
            assert_eq!(report.candidates, 12 * 10, "a window of range_max per question");
            assert!(report.dropped_same_document >= 12, "at least one neighbour per chunk is close: {report:?}");
        }
    }

    #[test]
    fn blocked_top_k_equals_the_brute_force_on_random_data() {
        // The evaluator's top-k under small blocks, against sorting the full matrix.
        for seed in 0..10 {
            let mut rng = ChaCha8Rng::seed_from_u64(100 + seed);
            let (nq, nc, dim) = (rng.random_range(1..20), rng.random_range(1..40), 6);
            let mk = |rng: &mut ChaCha8Rng, n: usize| {
                let v: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
                Tensor::from_slice(&v).view([n as i64, dim as i64])
            };
            let (q, c) = (mk(&mut rng, nq), mk(&mut rng, nc));
            let ids: Vec<String> = (0..nc).map(|i| format!("c{i:03}")).collect();
            let idr: Vec<&str> = ids.iter().map(String::as_str).collect();
            let k = rng.random_range(1..12);
            let scores: Vec<Vec<f32>> = Vec::try_from(q.matmul(&c.transpose(0, 1))).unwrap();
            for blocks in [Blocks { corpus: 3, queries: 2 }, Blocks { corpus: 7, queries: 5 }, Blocks::default()] {
                let hits = top_k(&q, &c, &idr, ScoreFunction::Dot, k, blocks);
                for (row, got) in scores.iter().zip(&hits) {
                    let mut order: Vec<usize> = (0..nc).collect();
                    order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(ids[a].cmp(&ids[b])));
                    let want: Vec<usize> = order.into_iter().take(k).collect();
                    assert_eq!(got.iter().map(|h| h.corpus_index).collect::<Vec<_>>(), want, "seed {seed} {blocks:?}");
                }
            }
        }
    }

    #[test]
    fn range_min_skips_survivors_and_random_is_seeded() {
        let base = settings(2);
        let (top, ..) = run(&base, Blocks::default(), 3);
        let skip = MineSettings { range_min: 1, ..base.clone() };
        let (skipped, report, ..) = run(&skip, Blocks::default(), 3);
        let all = MineSettings { negatives: 9, ..base.clone() };
        let (every, ..) = run(&all, Blocks::default(), 3);
        for (qid, negs) in &skipped.0 {
            let e = &every.0[qid];
            let want: &[String] = if e.len() > 1 { &e[1..e.len().min(3)] } else { &[] };
            assert_eq!(negs.as_slice(), want, "{qid}");
            assert_eq!(top.0[qid].as_slice(), &e[..e.len().min(2)]);
        }
        assert!(report.skipped_range_min > 0);

        let random = MineSettings { sampling: Sampling::Random, ..all.clone() };
        let random = MineSettings { negatives: 3, ..random };
        let (a, ..) = run(&random, Blocks::default(), 3);
        let (b, ..) = run(&random, Blocks::default(), 3);
        assert_eq!(a, b, "the same seed picks the same negatives");
        let (other, ..) = run(&MineSettings { seed: 8, ..random.clone() }, Blocks::default(), 3);
        assert_ne!(a, other, "another seed picks others");
        for (qid, negs) in &a.0 {
            // A subset of the survivors, closest first.
            let pool = &every.0[qid];
            let positions: Vec<usize> = negs.iter().map(|n| pool.iter().position(|p| p == n).expect("a survivor")).collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "{qid}: {positions:?}");
        }
    }

    #[test]
    fn a_chunk_repeating_the_positive_text_is_never_a_negative() {
        let (qids, q, pos, cids, c) = toy(1);
        let mut texts: Vec<String> = cids.iter().map(|c| format!("text of {c}")).collect();
        // Chunk 9 (another document) has chunk 0's text.
        texts[9] = texts[0].clone();
        let (qr, cr, tr): (Vec<&str>, Vec<&str>, Vec<&str>) = (
            qids.iter().map(String::as_str).collect(),
            cids.iter().map(String::as_str).collect(),
            texts.iter().map(String::as_str).collect(),
        );
        let s = MineSettings { relative_margin: 0.0, negatives: 9, ..settings(9) };
        let input = MiningInput { query_ids: &qr, queries: &q, positives: &pos, corpus_ids: &cr, corpus_texts: &tr, corpus: &c };
        let (mined, report) = mine_embeddings(&input, &s, Blocks::default());
        assert!(!mined.0[qids[0].as_str()].contains(&cids[9]));
        assert!(!mined.0[qids[9].as_str()].contains(&cids[0]));
        assert_eq!(report.duplicates_of_positive, 2);
    }
}
