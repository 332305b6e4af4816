//! Digest nonces: self-validating, signed with the nonce key, and the
//! replay memory (the highest `nc` seen per nonce and client nonce).
//!
//! The key is random per process unless `nonce_key_file` names one
//! ([`super::nonce_key`]); instances sharing it accept each other's nonces.
//! The highest `nc` is always remembered in this process; with `state =
//! "redis://…"` also in Redis ([`super::shared_nc`]), and a count is new
//! only when both say so ([`accepted`]). Without Redis, or while it is
//! unreachable, this process's memory decides alone: an instance never
//! accepts a count it has seen itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore as _;
use sha2::Sha256;

use super::nonce_key::NonceKey;
use super::shared_nc::{SharedCounts, SharedVerdict};
use crate::secret::{ct_eq, Secret};

/// What a nonce check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    /// Ours, for this realm, not expired; `ending`: in the last quarter of
    /// its lifetime, so a success carries a `nextnonce`.
    Fresh {
        /// In the last quarter of its lifetime.
        ending: bool,
    },
    /// Ours, but older than the lifetime: answer `stale=true`.
    Stale,
    /// Not ours (or for another realm).
    Invalid,
}

impl NonceState {
    /// Ours and not expired.
    pub fn fresh(self) -> bool {
        matches!(self, NonceState::Fresh { .. })
    }
}

/// Makes and checks self-validating nonces:
/// `base64url(time ‖ random ‖ HMAC-SHA256(key, time ‖ random ‖ realm)[..16])`.
/// No server-side state, so any instance sharing the key accepts them.
pub struct Nonces {
    key: Secret,
    /// The key came from `nonce_key_file` (else it is random).
    from_file: bool,
    seen: Arc<Mutex<Replay>>,
    shared: Option<SharedCounts>,
    /// A nonce signed with another key was seen (said once per process).
    warned_foreign: Arc<AtomicBool>,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("from_file", &self.from_file)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// Highest `nc` seen per (nonce, cnonce), in two generations so memory stays
/// bounded: when the current one is full it becomes the previous one.
#[derive(Default)]
struct Replay {
    current: HashMap<String, u32>,
    previous: HashMap<String, u32>,
}

/// Entries per replay generation.
const REPLAY_GENERATION: usize = 50_000;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The combined rule: a count is new only when this process's memory says
/// so and Redis, when it answered, says so too (or that this same client
/// request raised it, on another instance). A malformed value in Redis
/// refuses; no answer (`None`: down, slow, resting) leaves it to this
/// process.
pub fn accepted(local: bool, shared: Option<SharedVerdict>) -> bool {
    use SharedVerdict::{New, SameRequest};
    local && matches!(shared, None | Some(New | SameRequest))
}

impl Nonces {
    /// With a random key (nonces die with the process).
    pub fn new() -> Self {
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Nonces {
            key: Secret::new(key),
            from_file: false,
            seen: Arc::default(),
            shared: None,
            warned_foreign: Arc::default(),
        }
    }

    /// With the key of `nonce_key_file`.
    pub fn with_key(key: NonceKey) -> Self {
        Nonces {
            key: Secret::new(key.expose().to_vec()),
            from_file: true,
            ..Nonces::new()
        }
    }

    /// Also keeps the highest counts in Redis.
    pub fn with_shared(mut self, shared: SharedCounts) -> Self {
        self.shared = Some(shared);
        self
    }

    /// After a reload: keeps `old`'s replay memory, and its key unless this
    /// one came from a key file (without one, the key in use stays, so
    /// nonces clients hold survive the reload).
    pub fn inherit(&mut self, old: &Nonces) {
        self.seen = Arc::clone(&old.seen);
        self.warned_foreign = Arc::clone(&old.warned_foreign);
        if !self.from_file {
            self.key = old.key.clone();
            self.from_file = old.from_file;
        }
    }

