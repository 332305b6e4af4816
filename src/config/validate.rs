//! [`Config::validate`]: every section of a [`RawConfig`] checks itself and
//! adds what is wrong to one [`Problems`] list, so an admin sees all the
//! problems of a file at once, not one per start.

use std::collections::HashSet;
use std::fmt::Display;
use std::time::Duration;

use super::raw::*;
use super::{Config, ConfigError, DEFAULT_PASSDB, DEFAULT_TIMEOUT_MS, DEFAULT_UPSTREAMS};
use crate::audit::LogTarget;
use crate::auth_http::MailProtocol;
use crate::authenticator::WaitPolicy;
use crate::cache::CachePolicy;
use crate::client_ip::TrustedProxies;
use crate::fastcgi::Limits;
use crate::listen::{ListenSpec, SocketOptions};
use crate::lookup_cache::LookupPolicy;
use crate::master_user::{MasterUser, DEFAULT_SEPARATOR};
use crate::mech::external::{Rule, Rules};
use crate::mech::Mechanism;
use crate::scheme::{Scheme, DEFAULT_ARGON2_MAX_MEMORY_KIB};
use crate::service::RequiredHeader;
use crate::shared_state::{SharedStateError, Target, TlsFiles};
use crate::throttle::{Cidr, ThrottlePolicy};
use crate::upstream::Upstreams;
use crate::verifier::VerifierPolicy;

/// The problems found so far.
#[derive(Debug, Default)]
pub struct Problems(Vec<ConfigError>);

impl Problems {
    /// The value of `r`, or `None` with its error noted.
    pub fn check<T, E: Display>(&mut self, r: Result<T, E>) -> Option<T> {
        r.map_err(|e| self.0.push(ConfigError::Invalid(e.to_string())))
            .ok()
    }

    /// Notes a problem.
    pub fn push(&mut self, message: impl Into<String>) {
        self.0.push(ConfigError::Invalid(message.into()));
    }

