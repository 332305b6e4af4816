//! Which upstream mail server a logged-in client goes to.
//!
//! In order of precedence:
//! 1. the passdb's per-user `host`/`port` (not health-checked: the passdb
//!    knows best);
//! 2. the pool of the user's domain for the protocol (`--upstream-domain
//!    example.org:imap=…`), when one is configured;
//! 3. the protocol's pool (`--upstream imap=A,B,C`).
//!
//! Within a pool a user sticks to one member by rendezvous hashing on the
//! normalized user name ([`pool`]); members a health check found down are
//! skipped, which moves only their users, to their next choice ([`health`]).
//! When every member of the pool is down the answer is a temporary failure:
//! nginx could not log the user in anywhere.
//!
//! nginx accepts only a literal IP in `Auth-Server` (reference §3.2), so names
//! are resolved once, at start-up — never on the request path.

pub mod health;
pub mod pool;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::auth_http::MailProtocol;
use crate::passdb::Principal;

pub use health::{Checks, Health};
pub use pool::Pool;

/// Default interval of the health checks.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Configured pools and their health.
#[derive(Debug, Clone)]
pub struct Upstreams {
    by_protocol: HashMap<MailProtocol, Pool>,
    /// Lower-case domain → its own pools.
    by_domain: BTreeMap<String, HashMap<MailProtocol, Pool>>,
    health: Health,
    /// Zero: no checks, every member counts as up.
    check_interval: Duration,
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams {
            by_protocol: HashMap::new(),
            by_domain: BTreeMap::new(),
            health: Health::default(),
            check_interval: DEFAULT_CHECK_INTERVAL,
        }
    }
}

/// A bad `--upstream` / `--upstream-domain` value.
#[derive(Debug, thiserror::Error)]
#[error("upstream `{value}`: {reason}")]
pub struct UpstreamError {
    value: String,
    #[source]
    reason: Reason,
}

/// What is wrong with an upstream value.
#[derive(Debug, thiserror::Error)]
enum Reason {
    #[error("expected PROTOCOL=HOST:PORT[,HOST:PORT…]")]
    NoProtocol,
    #[error("expected DOMAIN:PROTOCOL=HOST:PORT[,HOST:PORT…]")]
    NoDomain,
    #[error("`{0}` is not a domain such as example.org")]
    Domain(String),
    /// The protocol parser's own words.
    #[error("{0}")]
    Protocol(String),
    #[error("empty list of servers")]
    Empty,
    #[error("empty entry in the list of servers")]
    EmptyEntry,
    #[error("`{entry}`: {source}")]
    Addr {
        entry: String,
        #[source]
        source: AddrError,
    },
    #[error("{0} is listed twice")]
    Twice(SocketAddr),
}

/// Why a `HOST:PORT` was refused.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    /// No `:PORT`.
    #[error("expected HOST:PORT")]
    NoPort,
    /// An IPv6 address without brackets is ambiguous with the port.
    #[error("write an IPv6 address in brackets: [2001:db8::1]:143")]
    Unbracketed,
    /// The port is not a number in 0..=65535.
    #[error("bad port `{port}`")]
    BadPort {
        /// The port as given.
        port: String,
        /// What the number parser said.
        #[source]
        source: std::num::ParseIntError,
    },
    /// The name did not resolve.
    #[error("cannot resolve `{host}`: {source}")]
    Resolve {
        /// The name as given.
        host: String,
        /// What the resolver said.
        #[source]
        source: std::io::Error,
    },
    /// The name resolved to nothing.
    #[error("`{0}` has no address")]
    NoAddress(String),
    /// Port 0.
    #[error("port must be 1..65535")]
    PortZero,
}

/// Why no upstream could be chosen. Both are temporary failures for the
/// client; the text goes to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// Neither a per-user host nor a pool for the protocol.
    #[error("no upstream configured for {0}")]
    NotConfigured(&'static str),
    /// Every member of the user's pool was found down.
    #[error("all {members} upstream(s) of the {protocol} pool{domain} are down")]
    AllDown {
        /// `imap`, `pop3`, `smtp`.
        protocol: &'static str,
        /// ` of example.org`, or empty for the protocol pool.
        domain: String,
        /// Pool size.
        members: usize,
    },
}

