//! [`Rehasher`]: what the request path calls ([`Rehasher::offer`]: judge,
//! remember, queue) and the one background thread that hashes and writes.

use std::collections::HashMap;
use std::fmt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{judge, Judgement, PasswdFileStore, RehashError, RehashPolicy};
use crate::lookup_cache::LookupCache;
use crate::passdb::{parse_stored, AnyPassdb};
use crate::scheme::{hash_at, Scheme, StoredPassword};
use crate::secret::Secret;

/// A user is queued at most once per this window (also after a failure).
pub const WINDOW: Duration = Duration::from_secs(3600);
/// Jobs waiting at most; a login that finds the queue full is not rehashed.
pub const QUEUE: usize = 64;
/// Users remembered at most; past it (after dropping expired ones) nobody new
/// is queued until the window frees places.
const MAX_RECENT: usize = 100_000;

/// Where one passdb's stored passwords are read back and replaced.
pub trait Store: Send + Sync + fmt::Debug {
    /// The stored value of `user` now (`None`: no such user any more).
    fn current(&self, user: &str) -> Result<Option<String>, StoreError>;
    /// Replaces `old` by `new` only if `user`'s stored value is still `old`:
    /// `Ok(false)` when it changed meanwhile (the change wins).
    fn replace(&self, user: &str, old: &str, new: &str) -> Result<bool, StoreError>;
}

/// A write-back that failed (logged; the login it came from is not affected).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite.
    #[cfg(feature = "sqlite")]
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file operation on the passwd-file.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// What was done.
        what: &'static str,
        /// To which file.
        path: std::path::PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A SQL server.
    #[error("{0}")]
    Sql(String),
    /// The new hash could not be made.
    #[error(transparent)]
    Hash(#[from] crate::scheme::SchemeError),
}

/// Called with the user name after the new hash is made and before it is
/// written (tests pause the worker there to race a `user passwd`).
pub type Hook = Arc<dyn Fn(&str) + Send + Sync>;

struct Job {
    db: usize,
    user: String,
    /// Of the stored hash the login verified.
    fingerprint: [u8; 32],
    /// The password(s) of that login, wiped when the job is done.
    passwords: Vec<Secret>,
}

/// The transparent rehash of a passdb chain (see [`super`]).
pub struct Rehasher {
    policy: RehashPolicy,
    /// One per passdb of the chain; `None`: left alone there.
    stores: Arc<Vec<Option<Arc<dyn Store>>>>,
    queue: SyncSender<Job>,
    recent: Mutex<HashMap<(usize, String), Instant>>,
    /// The credential lookup cache whose record of a user the worker drops
    /// once it has looked at the stored value again (written or changed).
    forget: Arc<OnceLock<Arc<LookupCache>>>,
}

impl fmt::Debug for Rehasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rehasher")
            .field("policy", &self.policy)
            .field("stores", &self.stores)
            .finish_non_exhaustive()
    }
}

/// The writer of passdb `db` (opened from `uri`), if it has one.
fn open_store(
    uri: &str,
    db: &AnyPassdb,
    policy: &RehashPolicy,
) -> Result<Option<Arc<dyn Store>>, RehashError> {
    fn shared(s: impl Store + 'static) -> Arc<dyn Store> {
        Arc::new(s)
    }
    Ok(match db {
        #[cfg(feature = "sqlite")]
        AnyPassdb::Sqlite(_) => uri
            .strip_prefix("sqlite:")
            .map(|p| shared(super::SqliteStore::new(p.as_ref()))),
        AnyPassdb::PasswdFile(_) if policy.passwd_file => uri
            .strip_prefix("passwd-file:")
            .map(|p| shared(PasswdFileStore::new(p.as_ref()))),
        #[cfg(feature = "postgres")]
        AnyPassdb::Postgres(_) => {
            super::SqlStore::for_passdb(db, uri, policy.update_query.as_deref())?.map(shared)
        }
        #[cfg(feature = "mysql")]
        AnyPassdb::Mysql(_) => {
            super::SqlStore::for_passdb(db, uri, policy.update_query.as_deref())?.map(shared)
        }
        _ => None,
    })
}

