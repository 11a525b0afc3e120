//! The deploy files name only what the binaries understand: every variable the compose file sets is
//! a flag's environment variable of some worker, as its `--help` shows.

mod fleet;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn help_env_vars(binary: &Path) -> BTreeSet<String> {
    let out = Command::new(binary).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("[env: ").skip(1).filter_map(|s| s.split(['=', ']']).next()).map(str::to_owned).collect()
}

#[test]
fn compose_variables_are_flags_of_the_workers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let listed = std::fs::read_to_string(root.join("deploy/compose_env_vars.txt")).unwrap();
    let compose = std::fs::read_to_string(root.join("deploy/docker-compose.yml")).unwrap();
    let mut known = BTreeSet::new();
    for bin in ["embedfleet-coordinator", "embedfleet-generator", "embedfleet-trainer", "embedfleet-evaluator"] {
        let vars = help_env_vars(&fleet::bin(bin));
        assert!(vars.contains("EMBEDFLEET_NATS_URL") && vars.contains("EMBEDFLEET_METRICS_ADDR"), "{bin}: {vars:?}");
        known.extend(vars);
    }
    let mut count = 0;
    for var in listed.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(compose.contains(var), "{var} is listed but not in the compose file");
        assert!(known.contains(var), "the compose file sets {var}, which no worker reads");
        count += 1;
    }
    assert!(count >= 10, "only {count} variables listed");
    // And the other way: every EMBEDFLEET_ variable a container of the compose file is given is
    // listed. Names only read by compose itself (`${EMBEDFLEET_NATS_PORT:-4222}` in a port, a
    // NATS role's password handed to the server) are not container settings of the workers.
    for line in compose.lines() {
        let Some((key, _)) = line.trim_start().split_once(':') else { continue };
        let role_password = key.starts_with("EMBEDFLEET_NATS_") && key.ends_with("_PASSWORD") && key != "EMBEDFLEET_NATS_PASSWORD";
        if key.starts_with("EMBEDFLEET_") && !key.contains(' ') && !role_password {
            assert!(listed.contains(key), "{key} is set in the compose file but not in compose_env_vars.txt");
        }
    }
}

/// Each worker, started with exactly the environment the compose file or the chart gives its
/// container (deploy/worker_env.json, kept current by deploy/check.sh), nothing else: no writable
/// $HOME, no OPENAI_API_KEY. Only the addresses of NATS and the store are this test's own servers,
/// and the S3 keys (the chart takes them from a Secret). Each must become ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_start_with_the_deploy_files_environment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let envs: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("deploy/worker_env.json")).unwrap()).unwrap();
    let nats = embedfleet_bus::testing::NatsServer::start();
    let s3 = embedfleet_core::testing::SeaweedFs::start();
    let work = tempfile::tempdir().unwrap();
    for source in ["compose", "chart"] {
        let roles = envs[source].as_object().unwrap();
        assert_eq!(roles.len(), 4, "{source}: {roles:?}");
        for (role, env) in roles {
            let port = embedfleet_core::testing::free_port();
            let mut cmd = Command::new(fleet::bin(&format!("embedfleet-{role}")));
            cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
            for (k, v) in env.as_object().unwrap() {
                cmd.env(k, v.as_str().unwrap());
            }
            cmd.env("HOME", "/proc/embedfleet-no-home") // exists nowhere and cannot be created
                .env("EMBEDFLEET_NATS_URL", nats.url())
                .env("EMBEDFLEET_STORE", format!("s3://{}/deploy-{source}", s3.bucket))
                .env("EMBEDFLEET_S3_ENDPOINT", s3.endpoint())
                .env("EMBEDFLEET_METRICS_ADDR", format!("127.0.0.1:{port}"))
                .env("AWS_ACCESS_KEY_ID", &s3.access_key)
                .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
                .current_dir(work.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            assert!(!env.as_object().unwrap().contains_key("OPENAI_API_KEY") || env["OPENAI_API_KEY"] == "", "{source} {role}");
            let mut child = cmd.spawn().unwrap();
            let url = format!("http://127.0.0.1:{port}/readyz");
            let started = std::time::Instant::now();
            loop {
                if matches!(reqwest::get(&url).await, Ok(r) if r.status().is_success()) {
                    break;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                    panic!("{source} {role} exited with {status} before it was ready:\n{err}");
                }
                assert!(started.elapsed() < std::time::Duration::from_secs(60), "{source} {role} never became ready");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            // And it stops cleanly on SIGTERM, as a pod does.
            // SAFETY: kill takes no pointers. `child` is our own child and has not been reaped (only `try_wait`, which
            // panics above when it sees an exit, and `wait` below reap it), so its pid cannot have passed to another process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().unwrap();
            assert!(status.success(), "{source} {role} did not exit cleanly on SIGTERM: {status}");
        }
    }
}
