//! Support code shared by the test binaries: process handling ([`proc`]),
//! the daemon as a process of its own ([`daemon`]),
//! the nginx + Dovecot mail stack ([`e2e`]), an independent FastCGI client
//! ([`fcgi`]) and the real servers the backend tests drive ([`sql`],
//! [`sasl`], [`ldap`], [`redis`]).
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod daemon;
pub mod e2e;
pub mod fcgi;
pub mod ldap;
pub mod policy;
pub mod proc;
pub mod redis;
pub mod sasl;
pub mod sql;

/// A new temp dir holding `name` with `text`; the dir (kept for as long as the
/// test needs the file) and the file's path.
pub fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write temp file");
    (dir, path)
}
