//! A whole fleet on loopback for integration tests: nats-server, SeaweedFS, the LLM test server,
//! and the worker binaries as real child processes, all stopped on Drop.

#![allow(dead_code)]

use embedfleet_bus::testing::NatsServer;
use embedfleet_bus::{Bus, BusOptions};
use embedfleet_coordinator::RunRecord;
use embedfleet_core::testing::{SeaweedFs, free_port};
use embedfleet_core::{ArtifactStore, StoreOptions};
use embedfleet_model::{BertConfig, LoadOptions, ModelCard, SentenceEncoder};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin(name: &str) -> PathBuf {
    let cli = PathBuf::from(env!("CARGO_BIN_EXE_embedfleet"));
    let path = cli.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build every binary first (`cargo build --workspace --bins`; scripts/test.sh does)",
        path.display()
    );
    path
}

pub fn minilm_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.deps/all-MiniLM-L6-v2")
}

/// A tiny random BERT with MiniLM's tokenizer, saved as a sentence-transformers folder: training
/// and evaluation take seconds.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let model = SentenceEncoder::random(BertConfig::tiny(30522), &minilm_dir(), 3, LoadOptions::default()).unwrap();
    let path = dir.join("tiny-model");
    model.save(&path, &ModelCard::default()).unwrap();
    path
}

pub struct Worker {
    pub name: String,
    pub child: Child,
    pub metrics_port: u16,
}