/// Which writer serves `uri`, or why none does (for check-config).
pub(super) fn store_kind(
    uri: &str,
    passwd_file: bool,
    custom_sql: bool,
) -> Result<&'static str, &'static str> {
    if uri.starts_with("sqlite:") {
        Ok("sqlite: UPDATE … WHERE password = <old>")
    } else if uri.starts_with("passwd-file:") {
        if passwd_file {
            Ok("passwd-file rewritten by atomic rename")
        } else {
            Err("rehash_passwd_file is off")
        }
    } else if ["postgres://", "postgresql://", "mysql://", "mariadb://"]
        .iter()
        .any(|p| uri.starts_with(p))
    {
        if custom_sql {
            Err("a custom password_query needs update_query")
        } else {
            Ok("SQL: update_query, compare-and-set on %{old_hash}")
        }
    } else {
        Err("this passdb cannot be written (or stores no hash we check)")
    }
}

impl Rehasher {
    /// Opens a writer for each of `passdbs` (opened from `uris`) that can
    /// have one, and starts the worker thread. The thread ends when the
    /// rehasher is dropped (a reload replaces it) and its queue is done.
    pub fn start(
        policy: RehashPolicy,
        default_scheme: Option<Scheme>,
        uris: &[String],
        passdbs: &[AnyPassdb],
    ) -> Result<Rehasher, RehashError> {
        Self::start_with_hook(policy, default_scheme, uris, passdbs, test_gate())
    }

    /// [`Rehasher::start`] with a [`Hook`] before every write.
    pub fn start_with_hook(
        policy: RehashPolicy,
        default_scheme: Option<Scheme>,
        uris: &[String],
        passdbs: &[AnyPassdb],
        hook: Option<Hook>,
    ) -> Result<Rehasher, RehashError> {
        let mut stores: Vec<Option<Arc<dyn Store>>> = Vec::new();
        for (uri, db) in uris.iter().zip(passdbs) {
            let store = open_store(uri, db, &policy)?;
            stores.push(store);
        }
        let stores = Arc::new(stores);
        let (queue, jobs) = sync_channel(QUEUE);
        let forget = Arc::new(OnceLock::new());
        let worker = Worker {
            policy: policy.clone(),
            default_scheme,
            stores: Arc::clone(&stores),
            hook,
            forget: Arc::clone(&forget),
        };
        std::thread::Builder::new()
            .name("rehash".into())
            .spawn(move || worker.run(jobs))
            .map_err(RehashError::Thread)?;
        Ok(Rehasher {
            policy,
            stores,
            queue,
            recent: Mutex::new(HashMap::new()),
            forget,
        })
    }

    /// After each job the worker drops the user's record from `cache`: the
    /// stored value was just rewritten, or found changed.
    pub fn forget_in(&self, cache: Arc<LookupCache>) {
        let _ = self.forget.set(cache);
    }

    /// After `passwords` of `user` matched `stored` in passdb number `db`:
    /// queues a rehash when one is due, and says to which scheme (for the
    /// audit line's `rehash=`). Never blocks and never fails the login.
    pub fn offer(
        &self,
        db: usize,
        user: &str,
        stored: &StoredPassword,
        passwords: &[Secret],
    ) -> Option<Scheme> {
        self.stores.get(db)?.as_ref()?;
        if judge(stored, &self.policy.target, self.policy.plain) != Judgement::Upgrade {
            return None;
        }
        let key = (db, user.to_owned());
        {
            let mut recent = crate::sync::lock(&self.recent);
            let now = Instant::now();
            if recent
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < WINDOW)
            {
                return None;
            }
            if recent.len() >= MAX_RECENT {
                recent.retain(|_, t| now.duration_since(*t) < WINDOW);
                if recent.len() >= MAX_RECENT {
                    log::warn!("rehash: {MAX_RECENT} users within the hour; {user} not queued");
                    return None;
                }
            }
            recent.insert(key.clone(), now);
        }
        let job = Job {
            db,
            user: user.to_owned(),
            fingerprint: stored.fingerprint(),
            passwords: passwords.to_vec(),
        };
        match self.queue.try_send(job) {
            Ok(()) => Some(self.policy.target.scheme),
            Err(e) => {
                let why = match e {
                    TrySendError::Full(_) => "queue full",
                    TrySendError::Disconnected(_) => "worker gone",
                };
                log::warn!("rehash: {why}, {user} not rehashed this time");
                // Not rehashed: a later login may try again.
                crate::sync::lock(&self.recent).remove(&key);
                None
            }
        }
    }
}

