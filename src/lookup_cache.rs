//! Credential lookup cache, after Dovecot's auth cache: the stored record a
//! passdb returned for a user (the hash and its scheme, the app passwords,
//! the `enabled` flag and the routing fields) is remembered per passdb and
//! user, so a login within `lookup_cache_ttl` of the last costs no backend
//! round trip. It never holds a password a client sent: only what the
//! passdb stored.
//!
//! The policy layer asks it in one place ([`crate::authenticator`]'s chain),
//! for mail and HTTP alike, and only for the passdbs whose lookup is a round
//! trip (SQLite, PostgreSQL, MySQL, LDAP in search mode); passwd-files and
//! htdigest are held in memory already.
//!
//! - **Fresh** (fetched less than `ttl` ago): answers without the backend.
//! - **Stale** (older, but fetched less than `stale_ttl` ago): the backend is
//!   asked; only when it fails temporarily (unavailable, timed out) is the
//!   login verified against the remembered record (`cache=stale` in the audit
//!   line). Every other answer replaces or drops the entry.
//! - **Not cached**: temporary failures (never), and unknown users (unlike
//!   Dovecot's `auth_cache_negative_ttl`): a user just added logs in at once,
//!   and a sprayer's random names cannot push real users' records out. An
//!   unknown-user answer drops the entry, so a deleted user is never served
//!   stale. Disabled accounts are cached (their record says so).
//!
//! Bounds: at most [`MAX_ENTRIES`] entries and about [`MAX_BYTES`] of
//! records; when full, the oldest-fetched entries go first (they expire
//! first). It is per process: a restart or a SIGHUP reload empties it, and
//! `nginx-auth-fcgi cache flush [--user U]` empties it over the socket (the
//! `user` commands send that themselves after a change).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use crate::metrics::METRICS;
use crate::passdb::{Lookup, PassdbError};
use crate::throttle::Clock;

/// Most entries held (all passdbs together).
pub const MAX_ENTRIES: usize = 100_000;
/// Most bytes of records held (an estimate of the heap they use).
pub const MAX_BYTES: usize = 64 << 20;

/// Bookkeeping bytes counted per entry besides its strings.
const ENTRY_OVERHEAD: usize = 160;

/// The lookup cache's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupPolicy {
    /// How long a record answers without asking the backend.
    pub ttl: Duration,
    /// How long after it was fetched a record may still answer while the
    /// backend fails (zero: never).
    pub stale_ttl: Duration,
    /// Most entries.
    pub max_entries: usize,
    /// Most bytes of records (estimated).
    pub max_bytes: usize,
}

impl Default for LookupPolicy {
    fn default() -> Self {
        LookupPolicy {
            ttl: Duration::from_secs(60),
            stale_ttl: Duration::from_secs(3600),
            max_entries: MAX_ENTRIES,
            max_bytes: MAX_BYTES,
        }
    }
}

impl LookupPolicy {
    /// One line for start-up and `check-config`; `None`: off.
    pub fn describe(policy: Option<&LookupPolicy>) -> String {
        let Some(p) = policy else {
            return "lookup cache: off (every login asks the passdb)".to_owned();
        };
        let stale = if p.stale_ttl.is_zero() {
            "never answers while a passdb is down".to_owned()
        } else {
            format!(
                "answers up to {} s after a fetch while a passdb is down",
                p.stale_ttl.as_secs()
            )
        };
        format!(
            "lookup cache: {} s for SQLite, SQL server and LDAP records ({stale}; at most {} \
             records, {} MiB)",
            p.ttl.as_secs(),
            p.max_entries,
            p.max_bytes >> 20
        )
    }
}

/// How a lookup was answered (the metrics, and `cache=stale` in the audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupUse {
    /// A fresh cached record answered.
    Hit,
    /// The backend answered.
    Miss,
    /// The backend failed; a stale cached record answered.
    Stale,
}

