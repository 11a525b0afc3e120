//! Progress for people (indicatif bars on a terminal) and for log collectors (a log line every
//! tenth of the way), behind the core's `Progress` seam.

use embedfleet_core::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub fn for_terminal() -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() { Arc::new(Bars::default()) } else { Arc::new(LogLines::default()) }
}

#[derive(Default)]
struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn start(&self, phase: &str, total: Option<u64>) {
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template("{prefix:>12.bold} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner(),
        };
        bar.set_prefix(phase.to_owned());
        if let Some(old) = self.bar.lock().expect("not poisoned").replace(bar) {
            old.finish_and_clear();
        }
    }

    fn advance(&self, steps: u64) {
        if let Some(bar) = &*self.bar.lock().expect("not poisoned") {
            bar.inc(steps);
        }
    }

    fn message(&self, message: &str) {
        if let Some(bar) = &*self.bar.lock().expect("not poisoned") {
            bar.set_message(message.to_owned());
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("not poisoned").take() {
            bar.finish();
        }
    }
}

#[derive(Default)]
struct LogLines {
    phase: Mutex<String>,
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress for LogLines {
    fn start(&self, phase: &str, total: Option<u64>) {
        *self.phase.lock().expect("not poisoned") = phase.to_owned();
        self.total.store(total.unwrap_or(0), Ordering::SeqCst);
        self.done.store(0, Ordering::SeqCst);
        tracing::info!(phase, total, "started");
    }

    fn advance(&self, steps: u64) {
        let total = self.total.load(Ordering::SeqCst);
        let done = self.done.fetch_add(steps, Ordering::SeqCst) + steps;
        if total > 0 && (done * 10 / total) != ((done - steps) * 10 / total) {
            let phase = self.phase.lock().expect("not poisoned").clone();
            tracing::info!(phase, done, total, "progress");
        }
    }

    fn message(&self, message: &str) {
        tracing::debug!(message);
    }
}
