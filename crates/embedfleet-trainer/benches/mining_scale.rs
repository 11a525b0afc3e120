//! Mining at scale on random embeddings: time and peak memory of the guard and the blocked top-k
//! for a large corpus, without a model (`cargo bench -p embedfleet-trainer --bench
//! mining_scale -- [CHUNKS] [QUESTIONS]`, default 100000 and 20000, 384 dimensions). Prints the
//! peak resident memory (VmHWM) before and after, so what mining adds to the embeddings shows.

use embedfleet_core::config::Sampling;
use embedfleet_evaluator::rank::Blocks;
use embedfleet_trainer::mining::{MineSettings, MiningInput, mine_embeddings};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let chunks = args.first().copied().unwrap_or(100_000);
    let questions = args.get(1).copied().unwrap_or(20_000);
    let dim = 384;
    tch::manual_seed(1);
    // Five chunks per document; each question is a noisy copy of its chunk.
    let corpus = Tensor::randn([chunks as i64, dim], (Kind::Float, Device::Cpu));
    let positives: Vec<Vec<usize>> = (0..questions).map(|i| vec![(i * 7919) % chunks]).collect();
    let index = Tensor::from_slice(&positives.iter().map(|p| p[0] as i64).collect::<Vec<_>>());
    let queries = corpus.index_select(0, &index) + Tensor::randn([questions as i64, dim], (Kind::Float, Device::Cpu)) * 0.8;
    let corpus_ids: Vec<String> = (0..chunks).map(|i| format!("d{:012x}-{:04}", i / 5, i % 5)).collect();
    let texts: Vec<String> = (0..chunks).map(|i| format!("chunk {i}")).collect();
    let query_ids: Vec<String> = (0..questions).map(|i| format!("{}-q{i}", corpus_ids[positives[i][0]])).collect();
    let before = peak_rss_mib();
    let started = Instant::now();
    let settings = MineSettings {
        negatives: 5,
        range_min: 0,
        range_max: 50,
        relative_margin: 0.05,
        sampling: Sampling::Top,
        seed: 42,
        query_prompt: None,
        inverse_cloze: false,
    };
    let (query_ids, corpus_ids, texts): (Vec<&str>, Vec<&str>, Vec<&str>) = (
        query_ids.iter().map(String::as_str).collect(),
        corpus_ids.iter().map(String::as_str).collect(),
        texts.iter().map(String::as_str).collect(),
    );
    let input = MiningInput {
        query_ids: &query_ids,
        queries: &queries,
        positives: &positives,
        corpus_ids: &corpus_ids,
        corpus_texts: &texts,
        corpus: &corpus,
    };
    let (negatives, report) = mine_embeddings(&input, &settings, Blocks::default());
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{chunks} chunks x {questions} questions, {dim} dims: mined {} negatives in {seconds:.1} s ({} threads); peak RSS {before:.0} MiB with the embeddings, {:.0} MiB after mining",
        report.negatives,
        tch::get_num_threads(),
        peak_rss_mib()
    );
    println!("dropped: {} same document, {} margin; {} questions short", report.dropped_same_document, report.dropped_margin, report.short);
    assert_eq!(negatives.0.len(), questions);
}
