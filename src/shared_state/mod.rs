//! State shared by several instances through Redis/Valkey (`state =
//! "redis://…"`): the one place that opens the connection, bounds every
//! exchange in time, and tracks whether Redis is usable.
//!
//! Its users are the [throttle](crate::throttle) (counters, blocks, marks),
//! the [upstream health checks](crate::upstream::health) (who found a
//! backend down) and the [Digest nonce counts](crate::http_auth::shared_nc)
//! (the highest `nc` per nonce). Each opens its own [`SharedState`] from the one
//! [`Target`] with a [`Fallback`] saying what it logs and does when Redis
//! fails: it keeps going on what this instance knows — never failing open,
//! never failing a login — and the loss and the return are each logged
//! once.
//!
//! # Where Redis is
//! - `redis://[[user]:password@]host[:port][/db]`, `redis+unix:///path`:
//!   one server, reconnected by the client library after a failure.
//! - `rediss://…`: the same over TLS ([`tls`]): the server is verified
//!   against `state_ca_file` (else the system's roots), and
//!   `state_cert_file` + `state_key_file` are the client certificate when
//!   the server asks for one. A refused certificate is a connection failure
//!   like any other: logged, and the fallback is used.
//! - `redis+sentinel://…`, `rediss+sentinel://…`: Redis Sentinel
//!   ([`sentinel`]): the sentinels name the master, which is verified with
//!   `ROLE`; when it fails or answers `READONLY`, the sentinels are asked
//!   again and the new master is logged with the time the move took.
//!
//! Connecting, one answer and each sentinel's are bounded by [`TIMEOUT`]; a
//! whole exchange, and a whole Sentinel lookup, by twice that. Behind
//! Sentinel one call may wait for another's lookup, then look up and
//! exchange itself, and retry once after `READONLY`: a few seconds at most.
//!
//! Every key starts with [`PREFIX`] ([`key`]); the names after it belong to
//! the users: the throttle's hashed counter and block keys and
//! `dedup-key`, the health checks' `upstream-down:ADDR`, the Digest counts'
//! `digest-nc:HASH`.
//!
//! Redis is the `redis` Cargo feature (on by default). Built without it,
//! [`SharedState::open`] refuses every URL
//! ([`SharedStateError::NotBuilt`]), so a `SharedState` never exists and its
//! users keep their state in memory only.

pub mod sentinel;
pub mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[cfg(feature = "redis")]
use redis::aio::ConnectionManager;
#[cfg(feature = "redis")]
use redis::FromRedisValue;

pub use sentinel::{SentinelUrl, SentinelUrlError};
pub use tls::{TlsFileError, TlsFiles};

/// Prefix of every key this program keeps in Redis.
pub const PREFIX: &str = "nginx-auth-fcgi:";
/// Connecting, one response, and one sentinel's answer may each take this
/// long; a whole exchange or Sentinel lookup twice that before the local
/// state is used.
pub const TIMEOUT: Duration = Duration::from_millis(500);

/// Now, in Unix milliseconds: the clock the users of the shared state
/// without one of their own pass to [`SharedState::attempt`].
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The Redis key of `name` (`nginx-auth-fcgi:NAME`).
pub fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// Where the shared state lives: the `state` URL and, for `rediss://` and
/// `rediss+sentinel://`, the TLS files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// `redis://…`, `rediss://…`, `redis+unix://…`, `redis+sentinel://…`,
    /// `rediss+sentinel://…` (may hold passwords: never log it, see
    /// [`SharedState::shown`]).
    pub url: String,
    /// `state_ca_file`, `state_cert_file`, `state_key_file`.
    pub tls: TlsFiles,
}

impl Target {
    /// `url` without TLS files.
    pub fn new(url: impl Into<String>) -> Target {
        Target {
            url: url.into(),
            tls: TlsFiles::default(),
        }
    }

    /// The scheme before `://`, lower-cased.
    pub fn scheme(&self) -> String {
        self.url
            .split_once("://")
            .map_or("", |(s, _)| s)
            .to_ascii_lowercase()
    }

    /// True for `rediss://` and `rediss+sentinel://`.
    pub fn is_tls(&self) -> bool {
        matches!(self.scheme().as_str(), "rediss" | "rediss+sentinel")
    }

    /// True for `redis+sentinel://` and `rediss+sentinel://`.
    pub fn is_sentinel(&self) -> bool {
        self.scheme().ends_with("+sentinel")
    }

