//! App passwords in the built-in SQLite schema: the `app_passwords` table
//! (added to existing databases on open, nothing else touched), the
//! per-user `require_app_password` column, the lookup beside the user's row,
//! the admin commands' queries, and the background writer that records
//! "last used" off the request path.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;

use rusqlite::{params, Connection, OptionalExtension};

use super::{parse_networks, AppPassword, AppPasswords, Scope, Services};
use crate::passdb::parse_stored;
use crate::passdb::sqlite::SqliteError;

/// The table; times are unix seconds.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS app_passwords (
    username     TEXT NOT NULL,
    name         TEXT NOT NULL,
    password     TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    networks     TEXT NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER)),
    expires_at   INTEGER,
    last_used_at INTEGER,
    last_used_ip TEXT,
    PRIMARY KEY (username, name)
);
";

/// Adds the table, and the users' `require_app_password` column, to a
/// database that lacks them.
///
/// Under the write lock (`BEGIN IMMEDIATE`, waiting out the busy timeout):
/// the daemon and a `user` command opening a new database at the same time
/// must not both add the column.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let migrated = (|| {
        conn.execute_batch(SCHEMA)?;
        let has_column = conn
            .prepare(
                "SELECT 1 FROM pragma_table_info('users') WHERE name = 'require_app_password'",
            )?
            .exists([])?;
        if !has_column {
            conn.execute_batch("ALTER TABLE users ADD COLUMN require_app_password TEXT")?;
        }
        Ok(())
    })();
    match migrated {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

const LOOKUP: &str = "SELECT u.require_app_password, a.name, a.password, a.scopes, a.networks, \
                      a.expires_at FROM users u LEFT JOIN app_passwords a \
                      ON a.username = u.username WHERE u.username = ?1";

/// The app passwords of `user` and their own `require_app_password`. A row
/// that does not parse is left out (and logged): it opens nothing.
pub fn load(conn: &Connection, user: &str) -> rusqlite::Result<AppPasswords> {
    let mut st = conn.prepare_cached(LOOKUP)?;
    let mut rows = st.query(params![user])?;
    let mut apps = AppPasswords::default();
    while let Some(r) = rows.next()? {
        if let Some(req) = r.get::<_, Option<String>>(0)? {
            apps.required = Services::parse(&[req]).unwrap_or_default();
        }
        let Some(name) = r.get::<_, Option<String>>(1)? else {
            continue;
        };
        let (password, scopes, networks): (String, String, String) =
            (r.get(2)?, r.get(3)?, r.get(4)?);
        let parsed = parse_stored(&password, None)
            .map_err(|e| e.to_string())
            .and_then(|stored| {
                Ok(AppPassword {
                    stored,
                    scopes: Scope::parse_list(&scopes).map_err(|e| e.to_string())?,
                    networks: parse_networks(&networks).map_err(|e| e.to_string())?,
                    expires: r.get(5).map_err(|e| e.to_string())?,
                    name: name.clone(),
                })
            });
        match parsed {
            Ok(a) => apps.list.push(a),
            Err(e) => log::error!("sqlite: app password {name} of {user} is unusable: {e}"),
        }
    }
    Ok(apps)
}

/// An app password as `user app-password list` shows it: never the secret
/// or its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPasswordRow {
    /// Its name.
    pub name: String,
    /// `imap,smtp`.
    pub scopes: String,
    /// Allowed networks, as stored (empty: any).
    pub networks: String,
    /// `YYYY-MM-DD HH:MM:SS` UTC.
    pub created: String,
    /// When it expires, if it does.
    pub expires: Option<String>,
    /// When it was last used, and from where.
    pub last_used: Option<(String, String)>,
}

/// What `user app-password add` stores.
pub struct NewAppPassword<'a> {
    /// Unique per user.
    pub name: &'a str,
    /// `{SHA256-CRYPT}…`.
    pub stored: &'a str,
    /// What it opens.
    pub scopes: &'a [Scope],
    /// Allowed networks (empty: any).
    pub networks: &'a [crate::net::Cidr],
    /// Unix time it expires at.
    pub expires: Option<i64>,
}

fn user_exists(conn: &Connection, user: &str) -> Result<(), SqliteError> {
    conn.prepare_cached("SELECT 1 FROM users WHERE username = ?1")?
        .query_row(params![user], |_| Ok(()))
        .optional()?
        .ok_or_else(|| SqliteError::NoSuchUser(user.to_owned()))
}

