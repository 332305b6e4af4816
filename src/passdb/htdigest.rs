//! Apache `htdigest` files: `user:realm:HA1`, where HA1 is the lower-case hex
//! MD5 of `user:realm:password` (what `htdigest -c FILE REALM USER` writes).
//!
//! They serve HTTP Digest (MD5, MD5-sess) through [`Passdb::digest_ha1`]
//! without any plaintext, and also plaintext checks (Basic, mail PLAIN) by
//! hashing the offered password for each realm the user has. They cannot
//! hand out a password, so CRAM-MD5/APOP are not served.
//! Watched like the passwd-file (see `file_watch`): a background
//! thread re-reads it within about a second of a change and swaps the new
//! table in; lookups never touch the file. A file that cannot be read keeps
//! the last good table and is logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest as _, Md5};

use super::{FileError, Lookup, Passdb, PassdbError, Principal, Rejection, Verdict};
use crate::file_watch::{Loader, Watched, CHECK_INTERVAL};
use crate::secret::{ct_eq, Secret};

/// user → every (realm, HA1) line of that user.
type Table = HashMap<String, Vec<(String, [u8; 16])>>;

/// An htdigest passdb.
#[derive(Debug)]
pub struct Htdigest {
    /// user → [(realm, HA1 bytes)]
    table: Watched<Table>,
}

fn parse(text: &[u8], path: &Path) -> Table {
    let mut users = Table::new();
    for (i, line) in String::from_utf8_lossy(text).lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.splitn(3, ':');
        let (user, realm, ha1) = (f.next().unwrap_or(""), f.next(), f.next());
        let mut bytes = [0u8; 16];
        match (realm, ha1) {
            (Some(realm), Some(ha1))
                if !user.is_empty() && hex::decode_to_slice(ha1.trim(), &mut bytes).is_ok() =>
            {
                users
                    .entry(user.to_owned())
                    .or_default()
                    .push((realm.to_owned(), bytes));
            }
            _ => log::warn!(
                "htdigest {}: line {}: expected user:realm:32-hex-digit HA1, skipped",
                path.display(),
                i + 1
            ),
        }
    }
    users
}

impl Htdigest {
    /// Loads `path` and starts watching it.
    pub fn open(path: &Path) -> Result<Self, FileError> {
        Self::open_checking_every(path, CHECK_INTERVAL)
    }

    fn open_checking_every(path: &Path, interval: Duration) -> Result<Self, FileError> {
        let shown: PathBuf = path.to_owned();
        let loader = Loader {
            kind: "htdigest",
            parse: Box::new(move |text: &[u8]| parse(text, &shown)),
            users: |t: &Table| t.len(),
        };
        Ok(Htdigest {
            table: Watched::open(path, loader, interval).map_err(FileError::Watch)?,
        })
    }

    fn entries(&self, user: &str) -> Vec<(String, [u8; 16])> {
        self.table.current().get(user).cloned().unwrap_or_default()
    }
}

/// MD5(`user:realm:password`).
pub fn ha1(user: &str, realm: &str, password: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password);
    h.finalize().into()
}

impl Passdb for Htdigest {
    super::common::fixed_identity!("htdigest", PLAIN_ONLY);
    async fn verify_plain(&self, user: &str, passwords: &[Secret]) -> Result<Verdict, PassdbError> {
        let entries = self.entries(user);
        if entries.is_empty() {
            return Ok(Verdict::Rejected(Rejection::UnknownUser));
        }
        for (realm, stored) in &entries {
            if passwords
                .iter()
                .any(|p| ct_eq(&ha1(user, realm, p.expose()), stored))
            {
                return Ok(Verdict::Accepted(Principal {
                    user: user.to_owned(),
                    ..Principal::default()
                }));
            }
        }
        Ok(Verdict::Rejected(Rejection::PasswordMismatch))
    }
    async fn lookup_credentials(&self, user: &str) -> Result<Lookup, PassdbError> {
        let _ = user;
        Ok(Lookup::Rejected(Rejection::UnknownUser))
    }
    async fn find_user(
        &self,
        matches: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Option<String>, PassdbError> {
        Ok(self.table.current().keys().find(|u| matches(u)).cloned())
    }
    async fn digest_ha1(&self, user: &str, realm: &str) -> Result<Option<String>, PassdbError> {
        Ok(self
            .entries(user)
            .into_iter()
            .find(|(r, _)| r == realm)
            .map(|(_, h)| hex::encode(h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_digest_ha1_and_plaintext_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htdigest");
        // `htdigest` output for Mufasa / testrealm@host.com / "Circle Of Life".
        std::fs::write(
            &path,
            "Mufasa:testrealm@host.com:939e7578ed9e3c518a452acee763bce9\nbroken line\n",
        )
        .unwrap();
        let db = Htdigest::open(&path).unwrap();
        assert_eq!(
            hex::encode(ha1("Mufasa", "testrealm@host.com", b"Circle Of Life")),
            "939e7578ed9e3c518a452acee763bce9"
        );
        assert_eq!(
            db.digest_ha1("Mufasa", "testrealm@host.com")
                .await
                .unwrap()
                .as_deref(),
            Some("939e7578ed9e3c518a452acee763bce9")
        );
        assert_eq!(db.digest_ha1("Mufasa", "other").await.unwrap(), None);
        assert!(matches!(
            db.verify_plain("Mufasa", &[Secret::from("Circle Of Life")])
                .await,
            Ok(Verdict::Accepted(_))
        ));
        assert!(matches!(
            db.verify_plain("Mufasa", &[Secret::from("circle of life")])
                .await,
            Ok(Verdict::Rejected(Rejection::PasswordMismatch))
        ));
        assert!(matches!(
            db.verify_plain("Simba", &[Secret::from("x")]).await,
            Ok(Verdict::Rejected(Rejection::UnknownUser))
        ));
    }

    #[tokio::test]
    async fn changes_are_picked_up_by_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htdigest");
        let line = |user: &str, pw: &str| {
            format!("{user}:R:{}\n", hex::encode(ha1(user, "R", pw.as_bytes())))
        };
        std::fs::write(&path, line("alice", "a")).unwrap();
        let db = Htdigest::open_checking_every(&path, Duration::from_millis(10)).unwrap();
        let tmp = dir.path().join("htdigest.new");
        std::fs::write(&tmp, line("alice", "a2") + &line("bob", "b")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while db.table.reloads() == 0 {
            assert!(std::time::Instant::now() < deadline, "never reloaded");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(matches!(
            db.verify_plain("bob", &[Secret::from("b")]).await,
            Ok(Verdict::Accepted(_))
        ));
        assert!(matches!(
            db.verify_plain("alice", &[Secret::from("a")]).await,
            Ok(Verdict::Rejected(Rejection::PasswordMismatch))
        ));
        // Gone: the last table stays.
        std::fs::remove_file(&path).unwrap();
        let seen = db.table.checks();
        while db.table.checks() < seen + 2 {
            assert!(std::time::Instant::now() < deadline, "no checks");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            db.find_user(&|u| u == "bob").await.unwrap().as_deref(),
            Some("bob")
        );
        let alive = db.table.thread_alive();
        drop(db);
        while alive.upgrade().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "watcher still running"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
