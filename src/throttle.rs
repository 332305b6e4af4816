//! Brute-force throttling: failed logins counted per client network and per
//! user name in sliding windows, answered with a growing `Auth-Wait` and,
//! past a threshold, refused before the passdb is asked.
//!
//! # What is counted, and what is blocked
//! Every *rejection* (wrong password, unknown or disabled user; never a
//! temporary failure) increments three counters:
//!
//! | scope | key | effect |
//! |---|---|---|
//! | `ip` | client address, IPv6 masked to a /64 | delay; **block** past `block_ip` |
//! | `ip-user` | (masked address, user name) | delay; **block** past `block_ip_user` |
//! | `user` | user name | delay only |
//!
//! The per-user count never blocks: an attacker guessing one user's
//! password from one network must not lock that user out from their own.
//! Their network is blocked instead (by `ip-user`, or by `ip` when it sprays
//! many names), while the same user from another address still gets through;
//! a failure there is only answered after a longer `Auth-Wait`.
//!
//! A blocked request is refused without touching the passdb (so a slow hash
//! cannot be used to burn CPU) and gets the generic "invalid login" answer
//! *without* `Auth-Wait`, so nginx closes the connection at once: holding an
//! attacker's session open would cost nginx memory per attempt
//! (nginx-auth-protocols.md §3.5) and buy us nothing.
//!
//! A success resets the `ip-user` counter only: resetting `ip` would let an
//! attacker with one valid account wash its address clean between guesses.
//! Clients in `trusted_networks` are neither counted nor delayed nor blocked.
//! A request without `Client-IP` (nginx always sends it) is counted per user
//! only, so it can be delayed but never blocked.
//!
//! # Windows and time
//! Counters are sliding-window estimates (the previous fixed window, weighted
//! by how much of it still overlaps, plus the current one), which needs two
//! numbers per key and maps directly onto Redis keys. Time comes from a
//! [`Clock`] built on `tokio::time`, so tests can `pause()` and `advance()`;
//! with Redis the timestamps are ours too, so instances need roughly synced
//! clocks (seconds, not minutes).
//!
//! # Where the state lives
//! In memory by default. With `state = "redis://…"` the counters and blocks
//! live in Redis/Valkey so several instances behind one nginx enforce one
//! limit. The local store is always written as well; when Redis fails the
//! throttle reads the local state instead (logged once when Redis goes away
//! and once when it is back) and retries Redis after a few seconds. It never
//! fails open: a store error is never a reason to skip a block we know of.
//!
//! Blocks and unblocks are logged once per transition: "blocked" by the
//! instance whose `SET NX` created the block, "unblocked" by the first
//! instance that sees the block expired (blocks are only looked at when a
//! request from that network arrives).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::audit::quoted;

/// Entries kept per in-memory map before expired ones are swept.
const MEMORY_SWEEP_AT: usize = 100_000;
/// How long Redis is left alone after it failed.
const REDIS_RETRY: Duration = Duration::from_secs(5);
/// One Redis command may take this long before the local state is used.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// Redis key prefix.
const REDIS_PREFIX: &str = "nginx-auth-fcgi:";

/// A network in CIDR notation (`192.0.2.0/24`, `2001:db8::/32`, or a bare
/// address for a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// True when `ip` is inside this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                mask_bits(u32::from(n).into(), 32, self.prefix)
                    == mask_bits(u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                mask_bits(u128::from(n), 128, self.prefix)
                    == mask_bits(u128::from(a), 128, self.prefix)
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: expected an address or CIDR such as 192.0.2.0/24"))?;
        let net = canonical(net);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn mask_bits(v: u128, width: u32, prefix: u8) -> u128 {
    let prefix = u32::from(prefix).min(width);
    if prefix == 0 {
        0
    } else {
        v & (u128::MAX << (width - prefix)) & (u128::MAX >> (128 - width))
    }
}

/// Time for the throttle, in milliseconds since the Unix epoch. Built on
/// `tokio::time::Instant` so paused test time moves it; [`Clock::manual`]
/// is for tests that must not pause the runtime (real Redis I/O).
#[derive(Debug, Clone)]
pub enum Clock {
    /// Wall time at start-up plus `tokio::time` elapsed since.
    Tokio {
        /// Unix milliseconds at `base`.
        unix_ms: u64,
        /// The instant `unix_ms` was read.
        base: tokio::time::Instant,
    },
    /// A hand-moved clock.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The normal clock.
    pub fn system() -> Self {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock::Tokio {
            unix_ms,
            base: tokio::time::Instant::now(),
        }
    }

    /// A clock that moves only by [`Clock::advance`]; clones share it.
    pub fn manual(unix_ms: u64) -> Self {
        Clock::Manual(Arc::new(AtomicU64::new(unix_ms)))
    }

    /// Moves a manual clock (no effect on the tokio one: use `tokio::time::advance`).
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(ms) = self {
            ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        }
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::Tokio { unix_ms, base } => unix_ms + base.elapsed().as_millis() as u64,
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }
}

