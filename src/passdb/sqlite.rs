//! SQLite passdb with a built-in schema: the embedded default, needing no
//! database server. The schema is created on first start; the `user …` admin
//! commands edit it while the service runs (WAL mode: readers never block the
//! writer, and every lookup sees the last committed edit, no restart needed).
//!
//! rusqlite blocks, so every query runs on tokio's blocking pool, each on a
//! connection taken from a small pool.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::app_password::{self, sqlite::LastUsed};
use super::{
    parse_stored, passwd_file::resolve, Entry, Lookup, Passdb, PassdbError, Principal, Verdict,
};
use crate::scheme::Scheme;
use crate::secret::Secret;
use crate::sync::lock;

/// The built-in schema. `domain` is derived from the user name at insert time
/// so per-domain queries stay cheap.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    username      TEXT PRIMARY KEY NOT NULL,
    domain        TEXT NOT NULL DEFAULT '',
    password      TEXT NOT NULL,
    enabled       INTEGER NOT NULL DEFAULT 1,
    upstream_host TEXT,
    upstream_port INTEGER CHECK (upstream_port IS NULL OR upstream_port BETWEEN 1 AND 65535),
    backend_user  TEXT,
    created_at    TEXT NOT NULL DEFAULT (datetime('now')),
    updated_at    TEXT NOT NULL DEFAULT (datetime('now'))
);
CREATE INDEX IF NOT EXISTS users_domain ON users(domain);
";

const LOOKUP: &str = "SELECT password, enabled, upstream_host, upstream_port, backend_user \
                      FROM users WHERE username = ?1";

/// Waits this long for a writer's lock before giving up (then: temporary failure).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A SQLite passdb.
#[derive(Debug)]
pub struct Sqlite {
    path: PathBuf,
    default_scheme: Option<Scheme>,
    pool: Arc<Mutex<Vec<Connection>>>,
    /// Records when app passwords were last used, off the request path.
    last_used: LastUsed,
}

/// A database error of the admin commands or at open.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// SQLite said no.
    #[error("{0}")]
    Db(#[from] rusqlite::Error),
    /// The user does not exist.
    #[error("no such user `{0}`")]
    NoSuchUser(String),
    /// The user exists already.
    #[error("user `{0}` exists already")]
    Exists(String),
    /// The user has an app password of that name already.
    #[error("app password `{0}` exists already")]
    AppPasswordExists(String),
    /// The user has no app password of that name.
    #[error("no such app password `{0}`")]
    NoSuchAppPassword(String),
    /// The database file or its directory could not be created.
    #[error("creating {}: {source}", path.display())]
    Create {
        /// The database file.
        path: PathBuf,
        /// What the filesystem said.
        #[source]
        source: std::io::Error,
    },
}

/// Opens (creating if needed) the database and its schema, in WAL mode.
pub fn open_rw(path: &Path) -> Result<Connection, SqliteError> {
    // A new database is private (0600 in a 0700 directory); its -wal and
    // -shm files take its mode.
    super::private_file::create_private(path, None).map_err(|source| SqliteError::Create {
        path: path.to_owned(),
        source,
    })?;
    // Openers racing on a new database (the daemon and a `user` command)
    // can meet SQLITE_BUSY where SQLite does not call the busy handler (the
    // switch to WAL, WAL recovery): try again for up to the busy timeout.
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match open_schema(path) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return Ok(r?),
        }
    }
}

fn open_schema(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(SCHEMA)?;
    super::app_password::sqlite::migrate(&conn)?;
    Ok(conn)
}