/// A remembered record.
struct Entry {
    lookup: Lookup,
    fetched_ms: u64,
    seq: u64,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    /// Per passdb (its index in the chain): user → record.
    users: Vec<HashMap<String, Entry>>,
    /// Insertion order (`seq`) → (passdb, user): oldest first.
    order: BTreeMap<u64, (usize, String)>,
    bytes: usize,
    next_seq: u64,
    /// Raised by every flush: a lookup that was asked before it does not
    /// store what it read (it may predate the change the flush is for).
    generation: u64,
}

impl Inner {
    fn remove(&mut self, db: usize, user: &str) -> bool {
        let Some(e) = self.users.get_mut(db).and_then(|m| m.remove(user)) else {
            return false;
        };
        self.order.remove(&e.seq);
        self.bytes -= e.bytes;
        true
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    /// Drops the oldest entry; false when empty.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, (db, user))) = self.order.pop_first() else {
            return false;
        };
        if let Some(e) = self.users[db].remove(&user) {
            self.bytes -= e.bytes;
        }
        true
    }
}

/// The cache.
pub struct LookupCache {
    policy: LookupPolicy,
    clock: Clock,
    inner: Mutex<Inner>,
}

impl fmt::Debug for LookupCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LookupCache")
            .field("policy", &self.policy)
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

/// A fresh record, or whether the backend must be asked.
pub enum Probe {
    /// Fetched less than `ttl` ago.
    Fresh(Lookup),
    /// Not held, or too old: ask the backend, and hand its answer to
    /// [`LookupCache::put`] with this flush generation.
    Ask {
        /// The flush generation when the cache was asked.
        generation: u64,
    },
}

