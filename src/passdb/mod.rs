//! Directory backends ("passdbs"): who the users are and how their passwords
//! are stored. I/O lives here; protocol knowledge does not.
//!
//! The shape follows Dovecot's `passdb_module_interface`: a backend can check a
//! plaintext password ([`Passdb::verify_plain`]) and/or hand back the stored
//! credential for challenge mechanisms ([`Passdb::lookup_credentials`]).
//! Backends are a closed set in [`AnyPassdb`], so every future is a concrete
//! type and adding a backend touches only this module.
//!
//! The backends with a driver crate (SQLite, PostgreSQL, MySQL, LDAP) are
//! Cargo features, all on by default; a URI of a kind this binary was built
//! without is refused when it is opened
//! ([`PassdbConfigError::NotBuilt`]).

mod any;
pub mod app_password;
pub mod dovecot_auth;
mod errors;
pub mod htdigest;
#[cfg(feature = "ldap")]
pub mod ldap;
pub mod passwd_file;
pub mod private_file;
pub mod rehash;
pub mod saslauthd;
pub mod socket;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(any(feature = "postgres", feature = "ldap"))]
pub mod tls;
mod uri;
pub mod vars;

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use crate::scheme::{Scheme, SchemeError, StoredPassword};
use crate::secret::Secret;
pub use app_password::{AppPasswords, AppRefusal};

pub use any::{AnyPassdb, PassdbOptions};
pub use dovecot_auth::DovecotAuth;
pub use errors::{BadOption, FileError, OpenError, PassdbConfigError};
pub use htdigest::Htdigest;
#[cfg(feature = "ldap")]
pub use ldap::Ldap;
pub use passwd_file::PasswdFile;
pub use saslauthd::Saslauthd;
#[cfg(feature = "mysql")]
pub use sql::Mysql;
#[cfg(feature = "postgres")]
pub use sql::Postgres;
#[cfg(feature = "sqlite")]
pub use sqlite::Sqlite;
pub use uri::redact_uri;

/// What a backend can do; checked against the enabled mechanisms at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Can check a plaintext password.
    pub verify_plain: bool,
    /// Can hand back stored credentials (for CRAM-MD5, APOP, HTTP Digest).
    pub lookup_credentials: bool,
}

impl Capabilities {
    /// Checks plaintext and hands out stored credentials (the file and table backends).
    pub const BOTH: Capabilities = Capabilities {
        verify_plain: true,
        lookup_credentials: true,
    };
    /// Checks plaintext only (htdigest, saslauthd, Dovecot auth, LDAP bind mode).
    pub const PLAIN_ONLY: Capabilities = Capabilities {
        verify_plain: true,
        lookup_credentials: false,
    };
}

/// An authenticated user and what the passdb says about routing them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    /// The user name as the passdb knows it.
    pub user: String,
    /// Per-user upstream address (`host=` extra field / `upstream_host` column).
    pub upstream_host: Option<IpAddr>,
    /// Per-user upstream port (`port=` / `upstream_port`).
    pub upstream_port: Option<u16>,
    /// Login to use towards the upstream (`user=` / `backend_user`), when it differs.
    pub backend_user: Option<String>,
}

/// Why a login was refused. Internal detail: clients always get one generic answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No such user.
    UnknownUser,
    /// Wrong password or digest.
    PasswordMismatch,
    /// The account is disabled (`nologin`, `enabled = 0`).
    Disabled,
    /// The main password, for a protocol that `require_app_password` keeps
    /// for app passwords.
    AppPasswordRequired,
    /// An app password whose scopes do not cover the protocol.
    AppPasswordScope,
    /// An expired app password.
    AppPasswordExpired,
    /// An app password from outside its networks.
    AppPasswordNetwork,
}