/// The throttle's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Length of the sliding window failures are counted in.
    pub window: Duration,
    /// Failures from one network (all users) that block it; 0 never blocks.
    /// High enough for a NAT with many users.
    pub block_ip: u32,
    /// Failures for one user from one network that block that pair; 0 never blocks.
    pub block_ip_user: u32,
    /// How long a block lasts.
    pub block_time: Duration,
    /// `Auth-Wait` after the first counted failure, doubling with each further one.
    pub delay_base: u32,
    /// Cap of the throttle's `Auth-Wait`.
    pub delay_max: u32,
    /// IPv6 clients are counted per network of this prefix length (one
    /// customer usually gets a whole /64 or more).
    pub ipv6_prefix: u8,
    /// Clients that are never counted, delayed or blocked (webmail, monitoring).
    pub trusted: Vec<Cidr>,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        ThrottlePolicy {
            window: Duration::from_secs(600),
            block_ip: 50,
            block_ip_user: 10,
            block_time: Duration::from_secs(900),
            delay_base: 1,
            delay_max: 30,
            ipv6_prefix: 64,
            trusted: Vec::new(),
        }
    }
}

impl ThrottlePolicy {
    /// The `Auth-Wait` for `failures` counted failures; `None` for none.
    pub fn delay(&self, failures: u32) -> Option<u32> {
        if failures == 0 || self.delay_base == 0 {
            return None;
        }
        let d = self
            .delay_base
            .saturating_mul(1u32 << (failures - 1).min(20));
        Some(d.min(self.delay_max.max(self.delay_base)))
    }
}

/// Which block applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The client's network, for every user.
    Ip,
    /// One user from the client's network.
    IpUser,
}

impl Scope {
    /// Name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::IpUser => "ip-user",
        }
    }
}

/// The answer of [`Throttle::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A trusted client: not counted.
    Exempt,
    /// Go ahead and ask the passdb.
    Allowed,
    /// Refuse without asking the passdb.
    Blocked(Scope),
}

/// The counter keys of one request.
struct Keys {
    /// Masked client network, for logs.
    net: Option<String>,
    /// Quoted user name, for logs.
    user_shown: String,
    ip: Option<String>,
    ip_user: Option<String>,
    user: String,
}

/// The throttle: policy, clock and state.
pub struct Throttle {
    policy: ThrottlePolicy,
    clock: Clock,
    local: MemoryStore,
    redis: Option<RedisStore>,
    health: Mutex<Health>,
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("policy", &self.policy)
            .field("redis", &self.redis.as_ref().map(|r| &r.shown))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Health {
    down: bool,
    /// Clock time (ms) before which Redis is not tried again.
    retry_at: Option<u64>,
}

impl Throttle {
    /// A throttle keeping its state in this process.
    pub fn in_memory(policy: ThrottlePolicy, clock: Clock) -> Self {
        Throttle {
            policy,
            clock,
            local: MemoryStore::default(),
            redis: None,
            health: Mutex::default(),
        }
    }

    /// A throttle sharing its state through Redis at `url`
    /// (`redis://[:password@]host[:port][/db]`, `redis+unix:///path`). The
    /// connection is made lazily, so this works without Redis running; it
    /// must be called inside a tokio runtime.
    pub fn with_redis(policy: ThrottlePolicy, clock: Clock, url: &str) -> Result<Self, String> {
        let mut t = Throttle::in_memory(policy, clock);
        t.redis = Some(RedisStore::open(url)?);
        Ok(t)
    }

    /// The policy in force.
    pub fn policy(&self) -> &ThrottlePolicy {
        &self.policy
    }

