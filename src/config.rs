//! Configuration: a TOML file ([`RawConfig`], a serde mirror with unknown keys
//! refused) overlaid with command-line flags, then [`Config::validate`]d into
//! typed values, reporting every problem at once.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::audit::LogTarget;
use crate::auth_http::MailProtocol;
use crate::authenticator::WaitPolicy;
use crate::cache::CachePolicy;
use crate::client_ip::TrustedProxies;
use crate::fastcgi::Limits;
use crate::listen::{ListenSpec, SocketOptions};
use crate::master_user::{MasterUser, DEFAULT_SEPARATOR};
use crate::mech::external::{Rule, Rules};
use crate::mech::Mechanism;
use crate::scheme::{Scheme, DEFAULT_ARGON2_MAX_MEMORY_KIB};
use crate::service::RequiredHeader;
use crate::throttle::{Cidr, ThrottlePolicy};
use crate::upstream::Upstreams;
use crate::verifier::VerifierPolicy;

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
    /// `--user`: run as this user once the sockets are bound (from root).
    pub user: Option<String>,
    /// `--group`: with `user`, run with this group (default: the user's name).
    pub group: Option<String>,
    /// `--passdb` URIs, tried in order.
    #[serde(default)]
    pub passdb: Vec<String>,
    /// `--default-scheme` for stored passwords without `{SCHEME}`.
    pub default_scheme: Option<String>,
    /// `--password-query`: the SQL passdbs' lookup, a template whose `%u`,
    /// `%n`, `%d` become bound parameters (default: the built-in schema).
    pub password_query: Option<String>,
    /// `--argon2-max-memory`: the largest Argon2 memory cost a stored hash
    /// may ask for, as a size with a unit: `256M`, `1G`, `65536K` (K, M, G
    /// are KiB, MiB, GiB; default 256M). Hashes above it are refused.
    pub argon2_max_memory: Option<String>,
    /// `--mechanism` list (default: plain, cram-md5, apop).
    #[serde(default)]
    pub mechanisms: Vec<String>,
    /// `--upstream PROTOCOL=HOST:PORT[,HOST:PORT…]`: the protocol's pool
    /// (a protocol repeated adds to its pool).
    #[serde(default)]
    pub upstream: Vec<String>,
    /// `--upstream-domain DOMAIN:PROTOCOL=HOST:PORT[,…]`: a domain's own pool.
    #[serde(default)]
    pub upstream_domain: Vec<String>,
    /// The same as a table: `[upstream_domains."example.org"]` with
    /// `imap = ["10.0.1.1:143", "10.0.1.2:143"]`.
    #[serde(default)]
    pub upstream_domains: BTreeMap<String, RawDomainUpstreams>,
    /// `--upstream-check-ms`: health check interval of pool members (0: off).
    pub upstream_check_ms: Option<u64>,
    /// `--trusted-proxy`: peers (CIDR) whose PROXY protocol address is
    /// believed as the client's.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// `--require-header NAME=VALUE`.
    #[serde(default)]
    pub require_header: Vec<String>,
    /// `--local-domain`.
    #[serde(default)]
    pub local_domains: Vec<String>,
    /// `--smtp-pass`: send `Auth-Pass` on SMTP success (nginx `proxy_smtp_auth on`).
    pub smtp_pass: Option<bool>,
    /// `--reject-unknown-client`: refuse SMTP clients without a confirmed
    /// reverse-DNS name (nginx `Client-Host: [UNAVAILABLE]` / `[TEMPUNAVAIL]`),
    /// like Postfix's `reject_unknown_client_hostname`. Needs a `resolver`
    /// in nginx's `mail {}`.
    pub reject_unknown_client: Option<bool>,
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
    /// `--state`: where throttle state lives: `memory` (default) or
    /// `redis://[:password@]host[:port][/db]` / `redis+unix:///path` to share
    /// it between instances.
    pub state: Option<String>,
    /// Brute-force throttling.
    #[serde(default)]
    pub throttle: RawThrottle,
    /// Verification cache.
    #[serde(default)]
    pub cache: RawCache,
    /// The bounded verifier for expensive hashes.
    #[serde(default)]
    pub verifier: RawVerifier,
    /// `[master_user]`: Dovecot master login for users verified without a
    /// plaintext ({CRAM-MD5}, EXTERNAL).
    pub master_user: Option<RawMasterUser>,
    /// `[external]`: client-certificate rules (none: EXTERNAL not offered).
    #[serde(default)]
    pub external: RawExternal,
}

