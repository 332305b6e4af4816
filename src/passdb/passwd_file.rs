//! Dovecot passwd-file: `user:password:uid:gid:gecos:home:shell:extra_fields`.
//!
//! Only the first two fields and the extra fields matter to us. Extra fields are
//! space-separated `key=value` (or bare `key`): `host=` and `port=` route the user
//! to their own upstream, `user=` renames them towards it, `nologin`/`disabled`
//! refuse them. See <https://doc.dovecot.org/configuration_manual/authentication/passwd_file/>.
//!
//! The file is re-read when its modification time, size or inode changes,
//! checked with one `stat` per lookup, so edits take effect without a restart.
//! A file that cannot be read keeps the last good table and is logged.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::{parse_stored, Capabilities, Entry, Lookup, Passdb, PassdbError, Principal, Verdict};
use crate::scheme::Scheme;
use crate::secret::Secret;

/// A passwd-file passdb.
#[derive(Debug)]
pub struct PasswdFile {
    path: PathBuf,
    default_scheme: Option<Scheme>,
    table: RwLock<Arc<Table>>,
    /// Serialises reloads; holds the stamp of the loaded file.
    stamp: Mutex<Option<Stamp>>,
}

#[derive(Debug, Default)]
struct Table {
    users: HashMap<String, Entry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: i64,
    mtime_nsec: i64,
    len: u64,
    ino: u64,
}

impl PasswdFile {
    /// Loads `path`. Fails when the file cannot be read; bad lines are logged
    /// and skipped (the users on them cannot log in).
    pub fn open(path: &Path, default_scheme: Option<Scheme>) -> Result<Self, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (table, problems) = parse(&text, default_scheme);
        for p in &problems {
            log::warn!("passwd-file {}: {p}", path.display());
        }
        Ok(PasswdFile {
            path: path.to_owned(),
            default_scheme,
            table: RwLock::new(Arc::new(table)),
            stamp: Mutex::new(Some(stamp(&meta))),
        })
    }

    /// Problems found in the file (for `check-config`).
    pub fn check(path: &Path, default_scheme: Option<Scheme>) -> Result<Vec<String>, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(parse(&text, default_scheme).1)
    }

    /// Number of users loaded.
    pub fn len(&self) -> usize {
        self.current().users.len()
    }

    /// True when no users are loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the file if it changed since the last load.
    fn refresh(&self) {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            // Vanished (e.g. replaced by rename in progress): keep the last table.
            return;
        };
        let now = stamp(&meta);
        let mut loaded = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == Some(now) {
            return;
        }
        match std::fs::read(&self.path) {
            Ok(text) => {
                let (table, problems) = parse(&text, self.default_scheme);
                for p in &problems {
                    log::warn!("passwd-file {}: {p}", self.path.display());
                }
                log::info!(
                    "passwd-file {}: reloaded, {} users",
                    self.path.display(),
                    table.users.len()
                );
                *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
                *loaded = Some(now);
            }
            Err(e) => log::error!(
                "passwd-file {}: reload failed, keeping the previous users: {e}",
                self.path.display()
            ),
        }
    }

    fn entry(&self, user: &str) -> Option<Entry> {
        self.refresh();
        self.current().users.get(user).cloned()
    }
}

fn stamp(m: &std::fs::Metadata) -> Stamp {
    Stamp {
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        len: m.len(),
        ino: m.ino(),
    }
}

impl Passdb for PasswdFile {
    fn name(&self) -> &'static str {
        "passwd-file"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            verify_plain: true,
            lookup_credentials: true,
        }
    }
    async fn verify_plain(&self, user: &str, passwords: &[Secret]) -> Result<Verdict, PassdbError> {
        super::verify_entry(self.entry(user), passwords).await
    }
    async fn find_user(
        &self,
        matches: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Option<String>, PassdbError> {
        self.refresh();
        Ok(self.current().users.keys().find(|u| matches(u)).cloned())
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

/// [`parse`] without DNS: `host=` accepts IP literals only, so arbitrary input
/// never leaves the process. For the fuzz target and its replay test
/// (`crate::fuzz_api`), which need the users and problems of a file.
#[doc(hidden)]
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

fn parse_line(
    line: &str,
    default_scheme: Option<Scheme>,
    resolve: &dyn Fn(&str) -> Option<IpAddr>,
) -> Result<(String, Entry), String> {
    let mut fields = line.splitn(8, ':');
    let user = fields.next().unwrap_or_default();
    if user.is_empty() {
        return Err("empty user name".into());
    }
    let password = fields
        .next()
        .ok_or_else(|| format!("user {user}: no password field"))?;
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
                        .ok_or_else(|| format!("user {user}: bad port={value}"))?,
                )
            }
            "user" if !value.is_empty() => {
                // Sent to nginx as the Auth-User header, where a control
                // character cannot go: refuse the line now rather than fail
                // every login of the user later (found by fuzz/passwd_file).
                if value.bytes().any(|b| b.is_ascii_control()) {
                    return Err(format!("user {user}: user= holds a control character"));
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
            Some(resolve(h).ok_or_else(|| format!("user {user}: host={h} does not resolve"))?);
    }
    let password = parse_stored(password, default_scheme).map_err(Arc::new);
    Ok((
        user.to_owned(),
        Entry {
            principal,
            password,
            enabled,
            digest_ha1: None,
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

    #[tokio::test]
    async fn verifies_and_reloads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "alice:{PLAIN}old::::::\n").unwrap();
        let db = PasswdFile::open(&path, None).unwrap();
        let pw = |s: &str| vec![Secret::from(s)];
        assert!(matches!(
            db.verify_plain("alice", &pw("old")).await,
            Ok(Verdict::Accepted(_))
        ));
        assert!(matches!(
            db.verify_plain("alice", &pw("new")).await,
            Ok(Verdict::Rejected(Rejection::PasswordMismatch))
        ));
        assert!(matches!(
            db.verify_plain("nobody", &pw("old")).await,
            Ok(Verdict::Rejected(Rejection::UnknownUser))
        ));
        // Different size, so the change is seen even within one mtime tick.
        std::fs::write(&path, "alice:{PLAIN}new::::::\nbob:{PLAIN}b::::::\n").unwrap();
        assert!(matches!(
            db.verify_plain("alice", &pw("new")).await,
            Ok(Verdict::Accepted(_))
        ));
        assert_eq!(db.len(), 2);
        // A vanished file keeps the last good table.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            db.verify_plain("bob", &pw("b")).await,
            Ok(Verdict::Accepted(_))
        ));
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