    /// What is wrong with this target before anything is opened: an
    /// unknown scheme, a bad Sentinel URL, TLS files without TLS, a
    /// certificate without its key. Never echoes a password.
    pub fn check(&self) -> Result<(), SharedStateError> {
        let scheme = self.scheme();
        if !["redis", "rediss", "redis+unix", "unix"]
            .iter()
            .any(|s| *s == scheme)
            && !self.is_sentinel()
        {
            return Err(SharedStateError::Scheme(
                self.url.split(':').next().unwrap_or_default().to_owned(),
            ));
        }
        if self.is_sentinel() {
            SentinelUrl::parse(&self.url)?;
        }
        if !self.is_tls() && !self.tls.is_empty() {
            return Err(SharedStateError::TlsWithoutRediss);
        }
        self.tls.check()?;
        Ok(())
    }
}

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SharedStateError {
    /// Not a scheme of ours (only the scheme is shown: the URL may hold a
    /// password).
    #[error(
        "state: `{0}:…` is not memory, redis://, rediss://, redis+unix://, \
         redis+sentinel:// or rediss+sentinel://"
    )]
    Scheme(String),
    /// A Sentinel URL that does not parse.
    #[error("state: {0}")]
    SentinelUrl(#[from] SentinelUrlError),
    /// TLS files for a URL without TLS.
    #[error(
        "state_ca_file, state_cert_file and state_key_file need a rediss:// or \
         rediss+sentinel:// state"
    )]
    TlsWithoutRediss,
    /// `state_cert_file` without `state_key_file` or the other way round.
    #[error("{given} needs {missing} as well")]
    TlsPair {
        /// The option that was given.
        given: &'static str,
        /// The option that is missing.
        missing: &'static str,
    },
    /// A TLS file that cannot be used.
    #[error("{option} {}: {source}", path.display())]
    TlsFile {
        /// `state_ca_file`, `state_cert_file` or `state_key_file`.
        option: &'static str,
        /// The file as given.
        path: PathBuf,
        /// Unreadable, not PEM, nothing in it.
        #[source]
        source: TlsFileError,
    },
    /// The URL was refused by the client library.
    #[cfg(feature = "redis")]
    #[error("state `{shown}`: {source}")]
    Open {
        /// The URL without its password.
        shown: String,
        /// What the client said.
        #[source]
        source: redis::RedisError,
    },
    /// A command failed (connection lost, refused, wrong type, …).
    #[cfg(feature = "redis")]
    #[error("{0}")]
    Redis(#[source] redis::RedisError),
    /// No sentinel named a master that says it is one.
    #[error("Sentinel: no usable master `{master}`: {reason}")]
    NoMaster {
        /// The master name.
        master: String,
        /// The last failure (a sentinel down, the named server not a master…).
        #[source]
        reason: Box<SharedStateError>,
    },
    /// A sentinel does not know the master name.
    #[error("sentinel {sentinel} does not know the master")]
    UnknownMaster {
        /// The sentinel's address.
        sentinel: String,
    },
    /// The server a sentinel named is not (or no longer) the master.
    #[error("{addr} is a {role}, not the master")]
    NotMaster {
        /// The server's address.
        addr: String,
        /// What `ROLE` said.
        role: String,
    },
    /// Another request's lookup of the master just failed.
    #[error("Sentinel: the lookup of master `{0}` failed a moment ago")]
    LookupFailed(String),
    /// This binary was built without the `redis` feature.
    #[cfg(not(feature = "redis"))]
    #[error("redis:// state needs the `redis` feature; this binary was built without it")]
    NotBuilt,
    /// No answer within the time limit.
    #[error("timed out")]
    TimedOut,
    /// A value another instance stored is not what it should be.
    #[error("the shared {0} in Redis is malformed")]
    Malformed(&'static str),
}

/// What one user of the shared state logs when Redis is lost and back, and
/// how long it leaves a failed Redis alone.
#[derive(Debug, Clone, Copy)]
pub struct Fallback {
    /// Logged as an error once when Redis fails, before the reason.
    pub lost: &'static str,
    /// After the reason: what is used instead.
    pub instead: &'static str,
    /// Logged once when Redis answers again.
    pub back: &'static str,
    /// The level of `back`.
    pub back_level: log::Level,
    /// After a failure Redis is not tried for this long (zero: every time).
    pub retry_after: Duration,
}

/// How the connection is made.
#[cfg(feature = "redis")]
enum Conn {
    /// One server (plain, TLS or unix socket), reconnected by the library.
    Direct(ConnectionManager),
    /// The master the sentinels name, looked up again when it fails.
    Sentinel(Box<sentinel::Follower>),
}

/// A lazily connecting Redis/Valkey connection with short timeouts, and
/// whether it worked last time. Clones of the connection are cheap; every
/// method takes `&self`.
pub struct SharedState {
    #[cfg(feature = "redis")]
    conn: Conn,
    /// Without Redis no `SharedState` can be made.
    #[cfg(not(feature = "redis"))]
    _never: std::convert::Infallible,
    shown: String,
    fallback: Fallback,
    /// Redis failed and has not answered since (for logging once each way).
    down: AtomicBool,
    /// Clock time (ms) before which Redis is not tried again; 0: none.
    retry_at: AtomicU64,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("url", &self.shown)
            .field("down", &self.down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SharedState {
    /// Opens `target` (see the [module docs](self) for the URLs). The TLS
    /// files are read now; the connection is made on first use, so this
    /// works without Redis running; it must be called inside a tokio
    /// runtime.
    pub fn open(target: &Target, fallback: Fallback) -> Result<Self, SharedStateError> {
        let shown = crate::passdb::redact_uri(&target.url);
        SharedState::connect(target, shown, fallback)
    }

    #[cfg(feature = "redis")]
    fn connect(
        target: &Target,
        shown: String,
        fallback: Fallback,
    ) -> Result<Self, SharedStateError> {
        target.check()?;
        let refused = |source| SharedStateError::Open {
            shown: shown.clone(),
            source,
        };
        let certs = match target.is_tls() {
            true => {
                // The client library builds its TLS config on the process's
                // provider: ring, as everywhere in this program.
                let _ = rustls::crypto::ring::default_provider().install_default();
                Some(target.tls.certificates()?)
            }
            false => None,
        };
        let conn = if target.is_sentinel() {
            let url = SentinelUrl::parse(&target.url)?;
            Conn::Sentinel(Box::new(sentinel::Follower::new(url, certs)))
        } else {
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(target.url.as_str(), certs),
                None => redis::Client::open(target.url.as_str()),
            }
            .map_err(refused)?;
            Conn::Direct(
                ConnectionManager::new_lazy_with_config(client, manager_config())
                    .map_err(refused)?,
            )
        };
        Ok(SharedState {
            conn,
            shown,
            fallback,
            down: AtomicBool::new(false),
            retry_at: AtomicU64::new(0),
        })
    }

    #[cfg(not(feature = "redis"))]
    fn connect(_: &Target, _: String, _: Fallback) -> Result<Self, SharedStateError> {
        Err(SharedStateError::NotBuilt)
    }

    /// Without the `redis` feature a `SharedState` cannot exist: what its
    /// users' Redis code paths end in (see `throttle/no_redis.rs`).
    #[cfg(not(feature = "redis"))]
    pub fn unreachable(&self) -> ! {
        match self._never {}
    }

    /// The URL as it may be logged (password hidden).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// False while Redis is left alone after a failure (`now_ms` is the
    /// caller's clock, the one it passed to [`SharedState::failed`]).
    pub fn usable(&self, now_ms: u64) -> bool {
        self.fallback.retry_after.is_zero() || now_ms >= self.retry_at.load(Ordering::Relaxed)
    }

    /// Redis answered: logs its return once after a failure.
    pub fn succeeded(&self) {
        self.retry_at.store(0, Ordering::Relaxed);
        if self.down.swap(false, Ordering::Relaxed) {
            log::log!(self.fallback.back_level, "{}", self.fallback.back);
        }
    }

    /// Redis failed: leaves it alone for a while and logs the loss once.
    pub fn failed(&self, now_ms: u64, e: &SharedStateError) {
        let retry = self.fallback.retry_after.as_millis() as u64;
        self.retry_at.store(now_ms + retry, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            log::error!("{} ({e}); {}", self.fallback.lost, self.fallback.instead);
        }
    }

    /// Runs `op` unless Redis is being left alone, and records how it went;
    /// `None` means "use what this instance knows". `now_ms` is the caller's
    /// clock, read before and (on failure) after the exchange.
    pub async fn attempt<T>(
        &self,
        now_ms: impl Fn() -> u64,
        op: impl Future<Output = Result<T, SharedStateError>>,
    ) -> Option<T> {
        if !self.usable(now_ms()) {
            return None;
        }
        match op.await {
            Ok(v) => {
                self.succeeded();
                Some(v)
            }
            Err(e) => {
                self.failed(now_ms(), &e);
                None
            }
        }
    }

    /// One command.
    #[cfg(feature = "redis")]
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, SharedStateError> {
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// A pipeline (atomic when built with `atomic()`).
    #[cfg(feature = "redis")]
    pub async fn pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, SharedStateError> {
        self.run(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
    }

    /// A Lua script.
    #[cfg(feature = "redis")]
    pub async fn invoke<T: FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, SharedStateError> {
        self.run(|mut conn| async move { script.invoke_async(&mut conn).await })
            .await
    }

    /// `exchange` on the current connection, bounded in time.
    #[cfg(feature = "redis")]
    async fn run<T, F, Fut>(&self, exchange: F) -> Result<T, SharedStateError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match &self.conn {
            Conn::Direct(conn) => timed(exchange(conn.clone())).await,
            Conn::Sentinel(follower) => follower.run(exchange).await,
        }
    }
}

/// The connection manager's settings: short timeouts, one retry.
#[cfg(feature = "redis")]
fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2))
}

