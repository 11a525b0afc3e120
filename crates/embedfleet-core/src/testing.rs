//! Real servers for integration tests, started on free loopback ports and stopped on Drop (the
//! pattern of nats.rs's test-server crate). Enabled by the `testing` feature.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Ports the tests' servers listen on come from below the kernel's ephemeral range (Linux's default
/// starts at 32768). A port that `bind(0)` handed out and the test released could be taken, before the
/// server binds it, as the source port of any outgoing connection on the machine (every NATS and S3
/// client of every test running beside this one); below the range only another test's pick can
/// take it, and picks are spread at random.
const PORTS: std::ops::Range<u16> = 12_000..22_000;

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A port that is free now, and whose +10000 gRPC twin is free too (SeaweedFS uses both), both
/// below the ephemeral range.
pub fn free_port_pair() -> u16 {
    use rand::Rng;
    for _ in 0..1_000 {
        let port = rand::rng().random_range(PORTS);
        if bindable(port) && bindable(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair on 127.0.0.1 in {PORTS:?}");
}

/// A free port below the ephemeral range (see [`PORTS`]).
pub fn free_port() -> u16 {
    use rand::Rng;
    for _ in 0..1_000 {
        let port = rand::rng().random_range(PORTS.start..PORTS.end + 10_000);
        if bindable(port) {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 below the ephemeral range");
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Waits until `ready` holds for the server `child` just started. An error if the process exits
/// first, or if `timeout` passes (the process is then killed); `what` names it in the error.
pub fn wait_until_ready(child: &mut Child, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited with {status}"));
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} was not ready within {} s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A SeaweedFS `weed mini` (master, volume, filer, S3) with one identity and one bucket. It can be
/// stopped and started again on the same ports and data, to test an S3 outage.
pub struct SeaweedFs {
    child: Option<Child>,
    dir: tempfile::TempDir,
    weed: PathBuf,
    ports: Vec<u16>,
    pub s3_port: u16,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// S3 over TLS: (certificate, key, CA) files.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl SeaweedFs {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// The same, serving S3 over TLS with a certificate `certs` signed (for 127.0.0.1).
    pub fn start_tls(certs: &TestCerts) -> Self {
        Self::start_with(Some((certs.path("server.pem"), certs.path("server.key"), certs.path("ca.pem"))))
    }

    fn start_with(tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Self {
        let weed = std::env::var_os("EMBEDFLEET_WEED").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".deps/weed"));
        assert!(weed.exists(), "{} is missing: run scripts/setup.sh first", weed.display());
        let dir = tempfile::tempdir().expect("temp dir");
        // Keys of this server only: if another test's server ever held one of its ports (they are
        // free when chosen, and freed while stopped), the write probe and every request would be
        // refused instead of landing in the other test's store.
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let access_key = format!("embedfleet-test-{}-{n}", std::process::id());
        let secret_key = format!("{access_key}-secret");
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"test","credentials":[{{"accessKey":"{access_key}","secretKey":"{secret_key}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .expect("write s3 config");
        let mut server = SeaweedFs {
            child: None,
            dir,
            weed,
            ports: Vec::new(),
            s3_port: 0,
            bucket: "embedfleet".to_owned(),
            access_key,
            secret_key,
            tls,
        };
        // The ports are free when chosen but not held until weed binds them; if another test's
        // server takes one in between, weed exits, and other ports are tried.
        let mut failures = Vec::new();
        for _ in 0..5 {
            server.ports = (0..6).map(|_| free_port_pair()).collect();
            server.s3_port = server.ports[3];
            let _ = std::fs::remove_dir_all(server.dir.path().join("data"));
            // A weed that opened S3 but never took a write (one of its servers lost a port, or
            // died after the S3 gateway opened) is stopped and started on other ports too.
            match server.launch().and_then(|()| server.wait_until_writable()) {
                Ok(()) => return server,
                Err(e) => {
                    failures.push(format!("{e}\n{}", server.log_tail()));
                    server.stop();
                }
            }
        }
        panic!("SeaweedFS did not start on any of 5 sets of free ports: {failures:?}\n{}", server.log_tail());
    }

    /// The end of weed's own log, for a failure message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        let start = log.char_indices().rev().nth(4000).map_or(0, |(i, _)| i);
        log[start..].to_owned()
    }

    /// Starts weed on `self.ports` and waits for its S3 port; an error if weed exits first or
    /// the port stays closed for a minute.
    fn launch(&mut self) -> Result<(), String> {
        let ports = &self.ports;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("weed.log")).expect("weed log");
        let mut child = Command::new(&self.weed)
            .arg("mini")
            .arg(format!("-dir={}", self.dir.path().join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false"])
            .arg(format!("-s3.config={}", self.dir.path().join("s3.json").display()))
            .arg(format!("-bucket={}", self.bucket))
            .arg(format!("-master.port={}", ports[0]))
            .arg(format!("-volume.port={}", ports[1]))
            .arg(format!("-filer.port={}", ports[2]))
            .arg(format!("-s3.port={}", ports[3]))
            .arg(format!("-admin.port={}", ports[4]))
            .arg(format!("-webdav.port={}", ports[5]))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false"])
            .args(
                self.tls
                    .iter()
                    .flat_map(|(cert, key, _)| [format!("-s3.cert.file={}", cert.display()), format!("-s3.key.file={}", key.display())]),
            )
            .current_dir(self.dir.path())
            .stdout(log.try_clone().expect("weed log"))
            .stderr(log)
            .spawn()
            .expect("start weed mini");
        let s3_port = self.s3_port;
        wait_until_ready(&mut child, &format!("weed (S3 port {s3_port})"), Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", s3_port)).is_ok()
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the server (an outage); `start_again` brings it back with its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn start_again(&mut self) {
        self.stop();
        // The old process's ports can take a moment to be free again.
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ports.iter().any(|&p| TcpListener::bind(("127.0.0.1", p)).is_err()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = self.launch().and_then(|()| self.wait_until_writable()) {
            panic!("SeaweedFS did not start again: {e}\n{}", self.log_tail());
        }
    }

    /// The S3 port opens before the volume server can take data; wait for a real write to pass.
    /// (On its own thread: callers may be inside an async runtime.)
    fn wait_until_writable(&self) -> Result<(), String> {
        let (location, options) = (format!("s3://{}", self.bucket), self.store_options());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let store = crate::ArtifactStore::open(&location, &options).map_err(|e| e.to_string())?;
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match store.put(".ready-probe", b"ok".to_vec()).await {
                        Ok(()) => return Ok(()),
                        Err(e) if Instant::now() > deadline => return Err(format!("SeaweedFS never accepted a write in 60 s: {e}")),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            })
        })
        .join()
        .expect("probe thread")
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.s3_port)
    }

    pub fn store_options(&self) -> crate::StoreOptions {
        crate::StoreOptions {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(self.secret_key.clone()),
            ca: self.tls.as_ref().map(|(_, _, ca)| ca.clone()),
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private certificate authority and certificates it signed, made with the `openssl` command in
/// a temporary folder: for servers on 127.0.0.1 over TLS and for clients in mutual TLS.
pub struct TestCerts {
    pub dir: tempfile::TempDir,
}

impl TestCerts {
    /// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate.
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir.path()).output().expect("the openssl command (Debian: openssl)");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        std::fs::write(dir.path().join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n").unwrap();
        std::fs::write(dir.path().join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=embedfleet test CA",
        ]);
        for who in ["server", "client"] {
            let subject = format!("/CN=embedfleet test {who}");
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &subject,
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ]);
        }
        TestCerts { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
