//! URI options of the socket passdbs (`saslauthd:` and `dovecot:`):
//! `[SOCKET][?key=value&…]`, and the errors both report.

use std::path::PathBuf;

use super::BadOption;

/// saslauthd drops requests with a longer field (`MAX_REQ_LEN` in
/// saslauthd.h); an option that goes on the wire is held to the same limit.
pub(crate) const MAX_FIELD: usize = 256;

/// A socket passdb URI that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SocketUriError {
    /// The socket path is relative.
    #[error("socket path `{0}` must be absolute")]
    Relative(String),
    /// An option this backend does not have.
    #[error("unknown option `{key}` (known: {known})")]
    UnknownOption {
        /// The option given.
        key: String,
        /// The options there are.
        known: &'static str,
    },
    /// A value that cannot go on the wire.
    #[error("{key} `{value}`: too long or has control characters")]
    Field {
        /// The option's name.
        key: String,
        /// The value as given.
        value: String,
    },
    /// A `timeout=` that is not seconds in range.
    #[error(transparent)]
    Value(#[from] BadOption),
    /// A service name the backend cannot send.
    #[error("service must {0}")]
    Service(&'static str),
}

/// A socket path and its `key=value` options, in URI order.
pub(crate) type SocketSpec<'a> = (PathBuf, Vec<(&'a str, &'a str)>);

/// Splits `PATH?k=v&k=v` (the part of a socket passdb URI after its
/// `scheme:`); an empty path means `default`.
pub(crate) fn split_options<'a>(
    spec: &'a str,
    default: &str,
) -> Result<SocketSpec<'a>, SocketUriError> {
    let (path, query) = spec.split_once('?').unwrap_or((spec, ""));
    let path = if path.is_empty() { default } else { path };
    if !path.starts_with('/') {
        return Err(SocketUriError::Relative(path.to_owned()));
    }
    let options = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    Ok((PathBuf::from(path), options))
}

/// A text option that goes on the wire as is: no control characters.
pub(crate) fn field<'a>(key: &str, value: &'a str) -> Result<&'a str, SocketUriError> {
    if value.len() > MAX_FIELD || value.chars().any(char::is_control) {
        return Err(SocketUriError::Field {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(value)
}