/// `f` within twice [`TIMEOUT`].
#[cfg(feature = "redis")]
async fn timed<T>(f: impl Future<Output = redis::RedisResult<T>>) -> Result<T, SharedStateError> {
    match tokio::time::timeout(TIMEOUT * 2, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(SharedStateError::Redis(e)),
        Err(_) => Err(SharedStateError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FALLBACK: Fallback = Fallback {
        lost: "test: lost",
        instead: "local",
        back: "test: back",
        back_level: log::Level::Info,
        retry_after: Duration::from_secs(5),
    };

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_failure_rests_redis_and_a_success_ends_the_rest() {
        let s = SharedState::open(&Target::new("redis://127.0.0.1:1"), FALLBACK).unwrap();
        assert!(s.usable(1_000));
        s.failed(1_000, &SharedStateError::TimedOut);
        assert!(!s.usable(5_999));
        assert!(s.usable(6_000));
        let skipped = s
            .attempt(|| 2_000, async { Ok::<_, SharedStateError>(1) })
            .await;
        assert_eq!(skipped, None, "not tried while resting");
        assert_eq!(
            s.attempt(|| 6_000, async { Ok::<_, SharedStateError>(1) })
                .await,
            Some(1)
        );
        assert!(s.usable(6_001));
        assert!(!s.down.load(Ordering::Relaxed));
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn the_password_is_not_shown() {
        let s =
            SharedState::open(&Target::new("redis://:hunter2@127.0.0.1:1/0"), FALLBACK).unwrap();
        assert_eq!(s.shown(), "redis://:***@127.0.0.1:1/0");
        // An `@` in the password does not leak its tail.
        let s =
            SharedState::open(&Target::new("redis://user:p@ss@127.0.0.1:1/0"), FALLBACK).unwrap();
        assert_eq!(s.shown(), "redis://user:***@127.0.0.1:1/0");
        let s = SharedState::open(&Target::new("redis+unix:///run/r.sock?pass=p@ss"), FALLBACK)
            .unwrap();
        assert_eq!(s.shown(), "redis+unix:///run/r.sock?pass=***");
        let e = SharedState::open(&Target::new("nope://:hunter2@x"), FALLBACK).unwrap_err();
        assert!(
            e.to_string().starts_with("state: `nope:…` is not memory"),
            "{e}"
        );
        let s = SharedState::open(
            &Target::new("redis+sentinel://:p@ss@127.0.0.1:1/m?sentinel_password=hunter2"),
            FALLBACK,
        )
        .unwrap();
        assert_eq!(
            s.shown(),
            "redis+sentinel://:***@127.0.0.1:1/m?sentinel_password=***"
        );
    }

    #[cfg(feature = "redis")]
    #[test]
    fn tls_files_are_read_when_opened_and_need_rediss() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _in = runtime.enter();
        let dir = tempfile::tempdir().unwrap();
        let target = |url: &str| Target {
            url: url.into(),
            tls: TlsFiles {
                ca_file: Some(dir.path().join("ca.pem")),
                ..TlsFiles::default()
            },
        };
        let e = SharedState::open(&target("rediss://127.0.0.1:1"), FALLBACK).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("state_ca_file ") && text.contains("ca.pem"),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
        let e = SharedState::open(&target("redis://127.0.0.1:1"), FALLBACK).unwrap_err();
        assert!(matches!(e, SharedStateError::TlsWithoutRediss), "{e}");
        // Without files, rediss:// verifies against the system's roots.
        SharedState::open(&Target::new("rediss://127.0.0.1:1/0"), FALLBACK).unwrap();
        SharedState::open(&Target::new("rediss+sentinel://127.0.0.1:1/m"), FALLBACK).unwrap();
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn sentinels_that_are_not_there_are_a_bounded_failure() {
        // Port 1: refused at once; 192.0.2.1 (TEST-NET-1): never answers.
        let s = SharedState::open(
            &Target::new("redis+sentinel://127.0.0.1:1,192.0.2.1:26379/mymaster"),
            FALLBACK,
        )
        .unwrap();
        let e = s.query::<String>(&redis::cmd("PING")).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Sentinel: no usable master `mymaster`: "),
            "{e}"
        );
        assert!(matches!(e, SharedStateError::NoMaster { .. }), "{e}");
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn without_the_feature_a_redis_url_is_refused_by_name() {
        let e = SharedState::open(&Target::new("redis://:hunter2@127.0.0.1:6379/0"), FALLBACK)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "redis:// state needs the `redis` feature; this binary was built without it"
        );
    }

    #[test]
    fn keys_share_one_prefix() {
        assert_eq!(key("dedup-key"), "nginx-auth-fcgi:dedup-key");
    }
}
