//! The throttle's state in this process: sliding-window counters, blocks
//! and marks in maps behind one std `Mutex`. Every critical section is a
//! few map operations and never held across an await. The maps are bounded:
//! past `MEMORY_SWEEP_AT` entries the expired ones are swept, and under a
//! flood of distinct keys the lightest counters go first.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::sync::lock;

/// Entries kept per in-memory map before expired ones are swept.
const MEMORY_SWEEP_AT: usize = 100_000;

/// Counters and blocks in this process.
#[derive(Default)]
pub(super) struct MemoryStore {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    windows: HashMap<String, Window>,
    blocks: HashMap<String, u64>,
    /// Blocks Redis did not take (set while it was away, or without it).
    unshared: HashSet<String>,
    /// Marks (wrong passwords seen, users who logged in, known networks)
    /// and when they expire.
    marks: HashMap<String, u64>,
}

#[derive(Clone, Copy)]
struct Window {
    bucket: u64,
    cur: u32,
    prev: u32,
}

impl MemoryStore {
    pub(super) fn incr(&self, keys: &[&str], bucket: u64, now: u64) -> Vec<(u32, u32)> {
        let mut s = lock(&self.state);
        if s.windows.len() >= MEMORY_SWEEP_AT {
            s.windows.retain(|_, w| w.bucket + 1 >= bucket);
            if s.windows.len() >= MEMORY_SWEEP_AT {
                // A flood of distinct keys within one window. Forgetting all
                // counts would let a spray from many addresses wash a guesser's
                // count away, so forget the lightest ones: single failures
                // first, then all but the heaviest half of the cap. The map is
                // then at most half full, so this runs at most once per
                // MEMORY_SWEEP_AT / 2 new keys. Blocks are kept.
                let before = s.windows.len();
                s.windows.retain(|_, w| w.cur.saturating_add(w.prev) > 1);
                let keep = MEMORY_SWEEP_AT / 2;
                if s.windows.len() > keep {
                    let mut counts: Vec<u32> = s
                        .windows
                        .values()
                        .map(|w| w.cur.saturating_add(w.prev))
                        .collect();
                    counts.select_nth_unstable_by(keep, |a, b| b.cmp(a));
                    let threshold = counts[keep];
                    s.windows
                        .retain(|_, w| w.cur.saturating_add(w.prev) > threshold);
                }
                log::warn!(
                    "throttle: too many distinct clients; forgot {} light counters, kept the {} heaviest",
                    before - s.windows.len(),
                    s.windows.len()
                );
            }
        }
        if s.blocks.len() >= MEMORY_SWEEP_AT {
            s.blocks.retain(|_, until| *until > now);
            let MemoryState {
                blocks, unshared, ..
            } = &mut *s;
            unshared.retain(|k| blocks.contains_key(k));
        }
        keys.iter()
            .map(|k| {
                let w = s.windows.entry((*k).to_owned()).or_insert(Window {
                    bucket,
                    cur: 0,
                    prev: 0,
                });
                if w.bucket != bucket {
                    w.prev = if w.bucket + 1 == bucket { w.cur } else { 0 };
                    w.cur = 0;
                    w.bucket = bucket;
                }
                w.cur = w.cur.saturating_add(1);
                (w.cur, w.prev)
            })
            .collect()
    }

    pub(super) fn peek(&self, key: &str, bucket: u64) -> (u32, u32) {
        let s = lock(&self.state);
        match s.windows.get(key) {
            Some(w) if w.bucket == bucket => (w.cur, w.prev),
            Some(w) if w.bucket + 1 == bucket => (0, w.cur),
            _ => (0, 0),
        }
    }

    /// Sets a mark until `until`; true when it was not set (or expired).
    /// With `only_new` an existing mark is left as it is.
    pub(super) fn mark(&self, key: &str, until: u64, now: u64, only_new: bool) -> bool {
        let mut s = lock(&self.state);
        if s.marks.len() >= MEMORY_SWEEP_AT {
            s.marks.retain(|_, u| *u > now);
            if s.marks.len() >= MEMORY_SWEEP_AT {
                // Forget the half closest to expiry: for a wrong-password
                // mark that means counting it again (never fewer counts),
                // for a known network a delay again.
                let mut ends: Vec<u64> = s.marks.values().copied().collect();
                let half = ends.len() / 2;
                ends.select_nth_unstable(half);
                let cut = ends[half];
                s.marks.retain(|_, u| *u > cut);
                log::warn!("throttle: too many marks; forgot the half closest to expiry");
            }
        }
        let existed = s.marks.get(key).is_some_and(|u| *u > now);
        if !(existed && only_new) {
            s.marks.insert(key.to_owned(), until);
        }
        !existed
    }

