//! Configuration: a TOML file ([`RawConfig`], a serde mirror with unknown keys
//! refused) overlaid with command-line flags, then [`Config::validate`]d into
//! typed values, reporting every problem at once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::audit::LogTarget;
use crate::authenticator::WaitPolicy;
use crate::fastcgi::Limits;
use crate::listen::{ListenSpec, SocketOptions};
use crate::mech::Mechanism;
use crate::scheme::Scheme;
use crate::service::RequiredHeader;
use crate::upstream::Upstreams;

/// The passdb used when none is configured: the embedded SQLite database.
pub const DEFAULT_PASSDB: &str = "sqlite:/var/lib/nginx-auth-fcgi/users.db";
/// The socket used when no listener is configured or inherited.
pub const DEFAULT_LISTEN: &str = "unix:/run/nginx-auth-fcgi/auth.sock";

/// Default decision time limit: well below nginx's 60 s `auth_http_timeout`.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// The TOML file, as written. Every field has a command-line twin.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `--listen`: `unix:PATH`, `fd:N`, `tcp:HOST:PORT`, `systemd`.
    #[serde(default)]
    pub listen: Vec<String>,
    /// `--socket-mode`, octal string such as `"0660"`.
    pub socket_mode: Option<String>,
    /// `--socket-owner`.
    pub socket_owner: Option<String>,
    /// `--socket-group`.
    pub socket_group: Option<String>,
    /// `--passdb` URIs, tried in order.
    #[serde(default)]
    pub passdb: Vec<String>,
    /// `--default-scheme` for stored passwords without `{SCHEME}`.
    pub default_scheme: Option<String>,
    /// `--mechanism` list (default: plain, cram-md5, apop).
    #[serde(default)]
    pub mechanisms: Vec<String>,
    /// `--upstream PROTOCOL=HOST:PORT`.
    #[serde(default)]
    pub upstream: Vec<String>,
    /// `--require-header NAME=VALUE`.
    #[serde(default)]
    pub require_header: Vec<String>,
    /// `--local-domain`.
    #[serde(default)]
    pub local_domains: Vec<String>,
    /// `--smtp-pass`: send `Auth-Pass` on SMTP success (nginx `proxy_smtp_auth on`).
    pub smtp_pass: Option<bool>,
    /// `--log`: `stderr`, `syslog`, `syslog:FACILITY`.
    pub log: Option<String>,
    /// `--log-level`: error, warn, info, debug.
    pub log_level: Option<String>,
    /// `--timeout-ms`: longest a decision may take before it is a temporary failure.
    pub timeout_ms: Option<u64>,
    /// `Auth-Wait` schedule.
    #[serde(default)]
    pub auth_wait: RawWait,
    /// Hard limits against hostile or broken peers.
    #[serde(default)]
    pub limits: RawLimits,
}

/// `[auth_wait]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWait {
    /// Seconds after the first failure (doubles per attempt).
    pub base: Option<u32>,
    /// Cap of one wait.
    pub max: Option<u32>,
    /// From this attempt on, no `Auth-Wait`: nginx closes the connection.
    pub max_attempts: Option<u32>,
    /// Wait after a temporary failure.
    pub temporary: Option<u32>,
}

/// `[limits]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Concurrent FastCGI connections.
    pub max_connections: Option<usize>,
    /// Bytes of params per request.
    pub max_params_bytes: Option<usize>,
    /// Params per request.
    pub max_params_count: Option<usize>,
    /// Bytes of stdin per request.
    pub max_stdin_bytes: Option<usize>,
    /// A started request must arrive completely within this many milliseconds.
    pub read_timeout_ms: Option<u64>,
    /// An idle kept-alive connection is closed after this many seconds.
    pub idle_timeout_secs: Option<u64>,
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Listeners (empty: inherited socket, else [`DEFAULT_LISTEN`]).
    pub listen: Vec<ListenSpec>,
    /// Socket file mode/owner.
    pub socket: SocketOptions,
    /// Passdb URIs in order.
    pub passdbs: Vec<String>,
    /// Default scheme for bare stored passwords.
    pub default_scheme: Option<Scheme>,
    /// Enabled mechanisms.
    pub mechanisms: HashSet<Mechanism>,
    /// Default upstreams.
    pub upstreams: Upstreams,
    /// Required headers.
    pub required: Vec<RequiredHeader>,
    /// Local domains, lower-case.
    pub local_domains: Vec<String>,
    /// Send `Auth-Pass` for SMTP.
    pub smtp_pass: bool,
    /// Log destination.
    pub log: LogTarget,
    /// Log level.
    pub log_level: log::LevelFilter,
    /// Back-off.
    pub wait: WaitPolicy,
    /// Decision time limit.
    pub timeout: Duration,
    /// Transport limits.
    pub limits: Limits,
}

