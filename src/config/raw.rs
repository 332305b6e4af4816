//! The configuration file as written: a serde mirror of the TOML, unknown
//! keys refused, and [`RawConfig::overlay`], which lays the command-line
//! flags (each a twin of a key) over it. Nothing here is checked yet; see
//! [`Config::validate`](super::Config::validate).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

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
    /// `--app-password-query`: the SQL passdbs' app passwords, a template
    /// like `password_query` returning `name`, `password`, `scopes` and
    /// optionally `networks` and `expires_at`, one row each.
    pub app_password_query: Option<String>,
    /// `--upgrade-scheme`: rehash stored passwords after plaintext logins to
    /// `ARGON2ID`, `BLF-CRYPT` or `SHA512-CRYPT`, optionally with a cost:
    /// `ARGON2ID:m=65536,t=3,p=1`, `BLF-CRYPT:cost=12`,
    /// `SHA512-CRYPT:rounds=500000` (default: off).
    pub upgrade_scheme: Option<String>,
    /// `--rehash-passwd-file`: with `upgrade_scheme`, also rewrite passwd-files.
    pub rehash_passwd_file: Option<bool>,
    /// `--rehash-plain`: with `upgrade_scheme`, also upgrade `{PLAIN}`,
    /// `{CLEAR}` and `{CRAM-MD5}` (those users lose CRAM-MD5, APOP, Digest).
    pub rehash_plain: Option<bool>,
    /// `--update-query`: with `upgrade_scheme`, the SQL server passdbs'
    /// write, a template like `password_query` whose `%{hash}` (new) and
    /// `%{old_hash}` (replaced, required) are bound too (default: the
    /// built-in schema's `UPDATE users …`).
    pub update_query: Option<String>,
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
    /// `--require-app-password`: protocols (`imap`, `pop3`, `smtp`,
    /// `http`) for which main passwords are refused; only app passwords
    /// log in.
    #[serde(default)]
    pub require_app_password: Vec<String>,
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
    /// `redis://[:password@]host[:port][/db]` / `redis+unix:///path` /
    /// `rediss://…` (TLS) / `redis+sentinel://…` to share it between
    /// instances.
    pub state: Option<String>,
    /// `--state-ca-file`: CA certificates (PEM) for a `rediss://` state.
    pub state_ca_file: Option<PathBuf>,
    /// `--state-cert-file`: client certificate (PEM) for a `rediss://` state.
    pub state_cert_file: Option<PathBuf>,
    /// `--state-key-file`: its private key (PEM).
    pub state_key_file: Option<PathBuf>,
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
    /// `--lookup-cache-ttl`: seconds a record a passdb returned answers
    /// without asking it again (default 60; 0: the credential lookup cache
    /// is off).
    pub lookup_cache_ttl: Option<u64>,
    /// `--lookup-cache-stale-ttl`: seconds after it was fetched a cached
    /// record still answers while its passdb is down (default 3600; 0:
    /// never).
    pub lookup_cache_stale_ttl: Option<u64>,
    /// `--nonce-key-file`: the HTTP Digest nonce key (hex, see
    /// [`crate::http_auth::nonce_key`]) shared by several instances; none:
    /// a random key per process.
    pub nonce_key_file: Option<PathBuf>,
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

impl RawConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses TOML text (a configuration file's content).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "(inline)".into(),
            source,
        })
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
        take(&mut self.require_app_password, cli.require_app_password);
        self.socket_mode = cli.socket_mode.or(self.socket_mode);
        self.socket_owner = cli.socket_owner.or(self.socket_owner);
        self.socket_group = cli.socket_group.or(self.socket_group);
        self.user = cli.user.or(self.user);
        self.group = cli.group.or(self.group);
        self.default_scheme = cli.default_scheme.or(self.default_scheme);
        self.password_query = cli.password_query.or(self.password_query);
        self.app_password_query = cli.app_password_query.or(self.app_password_query);
        self.argon2_max_memory = cli.argon2_max_memory.or(self.argon2_max_memory);
        self.upgrade_scheme = cli.upgrade_scheme.or(self.upgrade_scheme);
        self.rehash_passwd_file = cli.rehash_passwd_file.or(self.rehash_passwd_file);
        self.rehash_plain = cli.rehash_plain.or(self.rehash_plain);
        self.update_query = cli.update_query.or(self.update_query);
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
        self.state_ca_file = cli.state_ca_file.or(self.state_ca_file);
        self.state_cert_file = cli.state_cert_file.or(self.state_cert_file);
        self.state_key_file = cli.state_key_file.or(self.state_key_file);
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
        self.lookup_cache_ttl = cli.lookup_cache_ttl.or(self.lookup_cache_ttl);
        self.lookup_cache_stale_ttl = cli.lookup_cache_stale_ttl.or(self.lookup_cache_stale_ttl);
        self.nonce_key_file = cli.nonce_key_file.or(self.nonce_key_file);
        self
    }
}