/// Stores a new app password of `user`.
pub fn add(conn: &Connection, user: &str, new: &NewAppPassword<'_>) -> Result<(), SqliteError> {
    user_exists(conn, user)?;
    let networks: Vec<String> = new.networks.iter().map(ToString::to_string).collect();
    match conn.execute(
        "INSERT INTO app_passwords (username, name, password, scopes, networks, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            user,
            new.name,
            new.stored,
            super::scopes_text(new.scopes),
            networks.join(","),
            new.expires
        ],
    ) {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(SqliteError::AppPasswordExists(new.name.to_owned()))
        }
        r => r.map(drop).map_err(Into::into),
    }
}

/// The app passwords of `user`, by name.
pub fn list(conn: &Connection, user: &str) -> Result<Vec<AppPasswordRow>, SqliteError> {
    user_exists(conn, user)?;
    let mut st = conn.prepare(
        "SELECT name, scopes, networks, datetime(created_at, 'unixepoch'), \
         datetime(expires_at, 'unixepoch'), datetime(last_used_at, 'unixepoch'), last_used_ip \
         FROM app_passwords WHERE username = ?1 ORDER BY name",
    )?;
    let rows = st.query_map(params![user], |r| {
        Ok(AppPasswordRow {
            name: r.get(0)?,
            scopes: r.get(1)?,
            networks: r.get(2)?,
            created: r.get(3)?,
            expires: r.get(4)?,
            last_used: match (
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<String>>(6)?,
            ) {
                (Some(at), ip) => Some((at, ip.unwrap_or_else(|| "-".into()))),
                (None, _) => None,
            },
        })
    })?;
    rows.collect::<Result<_, _>>().map_err(Into::into)
}

/// Deletes one app password of `user`.
pub fn delete(conn: &Connection, user: &str, name: &str) -> Result<(), SqliteError> {
    let n = conn.execute(
        "DELETE FROM app_passwords WHERE username = ?1 AND name = ?2",
        params![user, name],
    )?;
    if n == 0 {
        return Err(SqliteError::NoSuchAppPassword(name.to_owned()));
    }
    Ok(())
}

/// Deletes every app password of `user` (with the user).
pub fn delete_all(conn: &Connection, user: &str) -> Result<(), SqliteError> {
    conn.execute(
        "DELETE FROM app_passwords WHERE username = ?1",
        params![user],
    )?;
    Ok(())
}

/// Sets the protocols for which `user`'s main password is refused.
pub fn set_required(conn: &Connection, user: &str, required: Services) -> Result<(), SqliteError> {
    let value = (!required.is_empty()).then(|| required.to_string());
    let n = conn.execute(
        "UPDATE users SET require_app_password = ?2, updated_at = datetime('now') \
         WHERE username = ?1",
        params![user, value],
    )?;
    if n == 0 {
        return Err(SqliteError::NoSuchUser(user.to_owned()));
    }
    Ok(())
}

/// One use to record: user, app password name, client address, unix time.
type Use = (String, String, Option<String>, i64);

/// Most uses waiting for the writer; more are dropped (a login never waits).
const QUEUE: usize = 1024;

/// How long the writer waits for an admin command's lock.
const WRITE_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Records "last used" from a thread of its own: the request path only
/// `try_send`s into a bounded channel, the writer batches the waiting uses
/// into one transaction. A full queue or a failed write loses a timestamp,
/// never a login.
#[derive(Debug)]
pub struct LastUsed {
    path: PathBuf,
    tx: OnceLock<Option<SyncSender<Use>>>,
}

impl LastUsed {
    /// A writer for the database at `path`, started on first use.
    pub fn new(path: &Path) -> Self {
        LastUsed {
            path: path.to_owned(),
            tx: OnceLock::new(),
        }
    }

    /// Queues a use of app password `name` of `user`; never blocks.
    pub fn record(&self, user: &str, name: &str, ip: Option<std::net::IpAddr>) {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = sync_channel(QUEUE);
            let path = self.path.clone();
            std::thread::Builder::new()
                .name("app-password-last-used".into())
                .spawn(move || write_uses(&path, rx))
                .map_err(|e| log::error!("sqlite: cannot start the last-used writer: {e}"))
                .ok()
                .map(|_| tx)
        });
        let Some(tx) = tx else { return };
        let used = (
            user.to_owned(),
            name.to_owned(),
            ip.map(|i| i.to_string()),
            super::now(),
        );
        if let Err(TrySendError::Full(_)) = tx.try_send(used) {
            log::debug!("sqlite: last-used queue full; one timestamp dropped");
        }
    }
}

