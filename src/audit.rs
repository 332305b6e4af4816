//! The audit log: exactly one line per decision, mail or HTTP, with typed
//! fields and no password field at all; the same record feeds the metrics.
//! Also sets up where log lines go (syslog or stderr).

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use crate::auth_http::{AuthMethod, MailAuthRequest, MailProtocol};
use crate::cache::CacheUse;
use crate::http_auth::HttpScheme;
use crate::metrics::{Observation, METRICS};

/// The result class of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Logged in.
    Ok,
    /// Wrong credentials (or malformed ones).
    Fail,
    /// Backend trouble; try again later.
    TempFail,
    /// Not allowed by configuration (relay, mechanism, missing shared secret).
    Refused,
    /// HTTP: no credentials yet; the client was sent the challenge (not a
    /// failure: every browser's first request gets one).
    Challenge,
}

impl Outcome {
    /// Log name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::TempFail => "tempfail",
            Outcome::Refused => "refused",
            Outcome::Challenge => "challenge",
        }
    }
}

/// What kind of request was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A mail login (`auth_http`).
    Mail(MailProtocol),
    /// An HTTP `auth_request`.
    Http,
}

impl Protocol {
    /// The audit line's name: `imap`, `pop3`, `smtp`, `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Mail(p) => p.as_str(),
            Protocol::Http => "http",
        }
    }
}

/// How the client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// nginx's `Auth-Method`.
    Mail(AuthMethod),
    /// The HTTP scheme of the credentials sent.
    Http(HttpScheme),
    /// HTTP without usable credentials of an offered scheme (`-`).
    Unknown,
}

impl Method {
    /// The audit line's name: the `Auth-Method`, `basic`, `digest` or `-`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Mail(m) => m.as_str(),
            Method::Http(s) => s.as_str(),
            Method::Unknown => "-",
        }
    }
}

/// What the throttle did to a request (the audit line's `throttle=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleAction {
    /// Refused before any passdb was asked (`blocked`).
    Blocked,
}

impl ThrottleAction {
    /// The audit line's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleAction::Blocked => "blocked",
        }
    }
}

/// One audit line.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// What kind of request.
    pub protocol: Protocol,
    /// How the client authenticated.
    pub method: Method,
    /// User name (escaped when printed).
    pub user: String,
    /// Client address (after the trusted-proxy rules).
    pub client_ip: Option<IpAddr>,
    /// Mail: `Auth-Login-Attempt`.
    pub attempt: Option<u32>,
    /// HTTP: the request URI.
    pub uri: Option<String>,
    /// HTTP Digest: the challenge says `stale=true`.
    pub stale: bool,
    /// What was decided.
    pub outcome: Outcome,
    /// Internal reason (never shown to the client).
    pub reason: String,
    /// Which passdb decided.
    pub passdb: &'static str,
    /// Chosen upstream.
    pub upstream: Option<(IpAddr, u16)>,
    /// `Auth-Wait` sent.
    pub wait: Option<u32>,
    /// Time spent deciding.
    pub latency: Duration,
    /// Throttle action, when there was one.
    pub throttle: Option<ThrottleAction>,
    /// How the verification cache took part, when it did.
    pub cache: Option<CacheUse>,
    /// The app password that matched (its name, never the secret).
    pub app_password: Option<String>,
    /// The scheme a rehash of the stored hash was queued to (`upgrade_scheme`).
    pub rehash: Option<crate::scheme::Scheme>,
}

impl AuditRecord {
    /// A record for the mail request `req`, to be filled in by the decision.
    pub fn mail(req: &MailAuthRequest) -> Self {
        AuditRecord {
            attempt: Some(req.attempt),
            ..AuditRecord::new(
                Protocol::Mail(req.protocol),
                Method::Mail(req.method),
                String::from_utf8_lossy(&req.user).into_owned(),
                req.client_ip,
            )
        }
    }

    /// A record to be filled in by the decision.
    pub fn new(
        protocol: Protocol,
        method: Method,
        user: String,
        client_ip: Option<IpAddr>,
    ) -> Self {
        AuditRecord {
            protocol,
            method,
            user,
            client_ip,
            attempt: None,
            uri: None,
            stale: false,
            outcome: Outcome::Fail,
            reason: String::new(),
            passdb: "-",
            upstream: None,
            wait: None,
            latency: Duration::ZERO,
            throttle: None,
            cache: None,
            app_password: None,
            rehash: None,
        }
    }

    /// Writes the record to the log (info for successes and challenges,
    /// error for temporary failures, warn otherwise) and counts it in the
    /// metrics (challenges are not decisions there).
    pub fn emit(&self) {
        match self.outcome {
            Outcome::Ok | Outcome::Challenge => log::info!(target: "audit", "{self}"),
            Outcome::TempFail => log::error!(target: "audit", "{self}"),
            Outcome::Fail | Outcome::Refused => log::warn!(target: "audit", "{self}"),
        }
        if self.outcome != Outcome::Challenge {
            METRICS.observe(Observation {
                protocol: self.protocol,
                method: self.method,
                outcome: self.outcome,
                latency: self.latency,
                blocked: self.throttle == Some(ThrottleAction::Blocked),
                cache: self.cache,
            });
        }
    }
}