fn open_ro(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The query planner stability guarantee: plans never depend on the
    // bound user name, so cached lookups are not re-prepared on every
    // execution (the app-password join was, costing 31% of SQLite req/s).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}

impl Sqlite {
    /// Opens the database, creating it and its schema on first start.
    pub fn open(path: &Path, default_scheme: Option<Scheme>) -> Result<Self, SqliteError> {
        drop(open_rw(path)?);
        Ok(Sqlite {
            path: path.to_owned(),
            default_scheme,
            pool: Arc::new(Mutex::new(Vec::new())),
            last_used: LastUsed::new(path),
        })
    }

    async fn entry(&self, user: &str) -> Result<Option<Entry>, PassdbError> {
        let path = self.path.clone();
        let pool = self.pool.clone();
        let user = user.to_owned();
        let default_scheme = self.default_scheme;
        tokio::task::spawn_blocking(move || {
            let conn = lock(&pool).pop();
            let conn = match conn {
                Some(c) => c,
                None => open_ro(&path).map_err(unavailable)?,
            };
            let row = conn
                .prepare_cached(LOOKUP)
                .and_then(|mut st| {
                    st.query_row(params![user], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                            r.get::<_, Option<String>>(4)?,
                        ))
                    })
                    .optional()
                })
                .and_then(|row| match row {
                    Some(row) => Ok(Some((row, app_password::sqlite::load(&conn, &user)?))),
                    None => Ok(None),
                })
                .map_err(unavailable);
            // Return healthy connections to the pool; a failed one is dropped.
            if row.is_ok() {
                lock(&pool).push(conn);
            }
            let Some(((password, enabled, host, port, backend_user), apps)) = row? else {
                return Ok(None);
            };
            let upstream_host: Option<IpAddr> = match host.as_deref().filter(|h| !h.is_empty()) {
                None => None,
                Some(h) => Some(resolve(h).ok_or_else(|| {
                    PassdbError::Unavailable(format!("upstream_host of {user} does not resolve"))
                })?),
            };
            Ok(Some(Entry {
                principal: Principal {
                    user: user.clone(),
                    upstream_host,
                    upstream_port: port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0),
                    backend_user: backend_user.filter(|b| !b.is_empty()),
                },
                password: parse_stored(&password, default_scheme).map_err(Arc::new),
                enabled: enabled != 0,
                digest_ha1: None,
                apps,
            }))
        })
        .await
        .map_err(|e| PassdbError::Unavailable(format!("sqlite task failed: {e}")))?
    }
}

fn unavailable(e: rusqlite::Error) -> PassdbError {
    PassdbError::Unavailable(format!("sqlite: {e}"))
}

impl Passdb for Sqlite {
    super::common::fixed_identity!("sqlite", BOTH);
    async fn verify_plain(&self, user: &str, passwords: &[Secret]) -> Result<Verdict, PassdbError> {
        super::verify_entry(self.entry(user).await?, passwords).await
    }
    async fn lookup_credentials(&self, user: &str) -> Result<Lookup, PassdbError> {
        super::lookup_entry(self.entry(user).await?)
    }
    fn app_password_used(&self, user: &str, name: &str, ip: Option<IpAddr>) {
        self.last_used.record(user, name, ip);
    }
}

/// A row as `user list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// The login name.
    pub username: String,
    /// Scheme name of the stored password (`{SHA512-CRYPT}` …) — never the hash.
    pub scheme: String,
    /// Whether the user may log in.
    pub enabled: bool,
    /// Per-user upstream, `host:port`, if set.
    pub upstream: Option<String>,
}

/// Admin operations on the built-in schema (`nginx-auth-fcgi user …`).
pub struct Admin {
    conn: Connection,
}

impl Admin {
    /// Opens the database read-write, creating it if needed.
    pub fn open(path: &Path) -> Result<Self, SqliteError> {
        Ok(Admin {
            conn: open_rw(path)?,
        })
    }