/// The writer: waits for a use, takes every other one waiting (at most a
/// queue's worth), writes them in one transaction. Ends when the passdb is
/// dropped (reload, shutdown).
fn write_uses(path: &Path, rx: Receiver<Use>) {
    let mut conn = None;
    while let Ok(first) = rx.recv() {
        let batch: Vec<Use> = std::iter::once(first)
            .chain(rx.try_iter().take(QUEUE))
            .collect();
        if conn.is_none() {
            // Never creates the database: one removed meanwhile stays gone.
            conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
                .and_then(|c| c.busy_timeout(WRITE_BUSY_TIMEOUT).map(|()| c))
                .map_err(|e| log::error!("sqlite: last-used writer: {e}"))
                .ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        if let Err(e) = write_batch(c, &batch) {
            log::error!("sqlite: recording app password use: {e}");
            conn = None;
        }
    }
}

fn write_batch(conn: &mut Connection, batch: &[Use]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare_cached(
            "UPDATE app_passwords SET last_used_at = ?4, last_used_ip = ?3 \
             WHERE username = ?1 AND name = ?2",
        )?;
        for (user, name, ip, at) in batch {
            st.execute(params![user, name, ip, at])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passdb::sqlite::{open_rw, Admin};

    /// The README's quick start opens a new database from the daemon and
    /// from `user add` at once: every opener succeeds, none adds the column
    /// twice ("duplicate column name").
    #[test]
    fn openers_racing_on_a_new_database_all_succeed() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("race-{round}.db"));
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
            let openers: Vec<_> = (0..6)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        open_rw(&path).map(drop).map_err(|e| e.to_string())
                    })
                })
                .collect();
            for o in openers {
                assert_eq!(o.join().unwrap(), Ok(()), "round {round}");
            }
        }
    }

    /// A database made before app passwords existed gets the table and the
    /// column on open; its users are kept.
    #[test]
    fn an_old_database_is_migrated_and_keeps_its_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE users (username TEXT PRIMARY KEY NOT NULL, \
                 domain TEXT NOT NULL DEFAULT '', password TEXT NOT NULL, \
                 enabled INTEGER NOT NULL DEFAULT 1, upstream_host TEXT, \
                 upstream_port INTEGER, backend_user TEXT, \
                 created_at TEXT NOT NULL DEFAULT (datetime('now')), \
                 updated_at TEXT NOT NULL DEFAULT (datetime('now'))); \
                 INSERT INTO users (username, password) VALUES ('bob', '{PLAIN}b');",
            )
            .unwrap();
        }
        let conn = open_rw(&path).unwrap();
        // Opening twice migrates once.
        drop(open_rw(&path).unwrap());
        let apps = load(&conn, "bob").unwrap();
        assert!(apps.list.is_empty() && apps.required.is_empty());
        set_required(&conn, "bob", Services::parse(&["imap"]).unwrap()).unwrap();
        assert_eq!(load(&conn, "bob").unwrap().required.to_string(), "imap");
        let admin = Admin::open(&path).unwrap();
        assert_eq!(admin.list().unwrap()[0].username, "bob");
        assert!(matches!(
            delete(&conn, "bob", "nope"),
            Err(SqliteError::NoSuchAppPassword(_))
        ));
        assert!(matches!(
            list(&conn, "carol"),
            Err(SqliteError::NoSuchUser(_))
        ));
    }

    /// Deleting a user deletes their app passwords: a new user of the same
    /// name does not inherit them.
    #[test]
    fn deleting_a_user_deletes_their_app_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let admin = Admin::open(&dir.path().join("users.db")).unwrap();
        admin.add("bob", "{PLAIN}b").unwrap();
        let scopes = Scope::parse_list("imap").unwrap();
        let new = NewAppPassword {
            name: "phone",
            stored: "{PLAIN}p",
            scopes: &scopes,
            networks: &[],
            expires: None,
        };
        add(admin.connection(), "bob", &new).unwrap();
        assert!(matches!(
            add(admin.connection(), "bob", &new),
            Err(SqliteError::AppPasswordExists(_))
        ));
        assert_eq!(load(admin.connection(), "bob").unwrap().list.len(), 1);
        admin.delete("bob").unwrap();
        admin.add("bob", "{PLAIN}b").unwrap();
        assert!(load(admin.connection(), "bob").unwrap().list.is_empty());
    }
}
