//! A real nats-server with JetStream per test, on a free loopback port, stopped on Drop; it can be
//! restarted on the same port and store to test reconnection. Its log is kept so that a failing
//! test can show why the server went away.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub struct NatsServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    jetstream: bool,
    name: String,
    /// A configuration file (authorization, TLS) and the environment its `$VARIABLES` come from.
    config: Option<(PathBuf, Vec<(String, String)>)>,
}

fn binary() -> PathBuf {
    std::env::var_os("EMBEDFLEET_NATS_SERVER")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("nats-server")).find(|p| p.exists())))
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// Whether the NATS server named `name` answers on `port`: it greets every client with an
/// `INFO {…}` line that carries its name. A bare TCP connect, or any server's greeting, is not
/// enough: while one test restarts its server, another test's new server may take the freed port.
fn greets(port: u16, name: &str) -> bool {
    let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok()
        && line.starts_with("INFO ")
        && line.contains(&format!("\"server_name\":\"{name}\""))
}

/// A name no other server started by this machine's tests has.
fn unique_name() -> String {
    static STARTED: AtomicU64 = AtomicU64::new(0);
    format!("embedfleet-test-{}-{}", std::process::id(), STARTED.fetch_add(1, Ordering::Relaxed))
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// A server with JetStream off, as an operator might start one by mistake; see
    /// [`NatsServer::enable_jetstream`].
    pub fn start_without_jetstream() -> Self {
        Self::start_with(false)
    }

    /// A server with JetStream and the configuration `config` (nats-server's format: an
    /// `authorization` or a `tls` block; it may `include` files copied next to it with `files`),
    /// whose `$VARIABLES` are read from `env`.
    pub fn start_with_config(config: &str, files: &[(&str, &std::path::Path)], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, config).expect("write nats.conf");
        for (name, from) in files {
            std::fs::copy(from, dir.path().join(name)).expect("copy a file the configuration includes");
        }
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::start_in(dir, true, Some((path, env)))
    }

    fn start_with(jetstream: bool) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), jetstream, None)
    }

    fn start_in(mut dir: tempfile::TempDir, jetstream: bool, config: Option<(PathBuf, Vec<(String, String)>)>) -> Self {
        // The port is free when chosen but not held until nats-server binds it; if something takes
        // it in between, the server exits and another port is tried.
        for _ in 0..5 {
            let port = embedfleet_core::testing::free_port();
            let mut server = NatsServer { child: None, dir, port, jetstream, name: unique_name(), config: config.clone() };
            if server.launch().is_ok() {
                return server;
            }
            dir = std::mem::replace(&mut server.dir, tempfile::tempdir().expect("temp dir"));
        }
        panic!(
            "nats-server did not start on any of 5 free ports:\n{}",
            std::fs::read_to_string(dir.path().join("nats.log")).unwrap_or_default()
        );
    }

    fn launch(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("nats.log")).expect("nats log");
        let mut command = Command::new(binary());
        if let Some((path, env)) = &self.config {
            // nats-server reads the files a configuration names (certificates) from its working
            // directory: the folder the configuration is in.
            command.arg("-c").arg(path).envs(env.iter().map(|(k, v)| (k, v))).current_dir(self.dir.path());
        }
        let mut child = command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-n", &self.name])
            .args(if self.jetstream { &["-js", "-sd"][..] } else { &[] })
            .args(self.jetstream.then(|| self.dir.path().join("store")))
            .stdout(log.try_clone().expect("nats log"))
            .stderr(log)
            .spawn()
            .expect("start nats-server (scripts/setup.sh installs it)");
        let what = format!("nats-server on port {}", self.port);
        embedfleet_core::testing::wait_until_ready(&mut child, &what, Duration::from_secs(20), || greets(self.port, &self.name))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Everything the server has logged since the test began, restarts included.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Whether the server process is still running (it may have crashed under the test).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts again on the same port with the same JetStream store.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.launch() {
            panic!("{e}\n{}", self.log());
        }
    }

    /// Restarts on the same port with JetStream on.
    pub fn enable_jetstream(&mut self) {
        self.jetstream = true;
        self.restart();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
