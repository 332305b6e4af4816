//! Redis Sentinel: `state =
//! "redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/MASTER[/DB][?sentinel_password=…]"`
//! (`rediss+sentinel://` for TLS to the sentinels and the servers alike).
//!
//! The user and password before `@` are the data servers' (`requirepass`,
//! the same on master and replicas); `sentinel_username` and
//! `sentinel_password` are the sentinels' own (Sentinel's `requirepass`),
//! none by default. A port left out is 26379; `/`, `?`, `#`, `&` and `%`
//! in a password are percent-encoded (`%2F`…).
//!
//! [`Follower`] asks every sentinel at once (`SENTINEL
//! get-master-addr-by-name MASTER`), takes the first answer in the order
//! the sentinels are listed whose server says `master` to `ROLE`, and keeps
//! one connection to it. When an exchange with it fails (connection lost,
//! timed out) or it answers `READONLY` (demoted to a replica), the
//! connection is dropped and the next exchange looks the master up again;
//! a new address is logged with the time since the old one failed. A lookup
//! takes at most twice [`TIMEOUT`]; one that fails is the caller's
//! fallback, like Redis down. Concurrent requests share one lookup.

use std::fmt;

#[cfg(feature = "redis")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "redis")]
use std::sync::{Mutex, RwLock};
#[cfg(feature = "redis")]
use std::time::Instant;

#[cfg(feature = "redis")]
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
#[cfg(feature = "redis")]
use redis::aio::ConnectionManager;

#[cfg(feature = "redis")]
use super::{manager_config, timed, SharedStateError, TIMEOUT};
#[cfg(feature = "redis")]
use crate::sync::{lock, read, write};

/// Sentinel's own port.
pub const DEFAULT_PORT: u16 = 26379;

/// A parsed `redis+sentinel://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// `rediss+sentinel://`: TLS to sentinels and servers.
    pub tls: bool,
    /// The sentinels, in the order given.
    pub sentinels: Vec<(String, u16)>,
    /// The master's name in the sentinels' configuration.
    pub master: String,
    /// The database on the servers.
    pub db: u32,
    /// The servers' ACL user.
    pub username: Option<String>,
    /// The servers' password.
    pub password: Option<String>,
    /// The sentinels' ACL user.
    pub sentinel_username: Option<String>,
    /// The sentinels' password.
    pub sentinel_password: Option<String>,
}

impl fmt::Debug for SentinelUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelUrl")
            .field("tls", &self.tls)
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// Why a Sentinel URL was refused (never quoting a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SentinelUrlError {
    /// Not `redis+sentinel://` or `rediss+sentinel://`.
    #[error("a Sentinel state starts with redis+sentinel:// or rediss+sentinel://")]
    Scheme,
    /// No sentinel address.
    #[error("redis+sentinel:// needs at least one sentinel host[:port]")]
    NoSentinel,
    /// A sentinel address that does not parse.
    #[error("sentinel address `{0}`: expected host[:port] or [IPv6][:port]")]
    BadAddress(String),
    /// No master name after the hosts.
    #[error("redis+sentinel:// needs the master name: …host:port/MASTER[/DB]")]
    NoMaster,
    /// A database that is not a number.
    #[error("database `{0}` is not a number")]
    BadDb(String),
    /// An unknown `?name=`.
    #[error("unknown parameter `{0}` (known: sentinel_username, sentinel_password)")]
    UnknownParameter(String),
    /// A `%` escape that is not UTF-8.
    #[error("a percent-encoded user or password is not UTF-8")]
    Encoding,
    /// An `@` after the first `/`, `?` or `#`: a password holding one of
    /// them unencoded (not shown: it would show part of the password).
    #[error("the user or password holds `/`, `?` or `#`: percent-encode them (%2F, %3F, %23)")]
    UnencodedCredentials,
}