impl Upstreams {
    /// Parses `PROTOCOL=HOST:PORT[,HOST:PORT…]` (`imap=127.0.0.1:143`,
    /// `imap=10.0.0.1:143,10.0.0.2:143,[2001:db8::5]:143`,
    /// `smtp=mx.internal:25`) and adds the addresses to the protocol's pool;
    /// repeating a protocol adds to its pool.
    pub fn add(&mut self, spec: &str) -> Result<(), UpstreamError> {
        let (proto, addrs) = parse_pool_spec(spec)?;
        let pool = self.by_protocol.entry(proto);
        extend(pool, addrs, spec)
    }

    /// Parses `DOMAIN:PROTOCOL=HOST:PORT[,…]` (`example.org:imap=10.0.1.1:143`)
    /// and adds to that domain's pool for the protocol.
    pub fn add_domain(&mut self, spec: &str) -> Result<(), UpstreamError> {
        let (domain, rest) = spec
            .split_once(':')
            .ok_or_else(|| err(spec, Reason::NoDomain))?;
        let domain = normalize_domain(domain).map_err(|e| err(spec, e))?;
        let (proto, addrs) = parse_pool_spec(rest).map_err(|e| err(spec, e.reason))?;
        let pools = self.by_domain.entry(domain).or_default();
        extend(pools.entry(proto), addrs, spec)
    }

    /// Adds `addrs` (each `HOST:PORT`) to `domain`'s pool for `protocol`
    /// (the TOML table form `[upstream_domains."example.org"]`).
    pub fn add_domain_list(
        &mut self,
        domain: &str,
        protocol: MailProtocol,
        addrs: &[String],
    ) -> Result<(), UpstreamError> {
        let shown = format!("{domain}:{}={}", protocol.as_str(), addrs.join(","));
        let d = normalize_domain(domain).map_err(|e| err(&shown, e))?;
        if addrs.is_empty() {
            return Err(err(&shown, Reason::Empty));
        }
        let mut parsed = Vec::new();
        for a in addrs {
            parsed.push(parse_entry(a, a.trim()).map_err(|e| err(&shown, e))?);
        }
        let pools = self.by_domain.entry(d).or_default();
        extend(pools.entry(protocol), parsed, &shown)
    }

    /// How often members are checked (zero: never; all count as up).
    pub fn set_check_interval(&mut self, every: Duration) {
        self.check_interval = every;
    }

    /// The check interval.
    pub fn check_interval(&self) -> Duration {
        self.check_interval
    }

    /// The protocol's default pool.
    pub fn pool(&self, protocol: MailProtocol) -> Option<&Pool> {
        self.by_protocol.get(&protocol)
    }

    /// `domain`'s own pool for `protocol`.
    pub fn domain_pool(&self, domain: &str, protocol: MailProtocol) -> Option<&Pool> {
        self.by_domain.get(domain)?.get(&protocol)
    }

    /// The health state the request path reads.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Every distinct member of every pool with more than one member: the
    /// ones that are health-checked. A pool of one is never checked: there
    /// is nothing to fail over to, and our view of the network must not
    /// veto nginx's (a firewall between us and the server, but not between
    /// nginx and it, would otherwise stop every login); nginx reports a
    /// server it cannot reach itself.
    pub fn checked_addresses(&self) -> Vec<SocketAddr> {
        let all: BTreeSet<SocketAddr> = self
            .by_protocol
            .values()
            .chain(self.by_domain.values().flat_map(|d| d.values()))
            .filter(|p| p.members().len() > 1)
            .flat_map(|p| p.members().iter().copied())
            .collect();
        all.into_iter().collect()
    }

    /// Starts the health checks (one task per distinct member of a pool of
    /// two or more; none when the interval is zero). `redis` is the `state`, to share findings.
    /// Must run inside a tokio runtime; dropping the result stops them.
    pub fn spawn_checks(&self, redis: Option<&crate::shared_state::Target>) -> Checks {
        if self.check_interval.is_zero() {
            return Checks::default();
        }
        Checks::spawn(
            &self.health,
            &self.checked_addresses(),
            self.check_interval,
            redis,
        )
    }