impl fmt::Display for AuditRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "auth result={} protocol={} method={} user={} ip={}",
            self.outcome.as_str(),
            self.protocol.as_str(),
            self.method.as_str(),
            quoted(&self.user),
            self.client_ip
                .map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
        )?;
        if let Some(a) = self.attempt {
            write!(f, " attempt={a}")?;
        }
        if let Some(uri) = &self.uri {
            write!(f, " uri={}", quoted(uri))?;
        }
        if !self.reason.is_empty() {
            write!(f, " reason={}", quoted(&self.reason))?;
        }
        write!(f, " passdb={}", self.passdb)?;
        if let Some((ip, port)) = self.upstream {
            match ip {
                IpAddr::V4(v4) => write!(f, " upstream={v4}:{port}")?,
                IpAddr::V6(v6) => write!(f, " upstream=[{v6}]:{port}")?,
            }
        }
        if let Some(w) = self.wait {
            write!(f, " wait={w}")?;
        }
        if self.stale {
            f.write_str(" stale=true")?;
        }
        if let Some(t) = self.throttle {
            write!(f, " throttle={}", t.as_str())?;
        }
        if let Some(c) = self.cache {
            write!(f, " cache={}", c.as_str())?;
        }
        if let Some(name) = &self.app_password {
            write!(f, " app_password={}", quoted(name))?;
        }
        if let Some(s) = self.rehash {
            write!(f, " rehash={s}")?;
        }
        write!(f, " latency_ms={:.3}", self.latency.as_secs_f64() * 1000.0)
    }
}

/// A user-controlled string made safe for one log line: quoted when needed,
/// control characters, quotes and backslashes escaped.
pub fn quoted(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '=');
    if plain {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard error, one line each (for systemd's journal, tests, foreground runs).
    Stderr,
    /// Local syslog (`/dev/log`) with the given facility (a validated name
    /// such as `mail` or `local3`).
    Syslog(String),
}

/// A `--log` value we do not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogTargetError {
    /// `syslog:FACILITY` with a facility syslog does not have.
    #[error("unknown syslog facility `{0}`")]
    Facility(String),
    /// Neither `stderr` nor `syslog[:FACILITY]`.
    #[error("unknown log target `{0}` (stderr, syslog, syslog:FACILITY)")]
    Target(String),
}

impl std::str::FromStr for LogTarget {
    type Err = LogTargetError;
    fn from_str(s: &str) -> Result<Self, LogTargetError> {
        match s {
            "stderr" => Ok(LogTarget::Stderr),
            "syslog" => Ok(LogTarget::Syslog("mail".into())),
            other => match other.strip_prefix("syslog:") {
                Some(fac) => fac
                    .parse::<syslog::Facility>()
                    .map(|_| LogTarget::Syslog(fac.to_owned()))
                    .map_err(|_| LogTargetError::Facility(fac.to_owned())),
                None => Err(LogTargetError::Target(s.to_owned())),
            },
        }
    }
}

struct StderrLogger {
    level: log::LevelFilter,
    /// Our pid, read once: `std::process::id()` is a syscall every time, and
    /// this runs once per request.
    pid: u32,
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            // One write per line so concurrent lines do not interleave.
            let line = format!(
                "nginx-auth-fcgi[{}]: {}: {}\n",
                self.pid,
                r.level(),
                r.args()
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
    fn flush(&self) {}
}

/// Installs the logger. Syslog falls back to stderr (with a warning) when no
/// syslog socket is reachable, so a start never fails for want of a logger.
pub fn init(target: &LogTarget, level: log::LevelFilter) {
    let installed = match target {
        LogTarget::Stderr => log::set_boxed_logger(Box::new(StderrLogger {
            level,
            pid: std::process::id(),
        }))
        .is_ok(),
        LogTarget::Syslog(facility) => {
            let formatter = syslog::Formatter3164 {
                facility: facility.parse().unwrap_or(syslog::Facility::LOG_MAIL),
                hostname: None,
                process: "nginx-auth-fcgi".into(),
                pid: std::process::id(),
            };
            match syslog::unix(formatter) {
                Ok(logger) => {
                    log::set_boxed_logger(Box::new(syslog::BasicLogger::new(logger))).is_ok()
                }
                Err(e) => {
                    let ok = log::set_boxed_logger(Box::new(StderrLogger {
                        level,
                        pid: std::process::id(),
                    }))
                    .is_ok();
                    log::warn!("syslog unavailable ({e}); logging to stderr");
                    ok
                }
            }
        }
    };
    if installed {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quoted("alice@example.org"), "alice@example.org");
        assert_eq!(quoted("us er"), "\"us er\"");
        assert_eq!(quoted("a\"b\\c\nd"), "\"a\\\"b\\\\c\\x0ad\"");
        assert_eq!(quoted("x=1"), "\"x=1\"");
        assert_eq!(quoted(""), "\"\"");
    }

    #[test]
    fn log_targets() {
        assert_eq!("stderr".parse::<LogTarget>(), Ok(LogTarget::Stderr));
        assert_eq!(
            "syslog:local3".parse::<LogTarget>(),
            Ok(LogTarget::Syslog("local3".into()))
        );
        assert!("syslog:nope".parse::<LogTarget>().is_err());
        assert!("file".parse::<LogTarget>().is_err());
    }
}
