//! The fleet at the sizes it exists for. For each size, a synthetic scraped site (JSON Lines,
//! about 8,000 characters a page) goes through a local `embedfleet generate` and through a fleet
//! of one coordinator and two offline generators on real nats-server and SeaweedFS, from `submit`
//! to the assembled dataset; the bench prints each stage's time, the run record's size, each
//! process's peak memory, and whether the fleet's dataset is byte for byte the local one.
//! `--train` starts a trainer (all-MiniLM-L6-v2) on the largest run and times its first steps;
//! `--fairness` submits a 50-page run while the largest one is generating.
//!
//! `tools/bench/fleet_scale.sh [--sizes 10000,100000,1000000] [--train] [--fairness]`

#[path = "../tests/fleet/mod.rs"]
mod fleet;

use embedfleet_bus::layout;
use embedfleet_coordinator::{RunRecord, RunState};
use fleet::{Fleet, Worker, minilm_dir, object_sha256, peak_rss, sample, synthetic_site};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// What `/usr/bin/time` says of a command: wall seconds and peak RSS in bytes.
fn timed(fleet: &Fleet, args: &[&str]) -> (f64, u64, String) {
    let report = fleet.dir.path().join("time.txt");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "%e %M", "-o", report.to_str().unwrap()]).arg(env!("CARGO_BIN_EXE_embedfleet")).args(args);
    let o = fleet.command_env(&mut cmd).output().unwrap();
    assert!(o.status.success(), "embedfleet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    let line = std::fs::read_to_string(&report).unwrap();
    let mut parts = line.split_whitespace();
    let seconds: f64 = parts.next().unwrap().parse().unwrap();
    let kb: u64 = parts.next().unwrap().parse().unwrap();
    (seconds, kb * 1024, String::from_utf8_lossy(&o.stdout).into_owned())
}

fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

/// When each stage of a run was first seen, in seconds after submit.
#[derive(Default, Debug)]
struct Stages {
    first_task_done: Option<f64>,
    ingested: Option<f64>,
    generated: Option<f64>,
    assembled: Option<f64>,
    largest_record: usize,
    most_out: usize,
    record: Option<RunRecord>,
}