/// The worker thread's state.
struct Worker {
    policy: RehashPolicy,
    default_scheme: Option<Scheme>,
    stores: Arc<Vec<Option<Arc<dyn Store>>>>,
    hook: Option<Hook>,
    forget: Arc<OnceLock<Arc<LookupCache>>>,
}

impl Worker {
    fn run(self, jobs: Receiver<Job>) {
        for job in jobs {
            let Some(Some(store)) = self.stores.get(job.db) else {
                continue;
            };
            match self.rehash(store.as_ref(), &job) {
                Ok(msg) => {
                    log::info!("rehash: {}: {msg}", job.user);
                    // Rewritten, changed or gone: the cached record is old.
                    if let Some(cache) = self.forget.get() {
                        cache.forget(job.db, &job.user);
                    }
                }
                // Nothing was written: the cached record is still what is
                // stored, and it may be all that answers while the passdb
                // is down.
                Err(e) => log::error!("rehash: {}: failed: {e}", job.user),
            }
        }
    }

    /// Reads the stored value again, checks it is still the one the login
    /// verified, hashes, and writes with a compare-and-set.
    fn rehash(&self, store: &dyn Store, job: &Job) -> Result<String, StoreError> {
        let Some(old) = store.current(&job.user)? else {
            return Ok("gone meanwhile, left alone".into());
        };
        let Ok(stored) = parse_stored(&old, self.default_scheme) else {
            return Ok("stored value no longer readable, left alone".into());
        };
        if stored.fingerprint() != job.fingerprint {
            return Ok("password changed since the login, left alone".into());
        }
        if judge(&stored, &self.policy.target, self.policy.plain) != Judgement::Upgrade {
            return Ok("no upgrade needed".into());
        }
        let from = stored.scheme();
        let Some(password) = job
            .passwords
            .iter()
            .find(|p| stored.verify(p.expose()).unwrap_or(false))
        else {
            return Ok("password no longer matches, left alone".into());
        };
        let target = self.policy.target;
        let new = hash_at(target.scheme, password.expose(), target.cost)?;
        if let Some(hook) = &self.hook {
            hook(&job.user);
        }
        Ok(if store.replace(&job.user, &old, &new)? {
            format!(
                "upgraded from {{{from}}} to {{{}}} {}",
                target.scheme, target.cost
            )
        } else {
            "changed meanwhile (the change wins), left alone".into()
        })
    }
}