impl RawConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Lays command-line values over file values: a list or value given on the
    /// command line replaces the file's.
    pub fn overlay(mut self, cli: RawConfig) -> Self {
        fn take<T>(dst: &mut Vec<T>, src: Vec<T>) {
            if !src.is_empty() {
                *dst = src;
            }
        }
        take(&mut self.listen, cli.listen);
        take(&mut self.passdb, cli.passdb);
        take(&mut self.mechanisms, cli.mechanisms);
        take(&mut self.upstream, cli.upstream);
        take(&mut self.require_header, cli.require_header);
        take(&mut self.local_domains, cli.local_domains);
        self.socket_mode = cli.socket_mode.or(self.socket_mode);
        self.socket_owner = cli.socket_owner.or(self.socket_owner);
        self.socket_group = cli.socket_group.or(self.socket_group);
        self.default_scheme = cli.default_scheme.or(self.default_scheme);
        self.smtp_pass = cli.smtp_pass.or(self.smtp_pass);
        self.log = cli.log.or(self.log);
        self.log_level = cli.log_level.or(self.log_level);
        self.timeout_ms = cli.timeout_ms.or(self.timeout_ms);
        let (w, cw) = (&mut self.auth_wait, cli.auth_wait);
        w.base = cw.base.or(w.base);
        w.max = cw.max.or(w.max);
        w.max_attempts = cw.max_attempts.or(w.max_attempts);
        w.temporary = cw.temporary.or(w.temporary);
        self
    }
}

impl Config {
    /// Checks everything and reports all problems, not just the first.
    pub fn validate(raw: RawConfig) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let mut check = |r: Result<(), String>| {
            if let Err(e) = r {
                problems.push(e);
            }
        };

