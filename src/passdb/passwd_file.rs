//! Dovecot passwd-file: `user:password:uid:gid:gecos:home:shell:extra_fields`.
//!
//! Only the first two fields and the extra fields matter to us. Extra fields are
//! space-separated `key=value` (or bare `key`): `host=` and `port=` route the user
//! to their own upstream, `user=` renames them towards it, `nologin`/`disabled`
//! refuse them. See <https://doc.dovecot.org/configuration_manual/authentication/passwd_file/>.
//!
//! The file is watched off the request path (see `file_watch`): a
//! background thread checks it every second
//! (`file_watch::CHECK_INTERVAL`, 1 s) and, when its
//! modification time, size or inode changed, reads and parses it (resolving
//! `host=` names) and swaps the new table in, so edits take effect within
//! about a second without a restart. Lookups only read the current table: no
//! `stat`, no read, no DNS. A file that cannot be read keeps the last good
//! table and is logged; bad lines are logged and skipped, as at start-up.
//! Dropping the passdb (a configuration reload replaces it) ends the thread.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{parse_stored, Entry, FileError, Lookup, Passdb, PassdbError};
use super::{Principal, Verdict};
use crate::file_watch::{Loader, Watched, CHECK_INTERVAL};
use crate::scheme::Scheme;
use crate::secret::Secret;

/// A passwd-file passdb.
#[derive(Debug)]
pub struct PasswdFile {
    table: Watched<Table>,
}

#[derive(Debug, Default)]
struct Table {
    users: HashMap<String, Entry>,
}

impl PasswdFile {
    /// Loads `path` and starts watching it. Fails when the file cannot be
    /// read; bad lines are logged and skipped (the users on them cannot log in).
    pub fn open(path: &Path, default_scheme: Option<Scheme>) -> Result<Self, FileError> {
        Self::open_checking_every(path, default_scheme, CHECK_INTERVAL)
    }

    fn open_checking_every(
        path: &Path,
        default_scheme: Option<Scheme>,
        interval: Duration,
    ) -> Result<Self, FileError> {
        let shown: PathBuf = path.to_owned();
        let loader = Loader {
            kind: "passwd-file",
            parse: Box::new(move |text: &[u8]| {
                let (table, problems) = parse(text, default_scheme);
                for p in &problems {
                    log::warn!("passwd-file {}: {p}", shown.display());
                }
                table
            }),
            users: |t: &Table| t.users.len(),
        };
        Ok(PasswdFile {
            table: Watched::open(path, loader, interval).map_err(FileError::Watch)?,
        })
    }

    /// Problems found in the file (for `check-config`).
    pub fn check(path: &Path, default_scheme: Option<Scheme>) -> Result<Vec<String>, FileError> {
        let text = std::fs::read(path).map_err(|source| FileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(parse(&text, default_scheme).1)
    }

    /// Number of users loaded.
    pub fn len(&self) -> usize {
        self.table.current().users.len()
    }

    /// True when no users are loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn entry(&self, user: &str) -> Option<Entry> {
        self.table.current().users.get(user).cloned()
    }
}

impl Passdb for PasswdFile {
    super::common::fixed_identity!("passwd-file", BOTH);
    async fn verify_plain(&self, user: &str, passwords: &[Secret]) -> Result<Verdict, PassdbError> {
        super::verify_entry(self.entry(user), passwords).await
    }
    async fn find_user(
        &self,
        matches: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Option<String>, PassdbError> {
        Ok(self
            .table
            .current()
            .users
            .keys()
            .find(|u| matches(u))
            .cloned())
    }
    async fn lookup_credentials(&self, user: &str) -> Result<Lookup, PassdbError> {
        super::lookup_entry(self.entry(user))
    }
}

/// Parses the whole file. Problems name the line number, never its contents
/// beyond the user name (the rest may be a password).
fn parse(text: &[u8], default_scheme: Option<Scheme>) -> (Table, Vec<String>) {
    parse_with(text, default_scheme, &resolve)
}

/// Parses a whole passwd-file as [`PasswdFile::open`] does, but without DNS:
/// `host=` accepts IP literals only, so arbitrary input never leaves the
/// process. Returns the users and the problems (as [`PasswdFile::check`]
/// reports them); the fuzz oracles and tests use it.
pub fn parse_without_dns(
    text: &[u8],
    default_scheme: Option<Scheme>,
) -> (HashMap<String, Entry>, Vec<String>) {
    let (table, problems) = parse_with(text, default_scheme, &ip_literal);
    (table.users, problems)
}

fn parse_with(
    text: &[u8],
    default_scheme: Option<Scheme>,
    resolve: &dyn Fn(&str) -> Option<IpAddr>,
) -> (Table, Vec<String>) {
    let mut table = Table::default();
    let mut problems = Vec::new();
    for (i, raw) in text.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            problems.push(format!("line {n}: not UTF-8, skipped"));
            continue;
        };
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line, default_scheme, resolve) {
            Ok((user, entry)) => {
                if let Err(e) = &entry.password {
                    problems.push(format!("line {n}: user {user}: {e}"));
                }
                match table.users.entry(user) {
                    std::collections::hash_map::Entry::Occupied(o) => problems.push(format!(
                        "line {n}: duplicate user {}, first one kept",
                        o.key()
                    )),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(entry);
                    }
                }
            }
            Err(why) => problems.push(format!("line {n}: {why}, skipped")),
        }
    }
    (table, problems)
}