    fn keys(&self, ip: Option<IpAddr>, user: &[u8]) -> Option<Keys> {
        let ip = ip.map(canonical);
        if ip.is_some_and(|ip| self.policy.trusted.iter().any(|c| c.contains(ip))) {
            return None;
        }
        // Case variants of one name are one user to a guesser.
        let name = String::from_utf8_lossy(user).to_lowercase();
        let net = ip.map(|ip| match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let p = self.policy.ipv6_prefix.min(128);
                let masked = Ipv6Addr::from(mask_bits(u128::from(v6), 128, p));
                format!("{masked}/{p}")
            }
        });
        Some(Keys {
            ip: net.as_ref().map(|n| format!("ip:{n}")),
            ip_user: net.as_ref().map(|n| format!("ipu:{n}:{name}")),
            user: format!("u:{name}"),
            user_shown: quoted(&String::from_utf8_lossy(user)),
            net,
        })
    }

    fn block_keys(k: &Keys) -> Vec<(Scope, String)> {
        let mut v = Vec::new();
        if let Some(ip) = &k.ip {
            v.push((Scope::Ip, format!("block:{ip}")));
        }
        if let Some(iu) = &k.ip_user {
            v.push((Scope::IpUser, format!("block:{iu}")));
        }
        v
    }

    fn describe(k: &Keys, scope: Scope) -> String {
        let net = k.net.as_deref().unwrap_or("-");
        match scope {
            Scope::Ip => format!("ip {net}"),
            Scope::IpUser => format!("ip {net} user {}", k.user_shown),
        }
    }

    /// Redis, unless it failed a moment ago.
    fn redis(&self) -> Option<&RedisStore> {
        let r = self.redis.as_ref()?;
        let h = self.health.lock().expect("health lock");
        match h.retry_at {
            Some(at) if self.clock.now_ms() < at => None,
            _ => Some(r),
        }
    }

    fn redis_ok(&self) {
        let mut h = self.health.lock().expect("health lock");
        h.retry_at = None;
        if std::mem::take(&mut h.down) {
            log::warn!("throttle: shared state reachable again; using it");
        }
    }

    fn redis_failed(&self, e: &str) {
        let mut h = self.health.lock().expect("health lock");
        h.retry_at = Some(self.clock.now_ms() + REDIS_RETRY.as_millis() as u64);
        if !h.down {
            h.down = true;
            log::error!(
                "throttle: shared state unreachable ({e}); using this instance's own counts"
            );
        }
    }

    /// Whether a login from `ip` as `user` may go to the passdb at all.
    pub async fn check(&self, ip: Option<IpAddr>, user: &[u8]) -> Check {
        let Some(k) = self.keys(ip, user) else {
            return Check::Exempt;
        };
        let blocks = Self::block_keys(&k);
        if blocks.is_empty() {
            return Check::Allowed;
        }
        let now = self.clock.now_ms();
        let names: Vec<&str> = blocks.iter().map(|(_, n)| n.as_str()).collect();
        let mut found = None;
        if let Some(r) = self.redis() {
            match r.get_blocks(&names).await {
                Ok(v) => {
                    self.redis_ok();
                    found = Some(v);
                }
                Err(e) => self.redis_failed(&e),
            }
        }
        let shared = found.is_some();
        // Blocks set while Redis was away live only here: honour both.
        let local = self.local.get_blocks(&names);
        let untils: Vec<Option<u64>> = match found {
            Some(remote) => remote
                .into_iter()
                .zip(local)
                .map(|(r, l)| r.max(l))
                .collect(),
            None => local,
        };
        let mut verdict = Check::Allowed;
        for ((scope, name), until) in blocks.iter().zip(untils) {
            let Some(until) = until else { continue };
            if until > now {
                if verdict == Check::Allowed {
                    verdict = Check::Blocked(*scope);
                }
                continue;
            }
            // Expired but still stored: whoever removes it says so, once.
            let removed = if shared {
                self.local.take_expired_block(name, until);
                match self
                    .redis
                    .as_ref()
                    .map(|r| r.take_expired_block(name, until))
                {
                    Some(f) => f.await.unwrap_or(false),
                    None => false,
                }
            } else {
                self.local.take_expired_block(name, until)
            };
            if removed {
                log::warn!("throttle: unblocked {}", Self::describe(&k, *scope));
            }
        }
        verdict
    }

    /// Counts a rejected login; returns the throttle's `Auth-Wait` for it.
    pub async fn record_failure(&self, ip: Option<IpAddr>, user: &[u8]) -> Option<u32> {
        let k = self.keys(ip, user)?;
        let now = self.clock.now_ms();
        let window_ms = (self.policy.window.as_millis() as u64).max(1);
        let bucket = now / window_ms;
        // Share of the previous window still inside the sliding one.
        let prev_weight = 1.0 - (now % window_ms) as f64 / window_ms as f64;
        let mut names: Vec<(Option<Scope>, &str)> = vec![(None, k.user.as_str())];
        if let Some(ip) = &k.ip {
            names.push((Some(Scope::Ip), ip));
        }
        if let Some(iu) = &k.ip_user {
            names.push((Some(Scope::IpUser), iu));
        }
        let keys: Vec<&str> = names.iter().map(|(_, n)| *n).collect();
        let ttl = Duration::from_millis(window_ms * 2);
        let local = self.local.incr(&keys, bucket, now);
        let mut counts = local;
        if let Some(r) = self.redis() {
            match r.incr(&keys, bucket, ttl).await {
                Ok(c) => {
                    self.redis_ok();
                    counts = c;
                }
                Err(e) => self.redis_failed(&e),
            }
        }
        let weighted: Vec<u32> = counts
            .iter()
            .map(|(cur, prev)| cur + (*prev as f64 * prev_weight) as u32)
            .collect();
        let until = now + self.policy.block_time.as_millis() as u64;
        // Kept past expiry for a window, so the unblock is seen and logged.
        let block_ttl = self.policy.block_time + self.policy.window;
        for ((scope, _), n) in names.iter().zip(&weighted) {
            let limit = match scope {
                Some(Scope::Ip) => self.policy.block_ip,
                Some(Scope::IpUser) => self.policy.block_ip_user,
                None => 0,
            };
            let Some(scope) = scope.filter(|_| limit > 0 && *n >= limit) else {
                continue;
            };
            let name = match scope {
                Scope::Ip => format!("block:{}", k.ip.as_deref().unwrap_or_default()),
                Scope::IpUser => format!("block:{}", k.ip_user.as_deref().unwrap_or_default()),
            };
            let mut new = self.local.set_block(&name, until, now);
            if let Some(r) = self.redis() {
                match r.set_block(&name, until, block_ttl).await {
                    Ok(shared_new) => {
                        self.redis_ok();
                        new = shared_new;
                    }
                    Err(e) => self.redis_failed(&e),
                }
            }
            if new {
                log::warn!(
                    "throttle: blocked {} for {} s after {n} failures in {} s",
                    Self::describe(&k, scope),
                    self.policy.block_time.as_secs(),
                    self.policy.window.as_secs()
                );
            }
        }
        self.policy
            .delay(weighted.iter().copied().max().unwrap_or(0))
    }

    /// A successful login: forgets this user's failures from this network.
    pub async fn record_success(&self, ip: Option<IpAddr>, user: &[u8]) {
        let Some(k) = self.keys(ip, user) else { return };
        let Some(iu) = &k.ip_user else { return };
        let window_ms = (self.policy.window.as_millis() as u64).max(1);
        let bucket = self.clock.now_ms() / window_ms;
        self.local.reset(iu);
        if let Some(r) = self.redis() {
            match r.reset(iu, bucket).await {
                Ok(()) => self.redis_ok(),
                Err(e) => self.redis_failed(&e),
            }
        }
    }
}