/// `[master_user]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMasterUser {
    /// `--master-user`: the master user's name.
    pub user: Option<String>,
    /// The master secret itself (prefer `password_file`).
    pub password: Option<String>,
    /// `--master-password-file`: first line is the master secret.
    pub password_file: Option<PathBuf>,
    /// `--master-separator` (Dovecot `auth_master_user_separator`, default `*`).
    pub separator: Option<String>,
}

/// `[external]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExternal {
    /// `[[external.rule]]`, tried in order.
    #[serde(default)]
    pub rule: Vec<RawExternalRule>,
}

/// One `[[external.rule]]`: `fingerprint` + `user`, or `subject_attribute`
/// (+ optional `issuer`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExternalRule {
    /// SHA-1 of the certificate, hex (`:` allowed).
    pub fingerprint: Option<String>,
    /// The user a `fingerprint` maps to.
    pub user: Option<String>,
    /// Subject attribute whose value is the user (`CN`, `emailAddress`, …).
    pub subject_attribute: Option<String>,
    /// Issuer DN (RFC 2253) a `subject_attribute` rule requires.
    pub issuer: Option<String>,
}

impl RawExternalRule {
    fn build(&self) -> Result<Rule, String> {
        match self {
            RawExternalRule {
                fingerprint: Some(f),
                user: Some(u),
                subject_attribute: None,
                issuer: None,
            } => Rule::fingerprint(f, u).map_err(|e| e.to_string()),
            RawExternalRule {
                fingerprint: None,
                user: None,
                subject_attribute: Some(a),
                issuer,
            } => Rule::subject(a, issuer.as_deref()).map_err(|e| e.to_string()),
            _ => Err("external rule: give either fingerprint + user, or \
                      subject_attribute (+ issuer)"
                .into()),
        }
    }
}

/// `[upstream_domains."DOMAIN"]`: that domain's pools.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDomainUpstreams {
    /// IMAP servers, `HOST:PORT`.
    pub imap: Option<Vec<String>>,
    /// POP3 servers.
    pub pop3: Option<Vec<String>>,
    /// SMTP servers.
    pub smtp: Option<Vec<String>>,
}

/// `[throttle]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThrottle {
    /// `--no-throttle` sets false.
    pub enabled: Option<bool>,
    /// Sliding window failures are counted in.
    pub window_secs: Option<u64>,
    /// Failures from one network (all users) that block it (0: never).
    pub block_ip: Option<u32>,
    /// Failures for one user from one network that block that pair (0: never).
    pub block_ip_user: Option<u32>,
    /// How long a block lasts.
    pub block_secs: Option<u64>,
    /// `Auth-Wait` after the first counted failure, doubling per failure
    /// (default: `auth_wait.base` when that is set, else 1).
    pub delay_base: Option<u32>,
    /// Cap of that wait (default: `auth_wait.max` when that is set, else 30).
    pub delay_max: Option<u32>,
    /// IPv6 clients are counted per network of this prefix length.
    pub ipv6_prefix: Option<u8>,
    /// `--trusted-network`: CIDRs never counted or blocked (default:
    /// loopback; `[]` / `--trusted-network none`: nobody).
    pub trusted_networks: Option<Vec<String>>,
    /// Adaptive toleration: threshold growth per doubling of the users who
    /// logged in from a network (default 10).
    pub success_bonus: Option<u32>,
    /// The most toleration can raise `block_ip` to (default 250).
    pub block_ip_max: Option<u32>,
    /// Days a network stays known for a user after a login there (default
    /// 30; 0: off).
    pub known_days: Option<u64>,
}

