//! The throttle's settings ([`ThrottlePolicy`]), its answers ([`Check`],
//! [`Scope`]) and its time ([`Clock`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::net::Cidr;
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
        Some(crate::backoff::doubling(
            self.delay_base,
            failures,
            self.delay_max,
        ))
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

/// The answer of [`Throttle::check`](super::Throttle::check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A trusted client: not counted.
    Exempt,
    /// Go ahead and ask the passdb.
    Allowed,
    /// Refuse without asking the passdb.
    Blocked(Scope),
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