/// Polls the record (and its raw size in the KV bucket) until `until` holds, adding what it sees
/// to `s`.
async fn follow(
    s: &mut Stages,
    bus: &embedfleet_bus::Bus,
    run: &str,
    started: Instant,
    timeout: Duration,
    until: impl Fn(&RunRecord) -> bool,
) {
    loop {
        if let Ok(Some(entry)) = bus.runs.entry(run).await {
            s.largest_record = s.largest_record.max(entry.value.len());
            if let Ok(r) = serde_json::from_slice::<RunRecord>(&entry.value) {
                let t = started.elapsed().as_secs_f64();
                s.most_out = s.most_out.max(r.outstanding.len());
                if r.tasks_done() > 0 {
                    s.first_task_done.get_or_insert(t);
                }
                if r.ingest.complete {
                    s.ingested.get_or_insert(t);
                }
                if r.state != RunState::Generating {
                    s.generated.get_or_insert(t);
                }
                if matches!(r.state, RunState::Training | RunState::Finalizing | RunState::Done) {
                    s.assembled.get_or_insert(t);
                }
                assert!(r.state != RunState::Failed, "run {run} failed: {:?}", r.error);
                let done = until(&r);
                s.record = Some(r);
                if done {
                    return;
                }
            }
        }
        assert!(started.elapsed() < timeout, "run {run} did not get there in {timeout:?}: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn submit_args<'a>(input: &'a str, run: &'a str, model: &'a str) -> Vec<&'a str> {
    vec!["submit", "--input", input, "--run-id", run, "--generator", "offline", "--model-id", model]
}

/// A 50-page run's time to its first task done and to its dataset.
async fn small_run(fleet: &Fleet, bus: &embedfleet_bus::Bus, run: &str, model: &str) -> (f64, f64) {
    let corpus = fleet.dir.path().join(format!("{run}.jsonl"));
    synthetic_site(&corpus, 50, 7);
    let started = Instant::now();
    let o = fleet.cli(&submit_args(corpus.to_str().unwrap(), run, model));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut s = Stages::default();
    let past_assembly = |r: &RunRecord| r.state != RunState::Generating && r.state != RunState::Assembling;
    follow(&mut s, bus, run, started, Duration::from_secs(600), past_assembly).await;
    (s.first_task_done.unwrap(), s.assembled.unwrap())
}

async fn one_size(chunks: u64, train: bool, fairness: bool) {
    let mut fleet = Fleet::start();
    let pages = (chunks / 10).max(2) as usize;
    let corpus = fleet.dir.path().join("site.jsonl");
    let bytes = synthetic_site(&corpus, pages, 20261207);
    let input = corpus.to_str().unwrap().to_owned();

    // Local `generate` on the same corpus, the same binary.
    let local = fleet.dir.path().join("local");
    let (local_s, local_rss, local_out) =
        timed(&fleet, &["generate", "--input", &input, "--output-dir", local.to_str().unwrap(), "--generator", "offline"]);

    let mut coordinator = fleet.spawn("embedfleet-coordinator", &[]);
    let generators: Vec<Worker> = (0..2).map(|_| fleet.spawn("embedfleet-generator", &[("EMBEDFLEET_PARALLEL", "2".into())])).collect();
    for w in std::iter::once(&coordinator).chain(&generators) {
        while !w.ready().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let bus = fleet.bus().await;
    let model = minilm_dir().display().to_string();
    let idle_small = if fairness { Some(small_run(&fleet, &bus, "small-idle", &model).await) } else { None };

    let run = "scale";
    let started = Instant::now();
    let (submit_s, submit_rss, _) = timed(&fleet, &submit_args(&input, run, &model));
    let mut s = Stages::default();
    let fair = if fairness {
        // Submitted once the big run's generators are busy.
        follow(&mut s, &bus, run, started, Duration::from_secs(3600), |r| r.tasks_done() > 0).await;
        Some(small_run(&fleet, &bus, "small-busy", &model).await)
    } else {
        None
    };
    follow(&mut s, &bus, run, started, Duration::from_secs(7200), |r| r.state == RunState::Training).await;
    let r = s.record.as_ref().unwrap();
    let assembled = s.assembled.unwrap();

    // The fleet's dataset against the local one, file by file.
    let store = fleet.store();
    let local_store = embedfleet_core::ArtifactStore::local(&local).unwrap();
    let mut same = 0;
    for split in ["train", "val"] {
        for part in ["corpus", "queries", "relevant_docs", "dataset"] {
            let name = format!("{split}_{part}.json");
            let fleet_sum = object_sha256(&store, &format!("{}/{name}", layout::data(run))).await;
            let local_sum = object_sha256(&local_store, &name).await;
            same += usize::from(fleet_sum == local_sum);
        }
    }

    let trainer = if train {
        let trainer = fleet.spawn("embedfleet-trainer", &[("EMBEDFLEET_THREADS", "2".into())]);
        let t0 = Instant::now();
        let mut first_step = None;
        while t0.elapsed() < Duration::from_secs(3600) {
            if sample(&trainer.metrics().await, "embedfleet_trainer_steps_total") >= 3.0 {
                first_step = Some(t0.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let rss = peak_rss(trainer.child.id());
        Some((first_step, rss, trainer))
    } else {
        None
    };

    let rss = |w: &Worker| peak_rss(w.child.id()).map(mb).unwrap_or_else(|| "?".into());
    println!("\n== {} chunks ({pages} pages, {}), {} tasks of {} chunks", r.ingest.chunks, mb(bytes), r.ingest.tasks, r.chunks_per_task);
    println!("{}", local_out.lines().filter(|l| l.contains("chunks") || l.contains("questions")).collect::<Vec<_>>().join("\n"));
    println!("| stage | seconds after submit | note |");
    println!("|---|---|---|");
    println!("| local `embedfleet generate` | {local_s:.1} | peak RSS {} |", mb(local_rss));
    println!("| submit (check + upload) | {submit_s:.1} | peak RSS {} |", mb(submit_rss));
    println!("| first generate task done | {:.1} | |", s.first_task_done.unwrap());
    println!("| corpus ingested (all shards written) | {:.1} | |", s.ingested.unwrap());
    println!("| every task done | {:.1} | |", s.generated.unwrap());
    println!("| dataset assembled | {assembled:.1} | {:.2}x local generate |", assembled / local_s);
    if let Some((first, rss, _)) = &trainer {
        let after = first.map(|t| format!("{t:.1} s after the trainer started")).unwrap_or_else(|| "not within an hour".into());
        println!("| trainer's third step | | {after}; trainer peak RSS {} |", rss.map(mb).unwrap_or_default());
    }
    println!(
        "record: at most {} bytes, at most {} tasks out; peak RSS: coordinator {}, generators {} / {}",
        s.largest_record,
        s.most_out,
        rss(&coordinator),
        rss(&generators[0]),
        rss(&generators[1])
    );
    println!("dataset: {same} of 8 files byte for byte the local generate's");
    if let (Some((idle_first, idle_done)), Some((busy_first, busy_done))) = (idle_small, fair) {
        println!(
            "fairness: a 50-page run's first task done after {busy_first:.1} s (idle fleet {idle_first:.1} s), its dataset after {busy_done:.1} s (idle {idle_done:.1} s)"
        );
    }
    coordinator.kill9();
    drop(trainer);
    let _ = Path::new(&input);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<u64> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(|n| n.trim().parse().expect("--sizes takes chunk counts: 10000,100000")).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
    let (train, fairness) = (args.iter().any(|a| a == "--train"), args.iter().any(|a| a == "--fairness"));
    let largest = *sizes.iter().max().unwrap();
    for &chunks in &sizes {
        one_size(chunks, train && chunks == largest, fairness && chunks == largest).await;
    }
}
