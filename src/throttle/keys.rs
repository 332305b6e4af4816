//! What the throttle counts under which name: the keys of one request (the
//! same names in memory and, hashed, in Redis), the sliding window at one
//! instant, and the keyed tag a wrong password is remembered by.

use std::net::IpAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{Scope, Throttle};
use crate::audit::quoted;
use crate::net::{canonical, Cidr};

/// The counter keys of one request.
pub(super) struct Keys {
    /// Masked client network, for logs.
    pub(super) net: Option<String>,
    /// Quoted user name, for logs.
    pub(super) user_shown: String,
    /// The user name as counted (lower case).
    pub(super) name: String,
    /// Failures from the network (all users).
    pub(super) ip: Option<String>,
    /// Failures of the user from the network.
    pub(super) ip_user: Option<String>,
    /// Failures of the user from everywhere.
    pub(super) user: String,
    /// Distinct users who logged in from the network (window counter).
    pub(super) ok: Option<String>,
    /// Set while this user counts toward `ok` in the window.
    pub(super) ok_user: Option<String>,
    /// Set while the network is known for the user.
    pub(super) known: Option<String>,
    /// Prefix of the marks of wrong passwords already counted.
    pub(super) dup: Option<String>,
}

/// The counter of `name`'s failures from the network `net`.
pub(super) fn pair(net: &str, name: &str) -> String {
    format!("ipu:{net}:{name}")
}

/// The block that the counter `counter` sets.
pub(super) fn block(counter: &str) -> String {
    format!("block:{counter}")
}

impl Keys {
    /// The blocks that can stop this request, with their scope.
    pub(super) fn blocks(&self) -> Vec<(Scope, String)> {
        let mut v = Vec::new();
        if let Some(ip) = &self.ip {
            v.push((Scope::Ip, block(ip)));
        }
        if let Some(iu) = &self.ip_user {
            v.push((Scope::IpUser, block(iu)));
        }
        v
    }

    /// The block of `scope` (empty network part without a client address).
    pub(super) fn block_of(&self, scope: Scope) -> String {
        let counter = match scope {
            Scope::Ip => &self.ip,
            Scope::IpUser => &self.ip_user,
        };
        block(counter.as_deref().unwrap_or_default())
    }

    /// `ip NET` or `ip NET user "NAME"`, for logs and `throttle show`.
    pub(super) fn describe(&self, scope: Scope) -> String {
        let net = self.net.as_deref().unwrap_or("-");
        match scope {
            Scope::Ip => format!("ip {net}"),
            Scope::IpUser => format!("ip {net} user {}", self.user_shown),
        }
    }
}

impl Throttle {
    /// The keys of a login from `ip` as `user`; `None` for a trusted client.
    pub(super) fn keys(&self, ip: Option<IpAddr>, user: &[u8]) -> Option<Keys> {
        let ip = ip.map(canonical);
        if ip.is_some_and(|ip| self.policy.trusted.iter().any(|c| c.contains(ip))) {
            return None;
        }
        // Case variants of one name are one user to a guesser.
        let name = String::from_utf8_lossy(user).to_lowercase();
        let net = ip.map(|ip| match ip {
            IpAddr::V4(v4) => v4.to_string(),
            v6 => Cidr::around(v6, self.policy.ipv6_prefix).to_string(),
        });
        let on_net = |prefix: &str| net.as_ref().map(|n| format!("{prefix}:{n}:{name}"));
        Some(Keys {
            ip: net.as_ref().map(|n| format!("ip:{n}")),
            ip_user: net.as_ref().map(|n| pair(n, &name)),
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

    /// The sliding window now.
    pub(super) fn moment(&self) -> Moment {
        let now = self.clock.now_ms();
        let window_ms = (self.policy.window.as_millis() as u64).max(1);
        Moment {
            now,
            window_ms,
            bucket: now / window_ms,
            prev_weight: 1.0 - (now % window_ms) as f64 / window_ms as f64,
        }
    }
}

/// The sliding window at one instant.
pub(super) struct Moment {
    pub(super) now: u64,
    pub(super) window_ms: u64,
    /// The current fixed window's number (`now / window_ms`).
    pub(super) bucket: u64,
    /// Share of the previous window still inside the sliding one.
    prev_weight: f64,
}

impl Moment {
    /// A counter's (current, previous window) as one sliding count.
    pub(super) fn weigh(&self, (cur, prev): (u32, u32)) -> u32 {
        cur + (prev as f64 * self.prev_weight) as u32
    }
}

/// The short keyed tag of a secret kept for de-duplication: 32 bits of
/// HMAC-SHA256, too short to test guesses against offline with any
/// confidence, long enough that two wrong passwords of one user rarely share it.
pub(super) fn tag(key: &[u8; 32], secret: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(secret);
    hex::encode(&mac.finalize().into_bytes()[..4])
}

#[cfg(test)]
mod tests {
    use super::super::{Clock, ThrottlePolicy};
    use super::*;

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