impl From<AppRefusal> for Rejection {
    fn from(r: AppRefusal) -> Self {
        match r {
            AppRefusal::Scope => Rejection::AppPasswordScope,
            AppRefusal::Expired => Rejection::AppPasswordExpired,
            AppRefusal::Network => Rejection::AppPasswordNetwork,
        }
    }
}

impl Rejection {
    /// Short name for the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::UnknownUser => "unknown-user",
            Rejection::PasswordMismatch => "password-mismatch",
            Rejection::Disabled => "disabled",
            Rejection::AppPasswordRequired => "app-password-required",
            Rejection::AppPasswordScope => "app-password-scope",
            Rejection::AppPasswordExpired => "app-password-expired",
            Rejection::AppPasswordNetwork => "app-password-network",
        }
    }
}

/// A completed check. A wrong password is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The password is right.
    Accepted(Principal),
    /// It is not (or the user may not log in).
    Rejected(Rejection),
}

/// Stored credentials for challenge-response mechanisms.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The user exists and may log in.
    Found {
        /// The user, with what the passdb says about routing them.
        principal: Principal,
        /// Their stored password.
        secret: StoredPassword,
        /// Their app passwords (built-in SQLite schema, SQL `app_password_query`).
        apps: AppPasswords,
    },
    /// Unknown or disabled.
    Rejected(Rejection),
}

/// A backend failure: the answer is "try again later", never "wrong password"
/// and never "OK". Does not count toward brute-force throttling.
#[derive(Debug, thiserror::Error)]
pub enum PassdbError {
    /// The backend could not be reached or failed.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time.
    #[error("backend timed out")]
    Timeout,
    /// The stored credential cannot serve the requested mechanism.
    #[error("stored scheme {0} cannot serve this mechanism")]
    SchemeNotAvailable(Scheme),
    /// The stored credential is malformed (an admin error; the hash is not shown).
    #[error("stored password of this user is unusable: {0}")]
    BadStoredPassword(String),
    /// The bounded verifier could not take the check (flood or overload).
    #[error(transparent)]
    Verifier(#[from] crate::verifier::VerifyError),
}

/// A directory backend.
///
/// Contract: implementations MUST return `Ok(Verdict::Rejected(UnknownUser))`
/// / `Ok(Lookup::Rejected(UnknownUser))` for users they do not have, so that a
/// chain can move on; MUST return `Err` (never a rejection) when they cannot
/// tell; MUST NOT block the async threads (blocking drivers and expensive hash
/// checks go through `spawn_blocking`); MUST NOT log passwords.
#[allow(async_fn_in_trait)]
pub trait Passdb: Send + Sync {
    /// Name for logs (`passwd-file`, `sqlite`, …).
    fn name(&self) -> &'static str;
    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;
    /// Checks `passwords` (tried in order; PLAIN may offer two forms) for `user`.
    async fn verify_plain(&self, user: &str, passwords: &[Secret]) -> Result<Verdict, PassdbError>;
    /// Returns the stored credential of `user`.
    async fn lookup_credentials(&self, user: &str) -> Result<Lookup, PassdbError>;
    /// The first user whose name satisfies `matches` (HTTP Digest `userhash`:
    /// the client sends H(`user:realm`) instead of the name). Only backends
    /// that can list their users cheaply answer; `Ok(None)` otherwise.
    async fn find_user(
        &self,
        matches: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Option<String>, PassdbError> {
        let _ = matches;
        Ok(None)
    }
    /// HTTP Digest's HA1 = hex MD5(`user:realm:password`), for backends that
    /// store it (htdigest). `Ok(None)`: not stored here (the caller falls back
    /// to a plaintext from [`Passdb::lookup_credentials`]).
    async fn digest_ha1(&self, user: &str, realm: &str) -> Result<Option<String>, PassdbError> {
        let _ = (user, realm);
        Ok(None)
    }
    /// App password `name` of `user` just opened a login from `ip`: record
    /// it ("last used") without making the caller wait. Backends without
    /// app passwords, or without a place to record, ignore it.
    fn app_password_used(&self, user: &str, name: &str, ip: Option<IpAddr>) {
        let _ = (user, name, ip);
    }
}

/// One user record as file and table backends store it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Routing and naming facts.
    pub principal: Principal,
    /// The stored password.
    pub password: Result<StoredPassword, Arc<SchemeError>>,
    /// False for `nologin` / disabled accounts.
    pub enabled: bool,
    /// HTTP Digest HA1 (lower-case hex MD5 of `user:realm:password`) when the
    /// backend stores one (SQL column `digest_ha1`).
    pub digest_ha1: Option<String>,
    /// App passwords and the user's own `require_app_password`.
    pub apps: AppPasswords,
}

impl Entry {
    /// The [`Lookup`] answer for this record.
    pub fn lookup(self) -> Result<Lookup, PassdbError> {
        if !self.enabled {
            return Ok(Lookup::Rejected(Rejection::Disabled));
        }
        match self.password {
            Ok(secret) => Ok(Lookup::Found {
                principal: self.principal,
                secret,
                apps: self.apps,
            }),
            Err(e) => Err(PassdbError::BadStoredPassword(e.to_string())),
        }
    }