/// Debug builds only: with `NGINX_AUTH_FCGI_TEST_REHASH_GATE=DIR`, the
/// worker creates `DIR/USER.held` before each write and waits (at most a
/// minute) for `DIR/USER.go`, so an end-to-end test can change the password
/// in between and see the compare-and-set keep the change.
fn test_gate() -> Option<Hook> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let dir = std::path::PathBuf::from(std::env::var_os("NGINX_AUTH_FCGI_TEST_REHASH_GATE")?);
    Some(Arc::new(move |user: &str| {
        let _ = std::fs::write(dir.join(format!("{user}.held")), b"");
        let go = dir.join(format!("{user}.go"));
        let until = Instant::now() + Duration::from_secs(60);
        while !go.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }))
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use std::sync::mpsc::channel;

    use super::*;
    use crate::passdb::rehash::SqliteStore;
    use crate::passdb::sqlite::Admin;
    use crate::scheme::{hash, hash_at, Cost};

    fn stored(admin_path: &std::path::Path, user: &str) -> String {
        SqliteStore::new(admin_path).current(user).unwrap().unwrap()
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < until, "waited 30 s for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn upgrades_once_per_window_and_a_concurrent_passwd_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.db");
        let admin = Admin::open(&path).unwrap();
        let md5 = hash(Scheme::Md5Crypt, b"pw-md5").unwrap();
        let low = hash_at(Scheme::Sha512Crypt, b"pw-sha", Cost::Rounds(1000)).unwrap();
        admin.add("md5", &md5).unwrap();
        admin.add("sha", &low).unwrap();
        admin.add("racer", &md5).unwrap();
        let uris = vec![format!("sqlite:{}", path.display())];
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let passdbs = vec![AnyPassdb::open(&uris[0], None).unwrap()];
        let policy = RehashPolicy {
            target: "SHA512-CRYPT:rounds=2000".parse().unwrap(),
            passwd_file: false,
            plain: false,
            update_query: None,
        };
        // The hook holds the worker before the write of `racer` until told.
        let (held_tx, held) = channel::<String>();
        let (go, go_rx) = channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let hook: Hook = Arc::new(move |user: &str| {
            if user == "racer" {
                held_tx.send(user.to_owned()).unwrap();
                crate::sync::lock(&go_rx).recv().unwrap();
            }
        });
        let r = Rehasher::start_with_hook(policy, None, &uris, &passdbs, Some(hook)).unwrap();
        let sp = |h: &str| StoredPassword::parse(h, Scheme::Plain).unwrap();
        let pw = |p: &str| vec![Secret::from(p)];

        assert_eq!(
            r.offer(0, "md5", &sp(&md5), &pw("pw-md5")),
            Some(Scheme::Sha512Crypt)
        );
        assert_eq!(
            r.offer(0, "sha", &sp(&low), &pw("pw-sha")),
            Some(Scheme::Sha512Crypt)
        );
        // Once per window: the second login of the hour queues nothing.
        assert_eq!(r.offer(0, "md5", &sp(&md5), &pw("pw-md5")), None);
        // No writer for a passdb number that has none.
        assert_eq!(r.offer(1, "md5", &sp(&md5), &pw("pw-md5")), None);
        for (user, password) in [("md5", "pw-md5"), ("sha", "pw-sha")] {
            wait_for(user, || {
                stored(&path, user).starts_with("{SHA512-CRYPT}$6$rounds=2000$")
            });
            let now = sp(&stored(&path, user));
            assert_eq!(now.cost(), Cost::Rounds(2000));
            assert!(now.verify(password.as_bytes()).unwrap());
        }
        // Current hashes are not queued.
        let upgraded = stored(&path, "sha");
        r.recent.lock().unwrap().clear();
        assert_eq!(r.offer(0, "sha", &sp(&upgraded), &pw("pw-sha")), None);

        // `user passwd` between the worker's read and its write wins.
        assert_eq!(
            r.offer(0, "racer", &sp(&md5), &pw("pw-md5")),
            Some(Scheme::Sha512Crypt)
        );
        assert_eq!(held.recv().unwrap(), "racer");
        let changed = hash(Scheme::BlfCrypt, b"new-pw").unwrap();
        admin.passwd("racer", &changed).unwrap();
        go.send(()).unwrap();
        // The worker is sequential: once a later job is done, so is racer's.
        admin.add("later", &md5).unwrap();
        assert!(r.offer(0, "later", &sp(&md5), &pw("pw-md5")).is_some());
        wait_for("later", || {
            stored(&path, "later").starts_with("{SHA512-CRYPT}")
        });
        assert_eq!(stored(&path, "racer"), changed);

        // A login whose hash changed before the worker read it: left alone.
        admin.add("stale", &md5).unwrap();
        admin.passwd("stale", &changed).unwrap();
        assert!(r.offer(0, "stale", &sp(&md5), &pw("pw-md5")).is_some());
        admin.add("last", &md5).unwrap();
        assert!(r.offer(0, "last", &sp(&md5), &pw("pw-md5")).is_some());
        wait_for("last", || {
            stored(&path, "last").starts_with("{SHA512-CRYPT}")
        });
        assert_eq!(stored(&path, "stale"), changed);
    }
}
