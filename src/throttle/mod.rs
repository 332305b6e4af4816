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
//!
//! # Layout
//! This module holds [`Throttle`] and the request-path decisions (`check`,
//! `record_failure`, `record_success`); `policy` the settings, answers and
//! clock; `keys` the names counters and blocks are stored under; `admin`
//! `inspect` and `unblock`; `memory` and `redis` the two stores, the latter
//! on top of [`crate::shared_state`].

mod admin;
mod keys;
mod memory;
mod policy;
#[cfg(feature = "redis")]
mod redis;
#[cfg(not(feature = "redis"))]
#[path = "no_redis.rs"]
mod redis;

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use crate::metrics::METRICS;
use crate::shared_state::{SharedStateError, Target};
use keys::{tag, Keys, Moment};
use memory::MemoryStore;
use redis::RedisStore;

pub use crate::net::Cidr;
pub use policy::{loopback, Check, Clock, Scope, ThrottlePolicy};

/// The throttle: policy, clock and state.
pub struct Throttle {
    policy: ThrottlePolicy,
    clock: Clock,
    local: MemoryStore,
    redis: Option<RedisStore>,
    /// This instance's key for the tags of wrong passwords (the shared one
    /// lives in Redis).
    dedup_key: [u8; 32],
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("policy", &self.policy)
            .field("redis", &self.redis.as_ref().map(|r| r.state.shown()))
            .finish_non_exhaustive()
    }
}

impl Throttle {
    /// A throttle keeping its state in this process.
    pub fn in_memory(policy: ThrottlePolicy, clock: Clock) -> Self {
        Throttle {
            policy,
            clock,
            local: MemoryStore::default(),
            redis: None,
            dedup_key: rand::random(),
        }
    }

    /// A throttle sharing its state through Redis at `target` (see
    /// [`crate::shared_state`] for the URLs). The connection is made
    /// lazily, so this works without Redis running; it must be called
    /// inside a tokio runtime.
    pub fn with_redis(
        policy: ThrottlePolicy,
        clock: Clock,
        target: &Target,
    ) -> Result<Self, SharedStateError> {
        let mut t = Throttle::in_memory(policy, clock);
        t.redis = Some(RedisStore::open(target)?);
        Ok(t)
    }

    /// The policy in force.
    pub fn policy(&self) -> &ThrottlePolicy {
        &self.policy
    }

    /// Redis, unless it failed a moment ago.
    fn redis(&self) -> Option<&RedisStore> {
        let r = self.redis.as_ref()?;
        r.state.usable(self.clock.now_ms()).then_some(r)
    }

    /// Redis failed: it is left alone for a while (logged once).
    fn redis_failed(&self, r: &RedisStore, e: &SharedStateError) {
        r.state.failed(self.clock.now_ms(), e);
    }

    /// `op` on Redis unless it failed a moment ago, its outcome recorded;
    /// `None`: use the local state.
    async fn shared<'a, T, F>(&'a self, op: impl FnOnce(&'a RedisStore) -> F) -> Option<T>
    where
        F: Future<Output = Result<T, SharedStateError>> + 'a,
    {
        let r = self.redis.as_ref()?;
        r.state.attempt(|| self.clock.now_ms(), op(r)).await
    }

    /// Whether a login from `ip` as `user` may go to the passdb at all.
    pub async fn check(&self, ip: Option<IpAddr>, user: &[u8]) -> Check {
        let Some(k) = self.keys(ip, user) else {
            return Check::Exempt;
        };
        let blocks = k.blocks();
        if blocks.is_empty() {
            return Check::Allowed;
        }
        let now = self.clock.now_ms();
        let names: Vec<&str> = blocks.iter().map(|(_, n)| n.as_str()).collect();
        let found = self.shared(|r| r.get_blocks(&names)).await;
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
                log::warn!("throttle: unblocked {}", k.describe(*scope));
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
                    k.describe(Scope::IpUser)
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
                METRICS.throttle_block(scope);
                log::warn!(
                    "throttle: blocked {} for {} s after {n} failures in {} s (threshold {limit}{})",
                    k.describe(scope),
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
        self.shared(|r| r.reset(iu, at.bucket)).await;
        if self.mark(ok_user, None, self.policy.window, true).await {
            self.incr(&[ok.as_str()], &at).await;
        }
        if !self.policy.known_for.is_zero() {
            self.mark(known, None, self.policy.known_for, false).await;
        }
    }

    /// Whether `user` logged in from `ip`'s network within `known_for`.
    pub async fn known(&self, ip: Option<IpAddr>, user: &[u8]) -> bool {
        match self.keys(ip, user) {
            Some(k) => self.is_known(&k).await,
            None => false,
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
        let ttl = Duration::from_millis(at.window_ms * 2);
        let shared = self.shared(|r| r.incr(keys, at.bucket, ttl)).await;
        shared.unwrap_or(local)
    }

    /// A counter's current and previous window, without counting.
    async fn peek(&self, key: &str, bucket: u64) -> (u32, u32) {
        match self.shared(|r| r.peek(key, bucket)).await {
            Some(c) => c,
            None => self.local.peek(key, bucket),
        }
    }

    /// Sets a mark for `ttl` (in Redis under `shared`, else the same name);
    /// with `only_new`, true only when it was not set yet.
    async fn mark(&self, local: &str, shared: Option<&str>, ttl: Duration, only_new: bool) -> bool {
        let now = self.clock.now_ms();
        let new = self
            .local
            .mark(local, now + ttl.as_millis() as u64, now, only_new);
        let name = shared.unwrap_or(local);
        let shared_new = self.shared(|r| r.mark(name, ttl, only_new)).await;
        shared_new.unwrap_or(new)
    }

    /// Whether a mark is set.
    async fn marked(&self, key: &str) -> bool {
        let shared = self.shared(|r| r.marked(key)).await;
        shared.unwrap_or(false) || self.local.marked(key, self.clock.now_ms())
    }

    /// Sets the block of `scope` for `k` until `until`, in both stores; true
    /// when no block was in force before (so one instance logs it).
    async fn set_block(&self, k: &Keys, scope: Scope, until: u64, now: u64) -> bool {
        let name = k.block_of(scope);
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
                    self.redis_failed(r, &e);
                }
            }
            match r.set_block(&name, until, block_ttl).await {
                Ok(shared_new) => {
                    r.state.succeeded();
                    self.local.set_shared(&name, true);
                    return shared_new;
                }
                Err(e) => self.redis_failed(r, &e),
            }
        }
        self.local.set_shared(&name, false);
        new
    }
}