    /// Checks `passwords` against this record; expensive schemes run on the
    /// blocking pool so a bcrypt or Argon2 check never stalls other requests.
    pub async fn verify(self, passwords: &[Secret]) -> Result<Verdict, PassdbError> {
        let (principal, stored) = match self.lookup()? {
            Lookup::Found {
                principal, secret, ..
            } => (principal, secret),
            Lookup::Rejected(r) => return Ok(Verdict::Rejected(r)),
        };
        let ok = if stored.scheme().is_expensive() {
            let passwords = passwords.to_vec();
            tokio::task::spawn_blocking(move || verify_any(&stored, &passwords))
                .await
                .map_err(|e| PassdbError::Unavailable(format!("verifier task failed: {e}")))??
        } else {
            verify_any(&stored, passwords)?
        };
        Ok(if ok {
            Verdict::Accepted(principal)
        } else {
            Verdict::Rejected(Rejection::PasswordMismatch)
        })
    }
}

/// [`Passdb::verify_plain`] for backends that fetch one [`Entry`] per user.
pub async fn verify_entry(
    found: Option<Entry>,
    passwords: &[Secret],
) -> Result<Verdict, PassdbError> {
    match found {
        Some(e) => e.verify(passwords).await,
        None => Ok(Verdict::Rejected(Rejection::UnknownUser)),
    }
}

/// [`Passdb::lookup_credentials`] for backends that fetch one [`Entry`] per user.
pub fn lookup_entry(found: Option<Entry>) -> Result<Lookup, PassdbError> {
    match found {
        Some(e) => e.lookup(),
        None => Ok(Lookup::Rejected(Rejection::UnknownUser)),
    }
}

/// [`Passdb::digest_ha1`] for backends whose [`Entry`] may carry an HA1 (the
/// HA1 of the realm the site uses); a disabled user yields none, so the
/// caller's lookup refuses them.
pub fn entry_ha1(found: Option<Entry>) -> Option<String> {
    found.filter(|e| e.enabled).and_then(|e| e.digest_ha1)
}

/// A timeout option of a passdb URI (`connect_timeout=3`, `timeout=0.5`):
/// seconds, more than 0 and at most an hour.
pub(crate) fn seconds(key: &str, value: &str) -> Result<std::time::Duration, BadOption> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| BadOption::new(key, value, "seconds, e.g. 3 or 0.5"))
}

/// A pool size option (`pool_size=4`): 1 to `max` connections.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "ldap"))]
pub(crate) fn pool_size(value: &str, max: usize) -> Result<usize, BadOption> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| BadOption::new("pool_size", value, format!("1..={max}")))
}

