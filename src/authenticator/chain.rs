//! The passdb chain, walked in one place, and password verification through
//! the cache and the bounded verifier.
//!
//! [`Authenticator::walk`] is the only loop that asks the passdbs about a
//! user: an unknown user (or a passdb that cannot serve the question) moves
//! on to the next one, an error is remembered and the walk goes on, and the
//! first real answer decides. Mail PLAIN/LOGIN, CRAM-MD5/APOP, EXTERNAL, HTTP Basic, Digest and
//! Digest `userhash` all ask their question through it, and every stored
//! record it asks for comes through [`Authenticator::fetch`] (the credential
//! lookup cache).

use std::future::Future;

use crate::audit::AuditRecord;
use crate::cache::{CacheUse, Cached};
use crate::lookup_cache::{lookup_through, LookupUse};
use crate::passdb::app_password::Login;
use crate::passdb::{verify_any, AnyPassdb, Lookup, Passdb, PassdbError, Rejection, Verdict};
use crate::scheme::{Scheme, StoredPassword};
use crate::secret::Secret;

use super::Authenticator;

/// One passdb's answer to the walk's question.
pub(crate) enum Answer<T> {
    /// A real answer: the walk ends with it.
    Decide(T),
    /// Not here (unknown user, or this passdb cannot answer): ask the next.
    Next,
}