impl Worker {
    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL: no graceful shutdown
        let _ = self.child.wait();
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Whether the process has ended (crashed, aborted, killed).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub async fn ready(&self) -> bool {
        let url = format!("http://127.0.0.1:{}/readyz", self.metrics_port);
        matches!(reqwest::get(&url).await, Ok(r) if r.status().is_success())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The value of a Prometheus sample whose line starts with `series` (name and labels).
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(series)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

pub struct Fleet {
    pub nats: NatsServer,
    pub s3: SeaweedFs,
    pub dir: tempfile::TempDir,
    pub extra_env: Vec<(String, String)>,
    workers: usize,
}

impl Fleet {
    pub fn start() -> Self {
        Fleet { nats: NatsServer::start(), s3: SeaweedFs::start(), dir: tempfile::tempdir().unwrap(), extra_env: Vec::new(), workers: 0 }
    }

    pub fn store_url(&self) -> String {
        format!("s3://{}/fleet", self.s3.bucket)
    }

    pub fn store(&self) -> ArtifactStore {
        ArtifactStore::open(&self.store_url(), &self.s3.store_options()).unwrap()
    }

    pub async fn bus(&self) -> Bus {
        Bus::connect(&BusOptions::new(self.nats.url()).connect_timeout(Duration::from_secs(10))).await.unwrap()
    }

    /// The fleet's settings on a command of the caller's (a wrapper like /usr/bin/time).
    pub fn command_env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        self.env(cmd);
        cmd
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("EMBEDFLEET_NATS_URL", self.nats.url())
            .env("EMBEDFLEET_STORE", self.store_url())
            .env("EMBEDFLEET_S3_ENDPOINT", self.s3.endpoint())
            .env("AWS_ACCESS_KEY_ID", &self.s3.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.s3.secret_key)
            .env("AWS_REGION", "us-east-1")
            .env("EMBEDFLEET_LOG", "warn,embedfleet_trainer=info")
            .env("EMBEDFLEET_DEVICE", "cpu")
            // The fleet tests compare models with local runs and fixtures made in fp32; `auto` would
            // take bf16 on CPUs that have it (run_report.rs covers the default).
            .env("EMBEDFLEET_PRECISION", "fp32")
            .env("EMBEDFLEET_THREADS", "1")
            .env_remove("OPENAI_API_KEY");
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
    }

    /// Starts a worker binary (`embedfleet-generator`, …) with the fleet's settings plus `env`.
    pub fn spawn(&mut self, binary: &str, env: &[(&str, String)]) -> Worker {
        self.workers += 1;
        let metrics_port = free_port();
        let log = std::fs::File::create(self.dir.path().join(format!("{binary}-{}.log", self.workers))).unwrap();
        let mut cmd = Command::new(bin(binary));
        self.env(&mut cmd);
        cmd.env("EMBEDFLEET_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("EMBEDFLEET_WORK_DIR", self.dir.path().join(format!("work-{}", self.workers)))
            .env("EMBEDFLEET_LLM_CACHE_DIR", self.dir.path().join(format!("llm-cache-{}", self.workers)));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        Worker { name: binary.into(), child, metrics_port }
    }

    /// `embedfleet <args>` with the fleet's settings.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_embedfleet"));
        self.env(&mut cmd);
        cmd.args(args).output().unwrap()
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                out.push_str(&format!("--- {}\n{}\n", entry.path().display(), std::fs::read_to_string(entry.path()).unwrap_or_default()));
            }
        }
        out.push_str(&format!("--- nats-server on port {}\n{}\n", self.nats.port, self.nats.log()));
        out
    }

    /// A tiny random model put in the fleet's store under `models/tiny`, where the fleet's default
    /// allows models from: the `--model-id` to submit.
    pub async fn tiny_model_in_store(&self) -> String {
        let local = tiny_model(self.dir.path());
        self.store().put_dir(&local, "models/tiny").await.unwrap();
        format!("{}/models/tiny", self.store_url())
    }

    /// Polls the run's record until `done(record)` or the timeout.
    pub async fn wait_for(&self, bus: &Bus, run: &str, timeout: Duration, done: impl Fn(&RunRecord) -> bool) -> RunRecord {
        let started = Instant::now();
        loop {
            if let Ok((Some(r), _)) = embedfleet_coordinator::worker::load_record(bus, run).await {
                if done(&r) {
                    return r;
                }
                if started.elapsed() > timeout {
                    panic!("run {run} stuck: {r:?}\n{}", self.logs());
                }
            } else if started.elapsed() > timeout {
                panic!("run {run} never appeared\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Every message in the dead-letter stream: (subject, reason header).
pub async fn dead_letters(bus: &Bus) -> Vec<(String, String)> {
    let mut stream = bus.js.get_stream(embedfleet_bus::subjects::DEAD_STREAM).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push((m.subject.to_string(), m.headers.get("Embedfleet-Reason").map(|v| v.to_string()).unwrap_or_default()));
        }
    }
    out
}

/// The first `n` documents of the sample corpus, as a file.
pub fn corpus(dir: &Path, n: usize) -> PathBuf {
    let raw = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/sample-corpus.json")).unwrap();
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&raw).unwrap();
    let path = dir.join("corpus.json");
    std::fs::write(&path, serde_json::to_vec(&docs[..n]).unwrap()).unwrap();
    path
}

pub fn store_options(s3: &SeaweedFs) -> StoreOptions {
    s3.store_options()
}

/// A synthetic scraped site as JSON Lines: `pages` pages of about 8,000 characters each (some
/// shorter, some longer), in paragraphs of sentences drawn from a fixed vocabulary, with a url and
/// a title, seeded so the same call writes the same bytes. About 10 chunks a page at the default
/// chunk size. Written a page at a time.
pub fn synthetic_site(path: &Path, pages: usize, seed: u64) -> u64 {
    use rand::{Rng, SeedableRng};
    use std::io::Write;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    const SYLLABLES: [&str; 24] = [
        "ka", "lo", "mir", "ten", "sa", "vor", "ul", "dri", "pe", "quo", "an", "zel", "ri", "mon", "ta", "gle", "xi", "bru", "no", "sel",
        "fa", "hu", "den", "ort",
    ];
    let vocabulary: Vec<String> = (0..4000)
        .map(|_| (0..rng.random_range(1..4)).map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())]).collect::<String>())
        .collect();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut bytes = 0u64;
    let mut text = String::with_capacity(16_384);
    for page in 0..pages {
        text.clear();
        let target = rng.random_range(4_000..12_000);
        while text.len() < target {
            for _ in 0..rng.random_range(2..7) {
                let words = rng.random_range(6..22);
                for w in 0..words {
                    let word = &vocabulary[rng.random_range(0..vocabulary.len())];
                    if w == 0 {
                        let mut chars = word.chars();
                        text.extend(chars.next().map(|c| c.to_ascii_uppercase()));
                        text.push_str(chars.as_str());
                    } else {
                        text.push(' ');
                        text.push_str(word);
                    }
                }
                text.push_str(". ");
            }
            text.push_str("\n\n");
        }
        let line = serde_json::json!({
            "url": format!("https://docs.example.com/section-{}/page-{page}.html", page % 97),
            "title": format!("Page {page}"),
            "content": text,
        });
        let mut encoded = serde_json::to_vec(&line).unwrap();
        encoded.push(b'\n');
        bytes += encoded.len() as u64;
        out.write_all(&encoded).unwrap();
    }
    out.flush().unwrap();
    bytes
}

/// Peak resident memory of a running process, from the kernel's high-water mark, in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// SHA-256 of an object, streamed.
pub async fn object_sha256(store: &ArtifactStore, key: &str) -> String {
    use futures::TryStreamExt;
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut parts = store.get_stream(key).await.unwrap();
    while let Some(part) = parts.try_next().await.unwrap() {
        hasher.update(&part);
    }
    hex::encode(hasher.finalize())
}