impl LookupCache {
    /// An empty cache on `clock`.
    pub fn new(policy: LookupPolicy, clock: Clock) -> Self {
        LookupCache {
            policy,
            clock,
            inner: Mutex::default(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &LookupPolicy {
        &self.policy
    }

    fn age_ms(&self, e: &Entry) -> u64 {
        self.clock.now_ms().saturating_sub(e.fetched_ms)
    }

    /// The record of `user` in passdb number `db`, if it is fresh (counted
    /// as a hit; otherwise the caller asks the backend, a miss).
    pub fn get(&self, db: usize, user: &str) -> Probe {
        let inner = crate::sync::lock(&self.inner);
        if let Some(e) = inner.users.get(db).and_then(|m| m.get(user)) {
            if u128::from(self.age_ms(e)) < self.policy.ttl.as_millis() {
                METRICS.lookup_cache(LookupUse::Hit);
                return Probe::Fresh(e.lookup.clone());
            }
        }
        METRICS.lookup_cache(LookupUse::Miss);
        Probe::Ask {
            generation: inner.generation,
        }
    }

    /// After the backend failed with `error`: the remembered record of
    /// `user`, with its age, when the failure is temporary and the record
    /// was fetched less than `stale_ttl` ago (counted as stale).
    pub fn stale(&self, db: usize, user: &str, error: &PassdbError) -> Option<(Lookup, Duration)> {
        if !is_temporary(error) {
            return None;
        }
        let inner = crate::sync::lock(&self.inner);
        let e = inner.users.get(db).and_then(|m| m.get(user))?;
        let age = self.age_ms(e);
        if u128::from(age) >= self.policy.stale_ttl.as_millis() {
            return None;
        }
        METRICS.lookup_cache(LookupUse::Stale);
        Some((e.lookup.clone(), Duration::from_millis(age)))
    }

    /// The flush generation (what [`Probe::Ask`] carries).
    pub fn generation(&self) -> u64 {
        crate::sync::lock(&self.inner).generation
    }

    /// Remembers what the backend answered for `user` in passdb `db`, asked
    /// at flush `generation`: a found or disabled record is stored; an
    /// unknown user drops the entry. Nothing is stored when a flush came in
    /// between (the answer may predate what the flush was for: `user
    /// disable` while the lookup was under way).
    pub fn put(&self, generation: u64, db: usize, user: &str, lookup: &Lookup) {
        use crate::passdb::Rejection;
        let mut inner = crate::sync::lock(&self.inner);
        inner.remove(db, user);
        if inner.generation != generation {
            return;
        }
        match lookup {
            Lookup::Found { .. } | Lookup::Rejected(Rejection::Disabled) => {}
            Lookup::Rejected(_) => return,
        }
        let bytes = ENTRY_OVERHEAD + 2 * user.len() + heap_bytes(lookup);
        if self.policy.max_entries == 0 || bytes > self.policy.max_bytes {
            return;
        }
        let now = self.clock.now_ms();
        // The oldest first: past their stale time, then as the bounds need.
        let keep_ms = self.policy.ttl.max(self.policy.stale_ttl).as_millis();
        while let Some((_, (d, u))) = inner.order.first_key_value() {
            let old = inner.users[*d]
                .get(u)
                .is_some_and(|e| u128::from(now.saturating_sub(e.fetched_ms)) >= keep_ms);
            let full = inner.len() >= self.policy.max_entries
                || inner.bytes + bytes > self.policy.max_bytes;
            if !(old || full) || !inner.evict_oldest() {
                break;
            }
        }
        if inner.users.len() <= db {
            inner.users.resize_with(db + 1, HashMap::new);
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.order.insert(seq, (db, user.to_owned()));
        inner.bytes += bytes;
        inner.users[db].insert(
            user.to_owned(),
            Entry {
                lookup: lookup.clone(),
                fetched_ms: now,
                seq,
                bytes,
            },
        );
    }

    /// Forgets the record of `user` in passdb `db` (exactly that name).
    pub fn forget(&self, db: usize, user: &str) {
        crate::sync::lock(&self.inner).remove(db, user);
    }

    /// Forgets `user` (in every passdb, ASCII case ignored, as SQL
    /// collations and LDAP compare names), or everything; returns how many
    /// entries went.
    pub fn flush(&self, user: Option<&str>) -> usize {
        let mut inner = crate::sync::lock(&self.inner);
        inner.generation += 1;
        let Some(user) = user else {
            let n = inner.len();
            *inner = Inner {
                generation: inner.generation,
                ..Inner::default()
            };
            return n;
        };
        let gone: Vec<(usize, String)> = inner
            .order
            .values()
            .filter(|(_, u)| u.eq_ignore_ascii_case(user))
            .cloned()
            .collect();
        for (db, u) in &gone {
            inner.remove(*db, u);
        }
        gone.len()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        crate::sync::lock(&self.inner).len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Estimated bytes of the records held.
    pub fn bytes(&self) -> usize {
        crate::sync::lock(&self.inner).bytes
    }
}

/// An estimate of the heap a record uses (its strings and hashes).
fn heap_bytes(lookup: &Lookup) -> usize {
    let Lookup::Found {
        principal,
        secret,
        apps,
    } = lookup
    else {
        return 0;
    };
    let strings = principal.user.len() + principal.backend_user.as_ref().map_or(0, String::len);
    let apps: usize = apps
        .list
        .iter()
        .map(|a| {
            96 + a.name.len() + a.stored.stored_len() + 24 * a.scopes.len() + 24 * a.networks.len()
        })
        .sum();
    strings + secret.stored_len() + apps
}

/// A failure a stale record may answer for: the backend down or slow.
fn is_temporary(error: &PassdbError) -> bool {
    matches!(error, PassdbError::Unavailable(_) | PassdbError::Timeout)
}

/// The lookup of `user` in passdb number `db` of a chain, through `cache`
/// when there is one: a fresh record, else the backend (`ask`), else, when
/// the backend failed temporarily, a stale record (logged). The second
/// value says whether the cache answered, and how.
pub async fn lookup_through<F>(
    cache: Option<&LookupCache>,
    db: usize,
    passdb: &str,
    user: &str,
    ask: F,
) -> Result<(Lookup, Option<LookupUse>), PassdbError>
where
    F: std::future::Future<Output = Result<Lookup, PassdbError>>,
{
    let Some(cache) = cache else {
        return Ok((ask.await?, None));
    };
    let generation = match cache.get(db, user) {
        Probe::Fresh(l) => return Ok((l, Some(LookupUse::Hit))),
        Probe::Ask { generation } => generation,
    };
    match ask.await {
        Ok(l) => {
            cache.put(generation, db, user, &l);
            Ok((l, Some(LookupUse::Miss)))
        }
        // Not an outage (a stored password that became unusable, e.g. an
        // account locked with `!`): what was remembered is no longer what
        // is stored, so it must not answer in a later outage.
        Err(e) if !is_temporary(&e) => {
            cache.forget(db, user);
            Err(e)
        }
        Err(e) => match cache.stale(db, user, &e) {
            Some((l, age)) => {
                log::warn!(
                    "passdb {passdb}: {e}; user {} answered from the lookup cache \
                     (stale: fetched {} s ago)",
                    crate::audit::quoted(user),
                    age.as_secs()
                );
                Ok((l, Some(LookupUse::Stale)))
            }
            None => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passdb::{AppPasswords, Principal, Rejection};
    use crate::scheme::{Scheme, StoredPassword};

    fn found(password: &str) -> Lookup {
        Lookup::Found {
            principal: Principal::default(),
            secret: StoredPassword::parse(&format!("{{PLAIN}}{password}"), Scheme::Plain).unwrap(),
            apps: AppPasswords::default(),
        }
    }

    fn plaintext(l: &Lookup) -> Vec<u8> {
        match l {
            Lookup::Found { secret, .. } => secret.plaintext().unwrap().to_vec(),
            Lookup::Rejected(r) => r.as_str().as_bytes().to_vec(),
        }
    }

    fn fresh(c: &LookupCache, db: usize, user: &str) -> Option<Vec<u8>> {
        match c.get(db, user) {
            Probe::Fresh(l) => Some(plaintext(&l)),
            Probe::Ask { .. } => None,
        }
    }

    fn cache(clock: &Clock) -> LookupCache {
        LookupCache::new(LookupPolicy::default(), clock.clone())
    }

    const DOWN: fn() -> PassdbError = || PassdbError::Unavailable("connection refused".into());

    #[test]
    fn fresh_for_the_ttl_then_stale_only_on_temporary_failures_until_the_stale_ttl() {
        let clock = Clock::manual(1_000_000);
        let c = cache(&clock);
        c.put(c.generation(), 0, "alice", &found("one"));
        assert_eq!(fresh(&c, 0, "alice").as_deref(), Some(&b"one"[..]));
        assert_eq!(fresh(&c, 1, "alice"), None, "per passdb");
        assert_eq!(fresh(&c, 0, "bob"), None);
        clock.advance(Duration::from_millis(59_999));
        assert!(fresh(&c, 0, "alice").is_some());
        clock.advance(Duration::from_millis(1));
        assert_eq!(
            fresh(&c, 0, "alice"),
            None,
            "past the ttl the backend is asked"
        );
        // The backend down or slow: the stale record answers, with its age.
        let (l, age) = c.stale(0, "alice", &DOWN()).unwrap();
        assert_eq!(
            (plaintext(&l), age),
            (b"one".to_vec(), Duration::from_secs(60))
        );
        assert!(c.stale(0, "alice", &PassdbError::Timeout).is_some());
        // Not for an answer that is not the backend's absence.
        let bad = PassdbError::BadStoredPassword("malformed".into());
        assert!(c.stale(0, "alice", &bad).is_none());
        assert!(
            c.stale(0, "bob", &DOWN()).is_none(),
            "never seen: no record"
        );
        clock.advance(Duration::from_secs(3600 - 60) - Duration::from_millis(1));
        assert!(c.stale(0, "alice", &DOWN()).is_some());
        clock.advance(Duration::from_millis(1));
        assert!(c.stale(0, "alice", &DOWN()).is_none(), "past the stale ttl");
        // A new answer starts the record's time again.
        c.put(c.generation(), 0, "alice", &found("two"));
        assert_eq!(fresh(&c, 0, "alice").as_deref(), Some(&b"two"[..]));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn disabled_is_kept_unknown_drops_the_record() {
        let clock = Clock::manual(0);
        let c = cache(&clock);
        c.put(c.generation(), 0, "alice", &found("one"));
        c.put(
            c.generation(),
            0,
            "alice",
            &Lookup::Rejected(Rejection::Disabled),
        );
        assert_eq!(fresh(&c, 0, "alice").as_deref(), Some(&b"disabled"[..]));
        c.put(
            c.generation(),
            0,
            "alice",
            &Lookup::Rejected(Rejection::UnknownUser),
        );
        assert!(c.is_empty(), "deleted: neither fresh nor stale");
        assert!(c.stale(0, "alice", &DOWN()).is_none());
        c.put(
            c.generation(),
            0,
            "ghost",
            &Lookup::Rejected(Rejection::UnknownUser),
        );
        assert!(c.is_empty(), "unknown users are not cached");
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn bounded_in_entries_and_bytes_oldest_first() {
        let clock = Clock::manual(0);
        let c = LookupCache::new(
            LookupPolicy {
                max_entries: 3,
                ..LookupPolicy::default()
            },
            clock.clone(),
        );
        for u in ["a", "b", "c", "d"] {
            c.put(c.generation(), 0, u, &found("pw"));
            clock.advance(Duration::from_secs(1));
        }
        assert_eq!(c.len(), 3);
        assert_eq!(fresh(&c, 0, "a"), None, "the oldest went");
        assert!(fresh(&c, 0, "d").is_some());
        // Refetching b makes it the newest: c goes next.
        c.put(c.generation(), 0, "b", &found("pw"));
        c.put(c.generation(), 0, "e", &found("pw"));
        assert!(fresh(&c, 0, "b").is_some());
        assert_eq!(fresh(&c, 0, "c"), None);

        let one = ENTRY_OVERHEAD + 2 + heap_bytes(&found("x".repeat(100).as_str()));
        let c = LookupCache::new(
            LookupPolicy {
                max_bytes: 2 * one + one / 2,
                ..LookupPolicy::default()
            },
            clock.clone(),
        );
        let big = found(&"x".repeat(100));
        for u in ["a", "b", "c"] {
            c.put(c.generation(), 0, u, &big);
        }
        assert_eq!(c.len(), 2);
        assert!(c.bytes() <= 2 * one + one / 2);
        assert_eq!(fresh(&c, 0, "a"), None);
        // One record larger than the whole bound is not kept at all.
        c.put(c.generation(), 0, "huge", &found(&"x".repeat(4 * one)));
        assert_eq!(fresh(&c, 0, "huge"), None);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn entries_past_their_stale_time_are_swept_on_insert() {
        let clock = Clock::manual(0);
        let c = cache(&clock);
        c.put(c.generation(), 0, "old", &found("pw"));
        clock.advance(Duration::from_secs(3600));
        c.put(c.generation(), 0, "new", &found("pw"));
        assert_eq!(c.len(), 1);
        assert!(fresh(&c, 0, "new").is_some());
    }

    #[test]
    fn flush_one_user_in_every_passdb_ignoring_case_or_everyone() {
        let clock = Clock::manual(0);
        let c = cache(&clock);
        c.put(c.generation(), 0, "Alice@example.org", &found("pw"));
        c.put(c.generation(), 1, "alice@example.org", &found("pw"));
        c.put(c.generation(), 0, "bob@example.org", &found("pw"));
        assert_eq!(c.flush(Some("ALICE@example.org")), 2);
        assert_eq!(c.len(), 1);
        assert!(c.stale(0, "Alice@example.org", &DOWN()).is_none());
        assert_eq!(c.flush(None), 1);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    /// Run on a current-thread runtime: the futures here never wait.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn through_the_cache_temporary_failures_are_never_cached() {
        let clock = Clock::manual(0);
        let c = cache(&clock);
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let ask = |answer: Result<Lookup, PassdbError>| {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { answer }
        };
        let through =
            |answer| block_on(lookup_through(Some(&c), 0, "sqlite", "alice", ask(answer)));
        // Never seen and the backend down: the failure, as without a cache.
        assert!(matches!(
            through(Err(DOWN())),
            Err(PassdbError::Unavailable(_))
        ));
        assert!(c.is_empty(), "a failure is not remembered");
        let (l, used) = through(Ok(found("one"))).unwrap();
        assert_eq!(
            (plaintext(&l), used),
            (b"one".to_vec(), Some(LookupUse::Miss))
        );
        // Fresh: the backend is not asked (its answer would be an error).
        let before = asked.load(std::sync::atomic::Ordering::SeqCst);
        let (_, used) = block_on(lookup_through(Some(&c), 0, "sqlite", "alice", async {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(DOWN())
        }))
        .unwrap();
        assert_eq!(used, Some(LookupUse::Hit));
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), before);
        clock.advance(Duration::from_secs(61));
        let (l, used) = through(Err(PassdbError::Timeout)).unwrap();
        assert_eq!(
            (plaintext(&l), used),
            (b"one".to_vec(), Some(LookupUse::Stale))
        );
        // Serving stale did not refresh the record: still stale, still there.
        assert_eq!(fresh(&c, 0, "alice"), None);
        // A real answer after the outage replaces it.
        let (l, used) = through(Ok(found("two"))).unwrap();
        assert_eq!(
            (plaintext(&l), used),
            (b"two".to_vec(), Some(LookupUse::Miss))
        );
        assert_eq!(fresh(&c, 0, "alice").as_deref(), Some(&b"two"[..]));
        // Without a cache: the backend, always.
        let (_, used) = block_on(lookup_through(None, 0, "sqlite", "alice", async {
            Ok(found("x"))
        }))
        .unwrap();
        assert_eq!(used, None);
    }

    /// An account locked in the database (its stored password made unusable)
    /// fails at its next login; the old good record must not answer for it
    /// in a later outage.
    #[test]
    fn an_answer_that_is_not_an_outage_drops_the_record() {
        let clock = Clock::manual(0);
        let c = cache(&clock);
        let through = |answer: Result<Lookup, PassdbError>| {
            block_on(lookup_through(Some(&c), 0, "sqlite", "alice", async {
                answer
            }))
        };
        through(Ok(found("one"))).unwrap();
        clock.advance(Duration::from_secs(61));
        assert!(matches!(
            through(Err(PassdbError::BadStoredPassword("locked".into()))),
            Err(PassdbError::BadStoredPassword(_))
        ));
        assert!(c.is_empty(), "the old record is gone");
        assert!(
            matches!(through(Err(DOWN())), Err(PassdbError::Unavailable(_))),
            "no stale answer for a locked account"
        );
    }

    /// `user disable` flushes while a lookup that read the old row is under
    /// way: that lookup's answer is used once but not stored, so the next
    /// login reads the database again.
    #[test]
    fn a_flush_during_a_lookup_keeps_its_answer_out() {
        let clock = Clock::manual(0);
        let c = cache(&clock);
        let (l, used) = block_on(lookup_through(Some(&c), 0, "sqlite", "alice", async {
            // The row was read before the admin's change; the flush for it
            // arrives before the answer.
            c.flush(Some("alice"));
            Ok(found("old"))
        }))
        .unwrap();
        assert_eq!(
            (plaintext(&l), used),
            (b"old".to_vec(), Some(LookupUse::Miss))
        );
        assert!(c.is_empty(), "not stored");
        let g = c.generation();
        c.put(g, 0, "alice", &found("new"));
        assert_eq!(fresh(&c, 0, "alice").as_deref(), Some(&b"new"[..]));
        c.flush(None);
        assert!(c.generation() > g, "a full flush raises it too");
        c.put(g, 0, "alice", &found("old"));
        assert!(c.is_empty(), "an answer asked before the full flush");
    }
}