impl SentinelUrl {
    /// Parses `url` (see the [module docs](self)).
    pub fn parse(url: &str) -> Result<SentinelUrl, SentinelUrlError> {
        let (scheme, rest) = url.split_once("://").ok_or(SentinelUrlError::Scheme)?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "redis+sentinel" => false,
            "rediss+sentinel" => true,
            _ => return Err(SentinelUrlError::Scheme),
        };
        // The credentials end at the last `@` before the path or query
        // (`/`, `?` and `#` in a password are percent-encoded).
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if rest[authority_end..].contains('@') {
            return Err(SentinelUrlError::UnencodedCredentials);
        }
        let (userinfo, rest) = match rest[..authority_end].rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (hosts, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (decode(user)?, decode(pass)?),
                None => (decode(u)?, None),
            },
        };
        let sentinels = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(address)
            .collect::<Result<Vec<_>, _>>()?;
        if sentinels.is_empty() {
            return Err(SentinelUrlError::NoSentinel);
        }
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let master = parts.next().unwrap_or_default();
        if master.is_empty() {
            return Err(SentinelUrlError::NoMaster);
        }
        let db = match parts.next().map(|d| d.trim_end_matches('/')) {
            None | Some("") => 0,
            Some(d) => d
                .parse()
                .map_err(|_| SentinelUrlError::BadDb(d.to_owned()))?,
        };
        let mut parsed = SentinelUrl {
            tls,
            sentinels,
            master: master.to_owned(),
            db,
            username,
            password,
            sentinel_username: None,
            sentinel_password: None,
        };
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "" => {}
                "sentinel_username" => parsed.sentinel_username = decode(value)?,
                "sentinel_password" => parsed.sentinel_password = decode(value)?,
                other => return Err(SentinelUrlError::UnknownParameter(other.to_owned())),
            }
        }
        Ok(parsed)
    }
}

/// A percent-decoded value; empty is none.
fn decode(s: &str) -> Result<Option<String>, SentinelUrlError> {
    let s = percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map_err(|_| SentinelUrlError::Encoding)?;
    Ok((!s.is_empty()).then(|| s.into_owned()))
}

