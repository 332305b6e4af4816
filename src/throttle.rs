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
//! | `ip` | client address, IPv6 masked to a /64 | delay; **block** past `block_ip`, raised by toleration |
//! | `ip-user` | (masked address, user name) | delay; **block** past `block_ip_user` |
//! | `user` | user name | delay only, and not where the network is known for the user |
//!
//! The per-user count never blocks: an attacker guessing one user's
//! password from one network must not lock that user out from their own.
//! Their network is blocked instead (by `ip-user`, or by `ip` when it sprays
//! many names), while the same user from another address still gets through;
//! a failure there is only answered after a longer `Auth-Wait` — unless the
//! user logged in from there within `known_for` (a *known network*), where
//! a distributed attack on the name does not delay the owner.
//!
//! Three refinements keep real users in:
//! - the same wrong password for the same user from the same network counts
//!   once per window (a mark under a 32-bit keyed HMAC tag of it; the key is
//!   per instance, or shared in Redis);
//! - *adaptive toleration*: `block_ip` grows by `success_bonus × log2(1 + U)`,
//!   U the distinct users who logged in from the network in the window, up to
//!   `block_ip_max`, so a busy NAT or webmail gets room and an address with
//!   no success is blocked at the base;
//! - loopback is in `trusted_networks` by default.
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
//! only, so it can be delayed but never blocked. [`Throttle::inspect`] and
//! [`Throttle::unblock`] are the admin view (`nginx-auth-fcgi throttle`).
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

use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::audit::quoted;
use crate::metrics::METRICS;

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
    /// Clients that are never counted, delayed or blocked (webmail,
    /// monitoring). Default: loopback (127.0.0.0/8, ::1).
    pub trusted: Vec<Cidr>,
    /// Adaptive toleration: a network's block threshold grows by this much
    /// per doubling of the distinct users who logged in from it in the window
    /// (`block_ip + success_bonus × log2(1 + users)`, at most `block_ip_max`).
    pub success_bonus: u32,
    /// The highest block threshold toleration can reach.
    pub block_ip_max: u32,
    /// A network where a user logged in within this time is *known* for
    /// that user: failures of that user elsewhere (a distributed attack) do
    /// not delay the user there. Zero: off.
    pub known_for: Duration,
}

/// Loopback, trusted by default (a webmail on the same host, monitoring).
pub fn loopback() -> Vec<Cidr> {
    vec![
        "127.0.0.0/8".parse().expect("valid CIDR"),
        "::1".parse().expect("valid CIDR"),
    ]
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
            trusted: loopback(),
            success_bonus: 10,
            block_ip_max: 250,
            known_for: Duration::from_secs(30 * 86_400),
        }
    }
}

impl ThrottlePolicy {
    /// The failures that block a network from which `users` distinct users
    /// logged in within the window (0: never blocks).
    pub fn ip_threshold(&self, users: u32) -> u32 {
        if self.block_ip == 0 {
            return 0;
        }
        let bonus = f64::from(self.success_bonus) * (1.0 + f64::from(users)).log2();
        let grown = (f64::from(self.block_ip) + bonus.floor()).min(f64::from(u32::MAX)) as u32;
        grown.min(self.block_ip_max.max(self.block_ip))
    }

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
    /// The user name as counted (lower case).
    name: String,
    ip: Option<String>,
    ip_user: Option<String>,
    user: String,
    /// Distinct users who logged in from the network (window counter).
    ok: Option<String>,
    /// Set while this user counts toward `ok` in the window.
    ok_user: Option<String>,
    /// Set while the network is known for the user.
    known: Option<String>,
    /// Prefix of the marks of wrong passwords already counted.
    dup: Option<String>,
}

