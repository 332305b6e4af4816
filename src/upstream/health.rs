//! Which backends are up: a background task per distinct address connects
//! every `interval` (TCP only, timeout ≤ 1 s) and records the result; the
//! request path only reads the recorded state and never connects itself.
//!
//! A backend nobody has checked yet counts as up (nginx would find out
//! anyway), so a fresh start never refuses logins. Each change of a
//! backend's state is logged once.
//!
//! # Shared through Redis
//! With `state = "redis://…"` each instance also publishes what it saw, and
//! a backend is down for everyone while *any* instance saw it down within
//! the last few intervals: one sorted set per address
//! (`nginx-auth-fcgi:upstream-down:ADDR`) holds, per instance that found it
//! down, the time until which that finding holds. An instance that sees it
//! up again removes its own entry, so recovery is not delayed by a TTL;
//! entries of instances that died expire. Instances thereby agree, and a
//! user with sessions through two instances lands on one server.
//! Redis is only spoken to from the check tasks, through
//! [`crate::shared_state`], and when it fails the local findings are used
//! alone (logged once when it fails and once when it is back): Redis
//! trouble never fails a login.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[cfg(feature = "redis")]
use crate::shared_state;
use crate::shared_state::{Fallback, SharedState, SharedStateError, Target};
use crate::sync::{read, write};

/// Longest a check's TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// What the checks do when Redis fails: go on with this instance's own
/// findings, and try Redis again at the next check.
const FALLBACK: Fallback = Fallback {
    lost: "upstream health: Redis failed",
    instead: "using local checks only",
    back: "upstream health: Redis is back; sharing findings again",
    back_level: log::Level::Info,
    retry_after: Duration::ZERO,
};

/// What is known about one backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Status {
    /// This instance's last check: `None` before the first.
    local_up: Option<bool>,
    /// Another instance (via Redis) found it down recently.
    shared_down: bool,
}

impl Status {
    fn up(self) -> bool {
        self.local_up != Some(false) && !self.shared_down
    }
}

/// Up/down state of backends, shared by the check tasks and the request
/// path (clones share it).
#[derive(Debug, Clone, Default)]
pub struct Health {
    state: Arc<RwLock<HashMap<SocketAddr, Status>>>,
}

impl Health {
    /// True unless a check found `addr` down.
    pub fn is_up(&self, addr: SocketAddr) -> bool {
        read(&self.state).get(&addr).is_none_or(|s| s.up())
    }

    /// Every address with a recorded state and whether it is up.
    pub fn snapshot(&self) -> Vec<(SocketAddr, bool)> {
        let mut v: Vec<_> = read(&self.state)
            .iter()
            .map(|(a, s)| (*a, s.up()))
            .collect();
        v.sort_unstable();
        v
    }

    /// Takes `old`'s findings for the addresses both know and this one has
    /// not checked yet (a reload keeps dead backends dead instead of trying
    /// them until the first check; a finding of our own is newer).
    pub fn inherit(&self, old: &Health, addrs: &[SocketAddr]) {
        let old = read(&old.state).clone();
        let mut state = write(&self.state);
        for a in addrs {
            if let Some(s) = old.get(a) {
                state.entry(*a).or_insert(*s);
            }
        }
    }

    /// Records a check; logs the change when the backend's state changed.
    fn record(&self, addr: SocketAddr, local_up: bool, shared_down: bool, why: &str) {
        let mut state = write(&self.state);
        let s = state.entry(addr).or_default();
        let was = *s;
        *s = Status {
            local_up: Some(local_up),
            shared_down,
        };
        let now = *s;
        drop(state);
        match (was.up(), now.up()) {
            (true, false) if !local_up => log::warn!("upstream {addr} is down: {why}"),
            (true, false) => {
                log::warn!("upstream {addr} is down: another instance cannot reach it")
            }
            (false, true) => log::info!("upstream {addr} is up again"),
            _ => {}
        }
    }
}