/// `host[:port]` or `[v6][:port]`.
fn address(s: &str) -> Result<(String, u16), SentinelUrlError> {
    let bad = || SentinelUrlError::BadAddress(s.to_owned());
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (host, tail) = v6.split_once(']').ok_or_else(bad)?;
        match tail {
            "" => (host, None),
            _ => (host, Some(tail.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?', ' ']) {
        return Err(bad());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?,
    };
    Ok((host.to_owned(), port))
}

/// `host:port`, with brackets around an IPv6 address.
#[cfg(feature = "redis")]
fn host_port(host: &str, port: u16) -> String {
    match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

/// `user:password@` percent-encoded, or nothing.
#[cfg(feature = "redis")]
fn userinfo(user: Option<&str>, password: Option<&str>) -> String {
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    match (user, password) {
        (None, None) => String::new(),
        (user, Some(p)) => format!("{}:{}@", enc(user.unwrap_or_default()), enc(p)),
        (Some(u), None) => format!("{}@", enc(u)),
    }
}

/// The master in use.
#[cfg(feature = "redis")]
#[derive(Clone)]
struct Master {
    addr: String,
    conn: ConnectionManager,
}

/// What is logged about moves.
#[cfg(feature = "redis")]
#[derive(Default)]
struct History {
    /// The last master found.
    last: Option<String>,
    /// When it failed, if it did and no master was found since.
    lost_at: Option<Instant>,
}

/// The connection to whichever server the sentinels name master.
#[cfg(feature = "redis")]
pub(super) struct Follower {
    url: SentinelUrl,
    certs: Option<redis::TlsCertificates>,
    current: RwLock<Option<Master>>,
    /// One lookup at a time.
    lookup: tokio::sync::Mutex<()>,
    /// Failed lookups so far (a request that waited for one does not repeat it).
    failures: AtomicU64,
    history: Mutex<History>,
}

#[cfg(feature = "redis")]
impl Follower {
    pub(super) fn new(url: SentinelUrl, certs: Option<redis::TlsCertificates>) -> Follower {
        Follower {
            url,
            certs,
            current: RwLock::new(None),
            lookup: tokio::sync::Mutex::new(()),
            failures: AtomicU64::new(0),
            history: Mutex::new(History::default()),
        }
    }

    /// `exchange` with the master, looked up first when there is none; a
    /// failure that means the master moved drops it. A `READONLY` answer
    /// (nothing was written: the server is a replica now) is asked of the
    /// master looked up at once, a failover that already happened.
    pub(super) async fn run<T, F, Fut>(&self, exchange: F) -> Result<T, SharedStateError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let master = self.master().await?;
        let r = timed(exchange(master.conn)).await;
        let Err(e) = &r else { return r };
        if !master_lost(e) {
            return r;
        }
        self.lose(&master.addr, e);
        if !read_only(e) {
            return r;
        }
        let now = self.master().await?;
        timed(exchange(now.conn)).await
    }

    /// The master in use, or one looked up now.
    async fn master(&self) -> Result<Master, SharedStateError> {
        if let Some(m) = read(&self.current).clone() {
            return Ok(m);
        }
        let failures = self.failures.load(Ordering::Relaxed);
        let Ok(_one) = tokio::time::timeout(TIMEOUT * 2, self.lookup.lock()).await else {
            return Err(SharedStateError::TimedOut);
        };
        if let Some(m) = read(&self.current).clone() {
            return Ok(m);
        }
        if self.failures.load(Ordering::Relaxed) != failures {
            return Err(SharedStateError::LookupFailed(self.url.master.clone()));
        }
        let found = match tokio::time::timeout(TIMEOUT * 2, self.look_up()).await {
            Ok(found) => found,
            Err(_) => Err(SharedStateError::TimedOut),
        };
        match found {
            Ok(m) => {
                self.found(&m.addr);
                *write(&self.current) = Some(m.clone());
                Ok(m)
            }
            Err(reason) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(SharedStateError::NoMaster {
                    master: self.url.master.clone(),
                    reason: Box::new(reason),
                })
            }
        }
    }

    /// Asks the sentinels, all at once, and checks their answers in order.
    async fn look_up(&self) -> Result<Master, SharedStateError> {
        let mut asking = tokio::task::JoinSet::new();
        let mut answers = Vec::new();
        for (i, (host, port)) in self.url.sentinels.iter().enumerate() {
            let sentinel = host_port(host, *port);
            let client = self.client(
                &sentinel,
                self.url.sentinel_username.as_deref(),
                self.url.sentinel_password.as_deref(),
                0,
            );
            match client {
                Ok(client) => {
                    let master = self.url.master.clone();
                    asking.spawn(async move { (i, ask(client, &sentinel, &master).await) });
                }
                Err(e) => answers.push((i, Err(e))),
            }
        }
        while let Some(joined) = asking.join_next().await {
            if let Ok(answer) = joined {
                answers.push(answer);
            }
        }
        answers.sort_by_key(|(i, _)| *i);
        let mut last = SharedStateError::TimedOut;
        let mut tried = Vec::new();
        for (_, answer) in answers {
            let addr = match answer {
                Ok(addr) => addr,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            if tried.contains(&addr) {
                continue;
            }
            tried.push(addr.clone());
            match self.verify(&addr).await {
                Ok(conn) => return Ok(Master { addr, conn }),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A connection to `addr` if `ROLE` says it is the master.
    async fn verify(&self, addr: &str) -> Result<ConnectionManager, SharedStateError> {
        let client = self.client(
            addr,
            self.url.username.as_deref(),
            self.url.password.as_deref(),
            self.url.db,
        )?;
        let connect = ConnectionManager::new_with_config(client, manager_config());
        let mut conn = match tokio::time::timeout(TIMEOUT, connect).await {
            Ok(c) => c.map_err(SharedStateError::Redis)?,
            Err(_) => return Err(SharedStateError::TimedOut),
        };
        let role: redis::Value = timed(redis::cmd("ROLE").query_async(&mut conn)).await?;
        let role = match role {
            redis::Value::Array(items) => items
                .into_iter()
                .next()
                .and_then(|v| redis::from_redis_value::<String>(v).ok()),
            _ => None,
        }
        .ok_or(SharedStateError::Malformed("ROLE answer"))?;
        if role != "master" {
            return Err(SharedStateError::NotMaster {
                addr: addr.to_owned(),
                role,
            });
        }
        Ok(conn)
    }

    /// A client for the server at `addr` (`host:port`).
    fn client(
        &self,
        addr: &str,
        user: Option<&str>,
        password: Option<&str>,
        db: u32,
    ) -> Result<redis::Client, SharedStateError> {
        let scheme = if self.url.tls { "rediss" } else { "redis" };
        let url = format!("{scheme}://{}{addr}/{db}", userinfo(user, password));
        let client = match &self.certs {
            Some(certs) => redis::Client::build_with_tls(url.as_str(), certs.clone()),
            None => redis::Client::open(url.as_str()),
        };
        // The error names no URL: it may hold a password.
        client.map_err(SharedStateError::Redis)
    }

    /// Logs the master found (a move with the time it took).
    fn found(&self, addr: &str) {
        let mut h = lock(&self.history);
        let since = h.lost_at.take().map(|t| t.elapsed().as_secs_f64());
        let name = &self.url.master;
        match (&h.last, since) {
            (None, _) => log::info!("state: Sentinel master `{name}` is {addr}"),
            (Some(old), Some(s)) if old != addr => log::warn!(
                "state: Sentinel master `{name}` moved from {old} to {addr}; \
                 found {s:.1} s after {old} failed"
            ),
            (Some(old), None) if old != addr => {
                log::warn!("state: Sentinel master `{name}` moved from {old} to {addr}")
            }
            (Some(_), Some(s)) => {
                log::info!("state: Sentinel master `{name}` is {addr} again after {s:.1} s")
            }
            (Some(_), None) => {}
        }
        h.last = Some(addr.to_owned());
    }

    /// The master at `addr` failed: the next exchange looks it up again.
    fn lose(&self, addr: &str, e: &SharedStateError) {
        let mut current = write(&self.current);
        if current.as_ref().is_some_and(|m| m.addr == addr) {
            *current = None;
            drop(current);
            let mut h = lock(&self.history);
            if h.lost_at.is_none() {
                h.lost_at = Some(Instant::now());
                log::warn!(
                    "state: Sentinel master `{}` at {addr} failed ({e}); asking the sentinels",
                    self.url.master
                );
            }
        }
    }
}

/// `SENTINEL get-master-addr-by-name` on one sentinel, within [`TIMEOUT`].
#[cfg(feature = "redis")]
async fn ask(
    client: redis::Client,
    sentinel: &str,
    master: &str,
) -> Result<String, SharedStateError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    let exchange = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master)
            .query_async::<Option<(String, u16)>>(&mut conn)
            .await
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok(Some((host, port)))) => Ok(host_port(&host, port)),
        Ok(Ok(None)) => Err(SharedStateError::UnknownMaster {
            sentinel: sentinel.to_owned(),
        }),
        Ok(Err(e)) => Err(SharedStateError::Redis(e)),
        Err(_) => Err(SharedStateError::TimedOut),
    }
}

/// True when `e` is a server's `READONLY` (or the `EXECABORT` of a
/// transaction it refused): a replica that wrote nothing.
#[cfg(feature = "redis")]
fn read_only(e: &SharedStateError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    let SharedStateError::Redis(e) = e else {
        return false;
    };
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::ExecAbort)
    ) || e.code() == Some("READONLY")
}