/// The throttle: policy, clock and state.
pub struct Throttle {
    policy: ThrottlePolicy,
    clock: Clock,
    local: MemoryStore,
    redis: Option<RedisStore>,
    health: Mutex<Health>,
    /// This instance's key for the tags of wrong passwords (the shared one
    /// lives in Redis).
    dedup_key: [u8; 32],
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
        let mut dedup_key = [0u8; 32];
        rand::rng().fill_bytes(&mut dedup_key);
        Throttle {
            policy,
            clock,
            local: MemoryStore::default(),
            redis: None,
            health: Mutex::default(),
            dedup_key,
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
        let on_net = |prefix: &str| net.as_ref().map(|n| format!("{prefix}:{n}:{name}"));
        Some(Keys {
            ip: net.as_ref().map(|n| format!("ip:{n}")),
            ip_user: on_net("ipu"),
            user: format!("u:{name}"),
            user_shown: quoted(&String::from_utf8_lossy(user)),
            ok: net.as_ref().map(|n| format!("ok:{n}")),
            ok_user: on_net("oku"),
            known: on_net("known"),
            dup: on_net("dup"),
            name,
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
        // Blocks set while Redis was away live only here: honour those too
        // (blocks Redis took are Redis's to keep or lift).
        let local = if shared {
            self.local.get_unshared_blocks(&names)
        } else {
            self.local.get_blocks(&names)
        };
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
    /// `secret` is what the client offered (a password): the same wrong one
    /// for the same user from the same network counts once per window (a
    /// phone retrying a stale password is not a guesser). Only a 32-bit
    /// keyed HMAC of it is kept.
    /// `known` is [`Throttle::known`] for this pair, asked before judging.
    pub async fn record_failure(
        &self,
        ip: Option<IpAddr>,
        user: &[u8],
        secret: Option<&[u8]>,
        known: bool,
    ) -> Option<u32> {
        let k = self.keys(ip, user)?;
        let at = self.moment();
        if let (Some(dup), Some(secret)) = (&k.dup, secret) {
            let local = format!("{dup}:{}", tag(&self.dedup_key, secret));
            let shared = match self.redis() {
                Some(r) => r
                    .dedup_key()
                    .await
                    .ok()
                    .map(|key| format!("{dup}:{}", tag(&key, secret))),
                None => None,
            };
            if !self
                .mark(&local, shared.as_deref(), self.policy.window, true)
                .await
            {
                log::debug!(
                    "throttle: the same wrong password again for {}: not counted",
                    Self::describe(&k, Scope::IpUser)
                );
                return None;
            }
        }
        let mut names: Vec<(Option<Scope>, &str)> = vec![(None, k.user.as_str())];
        if let Some(ip) = &k.ip {
            names.push((Some(Scope::Ip), ip));
        }
        if let Some(iu) = &k.ip_user {
            names.push((Some(Scope::IpUser), iu));
        }
        let keys: Vec<&str> = names.iter().map(|(_, n)| *n).collect();
        let counts = self.incr(&keys, &at).await;
        let weighted: Vec<u32> = counts.into_iter().map(|c| at.weigh(c)).collect();
        let users_ok = self.users_ok(&k, &at).await;
        let until = at.now + self.policy.block_time.as_millis() as u64;
        for ((scope, _), n) in names.iter().zip(&weighted) {
            let limit = match scope {
                Some(Scope::Ip) => self.policy.ip_threshold(users_ok),
                Some(Scope::IpUser) => self.policy.block_ip_user,
                None => 0,
            };
            let Some(scope) = scope.filter(|_| limit > 0 && *n >= limit) else {
                continue;
            };
            if self.set_block(&k, scope, until, at.now).await {
                METRICS.throttle_block(scope.as_str());
                log::warn!(
                    "throttle: blocked {} for {} s after {n} failures in {} s (threshold {limit}{})",
                    Self::describe(&k, scope),
                    self.policy.block_time.as_secs(),
                    self.policy.window.as_secs(),
                    if scope == Scope::Ip && users_ok > 0 {
                        format!(", raised by {users_ok} users who logged in from there")
                    } else {
                        String::new()
                    }
                );
            }
        }
        // The user's count (failures from everywhere) delays only where the
        // user is not known: the owner keeps working from home while
        // somebody else guesses from elsewhere.
        let delaying = names
            .iter()
            .zip(&weighted)
            .filter(|((scope, _), _)| scope.is_some() || !known)
            .map(|(_, n)| *n);
        self.policy.delay(delaying.max().unwrap_or(0))
    }

    /// A successful login: forgets this user's failures from this network,
    /// counts the user toward the network's toleration and marks the
    /// network known for the user.
    pub async fn record_success(&self, ip: Option<IpAddr>, user: &[u8]) {
        let Some(k) = self.keys(ip, user) else { return };
        let (Some(iu), Some(ok), Some(ok_user), Some(known)) =
            (&k.ip_user, &k.ok, &k.ok_user, &k.known)
        else {
            return;
        };
        let at = self.moment();
        self.local.reset(iu);
        if let Some(r) = self.redis() {
            match r.reset(iu, at.bucket).await {
                Ok(()) => self.redis_ok(),
                Err(e) => self.redis_failed(&e),
            }
        }
        if self.mark(ok_user, None, self.policy.window, true).await {
            self.incr(&[ok.as_str()], &at).await;
        }
        if !self.policy.known_for.is_zero() {
            self.mark(known, None, self.policy.known_for, false).await;
        }
    }

    /// The sliding window now.
    fn moment(&self) -> Moment {
        let now = self.clock.now_ms();
        let window_ms = (self.policy.window.as_millis() as u64).max(1);
        Moment {
            now,
            window_ms,
            bucket: now / window_ms,
            prev_weight: 1.0 - (now % window_ms) as f64 / window_ms as f64,
        }
    }

    /// Distinct users who logged in from `k`'s network in the window.
    async fn users_ok(&self, k: &Keys, at: &Moment) -> u32 {
        match &k.ok {
            Some(ok) => at.weigh(self.peek(ok, at.bucket).await),
            None => 0,
        }
    }

    /// Whether `k`'s network is known for its user.
    async fn is_known(&self, k: &Keys) -> bool {
        match &k.known {
            Some(key) if !self.policy.known_for.is_zero() => self.marked(key).await,
            _ => false,
        }
    }

    /// Adds one to each counter, in both stores; the shared counts win.
    async fn incr(&self, keys: &[&str], at: &Moment) -> Vec<(u32, u32)> {
        let local = self.local.incr(keys, at.bucket, at.now);
        if let Some(r) = self.redis() {
            match r
                .incr(keys, at.bucket, Duration::from_millis(at.window_ms * 2))
                .await
            {
                Ok(c) => {
                    self.redis_ok();
                    return c;
                }
                Err(e) => self.redis_failed(&e),
            }
        }
        local
    }

    /// A counter's current and previous window, without counting.
    async fn peek(&self, key: &str, bucket: u64) -> (u32, u32) {
        if let Some(r) = self.redis() {
            match r.peek(key, bucket).await {
                Ok(c) => {
                    self.redis_ok();
                    return c;
                }
                Err(e) => self.redis_failed(&e),
            }
        }
        self.local.peek(key, bucket)
    }

    /// Sets a mark for `ttl` (in Redis under `shared`, else the same name);
    /// with `only_new`, true only when it was not set yet.
    async fn mark(&self, local: &str, shared: Option<&str>, ttl: Duration, only_new: bool) -> bool {
        let now = self.clock.now_ms();
        let new = self
            .local
            .mark(local, now + ttl.as_millis() as u64, now, only_new);
        if let Some(r) = self.redis() {
            match r.mark(shared.unwrap_or(local), ttl, only_new).await {
                Ok(shared_new) => {
                    self.redis_ok();
                    return shared_new;
                }
                Err(e) => self.redis_failed(&e),
            }
        }
        new
    }

    /// Whether a mark is set.
    async fn marked(&self, key: &str) -> bool {
        if let Some(r) = self.redis() {
            match r.marked(key).await {
                Ok(m) => {
                    self.redis_ok();
                    return m || self.local.marked(key, self.clock.now_ms());
                }
                Err(e) => self.redis_failed(&e),
            }
        }
        self.local.marked(key, self.clock.now_ms())
    }

    /// Sets the block of `scope` for `k` until `until`, in both stores; true
    /// when no block was in force before (so one instance logs it).
    async fn set_block(&self, k: &Keys, scope: Scope, until: u64, now: u64) -> bool {
        let name = match scope {
            Scope::Ip => format!("block:{}", k.ip.as_deref().unwrap_or_default()),
            Scope::IpUser => format!("block:{}", k.ip_user.as_deref().unwrap_or_default()),
        };
        // Kept past expiry for a window, so the unblock is seen and logged.
        let block_ttl = self.policy.block_time + self.policy.window;
        let new = self.local.set_block(&name, until, now);
        if let Some(r) = self.redis() {
            if scope == Scope::IpUser {
                // So `throttle unblock --ip` / `--user` can find pair
                // blocks behind their hashed keys.
                let net = k.net.as_deref().unwrap_or_default();
                if let Err(e) = r
                    .index(&format!("idx-net:{net}"), &k.name, block_ttl)
                    .await
                    .and(
                        r.index(&format!("idx-user:{}", k.name), net, block_ttl)
                            .await,
                    )
                {
                    self.redis_failed(&e);
                }
            }
            match r.set_block(&name, until, block_ttl).await {
                Ok(shared_new) => {
                    self.redis_ok();
                    self.local.set_shared(&name, true);
                    return shared_new;
                }
                Err(e) => self.redis_failed(&e),
            }
        }
        self.local.set_shared(&name, false);
        new
    }
}

/// Whose pair blocks to find: the users blocked on a network, or the
/// networks a user is blocked on.
enum Partners<'a> {
    UsersOf(&'a str),
    NetsOf(&'a str),
}

impl Throttle {
    /// The other half of every pair block `of` asks for: this instance's,
    /// and with Redis those its index sets list.
    async fn partners(&self, of: Partners<'_>) -> Vec<String> {
        let pairs = self.local.pair_blocks().into_iter();
        let (index, mut found): (String, Vec<String>) = match of {
            Partners::UsersOf(net) => (
                format!("idx-net:{net}"),
                pairs.filter(|(n, _)| n == net).map(|(_, u)| u).collect(),
            ),
            Partners::NetsOf(user) => (
                format!("idx-user:{user}"),
                pairs.filter(|(_, u)| u == user).map(|(n, _)| n).collect(),
            ),
        };
        if let Some(r) = self.redis() {
            found.extend(r.members(&index).await.unwrap_or_default());
        }
        found.sort();
        found.dedup();
        found
    }
}

/// One counter as `throttle show` reports it.
fn counted(n: u32, limit: u32) -> String {
    if limit == 0 {
        format!("{n} (delays only)")
    } else {
        format!("{n} of {limit}")
    }
}

impl Throttle {
    /// Whether `user` logged in from `ip`'s network within `known_for`.
    pub async fn known(&self, ip: Option<IpAddr>, user: &[u8]) -> bool {
        match self.keys(ip, user) {
            Some(k) => self.is_known(&k).await,
            None => false,
        }
    }

    /// What the throttle holds about `ip` and `user` (either may be
    /// missing), and what the next login from there would meet and why:
    /// the text of `nginx-auth-fcgi throttle show`.
    pub async fn inspect(&self, ip: Option<IpAddr>, user: Option<&[u8]>) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let Some(k) = self.keys(ip, user.unwrap_or_default()) else {
            let _ = writeln!(
                out,
                "client {}: in trusted_networks, never counted, delayed or blocked",
                ip.map_or("-".into(), |i| i.to_string())
            );
            return out;
        };
        let at = self.moment();
        let (now, bucket) = (at.now, at.bucket);
        let weigh = |c| at.weigh(c);
        let users_ok = self.users_ok(&k, &at).await;
        let threshold = self.policy.ip_threshold(users_ok);
        let _ = writeln!(
            out,
            "window {} s; block {} s",
            self.policy.window.as_secs(),
            self.policy.block_time.as_secs()
        );
        let mut blocked = None;
        if let Some(net) = &k.net {
            let n = weigh(self.peek(k.ip.as_deref().unwrap_or_default(), bucket).await);
            let _ = writeln!(
                out,
                "network {net}: {} failures; {users_ok} users logged in from it \
                 (threshold {} + {} x log2(1 + {users_ok}) = {threshold}, at most {})",
                counted(n, threshold),
                self.policy.block_ip,
                self.policy.success_bonus,
                self.policy.block_ip_max.max(self.policy.block_ip)
            );
        }
        let mut blocks = Self::block_keys(&k);
        if user.is_none() {
            blocks.retain(|(scope, _)| *scope == Scope::Ip);
        }
        let names: Vec<&str> = blocks.iter().map(|(_, n)| n.as_str()).collect();
        let mut untils = self.local.get_blocks(&names);
        if let Some(r) = self.redis() {
            if let Ok(remote) = r.get_blocks(&names).await {
                untils = untils
                    .into_iter()
                    .zip(remote)
                    .map(|(l, r)| l.max(r))
                    .collect();
            }
        }
        if user.is_some() {
            let known = self.is_known(&k).await;
            if let Some(iu) = &k.ip_user {
                let n = weigh(self.peek(iu, bucket).await);
                let _ = writeln!(
                    out,
                    "user {} from there: {} failures; network known for the user: {}",
                    k.user_shown,
                    counted(n, self.policy.block_ip_user),
                    if known {
                        "yes (failures elsewhere do not delay it here)"
                    } else {
                        "no"
                    }
                );
            }
            let n = weigh(self.peek(&k.user, bucket).await);
            let _ = writeln!(
                out,
                "user {} from everywhere: {n} failures (delays only, never blocks)",
                k.user_shown
            );
        }
        for ((scope, _), until) in blocks.iter().zip(untils) {
            let left = until.filter(|u| *u > now).map(|u| (u - now).div_ceil(1000));
            let _ = writeln!(
                out,
                "block of {}: {}",
                Self::describe(&k, *scope),
                left.map_or("none".to_owned(), |s| format!("{s} s left"))
            );
            if blocked.is_none() {
                blocked = left.map(|s| (*scope, s));
            }
        }
        let _ = match blocked {
            Some((scope, left)) => writeln!(
                out,
                "next login: refused without asking the passdb (block of {}, {left} s left)",
                Self::describe(&k, scope)
            ),
            None => writeln!(
                out,
                "next login: allowed; a wrong password counts toward the limits above"
            ),
        };
        out
    }

    /// Lifts blocks and forgets the counts behind them: `ip` and `user` for
    /// that pair, `ip` alone for the network and every pair on it, `user`
    /// alone for that user from every network. Returns what was lifted.
    pub async fn unblock(&self, ip: Option<IpAddr>, user: Option<&[u8]>) -> Vec<String> {
        let Some(k) = self.keys(ip, user.unwrap_or_default()) else {
            return Vec::new();
        };
        // (block key, counter key, description)
        let mut targets: Vec<(String, String, String)> = Vec::new();
        let pair = |net: &str, name: &str| {
            let iu = format!("ipu:{net}:{name}");
            (
                format!("block:{iu}"),
                iu,
                format!("ip {net} user {}", quoted(name)),
            )
        };
        match (&k.net, user) {
            (Some(_), Some(_)) => {
                let iu = k.ip_user.clone().unwrap_or_default();
                targets.push((format!("block:{iu}"), iu, Self::describe(&k, Scope::IpUser)));
            }
            (Some(net), None) => {
                let ipk = k.ip.clone().unwrap_or_default();
                targets.push((format!("block:{ipk}"), ipk, Self::describe(&k, Scope::Ip)));
                let users = self.partners(Partners::UsersOf(net)).await;
                targets.extend(users.iter().map(|name| pair(net, name)));
            }
            (None, _) => {
                let name = &k.name;
                let nets = self.partners(Partners::NetsOf(name)).await;
                targets.extend(nets.iter().map(|net| pair(net, name)));
            }
        }
        let Moment { now, bucket, .. } = self.moment();
        let mut lifted = Vec::new();
        for (block, counter, shown) in targets {
            let mut was = self.local.lift(&block, now);
            self.local.reset(&counter);
            if let Some(r) = self.redis() {
                match r.lift(&block).await {
                    Ok(shared) => was |= shared,
                    Err(e) => self.redis_failed(&e),
                }
                if let Err(e) = r.reset(&counter, bucket).await {
                    self.redis_failed(&e);
                }
            }
            if was {
                log::warn!("throttle: unblocked {shown} by the admin");
                lifted.push(shown);
            }
        }
        lifted
    }
}

/// The sliding window at one instant.
struct Moment {
    now: u64,
    window_ms: u64,
    bucket: u64,
    /// Share of the previous window still inside the sliding one.
    prev_weight: f64,
}

impl Moment {
    /// A counter's (current, previous window) as one sliding count.
    fn weigh(&self, (cur, prev): (u32, u32)) -> u32 {
        cur + (prev as f64 * self.prev_weight) as u32
    }
}

/// The short keyed tag of a secret kept for de-duplication: 32 bits of
/// HMAC-SHA256, too short to test guesses against offline with any
/// confidence, long enough that two wrong passwords of one user rarely share it.
fn tag(key: &[u8; 32], secret: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(secret);
    hex::encode(&mac.finalize().into_bytes()[..4])
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
    /// Blocks Redis did not take (set while it was away, or without it).
    unshared: std::collections::HashSet<String>,
    /// Marks (wrong passwords seen, users who logged in, known networks)
    /// and when they expire.
    marks: HashMap<String, u64>,
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
            let MemoryState {
                blocks, unshared, ..
            } = &mut *s;
            unshared.retain(|k| blocks.contains_key(k));
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

    fn peek(&self, key: &str, bucket: u64) -> (u32, u32) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.windows.get(key) {
            Some(w) if w.bucket == bucket => (w.cur, w.prev),
            Some(w) if w.bucket + 1 == bucket => (0, w.cur),
            _ => (0, 0),
        }
    }

    /// Sets a mark until `until`; true when it was not set (or expired).
    /// With `only_new` an existing mark is left as it is.
    fn mark(&self, key: &str, until: u64, now: u64, only_new: bool) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.marks.len() >= MEMORY_SWEEP_AT {
            s.marks.retain(|_, u| *u > now);
            if s.marks.len() >= MEMORY_SWEEP_AT {
                // Forget the half closest to expiry: for a wrong-password
                // mark that means counting it again (never fewer counts),
                // for a known network a delay again.
                let mut ends: Vec<u64> = s.marks.values().copied().collect();
                let half = ends.len() / 2;
                ends.select_nth_unstable(half);
                let cut = ends[half];
                s.marks.retain(|_, u| *u > cut);
                log::warn!("throttle: too many marks; forgot the half closest to expiry");
            }
        }
        let existed = s.marks.get(key).is_some_and(|u| *u > now);
        if !(existed && only_new) {
            s.marks.insert(key.to_owned(), until);
        }
        !existed
    }

    fn marked(&self, key: &str, now: u64) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.marks.get(key).is_some_and(|u| *u > now)
    }