    /// Adds a user with an already hashed `{SCHEME}` password.
    pub fn add(&self, user: &str, stored: &str) -> Result<(), SqliteError> {
        let domain = user.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        match self.conn.execute(
            "INSERT INTO users (username, domain, password) VALUES (?1, ?2, ?3)",
            params![user, domain, stored],
        ) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(SqliteError::Exists(user.to_owned()))
            }
            r => r.map(drop).map_err(Into::into),
        }
    }

    /// Replaces a user's password.
    pub fn passwd(&self, user: &str, stored: &str) -> Result<(), SqliteError> {
        self.update(
            user,
            "UPDATE users SET password = ?2, updated_at = datetime('now') WHERE username = ?1",
            stored,
        )
    }

    /// Enables or disables a user.
    pub fn set_enabled(&self, user: &str, enabled: bool) -> Result<(), SqliteError> {
        let n = self.conn.execute(
            "UPDATE users SET enabled = ?2, updated_at = datetime('now') WHERE username = ?1",
            params![user, enabled as i64],
        )?;
        self.one(user, n)
    }

    /// Sets (or with `None` clears) a user's own upstream.
    pub fn set_upstream(
        &self,
        user: &str,
        upstream: Option<(&str, u16)>,
    ) -> Result<(), SqliteError> {
        let (host, port) = match upstream {
            Some((h, p)) => (Some(h), Some(p)),
            None => (None, None),
        };
        let n = self.conn.execute(
            "UPDATE users SET upstream_host = ?2, upstream_port = ?3, updated_at = datetime('now') \
             WHERE username = ?1",
            params![user, host, port],
        )?;
        self.one(user, n)
    }

    /// The connection, for the app password commands
    /// ([`app_password::sqlite`]).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Deletes a user, with their app passwords.
    pub fn delete(&self, user: &str) -> Result<(), SqliteError> {
        app_password::sqlite::delete_all(&self.conn, user)?;
        let n = self
            .conn
            .execute("DELETE FROM users WHERE username = ?1", params![user])?;
        self.one(user, n)
    }

    /// Lists users, sorted by name.
    pub fn list(&self) -> Result<Vec<UserRow>, SqliteError> {
        let mut st = self.conn.prepare(
            "SELECT username, password, enabled, upstream_host, upstream_port FROM users ORDER BY username",
        )?;
        let rows = st.query_map([], |r| {
            let password: String = r.get(1)?;
            let scheme = match password.strip_prefix('{').and_then(|p| p.split_once('}')) {
                Some((s, _)) => format!("{{{s}}}"),
                None => "(crypt)".into(),
            };
            let host: Option<String> = r.get(3)?;
            let port: Option<i64> = r.get(4)?;
            Ok(UserRow {
                username: r.get(0)?,
                scheme,
                enabled: r.get::<_, i64>(2)? != 0,
                upstream: match (host, port) {
                    (None, None) => None,
                    (h, p) => Some(format!(
                        "{}:{}",
                        h.unwrap_or_default(),
                        p.map(|p| p.to_string()).unwrap_or_default()
                    )),
                },
            })
        })?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }

    fn update(&self, user: &str, sql: &str, value: &str) -> Result<(), SqliteError> {
        let n = self.conn.execute(sql, params![user, value])?;
        self.one(user, n)
    }

    fn one(&self, user: &str, changed: usize) -> Result<(), SqliteError> {
        if changed == 0 {
            Err(SqliteError::NoSuchUser(user.to_owned()))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passdb::Rejection;

    /// A new database at `name` in a scratch directory: the directory (kept
    /// while the test runs), the passdb reading it and its admin.
    fn fresh(name: &str) -> (tempfile::TempDir, Sqlite, Admin) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let db = Sqlite::open(&path, None).unwrap();
        let admin = Admin::open(&path).unwrap();
        (dir, db, admin)
    }

    #[tokio::test]
    async fn admin_edits_are_seen_by_a_running_passdb() {
        let (_dir, db, admin) = fresh("sub/users.db");
        let pw = |s: &str| vec![Secret::from(s)];

        assert!(matches!(
            db.verify_plain("alice@example.org", &pw("a")).await,
            Ok(Verdict::Rejected(Rejection::UnknownUser))
        ));
        admin.add("alice@example.org", "{PLAIN}a").unwrap();
        assert!(matches!(
            admin.add("alice@example.org", "{PLAIN}b"),
            Err(SqliteError::Exists(_))
        ));
        assert!(matches!(
            db.verify_plain("alice@example.org", &pw("a")).await,
            Ok(Verdict::Accepted(_))
        ));

        admin.passwd("alice@example.org", "{PLAIN}b").unwrap();
        assert!(matches!(
            db.verify_plain("alice@example.org", &pw("a")).await,
            Ok(Verdict::Rejected(Rejection::PasswordMismatch))
        ));
        admin
            .set_upstream("alice@example.org", Some(("192.0.2.9", 1143)))
            .unwrap();
        match db.verify_plain("alice@example.org", &pw("b")).await {
            Ok(Verdict::Accepted(p)) => {
                assert_eq!(p.upstream_host, Some("192.0.2.9".parse().unwrap()));
                assert_eq!(p.upstream_port, Some(1143));
            }
            other => panic!("{other:?}"),
        }
        admin.set_enabled("alice@example.org", false).unwrap();
        assert!(matches!(
            db.verify_plain("alice@example.org", &pw("b")).await,
            Ok(Verdict::Rejected(Rejection::Disabled))
        ));
        let rows = admin.list().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].scheme, "{PLAIN}");
        assert!(!rows[0].enabled);
        admin.delete("alice@example.org").unwrap();
        assert!(matches!(
            admin.delete("alice@example.org"),
            Err(SqliteError::NoSuchUser(_))
        ));
        assert!(admin.list().unwrap().is_empty());
    }

    #[tokio::test]
    async fn injection_shaped_names_are_just_names() {
        let (_dir, db, admin) = fresh("users.db");
        admin.add("bob", "{PLAIN}b").unwrap();
        for evil in ["' OR '1'='1", "bob' --", "bob\"; DROP TABLE users; --"] {
            assert!(matches!(
                db.verify_plain(evil, &[Secret::from("b")]).await,
                Ok(Verdict::Rejected(Rejection::UnknownUser))
            ));
        }
        assert_eq!(admin.list().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn missing_database_file_is_a_temporary_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.db");
        let db = Sqlite::open(&path, None).unwrap();
        std::fs::remove_file(&path).unwrap();
        let _ = std::fs::remove_file(dir.path().join("users.db-wal"));
        let _ = std::fs::remove_file(dir.path().join("users.db-shm"));
        assert!(matches!(
            db.verify_plain("bob", &[Secret::from("b")]).await,
            Err(PassdbError::Unavailable(_))
        ));
    }
}
