//! Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
//! messages ended by NUL on file descriptors 3 and 4), so tests need no WebSocket client and no
//! port. Used by this crate's browser test and, through `#[path]`, by the CLI's.

#![allow(dead_code)]

use serde_json::{Value, json};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// The binary: `EMBEDFLEET_CHROMIUM`, else Debian's `chromium` (scripts/setup.sh installs it).
pub fn chromium_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("EMBEDFLEET_CHROMIUM") {
        return PathBuf::from(p);
    }
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("no chromium found: run scripts/setup.sh (it installs Debian's chromium) or set EMBEDFLEET_CHROMIUM");
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two `c_int`s through the pointer, and `fds` is a writable array of exactly two.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2 failed: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

pub struct Chrome {
    child: Child,
    to_browser: File,
    from_browser: Receiver<Value>,
    next_id: u64,
    /// Events received so far (everything without an `id`).
    pub events: Vec<Value>,
    session: String,
    _profile: tempfile::TempDir,
}

/// What a page did while loading: uncaught exceptions, console errors, failed loads.
#[derive(Debug, Default)]
pub struct PageErrors(pub Vec<String>);

impl Chrome {
    /// A fresh browser with a 1280×900 viewport and one page attached.
    pub fn start() -> Chrome {
        let profile = tempfile::tempdir().unwrap();
        let (browser_in, to_browser) = pipe();
        let (from_browser, browser_out) = pipe();
        let mut command = Command::new(chromium_binary());
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe work is allowed: it
        // calls fcntl and dup2 (both async-signal-safe) on the pipe ends the child inherited (open until exec), and
        // allocates nothing and takes no lock (`last_os_error` only reads errno).
        unsafe {
            command.pre_exec(move || {
                // Moved out of the way first, in case a pipe end already sits on 3 or 4.
                let (input, output) = (libc::fcntl(browser_in, libc::F_DUPFD, 10), libc::fcntl(browser_out, libc::F_DUPFD, 10));
                if input < 0 || output < 0 || libc::dup2(input, 3) < 0 || libc::dup2(output, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start chromium: {e}"));
        // SAFETY: the four fds came from pipe2 above, are open, and nothing else owns them: the parent closes the
        // browser's two ends once (the child has its own copies), and each `File` takes sole ownership of one of ours.
        let (to_browser, reader) = unsafe {
            libc::close(browser_in);
            libc::close(browser_out);
            (File::from_raw_fd(to_browser), File::from_raw_fd(from_browser))
        };
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            while let Ok(n) = reader.read_until(0, &mut buf) {
                if n == 0 {
                    break;
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                    && tx.send(v).is_err()
                {
                    break;
                }
                buf.clear();
            }
        });
        let mut chrome =
            Chrome { child, to_browser, from_browser: rx, next_id: 0, events: Vec::new(), session: String::new(), _profile: profile };
        let target = chrome.browser_call("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("a target id").to_owned();
        let attached = chrome.browser_call("Target.attachToTarget", json!({"targetId": target_id, "flatten": true}));
        chrome.session = attached["sessionId"].as_str().expect("a session id").to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            chrome.call(domain, json!({}));
        }
        chrome.viewport(1280, 900);
        chrome
    }

    fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).expect("chromium's pipe is open");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.from_browser.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(v) if v["id"] == json!(id) => {
                    if let Some(e) = v.get("error") {
                        panic!("{method} failed: {e}");
                    }
                    return v["result"].clone();
                }
                Ok(v) => self.events.push(v),
                Err(RecvTimeoutError::Timeout) => panic!("chromium did not answer {method} within 60 s"),
                Err(RecvTimeoutError::Disconnected) => panic!("chromium closed its pipe during {method}"),
            }
        }
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None)
    }

    /// A DevTools command to the page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(session))
    }

    pub fn viewport(&mut self, width: u32, height: u32) {
        self.call("Emulation.setDeviceMetricsOverride", json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}));
    }

    /// Waits for an event of the page named `method` that arrived after `since` events.
    fn wait_event(&mut self, method: &str, since: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.events[since..].iter().any(|e| e["method"] == json!(method)) {
                return;
            }
            match self.from_browser.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(v) => self.events.push(v),
                Err(_) => panic!("no {method} within 60 s"),
            }
        }
    }

    /// Loads `path` from disk and waits for its load event; returns what went wrong on the way.
    pub fn open(&mut self, path: &Path) -> PageErrors {
        let since = self.events.len();
        let url = format!("file://{}", path.canonicalize().unwrap().display());
        let nav = self.call("Page.navigate", json!({"url": url}));
        assert!(nav.get("errorText").is_none(), "cannot load {url}: {nav}");
        self.wait_event("Page.loadEventFired", since);
        // Let scripts that run after load report too.
        self.eval("new Promise(r => setTimeout(() => r(true), 100))");
        self.errors_since(since)
    }

    /// Reloads the page; with `scripts` false, as a reader with JavaScript off sees it.
    pub fn reload(&mut self, scripts: bool) -> PageErrors {
        self.call("Emulation.setScriptExecutionDisabled", json!({"value": !scripts}));
        let since = self.events.len();
        self.call("Page.reload", json!({}));
        self.wait_event("Page.loadEventFired", since);
        self.errors_since(since)
    }

    fn errors_since(&self, since: usize) -> PageErrors {
        let mut errors = Vec::new();
        for e in &self.events[since..] {
            let p = &e["params"];
            match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => errors.push(format!("exception: {}", p["exceptionDetails"])),
                Some("Runtime.consoleAPICalled") if matches!(p["type"].as_str(), Some("error") | Some("assert")) => {
                    errors.push(format!("console.{}: {}", p["type"], p["args"]))
                }
                Some("Log.entryAdded") if p["entry"]["level"] == json!("error") => errors.push(format!("log: {}", p["entry"]["text"])),
                _ => {}
            }
        }
        PageErrors(errors)
    }

    /// The value of a JavaScript expression (awaited when it is a promise).
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}));
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// A PNG of the whole page at the current viewport width.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let r = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true}));
        base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().expect("png data")).unwrap()
    }

    /// A PNG of one region of the page, in CSS pixels.
    pub fn screenshot_clip(&mut self, x: f64, y: f64, width: f64, height: f64) -> Vec<u8> {
        use base64::Engine as _;
        let clip = json!({"x": x, "y": y, "width": width, "height": height, "scale": 1});
        let r = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true, "clip": clip}));
        base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().expect("png data")).unwrap()
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        self.next_id += 1;
        let mut bytes = serde_json::to_vec(&json!({"id": self.next_id, "method": "Browser.close", "params": {}})).unwrap();
        bytes.push(0);
        let _ = self.to_browser.write_all(&bytes);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