    fn get_blocks(&self, keys: &[&str]) -> Vec<Option<u64>> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter().map(|k| s.blocks.get(*k).copied()).collect()
    }

    fn get_unshared_blocks(&self, keys: &[&str]) -> Vec<Option<u64>> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .map(|k| {
                s.blocks
                    .get(*k)
                    .copied()
                    .filter(|_| s.unshared.contains(*k))
            })
            .collect()
    }

    /// Records whether Redis took the block `key`.
    fn set_shared(&self, key: &str, shared: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if shared {
            s.unshared.remove(key);
        } else if s.blocks.contains_key(key) {
            s.unshared.insert(key.to_owned());
        }
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

    /// The (network, user) of every pair block stored.
    fn pair_blocks(&self) -> Vec<(String, String)> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.blocks
            .keys()
            .filter_map(|k| k.strip_prefix("block:ipu:"))
            .filter_map(|rest| {
                // `net:user`; an IPv6 net holds colons and ends in /len.
                let split = match rest.find('/') {
                    Some(slash) => slash + rest[slash..].find(':')?,
                    None => rest.find(':')?,
                };
                Some((rest[..split].to_owned(), rest[split + 1..].to_owned()))
            })
            .collect()
    }

    /// Removes a block; true when one was in force.
    fn lift(&self, key: &str, now: u64) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.unshared.remove(key);
        s.blocks.remove(key).is_some_and(|u| u > now)
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
    /// The instances' shared key for wrong-password tags, once read.
    dedup_key: tokio::sync::OnceCell<[u8; 32]>,
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
            dedup_key: tokio::sync::OnceCell::new(),
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

    /// The key all instances use for wrong-password tags: the first
    /// instance stores a random one (`SET NX`), every instance reads it.
    async fn dedup_key(&self) -> Result<[u8; 32], String> {
        self.dedup_key
            .get_or_try_init(|| async {
                let name = format!("{REDIS_PREFIX}dedup-key");
                let mut fresh = [0u8; 32];
                rand::rng().fill_bytes(&mut fresh);
                let mut conn = self.conn.clone();
                let mut set = redis::cmd("SET");
                set.arg(&name).arg(hex::encode(fresh)).arg("NX");
                let _: Option<String> = self.run(set.query_async(&mut conn)).await?;
                let mut get = redis::cmd("GET");
                get.arg(&name);
                let stored: Option<String> = self.run(get.query_async(&mut conn)).await?;
                let bytes = stored
                    .and_then(|h| hex::decode(h).ok())
                    .filter(|b| b.len() == 32)
                    .ok_or("the shared dedup key in Redis is malformed")?;
                let mut key = [0u8; 32];
                key.copy_from_slice(&bytes);
                Ok(key)
            })
            .await
            .copied()
    }

    async fn peek(&self, key: &str, bucket: u64) -> Result<(u32, u32), String> {
        let base = Self::key(key);
        let mut cmd = redis::cmd("MGET");
        cmd.arg(format!("{base}:{bucket}"))
            .arg(format!("{base}:{}", bucket.wrapping_sub(1)));
        let mut conn = self.conn.clone();
        let v: Vec<Option<u32>> = self.run(cmd.query_async(&mut conn)).await?;
        Ok((
            v.first().copied().flatten().unwrap_or(0),
            v.get(1).copied().flatten().unwrap_or(0),
        ))
    }

    async fn mark(&self, key: &str, ttl: Duration, only_new: bool) -> Result<bool, String> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(Self::key(key))
            .arg(1)
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        if only_new {
            cmd.arg("NX");
            let r: Option<String> = self.run(cmd.query_async(&mut conn)).await?;
            return Ok(r.is_some());
        }
        // Refresh; report whether it existed before.
        cmd.arg("GET");
        let old: Option<String> = self.run(cmd.query_async(&mut conn)).await?;
        Ok(old.is_none())
    }

    /// Adds `member` to the index set `set` (plain, unhashed members).
    async fn index(&self, set: &str, member: &str, ttl: Duration) -> Result<(), String> {
        let mut pipe = redis::pipe();
        let key = Self::key(set);
        pipe.sadd(&key, member)
            .ignore()
            .pexpire(&key, ttl.as_millis() as i64)
            .ignore();
        let mut conn = self.conn.clone();
        self.run(pipe.query_async::<()>(&mut conn)).await
    }

    async fn members(&self, set: &str) -> Result<Vec<String>, String> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(Self::key(set));
        self.run(cmd.query_async(&mut conn)).await
    }

    /// Removes a block; true when one was stored.
    async fn lift(&self, key: &str) -> Result<bool, String> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(Self::key(key));
        let n: u32 = self.run(cmd.query_async(&mut conn)).await?;
        Ok(n > 0)
    }

    async fn marked(&self, key: &str) -> Result<bool, String> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(Self::key(key));
        let n: u32 = self.run(cmd.query_async(&mut conn)).await?;
        Ok(n > 0)
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
