//! The throttle: in-process with paused time (`throttle`) and shared through
//! a real redis-server (`shared_state`). Both capture the log through one
//! logger for this binary, so they live apart from the other in-process tests.

#[path = "../common/mod.rs"]
mod common;

mod shared_state;
mod throttle;

use std::sync::{Arc, Mutex, OnceLock};

use crate::common::policy::base_policy;
use nginx_auth_fcgi::auth_http::MailAuthRequest;
use nginx_auth_fcgi::authenticator::{Authenticator, Policy};
use nginx_auth_fcgi::fastcgi::Params;
use nginx_auth_fcgi::mech::Mechanism;
use nginx_auth_fcgi::passdb::AnyPassdb;
use nginx_auth_fcgi::throttle::{Throttle, ThrottlePolicy};
use nginx_auth_fcgi::upstream::Upstreams;

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

/// The throttle's settings for these tests: blocks after 20 failures per
/// address, 5 per address and user, for 900 s.
fn policy() -> ThrottlePolicy {
    common::policy::fixed_throttle()
}

fn authenticator(passdbs: Vec<AnyPassdb>, throttle: Option<Arc<Throttle>>) -> Authenticator {
    let mut upstreams = Upstreams::default();
    upstreams.add("imap=127.0.0.1:1143").unwrap();
    let policy = Policy {
        throttle,
        ..base_policy([Mechanism::Plain], upstreams)
    };
    Authenticator::new(policy, passdbs).unwrap()
}

/// One login as nginx asks for it: a fresh connection (attempt 1) unless said.
fn login(user: &str, pass: &str, ip: &str) -> MailAuthRequest {
    login_attempt(user, pass, ip, 1)
}

fn login_attempt(user: &str, pass: &str, ip: &str, attempt: u32) -> MailAuthRequest {
    let pairs = [
        ("HTTP_AUTH_METHOD", "plain"),
        ("HTTP_AUTH_USER", user),
        ("HTTP_AUTH_PASS", pass),
        ("HTTP_AUTH_PROTOCOL", "imap"),
        ("HTTP_AUTH_LOGIN_ATTEMPT", &attempt.to_string()),
        ("HTTP_CLIENT_IP", ip),
    ]
    .iter()
    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect();
    MailAuthRequest::from_params(&Params::from_pairs(pairs)).unwrap()
}