    /// Takes over `old`'s health findings for members both configurations
    /// share (configuration reload).
    pub fn inherit_health(&self, old: &Upstreams) {
        self.health.inherit(&old.health, &self.checked_addresses());
    }

    /// One line per pool, for `check-config`.
    pub fn describe(&self) -> Vec<String> {
        let list = |p: &Pool| {
            let v: Vec<String> = p.members().iter().map(|a| a.to_string()).collect();
            v.join(", ")
        };
        let mut out = Vec::new();
        for p in [MailProtocol::Imap, MailProtocol::Pop3, MailProtocol::Smtp] {
            match self.pool(p) {
                Some(pool) => out.push(format!("upstream {}: {}", p.as_str(), list(pool))),
                None => out.push(format!("upstream {}: (per-user only)", p.as_str())),
            }
        }
        for (d, pools) in &self.by_domain {
            for p in [MailProtocol::Imap, MailProtocol::Pop3, MailProtocol::Smtp] {
                if let Some(pool) = pools.get(&p) {
                    out.push(format!("upstream {} for {d}: {}", p.as_str(), list(pool)));
                }
            }
        }
        if self.check_interval.is_zero() {
            out.push("upstream health checks: off".into());
        } else {
            out.push(format!(
                "upstream health checks: every {} ms",
                self.check_interval.as_millis()
            ));
        }
        out
    }

    /// Prometheus gauges: one `nginx_auth_fcgi_upstream_up` per checked member.
    pub fn render_metrics(&self) -> String {
        let mut s = String::new();
        let addrs = self.checked_addresses();
        if addrs.is_empty() {
            return s;
        }
        s.push_str(
            "# HELP nginx_auth_fcgi_upstream_up Upstream pool member reachable at the last check.\n",
        );
        s.push_str("# TYPE nginx_auth_fcgi_upstream_up gauge\n");
        for a in addrs {
            let _ = writeln!(
                s,
                "nginx_auth_fcgi_upstream_up{{address=\"{a}\"}} {}",
                u8::from(self.health.is_up(a))
            );
        }
        s
    }

    /// The upstream for `principal` (logged in as `login`) speaking
    /// `protocol`. A per-user host without a port takes the port of the
    /// user's pool (its first member), else the protocol's IANA port; a
    /// per-user port alone keeps the host the pool picks.
    pub fn pick(
        &self,
        protocol: MailProtocol,
        principal: &Principal,
        login: &[u8],
    ) -> Result<(IpAddr, u16), PickError> {
        let user = normalize_user(principal, login);
        let domain = user.rsplit_once('@').map(|(_, d)| d.trim_end_matches('.'));
        let (pool, domain) =
            match domain.and_then(|d| self.domain_pool(d, protocol).map(|p| (p, d))) {
                Some((p, d)) => (Some(p), Some(d)),
                None => (self.pool(protocol), None),
            };
        if let Some(host) = principal.upstream_host {
            let port = principal
                .upstream_port
                .or(pool.map(|p| p.members()[0].port()))
                .unwrap_or(iana_port(protocol));
            return Ok((host, port));
        }
        let pool = pool.ok_or(PickError::NotConfigured(protocol.as_str()))?;
        let chosen = pool
            .ranked(&user)
            .into_iter()
            .find(|m| self.health.is_up(*m))
            .ok_or_else(|| PickError::AllDown {
                protocol: protocol.as_str(),
                domain: domain.map(|d| format!(" of {d}")).unwrap_or_default(),
                members: pool.members().len(),
            })?;
        Ok((
            chosen.ip(),
            principal.upstream_port.unwrap_or(chosen.port()),
        ))
    }
}

