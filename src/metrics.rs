//! Process-wide counters in Prometheus text format, served on a FastCGI
//! request whose location sets `fastcgi_param AUTH_METRICS on;` (no HTTP
//! server of our own: nginx exposes it from an internal location).
//!
//! Plain atomics in one static: they survive a configuration reload and cost
//! a few relaxed increments per request.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::audit::{Method, Outcome, Protocol};
use crate::auth_http::{AuthMethod, MailProtocol};
use crate::cache::CacheUse;
use crate::http_auth::HttpScheme;
use crate::lookup_cache::LookupUse;
use crate::throttle::Scope;

const PROTOCOLS: [&str; 4] = ["imap", "pop3", "smtp", "http"];
const RESULTS: [&str; 4] = ["ok", "fail", "tempfail", "refused"];
const BLOCK_SCOPES: [Scope; 2] = [Scope::Ip, Scope::IpUser];
const METHODS: [&str; 7] = [
    "plain", "apop", "cram-md5", "external", "none", "basic", "digest",
];
/// Latency bucket upper bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// All counters.
pub struct Metrics {
    requests: [[AtomicU64; RESULTS.len()]; PROTOCOLS.len()],
    methods: [AtomicU64; METHODS.len()],
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    protocol_errors: AtomicU64,
    passdb_errors: AtomicU64,
    throttle_blocked: AtomicU64,
    cache_hits: AtomicU64,
    cache_negative_hits: AtomicU64,
    cache_misses: AtomicU64,
    verify_shed: AtomicU64,
    /// Lookup cache: hits, misses (the backend was asked), stale answers.
    lookup_cache: [AtomicU64; 3],
    /// New blocks, by scope (`ip`, `ip-user`).
    throttle_blocks: [AtomicU64; 2],
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ROW: [AtomicU64; RESULTS.len()] = [ZERO; RESULTS.len()];

/// The process's counters.
pub static METRICS: Metrics = Metrics::new();

impl Metrics {
    /// All counters at zero.
    const fn new() -> Self {
        Metrics {
            requests: [ROW; PROTOCOLS.len()],
            methods: [ZERO; METHODS.len()],
            latency_buckets: [ZERO; BUCKETS.len()],
            latency_count: ZERO,
            latency_sum_us: ZERO,
            protocol_errors: ZERO,
            passdb_errors: ZERO,
            throttle_blocked: ZERO,
            cache_hits: ZERO,
            cache_negative_hits: ZERO,
            cache_misses: ZERO,
            verify_shed: ZERO,
            lookup_cache: [ZERO; 3],
            throttle_blocks: [ZERO; 2],
        }
    }
}

/// One decided request.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// What kind of request.
    pub protocol: Protocol,
    /// Mechanism / HTTP scheme.
    pub method: Method,
    /// The result (a challenge is not counted as a decision).
    pub outcome: Outcome,
    /// Time to decide.
    pub latency: Duration,
    /// The throttle refused it before the passdb.
    pub blocked: bool,
    /// How the verification cache took part, when it did.
    pub cache: Option<CacheUse>,
}

/// The row of `protocol` in [`PROTOCOLS`].
fn protocol_index(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Mail(MailProtocol::Imap) => 0,
        Protocol::Mail(MailProtocol::Pop3) => 1,
        Protocol::Mail(MailProtocol::Smtp) => 2,
        Protocol::Http => 3,
    }
}

/// The row of `method` in [`METHODS`] (`-` is not counted).
fn method_index(method: Method) -> Option<usize> {
    Some(match method {
        Method::Mail(AuthMethod::Plain) => 0,
        Method::Mail(AuthMethod::Apop) => 1,
        Method::Mail(AuthMethod::CramMd5) => 2,
        Method::Mail(AuthMethod::External) => 3,
        Method::Mail(AuthMethod::None) => 4,
        Method::Http(HttpScheme::Basic) => 5,
        Method::Http(HttpScheme::Digest) => 6,
        Method::Unknown => return None,
    })
}

/// The row of `outcome` in [`RESULTS`].
fn result_index(outcome: Outcome) -> Option<usize> {
    match outcome {
        Outcome::Ok => Some(0),
        Outcome::Fail => Some(1),
        Outcome::TempFail => Some(2),
        Outcome::Refused => Some(3),
        Outcome::Challenge => None,
    }
}

/// The row of `scope` in [`BLOCK_SCOPES`].
fn scope_index(scope: Scope) -> usize {
    match scope {
        Scope::Ip => 0,
        Scope::IpUser => 1,
    }
}