/// Counters and blocks in this process.
#[derive(Default)]
struct MemoryStore {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    windows: HashMap<String, Window>,
    blocks: HashMap<String, u64>,
}

#[derive(Clone, Copy)]
struct Window {
    bucket: u64,
    cur: u32,
    prev: u32,
}

impl MemoryStore {
    // A std Mutex: every critical section is a few map operations, never held
    // across an await.
    fn incr(&self, keys: &[&str], bucket: u64, now: u64) -> Vec<(u32, u32)> {
        let mut s = self.state.lock().expect("throttle state lock");
        if s.windows.len() >= MEMORY_SWEEP_AT {
            s.windows.retain(|_, w| w.bucket + 1 >= bucket);
            if s.windows.len() >= MEMORY_SWEEP_AT {
                // A flood of distinct keys within one window. Forgetting all
                // counts would let a spray from many addresses wash a guesser's
                // count away, so forget the lightest ones: single failures
                // first, then all but the heaviest half of the cap. The map is
                // then at most half full, so this runs at most once per
                // MEMORY_SWEEP_AT / 2 new keys. Blocks are kept.
                let before = s.windows.len();
                s.windows.retain(|_, w| w.cur.saturating_add(w.prev) > 1);
                let keep = MEMORY_SWEEP_AT / 2;
                if s.windows.len() > keep {
                    let mut counts: Vec<u32> = s
                        .windows
                        .values()
                        .map(|w| w.cur.saturating_add(w.prev))
                        .collect();
                    counts.select_nth_unstable_by(keep, |a, b| b.cmp(a));
                    let threshold = counts[keep];
                    s.windows
                        .retain(|_, w| w.cur.saturating_add(w.prev) > threshold);
                }
                log::warn!(
                    "throttle: too many distinct clients; forgot {} light counters, kept the {} heaviest",
                    before - s.windows.len(),
                    s.windows.len()
                );
            }
        }
        if s.blocks.len() >= MEMORY_SWEEP_AT {
            s.blocks.retain(|_, until| *until > now);
        }
        keys.iter()
            .map(|k| {
                let w = s.windows.entry((*k).to_owned()).or_insert(Window {
                    bucket,
                    cur: 0,
                    prev: 0,
                });
                if w.bucket != bucket {
                    w.prev = if w.bucket + 1 == bucket { w.cur } else { 0 };
                    w.cur = 0;
                    w.bucket = bucket;
                }
                w.cur = w.cur.saturating_add(1);
                (w.cur, w.prev)
            })
            .collect()
    }

