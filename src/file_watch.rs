//! Files re-read off the request path: the passwd-file (and htpasswd) and
//! htdigest passdbs keep their parsed contents in a [`Watched`], and one
//! background thread per file checks it every [`CHECK_INTERVAL`].
//!
//! The thread `stat`s the file; when its modification time, size, inode or
//! device changed it reads and parses the whole file and swaps the new table
//! in at once (a lookup sees the old table or the new one, never a mix).
//! Lookups only clone the current `Arc`: no `stat`, no read, no DNS (passwd-file
//! `host=` names are resolved by the parse, on this thread).
//!
//! A file that cannot be read (vanished, unreadable, a directory) keeps the
//! previous contents; the failure is logged once, and again only when it
//! changes. A file that changes again while it is being read is retried at the
//! next check rather than loaded half-written.
//!
//! The thread holds only a [`Weak`] reference to the contents and the receiving
//! end of a channel whose sender the [`Watched`] owns: dropping the passdb (a
//! configuration reload replaces it) wakes the thread and it ends. A plain
//! `std` thread, so this works whether or not a tokio runtime is entered when
//! the passdb is opened (`check-config`, unit tests, SIGHUP reloads on the
//! blocking pool).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// How often a watched file is checked for changes: an edit takes effect
/// within about this long. One `stat` per file per interval, off the request path.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Parses a whole file into its table.
pub(crate) type Parse<T> = Box<dyn Fn(&[u8]) -> T + Send>;

/// How to turn a file into its table.
pub(crate) struct Loader<T> {
    /// The passdb kind, for logs (`passwd-file`, `htdigest`).
    pub kind: &'static str,
    /// Parses the whole file; logs its own per-line problems.
    pub parse: Parse<T>,
    /// Number of users in a table, for the "reloaded" log line.
    pub users: fn(&T) -> usize,
}

/// A file's parsed contents, kept current by a background thread.
pub(crate) struct Watched<T> {
    shared: Arc<Shared<T>>,
    /// Dropped with the owner: wakes the thread, which then ends.
    _stop: mpsc::Sender<()>,
    /// Strong only inside the thread: gone once the thread has ended.
    thread_alive: Weak<()>,
}

struct Shared<T> {
    path: PathBuf,
    current: RwLock<Arc<T>>,
    /// Tables swapped in since the file was opened.
    reloads: AtomicU64,
    /// Checks completed (changed or not, failed or not).
    checks: AtomicU64,
}

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }
}

/// Why a watched file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// It could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The watched file.
        path: PathBuf,
        /// The error reading it.
        #[source]
        source: std::io::Error,
    },
    /// Its watcher thread could not start.
    #[error("{}: cannot start its watcher: {source}", path.display())]
    Thread {
        /// The watched file.
        path: PathBuf,
        /// The error spawning the thread.
        #[source]
        source: std::io::Error,
    },
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Reads and parses `path` now (an error if it cannot be read), then
    /// starts its watcher thread, checking every `interval`.
    pub(crate) fn open(
        path: &Path,
        loader: Loader<T>,
        interval: Duration,
    ) -> Result<Self, WatchError> {
        let err = |source| WatchError::Read {
            path: path.to_owned(),
            source,
        };
        // Stamp first: a change between the stat and the read is seen at
        // the next check and loaded then.
        let stamp = Stamp::of(&std::fs::metadata(path).map_err(err)?);
        let text = std::fs::read(path).map_err(err)?;
        let shared = Arc::new(Shared {
            path: path.to_owned(),
            current: RwLock::new(Arc::new((loader.parse)(&text))),
            reloads: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        });
        let (stop, stopped) = mpsc::channel();
        let alive = Arc::new(());
        let thread_alive = Arc::downgrade(&alive);
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name(format!("watch {}", loader.kind))
            .spawn(move || {
                let _alive = alive;
                watch(weak, stopped, loader, stamp, interval);
            })
            .map_err(|source| WatchError::Thread {
                path: path.to_owned(),
                source,
            })?;
        Ok(Watched {
            shared,
            _stop: stop,
            thread_alive,
        })
    }

    /// The current contents.
    pub(crate) fn current(&self) -> Arc<T> {
        Arc::clone(&crate::sync::read(&self.shared.current))
    }

    /// Tables swapped in since the file was opened.
    #[cfg(test)]
    pub(crate) fn reloads(&self) -> u64 {
        self.shared.reloads.load(Ordering::SeqCst)
    }

    /// Checks the watcher has completed.
    #[cfg(test)]
    pub(crate) fn checks(&self) -> u64 {
        self.shared.checks.load(Ordering::SeqCst)
    }

    /// Dead once the watcher thread has ended (for tests).
    #[cfg(test)]
    pub(crate) fn thread_alive(&self) -> Weak<()> {
        self.thread_alive.clone()
    }
}

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("path", &self.shared.path)
            .field("reloads", &self.shared.reloads.load(Ordering::Relaxed))
            .field("watching", &(self.thread_alive.strong_count() > 0))
            .finish()
    }
}

/// The watcher thread: every `interval` until the owner is dropped.
fn watch<T>(
    shared: Weak<Shared<T>>,
    stopped: mpsc::Receiver<()>,
    loader: Loader<T>,
    mut loaded: Stamp,
    interval: Duration,
) {
    let mut last_failure: Option<String> = None;
    loop {
        match stopped.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            // The sender is only ever dropped, with its owner.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match check(&shared, &loader, loaded) {
            Ok(now) => {
                loaded = now.unwrap_or(loaded);
                last_failure = None;
            }
            Err(e) => {
                // Logged once per distinct problem, not every interval.
                let e = e.to_string();
                if last_failure.as_deref() != Some(e.as_str()) {
                    log::error!(
                        "{} {}: reload failed, keeping the previous users: {e}",
                        loader.kind,
                        shared.path.display()
                    );
                    last_failure = Some(e);
                }
            }
        }
        shared.checks.fetch_add(1, Ordering::SeqCst);
    }
}

/// One check: `Ok(Some(stamp))` when a new table was swapped in, `Ok(None)`
/// when nothing (usable) changed, `Err` when the file cannot be read.
fn check<T>(
    shared: &Shared<T>,
    loader: &Loader<T>,
    loaded: Stamp,
) -> std::io::Result<Option<Stamp>> {
    let path = &shared.path;
    let now = Stamp::of(&std::fs::metadata(path)?);
    if now == loaded {
        return Ok(None);
    }
    let text = std::fs::read(path)?;
    if std::fs::metadata(path).map(|m| Stamp::of(&m)).ok() != Some(now) {
        // Written to (or replaced) while we read: maybe half a file. The
        // next check reads it again.
        log::debug!(
            "{} {}: changed while being read, trying again",
            loader.kind,
            path.display()
        );
        return Ok(None);
    }
    let table = (loader.parse)(&text);
    log::info!(
        "{} {}: reloaded, {} users",
        loader.kind,
        path.display(),
        (loader.users)(&table)
    );
    *crate::sync::write(&shared.current) = Arc::new(table);
    shared.reloads.fetch_add(1, Ordering::SeqCst);
    Ok(Some(now))
}