/// The running check tasks; dropping this stops them (a reloaded service
/// drops the old ones with the old service).
#[derive(Debug, Default)]
pub struct Checks {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Checks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Checks {
    /// Starts one task per address, each checking at once and then every
    /// `interval`. Must run inside a tokio runtime. `redis` is the `state`,
    /// if any; one the client refuses is logged and Redis is not used.
    pub fn spawn(
        health: &Health,
        addrs: &[SocketAddr],
        interval: Duration,
        redis: Option<&Target>,
    ) -> Checks {
        if interval.is_zero() || addrs.is_empty() {
            return Checks::default();
        }
        let shared = match redis.map(SharedHealth::open) {
            Some(Ok(s)) => Some(Arc::new(s)),
            Some(Err(e)) => {
                log::error!("upstream health not shared: {e}");
                None
            }
            None => None,
        };
        let timeout = CONNECT_TIMEOUT.min(interval);
        let tasks = addrs
            .iter()
            .map(|&addr| {
                let health = health.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let (up, why) = probe(addr, timeout).await;
                        // Redis unavailable: this instance's own finding alone.
                        let shared_down = match &shared {
                            Some(s) => s.exchange(addr, up, interval).await.unwrap_or(false),
                            None => false,
                        };
                        health.record(addr, up, shared_down, &why);
                    }
                })
            })
            .collect();
        Checks { tasks }
    }
}

/// One TCP connect; the connection is closed at once.
async fn probe(addr: SocketAddr, timeout: Duration) -> (bool, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (true, String::new()),
        Ok(Err(e)) => (false, format!("connect: {e}")),
        Err(_) => (
            false,
            format!("no connect within {} ms", timeout.as_millis()),
        ),
    }
}

/// Health findings exchanged through Redis (never made without the `redis`
/// feature: [`SharedState::open`] refuses, and the checks log that).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
struct SharedHealth {
    state: SharedState,
    /// Who we are in the sorted sets.
    instance: String,
}

impl SharedHealth {
    fn open(target: &Target) -> Result<Self, SharedStateError> {
        let state = SharedState::open(target, FALLBACK)?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Ok(SharedHealth {
            state,
            instance: format!(
                "{}:{}:{:016x}",
                host.trim(),
                std::process::id(),
                rand::random::<u64>()
            ),
        })
    }

    /// Publishes this instance's finding for `addr` and returns whether any
    /// instance currently holds it down (`None`: Redis unavailable).
    #[cfg(feature = "redis")]
    async fn exchange(&self, addr: SocketAddr, up: bool, interval: Duration) -> Option<bool> {
        let key = shared_state::key(&format!("upstream-down:{addr}"));
        let now = shared_state::unix_ms();
        // A finding holds for three intervals: one missed check of a slow
        // instance must not flap the state.
        let hold = (interval * 3 + CONNECT_TIMEOUT).as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.atomic();
        if up {
            pipe.zrem(&key, &self.instance).ignore();
        } else {
            pipe.zadd(&key, &self.instance, now + hold)
                .ignore()
                .pexpire(&key, hold as i64)
                .ignore();
        }
        pipe.zrembyscore(&key, "-inf", now).ignore().zcard(&key);
        let down: (u64,) = self
            .state
            .attempt(|| now, self.state.pipeline(&pipe))
            .await?;
        Some(down.0 > 0)
    }

    #[cfg(not(feature = "redis"))]
    async fn exchange(&self, _: SocketAddr, _: bool, _: Duration) -> Option<bool> {
        self.state.unreachable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_is_up_and_transitions_are_recorded() {
        let h = Health::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(h.is_up(a));
        h.record(a, false, false, "refused");
        assert!(!h.is_up(a));
        h.record(a, true, false, "");
        assert!(h.is_up(a));
        h.record(a, true, true, "");
        assert!(!h.is_up(a), "down elsewhere is down here");
        h.record(a, true, false, "");
        assert!(h.is_up(a));
        assert_eq!(h.snapshot(), vec![(a, true)]);
        let fresh = Health::default();
        h.record(a, false, false, "refused");
        fresh.inherit(&h, &[a]);
        assert!(!fresh.is_up(a));
    }
}
