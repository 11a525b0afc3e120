//! The fleet as users start it: `docker-compose up` of deploy/docker-compose.yml, with
//! deploy/docker-compose.test.yml putting images built here in place of those that cannot be
//! pulled (scripts/images.sh builds every image first; scripts/test.sh runs it). The sample corpus
//! is submitted from the `cli` service and followed with `watch` to `done`; `results --download`
//! must bring home the model and `report.html`; the model must give the embeddings a local
//! `embedfleet run` of the same corpus and settings gives; Prometheus must see every worker up; and
//! every worker container must run as the non-root user with a read-only root filesystem.
//!
//! Needs a Docker engine with docker-compose. Without one the test fails and says so: it never
//! passes untested.

mod fleet;

use embedfleet_core::testing::free_port;
use embedfleet_core::{ArtifactStore, StoreOptions};
use embedfleet_model::{LoadOptions, SentenceEncoder};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A compose project of the user's file and the test override, on ports of its own, taken down
/// (volumes included) when dropped.
pub struct Compose {
    pub project: String,
    env: Vec<(String, String)>,
    pub s3_port: u16,
    pub nats_port: u16,
    pub prometheus_port: u16,
    pub out: tempfile::TempDir,
    started: Instant,
}

const ACCESS_KEY: &str = "compose-test";
const SECRET_KEY: &str = "compose-test-secret";
pub const WORKERS: [&str; 4] = ["coordinator", "generator", "trainer", "evaluator"];
const ROLES_WITH_NATS_USERS: [&str; 5] = ["coordinator", "generator", "trainer", "evaluator", "cli"];

fn nats_password(role: &str) -> String {
    format!("compose-test-{role}-password")
}

impl Compose {
    pub fn new(name: &str) -> Self {
        let docker = Command::new("docker").arg("info").output();
        assert!(
            docker.as_ref().is_ok_and(|o| o.status.success()),
            "the compose test needs a Docker engine (scripts/test.sh starts one if it is not running): {:?}",
            docker.map(|o| text(&o))
        );
        let images = Command::new("docker").args(["image", "inspect", &image("cpu"), &image("small")]).output().unwrap();
        assert!(images.status.success(), "the fleet's images are missing: run scripts/images.sh (scripts/test.sh does)");
        let out = tempfile::tempdir().unwrap();
        // The cli container runs as user 10001: the folder it downloads results into must be open to it.
        std::fs::set_permissions(out.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let (s3_port, nats_port, prometheus_port) = (free_port(), free_port(), free_port());
        let env = vec![
            ("EMBEDFLEET_NATS_PORT".into(), nats_port.to_string()),
            ("EMBEDFLEET_NATS_MONITOR_PORT".into(), free_port().to_string()),
            ("EMBEDFLEET_S3_PORT".into(), s3_port.to_string()),
            ("EMBEDFLEET_S3_CONSOLE_PORT".into(), free_port().to_string()),
            ("EMBEDFLEET_PROMETHEUS_PORT".into(), prometheus_port.to_string()),
            ("EMBEDFLEET_GRAFANA_PORT".into(), free_port().to_string()),
            ("MINIO_ROOT_USER".into(), ACCESS_KEY.into()),
            ("MINIO_ROOT_PASSWORD".into(), SECRET_KEY.into()),
            ("GRAFANA_ADMIN_PASSWORD".into(), "compose-test-grafana".into()),
            ("EMBEDFLEET_COMPOSE_OUT".into(), out.path().display().to_string()),
        ];
        // The fleet runs with NATS authorization on: one password per role, as deploy/.env holds them.
        let mut env = env;
        for role in ROLES_WITH_NATS_USERS {
            env.push((format!("EMBEDFLEET_NATS_{}_PASSWORD", role.to_uppercase()), nats_password(role)));
        }
        let project = format!("{name}-{}", std::process::id());
        let compose = Compose { project, env, s3_port, nats_port, prometheus_port, out, started: Instant::now() };
        compose.run_ok(&["down", "-v", "--remove-orphans"]);
        compose
    }

    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(repo())
            .args(["-p", &self.project, "-f", "deploy/docker-compose.yml", "-f", "deploy/docker-compose.test.yml"])
            .args(args)
            .env_remove("OPENAI_API_KEY");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn run_ok(&self, args: &[&str]) -> Output {
        let o = self.run(args);
        assert!(o.status.success(), "docker-compose {args:?} failed:\n{}\n{}", text(&o), self.logs());
        o
    }

    /// `embedfleet ARGS` in the cli service, as a user runs it.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut all = vec!["run", "--rm", "-T", "cli"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    pub fn logs(&self) -> String {
        let o = self.command(&["logs", "--no-color", "--tail", "60"]).output().unwrap();
        text(&o)
    }