/// The chain's answer.
pub(crate) enum Walk<T> {
    /// A passdb answered (named for the audit line).
    Decided(T, &'static str),
    /// Nobody knows the user and nothing failed.
    Unknown,
    /// Nobody answered and one passdb failed (the first error).
    Failed(PassdbError),
}

/// What a plaintext check adds to the audit line.
#[derive(Debug, Clone, Default)]
pub(crate) struct CheckNotes {
    /// How the verification cache took part (`None`: not at all).
    pub cache: Option<CacheUse>,
    /// The scheme a rehash was queued to (`upgrade_scheme`).
    pub rehash: Option<Scheme>,
    /// The app password that matched, if one did (its name).
    pub app_password: Option<String>,
}

impl CheckNotes {
    /// Copies the notes into `audit`.
    pub fn record(self, audit: &mut AuditRecord) {
        audit.cache = self.cache;
        audit.rehash = self.rehash;
        audit.app_password = self.app_password;
    }
}

/// Set when a lookup of the walk was answered from a stale cached record
/// (the passdb failed): the audit line says `cache=stale`.
#[derive(Debug, Default)]
pub(crate) struct StaleNote(std::sync::atomic::AtomicBool);

impl StaleNote {
    fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// `Some(CacheUse::Stale)` when a stale record answered.
    pub fn cache_use(&self) -> Option<CacheUse> {
        self.0
            .load(std::sync::atomic::Ordering::Relaxed)
            .then_some(CacheUse::Stale)
    }
}

/// A plaintext check and its notes.
pub(crate) struct Checked {
    pub verdict: Verdict,
    pub notes: CheckNotes,
}

impl Authenticator {
    /// Asks each passdb in order until one gives a real answer.
    pub(crate) async fn walk<'a, T, F, Fut>(&'a self, mut ask: F) -> Walk<T>
    where
        F: FnMut(&'a AnyPassdb) -> Fut,
        Fut: Future<Output = Result<Answer<T>, PassdbError>>,
    {
        let mut failure = None;
        for db in &self.passdbs {
            match ask(db).await {
                Ok(Answer::Decide(t)) => return Walk::Decided(t, db.name()),
                Ok(Answer::Next) => {}
                Err(e) => {
                    log::error!("passdb {}: {e}", db.name());
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) => Walk::Failed(e),
            None => Walk::Unknown,
        }
    }

    /// The stored credential of `user` in `db`, through the credential
    /// lookup cache where the lookup is a round trip ([`crate::lookup_cache`]):
    /// the one place the chain asks a passdb for a record.
    pub(crate) async fn fetch(
        &self,
        db: &AnyPassdb,
        user: &str,
    ) -> Result<(Lookup, Option<LookupUse>), PassdbError> {
        let (cache, index) = match (self.lookup_cache.as_deref(), self.index_of(db)) {
            (Some(c), Some(i)) if db.lookup_is_remote() => (Some(c), i),
            _ => (None, 0),
        };
        lookup_through(cache, index, db.name(), user, db.lookup_credentials(user)).await
    }

    /// The stored credential of `user` in `db`, for the walk: an unknown
    /// user, or a passdb that cannot hand credentials out, moves on. A
    /// stale record (the passdb failed) is noted in `stale`.
    pub(crate) async fn lookup(
        &self,
        db: &AnyPassdb,
        user: &str,
        stale: &StaleNote,
    ) -> Result<Answer<Lookup>, PassdbError> {
        if !db.capabilities().lookup_credentials {
            return Ok(Answer::Next);
        }
        let (found, used) = self.fetch(db, user).await?;
        if used == Some(LookupUse::Stale) {
            stale.set();
        }
        Ok(match found {
            Lookup::Rejected(Rejection::UnknownUser) => Answer::Next,
            found => Answer::Decide(found),
        })
    }

    /// Checks plaintext `passwords` of `user` in `db`, for the walk.
    ///
    /// A passdb that can hand out the stored credential is asked for it
    /// (cheap), and the check happens here: expensive schemes through the
    /// verification cache and then the bounded verifier, cheap ones inline.
    /// Other passdbs (saslauthd, Dovecot auth, LDAP bind) check remotely.
    pub(crate) async fn verify_plain(
        &self,
        db: &AnyPassdb,
        user: &str,
        passwords: &[Secret],
        login: &Login<'_>,
    ) -> Result<Answer<Checked>, PassdbError> {
        let checked = if db.capabilities().lookup_credentials {
            let (found, used) = self.fetch(db, user).await?;
            let mut checked = match found {
                Lookup::Found {
                    principal,
                    secret,
                    apps,
                } => {
                    let mut checked = self
                        .check_found(db, user, principal, &secret, &apps, passwords, login)
                        .await?;
                    // The main password opened the account: worth upgrading,
                    // unless the record is stale (its passdb is down; the
                    // worker could neither read nor write it).
                    let main_ok = matches!(checked.verdict, Verdict::Accepted(_))
                        && checked.notes.app_password.is_none();
                    if main_ok && used != Some(LookupUse::Stale) {
                        checked.notes.rehash = self.offer_rehash(db, user, &secret, passwords);
                    }
                    checked
                }
                Lookup::Rejected(r) => Checked {
                    verdict: Verdict::Rejected(r),
                    notes: CheckNotes::default(),
                },
            };
            if used == Some(LookupUse::Stale) {
                checked.notes.cache = Some(CacheUse::Stale);
            }
            checked
        } else {
            Checked {
                verdict: db.verify_plain(user, passwords).await?,
                notes: CheckNotes::default(),
            }
        };
        Ok(match checked.verdict {
            Verdict::Rejected(Rejection::UnknownUser) => Answer::Next,
            _ => Answer::Decide(checked),
        })
    }

    /// After a successful plaintext check against `stored`: queues a rehash
    /// when `upgrade_scheme` asks for one (see [`crate::passdb::rehash`]).
    pub(super) fn offer_rehash(
        &self,
        db: &AnyPassdb,
        user: &str,
        stored: &StoredPassword,
        passwords: &[Secret],
    ) -> Option<Scheme> {
        let rehash = self.rehash.as_ref()?;
        rehash.offer(self.index_of(db)?, user, stored, passwords)
    }

    /// The position of `db` in the chain (the key of its rehash store and
    /// of its lookup cache entries).
    fn index_of(&self, db: &AnyPassdb) -> Option<usize> {
        self.passdbs.iter().position(|p| std::ptr::eq(p, db))
    }

    /// Whether one of `passwords` matches `stored`, and how the cache helped.
    pub(super) async fn check_stored(
        &self,
        db: &AnyPassdb,
        user: &str,
        stored: &StoredPassword,
        passwords: &[Secret],
    ) -> Result<(bool, Option<CacheUse>), PassdbError> {
        if !stored.scheme().is_expensive() {
            return Ok((verify_any(stored, passwords)?, None));
        }
        let key = self
            .policy
            .cache
            .as_ref()
            .map(|c| (c, c.key(db.name(), user, stored, passwords)));
        if let Some((cache, key)) = &key {
            if let Some(known) = cache.get(key) {
                return Ok((known == Cached::Match, Some(known.into())));
            }
        }
        let (stored2, passwords2) = (stored.clone(), passwords.to_vec());
        let ok = self
            .verifier
            .run(move || verify_any(&stored2, &passwords2))
            .await??;
        let Some((cache, key)) = key else {
            return Ok((ok, None));
        };
        cache.put(key, if ok { Cached::Match } else { Cached::Mismatch });
        Ok((ok, Some(CacheUse::Miss)))
    }
}
