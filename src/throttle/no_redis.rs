//! The throttle's Redis store in a binary built without the `redis` feature:
//! the same methods as `redis.rs` on a type that cannot exist
//! ([`RedisStore::open`] always refuses with
//! [`SharedStateError::NotBuilt`]), so the throttle's Redis paths type-check
//! and are never taken; the throttle keeps its state in memory.

use std::time::Duration;

use crate::shared_state::{SharedState, SharedStateError, Target};

type Result<T> = std::result::Result<T, SharedStateError>;

/// Never made: holds an uninhabited [`SharedState`].
pub(super) struct RedisStore {
    pub(super) state: SharedState,
}

impl RedisStore {
    pub(super) fn open(_: &Target) -> Result<Self> {
        Err(SharedStateError::NotBuilt)
    }

    pub(super) async fn incr(&self, _: &[&str], _: u64, _: Duration) -> Result<Vec<(u32, u32)>> {
        self.state.unreachable()
    }
    pub(super) async fn dedup_key(&self) -> Result<[u8; 32]> {
        self.state.unreachable()
    }
    pub(super) async fn peek(&self, _: &str, _: u64) -> Result<(u32, u32)> {
        self.state.unreachable()
    }
    pub(super) async fn mark(&self, _: &str, _: Duration, _: bool) -> Result<bool> {
        self.state.unreachable()
    }
    pub(super) async fn index(&self, _: &str, _: &str, _: Duration) -> Result<()> {
        self.state.unreachable()
    }
    pub(super) async fn members(&self, _: &str) -> Result<Vec<String>> {
        self.state.unreachable()
    }
    pub(super) async fn lift(&self, _: &str) -> Result<bool> {
        self.state.unreachable()
    }
    pub(super) async fn marked(&self, _: &str) -> Result<bool> {
        self.state.unreachable()
    }
    pub(super) async fn get_blocks(&self, _: &[&str]) -> Result<Vec<Option<u64>>> {
        self.state.unreachable()
    }
    pub(super) async fn set_block(&self, _: &str, _: u64, _: Duration) -> Result<bool> {
        self.state.unreachable()
    }
    pub(super) async fn take_expired_block(&self, _: &str, _: u64) -> Result<bool> {
        self.state.unreachable()
    }
    pub(super) async fn reset(&self, _: &str, _: u64) -> Result<()> {
        self.state.unreachable()
    }
}