    fn mac(&self, body: &[u8], realm: &str) -> [u8; 16] {
        let mut m =
            <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.expose()).expect("any key length");
        m.update(body);
        m.update(realm.as_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// A fresh nonce for `realm`, issued at `now` (seconds since the epoch).
    pub fn issue_at(&self, realm: &str, now: u64) -> String {
        let mut body = [0u8; 16];
        body[..8].copy_from_slice(&now.to_be_bytes());
        rand::rng().fill_bytes(&mut body[8..]);
        let mut raw = body.to_vec();
        raw.extend_from_slice(&self.mac(&body, realm));
        B64URL.encode(raw)
    }

    /// A fresh nonce for `realm`.
    pub fn issue(&self, realm: &str) -> String {
        self.issue_at(realm, now_secs())
    }

    /// Checks a nonce at `now` with `lifetime` seconds. It is `ending` from
    /// three quarters of its lifetime on.
    pub fn check_at(&self, nonce: &str, realm: &str, lifetime: u64, now: u64) -> NonceState {
        let Ok(raw) = B64URL.decode(nonce) else {
            return NonceState::Invalid;
        };
        if raw.len() != 32 {
            return NonceState::Invalid;
        }
        if !ct_eq(&self.mac(&raw[..16], realm), &raw[16..]) {
            self.warn_foreign();
            return NonceState::Invalid;
        }
        let issued = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        let age = now.saturating_sub(issued);
        if issued > now + 60 {
            NonceState::Invalid
        } else if age > lifetime {
            NonceState::Stale
        } else {
            NonceState::Fresh {
                ending: age >= lifetime - lifetime / 4,
            }
        }
    }

    /// A nonce of our shape whose MAC is not ours: another instance (or an
    /// earlier run) with another key issued it. Said once, when the key is
    /// random, since that is what breaks several instances behind one site.
    fn warn_foreign(&self) {
        if !self.from_file && !self.warned_foreign.swap(true, Relaxed) {
            log::warn!(
                "Digest: refused a nonce signed with another key (issued by another instance, \
                 before a restart, or forged); nonces are signed with a per-process key: with several \
                 instances behind one upstream give them one nonce_key_file \
                 (`nginx-auth-fcgi nonce-key init`)"
            );
        }
    }

    /// Checks a nonce now.
    pub fn check(&self, nonce: &str, realm: &str, lifetime: u64) -> NonceState {
        self.check_at(nonce, realm, lifetime, now_secs())
    }

    /// Records `nc` for (nonce, cnonce) in this process's memory; false when
    /// it is not above the last one seen here (a replay).
    pub fn accept_nc(&self, nonce: &str, cnonce: &str, nc: u32) -> bool {
        let key = format!("{nonce}\u{0}{cnonce}");
        let mut r = crate::sync::lock(&self.seen);
        let last = r
            .current
            .get(&key)
            .or_else(|| r.previous.get(&key))
            .copied()
            .unwrap_or(0);
        if nc <= last {
            return false;
        }
        if r.current.len() >= REPLAY_GENERATION {
            r.previous = std::mem::take(&mut r.current);
        }
        r.current.insert(key, nc);
        true
    }

    /// Whether `nc` is new for (nonce, cnonce), by [`accepted`]: recorded
    /// here always, and in Redis (kept `lifetime` plus a minute, with the
    /// client request's `request_id`) when configured, even when this
    /// process already refuses it, so the other instances learn the count
    /// too.
    pub async fn accept(
        &self,
        nonce: &str,
        cnonce: &str,
        nc: u32,
        request_id: Option<&str>,
        lifetime: u64,
    ) -> bool {
        let local = self.accept_nc(nonce, cnonce, nc);
        // Only a count this process accepts carries the request id: one it
        // refused must not let nginx's repeat of that request pass on
        // another instance (when Redis was behind this process's memory).
        let request_id = request_id.filter(|_| local);
        let keep = lifetime.saturating_add(60);
        let shared = match &self.shared {
            None => None,
            Some(s) => s.record(nonce, cnonce, nc, request_id, keep).await,
        };
        accepted(local, shared)
    }
}

impl Default for Nonces {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_expire_bind_realm_and_refuse_replays() {
        let n = Nonces::new();
        let t = 1_800_000_000;
        let nonce = n.issue_at("R", t);
        assert!(n.check_at(&nonce, "R", 300, t + 10).fresh());
        assert_eq!(n.check_at(&nonce, "R", 300, t + 301), NonceState::Stale);
        assert_eq!(n.check_at(&nonce, "other", 300, t), NonceState::Invalid);
        assert_eq!(
            Nonces::new().check_at(&nonce, "R", 300, t),
            NonceState::Invalid,
            "another key"
        );
        let mut tampered = nonce.clone().into_bytes();
        tampered[3] ^= 1;
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(!n.check_at(&tampered, "R", 300, t).fresh());
        assert_eq!(n.check_at("!!", "R", 300, t), NonceState::Invalid);

