//! The `ldap://` / `ldaps://` URI: [`LdapOptions`] and its errors. The
//! option table is in the [module docs](super).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ldap3::Scope;

use super::filter::{FilterError, FilterTemplate};
use crate::passdb::tls::{self, TlsError};
use crate::passdb::{pool_size, seconds, uri, BadOption};
use crate::secret::Secret;

/// The default user filter.
pub const DEFAULT_FILTER: &str = "(&(objectClass=inetOrgPerson)(uid=%u))";
/// Default number of pooled connections.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Default limit for connecting (and the service bind).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default limit for one LDAP operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read the password attribute and check it here.
    Search,
    /// Bind as the user's DN with the password.
    Bind,
}

/// An LDAP passdb URI that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LdapUriError {
    /// Not `ldap://` or `ldaps://`.
    #[error("expected ldap://HOST:PORT/BASEDN or ldaps://…")]
    Scheme,
    /// `ldap:///…`.
    #[error("no host in the URI")]
    NoHost,
    /// `ldap://user:password@host`.
    #[error("credentials go in binddn= and bindpw=, not user@host")]
    Credentials,
    /// A `%` not followed by two hex digits in the base DN or `binddn=`.
    #[error("bad percent escape in `{0}`")]
    PercentEscape(String),
    /// Percent-decoded bytes that are not UTF-8.
    #[error("`{0}` is not UTF-8 once decoded")]
    NotUtf8(String),
    /// An option we do not have.
    #[error("unknown option `{key}` (known: {})", KEYS.join(", "))]
    UnknownOption {
        /// The option given.
        key: String,
    },
    /// An option given twice.
    #[error("option `{0}` given twice")]
    Twice(String),
    /// An option that needs a value got none.
    #[error("{0}= needs a value")]
    Empty(String),
    /// A value out of its range.
    #[error(transparent)]
    Value(#[from] BadOption),
    /// `filter=`.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// `starttls=true` with `ldaps://`.
    #[error("starttls=true goes with ldap://, ldaps:// is TLS already")]
    StartTlsOnLdaps,
    /// `bindpw=` alone.
    #[error("bindpw= without binddn=")]
    PasswordWithoutDn,
    /// `tls_ca=`.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Everything the URI configures (`Debug` hides the bind password).
#[derive(Clone, Debug)]
pub struct LdapOptions {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// Search base.
    pub base: String,
    /// `mode=`.
    pub mode: Mode,
    /// `filter=`.
    pub filter: FilterTemplate,
    /// `scope=`.
    pub scope: Scope,
    /// `binddn=`.
    pub bind_dn: Option<String>,
    /// `bindpw=`.
    pub bind_pw: Secret,
    /// `pass_attr=`.
    pub pass_attr: String,
    /// `host_attr=`.
    pub host_attr: Option<String>,
    /// `port_attr=`.
    pub port_attr: Option<String>,
    /// `starttls=`.
    pub starttls: bool,
    /// `tls_ca=`.
    pub tls_ca: Option<PathBuf>,
    /// `pool_size=`.
    pub pool_size: usize,
    /// `connect_timeout=`.
    pub connect_timeout: Duration,
    /// `timeout=`.
    pub timeout: Duration,
}

const KEYS: &[&str] = &[
    "mode",
    "filter",
    "scope",
    "binddn",
    "bindpw",
    "pass_attr",
    "host_attr",
    "port_attr",
    "starttls",
    "tls_ca",
    "pool_size",
    "connect_timeout",
    "timeout",
];

impl LdapOptions {
    /// Parses an `ldap://` / `ldaps://` passdb URI.
    pub fn parse(uri: &str) -> Result<LdapOptions, LdapUriError> {
        let (scheme, rest) = uri
            .split_once("://")
            .filter(|(s, _)| *s == "ldap" || *s == "ldaps")
            .ok_or(LdapUriError::Scheme)?;
        // Checked before anything else reads the URI, so that no error
        // quotes a piece of a password (which may hold `/` or `?`). Before
        // an `@` in an option (`bindpw=p@ss`) stands an `=`, before a
        // credential's `@` none needs to.
        if uri::credentials_end(rest).is_some_and(|at| !rest[..at].contains('=')) {
            return Err(LdapUriError::Credentials);
        }
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
        if authority.is_empty() {
            return Err(LdapUriError::NoHost);
        }
        if authority.contains('@') {
            return Err(LdapUriError::Credentials);
        }
        let base = percent_decode(path)?;
        let mut opts = LdapOptions {
            url: format!("{scheme}://{authority}"),
            base,
            mode: Mode::Search,
            filter: FilterTemplate::parse(DEFAULT_FILTER)?,
            scope: Scope::Subtree,
            bind_dn: None,
            bind_pw: Secret::default(),
            pass_attr: "userPassword".into(),
            host_attr: None,
            port_attr: None,
            starttls: false,
            tls_ca: None,
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
        };
        for (key, value) in split_options(query)? {
            let bad = |expected: &str| BadOption::new(key, value, expected);
            let nonempty = || {
                Some(value.to_owned())
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| LdapUriError::Empty(key.to_owned()))
            };
            match key {
                "mode" => {
                    opts.mode = match value {
                        "search" => Mode::Search,
                        "bind" => Mode::Bind,
                        _ => return Err(bad("search or bind").into()),
                    }
                }
                "filter" => opts.filter = FilterTemplate::parse(value)?,
                "scope" => {
                    opts.scope = match value {
                        "sub" | "subtree" => Scope::Subtree,
                        "one" | "onelevel" => Scope::OneLevel,
                        "base" => Scope::Base,
                        _ => return Err(bad("sub, one or base").into()),
                    }
                }
                "binddn" => opts.bind_dn = Some(percent_decode(value)?),
                "bindpw" => opts.bind_pw = Secret::from(value),
                "pass_attr" => opts.pass_attr = nonempty()?,
                "host_attr" => opts.host_attr = Some(nonempty()?),
                "port_attr" => opts.port_attr = Some(nonempty()?),
                "starttls" => {
                    opts.starttls = match value {
                        "true" | "yes" | "1" => true,
                        "false" | "no" | "0" => false,
                        _ => return Err(bad("true or false").into()),
                    }
                }
                "tls_ca" => opts.tls_ca = Some(PathBuf::from(nonempty()?)),
                "pool_size" => opts.pool_size = pool_size(value, 256)?,
                "connect_timeout" => opts.connect_timeout = seconds(key, value)?,
                "timeout" => opts.timeout = seconds(key, value)?,
                _ => unreachable!("split_options returns known keys only"),
            }
        }
        if opts.starttls && scheme == "ldaps" {
            return Err(LdapUriError::StartTlsOnLdaps);
        }
        if opts.bind_dn.is_none() && !opts.bind_pw.is_empty() {
            return Err(LdapUriError::PasswordWithoutDn);
        }
        Ok(opts)
    }

    /// The rustls config for `tls_ca=`; `None`: ldap3's default (system roots).
    pub(super) fn tls_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
        let Some(path) = &self.tls_ca else {
            return Ok(None);
        };
        let roots = tls::load_roots("tls_ca", path)?;
        let (builder, _) = tls::builder()?;
        let config = builder.with_root_certificates(roots).with_no_client_auth();
        Ok(Some(Arc::new(config)))
    }
}