/// The name the hash is taken over: the passdb's name for the user when it
/// gave one (aliases land with their owner), else the login; trimmed and
/// lower-cased (ASCII only, so every instance agrees byte for byte).
fn normalize_user(principal: &Principal, login: &[u8]) -> String {
    let name = if principal.user.is_empty() {
        String::from_utf8_lossy(login).into_owned()
    } else {
        principal.user.clone()
    };
    name.trim().to_ascii_lowercase()
}

fn normalize_domain(d: &str) -> Result<String, Reason> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.contains(['@', ':', '=', ',']) || d.contains(char::is_whitespace) {
        Err(Reason::Domain(d))
    } else {
        Ok(d)
    }
}

fn err(value: &str, reason: Reason) -> UpstreamError {
    UpstreamError {
        value: value.to_owned(),
        reason,
    }
}

/// One server of a list: `addr` parsed, named in errors as `entry`.
fn parse_entry(entry: &str, addr: &str) -> Result<SocketAddr, Reason> {
    parse_addr(addr).map_err(|source| Reason::Addr {
        entry: entry.to_owned(),
        source,
    })
}

/// `PROTOCOL=HOST:PORT[,HOST:PORT…]`.
fn parse_pool_spec(spec: &str) -> Result<(MailProtocol, Vec<SocketAddr>), UpstreamError> {
    let (proto, addrs) = spec
        .split_once('=')
        .ok_or_else(|| err(spec, Reason::NoProtocol))?;
    let proto = proto
        .trim()
        .parse::<MailProtocol>()
        .map_err(|e| err(spec, Reason::Protocol(e.to_string())))?;
    if addrs.trim().is_empty() {
        return Err(err(spec, Reason::Empty));
    }
    let mut out = Vec::new();
    for a in addrs.split(',') {
        let a = a.trim();
        if a.is_empty() {
            return Err(err(spec, Reason::EmptyEntry));
        }
        out.push(parse_entry(a, a).map_err(|e| err(spec, e))?);
    }
    Ok((proto, out))
}

fn extend(
    entry: std::collections::hash_map::Entry<'_, MailProtocol, Pool>,
    addrs: Vec<SocketAddr>,
    spec: &str,
) -> Result<(), UpstreamError> {
    let pool = entry.or_insert_with(|| Pool::new(Vec::new()));
    for a in addrs {
        if pool.members().contains(&a) {
            return Err(err(spec, Reason::Twice(a)));
        }
        pool.push(a);
    }
    Ok(())
}

/// IANA port of the protocol (used when a per-user host comes without a port
/// and no pool is configured).
fn iana_port(p: MailProtocol) -> u16 {
    match p {
        MailProtocol::Imap => 143,
        MailProtocol::Pop3 => 110,
        MailProtocol::Smtp => 25,
    }
}

/// `HOST:PORT` → socket address; names are resolved now (start-up).
pub fn parse_addr(s: &str) -> Result<SocketAddr, AddrError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return check_port(a);
    }
    let (host, port) = s.rsplit_once(':').ok_or(AddrError::NoPort)?;
    if host.contains(':') && !host.starts_with('[') {
        return Err(AddrError::Unbracketed);
    }
    let port: u16 = port.parse().map_err(|source| AddrError::BadPort {
        port: port.to_owned(),
        source,
    })?;
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|source| AddrError::Resolve {
            host: host.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| AddrError::NoAddress(host.to_owned()))?;
    check_port(addr)
}