    /// Container ids of a service.
    pub fn containers(&self, service: &str) -> Vec<String> {
        let o = self.run_ok(&["ps", "-q", service]);
        String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).filter(|l| !l.is_empty()).collect()
    }

    pub fn inspect(&self, container: &str, format: &str) -> String {
        let o = Command::new("docker").args(["inspect", "--format", format, container]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    /// Waits until every worker container's health check passes.
    pub fn wait_healthy(&self, timeout: Duration) {
        let started = Instant::now();
        loop {
            let states: Vec<(String, String)> = WORKERS
                .iter()
                .flat_map(|s| self.containers(s).into_iter().map(move |c| (s.to_string(), c)))
                .map(|(s, c)| (s, self.inspect(&c, "{{.State.Health.Status}}")))
                .collect();
            if states.len() >= 5 && states.iter().all(|(_, h)| h == "healthy") {
                return;
            }
            assert!(started.elapsed() < timeout, "workers not healthy after {timeout:?}: {states:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    pub fn store(&self) -> ArtifactStore {
        let options = StoreOptions {
            endpoint: Some(format!("http://127.0.0.1:{}", self.s3_port)),
            region: Some("us-east-1".into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            ca: None,
        };
        ArtifactStore::open("s3://embedfleet", &options).unwrap()
    }

    /// Puts all-MiniLM-L6-v2 in the fleet's bucket, where the trainer and the evaluators load it.
    pub async fn upload_minilm(&self) -> String {
        let store = self.store();
        let started = Instant::now();
        loop {
            match store.put_dir(&fleet::minilm_dir(), "models/all-MiniLM-L6-v2").await {
                Ok(_) => return "s3://embedfleet/models/all-MiniLM-L6-v2".into(),
                Err(e) if started.elapsed() < Duration::from_secs(60) => {
                    eprintln!("S3 not ready yet: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("uploading the model: {e}\n{}", self.logs()),
            }
        }
    }

    /// Prometheus's `up` for every scraped target: (job, instance, value).
    pub async fn prometheus_up(&self) -> Vec<(String, String, f64)> {
        let url = format!("http://127.0.0.1:{}/api/v1/query?query=up", self.prometheus_port);
        let Ok(response) = reqwest::get(&url).await else { return Vec::new() };
        let Ok(body) = response.json::<serde_json::Value>().await else { return Vec::new() };
        body["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["metric"]["job"].as_str().unwrap_or_default().to_owned(),
                    r["metric"]["instance"].as_str().unwrap_or_default().to_owned(),
                    r["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
                )
            })
            .collect()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::env::var_os("EMBEDFLEET_KEEP_COMPOSE").is_none() {
            let _ = self.run(&["down", "-v", "--remove-orphans"]);
        }
    }
}

pub fn image(flavor: &str) -> String {
    format!("ghcr.io/embedfleet/embedfleet:{}-{flavor}", env!("CARGO_PKG_VERSION"))
}

/// The settings both the fleet and the local run train with.
const TRAINING: [&str; 8] = ["--epochs", "1", "--batch-size", "16", "--evaluation-steps", "10", "--precision", "fp32"];

fn max_abs_diff(a: &Path, b: &Path) -> f64 {
    let texts = ["How do I configure retention in Tidewater?", "alert rules and their thresholds", "Backups run every night."];
    let encode = |dir: &Path| SentenceEncoder::load(dir, LoadOptions::default()).unwrap().encode(&texts, 8, None).unwrap();
    let (x, y) = (encode(a), encode(b));
    f64::try_from((x - y).abs().max()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_goes_from_submit_to_results_across_containers() {
    let _turn = ONE_PROJECT_AT_A_TIME.lock().await;
    let compose = Compose::new("embedfleet-e2e");
    let up = Instant::now();
    compose.run_ok(&["up", "-d"]);
    compose.wait_healthy(Duration::from_secs(180));
    eprintln!("[{:6.1} s] compose up: every worker healthy after {:.1} s", compose.elapsed(), up.elapsed().as_secs_f64());

    // Every worker runs as the files say: non-root, read-only root filesystem.
    for service in WORKERS {
        for c in compose.containers(service) {
            assert_eq!(compose.inspect(&c, "{{.Config.User}}"), "10001:10001", "{service} runs as the image's user");
            assert_eq!(compose.inspect(&c, "{{.HostConfig.ReadonlyRootfs}}"), "true", "{service} has a read-only root");
        }
    }
    assert_eq!(compose.containers("generator").len(), 2, "two generator replicas");
    // NATS takes only the roles' users (deploy/nats/auth.conf).
    let anonymous = embedfleet_bus::Bus::connect(
        &embedfleet_bus::BusOptions::new(format!("nats://127.0.0.1:{}", compose.nats_port)).connect_timeout(Duration::from_secs(3)),
    )
    .await;
    assert!(anonymous.is_err(), "the fleet's NATS let an unauthenticated client in");

    let model = compose.upload_minilm().await;
    let run = "compose-e2e";
    let mut submit =
        vec!["submit", "--input", "/examples/sample-corpus.json", "--run-id", run, "--generator", "offline", "--model-id", &model];
    submit.extend_from_slice(&TRAINING);
    let o = compose.cli(&submit);
    assert!(o.status.success(), "submit: {}\n{}", text(&o), compose.logs());
    eprintln!("[{:6.1} s] submitted from the cli service: {}", compose.elapsed(), String::from_utf8_lossy(&o.stderr).trim());
    let watched = Instant::now();
    let o = compose.cli(&["watch", run]);
    assert!(o.status.success(), "watch: {}\n{}", text(&o), compose.logs());
    eprintln!(
        "[{:6.1} s] watch: done after {:.1} s\n{}",
        compose.elapsed(),
        watched.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&o.stdout)
    );

    let o = compose.cli(&["results", run, "--download", &format!("/out/{run}")]);
    assert!(o.status.success(), "results: {}\n{}", text(&o), compose.logs());
    eprintln!("[{:6.1} s] results:\n{}", compose.elapsed(), String::from_utf8_lossy(&o.stdout));
    let downloaded = compose.out.path().join(run);
    let model_dir = downloaded.join("model");
    assert!(model_dir.join("model.safetensors").is_file(), "the model came home: {:?}", std::fs::read_dir(&downloaded).map(|d| d.count()));
    let report = walkdir::WalkDir::new(&downloaded).into_iter().flatten().find(|e| e.file_name() == "report.html");
    assert!(report.is_some(), "report.html came home");

    // The same corpus and settings in one local process give the same model.
    let local = compose.out.path().join("local");
    let mut args = vec![
        "run".to_owned(),
        "--input".into(),
        repo().join("examples/sample-corpus.json").display().to_string(),
        "--output-dir".into(),
        local.display().to_string(),
        "--generator".into(),
        "offline".into(),
        "--model-id".into(),
        fleet::minilm_dir().display().to_string(),
        "--threads".into(),
        "1".into(),
        "--device".into(),
        "cpu".into(),
    ];
    args.extend(TRAINING.iter().map(|s| s.to_string()));
    let o = Command::new(env!("CARGO_BIN_EXE_embedfleet")).args(&args).output().unwrap();
    assert!(o.status.success(), "local run: {}", text(&o));
    let diff = max_abs_diff(&model_dir, &local.join("model"));
    eprintln!("[{:6.1} s] the fleet's model against the local run's: max abs difference of embeddings {diff:e}", compose.elapsed());
    assert!(diff <= 1e-6, "the fleet's model differs from the local run's: {diff}");

    // Prometheus scrapes every worker.
    let started = Instant::now();
    let targets = loop {
        let up = compose.prometheus_up().await;
        let workers: Vec<_> = up.iter().filter(|(job, _, _)| job.starts_with("embedfleet-")).cloned().collect();
        if workers.len() >= 5 && workers.iter().all(|(_, _, v)| *v == 1.0) {
            break up;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "Prometheus targets: {up:?}\n{}", compose.logs());
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    eprintln!("[{:6.1} s] Prometheus `up`:", compose.elapsed());
    for (job, instance, value) in targets {
        eprintln!("  {job:<24} {instance:<22} {value}");
    }
}

/// The two compose projects take both cores: they take turns.
static ONE_PROJECT_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The run's record, read from the fleet's NATS through its published port.
async fn record(bus: &embedfleet_bus::Bus, run: &str) -> Option<embedfleet_coordinator::RunRecord> {
    embedfleet_coordinator::worker::load_record(bus, run).await.ok().and_then(|(r, _)| r)
}

async fn wait_record(
    compose: &Compose,
    bus: &embedfleet_bus::Bus,
    run: &str,
    timeout: Duration,
    until: impl Fn(&embedfleet_coordinator::RunRecord) -> bool,
) -> embedfleet_coordinator::RunRecord {
    let started = Instant::now();
    loop {
        if let Some(r) = record(bus, run).await
            && until(&r)
        {
            return r;
        }
        assert!(started.elapsed() < timeout, "run {run}: {:?}\n{}", record(bus, run).await, compose.logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Faults between hosts, each on a run of its own that must end done with exactly the dataset a
/// local `embedfleet generate` makes: NATS restarted and S3 paused for 20 s during generation, a
/// generator cut off its network for longer than the ack wait, and the trainer killed mid-training
/// and started again.
#[tokio::test(flavor = "multi_thread")]
async fn runs_survive_faults_between_containers() {
    let _turn = ONE_PROJECT_AT_A_TIME.lock().await;
    let compose = Compose::new("embedfleet-faults");
    compose.run_ok(&["up", "-d"]);
    compose.wait_healthy(Duration::from_secs(180));
    let say = |what: &str| eprintln!("[{:6.1} s] {what}", compose.elapsed());
    say("compose up: every worker healthy");

    // The corpus (3,400 chunks, one a task, so generation lasts long enough to be hurt) and what a
    // local generate makes of it.
    let corpus = compose.out.path().join("site.jsonl");
    fleet::synthetic_site(&corpus, 300, 11);
    std::fs::set_permissions(&corpus, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let local = compose.out.path().join("local");
    let o = Command::new(env!("CARGO_BIN_EXE_embedfleet"))
        .args(["generate", "--input", corpus.to_str().unwrap(), "--output-dir", local.to_str().unwrap(), "--generator", "offline"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let local_store = ArtifactStore::local(&local).unwrap();

    // A tiny model: training takes seconds, so the trainer can be killed in the middle of it.
    let tiny = fleet::tiny_model(compose.out.path());
    let store = compose.store();
    let started = Instant::now();
    while store.put_dir(&tiny, "models/tiny").await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "S3 never took the model\n{}", compose.logs());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The test follows the runs as the CLI's user: NATS lets it read run records and nothing more.
    let mut options = embedfleet_bus::BusOptions::new(format!("nats://127.0.0.1:{}", compose.nats_port))
        .connect_timeout(Duration::from_secs(30))
        .owns_layout(false);
    options.user_password = Some(("cli".into(), nats_password("cli")));
    let bus = embedfleet_bus::Bus::connect(&options).await.unwrap();

    let submit = |run: &str| {
        let o = compose.cli(&[
            "submit",
            "--input",
            "/out/site.jsonl",
            "--run-id",
            run,
            "--generator",
            "offline",
            "--chunks-per-task",
            "1",
            "--model-id",
            "s3://embedfleet/models/tiny",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--evaluation-steps",
            "100",
        ]);
        assert!(o.status.success(), "submit {run}: {}\n{}", text(&o), compose.logs());
    };
    let container = |service: &str| compose.containers(service).into_iter().next().unwrap_or_else(|| panic!("no {service} container"));
    let docker = |args: &[&str]| {
        let o = Command::new("docker").args(args).output().unwrap();
        assert!(o.status.success(), "docker {args:?}: {}", text(&o));
    };
    let network = format!("{}_default", compose.project.replace(['-', '.'], ""));
    let networks = compose.inspect(&container("nats"), "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}");
    let network = networks.split_whitespace().next().map(str::to_owned).unwrap_or(network);

    let finished = async |run: &str| {
        let r = wait_record(&compose, &bus, run, Duration::from_secs(900), |r| r.state.is_terminal()).await;
        assert_eq!(r.state, embedfleet_coordinator::RunState::Done, "run {run}: {r:?}\n{}", compose.logs());
        for split in ["train", "val"] {
            for part in ["corpus", "queries", "relevant_docs", "dataset"] {
                let name = format!("{split}_{part}.json");
                let ours = fleet::object_sha256(&store, &format!("runs/{run}/data/{name}")).await;
                assert_eq!(ours, fleet::object_sha256(&local_store, &name).await, "{name} of {run} differs from the local generate's");
            }
        }
        r
    };
    let generating = |run: &'static str| {
        let (compose, bus) = (&compose, &bus);
        async move { wait_record(compose, bus, run, Duration::from_secs(300), |r| r.tasks_done() > 10).await }
    };

    // NATS restarted while the run generates.
    submit("fault-nats");
    let r = generating("fault-nats").await;
    say(&format!("fault-nats: {} of {} tasks done; docker restart nats", r.tasks_done(), r.ingest.tasks));
    docker(&["restart", &container("nats")]);
    say("fault-nats: NATS is back");
    let r = finished("fault-nats").await;
    say(&format!("fault-nats: done, {} steps, the dataset the local one", r.steps));

    // S3 paused for 20 s while the run generates.
    submit("fault-s3");
    let r = generating("fault-s3").await;
    say(&format!("fault-s3: {} of {} tasks done; docker pause minio (SeaweedFS) for 20 s", r.tasks_done(), r.ingest.tasks));
    docker(&["pause", &container("minio")]);
    tokio::time::sleep(Duration::from_secs(20)).await;
    docker(&["unpause", &container("minio")]);
    say("fault-s3: S3 unpaused");
    let r = finished("fault-s3").await;
    say(&format!("fault-s3: done, {} steps, the dataset the local one", r.steps));

    // One generator cut off for longer than the ack wait (the compose file's default, 30 s): its
    // tasks in hand go to the other.
    submit("fault-network");
    let r = generating("fault-network").await;
    let cut = container("generator");
    say(&format!(
        "fault-network: {} of {} tasks done; docker network disconnect {network} (one generator) for 40 s",
        r.tasks_done(),
        r.ingest.tasks
    ));
    docker(&["network", "disconnect", &network, &cut]);
    tokio::time::sleep(Duration::from_secs(40)).await;
    docker(&["network", "connect", &network, &cut]);
    say("fault-network: the generator is connected again");
    let r = finished("fault-network").await;
    say(&format!("fault-network: done, {} steps, the dataset the local one", r.steps));

    // The trainer killed mid-training and started again: it resumes from its last checkpoint.
    submit("fault-trainer");
    let r = wait_record(&compose, &bus, "fault-trainer", Duration::from_secs(600), |r| r.checkpoints.len() >= 2).await;
    let trainer = container("trainer");
    say(&format!("fault-trainer: training, {} checkpoints scored or sent; docker kill trainer", r.checkpoints.len()));
    docker(&["kill", &trainer]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    docker(&["start", &trainer]);
    say("fault-trainer: trainer started again");
    let disturbed = finished("fault-trainer").await;
    say(&format!("fault-trainer: done, {} steps, the dataset the local one", disturbed.steps));
    assert_eq!(disturbed.steps, r.steps.max(disturbed.steps));
    let undisturbed = record(&bus, "fault-nats").await.unwrap();
    assert_eq!(disturbed.steps, undisturbed.steps, "the resumed training ran the steps an undisturbed one does");
}
