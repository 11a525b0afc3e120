//! `report.html`: one self-contained page (styles, charts and a few lines of script inline, nothing
//! fetched), readable with scripts off, that answers "should this model go into production?".

use crate::charts::dims::{ndcg_at, scored_dims};
use crate::charts::{dims_chart, metrics_chart, training_chart};
use crate::data::{DatasetFacts, ModelResult, RunReport, TrainingFacts};
use crate::questions::{QuestionChange, changes, passage_snippet, rank_label};
use crate::stats::Difference;
use crate::summary::{all_comparisons, headline_columns, headline_values, verdict};
use crate::svg::escape;
use std::fmt::Write as _;

/// How many questions each list shows; `per_query.jsonl` has all of them.
pub const QUESTIONS_SHOWN: usize = 25;
/// Passages shown per model and question.
pub const PASSAGES_SHOWN: usize = 3;
const SNIPPET_CHARS: usize = 180;

const STYLE: &str = r#"
*{box-sizing:border-box}
[hidden]{display:none!important}
body{margin:0;background:#f6f8fa;color:#1f2328;font:15px/1.5 system-ui,-apple-system,"Segoe UI","Liberation Sans",Arial,sans-serif}
main{max-width:1160px;margin:0 auto;padding:24px 24px 48px}
section,header{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:18px 22px;margin:0 0 18px}
h1{font-size:26px;margin:2px 0 8px;overflow-wrap:anywhere}
h2{font-size:19px;margin:0 0 10px}
h3{font-size:16px;margin:18px 0 8px}
h4{font-size:15px;margin:0 0 6px;overflow-wrap:anywhere}
h5{font-size:13px;margin:0 0 4px;color:#59636e}
.kicker{margin:0;color:#59636e;font-size:13px;text-transform:uppercase;letter-spacing:.06em}
.verdict{font-size:18px;font-weight:600;margin:6px 0 0;padding:10px 14px;border-radius:6px}
.verdict.good{background:#dafbe1;color:#116329}
.verdict.bad{background:#ffebe9;color:#a40e26}
.verdict.neutral{background:#f6f8fa;color:#1f2328}
.note{color:#59636e;font-size:14px;margin:0 0 10px}
.caveat{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:8px 10px;color:#3b2e00}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #d8dee4;vertical-align:top}
th{font-size:13px;color:#59636e;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.path,.cid,code{font-family:ui-monospace,"Liberation Mono",Menlo,monospace;font-size:12.5px;overflow-wrap:anywhere;word-break:break-all}
.delta{display:block;font-size:12.5px}
.up{color:#116329}.down{color:#a40e26}.same{color:#59636e}
figure{margin:0}
figure svg{display:block;width:100%;max-width:960px;height:auto}
nav{font-size:14px;margin:10px 0 0;color:#59636e}
nav a{color:#0969da;margin-right:14px}
.filters{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;margin:8px 0 4px}
.filters input[type=search]{flex:1 1 320px;font:inherit;padding:6px 10px;border:1px solid #afb8c1;border-radius:6px}
.q{border:1px solid #d8dee4;border-radius:6px;padding:12px 14px;margin:0 0 12px}
.ranks{margin:0 0 8px;font-size:14px}
.rank{display:inline-block;padding:0 8px;border-radius:10px;background:#eaeef2;margin-right:4px;white-space:nowrap}
.models{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:12px}
.models ol{margin:0;padding-left:22px}
.models li{margin:0 0 6px;padding:4px 6px;border-radius:4px;font-size:13.5px;overflow-wrap:anywhere}
.models li.hit{background:#dafbe1;outline:2px solid #1a7f37}
.badge{display:inline-block;font-size:11.5px;font-weight:700;color:#fff;background:#1a7f37;border-radius:8px;padding:0 6px;margin-left:4px}
.score{color:#59636e;font-size:12px;white-space:nowrap}
.right{margin:8px 0 0;font-size:13.5px;padding:6px 8px;background:#fff8c5;border-radius:4px;overflow-wrap:anywhere}
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:18px}
.kv th{width:44%;color:#1f2328;font-weight:500}
.kv td{overflow-wrap:anywhere}
footer{color:#59636e;font-size:13px;padding:0 4px}
footer ul{margin:4px 0 8px;padding-left:18px}
"#;

/// Shows the filter controls (hidden without scripts) and filters the question cards by text and
/// by kind.
const SCRIPT: &str = r#"
(function () {
  'use strict';
  var box = document.getElementById('q-filters');
  if (!box) { return; }
  box.hidden = false;
  var input = document.getElementById('q-filter');
  var count = document.getElementById('q-count');
  var cards = Array.prototype.slice.call(document.querySelectorAll('article.q'));
  var groups = Array.prototype.slice.call(document.querySelectorAll('.qgroup'));
  function apply() {
    var text = input.value.trim().toLowerCase();
    var checked = document.querySelector('input[name="q-kind"]:checked');
    var kind = checked ? checked.value : 'all';
    var shown = 0;
    cards.forEach(function (card) {
      var ok = (kind === 'all' || card.getAttribute('data-kind') === kind) &&
        (text === '' || card.textContent.toLowerCase().indexOf(text) !== -1);
      card.hidden = !ok;
      if (ok) { shown += 1; }
    });
    groups.forEach(function (group) {
      group.hidden = group.querySelector('article.q:not([hidden])') === null;
    });
    count.textContent = shown + ' of ' + cards.length + ' questions shown';
  }
  input.addEventListener('input', apply);
  Array.prototype.forEach.call(document.querySelectorAll('input[name="q-kind"]'), function (radio) {
    radio.addEventListener('change', apply);
  });
  apply();
})();
"#;

fn fmt4(v: f64) -> String {
    format!("{v:.4}")
}

fn delta_cell(v: f64, base: f64) -> String {
    let d = v - base;
    let class = if d > 5e-5 {
        "up"
    } else if d < -5e-5 {
        "down"
    } else {
        "same"
    };
    format!(r#"<span class="delta {class}">{d:+.4} vs base</span>"#)
}

fn offline_caveat(out: &mut String, report: &RunReport) {
    if report.offline_spans() {
        let _ = write!(out, r#"<p class="note caveat">{}</p>"#, escape(crate::data::OFFLINE_SPANS_CAVEAT));
    }
}

fn headline(out: &mut String, report: &RunReport) {
    let columns = headline_columns(&report.models);
    out.push_str(r#"<section id="headline"><h2>Headline metrics</h2>"#);
    let queries = report.models.first().map(|m| m.hit_rate.total).unwrap_or(0);
    let base_name = escape(report.base().map(|b| b.name.as_str()).unwrap_or("the first model"));
    match &report.query_log {
        Some(log) => {
            let _ = write!(
                out,
                r#"<p class="note" id="query-log">{queries} queries from the log <code>{}</code>, {} chunks of the corpus to find them in. {} of the log's {} queries matched nothing in the corpus and are not scored (listed in <code>{}</code>). Differences are against <b>{base_name}</b>; green is better.</p>"#,
                escape(&log.file),
                report.validation.corpus.len(),
                log.rows.saturating_sub(log.matched),
                log.rows,
                escape(&log.unmatched_file)
            );
        }
        None => {
            let _ = write!(
                out,
                r#"<p class="note">{queries} validation questions, {} passages to find them in. Differences are against <b>{base_name}</b>; green is better.</p>"#,
                report.validation.corpus.len()
            );
        }
    }
    offline_caveat(out, report);
    out.push_str(r#"<table id="headline-table"><thead><tr><th>model</th><th>from</th>"#);
    for c in &columns {
        let _ = write!(out, r#"<th class="num">{}</th>"#, escape(c));
    }
    out.push_str("</tr></thead><tbody>");
    let base = report.base().map(headline_values);
    for (i, m) in report.models.iter().enumerate() {
        let _ = write!(out, r#"<tr data-model="{0}"><td><b>{0}</b></td><td class="path">{1}</td>"#, escape(&m.name), escape(&m.source));
        for ((column, v), b) in columns.iter().zip(headline_values(m)).zip(base.iter().flatten()) {
            match v {
                Some(v) => {
                    let _ = write!(out, r#"<td class="num" data-metric="{}" data-value="{v}">{}"#, escape(column), fmt4(v));
                    if let (true, Some(b)) = (i > 0, b) {
                        out.push_str(&delta_cell(v, *b));
                    }
                    out.push_str("</td>");
                }
                None => out.push_str(r#"<td class="num">-</td>"#),
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    intervals(out, report);
    out.push_str("</section>");
}

/// `10000` as `10,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Each model's difference from the base with its 95 % paired-bootstrap interval, and what the
/// interval supports.
fn intervals(out: &mut String, report: &RunReport) {
    let comparisons = all_comparisons(&report.models);
    if comparisons.is_empty() {
        return;
    }
    let resamples = comparisons[0].interval.resamples;
    let _ = write!(
        out,
        r#"<p class="note">How sure each difference is: a paired bootstrap over the {} questions ({} resamples). An interval that contains 0 is a difference these questions cannot tell from noise.</p><table id="intervals"><thead><tr><th>model</th><th>measure</th><th class="num">base</th><th class="num">model</th><th class="num">difference</th><th class="num">95 % interval</th><th>verdict</th></tr></thead><tbody>"#,
        comparisons[0].interval.questions,
        thousands(resamples)
    );
    for c in &comparisons {
        let class = match c.difference {
            Difference::Better => "up",
            Difference::Worse => "down",
            Difference::NoMeasurableDifference => "same",
        };
        let _ = write!(
            out,
            r#"<tr data-model="{}" data-measure="{}" data-verdict="{}"><td><b>{}</b></td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{:+.4}</td><td class="num">{:+.4} to {:+.4}</td><td class="{class}">{}</td></tr>"#,
            escape(&c.model),
            escape(&c.measure),
            c.difference.as_str(),
            escape(&c.model),
            escape(&c.measure),
            fmt4(c.base_value),
            fmt4(c.value),
            c.interval.mean,
            c.interval.low,
            c.interval.high,
            c.difference.as_str()
        );
    }
    out.push_str("</tbody></table>");
}

fn passages(out: &mut String, report: &RunReport, model: &ModelResult, change: &QuestionChange, rank: Option<usize>) {
    let _ =
        write!(out, r#"<div class="model"><h5>{} · right passage at rank {}</h5><ol>"#, escape(&model.name), rank_label(rank, model.depth));
    let top = model.questions.iter().find(|q| q.query_id == change.query_id).map(|q| q.top.as_slice()).unwrap_or(&[]);
    for hit in top.iter().take(PASSAGES_SHOWN) {
        let right = change.relevant.contains(&hit.corpus_id);
        let text = report.validation.corpus.get(&hit.corpus_id).map(String::as_str).unwrap_or("");
        let _ = write!(
            out,
            r#"<li{}><span class="cid">{}</span> <span class="score">score {:.3}</span>{}<br>{}</li>"#,
            if right { r#" class="hit""# } else { "" },
            escape(&hit.corpus_id),
            hit.score,
            if right { r#"<span class="badge">right passage</span>"# } else { "" },
            escape(&passage_snippet(&hit.corpus_id, text, SNIPPET_CHARS))
        );
    }
    if top.is_empty() {
        out.push_str("<li>(no passages recorded)</li>");
    }
    out.push_str("</ol></div>");
}

fn question_card(out: &mut String, report: &RunReport, change: &QuestionChange, kind: &str) {
    let _ = write!(out, r#"<article class="q" data-kind="{kind}" data-query="{}">"#, escape(change.query_id));
    let _ = write!(out, "<h4>{}</h4>", escape(change.text));
    out.push_str(r#"<p class="ranks">Rank of the right passage: "#);
    for (m, rank) in report.models.iter().zip(&change.ranks) {
        let _ = write!(out, r#"<span class="rank">{} <b>{}</b></span>"#, escape(&m.name), rank_label(*rank, m.depth));
    }
    let _ = write!(out, r#" <span class="cid">{}</span></p><div class="models">"#, escape(change.query_id));
    for (m, rank) in report.models.iter().zip(&change.ranks) {
        passages(out, report, m, change, *rank);
    }
    out.push_str("</div>");
    let shown_everywhere = report.models.iter().zip(&change.ranks).any(|(_, r)| r.is_some_and(|r| r <= PASSAGES_SHOWN));
    if !shown_everywhere {
        for id in change.relevant {
            let text = report.validation.corpus.get(id).map(String::as_str).unwrap_or("");
            let _ = write!(
                out,
                r#"<p class="right"><b>The right passage</b> (in no model's top {PASSAGES_SHOWN}): <span class="cid">{}</span><br>{}</p>"#,
                escape(id),
                escape(&passage_snippet(id, text, SNIPPET_CHARS))
            );
        }
    }
    out.push_str("</article>");
}

fn questions(out: &mut String, report: &RunReport) {
    out.push_str(r#"<section id="questions"><h2>The questions behind the numbers</h2>"#);
    let (Some(base), Some(candidate)) = (report.base(), report.candidate()) else {
        out.push_str(r#"<p class="note">Only one model was evaluated, so no question got better or worse. <code>per_query.jsonl</code> has the rank of each question's passage.</p></section>"#);
        return;
    };
    let c = changes(report);
    let _ = write!(
        out,
        r#"<p id="q-summary">Under <b>{cand}</b>, <b>{}</b> questions find their right passage higher than under <b>{base}</b>, <b>{}</b> lower, and {} at the same rank. The lists show up to {QUESTIONS_SHOWN} of each, biggest change first (by how much each moves MRR); <code>per_query.jsonl</code> has every question.</p>"#,
        c.improved.len(),
        c.worse.len(),
        c.unchanged,
        cand = escape(&candidate.name),
        base = escape(&base.name),
    );
    offline_caveat(out, report);
    out.push_str(
        r#"<div class="filters" id="q-filters" hidden><input type="search" id="q-filter" placeholder="Filter by words in the question or passages" aria-label="Filter questions"><label><input type="radio" name="q-kind" value="all" checked> all</label><label><input type="radio" name="q-kind" value="improved"> improved</label><label><input type="radio" name="q-kind" value="worse"> worse</label><span id="q-count" class="note"></span></div>"#,
    );
    for (kind, title, list) in [("improved", "Improved most", &c.improved), ("worse", "Got worse", &c.worse)] {
        let _ = write!(out, r#"<div class="qgroup" id="{kind}"><h3>{title} ({} of {})</h3>"#, list.len().min(QUESTIONS_SHOWN), list.len());
        if list.is_empty() {
            let _ = write!(out, r#"<p class="note">None.</p>"#);
        }
        for change in list.iter().take(QUESTIONS_SHOWN) {
            question_card(out, report, change, kind);
        }
        out.push_str("</div>");
    }
    out.push_str("</section>");
}

fn row(out: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", escape(key), escape(&value.to_string()));
}

fn dataset_table(out: &mut String, d: &DatasetFacts) {
    out.push_str(r#"<div><h3>Dataset</h3><table class="kv" id="dataset-facts">"#);
    if let Some(n) = d.documents {
        row(out, "documents", n);
    }
    row(out, "chunks", format!("{} (train {}, validation {})", d.chunks, d.train_chunks, d.val_chunks));
    row(out, "questions", format!("{} (train {}, validation {})", d.train_questions + d.val_questions, d.train_questions, d.val_questions));
    let split = match d.split_by.as_str() {
        "document" => "by document: no validation passage shares a document with a training one",
        "chunk" => "by chunk (the reference's way: overlapping chunks of one document can land on both sides)",
        other => other,
    };
    row(out, "split", split);
    row(out, "questions written by", &d.generator);
    let dropped: u64 = d.dropped.values().sum();
    let reasons: Vec<String> = d.dropped.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r} {n}")).collect();
    row(out, "questions dropped", if reasons.is_empty() { "none".to_string() } else { format!("{dropped}: {}", reasons.join(", ")) });
    if !d.round_trip_examples.is_empty() {
        let quoted: Vec<String> = d.round_trip_examples.iter().map(|q| format!("“{q}”")).collect();
        row(out, "dropped by the round trip, e.g.", quoted.join(" · "));
    }
    row(out, "chunks without questions", d.failed_chunks);
    match &d.llm {
        Some(llm) => {
            row(out, "LLM", &llm.model);
            row(out, "LLM requests", format!("{} ({} retries, {} rate-limited)", llm.requests, llm.retries, llm.rate_limited));
            row(out, "tokens", format!("{} prompt + {} completion", llm.prompt_tokens, llm.completion_tokens));
            row(out, "cost", format!("${:.4}", llm.cost_usd));
        }
        None => row(out, "LLM requests, tokens, cost", "none (no LLM was used)"),
    }
    out.push_str("</table></div>");
}

/// `12.3 s`, `4 min 05 s`, `1 h 02 min`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {:02} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{} h {:02} min", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

fn training_table(out: &mut String, t: &TrainingFacts) {
    out.push_str(r#"<div><h3>Training</h3><table class="kv" id="training-facts">"#);
    row(out, "base model", &t.base_model);
    row(out, "loss", &t.loss);
    row(
        out,
        "batch size",
        match t.mini_batch_size {
            Some(m) => format!("{} (GradCache, mini-batches of {m})", t.batch_size),
            None => t.batch_size.to_string(),
        },
    );
    row(out, "epochs", t.epochs);
    row(out, "steps", t.steps);
    row(
        out,
        "learning rate",
        format!("{:e}, warm-up {:.0}% of the steps, weight decay {}", t.learning_rate, t.warmup_ratio * 100.0, t.weight_decay),
    );
    row(out, "evaluation", format!("every {} steps on {}", t.evaluation_steps, t.metric));
    row(
        out,
        "kept checkpoint",
        match t.best_step {
            Some(s) => format!("step {s}"),
            None => "the base model (no checkpoint beat it)".into(),
        },
    );
    if let Some(merge) = &t.merge {
        row(out, "merge with the base", merge);
    }
    row(out, "precision", &t.precision);
    row(out, "device", &t.device);
    row(out, "wall time", duration(t.seconds));
    row(out, "speed", format!("{:.1} pairs/s ({} pairs per epoch)", t.pairs_per_second, t.pairs_per_epoch));
    out.push_str("</table></div>");
}

/// NDCG@10 and the hit rate of every model at each Matryoshka dimension, with the chart.
fn dims_section(out: &mut String, report: &RunReport) {
    let dims = scored_dims(&report.models);
    let Some(svg) = dims_chart(&report.models, "NDCG@10 by embedding dimension") else { return };
    out.push_str(r#"<section id="dims"><h2>Smaller embeddings (Matryoshka)</h2><p class="note">Each model's embeddings cut to their first D dimensions and re-normalised, scored on the same questions: what each smaller index would cost in retrieval quality.</p><table id="dims-table"><thead><tr><th class="num">dimensions</th>"#);
    for m in &report.models {
        let _ = write!(out, r#"<th class="num">{0} NDCG@10</th><th class="num">{0} hit rate@{1}</th>"#, escape(&m.name), m.hit_rate.k);
    }
    out.push_str("</tr></thead><tbody>");
    for dim in dims {
        let _ = write!(out, r#"<tr data-dim="{dim}"><td class="num"><b>{dim}</b></td>"#);
        for m in &report.models {
            let hit = m.dims.iter().find(|d| d.dim == dim).map(|d| d.hit_rate.rate);
            for v in [ndcg_at(m, dim), hit] {
                match v {
                    Some(v) => {
                        let _ = write!(out, r#"<td class="num">{}</td>"#, fmt4(v));
                    }
                    None => out.push_str(r#"<td class="num">-</td>"#),
                }
            }
        }
        out.push_str("</tr>");
    }
    let _ = write!(out, "</tbody></table><figure>{svg}</figure></section>");
}

/// The whole page.
pub fn render(report: &RunReport) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let title = if report.title.is_empty() { "model comparison" } else { &report.title };
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>embedfleet report: {t}</title><link rel="icon" href="data:,"><style>{STYLE}</style></head><body><main>"#,
        t = escape(title)
    );
    let v = verdict(&report.models);
    let class = match v.outcome {
        Some(Difference::Better) => "good",
        Some(Difference::Worse) => "bad",
        _ => "neutral",
    };
    let text = if v.text.is_empty() { "One model was evaluated; there is nothing to compare it with.".to_string() } else { v.text };
    let _ = write!(
        out,
        r##"<header><p class="kicker">embedfleet report</p><h1>{}</h1><p id="verdict" class="verdict {class}">{}</p><nav><a href="#headline">headline</a><a href="#comparison">every metric</a>{}{}<a href="#facts">dataset and training</a><a href="#questions">the questions</a></nav></header>"##,
        escape(title),
        escape(&text),
        if scored_dims(&report.models).is_empty() { "" } else { r##"<a href="#dims">by dimension</a>"## },
        if report.curve.is_some() { r##"<a href="#training">training curves</a>"## } else { "" }
    );
    headline(&mut out, report);

    let chart_title = format!("Retrieval metrics on {} validation questions", report.models.first().map(|m| m.hit_rate.total).unwrap_or(0));
    if let Some(svg) = metrics_chart(&report.models, &chart_title) {
        let _ = write!(out, r#"<section id="comparison"><h2>Every metric</h2><figure>{svg}</figure></section>"#);
    }
    dims_section(&mut out, report);
    if let Some(svg) = report.curve.as_ref().and_then(training_chart) {
        let _ = write!(out, r#"<section id="training"><h2>Training curves</h2><figure>{svg}</figure></section>"#);
    }

    out.push_str(r#"<section id="facts"><h2>Dataset and training</h2>"#);
    if report.dataset.is_none() && report.training.is_none() {
        out.push_str(r#"<p class="note">These models were compared on an existing validation set; the dataset and the training were made elsewhere.</p>"#);
    }
    out.push_str(r#"<div class="facts">"#);
    if let Some(d) = &report.dataset {
        dataset_table(&mut out, d);
    }
    if let Some(t) = &report.training {
        training_table(&mut out, t);
    }
    out.push_str("</div></section>");
    // Last: the long part of the page.
    questions(&mut out, report);
    out.push_str("<footer>");
    if !report.files.is_empty() {
        out.push_str("<ul>");
        for (what, path) in &report.files {
            let _ = write!(out, r#"<li>{}: <span class="path">{}</span></li>"#, escape(what), escape(path));
        }
        out.push_str("</ul>");
    }
    let _ = writeln!(out, "Written by embedfleet {}.</footer></main><script>{SCRIPT}</script></body></html>", crate::EMBEDFLEET_VERSION);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_plainly() {
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(245.0), "4 min 05 s");
        assert_eq!(duration(3720.0), "1 h 02 min");
    }
}
