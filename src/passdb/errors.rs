//! The errors of opening a passdb: [`PassdbConfigError`] for a `--passdb`
//! URI, with the backend's own error as its source ([`OpenError`]), and the
//! two kinds that several backends share ([`FileError`], [`BadOption`]).

#[cfg(feature = "ldap")]
use super::ldap;
use super::socket;
#[cfg(any(feature = "postgres", feature = "mysql"))]
use super::sql;
#[cfg(feature = "sqlite")]
use super::sqlite;

/// A `--passdb` URI that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PassdbConfigError {
    /// Unknown URI form.
    #[error(
        "unknown passdb `{0}` (expected passwd-file:PATH, sqlite:PATH, postgres://…, mysql://…, ldap://…, saslauthd:SOCKET, dovecot:SOCKET)"
    )]
    Unknown(String),
    /// A known kind whose backend's Cargo feature this binary was built without.
    #[error("{kind} passdbs need the `{feature}` feature; this binary was built without it")]
    NotBuilt {
        /// The URI form, e.g. `postgres://`.
        kind: &'static str,
        /// The Cargo feature that would include it.
        feature: &'static str,
    },
    /// The backend could not be opened.
    #[error("passdb `{uri}`: {reason}")]
    Open {
        /// The URI, passwords masked ([`redact_uri`](super::redact_uri)).
        uri: String,
        /// What the backend refused in the URI, or could not open.
        #[source]
        reason: OpenError,
    },
}

/// Why a backend could not be opened, by backend.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `passwd-file:`, `htpasswd:`, `htdigest:`.
    #[error(transparent)]
    File(#[from] FileError),
    /// `sqlite:`.
    #[cfg(feature = "sqlite")]
    #[error(transparent)]
    Sqlite(#[from] sqlite::SqliteError),
    /// `postgres://`, `mysql://`.
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    #[error(transparent)]
    Sql(#[from] sql::SqlUriError),
    /// `saslauthd:`, `dovecot:`.
    #[error(transparent)]
    Socket(#[from] socket::SocketUriError),
    /// `ldap://`, `ldaps://`.
    #[cfg(feature = "ldap")]
    #[error(transparent)]
    Ldap(#[from] ldap::LdapUriError),
}

/// A user file (passwd-file, htdigest) that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// At open, by the file watcher (its message names the file).
    #[error(transparent)]
    Watch(#[from] crate::file_watch::WatchError),
    /// By `check-config`.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file that was asked for.
        path: std::path::PathBuf,
        /// The error reading it.
        #[source]
        source: std::io::Error,
    },
}

/// An option value out of its range (`timeout=0`, `pool_size=x`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} `{value}`: expected {expected}")]
pub struct BadOption {
    /// The option's name, as in the URI.
    pub key: String,
    /// The value as given (never that of a password option).
    pub value: String,
    /// What the option accepts, as the message shows it.
    pub expected: String,
}

impl BadOption {
    pub(crate) fn new(key: &str, value: &str, expected: impl Into<String>) -> BadOption {
        BadOption {
            key: key.to_owned(),
            value: value.to_owned(),
            expected: expected.into(),
        }
    }
}