        assert!(n.accept_nc(&nonce, "c", 1));
        assert!(!n.accept_nc(&nonce, "c", 1), "replay");
        assert!(n.accept_nc(&nonce, "c", 2));
        assert!(!n.accept_nc(&nonce, "c", 2));
        assert!(n.accept_nc(&nonce, "other-cnonce", 1));
    }

    /// `nextnonce` is offered in the last quarter of the lifetime only.
    #[test]
    fn a_nonce_is_ending_in_its_last_quarter_only() {
        let n = Nonces::new();
        let t = 1_800_000_000;
        let nonce = n.issue_at("R", t);
        let at = |age| n.check_at(&nonce, "R", 300, t + age);
        for age in [0, 1, 100, 224] {
            assert_eq!(at(age), NonceState::Fresh { ending: false }, "age {age}");
        }
        for age in [225, 250, 300] {
            assert_eq!(at(age), NonceState::Fresh { ending: true }, "age {age}");
        }
        assert_eq!(at(301), NonceState::Stale);
        let short = n.issue_at("R", t);
        assert_eq!(
            n.check_at(&short, "R", 2, t + 1),
            NonceState::Fresh { ending: false }
        );
        assert_eq!(
            n.check_at(&short, "R", 2, t + 2),
            NonceState::Fresh { ending: true }
        );
    }

    #[test]
    fn instances_with_one_key_file_accept_each_others_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        super::super::nonce_key::init(&path).unwrap();
        let key = || NonceKey::read(&path).unwrap();
        let (a, b) = (Nonces::with_key(key()), Nonces::with_key(key()));
        let t = 1_800_000_000;
        assert!(b.check_at(&a.issue_at("R", t), "R", 300, t).fresh());
        assert!(a.check_at(&b.issue_at("R", t), "R", 300, t).fresh());
        assert_eq!(
            Nonces::new().check_at(&a.issue_at("R", t), "R", 300, t),
            NonceState::Invalid
        );
        // A reload keeps the replay memory, and the random key only when no
        // key file is configured.
        let random = Nonces::new();
        let nonce = random.issue_at("R", t);
        assert!(random.accept_nc(&nonce, "c", 1));
        let mut reloaded = Nonces::new();
        reloaded.inherit(&random);
        assert!(reloaded.check_at(&nonce, "R", 300, t).fresh());
        assert!(!reloaded.accept_nc(&nonce, "c", 1), "replay memory kept");
        let mut keyed = Nonces::with_key(key());
        keyed.inherit(&random);
        assert_eq!(keyed.check_at(&nonce, "R", 300, t), NonceState::Invalid);
        assert!(keyed.check_at(&a.issue_at("R", t), "R", 300, t).fresh());
    }

    /// Accepted only when this process and a reachable Redis both say new;
    /// a malformed shared value refuses; Redis away leaves it to this process.
    #[test]
    fn the_combined_rule() {
        use SharedVerdict::*;
        assert!(accepted(true, Some(New)));
        assert!(
            accepted(true, None),
            "Redis unreachable: this process decides"
        );
        assert!(!accepted(true, Some(Seen)), "another instance saw it");
        assert!(!accepted(true, Some(Malformed)), "never fail open");
        assert!(
            accepted(true, Some(SameRequest)),
            "nginx repeating one client request's subrequest on another instance"
        );
        for shared in [
            None,
            Some(New),
            Some(Seen),
            Some(Malformed),
            Some(SameRequest),
        ] {
            assert!(!accepted(false, shared), "seen here: {shared:?}");
        }
    }

    #[tokio::test]
    async fn without_redis_accept_is_this_process_memory() {
        let n = Nonces::new();
        let nonce = n.issue("R");
        assert!(n.accept(&nonce, "c", 1, None, 300).await);
        assert!(!n.accept(&nonce, "c", 1, None, 300).await);
        assert!(n.accept(&nonce, "c", 3, None, 300).await);
        assert!(!n.accept(&nonce, "c", 2, None, 300).await);
    }
}
