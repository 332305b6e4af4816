//! The throttle: in-process with paused time (`throttle`) and shared through
//! a real redis-server (`shared_state`). Both capture the log through one
//! logger for this binary, so they live apart from the other in-process tests.

#[path = "../common/mod.rs"]
mod common;

mod shared_state;
mod throttle;

use std::sync::{Mutex, OnceLock};

/// Log lines of the whole test binary (tests run in parallel: each test
/// uses its own client addresses and looks only for lines naming them).
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        LOG.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(r.args().to_string());
    }
    fn flush(&self) {}
}

/// Installs the capturing logger (once for the binary).
fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        log::set_boxed_logger(Box::new(Capture)).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
    });
}

/// How many captured lines contain `containing`.
fn log_lines(containing: &str) -> usize {
    LOG.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(containing))
        .count()
}

/// A fresh wrong password: a guesser tries a new one each time (the same
/// wrong password again counts once).
fn guess() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "guess-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}