/// An IP literal (IPv6 with or without brackets), else a name resolved
/// asynchronously: for hosts that backends return per user at request time.
pub async fn resolve_host(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse() {
        return Some(ip);
    }
    tokio::net::lookup_host((bare, 0))
        .await
        .ok()?
        .next()
        .map(|a| a.ip())
}

/// Whether one of `passwords` (tried in order) matches `stored`. Runs the
/// hash on the calling thread: expensive schemes belong on the blocking pool
/// or the policy layer's bounded verifier.
pub(crate) fn verify_any(
    stored: &StoredPassword,
    passwords: &[Secret],
) -> Result<bool, PassdbError> {
    for p in passwords {
        if stored
            .verify(p.expose())
            .map_err(|e| PassdbError::BadStoredPassword(e.to_string()))?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Parses a stored password. Without a `{SCHEME}` prefix or a `$id$` crypt
/// prefix the configured default scheme applies; with none configured the
/// value is refused rather than guessed (a DES-crypt hash read as `{PLAIN}`
/// would let anyone who sees the hash log in with it).
pub fn parse_stored(value: &str, default: Option<Scheme>) -> Result<StoredPassword, SchemeError> {
    if value.starts_with('{') || value.starts_with('$') {
        return StoredPassword::parse(value, default.unwrap_or(Scheme::Plain));
    }
    match default {
        Some(d) => StoredPassword::parse(value, d),
        None => Err(SchemeError::UnknownScheme(
            "(none: no {SCHEME} prefix and no default_scheme configured)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind that is a Cargo feature is recognised in every build: its
    /// backend opens (lazily, so no server is needed) or fails on its own
    /// terms with the feature on, and is refused naming the feature with it
    /// off.
    #[test]
    fn a_kind_opens_with_its_feature_and_is_refused_by_name_without() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let sqlite = format!("sqlite:{}", dir.path().join("missing.db").display());
        for (uri, kind, feature, built) in [
            (
                "postgres://app:pw@127.0.0.1:1/auth",
                "postgres://",
                "postgres",
                cfg!(feature = "postgres"),
            ),
            (
                "mysql://app:pw@127.0.0.1:1/auth",
                "mysql://",
                "mysql",
                cfg!(feature = "mysql"),
            ),
            (
                "ldap://127.0.0.1:1/dc=example,dc=org",
                "ldap://",
                "ldap",
                cfg!(feature = "ldap"),
            ),
            (
                sqlite.as_str(),
                "sqlite:",
                "sqlite",
                cfg!(feature = "sqlite"),
            ),
        ] {
            match AnyPassdb::open(uri, None) {
                Err(PassdbConfigError::NotBuilt {
                    kind: k,
                    feature: f,
                }) => {
                    assert!(!built, "{uri}: refused although built in");
                    assert_eq!((k, f), (kind, feature));
                }
                Ok(p) => assert!(built && p.name().starts_with(feature), "{uri}: {p:?}"),
                // A missing SQLite file is its own error, not a missing feature.
                Err(e) => assert!(built && feature == "sqlite", "{uri}: {e}"),
            }
        }
    }

    #[cfg(not(feature = "postgres"))]
    #[test]
    fn without_the_postgres_feature_a_postgres_passdb_is_refused_with_a_clear_message() {
        let e = AnyPassdb::open("postgresql://app:secret@db/auth", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "postgres:// passdbs need the `postgres` feature; this binary was built without it"
        );
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn with_the_postgres_feature_a_postgres_passdb_opens() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let p = AnyPassdb::open("postgresql://app:secret@127.0.0.1:1/auth", None).unwrap();
        assert!(matches!(p, AnyPassdb::Postgres(_)), "{p:?}");
        // Its own refusals still name the URI (password masked), not a feature.
        let e = AnyPassdb::open("postgres://app:secret@db/auth?sslmode=bogus", None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("passdb `postgres://app:***@db/auth?sslmode=bogus`: "),
            "{e}"
        );
    }
}