fn check_port(a: SocketAddr) -> Result<SocketAddr, AddrError> {
    if a.port() == 0 {
        Err(AddrError::PortZero)
    } else {
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(u: &Upstreams, p: MailProtocol, who: &Principal, login: &str) -> Option<(IpAddr, u16)> {
        u.pick(p, who, login.as_bytes()).ok()
    }

    #[test]
    fn parses_and_picks() {
        let mut u = Upstreams::default();
        u.add("imap=127.0.0.1:143").unwrap();
        u.add("pop3=[2001:db8::1]:110").unwrap();
        u.add("smtp=localhost:25").unwrap();
        assert!(u.add("imap=127.0.0.1").is_err());
        assert!(u.add("imap=127.0.0.1:0").is_err());
        assert!(u.add("gopher=127.0.0.1:70").is_err());
        assert!(u.add("imap=2001:db8::1:143").is_err());
        assert!(u.add("imap=no.such.host.invalid:143").is_err());

        let nobody = Principal::default();
        assert_eq!(
            pick(&u, MailProtocol::Imap, &nobody, "a"),
            Some(("127.0.0.1".parse().unwrap(), 143))
        );
        assert_eq!(
            pick(&u, MailProtocol::Pop3, &nobody, "a"),
            Some(("2001:db8::1".parse().unwrap(), 110))
        );
        let routed = Principal {
            upstream_host: Some("192.0.2.5".parse().unwrap()),
            ..Principal::default()
        };
        assert_eq!(
            pick(&u, MailProtocol::Imap, &routed, "a"),
            Some(("192.0.2.5".parse().unwrap(), 143))
        );
        let port_only = Principal {
            upstream_port: Some(1143),
            ..Principal::default()
        };
        assert_eq!(
            pick(&u, MailProtocol::Imap, &port_only, "a"),
            Some(("127.0.0.1".parse().unwrap(), 1143))
        );
        assert_eq!(
            Upstreams::default().pick(MailProtocol::Imap, &nobody, b"a"),
            Err(PickError::NotConfigured("imap"))
        );
        assert_eq!(
            pick(&Upstreams::default(), MailProtocol::Smtp, &routed, "a"),
            Some(("192.0.2.5".parse().unwrap(), 25))
        );
    }

    #[test]
    fn lists_domains_and_errors_name_the_value() {
        let mut u = Upstreams::default();
        u.add("imap=10.0.0.1:143,10.0.0.2:143").unwrap();
        u.add("imap=[2001:db8::5]:143").unwrap();
        assert_eq!(u.pool(MailProtocol::Imap).unwrap().members().len(), 3);
        u.add_domain("Example.ORG.:imap=10.0.1.1:143, 10.0.1.2:143")
            .unwrap();
        u.add_domain_list(
            "other.example",
            MailProtocol::Pop3,
            &["10.0.2.1:110".into()],
        )
        .unwrap();
        for (bad, needle) in [
            ("imap=", "empty list"),
            ("imap=10.0.0.9:143,", "empty entry"),
            ("imap=10.0.0.1:143", "listed twice"),
            ("imapx=10.0.0.9:143", "imapx"),
            ("imap=10.0.0.9:143,bogus", "`bogus`"),
        ] {
            let e = u.add(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains(needle), "{bad}: {e}");
        }
        for bad in [
            "imap=10.0.0.9:143",
            ":imap=10.0.0.9:143",
            "a b:imap=1.2.3.4:1",
        ] {
            let e = u.add_domain(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        assert!(u
            .add_domain_list("x.example", MailProtocol::Imap, &[])
            .is_err());

        let nobody = Principal::default();
        let in_domain = pick(&u, MailProtocol::Imap, &nobody, "Alice@example.org").unwrap();
        assert!(
            in_domain.0.to_string().starts_with("10.0.1."),
            "{in_domain:?}"
        );
        // The domain has no pop3 pool, and the protocol has none either.
        assert_eq!(
            u.pick(MailProtocol::Pop3, &nobody, b"alice@example.org"),
            Err(PickError::NotConfigured("pop3"))
        );
        let elsewhere = pick(&u, MailProtocol::Imap, &nobody, "alice@else.example").unwrap();
        assert!(!elsewhere.0.to_string().starts_with("10.0.1."));
        // Case and surrounding blanks do not change the choice.
        assert_eq!(
            pick(&u, MailProtocol::Imap, &nobody, " ALICE@Example.org"),
            Some(in_domain)
        );
        // The passdb's canonical name is what is hashed.
        let canonical = Principal {
            user: "alice@example.org".into(),
            ..Principal::default()
        };
        assert_eq!(
            pick(&u, MailProtocol::Imap, &canonical, "alias@example.org"),
            Some(in_domain)
        );
        assert_eq!(
            u.checked_addresses().len(),
            5,
            "pools of one are not checked"
        );
        assert!(u.describe().iter().any(|l| l.contains("for example.org")));
    }
}
