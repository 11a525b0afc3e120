//! A report with the shape of a real run: passages from the sample corpus, questions whose right
//! passage moves up, down or nowhere, a training curve, and hostile text (markup in a question, a
//! long unbreakable path in a passage) to check escaping and wrapping.

#![allow(dead_code)]

use embedfleet_core::QaDataset;
use embedfleet_report::{
    DatasetFacts, HitRate, LlmFacts, LogRow, ModelResult, QuestionResult, Retrieved, RunReport, TrainingCurve, TrainingFacts,
};
use indexmap::IndexMap;

pub const QUESTIONS: usize = 60;
pub const HOSTILE_QUESTION: &str = "Does <script>window.__injected = 1</script> & \"quoting\" survive?";

fn passages() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sample-corpus.json");
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut out: Vec<String> = docs
        .iter()
        .flat_map(|d| {
            let words: Vec<&str> = d["content"].as_str().unwrap().split_whitespace().collect();
            words.chunks(60).map(|c| c.join(" ")).collect::<Vec<_>>()
        })
        .take(80)
        .collect();
    out[3] = format!("Logs go to /var/lib/tidewater/{}/segments.log when verbose.", "a".repeat(180));
    out
}

/// Ranks of question `i` under the base and the fine-tuned model.
fn ranks(i: usize) -> (Option<usize>, Option<usize>) {
    match i % 6 {
        0 => (Some(4), Some(1)),
        1 => (Some(1), Some(1)),
        2 => (None, Some(7)),
        3 => (Some(2), Some(5)),
        4 => (Some(9), Some(2)),
        _ => (Some(1), None),
    }
}

fn model(
    name: &str,
    source: &str,
    questions: &[(String, String)],
    corpus: &[String],
    pick: fn(usize) -> Option<usize>,
    shift: f64,
) -> ModelResult {
    let mut results = Vec::new();
    for (i, (qid, right)) in questions.iter().enumerate() {
        let rank = pick(i);
        // The right passage at its rank when that is in the top 3, other passages around it.
        let mut top = Vec::new();
        let mut other = (i * 7 + 1) % corpus.len();
        for r in 1..=3 {
            let id = if rank == Some(r) {
                right.clone()
            } else {
                while format!("chunk-{other}") == *right {
                    other = (other + 1) % corpus.len();
                }
                let id = format!("chunk-{other}");
                other = (other + 5) % corpus.len();
                id
            };
            top.push(Retrieved { corpus_id: id, score: 0.9 - 0.05 * r as f64 });
        }
        // One relevant passage per question: its NDCG@10 is 1/log2(1 + rank) within the top 10.
        let ndcg = Some(rank.filter(|&r| r <= 10).map_or(0.0, |r| 1.0 / (r as f64 + 1.0).log2()));
        results.push(QuestionResult { query_id: qid.clone(), rank, top, ndcg });
    }
    let hits = results.iter().filter(|q| q.rank.is_some_and(|r| r <= 5)).count();
    let metrics: IndexMap<String, f64> = [
        "Accuracy@1",
        "Accuracy@3",
        "Accuracy@5",
        "Accuracy@10",
        "Precision@1",
        "Recall@1",
        "Precision@3",
        "Recall@3",
        "Precision@5",
        "Recall@5",
        "Precision@10",
        "Recall@10",
        "MRR@10",
        "NDCG@10",
        "MAP@100",
    ]
    .iter()
    .enumerate()
    .map(|(k, m)| (format!("cosine-{m}"), (0.61 + 0.017 * k as f64 + shift).min(0.99)))
    .collect();
    ModelResult {
        name: name.into(),
        source: source.into(),
        hit_rate: HitRate { k: 5, hits, total: results.len(), rate: hits as f64 / results.len() as f64 },
        metrics,
        questions: results,
        depth: 100,
        step: None,
        ..Default::default()
    }
}

pub fn sample_report() -> RunReport {
    let corpus = passages();
    let mut validation = QaDataset::new();
    for (i, p) in corpus.iter().enumerate() {
        validation.corpus.insert(format!("chunk-{i}"), p.clone());
    }
    let mut questions = Vec::new();
    for i in 0..QUESTIONS {
        let qid = format!("q-{i:03}");
        let right = format!("chunk-{}", (i * 3) % corpus.len());
        let text = if i == 0 {
            HOSTILE_QUESTION.to_owned()
        } else {
            format!(
                "What does the documentation say in passage {i} about {}?",
                corpus[(i * 3) % corpus.len()].split_whitespace().nth(2).unwrap_or("it")
            )
        };
        validation.queries.insert(qid.clone(), text);
        validation.relevant_docs.insert(qid.clone(), vec![right.clone()]);
        questions.push((qid, right));
    }
    let base = model("base", "sentence-transformers/all-MiniLM-L6-v2", &questions, &corpus, |i| ranks(i).0, 0.0);
    let tuned = model(
        "finetuned",
        "/very/long/output/folder/of/a/user/who/likes/deep/paths/exp_finetune/model",
        &questions,
        &corpus,
        |i| ranks(i).1,
        0.061,
    );
    let log: Vec<LogRow> = (1..=48)
        .map(|s| LogRow {
            step: s,
            epoch: (s - 1) / 24,
            loss: 0.9 / (1.0 + s as f64 / 6.0) + 0.2 * ((s * 7919) % 13) as f64 / 13.0,
            lr: 2e-5 * (1.0 - s as f64 / 49.0),
        })
        .collect();
    RunReport {
        title: "all-MiniLM-L6-v2 fine-tuned on examples/sample-corpus.json".into(),
        models: vec![base, tuned],
        validation,
        dataset: Some(DatasetFacts {
            documents: Some(60),
            chunks: 290,
            train_chunks: 232,
            val_chunks: 58,
            train_questions: 464,
            val_questions: 116,
            split_by: "document".into(),
            generator: "llm (gpt-3.5-turbo)".into(),
            dropped: IndexMap::from([("preamble".to_owned(), 12), ("duplicate".to_owned(), 3)]),
            failed_chunks: 1,
            round_trip_examples: Vec::new(),
            llm: Some(LlmFacts {
                model: "gpt-3.5-turbo".into(),
                requests: 291,
                retries: 4,
                rate_limited: 2,
                prompt_tokens: 120_000,
                completion_tokens: 9_000,
                cost_usd: 0.0735,
            }),
        }),
        training: Some(TrainingFacts {
            base_model: "sentence-transformers/all-MiniLM-L6-v2".into(),
            loss: "MultipleNegativesRankingLoss: cosine similarity times 20".into(),
            batch_size: 10,
            epochs: 2,
            steps: 48,
            learning_rate: 2e-5,
            warmup_ratio: 0.1,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            evaluation_steps: 16,
            metric: "cosine-NDCG@10".into(),
            seed: 42,
            precision: "fp32".into(),
            device: "cpu (2 threads)".into(),
            pairs_per_epoch: 464,
            seconds: 81.5,
            pairs_per_second: 11.4,
            best_step: Some(32),
            ..Default::default()
        }),
        curve: Some(TrainingCurve {
            log,
            evaluations: vec![(0, 0.8673), (16, 0.9012), (32, 0.9331), (48, 0.9302)],
            metric: "cosine-NDCG@10".into(),
            best_step: Some(32),
        }),
        files: vec![("model".into(), "out/model".into()), ("results".into(), "out/results".into())],
        spans_found: false,
        query_log: None,
    }
}