impl Metrics {
    /// Counts one decision.
    pub fn observe(&self, o: Observation) {
        if let Some(r) = result_index(o.outcome) {
            self.requests[protocol_index(o.protocol)][r].fetch_add(1, Relaxed);
        }
        if let Some(m) = method_index(o.method) {
            self.methods[m].fetch_add(1, Relaxed);
        }
        if o.outcome == Outcome::TempFail {
            self.passdb_errors.fetch_add(1, Relaxed);
        }
        if o.blocked {
            self.throttle_blocked.fetch_add(1, Relaxed);
        }
        let cache = match o.cache {
            Some(CacheUse::Hit) => Some(&self.cache_hits),
            Some(CacheUse::NegativeHit) => Some(&self.cache_negative_hits),
            Some(CacheUse::Miss) => Some(&self.cache_misses),
            // Counted by the lookup cache itself (`lookup_cache`).
            Some(CacheUse::Stale) | None => None,
        };
        if let Some(c) = cache {
            c.fetch_add(1, Relaxed);
        }
        let secs = o.latency.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(o.latency.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// Counts a block the throttle set.
    pub fn throttle_block(&self, scope: Scope) {
        self.throttle_blocks[scope_index(scope)].fetch_add(1, Relaxed);
    }

    /// Counts how the credential lookup cache answered one lookup.
    pub fn lookup_cache(&self, used: LookupUse) {
        let i = match used {
            LookupUse::Hit => 0,
            LookupUse::Miss => 1,
            LookupUse::Stale => 2,
        };
        self.lookup_cache[i].fetch_add(1, Relaxed);
    }

    /// Counts a verification refused because the verifier's queue was full.
    pub fn verify_shed(&self) {
        self.verify_shed.fetch_add(1, Relaxed);
    }

    /// Counts a request nginx sent malformed (or without the shared secret).
    pub fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        header(
            &mut s,
            "requests_total",
            "counter",
            "Auth decisions by protocol and result.",
        );
        for (p, proto) in PROTOCOLS.iter().enumerate() {
            for (r, result) in RESULTS.iter().enumerate() {
                let labels = format!("{{protocol=\"{proto}\",result=\"{result}\"}}");
                sample(
                    &mut s,
                    "requests_total",
                    &labels,
                    self.requests[p][r].load(Relaxed),
                );
            }
        }
        let help = "Auth decisions by mechanism or HTTP scheme.";
        header(&mut s, "method_total", "counter", help);
        for (m, method) in METHODS.iter().enumerate() {
            let labels = format!("{{method=\"{method}\"}}");
            sample(
                &mut s,
                "method_total",
                &labels,
                self.methods[m].load(Relaxed),
            );
        }
        let help = "Blocks the throttle set, by scope.";
        header(&mut s, "throttle_blocks_total", "counter", help);
        for (i, scope) in BLOCK_SCOPES.iter().enumerate() {
            let labels = format!("{{scope=\"{}\"}}", scope.as_str());
            let n = self.throttle_blocks[i].load(Relaxed);
            sample(&mut s, "throttle_blocks_total", &labels, n);
        }
        header(
            &mut s,
            "decision_seconds",
            "histogram",
            "Time to decide one request.",
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let labels = format!("{{le=\"{b}\"}}");
            let n = self.latency_buckets[i].load(Relaxed);
            sample(&mut s, "decision_seconds_bucket", &labels, n);
        }
        let count = self.latency_count.load(Relaxed);
        sample(&mut s, "decision_seconds_bucket", "{le=\"+Inf\"}", count);
        let sum = self.latency_sum_us.load(Relaxed) as f64 / 1e6;
        sample(&mut s, "decision_seconds_sum", "", sum);
        sample(&mut s, "decision_seconds_count", "", count);
        for (name, help, v) in [
            (
                "protocol_errors_total",
                "Requests refused as malformed or without the shared secret.",
                &self.protocol_errors,
            ),
            (
                "passdb_errors_total",
                "Decisions that were temporary failures (passdb down, slow or unusable).",
                &self.passdb_errors,
            ),
            (
                "throttle_blocked_total",
                "Requests refused by the brute-force throttle before the passdb.",
                &self.throttle_blocked,
            ),
            (
                "cache_hits_total",
                "Verifications answered by the verification cache with a remembered match.",
                &self.cache_hits,
            ),
            (
                "cache_negative_hits_total",
                "Verifications answered by the verification cache with a remembered mismatch (the same wrong password again).",
                &self.cache_negative_hits,
            ),
            (
                "cache_misses_total",
                "Verifications the cache could not answer.",
                &self.cache_misses,
            ),
            (
                "verify_shed_total",
                "Expensive verifications refused at once (temporary failure) because the verifier's queue was full.",
                &self.verify_shed,
            ),
            (
                "lookup_cache_hits_total",
                "Passdb lookups answered by the credential lookup cache (no backend round trip).",
                &self.lookup_cache[0],
            ),
            (
                "lookup_cache_misses_total",
                "Passdb lookups the credential lookup cache could not answer (the backend was asked).",
                &self.lookup_cache[1],
            ),
            (
                "lookup_cache_stale_total",
                "Passdb lookups answered from a stale cached record because the backend failed (down or timed out).",
                &self.lookup_cache[2],
            ),
        ] {
            header(&mut s, name, "counter", help);
            sample(&mut s, name, "", v.load(Relaxed));
        }
        s
    }
}

/// Writes the `# HELP` and `# TYPE` lines of metric `name` (named without
/// its `nginx_auth_fcgi_` prefix).
fn header(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP nginx_auth_fcgi_{name} {help}");
    let _ = writeln!(s, "# TYPE nginx_auth_fcgi_{name} {kind}");
}

/// Writes one sample of metric `name`: its `{…}` labels (or none) and value.
fn sample(s: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    let _ = writeln!(s, "nginx_auth_fcgi_{name}{labels} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observes_and_renders() {
        let m = Metrics::new();
        let o = Observation {
            protocol: Protocol::Mail(MailProtocol::Imap),
            method: Method::Mail(AuthMethod::Plain),
            outcome: Outcome::Ok,
            latency: Duration::from_micros(700),
            blocked: false,
            cache: Some(CacheUse::Hit),
        };
        m.observe(o);
        m.observe(Observation {
            outcome: Outcome::Fail,
            latency: Duration::from_millis(30),
            ..o
        });
        m.observe(Observation {
            protocol: Protocol::Mail(MailProtocol::Smtp),
            outcome: Outcome::TempFail,
            cache: None,
            ..o
        });
        m.throttle_block(Scope::IpUser);
        m.throttle_block(Scope::IpUser);
        m.throttle_block(Scope::Ip);
        m.verify_shed();
        let text = m.render();
        for line in [
            "nginx_auth_fcgi_throttle_blocks_total{scope=\"ip\"} 1",
            "nginx_auth_fcgi_throttle_blocks_total{scope=\"ip-user\"} 2",
            "nginx_auth_fcgi_verify_shed_total 1",
            "nginx_auth_fcgi_requests_total{protocol=\"imap\",result=\"ok\"} 1",
            "nginx_auth_fcgi_requests_total{protocol=\"imap\",result=\"fail\"} 1",
            "nginx_auth_fcgi_requests_total{protocol=\"smtp\",result=\"tempfail\"} 1",
            "nginx_auth_fcgi_method_total{method=\"plain\"} 3",
            "nginx_auth_fcgi_decision_seconds_bucket{le=\"0.0005\"} 0",
            "nginx_auth_fcgi_decision_seconds_bucket{le=\"0.001\"} 2",
            "nginx_auth_fcgi_decision_seconds_bucket{le=\"0.05\"} 3",
            "nginx_auth_fcgi_decision_seconds_bucket{le=\"+Inf\"} 3",
            "nginx_auth_fcgi_decision_seconds_count 3",
            "nginx_auth_fcgi_passdb_errors_total 1",
            "nginx_auth_fcgi_cache_hits_total 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
    }

    #[test]
    fn cache_hits_are_counted_apart_from_negative_hits() {
        let m = Metrics::new();
        let o = Observation {
            protocol: Protocol::Http,
            method: Method::Http(HttpScheme::Basic),
            outcome: Outcome::Fail,
            latency: Duration::from_micros(50),
            blocked: false,
            cache: Some(CacheUse::NegativeHit),
        };
        for cache in [
            Some(CacheUse::NegativeHit),
            Some(CacheUse::NegativeHit),
            Some(CacheUse::Hit),
            Some(CacheUse::Miss),
            None,
        ] {
            m.observe(Observation { cache, ..o });
        }
        // A challenge is no decision: not in the result rows.
        m.observe(Observation {
            outcome: Outcome::Challenge,
            cache: None,
            ..o
        });
        let text = m.render();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no `{name}` in:\n{text}"))
        };
        assert_eq!(value("nginx_auth_fcgi_cache_hits_total"), "1");
        assert_eq!(value("nginx_auth_fcgi_cache_negative_hits_total"), "2");
        assert_eq!(value("nginx_auth_fcgi_cache_misses_total"), "1");
        assert_eq!(
            value("nginx_auth_fcgi_requests_total{protocol=\"http\",result=\"fail\"}"),
            "5"
        );
    }
}
