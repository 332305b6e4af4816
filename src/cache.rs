//! Verification cache: remembers, for a while, that a (user, password) pair
//! matched a stored hash, so clients that reconnect all day do not cost a
//! bcrypt, Argon2 or SHA512-CRYPT computation each time.
//!
//! The key is HMAC-SHA256, under a random key made at start-up, of the passdb
//! name, the user name, the stored hash's [fingerprint] and the password(s).
//! Neither the password nor anything that could test a guess offline is kept:
//! without the process's key a cache entry says nothing. Because the stored
//! hash is part of the key, changing a password (or disabling the account,
//! which the lookup before the cache sees) takes effect as soon as that
//! lookup sees it: at once, or, through the credential lookup cache
//! ([`crate::lookup_cache`]), within its TTL for a change made behind the
//! daemon's back. A restart empties the cache and makes a new key.
//!
//! The policy layer ([`crate::authenticator`]) consults it for mail and HTTP
//! alike, before handing a check to the bounded verifier. Only expensive
//! schemes go through the cache; checking a cheap one costs
//! less than the bookkeeping. Negative entries (a wrong password seen
//! before) are optional and off by default: they save CPU against a client
//! that retries one stale password, but the throttle already answers guessing.
//!
//! [fingerprint]: crate::scheme::StoredPassword::fingerprint

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::time::Instant;
use zeroize::Zeroize;

use crate::scheme::StoredPassword;
use crate::secret::Secret;

/// Cache settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// How long a successful verification is remembered.
    pub ttl: Duration,
    /// How long a failed one is remembered (zero: not at all).
    pub negative_ttl: Duration,
    /// Most entries kept; when full, expired entries go, then everything.
    pub max_entries: usize,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::ZERO,
            max_entries: 100_000,
        }
    }
}

/// A derived cache key. Opaque; not to be logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheKey(<redacted>)")
    }
}

/// What the cache knows about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    /// The password matched the stored hash.
    Match,
    /// It did not.
    Mismatch,
}

impl From<Cached> for CacheUse {
    fn from(c: Cached) -> Self {
        match c {
            Cached::Match => CacheUse::Hit,
            Cached::Mismatch => CacheUse::NegativeHit,
        }
    }
}

/// How the cache took part in one password check (the audit line's
/// `cache=`, and the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// A remembered match answered (`hit`).
    Hit,
    /// A remembered mismatch answered: the same wrong password again
    /// (`negative-hit`).
    NegativeHit,
    /// Not known: verified for real, and the outcome stored (`miss`).
    Miss,
    /// The passdb failed and the credential lookup cache answered with a
    /// stale record ([`crate::lookup_cache`]), checked against it (`stale`).
    Stale,
}

impl CacheUse {
    /// The audit line's name.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheUse::Hit => "hit",
            CacheUse::NegativeHit => "negative-hit",
            CacheUse::Miss => "miss",
            CacheUse::Stale => "stale",
        }
    }
}

/// The cache.
pub struct Cache {
    policy: CachePolicy,
    key: [u8; 32],
    entries: Mutex<HashMap<CacheKey, (Instant, Cached)>>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl Cache {
    /// An empty cache with a fresh random key.
    pub fn new(policy: CachePolicy) -> Self {
        Cache {
            policy,
            key: rand::random(),
            entries: Mutex::default(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// The key for checking `passwords` of `user` against `stored` in `passdb`.
    pub fn key(
        &self,
        passdb: &str,
        user: &str,
        stored: &StoredPassword,
        passwords: &[Secret],
    ) -> CacheKey {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes any key length");
        // Length-prefixed fields, so no two inputs run together the same way.
        let mut field = |b: &[u8]| {
            mac.update(&(b.len() as u64).to_be_bytes());
            mac.update(b);
        };
        field(passdb.as_bytes());
        field(user.as_bytes());
        field(&stored.fingerprint());
        for p in passwords {
            field(p.expose());
        }
        CacheKey(mac.finalize().into_bytes().into())
    }

    /// What is remembered about `key`, if it has not expired.
    pub fn get(&self, key: &CacheKey) -> Option<Cached> {
        let mut m = crate::sync::lock(&self.entries);
        match m.get(key) {
            Some((until, c)) if *until > Instant::now() => Some(*c),
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers the outcome of a real verification.
    pub fn put(&self, key: CacheKey, outcome: Cached) {
        let ttl = match outcome {
            Cached::Match => self.policy.ttl,
            Cached::Mismatch => self.policy.negative_ttl,
        };
        if ttl.is_zero() || self.policy.max_entries == 0 {
            return;
        }
        let now = Instant::now();
        let mut m = crate::sync::lock(&self.entries);
        if m.len() >= self.policy.max_entries {
            m.retain(|_, (until, _)| *until > now);
            if m.len() >= self.policy.max_entries {
                m.clear();
            }
        }
        m.insert(key, (now + ttl, outcome));
    }

    /// Forgets everything (on reload).
    pub fn clear(&self) {
        crate::sync::lock(&self.entries).clear();
    }

    /// Entries held (expired ones included until swept).
    pub fn len(&self) -> usize {
        crate::sync::lock(&self.entries).len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::Scheme;

    #[tokio::test(start_paused = true)]
    async fn keyed_by_stored_hash_and_expires() {
        let cache = Cache::new(CachePolicy::default());
        let a = StoredPassword::parse("{PLAIN}one", Scheme::Plain).unwrap();
        let b = StoredPassword::parse("{PLAIN}two", Scheme::Plain).unwrap();
        let pw = [Secret::from("one")];
        let ka = cache.key("db", "u", &a, &pw);
        assert_eq!(ka, cache.key("db", "u", &a, &pw));
        assert_ne!(ka, cache.key("db", "u", &b, &pw), "hash change invalidates");
        assert_ne!(ka, cache.key("db", "v", &a, &pw));
        assert_ne!(ka, cache.key("db", "u", &a, &[Secret::from("two")]));
        let other = Cache::new(CachePolicy::default());
        assert_ne!(ka, other.key("db", "u", &a, &pw), "per-process key");
        cache.put(ka, Cached::Match);
        assert_eq!(cache.get(&ka), Some(Cached::Match));
        // Negative caching is off by default.
        let kb = cache.key("db", "u", &b, &pw);
        cache.put(kb, Cached::Mismatch);
        assert_eq!(cache.get(&kb), None);
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(cache.get(&ka), None);
        assert!(cache.is_empty());
        assert!(!format!("{cache:?} {ka:?}").contains("one"));
    }
}