    fn get_blocks(&self, keys: &[&str]) -> Vec<Option<u64>> {
        let s = self.state.lock().expect("throttle state lock");
        keys.iter().map(|k| s.blocks.get(*k).copied()).collect()
    }

    /// True when no block was in force before.
    fn set_block(&self, key: &str, until: u64, now: u64) -> bool {
        let mut s = self.state.lock().expect("throttle state lock");
        match s.blocks.insert(key.to_owned(), until) {
            Some(old) if old > now => {
                s.blocks.insert(key.to_owned(), old);
                false
            }
            _ => true,
        }
    }

    fn take_expired_block(&self, key: &str, until: u64) -> bool {
        let mut s = self.state.lock().expect("throttle state lock");
        if s.blocks.get(key) == Some(&until) {
            s.blocks.remove(key);
            true
        } else {
            false
        }
    }

    fn reset(&self, key: &str) {
        self.state
            .lock()
            .expect("throttle state lock")
            .windows
            .remove(key);
    }
}

/// A lazily connecting Redis/Valkey connection for shared state (throttle,
/// upstream health), with short timeouts, and the URL as it may be logged
/// (password hidden).
pub(crate) fn open_redis(url: &str) -> Result<(redis::aio::ConnectionManager, String), String> {
    let shown = match url.split_once('@') {
        Some((scheme_auth, host)) => {
            let scheme = scheme_auth.split("://").next().unwrap_or("redis");
            format!("{scheme}://…@{host}")
        }
        None => url.to_owned(),
    };
    let client = redis::Client::open(url).map_err(|e| format!("state `{shown}`: {e}"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| format!("state `{shown}`: {e}"))?;
    Ok((conn, shown))
}

/// Counters and blocks in Redis/Valkey.
struct RedisStore {
    conn: redis::aio::ConnectionManager,
    /// The URL without a password, for logs.
    shown: String,
    unblock: redis::Script,
}

impl RedisStore {
    fn open(url: &str) -> Result<Self, String> {
        let (conn, shown) = open_redis(url)?;
        Ok(RedisStore {
            conn,
            shown,
            // Compare-and-delete, so one instance logs the unblock.
            unblock: redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                   return redis.call('DEL', KEYS[1]) else return 0 end",
            ),
        })
    }

    /// A bounded-length Redis key: user names are attacker-chosen.
    fn key(name: &str) -> String {
        let h = Sha256::digest(name.as_bytes());
        format!("{REDIS_PREFIX}{}", hex::encode(&h[..16]))
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(REDIS_TIMEOUT * 2, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    async fn incr(
        &self,
        keys: &[&str],
        bucket: u64,
        ttl: Duration,
    ) -> Result<Vec<(u32, u32)>, String> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for k in keys {
            let base = Self::key(k);
            let cur = format!("{base}:{bucket}");
            pipe.incr(&cur, 1u32)
                .pexpire(&cur, ttl.as_millis() as i64)
                .ignore()
                .get(format!("{base}:{}", bucket.wrapping_sub(1)));
        }
        let mut conn = self.conn.clone();
        let flat: Vec<Option<u32>> = self.run(pipe.query_async(&mut conn)).await?;
        Ok(flat
            .chunks(2)
            .map(|c| (c[0].unwrap_or(1), c.get(1).copied().flatten().unwrap_or(0)))
            .collect())
    }

    async fn get_blocks(&self, keys: &[&str]) -> Result<Vec<Option<u64>>, String> {
        let mut cmd = redis::cmd("MGET");
        for k in keys {
            cmd.arg(Self::key(k));
        }
        let mut conn = self.conn.clone();
        self.run(cmd.query_async(&mut conn)).await
    }

    async fn set_block(&self, key: &str, until: u64, ttl: Duration) -> Result<bool, String> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(Self::key(key))
            .arg(until)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        let r: Option<String> = self.run(cmd.query_async(&mut conn)).await?;
        Ok(r.is_some())
    }

    async fn take_expired_block(&self, key: &str, until: u64) -> Result<bool, String> {
        let mut conn = self.conn.clone();
        let mut inv = self.unblock.key(Self::key(key));
        inv.arg(until.to_string());
        let n: u32 = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(n > 0)
    }

    async fn reset(&self, key: &str, bucket: u64) -> Result<(), String> {
        let base = Self::key(key);
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{base}:{bucket}"))
            .arg(format!("{base}:{}", bucket.wrapping_sub(1)));
        let _: u32 = self.run(cmd.query_async(&mut conn)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_flood_of_new_keys_keeps_the_heavy_counters() {
        let store = MemoryStore::default();
        // A guesser with 7 failures, then a spray of single failures from
        // distinct addresses up to the cap.
        for _ in 0..7 {
            store.incr(&["ip:203.0.113.9|alice"], 10, 0);
        }
        for i in 0..MEMORY_SWEEP_AT {
            store.incr(&[&format!("ip:spray-{i}")], 10, 0);
        }
        // The sweep ran (the map is far below the cap) and the guesser's
        // count survived it.
        let len = store.state.lock().unwrap().windows.len();
        assert!(len < MEMORY_SWEEP_AT / 2, "{len} counters after the sweep");
        assert_eq!(store.incr(&["ip:203.0.113.9|alice"], 10, 0), vec![(8, 0)]);
        // With heavy keys beyond half the cap, only the heaviest half stays.
        let store = MemoryStore::default();
        for i in 0..MEMORY_SWEEP_AT {
            let k = format!("k{i}");
            let n = if i == 0 { 9 } else { 2 + (i % 3) as u32 };
            for _ in 0..n {
                store.incr(&[&k], 10, 0);
            }
        }
        let len = store.state.lock().unwrap().windows.len();
        assert!(len <= MEMORY_SWEEP_AT / 2 + 1, "{len} counters");
        assert_eq!(store.incr(&["k0"], 10, 0), vec![(10, 0)]);
    }
    use super::*;

    #[test]
    fn cidr() {
        let c: Cidr = "192.0.2.0/24".parse().unwrap();
        assert!(c.contains("192.0.2.77".parse().unwrap()));
        assert!(c.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!c.contains("192.0.3.1".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!c.contains("2001:db9::1".parse().unwrap()));
        let host: Cidr = "10.1.2.3".parse().unwrap();
        assert!(host.contains("10.1.2.3".parse().unwrap()));
        assert!(!host.contains("10.1.2.4".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn delay_grows_and_caps() {
        let p = ThrottlePolicy::default();
        let d: Vec<_> = (0..8).map(|n| p.delay(n)).collect();
        assert_eq!(
            d,
            [
                None,
                Some(1),
                Some(2),
                Some(4),
                Some(8),
                Some(16),
                Some(30),
                Some(30)
            ]
        );
        assert_eq!(p.delay(u32::MAX), Some(30));
    }

    #[test]
    fn ipv6_is_counted_per_64() {
        let t = Throttle::in_memory(ThrottlePolicy::default(), Clock::manual(0));
        let a = t
            .keys(Some("2001:db8:1:2:aaaa::1".parse().unwrap()), b"U")
            .unwrap();
        let b = t
            .keys(Some("2001:db8:1:2:bbbb::2".parse().unwrap()), b"u")
            .unwrap();
        assert_eq!(a.ip, b.ip);
        assert_eq!(a.ip_user, b.ip_user);
        assert_eq!(a.net.as_deref(), Some("2001:db8:1:2::/64"));
        let c = t
            .keys(Some("::ffff:198.51.100.7".parse().unwrap()), b"u")
            .unwrap();
        assert_eq!(c.net.as_deref(), Some("198.51.100.7"));
    }
}