/// Splits the query string into known `key=value` options. A piece that does
/// not start with a known key belongs to the previous value (a filter's `&`).
fn split_options(query: &str) -> Result<Vec<(&str, &str)>, LdapUriError> {
    Ok(option_spans(query)?
        .into_iter()
        .map(|(key, value)| (key, &query[value]))
        .collect())
}

/// [`split_options`] with each value as its byte range in `query`.
fn option_spans(query: &str) -> Result<Vec<(&str, Range<usize>)>, LdapUriError> {
    let mut out: Vec<(&str, Range<usize>)> = Vec::new();
    if query.is_empty() {
        return Ok(out);
    }
    // Byte offsets of option starts.
    let mut starts = vec![0];
    for (i, _) in query.match_indices('&') {
        let piece = &query[i + 1..];
        let key = piece.split(['=', '&']).next().unwrap_or("");
        if KEYS.contains(&key) && piece[key.len()..].starts_with('=') {
            starts.push(i + 1);
        }
    }
    starts.push(query.len() + 1);
    for pair in starts.windows(2) {
        let (start, end) = (pair[0], pair[1] - 1);
        if start == end {
            continue;
        }
        let text = &query[start..end];
        let (key, value) = match text.split_once('=') {
            Some((key, _)) => (key, start + key.len() + 1..end),
            None => (text, end..end),
        };
        if !KEYS.contains(&key) {
            return Err(LdapUriError::UnknownOption {
                key: key.to_owned(),
            });
        }
        if out.iter().any(|(k, _)| *k == key) {
            return Err(LdapUriError::Twice(key.to_owned()));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// The byte ranges of `bindpw=` values in `query`, split as the parser
/// splits; for a query it cannot split, everything after the first `bindpw=`.
pub(crate) fn secret_values(query: &str) -> Vec<Range<usize>> {
    match option_spans(query) {
        Ok(spans) => spans
            .into_iter()
            .filter(|(key, _)| *key == "bindpw")
            .map(|(_, value)| value)
            .collect(),
        Err(_) => query
            .find("bindpw=")
            .map(|i| i + "bindpw=".len()..query.len())
            .into_iter()
            .collect(),
    }
}

/// Percent-decodes a DN; a `%` must start a two-digit hex escape.
fn percent_decode(s: &str) -> Result<String, LdapUriError> {
    let bytes = s.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return Err(LdapUriError::PercentEscape(s.to_owned()));
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|d| d.into_owned())
        .map_err(|_| LdapUriError::NotUtf8(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passdb::redact_uri;

    #[test]
    fn uri_options_keep_filter_ampersands() {
        let o = LdapOptions::parse(
            "ldap://127.0.0.1:3890/ou=people,dc=example,dc=org?mode=bind\
             &filter=(&(objectClass=inetOrgPerson)(uid=%n))&host_attr=mailHost\
             &binddn=cn=admin,dc=example,dc=org&bindpw=s3cr&et&timeout=0.5",
        )
        .unwrap();
        assert_eq!(o.url, "ldap://127.0.0.1:3890");
        assert_eq!(o.base, "ou=people,dc=example,dc=org");
        assert_eq!(o.mode, Mode::Bind);
        assert_eq!(
            o.filter.expand("bob@x"),
            "(&(objectClass=inetOrgPerson)(uid=bob))"
        );
        assert_eq!(o.host_attr.as_deref(), Some("mailHost"));
        assert_eq!(o.bind_dn.as_deref(), Some("cn=admin,dc=example,dc=org"));
        assert_eq!(o.bind_pw.expose(), b"s3cr&et");
        assert_eq!(o.timeout, Duration::from_millis(500));
        assert_eq!(o.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert!(!format!("{o:?}").contains("s3cr"));

        let d = LdapOptions::parse("ldaps://ldap.example.org/dc=a%20b").unwrap();
        assert_eq!(d.mode, Mode::Search);
        assert_eq!(d.base, "dc=a b");
        assert_eq!(d.pass_attr, "userPassword");

        for bad in [
            "ldap:///dc=x",
            "ldap://h/dc=x?nope=1",
            "ldap://h/dc=x?mode=compare",
            "ldap://h/dc=x?bindpw=x",
            "ldaps://h/dc=x?starttls=true",
            "ldap://h/dc=x?timeout=0",
            "ldap://h/dc=x?filter=(uid=%x)",
            "ldap://u:p@h/dc=x",
            "ldap://h/dc=%zz",
            "ldap://h/dc=%ff",
        ] {
            assert!(LdapOptions::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            redact_uri("ldap://h/dc=x?binddn=cn=a&bindpw=top&secret&mode=search"),
            "ldap://h/dc=x?binddn=cn=a&bindpw=***&mode=search"
        );
    }

    #[test]
    fn credentials_in_the_authority_are_refused_without_quoting_them() {
        for uri in [
            "ldap://u:QZ/J@h/dc=x",
            "ldap://u:QZ?J@h/dc=x",
            "ldap://u:QZ@J@h/dc=x",
        ] {
            let e = LdapOptions::parse(uri).unwrap_err();
            assert!(matches!(e, LdapUriError::Credentials), "{uri}: {e}");
        }
        // An `@` in an option is no credential.
        assert!(LdapOptions::parse("ldap://h/dc=x?filter=(mail=%n@example.org)").is_ok());
        assert!(LdapOptions::parse("ldap://h/dc=x?binddn=cn=a&bindpw=p@h/x").is_ok());
    }
}
