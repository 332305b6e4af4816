//! Digest nonce counts shared by several instances through Redis (`state =
//! "redis://…"`), on [`crate::shared_state`]: one key per (nonce, cnonce)
//! holding the highest `nc` any instance accepted, raised by a Lua script
//! only when the new count is greater, and expiring a minute after the
//! nonce's lifetime.
//!
//! Beside the count the value holds a hash of the nginx `AUTH_REQUEST_ID`
//! ($request_id) that raised it: nginx repeats the `auth_request`
//! subrequest of one client request after an internal redirect (an index
//! file, `try_files`), with the same header and id, and its upstream may send
//! the repeat to another instance. That repeat is
//! [`SharedVerdict::SameRequest`], answered as the first was; a replay in
//! another client request has another id (nginx makes it; a client cannot
//! set it) and stays [`SharedVerdict::Seen`].
//!
//! The key is `nginx-auth-fcgi:digest-nc:` and 32 hex digits of SHA-256
//! over the length-prefixed nonce and cnonce: both are client-chosen, so
//! neither goes into a key raw and every key has the same size. A value that
//! is not a decimal count (or a key of another type) is
//! [`SharedVerdict::Malformed`]: that request is refused, never let through
//! on this instance's word alone. When Redis does not answer in time, the
//! caller decides on its own memory ([`super::nonce::accepted`]); the loss and
//! the return are logged once each.
//!
//! Built without the `redis` feature, [`SharedCounts::open`] refuses (as
//! [`SharedState::open`] does) and no `SharedCounts` exists.

use std::time::Duration;

use crate::shared_state::{Fallback, SharedState, SharedStateError, Target};

/// What Redis said about a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedVerdict {
    /// Above every count stored: now stored.
    New,
    /// Not above the stored one: a replay (possibly to another instance).
    Seen,
    /// The stored count, raised by this same client request (its
    /// `AUTH_REQUEST_ID`): nginx repeating the subrequest, maybe to another
    /// instance.
    SameRequest,
    /// The stored value is not a count: refuse.
    Malformed,
}

/// What Digest does when Redis fails: each instance decides on its own
/// memory of counts, and Redis is tried again after a few seconds.
const FALLBACK: Fallback = Fallback {
    lost: "digest: shared nonce counts unreachable",
    instead: "using this instance's own counts (a replay to another instance is not caught)",
    back: "digest: shared nonce counts reachable again; using them",
    back_level: log::Level::Warn,
    retry_after: Duration::from_secs(5),
};

/// Raises KEYS[1] to ARGV[1] (expiring in ARGV[2] ms) when greater, storing
/// `COUNT` or `COUNT REQUEST-HASH` (ARGV[3], empty without a request id):
/// 1 stored, 0 not greater, 2 equal and raised by the same request, -1 the
/// stored value is malformed.
#[cfg(feature = "redis")]
const RAISE: &str = "\
local cur = redis.pcall('GET', KEYS[1])
if type(cur) == 'table' and cur.err then return -1 end
if cur then
  local n, rid = string.match(cur, '^([0-9]+) ([0-9a-f]+)$')
  if not n then n = string.match(cur, '^([0-9]+)$') end
  if not n or string.len(n) > 10 then return -1 end
  local stored, want = tonumber(n), tonumber(ARGV[1])
  if stored == want and rid and ARGV[3] ~= '' and rid == ARGV[3] then return 2 end
  if stored >= want then return 0 end
end
local v = ARGV[1]
if ARGV[3] ~= '' then v = v .. ' ' .. ARGV[3] end
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return 1";

/// The highest Digest counts in Redis.
pub struct SharedCounts {
    state: SharedState,
    #[cfg(feature = "redis")]
    raise: redis::Script,
}

impl std::fmt::Debug for SharedCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedCounts")
            .field(&self.state.shown())
            .finish()
    }
}

/// 32 hex digits of SHA-256 over the length-prefixed `parts`.
fn hash(parts: &[&str]) -> String {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// The Redis key of (nonce, cnonce).
pub fn key(nonce: &str, cnonce: &str) -> String {
    crate::shared_state::key(&format!("digest-nc:{}", hash(&[nonce, cnonce])))
}

impl SharedCounts {
    /// Opens `target` the way the throttle opens its store (lazily; inside a
    /// tokio runtime).
    pub fn open(target: &Target) -> Result<Self, SharedStateError> {
        Ok(SharedCounts {
            state: SharedState::open(target, FALLBACK)?,
            #[cfg(feature = "redis")]
            raise: redis::Script::new(RAISE),
        })
    }

    /// Stores `nc` for (nonce, cnonce), raised by the client request
    /// `request_id`, if it is above the stored count, kept `ttl_secs`;
    /// `None` when Redis did not answer (or is being left alone after a
    /// failure).
    #[cfg(feature = "redis")]
    pub async fn record(
        &self,
        nonce: &str,
        cnonce: &str,
        nc: u32,
        request_id: Option<&str>,
        ttl_secs: u64,
    ) -> Option<SharedVerdict> {
        let mut inv = self.raise.key(key(nonce, cnonce));
        let rid = request_id.map(|id| hash(&[id])).unwrap_or_default();
        inv.arg(nc).arg(ttl_secs.saturating_mul(1000)).arg(rid);
        let verdict = self
            .state
            .attempt(crate::shared_state::unix_ms, async {
                let r: i64 = self.state.invoke(&inv).await?;
                Ok(match r {
                    1 => SharedVerdict::New,
                    0 => SharedVerdict::Seen,
                    2 => SharedVerdict::SameRequest,
                    _ => SharedVerdict::Malformed,
                })
            })
            .await;
        if verdict == Some(SharedVerdict::Malformed) {
            log::error!(
                "digest: {}; request refused",
                SharedStateError::Malformed("nonce count")
            );
        }
        verdict
    }

    /// Never called: without the `redis` feature no `SharedCounts` exists.
    #[cfg(not(feature = "redis"))]
    pub async fn record(
        &self,
        _: &str,
        _: &str,
        _: u32,
        _: Option<&str>,
        _: u64,
    ) -> Option<SharedVerdict> {
        self.state.unreachable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_bounded_and_unambiguous() {
        let k = key("n", "c");
        assert!(k.starts_with("nginx-auth-fcgi:digest-nc:"), "{k}");
        assert_eq!(k.len(), "nginx-auth-fcgi:digest-nc:".len() + 32);
        let long = "x\r\n\0".repeat(10_000);
        assert_eq!(key(&long, &long).len(), k.len());
        assert!(!key(&long, "c").contains('\n'));
        // The length prefix keeps (ab, c) and (a, bc) apart.
        assert_ne!(key("ab", "c"), key("a", "bc"));
        assert_eq!(key("n", "c"), k);
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn without_the_feature_open_refuses() {
        assert!(matches!(
            SharedCounts::open(&Target::new("redis://127.0.0.1:6379/")),
            Err(SharedStateError::NotBuilt)
        ));
    }
}
