//! One pool of interchangeable backends and the rendezvous (highest random
//! weight, HRW) order in which a user tries them.
//!
//! Each member gets a score per user, `SHA-256(member ‖ 0 ‖ user)` cut to 64
//! bits; the user goes to the highest-scoring member that is up. Why HRW:
//! it needs no ring or virtual nodes, the order of the configured list does
//! not matter, and when a member goes down (or is removed) only the users
//! that were on it move — everyone else keeps their server and its caches.
//! Adding a member moves only the users that now score highest on it
//! (about 1/n of them).
//!
//! The hash is fixed (no per-process key, unlike `std`'s `RandomState`) and
//! its output is defined by SHA-256 rather than by a Rust version, so every
//! instance, old or new, sends a user to the same server.

use std::net::SocketAddr;

use sha2::{Digest as _, Sha256};

/// A non-empty list of distinct backends for one protocol (and domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    members: Vec<SocketAddr>,
}

impl Pool {
    /// A pool of `members` (non-empty, without duplicates: the caller checks).
    pub(super) fn new(members: Vec<SocketAddr>) -> Self {
        Pool { members }
    }

    /// The members, in configuration order.
    pub fn members(&self) -> &[SocketAddr] {
        &self.members
    }

    /// Adds a member (the caller checks it is new).
    pub(super) fn push(&mut self, a: SocketAddr) {
        self.members.push(a);
    }

    /// The members in the order `user` tries them: best first.
    pub fn ranked(&self, user: &str) -> Vec<SocketAddr> {
        let mut scored: Vec<(u64, SocketAddr)> =
            self.members.iter().map(|m| (score(*m, user), *m)).collect();
        // Ties (astronomically unlikely) are broken by address, so the order
        // is still the same everywhere.
        scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, m)| m).collect()
    }
}

/// The HRW weight of `member` for `user`. The member is hashed in its
/// canonical text form (`10.0.0.1:143`, `[2001:db8::5]:143`), so the same
/// address written differently in two configurations scores the same.
pub fn score(member: SocketAddr, user: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(member.to_string().as_bytes());
    h.update([0u8]);
    h.update(user.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("SHA-256 has 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn pool(n: usize) -> Pool {
        Pool::new(
            (1..=n)
                .map(|i| format!("10.0.0.{i}:143").parse().unwrap())
                .collect(),
        )
    }

    fn users() -> impl Iterator<Item = String> {
        (0..10_000).map(|i| format!("user{i}@example.org"))
    }

    #[test]
    fn stable_across_processes_and_list_order() {
        // Pinned (values from Python's hashlib, an independent SHA-256): a
        // change here would send users of running installations elsewhere
        // after an upgrade, and make old and new instances disagree.
        assert_eq!(
            score("10.0.0.1:143".parse().unwrap(), "alice@example.org"),
            0xa3a4_6c3a_daf3_d2c4
        );
        assert_eq!(
            score("[2001:db8::5]:143".parse().unwrap(), "bob@example.org"),
            0x55a8_f063_727b_132f
        );
        let p = pool(3);
        let first = |p: &Pool, u: &str| p.ranked(u)[0];
        let reversed = Pool::new(p.members().iter().rev().copied().collect());
        for u in users().take(500) {
            assert_eq!(first(&p, &u), first(&reversed, &u), "{u}");
        }
    }

    #[test]
    fn spreads_users_evenly() {
        let p = pool(4);
        let mut count: HashMap<SocketAddr, usize> = HashMap::new();
        for u in users() {
            *count.entry(p.ranked(&u)[0]).or_default() += 1;
        }
        assert_eq!(count.len(), 4);
        for (m, n) in &count {
            // 2,500 expected each; ±10 % is > 6 standard deviations.
            assert!((2250..=2750).contains(n), "{m}: {n} of 10000");
        }
    }

    #[test]
    fn a_member_down_moves_only_its_users() {
        let p = pool(4);
        let gone: SocketAddr = "10.0.0.3:143".parse().unwrap();
        let mut moved = 0;
        for u in users() {
            let ranked = p.ranked(&u);
            // "Down" = skipped: the next in the user's own order.
            let with_gone_skipped = *ranked.iter().find(|m| **m != gone).unwrap();
            let without = Pool::new(p.members().iter().copied().filter(|m| *m != gone).collect());
            assert_eq!(with_gone_skipped, without.ranked(&u)[0], "{u}");
            if ranked[0] == gone {
                moved += 1;
            } else {
                assert_eq!(with_gone_skipped, ranked[0], "{u} moved needlessly");
            }
        }
        assert!((2250..=2750).contains(&moved), "{moved}");
    }

    #[test]
    fn adding_a_member_moves_about_a_fifth_to_it() {
        let four = pool(4);
        let five = pool(5);
        let new: SocketAddr = "10.0.0.5:143".parse().unwrap();
        let mut moved = 0;
        for u in users() {
            let (before, after) = (four.ranked(&u)[0], five.ranked(&u)[0]);
            if before != after {
                assert_eq!(after, new, "{u} moved to an old member");
                moved += 1;
            }
        }
        // 2,000 expected.
        assert!((1800..=2200).contains(&moved), "{moved}");
    }

    #[test]
    fn ipv6_members_hash_in_canonical_form() {
        let a: SocketAddr = "[2001:db8:0:0::5]:143".parse().unwrap();
        let b: SocketAddr = "[2001:db8::5]:143".parse().unwrap();
        assert_eq!(score(a, "u"), score(b, "u"));
    }
}