        let mut listen = Vec::new();
        for l in &raw.listen {
            check(
                l.parse::<ListenSpec>()
                    .map(|s| listen.push(s))
                    .map_err(|e| format!("listen `{l}`: {e}")),
            );
        }
        let mut socket = SocketOptions {
            owner: raw.socket_owner.clone(),
            group: raw.socket_group.clone(),
            ..SocketOptions::default()
        };
        if let Some(m) = &raw.socket_mode {
            check(
                u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .map(|m| socket.mode = m)
                    .ok_or_else(|| format!("socket_mode `{m}`: expected octal such as 0660")),
            );
        }
        let mut default_scheme = None;
        if let Some(s) = &raw.default_scheme {
            check(
                s.parse::<Scheme>()
                    .map(|s| default_scheme = Some(s))
                    .map_err(|e| format!("default_scheme: {e}")),
            );
        }
        let mut mechanisms = HashSet::new();
        if raw.mechanisms.is_empty() {
            mechanisms.extend(Mechanism::ALL);
        }
        for m in &raw.mechanisms {
            check(m.parse::<Mechanism>().map(|m| {
                mechanisms.insert(m);
            }));
        }
        let mut upstreams = Upstreams::default();
        for u in &raw.upstream {
            check(upstreams.add(u).map_err(|e| e.to_string()));
        }
        let mut required = Vec::new();
        for r in &raw.require_header {
            let name = r.split('=').next().unwrap_or_default();
            check(
                r.parse::<RequiredHeader>()
                    .map(|h| required.push(h))
                    .map_err(|e| format!("require_header `{name}=…`: {e}")),
            );
        }
        let mut local_domains = Vec::new();
        for d in &raw.local_domains {
            let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            if d.is_empty() || d.contains('@') || d.contains(char::is_whitespace) {
                check(Err(format!(
                    "local_domain `{d}`: expected a domain such as example.org"
                )));
            } else {
                local_domains.push(d);
            }
        }
        let mut log = LogTarget::Syslog("mail".into());
        if let Some(l) = &raw.log {
            check(l.parse().map(|t| log = t));
        }
        let mut log_level = log::LevelFilter::Info;
        if let Some(l) = &raw.log_level {
            check(
                l.parse()
                    .map(|lv| log_level = lv)
                    .map_err(|_| format!("log_level `{l}`: expected error, warn, info or debug")),
            );
        }
        let d = WaitPolicy::default();
        let w = &raw.auth_wait;
        let wait = WaitPolicy {
            base: w.base.unwrap_or(d.base),
            max: w.max.unwrap_or(d.max),
            max_attempts: w.max_attempts.unwrap_or(d.max_attempts),
            temporary: w.temporary.unwrap_or(d.temporary),
        };
        if wait.max_attempts == 0 || wait.max_attempts > 20 {
            check(Err(
                "auth_wait.max_attempts must be 1..=20 (nginx keeps memory per attempt)".into(),
            ));
        }
        let dl = Limits::default();
        let l = &raw.limits;
        let limits = Limits {
            max_connections: l.max_connections.unwrap_or(dl.max_connections),
            max_params_bytes: l.max_params_bytes.unwrap_or(dl.max_params_bytes),
            max_params_count: l.max_params_count.unwrap_or(dl.max_params_count),
            max_stdin_bytes: l.max_stdin_bytes.unwrap_or(dl.max_stdin_bytes),
            read_timeout: l
                .read_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(dl.read_timeout),
            idle_timeout: l
                .idle_timeout_secs
                .map(Duration::from_secs)
                .unwrap_or(dl.idle_timeout),
        };
        if raw.timeout_ms == Some(0) {
            check(Err("timeout_ms must be at least 1".into()));
        }
        if limits.max_connections == 0 {
            check(Err("limits.max_connections must be at least 1".into()));
        }
        let passdbs = if raw.passdb.is_empty() {
            vec![DEFAULT_PASSDB.to_owned()]
        } else {
            raw.passdb.clone()
        };
        if problems.is_empty() {
            Ok(Config {
                listen,
                socket,
                passdbs,
                default_scheme,
                mechanisms,
                upstreams,
                required,
                local_domains,
                smtp_pass: raw.smtp_pass.unwrap_or(false),
                log,
                log_level,
                wait,
                timeout: Duration::from_millis(raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
                limits,
            })
        } else {
            Err(problems)
        }
    }
}

/// The path of a `sqlite:` URI, for the `user` admin commands.
pub fn sqlite_path(uri: &str) -> Option<PathBuf> {
    uri.strip_prefix("sqlite:").map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem() {
        let raw: RawConfig = toml::from_str(
            r#"
            listen = ["bogus:1"]
            socket_mode = "999"
            default_scheme = "ROT13"
            mechanisms = ["plain", "gssapi"]
            upstream = ["imap=nohostport"]
            require_header = ["X_Key=secretvalue"]
            log = "file"
            [auth_wait]
            max_attempts = 0
            "#,
        )
        .unwrap();
        let problems = Config::validate(raw).unwrap_err();
        assert_eq!(problems.len(), 8, "{problems:#?}");
        assert!(
            problems.iter().all(|p| !p.contains("secretvalue")),
            "secrets stay out of errors"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<RawConfig>("lisen = []").is_err());
    }

    #[test]
    fn defaults_and_overlay() {
        let file: RawConfig = toml::from_str(
            r#"
            passdb = ["passwd-file:/etc/a"]
            local_domains = ["Example.ORG."]
            [auth_wait]
            base = 2
            "#,
        )
        .unwrap();
        let cli = RawConfig {
            upstream: vec!["imap=127.0.0.1:143".into()],
            log: Some("stderr".into()),
            ..RawConfig::default()
        };
        let c = Config::validate(file.overlay(cli)).unwrap();
        assert_eq!(c.passdbs, vec!["passwd-file:/etc/a"]);
        assert_eq!(c.local_domains, vec!["example.org"]);
        assert_eq!(c.wait.base, 2);
        assert_eq!(c.log, LogTarget::Stderr);
        assert_eq!(c.mechanisms.len(), 3);
        assert_eq!(c.socket.mode, 0o660);
        let c = Config::validate(RawConfig::default()).unwrap();
        assert_eq!(c.passdbs, vec![DEFAULT_PASSDB]);
    }
}
