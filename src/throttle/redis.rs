//! The throttle's state in Redis/Valkey, for several instances behind one
//! nginx: sliding-window counters as two keys per counter (`KEY:BUCKET`),
//! blocks as `SET NX` values holding their end, marks as keys with a TTL,
//! and the index sets behind pair blocks. Every key is hashed
//! ([`RedisStore::key`]): user names are attacker-chosen. The connection,
//! timeouts and the fallback bookkeeping are [`crate::shared_state`]'s.

use std::time::Duration;

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::shared_state::{self, Fallback, SharedState, SharedStateError, Target};

type Result<T> = std::result::Result<T, SharedStateError>;

/// What the throttle does when Redis fails: it counts and blocks on this
/// instance's own state, and tries Redis again after a few seconds.
const FALLBACK: Fallback = Fallback {
    lost: "throttle: shared state unreachable",
    instead: "using this instance's own counts",
    back: "throttle: shared state reachable again; using it",
    back_level: log::Level::Warn,
    retry_after: Duration::from_secs(5),
};

/// Counters and blocks in Redis/Valkey.
pub(super) struct RedisStore {
    pub(super) state: SharedState,
    unblock: redis::Script,
    /// The instances' shared key for wrong-password tags, once read.
    dedup_key: tokio::sync::OnceCell<[u8; 32]>,
}

impl RedisStore {
    pub(super) fn open(target: &Target) -> Result<Self> {
        Ok(RedisStore {
            state: SharedState::open(target, FALLBACK)?,
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
        shared_state::key(&hex::encode(&h[..16]))
    }

    pub(super) async fn incr(
        &self,
        keys: &[&str],
        bucket: u64,
        ttl: Duration,
    ) -> Result<Vec<(u32, u32)>> {
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
        let flat: Vec<Option<u32>> = self.state.pipeline(&pipe).await?;
        Ok(flat
            .chunks(2)
            .map(|c| (c[0].unwrap_or(1), c.get(1).copied().flatten().unwrap_or(0)))
            .collect())
    }

    /// The key all instances use for wrong-password tags: the first
    /// instance stores a random one (`SET NX`), every instance reads it.
    pub(super) async fn dedup_key(&self) -> Result<[u8; 32]> {
        self.dedup_key
            .get_or_try_init(|| async {
                let name = shared_state::key("dedup-key");
                let mut fresh = [0u8; 32];
                rand::rng().fill_bytes(&mut fresh);
                let mut set = redis::cmd("SET");
                set.arg(&name).arg(hex::encode(fresh)).arg("NX");
                let _: Option<String> = self.state.query(&set).await?;
                let mut get = redis::cmd("GET");
                get.arg(&name);
                let stored: Option<String> = self.state.query(&get).await?;
                let bytes = stored
                    .and_then(|h| hex::decode(h).ok())
                    .filter(|b| b.len() == 32)
                    .ok_or(SharedStateError::Malformed("dedup key"))?;
                let mut key = [0u8; 32];
                key.copy_from_slice(&bytes);
                Ok(key)
            })
            .await
            .copied()
    }

    pub(super) async fn peek(&self, key: &str, bucket: u64) -> Result<(u32, u32)> {
        let base = Self::key(key);
        let mut cmd = redis::cmd("MGET");
        cmd.arg(format!("{base}:{bucket}"))
            .arg(format!("{base}:{}", bucket.wrapping_sub(1)));
        let v: Vec<Option<u32>> = self.state.query(&cmd).await?;
        Ok((
            v.first().copied().flatten().unwrap_or(0),
            v.get(1).copied().flatten().unwrap_or(0),
        ))
    }

    pub(super) async fn mark(&self, key: &str, ttl: Duration, only_new: bool) -> Result<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(Self::key(key))
            .arg(1)
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        if only_new {
            cmd.arg("NX");
            let r: Option<String> = self.state.query(&cmd).await?;
            return Ok(r.is_some());
        }
        // Refresh; report whether it existed before.
        cmd.arg("GET");
        let old: Option<String> = self.state.query(&cmd).await?;
        Ok(old.is_none())
    }

    /// Adds `member` to the index set `set` (plain, unhashed members).
    pub(super) async fn index(&self, set: &str, member: &str, ttl: Duration) -> Result<()> {
        let mut pipe = redis::pipe();
        let key = Self::key(set);
        pipe.sadd(&key, member)
            .ignore()
            .pexpire(&key, ttl.as_millis() as i64)
            .ignore();
        self.state.pipeline(&pipe).await
    }

    pub(super) async fn members(&self, set: &str) -> Result<Vec<String>> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(Self::key(set));
        self.state.query(&cmd).await
    }

    /// Removes a block; true when one was stored.
    pub(super) async fn lift(&self, key: &str) -> Result<bool> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(Self::key(key));
        let n: u32 = self.state.query(&cmd).await?;
        Ok(n > 0)
    }

    pub(super) async fn marked(&self, key: &str) -> Result<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(Self::key(key));
        let n: u32 = self.state.query(&cmd).await?;
        Ok(n > 0)
    }

    pub(super) async fn get_blocks(&self, keys: &[&str]) -> Result<Vec<Option<u64>>> {
        let mut cmd = redis::cmd("MGET");
        for k in keys {
            cmd.arg(Self::key(k));
        }
        self.state.query(&cmd).await
    }

    pub(super) async fn set_block(&self, key: &str, until: u64, ttl: Duration) -> Result<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(Self::key(key))
            .arg(until)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        let r: Option<String> = self.state.query(&cmd).await?;
        Ok(r.is_some())
    }

    pub(super) async fn take_expired_block(&self, key: &str, until: u64) -> Result<bool> {
        let mut inv = self.unblock.key(Self::key(key));
        inv.arg(until.to_string());
        let n: u32 = self.state.invoke(&inv).await?;
        Ok(n > 0)
    }

    pub(super) async fn reset(&self, key: &str, bucket: u64) -> Result<()> {
        let base = Self::key(key);
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{base}:{bucket}"))
            .arg(format!("{base}:{}", bucket.wrapping_sub(1)));
        let _: u32 = self.state.query(&cmd).await?;
        Ok(())
    }
}