/// True when `e` means the master is gone or no longer the master.
#[cfg(feature = "redis")]
fn master_lost(e: &SharedStateError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match e {
        SharedStateError::TimedOut => true,
        SharedStateError::Redis(e) => {
            e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || matches!(
                    e.kind(),
                    ErrorKind::Server(
                        ServerErrorKind::ReadOnly
                            | ServerErrorKind::MasterDown
                            | ServerErrorKind::ExecAbort
                    )
                )
                // An old master cut off from its replicas refuses writes
                // (`min-replicas-to-write`): ask the sentinels again.
                || e.code() == Some("NOREPLICAS")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_master_db_and_passwords() {
        let u = SentinelUrl::parse(
            "redis+sentinel://:p%40ss@10.0.0.1:26380,sentinel-b,[::1]:5000/mymaster/2\
             ?sentinel_password=s%26cret",
        )
        .unwrap();
        assert!(!u.tls);
        assert_eq!(
            u.sentinels,
            vec![
                ("10.0.0.1".to_owned(), 26380),
                ("sentinel-b".to_owned(), DEFAULT_PORT),
                ("::1".to_owned(), 5000)
            ]
        );
        assert_eq!(u.master, "mymaster");
        assert_eq!(u.db, 2);
        assert_eq!(u.username, None);
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(u.sentinel_password.as_deref(), Some("s&cret"));
        assert!(!format!("{u:?}").contains("p@ss"), "Debug hides passwords");

        let u = SentinelUrl::parse("rediss+sentinel://app:pw@h1/m").unwrap();
        assert!(u.tls);
        assert_eq!(u.username.as_deref(), Some("app"));
        assert_eq!((u.master.as_str(), u.db), ("m", 0));
        assert_eq!(u.sentinel_password, None);
    }

    #[test]
    fn bad_sentinel_urls_are_refused_without_the_password() {
        let refused = |url: &str| SentinelUrl::parse(url).unwrap_err();
        assert_eq!(refused("redis://h/m"), SentinelUrlError::Scheme);
        assert_eq!(
            refused("redis+sentinel://:pw@/m"),
            SentinelUrlError::NoSentinel
        );
        assert_eq!(
            refused("redis+sentinel://h1:26379"),
            SentinelUrlError::NoMaster
        );
        assert_eq!(
            refused("redis+sentinel://h1:26379/"),
            SentinelUrlError::NoMaster
        );
        assert_eq!(
            refused("redis+sentinel://h1:0/m"),
            SentinelUrlError::BadAddress("h1:0".into())
        );
        assert_eq!(
            refused("redis+sentinel://h1:x/m"),
            SentinelUrlError::BadAddress("h1:x".into())
        );
        assert_eq!(
            refused("redis+sentinel://[::1/m"),
            SentinelUrlError::BadAddress("[::1".into())
        );
        assert_eq!(
            refused("redis+sentinel://:hunter2@h/m/zero"),
            SentinelUrlError::BadDb("zero".into())
        );
        let e = refused("redis+sentinel://h/m?password=hunter2");
        assert_eq!(e, SentinelUrlError::UnknownParameter("password".into()));
        assert!(!e.to_string().contains("hunter2"));
        assert_eq!(
            refused("redis+sentinel://:%ff@h/m"),
            SentinelUrlError::Encoding
        );
        // A password with an unencoded `/`, `?` or `#`: said so, no part shown.
        for url in [
            "redis+sentinel://:hunter/2@h1/m",
            "redis+sentinel://:hun?ter2@h1/m",
            "redis+sentinel://:hun#ter2@h1/m",
        ] {
            let e = refused(url);
            assert_eq!(e, SentinelUrlError::UnencodedCredentials, "{url}");
            assert!(!e.to_string().contains("hun"), "{e}");
        }
    }

    #[cfg(feature = "redis")]
    #[test]
    fn server_urls_are_percent_encoded_and_bracketed() {
        assert_eq!(host_port("::1", 6379), "[::1]:6379");
        assert_eq!(host_port("10.0.0.1", 6379), "10.0.0.1:6379");
        assert_eq!(userinfo(None, Some("p@ss")), ":p%40ss@");
        assert_eq!(userinfo(Some("app"), None), "app@");
        assert_eq!(userinfo(None, None), "");
    }
}