    pub(super) fn marked(&self, key: &str, now: u64) -> bool {
        let s = lock(&self.state);
        s.marks.get(key).is_some_and(|u| *u > now)
    }

    pub(super) fn get_blocks(&self, keys: &[&str]) -> Vec<Option<u64>> {
        let s = lock(&self.state);
        keys.iter().map(|k| s.blocks.get(*k).copied()).collect()
    }

    pub(super) fn get_unshared_blocks(&self, keys: &[&str]) -> Vec<Option<u64>> {
        let s = lock(&self.state);
        keys.iter()
            .map(|k| {
                s.blocks
                    .get(*k)
                    .copied()
                    .filter(|_| s.unshared.contains(*k))
            })
            .collect()
    }

    /// Records whether Redis took the block `key`.
    pub(super) fn set_shared(&self, key: &str, shared: bool) {
        let mut s = lock(&self.state);
        if shared {
            s.unshared.remove(key);
        } else if s.blocks.contains_key(key) {
            s.unshared.insert(key.to_owned());
        }
    }

    /// True when no block was in force before.
    pub(super) fn set_block(&self, key: &str, until: u64, now: u64) -> bool {
        let mut s = lock(&self.state);
        match s.blocks.insert(key.to_owned(), until) {
            Some(old) if old > now => {
                s.blocks.insert(key.to_owned(), old);
                false
            }
            _ => true,
        }
    }

    pub(super) fn take_expired_block(&self, key: &str, until: u64) -> bool {
        let mut s = lock(&self.state);
        if s.blocks.get(key) == Some(&until) {
            s.blocks.remove(key);
            true
        } else {
            false
        }
    }

    /// The (network, user) of every pair block stored.
    pub(super) fn pair_blocks(&self) -> Vec<(String, String)> {
        let s = lock(&self.state);
        s.blocks
            .keys()
            .filter_map(|k| k.strip_prefix("block:ipu:"))
            .filter_map(|rest| {
                // `net:user`; an IPv6 net holds colons and ends in /len.
                let split = match rest.find('/') {
                    Some(slash) => slash + rest[slash..].find(':')?,
                    None => rest.find(':')?,
                };
                Some((rest[..split].to_owned(), rest[split + 1..].to_owned()))
            })
            .collect()
    }

    /// Removes a block; true when one was in force.
    pub(super) fn lift(&self, key: &str, now: u64) -> bool {
        let mut s = lock(&self.state);
        s.unshared.remove(key);
        s.blocks.remove(key).is_some_and(|u| u > now)
    }

    pub(super) fn reset(&self, key: &str) {
        lock(&self.state).windows.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_new_keys_keeps_the_heavy_counters() {
        let store = MemoryStore::default();
        // A guesser with 7 failures, then a spray of single failures from
        // distinct addresses up to the cap.
        for _ in 0..7 {
            store.incr(&["ip:203.0.113.9|alice"], 10, 0);
        }
        for i in 0..MEMORY_SWEEP_AT {
            store.incr(&[&format!("ip:spray-{i}")], 10, 0);
        }
        // The sweep ran (the map is far below the cap) and the guesser's
        // count survived it.
        let len = lock(&store.state).windows.len();
        assert!(len < MEMORY_SWEEP_AT / 2, "{len} counters after the sweep");
        assert_eq!(store.incr(&["ip:203.0.113.9|alice"], 10, 0), vec![(8, 0)]);
        // With heavy keys beyond half the cap, only the heaviest half stays.
        let store = MemoryStore::default();
        for i in 0..MEMORY_SWEEP_AT {
            let k = format!("k{i}");
            let n = if i == 0 { 9 } else { 2 + (i % 3) as u32 };
            for _ in 0..n {
                store.incr(&[&k], 10, 0);
            }
        }
        let len = lock(&store.state).windows.len();
        assert!(len <= MEMORY_SWEEP_AT / 2 + 1, "{len} counters");
        assert_eq!(store.incr(&["k0"], 10, 0), vec![(10, 0)]);
    }
}
