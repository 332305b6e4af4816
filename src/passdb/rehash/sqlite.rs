//! The rehash writer of the SQLite built-in schema: a compare-and-set
//! `UPDATE … WHERE username = ? AND password = <old>`, so a `user passwd`
//! that lands first is never overwritten.

use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};
use crate::passdb::sqlite::open_rw;

/// Writes new hashes into a SQLite passdb (one short connection per job:
/// rehashes are rare, at most one per user per window).
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
}

impl SqliteStore {
    /// The database at `path`.
    pub fn new(path: &Path) -> SqliteStore {
        SqliteStore {
            path: path.to_owned(),
        }
    }

    fn conn(&self) -> Result<rusqlite::Connection, StoreError> {
        open_rw(&self.path).map_err(|e| match e {
            crate::passdb::sqlite::SqliteError::Db(e) => StoreError::Sqlite(e),
            other => StoreError::Sql(other.to_string()),
        })
    }
}

impl Store for SqliteStore {
    fn current(&self, user: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT password FROM users WHERE username = ?1",
                params![user],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn replace(&self, user: &str, old: &str, new: &str) -> Result<bool, StoreError> {
        let n = self.conn()?.execute(
            "UPDATE users SET password = ?3, updated_at = datetime('now') \
             WHERE username = ?1 AND password = ?2",
            params![user, old, new],
        )?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passdb::sqlite::Admin;

    #[test]
    fn replaces_only_the_value_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.db");
        let admin = Admin::open(&path).unwrap();
        admin.add("a@x", "{PLAIN}old").unwrap();
        let store = SqliteStore::new(&path);
        assert_eq!(store.current("a@x").unwrap().as_deref(), Some("{PLAIN}old"));
        assert_eq!(store.current("nobody").unwrap(), None);
        // A `user passwd` between the read and the write wins.
        admin.passwd("a@x", "{PLAIN}changed").unwrap();
        assert!(!store.replace("a@x", "{PLAIN}old", "{PLAIN}new").unwrap());
        assert_eq!(
            store.current("a@x").unwrap().as_deref(),
            Some("{PLAIN}changed")
        );
        assert!(store
            .replace("a@x", "{PLAIN}changed", "{PLAIN}new")
            .unwrap());
        assert_eq!(store.current("a@x").unwrap().as_deref(), Some("{PLAIN}new"));
        assert!(!store.replace("nobody", "x", "y").unwrap());
    }
}