    /// Every item of `list` parsed with `parse`, each failure noted with
    /// `what` in front.
    fn each<T, E: Display>(
        &mut self,
        list: &[String],
        what: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Vec<T> {
        list.iter()
            .filter_map(|s| self.check(parse(s).map_err(|e| format!("{what}: {e}"))))
            .collect()
    }
}

/// Argon2's own minimum memory cost (8 KiB per lane); a lower limit would
/// refuse every hash.
const ARGON2_MIN_MEMORY_KIB: u32 = 8;

/// The Auth-Wait schedule of `[auth_wait]`.
fn wait(w: &RawWait, p: &mut Problems) -> WaitPolicy {
    let d = WaitPolicy::default();
    let wait = WaitPolicy {
        base: w.base.unwrap_or(d.base),
        max: w.max.unwrap_or(d.max),
        max_attempts: w.max_attempts.unwrap_or(d.max_attempts),
        temporary: w.temporary.unwrap_or(d.temporary),
    };
    if wait.max_attempts == 0 || wait.max_attempts > 20 {
        p.push("auth_wait.max_attempts must be 1..=20 (nginx keeps memory per attempt)");
    }
    wait
}

fn limits(l: &RawLimits, p: &mut Problems) -> Limits {
    let d = Limits::default();
    let limits = Limits {
        max_connections: l.max_connections.unwrap_or(d.max_connections),
        max_params_bytes: l.max_params_bytes.unwrap_or(d.max_params_bytes),
        max_params_count: l.max_params_count.unwrap_or(d.max_params_count),
        max_stdin_bytes: l.max_stdin_bytes.unwrap_or(d.max_stdin_bytes),
        read_timeout: l
            .read_timeout_ms
            .map_or(d.read_timeout, Duration::from_millis),
        idle_timeout: l
            .idle_timeout_secs
            .map_or(d.idle_timeout, Duration::from_secs),
    };
    if limits.max_connections == 0 {
        p.push("limits.max_connections must be at least 1");
    }
    limits
}

fn verifier(v: &RawVerifier, p: &mut Problems) -> VerifierPolicy {
    let d = VerifierPolicy::default();
    if v.concurrency == Some(0) {
        p.push("verifier.concurrency (--verify-concurrency) must be at least 1");
    }
    if v.max_wait_ms == Some(0) {
        p.push("verifier.max_wait_ms (--verify-queue-ms) must be at least 1");
    }
    let concurrency = v.concurrency.unwrap_or(d.concurrency);
    VerifierPolicy {
        concurrency,
        // The default queue follows a configured concurrency.
        queue: v
            .queue
            .unwrap_or(d.queue / d.concurrency.max(1) * concurrency),
        max_wait: v.max_wait_ms.map_or(d.max_wait, Duration::from_millis),
    }
}

/// `state`: `None` for memory, else Redis (its URL and TLS files).
fn state(raw: &RawConfig, p: &mut Problems) -> Option<Target> {
    let tls = TlsFiles {
        ca_file: raw.state_ca_file.clone(),
        cert_file: raw.state_cert_file.clone(),
        key_file: raw.state_key_file.clone(),
    };
    match raw.state.as_deref() {
        None | Some("memory") => {
            if !tls.is_empty() {
                p.push(SharedStateError::TlsWithoutRediss.to_string());
            }
            None
        }
        Some(url) => {
            let target = Target {
                url: url.to_owned(),
                tls,
            };
            // The errors never echo the URL: it may hold a password.
            p.check(target.check()).map(|()| target)
        }
    }
}

/// `[throttle]`; its delays follow `[auth_wait]` unless set on their own.
fn throttle(t: &RawThrottle, w: &RawWait, p: &mut Problems) -> Option<ThrottlePolicy> {
    let d = ThrottlePolicy::default();
    let trusted = match &t.trusted_networks {
        None => d.trusted.clone(),
        Some(list) => p.each(list, "throttle.trusted_networks", str::parse::<Cidr>),
    };
    let throttle = ThrottlePolicy {
        window: t.window_secs.map_or(d.window, Duration::from_secs),
        block_ip: t.block_ip.unwrap_or(d.block_ip),
        block_ip_user: t.block_ip_user.unwrap_or(d.block_ip_user),
        block_time: t.block_secs.map_or(d.block_time, Duration::from_secs),
        // One knob for the client-visible wait: unless set on their own,
        // the throttle's delays follow [auth_wait] base/max (--auth-wait-*).
        delay_base: t.delay_base.or(w.base).unwrap_or(d.delay_base),
        delay_max: t.delay_max.or(w.max).unwrap_or(d.delay_max),
        ipv6_prefix: t.ipv6_prefix.unwrap_or(d.ipv6_prefix),
        trusted,
        success_bonus: t.success_bonus.unwrap_or(d.success_bonus),
        block_ip_max: t.block_ip_max.unwrap_or(d.block_ip_max),
        known_for: t.known_days.map_or(d.known_for, |days| {
            Duration::from_secs(days.saturating_mul(86_400))
        }),
    };
    if throttle.window.is_zero() || throttle.block_time.is_zero() {
        p.push("throttle.window_secs and throttle.block_secs must be at least 1");
    }
    if !(1..=128).contains(&throttle.ipv6_prefix) {
        p.push("throttle.ipv6_prefix must be 1..=128");
    }
    t.enabled.unwrap_or(true).then_some(throttle)
}

fn cache(c: &RawCache) -> Option<CachePolicy> {
    let d = CachePolicy::default();
    let cache = CachePolicy {
        ttl: c.ttl_secs.map_or(d.ttl, Duration::from_secs),
        negative_ttl: c
            .negative_ttl_secs
            .map_or(d.negative_ttl, Duration::from_secs),
        max_entries: c.max_entries.unwrap_or(d.max_entries),
    };
    (!cache.ttl.is_zero() && cache.max_entries > 0).then_some(cache)
}

/// `lookup_cache_ttl` and `lookup_cache_stale_ttl` (`None`: the credential
/// lookup cache is off).
fn lookup_cache(raw: &RawConfig, p: &mut Problems) -> Option<LookupPolicy> {
    let d = LookupPolicy::default();
    let policy = LookupPolicy {
        ttl: raw.lookup_cache_ttl.map_or(d.ttl, Duration::from_secs),
        stale_ttl: raw
            .lookup_cache_stale_ttl
            .map_or(d.stale_ttl, Duration::from_secs),
        ..d
    };
    if !policy.stale_ttl.is_zero() && policy.stale_ttl < policy.ttl {
        p.push("lookup_cache_stale_ttl must be 0 (off) or at least lookup_cache_ttl");
    }
    (!policy.ttl.is_zero()).then_some(policy)
}

fn master_user(m: &RawMasterUser, p: &mut Problems) -> Option<MasterUser> {
    let secret = match (&m.password, &m.password_file) {
        (Some(s), None) => crate::secret::Secret::from(s.as_str()),
        (None, Some(f)) => p.check(MasterUser::read_password_file(f))?,
        _ => {
            p.push("master_user: give exactly one of password, password_file");
            return None;
        }
    };
    let Some(user) = m.user.as_deref() else {
        p.push("master_user.user is required");
        return None;
    };
    let separator = m.separator.as_deref().unwrap_or(DEFAULT_SEPARATOR);
    p.check(MasterUser::new(user, secret, separator))
}

fn external_rule(r: &RawExternalRule) -> Result<Rule, ConfigError> {
    match r {
        RawExternalRule {
            fingerprint: Some(f),
            user: Some(u),
            subject_attribute: None,
            issuer: None,
        } => Ok(Rule::fingerprint(f, u)?),
        RawExternalRule {
            fingerprint: None,
            user: None,
            subject_attribute: Some(a),
            issuer,
        } => Ok(Rule::subject(a, issuer.as_deref())?),
        _ => Err(ConfigError::Invalid(
            "external rule: give either fingerprint + user, or subject_attribute (+ issuer)".into(),
        )),
    }
}

/// The upstream pools; a protocol without a pool gets its default
/// ([`DEFAULT_UPSTREAMS`]) and a warning, so a first start answers logins.
fn upstreams(raw: &RawConfig, p: &mut Problems, warnings: &mut Vec<String>) -> Upstreams {
    let mut upstreams = Upstreams::default();
    for u in &raw.upstream {
        p.check(upstreams.add(u));
    }
    for u in &raw.upstream_domain {
        p.check(upstreams.add_domain(u));
    }
    for (domain, pools) in &raw.upstream_domains {
        for (proto, list) in [
            (MailProtocol::Imap, &pools.imap),
            (MailProtocol::Pop3, &pools.pop3),
            (MailProtocol::Smtp, &pools.smtp),
        ] {
            if let Some(list) = list {
                p.check(
                    upstreams
                        .add_domain_list(domain, proto, list)
                        .map_err(|e| format!("upstream_domains: {e}")),
                );
            }
        }
    }
    for (proto, spec) in DEFAULT_UPSTREAMS {
        if upstreams.pool(proto).is_none() {
            let proto = proto.as_str();
            // A default can only fail if the constant is wrong: tested.
            p.check(upstreams.add(spec));
            warnings.push(format!(
                "no upstream for {proto}: using the default {spec} (set --upstream \
                 {proto}=HOST:PORT or upstream = [\"{proto}=HOST:PORT\"])"
            ));
        }
    }
    if let Some(ms) = raw.upstream_check_ms {
        upstreams.set_check_interval(Duration::from_millis(ms));
    }
    upstreams
}

/// The group a socket file we create gets when none is configured:
/// `www-data` (the workers of the shipped nginx config) when that group
/// exists and we may hand the socket to it (we run as root).
fn default_socket_group() -> Option<String> {
    const GROUP: &str = "www-data";
    // Looked up as the socket's group is when it is applied (NSS included).
    let root = nix::unistd::geteuid().is_root();
    (root && crate::listen::lookup_gid(GROUP).is_ok()).then(|| GROUP.to_owned())
}

fn socket(raw: &RawConfig, p: &mut Problems) -> SocketOptions {
    let mut socket = SocketOptions {
        owner: raw.socket_owner.clone(),
        group: raw.socket_group.clone().or_else(default_socket_group),
        ..SocketOptions::default()
    };
    if let Some(m) = &raw.socket_mode {
        let mode = u32::from_str_radix(m.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777);
        match mode {
            Some(mode) => socket.mode = mode,
            None => p.push(format!("socket_mode `{m}`: expected octal such as 0660")),
        }
    }
    socket
}

fn argon2_max_memory(size: Option<&str>, p: &mut Problems) -> u32 {
    let Some(size) = size else {
        return DEFAULT_ARGON2_MAX_MEMORY_KIB;
    };
    match super::parse_size_kib(size).filter(|kib| *kib >= ARGON2_MIN_MEMORY_KIB) {
        Some(kib) => kib,
        None => {
            p.push(format!(
                "argon2_max_memory `{size}`: expected a size from 8K up, such as 256M, 1G \
                 or 65536K (K, M, G: KiB, MiB, GiB)"
            ));
            DEFAULT_ARGON2_MAX_MEMORY_KIB
        }
    }
}

fn local_domain(d: &str) -> Result<String, ConfigError> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.contains('@') || d.contains(char::is_whitespace) {
        Err(ConfigError::Invalid(format!(
            "local_domain `{d}`: expected a domain such as example.org"
        )))
    } else {
        Ok(d)
    }
}