/// `[cache]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// `--cache-ttl-secs`: how long a successful verification is remembered (0: off).
    pub ttl_secs: Option<u64>,
    /// How long a failed one is remembered (0, the default: not at all).
    pub negative_ttl_secs: Option<u64>,
    /// Most entries kept.
    pub max_entries: Option<usize>,
}

/// `[verifier]`: where expensive hashes (crypt, bcrypt, Argon2, PBKDF2) are
/// checked.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerifier {
    /// `--verify-concurrency`: checks running at once (default: the CPUs).
    pub concurrency: Option<usize>,
    /// `--verify-queue`: checks waiting at most (default: 64 per CPU).
    pub queue: Option<usize>,
    /// `--verify-queue-ms`: longest expected wait admitted (default 1000).
    pub max_wait_ms: Option<u64>,
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
    /// Privileges to drop to after binding: (user, group).
    pub run_as: Option<(String, Option<String>)>,
    /// Passdb URIs in order.
    pub passdbs: Vec<String>,
    /// Default scheme for bare stored passwords.
    pub default_scheme: Option<Scheme>,
    /// Lookup template of the SQL server passdbs (`None`: built-in schema).
    pub password_query: Option<String>,
    /// Largest Argon2 memory cost (KiB) of a stored hash; see
    /// [`crate::scheme::set_argon2_max_memory_kib`].
    pub argon2_max_memory_kib: u32,
    /// Enabled mechanisms.
    pub mechanisms: HashSet<Mechanism>,
    /// Upstream pools (health checks not started).
    pub upstreams: Upstreams,
    /// Peers whose `Proxy-Protocol-Addr` is believed.
    pub trusted_proxies: TrustedProxies,
    /// Required headers.
    pub required: Vec<RequiredHeader>,
    /// Local domains, lower-case.
    pub local_domains: Vec<String>,
    /// Send `Auth-Pass` for SMTP.
    pub smtp_pass: bool,
    /// Refuse SMTP clients without a confirmed reverse-DNS name.
    pub reject_unknown_client: bool,
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
    /// Redis URL for shared throttle state (`None`: in memory).
    pub state: Option<String>,
    /// Throttle settings (`None`: off).
    pub throttle: Option<ThrottlePolicy>,
    /// Cache settings (`None`: off).
    pub cache: Option<CachePolicy>,
    /// Limits of the bounded verifier.
    pub verifier: VerifierPolicy,
    /// Master login for users verified without a plaintext.
    pub master_user: Option<MasterUser>,
    /// EXTERNAL mapping rules (empty: EXTERNAL not offered).
    pub external: Rules,
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
        if !cli.upstream_domain.is_empty() {
            // Domain pools on the command line replace all of the file's.
            self.upstream_domains.clear();
            self.upstream_domain = cli.upstream_domain;
        }
        self.upstream_check_ms = cli.upstream_check_ms.or(self.upstream_check_ms);
        take(&mut self.trusted_proxies, cli.trusted_proxies);
        take(&mut self.require_header, cli.require_header);
        take(&mut self.local_domains, cli.local_domains);
        self.socket_mode = cli.socket_mode.or(self.socket_mode);
        self.socket_owner = cli.socket_owner.or(self.socket_owner);
        self.socket_group = cli.socket_group.or(self.socket_group);
        self.user = cli.user.or(self.user);
        self.group = cli.group.or(self.group);
        self.default_scheme = cli.default_scheme.or(self.default_scheme);
        self.password_query = cli.password_query.or(self.password_query);
        self.argon2_max_memory = cli.argon2_max_memory.or(self.argon2_max_memory);
        self.smtp_pass = cli.smtp_pass.or(self.smtp_pass);
        self.reject_unknown_client = cli.reject_unknown_client.or(self.reject_unknown_client);
        self.log = cli.log.or(self.log);
        self.log_level = cli.log_level.or(self.log_level);
        self.timeout_ms = cli.timeout_ms.or(self.timeout_ms);
        let (w, cw) = (&mut self.auth_wait, cli.auth_wait);
        w.base = cw.base.or(w.base);
        w.max = cw.max.or(w.max);
        w.max_attempts = cw.max_attempts.or(w.max_attempts);
        w.temporary = cw.temporary.or(w.temporary);
        self.state = cli.state.or(self.state);
        let (t, ct) = (&mut self.throttle, cli.throttle);
        t.enabled = ct.enabled.or(t.enabled);
        t.window_secs = ct.window_secs.or(t.window_secs);
        t.block_ip = ct.block_ip.or(t.block_ip);
        t.block_ip_user = ct.block_ip_user.or(t.block_ip_user);
        t.block_secs = ct.block_secs.or(t.block_secs);
        t.delay_base = ct.delay_base.or(t.delay_base);
        t.delay_max = ct.delay_max.or(t.delay_max);
        t.ipv6_prefix = ct.ipv6_prefix.or(t.ipv6_prefix);
        t.trusted_networks = ct.trusted_networks.or(t.trusted_networks.take());
        t.success_bonus = ct.success_bonus.or(t.success_bonus);
        t.block_ip_max = ct.block_ip_max.or(t.block_ip_max);
        t.known_days = ct.known_days.or(t.known_days);
        let (c, cc) = (&mut self.cache, cli.cache);
        c.ttl_secs = cc.ttl_secs.or(c.ttl_secs);
        c.negative_ttl_secs = cc.negative_ttl_secs.or(c.negative_ttl_secs);
        c.max_entries = cc.max_entries.or(c.max_entries);
        let (v, cv) = (&mut self.verifier, cli.verifier);
        v.concurrency = cv.concurrency.or(v.concurrency);
        v.queue = cv.queue.or(v.queue);
        v.max_wait_ms = cv.max_wait_ms.or(v.max_wait_ms);
        if let Some(cm) = cli.master_user {
            let m = self.master_user.get_or_insert_with(RawMasterUser::default);
            m.user = cm.user.or(m.user.take());
            if cm.password_file.is_some() {
                m.password = None;
                m.password_file = cm.password_file;
            }
            m.separator = cm.separator.or(m.separator.take());
        }
        self.external.rule.extend(cli.external.rule);
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
        let mut argon2_max_memory_kib = DEFAULT_ARGON2_MAX_MEMORY_KIB;
        if let Some(size) = &raw.argon2_max_memory {
            check(
                parse_size_kib(size)
                    .filter(|kib| *kib >= ARGON2_MIN_MEMORY_KIB)
                    .map(|kib| argon2_max_memory_kib = kib)
                    .ok_or_else(|| {
                        format!(
                            "argon2_max_memory `{size}`: expected a size from 8K up, such as \
                             256M, 1G or 65536K (K, M, G: KiB, MiB, GiB)"
                        )
                    }),
            );
        }
        let mut mechanisms = HashSet::new();
        if raw.mechanisms.is_empty() {
            mechanisms.extend(Mechanism::ALL);
        }
        for m in &raw.mechanisms {
            check(
                m.parse::<Mechanism>()
                    .map(|m| {
                        mechanisms.insert(m);
                    })
                    .map_err(|e| e.to_string()),
            );
        }
        let mut upstreams = Upstreams::default();
        for u in &raw.upstream {
            check(upstreams.add(u).map_err(|e| e.to_string()));
        }
        for u in &raw.upstream_domain {
            check(upstreams.add_domain(u).map_err(|e| e.to_string()));
        }
        for (domain, pools) in &raw.upstream_domains {
            for (proto, list) in [
                (MailProtocol::Imap, &pools.imap),
                (MailProtocol::Pop3, &pools.pop3),
                (MailProtocol::Smtp, &pools.smtp),
            ] {
                if let Some(list) = list {
                    check(
                        upstreams
                            .add_domain_list(domain, proto, list)
                            .map_err(|e| format!("upstream_domains: {e}")),
                    );
                }
            }
        }
        if let Some(ms) = raw.upstream_check_ms {
            upstreams.set_check_interval(Duration::from_millis(ms));
        }
        let mut trusted_proxies = Vec::new();
        for n in &raw.trusted_proxies {
            check(
                n.parse::<Cidr>()
                    .map(|c| trusted_proxies.push(c))
                    .map_err(|e| format!("trusted_proxies: {e}")),
            );
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
            check(
                l.parse::<LogTarget>()
                    .map(|t| log = t)
                    .map_err(|e| e.to_string()),
            );
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
        if raw.group.is_some() && raw.user.is_none() {
            check(Err(
                "group needs user (privileges are dropped to both)".into()
            ));
        }
        if raw.timeout_ms == Some(0) {
            check(Err("timeout_ms must be at least 1".into()));
        }
        if limits.max_connections == 0 {
            check(Err("limits.max_connections must be at least 1".into()));
        }
        let dv = VerifierPolicy::default();
        let rv = &raw.verifier;
        if rv.concurrency == Some(0) {
            check(Err(
                "verifier.concurrency (--verify-concurrency) must be at least 1".into(),
            ));
        }
        if rv.max_wait_ms == Some(0) {
            check(Err(
                "verifier.max_wait_ms (--verify-queue-ms) must be at least 1".into(),
            ));
        }
        let concurrency = rv.concurrency.unwrap_or(dv.concurrency);
        let verifier = VerifierPolicy {
            concurrency,
            // The default queue follows a configured concurrency.
            queue: rv
                .queue
                .unwrap_or(dv.queue / dv.concurrency.max(1) * concurrency),
            max_wait: rv.max_wait_ms.map_or(dv.max_wait, Duration::from_millis),
        };
        let state = match raw.state.as_deref() {
            None | Some("memory") => None,
            Some(url)
                if ["redis://", "redis+unix://", "unix://"]
                    .iter()
                    .any(|p| url.starts_with(p)) =>
            {
                Some(url.to_owned())
            }
            Some(url) => {
                // Never echo the URL: it may hold a password.
                let scheme = url.split(':').next().unwrap_or_default();
                check(Err(format!(
                    "state: `{scheme}:…` is not memory, redis://… or redis+unix://… \
                     (TLS to Redis is not built in)"
                )));
                None
            }
        };
        let dt = ThrottlePolicy::default();
        let t = &raw.throttle;
        let trusted = match &t.trusted_networks {
            None => dt.trusted.clone(),
            Some(list) => {
                let mut trusted = Vec::new();
                for n in list {
                    check(
                        n.parse::<Cidr>()
                            .map(|c| trusted.push(c))
                            .map_err(|e| format!("throttle.trusted_networks: {e}")),
                    );
                }
                trusted
            }
        };
        let throttle = ThrottlePolicy {
            window: t.window_secs.map_or(dt.window, Duration::from_secs),
            block_ip: t.block_ip.unwrap_or(dt.block_ip),
            block_ip_user: t.block_ip_user.unwrap_or(dt.block_ip_user),
            block_time: t.block_secs.map_or(dt.block_time, Duration::from_secs),
            // One knob for the client-visible wait: unless set on their own,
            // the throttle's delays follow [auth_wait] base/max (--auth-wait-*).
            delay_base: t.delay_base.or(w.base).unwrap_or(dt.delay_base),
            delay_max: t.delay_max.or(w.max).unwrap_or(dt.delay_max),
            ipv6_prefix: t.ipv6_prefix.unwrap_or(dt.ipv6_prefix),
            trusted,
            success_bonus: t.success_bonus.unwrap_or(dt.success_bonus),
            block_ip_max: t.block_ip_max.unwrap_or(dt.block_ip_max),
            known_for: t.known_days.map_or(dt.known_for, |d| {
                Duration::from_secs(d.saturating_mul(86_400))
            }),
        };
        if throttle.window.is_zero() || throttle.block_time.is_zero() {
            check(Err(
                "throttle.window_secs and throttle.block_secs must be at least 1".into(),
            ));
        }
        if !(1..=128).contains(&throttle.ipv6_prefix) {
            check(Err("throttle.ipv6_prefix must be 1..=128".into()));
        }
        let throttle = t.enabled.unwrap_or(true).then_some(throttle);
        let dc = CachePolicy::default();
        let c = &raw.cache;
        let cache = CachePolicy {
            ttl: c.ttl_secs.map_or(dc.ttl, Duration::from_secs),
            negative_ttl: c
                .negative_ttl_secs
                .map_or(dc.negative_ttl, Duration::from_secs),
            max_entries: c.max_entries.unwrap_or(dc.max_entries),
        };
        let cache = (!cache.ttl.is_zero() && cache.max_entries > 0).then_some(cache);
        let master_user = raw.master_user.as_ref().and_then(|m| {
            let secret = match (&m.password, &m.password_file) {
                (Some(p), None) => Ok(crate::secret::Secret::from(p.as_str())),
                (None, Some(f)) => MasterUser::read_password_file(f).map_err(|e| e.to_string()),
                _ => Err("master_user: give exactly one of password, password_file".into()),
            };
            let user = m
                .user
                .as_deref()
                .ok_or_else(|| "master_user.user is required".to_owned());
            let built = secret.and_then(|secret| {
                MasterUser::new(
                    user?,
                    secret,
                    m.separator.as_deref().unwrap_or(DEFAULT_SEPARATOR),
                )
                .map_err(|e| e.to_string())
            });
            built.map_err(|e| check(Err(e))).ok()
        });
        let mut external = Rules::default();
        for r in &raw.external.rule {
            check(r.build().map(|r| external.0.push(r)));
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
                run_as: raw.user.clone().map(|u| (u, raw.group.clone())),
                passdbs,
                default_scheme,
                password_query: raw.password_query.clone(),
                argon2_max_memory_kib,
                mechanisms,
                upstreams,
                trusted_proxies: TrustedProxies::new(trusted_proxies),
                required,
                local_domains,
                smtp_pass: raw.smtp_pass.unwrap_or(false),
                reject_unknown_client: raw.reject_unknown_client.unwrap_or(false),
                log,
                log_level,
                wait,
                timeout: Duration::from_millis(raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
                limits,
                state,
                throttle,
                cache,
                verifier,
                master_user,
                external,
            })
        } else {
            Err(problems)
        }
    }
}