/// Why a line was skipped (shown with its number; never the password).
#[derive(Debug, thiserror::Error)]
enum LineError {
    #[error("empty user name")]
    EmptyUser,
    #[error("user {0}: no password field")]
    NoPassword(String),
    #[error("user {0}: bad port={1}")]
    Port(String, String),
    #[error("user {0}: user= holds a control character")]
    ControlInUser(String),
    #[error("user {0}: host={1} does not resolve")]
    Unresolved(String, String),
}

fn parse_line(
    line: &str,
    default_scheme: Option<Scheme>,
    resolve: &dyn Fn(&str) -> Option<IpAddr>,
) -> Result<(String, Entry), LineError> {
    let mut fields = line.splitn(8, ':');
    let user = fields.next().unwrap_or_default();
    if user.is_empty() {
        return Err(LineError::EmptyUser);
    }
    let who = || user.to_owned();
    let password = fields.next().ok_or_else(|| LineError::NoPassword(who()))?;
    let extra = fields.nth(5).unwrap_or_default();
    let mut principal = Principal {
        user: user.to_owned(),
        ..Principal::default()
    };
    let mut enabled = true;
    let mut host: Option<&str> = None;
    for field in extra.split_ascii_whitespace() {
        let (key, value) = field.split_once('=').unwrap_or((field, ""));
        match key {
            "host" => host = Some(value),
            "port" => {
                principal.upstream_port = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| LineError::Port(who(), value.to_owned()))?,
                )
            }
            "user" if !value.is_empty() => {
                // Sent to nginx as the Auth-User header, where a control
                // character cannot go: refuse the line now rather than fail
                // every login of the user later (found by fuzz/passwd_file).
                if value.bytes().any(|b| b.is_ascii_control()) {
                    return Err(LineError::ControlInUser(who()));
                }
                principal.backend_user = Some(value.to_owned())
            }
            "nologin" | "disabled" => {
                enabled = !matches!(value, "" | "y" | "yes" | "1" | "true");
            }
            _ => {}
        }
    }
    if let Some(h) = host {
        principal.upstream_host =
            Some(resolve(h).ok_or_else(|| LineError::Unresolved(who(), h.to_owned()))?);
    }
    let password = parse_stored(password, default_scheme).map_err(Arc::new);
    Ok((
        user.to_owned(),
        Entry {
            principal,
            password,
            enabled,
            digest_ha1: None,
            apps: Default::default(),
        },
    ))
}

/// An IP literal (IPv6 with or without brackets), else a name resolved now, at
/// load time: nginx needs a literal IP and the request path must not do DNS.
pub fn resolve(host: &str) -> Option<IpAddr> {
    if let Some(ip) = ip_literal(host) {
        return Some(ip);
    }
    (unbracket(host), 0)
        .to_socket_addrs()
        .ok()?
        .next()
        .map(|a| a.ip())
}

/// An IP literal (IPv6 with or without brackets); no name resolution.
fn ip_literal(host: &str) -> Option<IpAddr> {
    unbracket(host).parse().ok()
}

fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passdb::Rejection;

    fn table(text: &str) -> (Table, Vec<String>) {
        parse(text.as_bytes(), None)
    }

    #[test]
    fn parses_dovecot_lines_and_extra_fields() {
        let (t, problems) = table(
            "# comment\n\
             alice:{PLAIN}secret::::::\n\
             bob:{PLAIN}x:1000:1000:Bob:/home/bob:/bin/sh:host=192.0.2.5 port=10143 user=bob@internal\n\
             carol:{PLAIN}y::::::nologin\n\
             dave:{PLAIN}z\n\
             v6:{PLAIN}w::::::host=[2001:db8::7]\r\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(t.users.len(), 5);
        let bob = &t.users["bob"].principal;
        assert_eq!(bob.upstream_host, Some("192.0.2.5".parse().unwrap()));
        assert_eq!(bob.upstream_port, Some(10143));
        assert_eq!(bob.backend_user.as_deref(), Some("bob@internal"));
        assert!(!t.users["carol"].enabled);
        assert!(t.users["dave"].enabled && t.users["dave"].password.is_ok());
        assert_eq!(
            t.users["v6"].principal.upstream_host,
            Some("2001:db8::7".parse().unwrap())
        );
    }

    #[test]
    fn bad_lines_are_reported_without_secrets() {
        let (t, problems) = table(
            "nopass\n\
             :{PLAIN}x\n\
             eve:{NOSUCH}topsecret\n\
             frank:barehashvalue\n\
             gina:{PLAIN}a::::::port=99999\n\
             alice:{PLAIN}one\n\
             alice:{PLAIN}two\n",
        );
        assert_eq!(problems.len(), 6, "{problems:?}");
        assert!(problems
            .iter()
            .all(|p| !p.contains("topsecret") && !p.contains("barehashvalue")));
        assert!(
            t.users["eve"].password.is_err(),
            "unknown scheme is kept as unusable"
        );
        assert!(
            t.users["frank"].password.is_err(),
            "no default scheme: refused, not guessed"
        );
        assert!(!t.users.contains_key("gina"));
        let alice = t.users["alice"].password.as_ref().unwrap();
        assert!(alice.verify(b"one").unwrap(), "first duplicate wins");
    }

    static LOG_LINES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

    /// Keeps every log line from now on (a logger set once for this test
    /// binary; no other unit test sets one). Tests filter by their own path.
    fn capture_logs() {
        struct Capture;
        impl log::Log for Capture {
            fn enabled(&self, _: &log::Metadata) -> bool {
                true
            }
            fn log(&self, r: &log::Record) {
                let line = format!("{} {}", r.level(), r.args());
                crate::sync::lock(&LOG_LINES).push(line);
            }
            fn flush(&self) {}
        }
        static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
        ONCE.get_or_init(|| {
            log::set_boxed_logger(Box::new(Capture)).expect("no other logger in unit tests");
            log::set_max_level(log::LevelFilter::Debug);
        });
    }

    /// The captured lines that contain `text`.
    fn logged(text: &str) -> Vec<String> {
        let lines = crate::sync::lock(&LOG_LINES);
        lines.iter().filter(|l| l.contains(text)).cloned().collect()
    }

    /// Polls `done` every 10 ms; panics after a generous 10 s.
    #[track_caller]
    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for two more completed checks: the second began after the
    /// caller's change, so the watcher has seen it.
    #[track_caller]
    fn wait_two_checks(db: &PasswdFile) {
        let seen = db.table.checks();
        wait_until("two more checks", || db.table.checks() >= seen + 2);
    }

    /// Replaces the file by rename, as an editor or admin tool does.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn pw(s: &str) -> Vec<Secret> {
        vec![Secret::from(s)]
    }

    async fn accepts(db: &PasswdFile, user: &str, password: &str) -> bool {
        matches!(
            db.verify_plain(user, &pw(password)).await,
            Ok(Verdict::Accepted(_))
        )
    }

    /// A passwd-file in a fresh directory holding `content`, opened with a
    /// 10 ms check interval, with the log captured.
    fn watched_file(content: &str) -> (tempfile::TempDir, PathBuf, PasswdFile) {
        capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, content).unwrap();
        let db = PasswdFile::open_checking_every(&path, None, Duration::from_millis(10)).unwrap();
        (dir, path, db)
    }

    /// The rejection of a check that completed with one.
    async fn rejected(db: &PasswdFile, user: &str, password: &str) -> Option<Rejection> {
        match db.verify_plain(user, &pw(password)).await {
            Ok(Verdict::Rejected(r)) => Some(r),
            _ => None,
        }
    }

    #[tokio::test]
    async fn verifies_and_picks_up_changes_without_lookups() {
        let (_dir, path, db) = watched_file("alice:{PLAIN}old::::::\n");
        assert!(accepts(&db, "alice", "old").await);
        assert_eq!(
            rejected(&db, "alice", "new").await,
            Some(Rejection::PasswordMismatch)
        );
        assert_eq!(
            rejected(&db, "nobody", "old").await,
            Some(Rejection::UnknownUser)
        );
        // Written in place (same inode), different size: no lookup happens
        // until the watcher has swapped the new table in. (The watcher may
        // also have caught the file truncated and empty, just before the
        // write: then it loads twice.)
        assert_eq!(db.table.reloads(), 0);
        std::fs::write(&path, "alice:{PLAIN}new::::::\nbob:{PLAIN}b::::::\n").unwrap();
        wait_until("the watcher reloads", || db.len() == 2);
        assert!(db.table.reloads() >= 1);
        assert!(accepts(&db, "alice", "new").await);
        let reloaded = format!("passwd-file {}: reloaded, 2 users", path.display());
        assert_eq!(logged(&reloaded).len(), 1, "{:?}", logged(&reloaded));
        // Replaced by rename (new inode, never seen half-written).
        let reloads = db.table.reloads();
        replace(&path, "carol:{PLAIN}c::::::\n");
        wait_until("the watcher reloads again", || {
            db.table.reloads() == reloads + 1
        });
        assert!(accepts(&db, "carol", "c").await);
        assert_eq!(
            rejected(&db, "alice", "new").await,
            Some(Rejection::UnknownUser)
        );
        // Nothing changes: checks go on, no reload.
        wait_two_checks(&db);
        assert_eq!(db.table.reloads(), reloads + 1);
    }

    #[tokio::test]
    async fn lookups_never_stat_or_read_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "alice:{PLAIN}old::::::\n").unwrap();
        // The watcher's first check is an hour away: whatever lookups see
        // comes from the table loaded at open.
        let db = PasswdFile::open_checking_every(&path, None, Duration::from_secs(3600)).unwrap();
        replace(&path, "alice:{PLAIN}new::::::\nbob:{PLAIN}b::::::\n");
        for _ in 0..3 {
            assert!(accepts(&db, "alice", "old").await);
            assert_eq!(
                rejected(&db, "bob", "b").await,
                Some(Rejection::UnknownUser)
            );
            assert!(matches!(
                db.lookup_credentials("alice").await,
                Ok(Lookup::Found { .. })
            ));
            assert_eq!(db.find_user(&|u| u == "bob").await.unwrap(), None);
        }
        assert_eq!(db.len(), 1);
        assert_eq!((db.table.reloads(), db.table.checks()), (0, 0));
    }

    #[tokio::test]
    async fn unreadable_vanished_or_broken_files_keep_the_previous_users() {
        let (_dir, path, db) = watched_file("alice:{PLAIN}a::::::\n");
        let failed = format!(
            "passwd-file {}: reload failed, keeping the previous users",
            path.display()
        );

        // Unreadable: a directory where the file was (mode bits would not
        // stop root).
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        wait_two_checks(&db);
        wait_two_checks(&db);
        assert!(accepts(&db, "alice", "a").await);
        assert_eq!(db.table.reloads(), 0);
        let lines = logged(&failed);
        assert_eq!(lines.len(), 1, "logged once, not every check: {lines:?}");
        assert!(lines[0].starts_with("ERROR"), "{lines:?}");

        // Vanished.
        std::fs::remove_dir(&path).unwrap();
        wait_two_checks(&db);
        assert!(accepts(&db, "alice", "a").await);
        assert_eq!(db.table.reloads(), 0);
        let lines = logged(&failed);
        assert_eq!(lines.len(), 2, "a new problem is logged: {lines:?}");

        // Back, with a bad line: that line is logged and skipped, the rest
        // is loaded (as at start-up).
        replace(&path, "nopass\nbob:{PLAIN}b::::::\n");
        wait_until("the file is back", || db.table.reloads() == 1);
        assert!(accepts(&db, "bob", "b").await);
        assert!(!accepts(&db, "alice", "a").await);
        let bad_line = format!(
            "WARN passwd-file {}: line 1: user nopass: no password field, skipped",
            path.display()
        );
        assert_eq!(logged(&bad_line), vec![bad_line]);
    }

    #[test]
    fn dropping_the_passdb_ends_its_watcher() {
        // No runtime at all, and a check interval of an hour: the watcher
        // ends because its owner went away, not because a check came round.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "alice:{PLAIN}a::::::\n").unwrap();
        let db = PasswdFile::open_checking_every(&path, None, Duration::from_secs(3600)).unwrap();
        let alive = db.table.thread_alive();
        assert!(alive.upgrade().is_some(), "the watcher runs");
        drop(db);
        wait_until("the watcher thread ends", || alive.upgrade().is_none());
    }

    #[tokio::test]
    async fn disabled_and_unusable_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "carol:{PLAIN}c::::::nologin\neve:{NOSUCH}x\n").unwrap();
        let db = PasswdFile::open(&path, None).unwrap();
        assert!(matches!(
            db.verify_plain("carol", &[Secret::from("c")]).await,
            Ok(Verdict::Rejected(Rejection::Disabled))
        ));
        assert!(matches!(
            db.verify_plain("eve", &[Secret::from("x")]).await,
            Err(PassdbError::BadStoredPassword(_))
        ));
    }
}