impl Config {
    /// Checks everything and reports all problems, not just the first.
    pub fn validate(raw: RawConfig) -> Result<Config, Vec<ConfigError>> {
        let mut p = Problems::default();
        let mut warnings = Vec::new();
        let listen = raw
            .listen
            .iter()
            .filter_map(|l| {
                p.check(
                    l.parse::<ListenSpec>()
                        .map_err(|e| format!("listen `{l}`: {e}")),
                )
            })
            .collect();
        let socket = socket(&raw, &mut p);
        let default_scheme = raw.default_scheme.as_ref().and_then(|s| {
            p.check(
                s.parse::<Scheme>()
                    .map_err(|e| format!("default_scheme: {e}")),
            )
        });
        let argon2_max_memory_kib = argon2_max_memory(raw.argon2_max_memory.as_deref(), &mut p);
        let rehash = crate::passdb::rehash::RehashPolicy::from_config(
            raw.upgrade_scheme.as_deref(),
            raw.rehash_passwd_file.unwrap_or(false),
            raw.rehash_plain.unwrap_or(false),
            raw.update_query.as_deref(),
            argon2_max_memory_kib,
        )
        .and_then(|r| p.check(r));
        let mut mechanisms: HashSet<Mechanism> = raw
            .mechanisms
            .iter()
            .filter_map(|m| p.check(m.parse::<Mechanism>()))
            .collect();
        if raw.mechanisms.is_empty() {
            mechanisms.extend(Mechanism::ALL);
        }
        let upstreams = upstreams(&raw, &mut p, &mut warnings);
        let trusted_proxies = p.each(&raw.trusted_proxies, "trusted_proxies", str::parse::<Cidr>);
        let required = raw
            .require_header
            .iter()
            .filter_map(|r| {
                // Only the name: the value is the shared secret.
                let name = r.split('=').next().unwrap_or_default();
                p.check(
                    r.parse::<RequiredHeader>()
                        .map_err(|e| format!("require_header `{name}=…`: {e}")),
                )
            })
            .collect();
        let local_domains = raw
            .local_domains
            .iter()
            .filter_map(|d| p.check(local_domain(d)))
            .collect();
        let log = match &raw.log {
            Some(l) => p.check(l.parse::<LogTarget>()).unwrap_or(LogTarget::Stderr),
            None => LogTarget::Syslog("mail".into()),
        };
        let log_level =
            match &raw.log_level {
                Some(l) => p
                    .check(l.parse().map_err(|_| {
                        format!("log_level `{l}`: expected error, warn, info or debug")
                    }))
                    .unwrap_or(log::LevelFilter::Info),
                None => log::LevelFilter::Info,
            };
        let wait = wait(&raw.auth_wait, &mut p);
        let limits = limits(&raw.limits, &mut p);
        if raw.group.is_some() && raw.user.is_none() {
            p.push("group needs user (privileges are dropped to both)");
        }
        if raw.timeout_ms == Some(0) {
            p.push("timeout_ms must be at least 1");
        }
        let verifier = verifier(&raw.verifier, &mut p);
        let state = state(&raw, &mut p);
        if state.is_some() && raw.nonce_key_file.is_none() {
            // Shared state means several instances; Digest needs one key too.
            warnings.push(
                "state is shared in Redis but nonce_key_file is not set: HTTP Digest nonces \
                 are signed with a per-process key, so a nonce one instance issued is refused \
                 by the others (make one with `nginx-auth-fcgi nonce-key init` and give every \
                 instance the same file; ignore this if no location uses Digest)"
                    .to_owned(),
            );
        }
        let throttle = throttle(&raw.throttle, &raw.auth_wait, &mut p);
        let master_user = raw
            .master_user
            .as_ref()
            .and_then(|m| master_user(m, &mut p));
        let external = Rules(
            raw.external
                .rule
                .iter()
                .filter_map(|r| p.check(external_rule(r)))
                .collect(),
        );
        let require_app_password = p
            .check(
                crate::passdb::app_password::Services::parse(&raw.require_app_password)
                    .map_err(|e| format!("require_app_password: {e}")),
            )
            .unwrap_or_default();
        let lookup_cache = lookup_cache(&raw, &mut p);
        let passdbs = if raw.passdb.is_empty() {
            vec![DEFAULT_PASSDB.to_owned()]
        } else {
            raw.passdb.clone()
        };
        if !p.0.is_empty() {
            return Err(p.0);
        }
        Ok(Config {
            listen,
            socket,
            run_as: raw.user.clone().map(|u| (u, raw.group.clone())),
            passdbs,
            default_scheme,
            password_query: raw.password_query.clone(),
            app_password_query: raw.app_password_query.clone(),
            rehash,
            argon2_max_memory_kib,
            mechanisms,
            upstreams,
            trusted_proxies: TrustedProxies::new(trusted_proxies),
            required,
            local_domains,
            smtp_pass: raw.smtp_pass.unwrap_or(false),
            reject_unknown_client: raw.reject_unknown_client.unwrap_or(false),
            require_app_password,
            log,
            log_level,
            wait,
            timeout: Duration::from_millis(raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
            limits,
            state,
            throttle,
            cache: cache(&raw.cache),
            verifier,
            master_user,
            external,
            warnings,
            lookup_cache,
            nonce_key_file: raw.nonce_key_file.clone(),
        })
    }
}