/// Argon2's own minimum memory cost (8 KiB per lane); a lower limit would
/// refuse every hash.
const ARGON2_MIN_MEMORY_KIB: u32 = 8;

/// A size in KiB from `256M`, `1G`, `65536K` (also `256MiB`, `1 GiB`; case
/// does not matter): K, M, G are KiB, MiB, GiB. A bare number is refused
/// (bytes or KiB would both be guesses), as is anything that does not fit in
/// a `u32` of KiB.
pub fn parse_size_kib(text: &str) -> Option<u32> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let shift = match unit.trim_start().to_ascii_uppercase().as_str() {
        "K" | "KIB" => 0,
        "M" | "MIB" => 10,
        "G" | "GIB" => 20,
        _ => return None,
    };
    let n: u32 = number.parse().ok()?;
    n.checked_mul(1 << shift)
}

/// A KiB size for people: `256 MiB`, `1 GiB`, `1536 KiB`.
pub fn format_size_kib(kib: u32) -> String {
    if kib != 0 && kib % (1 << 20) == 0 {
        format!("{} GiB", kib >> 20)
    } else if kib != 0 && kib % (1 << 10) == 0 {
        format!("{} MiB", kib >> 10)
    } else {
        format!("{kib} KiB")
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
            upstream_domain = ["example.org:gopher=127.0.0.1:70"]
            trusted_proxies = ["10.0.0.0/33"]
            require_header = ["X_Key=secretvalue"]
            log = "file"
            [auth_wait]
            max_attempts = 0
            [upstream_domains."example.net"]
            imap = []
            "#,
        )
        .unwrap();
        let problems = Config::validate(raw).unwrap_err();
        assert_eq!(problems.len(), 11, "{problems:#?}");
        for value in ["nohostport", "gopher", "10.0.0.0/33", "example.net"] {
            assert!(
                problems.iter().any(|p| p.contains(value)),
                "{value} not named in {problems:#?}"
            );
        }
        assert!(
            problems.iter().all(|p| !p.contains("secretvalue")),
            "secrets stay out of errors"
        );
    }

    #[test]
    fn throttle_cache_and_state() {
        let file: RawConfig = toml::from_str(
            r#"
            state = "redis://:pw@127.0.0.1:6379/2"
            [throttle]
            block_ip_user = 3
            trusted_networks = ["192.0.2.0/24"]
            [cache]
            ttl_secs = 60
            "#,
        )
        .unwrap();
        let cli = RawConfig {
            throttle: RawThrottle {
                trusted_networks: Some(vec!["2001:db8::/32".into()]),
                ..RawThrottle::default()
            },
            ..RawConfig::default()
        };
        let c = Config::validate(file.overlay(cli)).unwrap();
        assert_eq!(c.state.as_deref(), Some("redis://:pw@127.0.0.1:6379/2"));
        let t = c.throttle.unwrap();
        assert_eq!(t.block_ip_user, 3);
        assert_eq!(t.block_ip, ThrottlePolicy::default().block_ip);
        assert_eq!(t.trusted, vec!["2001:db8::/32".parse().unwrap()]);
        assert_eq!(c.cache.unwrap().ttl, Duration::from_secs(60));

        let d = Config::validate(RawConfig::default()).unwrap();
        assert_eq!(d.state, None);
        assert_eq!(d.throttle, Some(ThrottlePolicy::default()));
        assert_eq!(d.cache, Some(CachePolicy::default()));

        let off: RawConfig = toml::from_str(
            "state = \"memory\"\n[throttle]\nenabled = false\n[cache]\nttl_secs = 0\n",
        )
        .unwrap();
        let off = Config::validate(off).unwrap();
        assert!(off.throttle.is_none() && off.cache.is_none() && off.state.is_none());

        let bad: RawConfig = toml::from_str(
            r#"
            state = "memcached://:hunter2@h"
            [throttle]
            window_secs = 0
            ipv6_prefix = 0
            trusted_networks = ["10.0.0.0/40"]
            "#,
        )
        .unwrap();
        let problems = Config::validate(bad).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems.iter().all(|p| !p.contains("hunter2")));
    }

    #[test]
    fn argon2_max_memory_sizes() {
        for (text, kib) in [
            ("256M", 262144),
            ("1G", 1 << 20),
            ("65536K", 65536),
            ("512MiB", 524288),
            (" 2 GiB ", 2 << 20),
            ("64m", 65536),
            ("8k", 8),
            ("4095G", 4095 << 20),
        ] {
            assert_eq!(parse_size_kib(text), Some(kib), "{text}");
        }
        for bad in [
            "", "256", "M", "1.5G", "-1G", "1T", "1 MB", "4096G", "256 M M",
        ] {
            assert_eq!(parse_size_kib(bad), None, "{bad}");
        }
        assert_eq!(format_size_kib(262144), "256 MiB");
        assert_eq!(format_size_kib(1 << 20), "1 GiB");
        assert_eq!(format_size_kib(1536), "1536 KiB");
        assert_eq!(format_size_kib(1536 << 10), "1536 MiB");

        let c = Config::validate(RawConfig::default()).unwrap();
        assert_eq!(c.argon2_max_memory_kib, 256 * 1024);
        let file: RawConfig = toml::from_str("argon2_max_memory = \"512M\"\n").unwrap();
        let c = Config::validate(file.clone()).unwrap();
        assert_eq!(c.argon2_max_memory_kib, 512 * 1024);
        // The command line wins.
        let cli = RawConfig {
            argon2_max_memory: Some("1G".into()),
            ..RawConfig::default()
        };
        let c = Config::validate(file.overlay(cli)).unwrap();
        assert_eq!(c.argon2_max_memory_kib, 1 << 20);
        for bad in ["262144", "4K", "lots"] {
            let raw = RawConfig {
                argon2_max_memory: Some(bad.into()),
                ..RawConfig::default()
            };
            let problems = Config::validate(raw).unwrap_err();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].starts_with(&format!("argon2_max_memory `{bad}`: expected a size")),
                "{problems:?}"
            );
        }
        // A number is not a size in TOML either.
        assert!(toml::from_str::<RawConfig>("argon2_max_memory = 262144\n").is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<RawConfig>("lisen = []").is_err());
        let e = toml::from_str::<RawConfig>("[upstream_domains.\"a.example\"]\ngopher = []\n")
            .unwrap_err();
        assert!(e.to_string().contains("gopher"), "{e}");
    }

    #[test]
    fn pools_domains_and_trusted_proxies() {
        let file: RawConfig = toml::from_str(
            r#"
            upstream = ["imap=127.0.0.1:143,127.0.0.2:143", "imap=[::1]:143"]
            upstream_check_ms = 250
            trusted_proxies = ["10.0.0.0/8"]
            [upstream_domains."Example.org"]
            imap = ["127.0.1.1:143", "127.0.1.2:143"]
            smtp = ["127.0.1.1:25"]
            "#,
        )
        .unwrap();
        let c = Config::validate(file.clone()).unwrap();
        let u = &c.upstreams;
        assert_eq!(u.pool(MailProtocol::Imap).unwrap().members().len(), 3);
        assert_eq!(
            u.domain_pool("example.org", MailProtocol::Imap)
                .unwrap()
                .members()
                .len(),
            2
        );
        assert_eq!(u.check_interval(), Duration::from_millis(250));
        assert!(c.trusted_proxies.trusts("10.9.8.7".parse().unwrap()));
        // A domain pool on the command line replaces the file's.
        let cli = RawConfig {
            upstream_domain: vec!["other.example:imap=127.0.2.1:143".into()],
            ..RawConfig::default()
        };
        let c = Config::validate(file.overlay(cli)).unwrap();
        assert!(c
            .upstreams
            .domain_pool("example.org", MailProtocol::Imap)
            .is_none());
        assert!(c
            .upstreams
            .domain_pool("other.example", MailProtocol::Imap)
            .is_some());
    }

    #[test]
    fn reject_unknown_client_is_off_unless_asked() {
        assert!(
            !Config::validate(RawConfig::default())
                .unwrap()
                .reject_unknown_client
        );
        let file: RawConfig = toml::from_str("reject_unknown_client = true").unwrap();
        assert!(
            Config::validate(file.clone())
                .unwrap()
                .reject_unknown_client
        );
        // The flag can only turn it on; the file's value stays otherwise.
        let off: RawConfig = toml::from_str("reject_unknown_client = false").unwrap();
        let cli = RawConfig {
            reject_unknown_client: Some(true),
            ..RawConfig::default()
        };
        assert!(
            Config::validate(off.overlay(cli))
                .unwrap()
                .reject_unknown_client
        );
        let c = Config::validate(file.overlay(RawConfig::default())).unwrap();
        assert!(c.reject_unknown_client);
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
