//! SQL server passdbs: PostgreSQL ([`Postgres`]) and MySQL/MariaDB ([`Mysql`]).
//!
//! Both run one query per login through a connection pool and hand the row to
//! the shared [`Entry`] checks, so password schemes behave exactly as with the
//! file and SQLite backends. What is SQL-specific lives here:
//!
//! - **URI options** ([`SqlOptions`]): `pool_size`, `connect_timeout` and
//!   `query_timeout` are taken out of the URI's query string before the rest
//!   goes to the driver. Timeouts are seconds (fractions allowed).
//! - **The query** ([`Template`]): a Dovecot-style `password_query` whose
//!   `%u` (full user), `%n` (local part) and `%d` (domain) become *bound
//!   parameters* (`$1` … for PostgreSQL, `?` for MySQL). A value is never
//!   spliced into SQL text, so a user name cannot change the statement.
//! - **The row** ([`Fields`]): columns are read by name. `password` is
//!   required; `enabled`, `upstream_host`, `upstream_port` and `backend_user`
//!   are optional (Dovecot's `nologin`, `host`, `port` and `destuser` are
//!   understood too). A missing optional column means its default.
//!
//! Failure model: a server that is down, slow or refuses the query gives a
//! [`PassdbError`] (temporary failure), never a rejection. The pools open new
//! connections as needed, so a server that comes back is used again without
//! a restart.

mod app_passwords;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "postgres")]
use super::tls::TlsError;
use super::vars::{placeholder, VarError};
use super::{parse_stored, pool_size, resolve_host, seconds, BadOption};
use super::{Entry, PassdbError, Principal};
use crate::scheme::{Scheme, SchemeError};

/// Kept at its old path; see [`crate::passdb::redact_uri`].
pub use super::redact_uri;
pub use super::vars::Var;

#[cfg(feature = "mysql")]
pub use self::mysql::{Mysql, MYSQL_SCHEMA};
#[cfg(feature = "postgres")]
pub use self::postgres::{Postgres, POSTGRES_SCHEMA};

/// The built-in schema's lookup, as a template (see [`Template`]).
pub const DEFAULT_PASSWORD_QUERY: &str =
    "SELECT password, enabled, upstream_host, upstream_port, backend_user \
     FROM users WHERE username = %u";

/// Default number of pooled connections per passdb.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// Default limit for opening a connection (or waiting for a free one).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default limit for one query.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Pool and timeout settings, from the URI's query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlOptions {
    /// Connections kept at most (`pool_size=`).
    pub pool_size: usize,
    /// Opening a connection or waiting for a pooled one (`connect_timeout=`).
    pub connect_timeout: Duration,
    /// One query (`query_timeout=`); a slower query is cancelled.
    pub query_timeout: Duration,
}

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
        }
    }
}

impl SqlOptions {
    /// Takes our options out of `uri`'s query string; returns them and the
    /// URI with the driver's own options left.
    pub fn split_uri(uri: &str) -> Result<(SqlOptions, String), BadOption> {
        let mut opts = SqlOptions::default();
        let Some((base, query)) = uri.split_once('?') else {
            return Ok((opts, uri.to_owned()));
        };
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "pool_size" => opts.pool_size = pool_size(value, 1024)?,
                "connect_timeout" => opts.connect_timeout = seconds(key, value)?,
                "query_timeout" => opts.query_timeout = seconds(key, value)?,
                _ => rest.push(pair),
            }
        }
        let uri = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        Ok((opts, uri))
    }
}

/// A SQL passdb URI or `password_query` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SqlUriError {
    /// `pool_size=`, `connect_timeout=`, `query_timeout=`.
    #[error(transparent)]
    Value(#[from] BadOption),
    /// The `password_query`.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// `sslrootcert=` of PostgreSQL.
    #[cfg(feature = "postgres")]
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// An `sslmode=` we do not support.
    #[error("sslmode={0}: expected disable, prefer, require or verify-full")]
    SslMode(String),
    /// `sslmode=verify-full` alone.
    #[error("sslmode=verify-full needs sslrootcert=/path/to/ca.pem")]
    VerifyFullWithoutRoot,
    /// `sslrootcert=` without the mode that uses it.
    #[error("sslrootcert= goes with {0}")]
    RootWithout(&'static str),
    /// MySQL's `sslrootcert=` file.
    #[error("sslrootcert {path}: {source}")]
    RootCert {
        /// The file as given.
        path: String,
        /// Why it cannot be used.
        #[source]
        source: std::io::Error,
    },
    /// The URI as tokio-postgres reads it.
    #[cfg(feature = "postgres")]
    #[error("{}", error_chain(.0))]
    Postgres(#[source] tokio_postgres::Error),
    /// The PostgreSQL pool.
    #[cfg(feature = "postgres")]
    #[error("{0}")]
    PostgresPool(#[source] deadpool_postgres::BuildError),
    /// The URI as mysql_async reads it.
    #[cfg(feature = "mysql")]
    #[error("{0}")]
    Mysql(#[source] mysql_async::UrlError),
    /// A pool size mysql_async refuses.
    #[cfg(feature = "mysql")]
    #[error("bad pool_size")]
    MysqlPool,
}

/// `e` and its sources, `: `-separated (drivers put the useful part last).
#[cfg(feature = "postgres")]
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// A `password_query` that cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A placeholder we do not know.
    #[error(transparent)]
    Var(#[from] VarError),
    /// `'%n@example.org'`.
    #[error(
        "password_query: a variable inside a longer string literal cannot be bound as a \
         parameter; write e.g. CONCAT(%n, '@…') instead of {0}%n@…{0}"
    )]
    InsideLiteral(char),
    /// A quote without its end.
    #[error("password_query: unterminated string literal")]
    UnterminatedLiteral,
}

/// How placeholders are written in the statement sent to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `$1`, `$2`, … numbered by first use; a variable used twice keeps its number.
    Postgres,
    /// `?` per use, bound in order.
    Mysql,
}

/// A `password_query` turned into a statement with bound parameters.
///
/// Dovecot writes placeholders inside quotes (`WHERE userid = '%u'`); such a
/// quoted placeholder becomes a bare parameter. A placeholder *inside* a longer
/// literal (`'%n@example.org'`) is refused, because a bound parameter cannot
/// live inside a literal; write `CONCAT(%n, '@example.org')` (or `%n || …`).
/// `%%` is a literal `%`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The statement text.
    pub sql: String,
    /// Parameter values, in binding order.
    pub params: Vec<Var>,
}

impl Template {
    /// Compiles `text` for `dialect`.
    pub fn compile(text: &str, dialect: Dialect) -> Result<Template, TemplateError> {
        Template::compile_in(text, dialect, "password_query")
    }

    /// Compiles a rehash `update_query`: `%{hash}` (the new hash) and
    /// `%{old_hash}` (the value it replaces) are bound too.
    pub fn compile_update(text: &str, dialect: Dialect) -> Result<Template, TemplateError> {
        Template::compile_in(text, dialect, "update_query")
    }

    fn compile_in(
        text: &str,
        dialect: Dialect,
        place: &'static str,
    ) -> Result<Template, TemplateError> {
        let chars: Vec<char> = text.chars().collect();
        let mut sql = String::with_capacity(text.len());
        let mut params: Vec<Var> = Vec::new();
        // The quote character of the literal we are in, if any.
        let mut quote: Option<char> = None;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c != '%' {
                match quote {
                    Some(q) if c == q => quote = None,
                    None if c == '\'' || c == '"' => quote = Some(c),
                    _ => {}
                }
                sql.push(c);
                i += 1;
                continue;
            }
            let (var, len) = match placeholder(&chars[i + 1..], place)? {
                (None, _) => {
                    sql.push('%');
                    i += 2;
                    continue;
                }
                (Some(var), len) => (var, len + 1),
            };
            if let Some(q) = quote {
                // `'%u'`: the quotes belong to the placeholder.
                if sql.ends_with(q) && chars.get(i + len) == Some(&q) {
                    sql.pop();
                    quote = None;
                    i += 1;
                } else {
                    return Err(TemplateError::InsideLiteral(q));
                }
            }
            match dialect {
                Dialect::Postgres => {
                    let n = match params.iter().position(|p| *p == var) {
                        Some(n) => n + 1,
                        None => {
                            params.push(var);
                            params.len()
                        }
                    };
                    sql.push_str(&format!("${n}"));
                }
                Dialect::Mysql => {
                    params.push(var);
                    sql.push('?');
                }
            }
            i += len;
        }
        if quote.is_some() {
            return Err(TemplateError::UnterminatedLiteral);
        }
        Ok(Template { sql, params })
    }

    /// The parameter values for `user`, in binding order.
    pub fn values<'u>(&self, user: &'u str) -> Vec<&'u str> {
        self.params.iter().map(|v| v.value(user)).collect()
    }

    /// The parameter values of an `update_query` for `user`, writing `new`
    /// over `old`, in binding order.
    pub fn update_values<'a>(&self, user: &'a str, new: &'a str, old: &'a str) -> Vec<&'a str> {
        let value = |v: &Var| match v {
            Var::NewHash => new,
            Var::OldHash => old,
            v => v.value(user),
        };
        self.params.iter().map(value).collect()
    }
}

/// A value of an optional column, whatever its SQL type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Text (or bytes read as UTF-8).
    Text(String),
    /// Any integer type.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl Value {
    fn truthy(&self) -> Option<bool> {
        match self {
            Value::Null => None,
            Value::Bool(b) => Some(*b),
            Value::Int(i) => Some(*i != 0),
            Value::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                "" | "0" | "f" | "false" | "n" | "no" | "off" => Some(false),
                _ => Some(true),
            },
        }
    }

    fn text(self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Text(t) => Some(t).filter(|t| !t.is_empty()),
            Value::Int(i) => Some(i.to_string()),
            Value::Bool(b) => Some(b.to_string()),
        }
    }
}

/// The columns of one result row, by name. Built by each driver, turned into
/// an [`Entry`] here.
#[derive(Debug, Default)]
pub struct Fields {
    /// `password` (`None`: the column was NULL).
    pub password: Option<String>,
    /// The other columns that were present, lower-cased names.
    pub extra: Vec<(String, Value)>,
}

impl Fields {
    fn take(&mut self, names: &[&str]) -> Value {
        match self
            .extra
            .iter()
            .position(|(n, _)| names.contains(&n.as_str()))
        {
            Some(i) => self.extra.swap_remove(i).1,
            None => Value::Null,
        }
    }

    /// The record for `user`. A hostname in `upstream_host` is resolved here
    /// (asynchronously); one that does not resolve is a temporary failure.
    pub async fn into_entry(
        mut self,
        user: &str,
        default_scheme: Option<Scheme>,
    ) -> Result<Entry, PassdbError> {
        let enabled = self.take(&["enabled"]).truthy().unwrap_or(true)
            && !self.take(&["nologin"]).truthy().unwrap_or(false);
        let upstream_host = match self.take(&["upstream_host", "host"]).text() {
            None => None,
            Some(h) => Some(resolve_host(&h).await.ok_or_else(|| {
                PassdbError::Unavailable(format!("upstream_host of {user} does not resolve"))
            })?),
        };
        let upstream_port = match self.take(&["upstream_port", "port"]) {
            Value::Null => None,
            Value::Int(p) => u16::try_from(p).ok().filter(|p| *p != 0),
            Value::Text(t) => t.trim().parse::<u16>().ok().filter(|p| *p != 0),
            Value::Bool(_) => None,
        };
        let backend_user = self.take(&["backend_user", "destuser"]).text();
        let mut apps = crate::passdb::AppPasswords::default();
        if let Some(r) = self.take(&["require_app_password"]).text() {
            apps.required = crate::passdb::app_password::Services::parse(&[r]).unwrap_or_default();
        }
        // HTTP Digest HA1 for the realm the auth location uses; anything but
        // 32 hex digits is ignored (Digest then needs a {PLAIN} password).
        let digest_ha1 = self
            .take(&["digest_ha1"])
            .text()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| h.len() == 32 && h.bytes().all(|c| c.is_ascii_hexdigit()));
        let password = match self.password {
            Some(p) => parse_stored(&p, default_scheme),
            None => Err(SchemeError::UnknownScheme(
                "(the password column is NULL)".into(),
            )),
        };
        Ok(Entry {
            principal: Principal {
                user: user.to_owned(),
                upstream_host,
                upstream_port,
                backend_user,
            },
            password: password.map_err(Arc::new),
            enabled,
            digest_ha1,
            apps,
        })
    }
}

/// The record of the one row a lookup returned, read by the driver's
/// `fields`; `None` without a row. More than one row is a `password_query`
/// that does not select by user: a temporary failure, as picking one would
/// log someone in on another's password.
async fn row_entry<R>(
    rows: &[R],
    driver: &str,
    fields: fn(&R) -> Result<Fields, PassdbError>,
    user: &str,
    default_scheme: Option<Scheme>,
) -> Result<Option<Entry>, PassdbError> {
    match rows {
        [] => Ok(None),
        [row] => fields(row)?
            .into_entry(user, default_scheme)
            .await
            .map(Some),
        // The data, not the server: no cached record answers for it either.
        more => Err(PassdbError::BadStoredPassword(format!(
            "{driver}: password_query returned {} rows for one user",
            more.len()
        ))),
    }
}

/// `entry` with, for a user found, the app passwords of the
/// `app_password_query` rows that `rows` fetches (see [`app_passwords`]).
/// `rows` is a lazy future: without a user it is never run.
async fn with_apps<R, Fut>(
    entry: Option<Entry>,
    driver: &str,
    fields: fn(&R) -> Result<Fields, PassdbError>,
    user: &str,
    rows: Option<Fut>,
) -> Result<Option<Entry>, PassdbError>
where
    Fut: std::future::Future<Output = Result<Vec<R>, PassdbError>>,
{
    let Some(mut entry) = entry else {
        return Ok(None);
    };
    if let Some(rows) = rows {
        let rows = rows
            .await?
            .iter()
            .map(fields)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PassdbError::Unavailable(format!("{driver} app_password_query: {e}")))?;
        app_passwords::from_rows(rows, user, &mut entry.apps);
    }
    Ok(Some(entry))
}

/// The [`Passdb`](crate::passdb::Passdb) impl of a SQL server passdb: both
/// drivers answer every call from one row, their `entry(user)`.
macro_rules! entry_passdb {
    ($backend:ty, $name:literal) => {
        impl crate::passdb::Passdb for $backend {
            fn name(&self) -> &'static str {
                $name
            }
            fn capabilities(&self) -> crate::passdb::Capabilities {
                crate::passdb::Capabilities::BOTH
            }
            async fn verify_plain(
                &self,
                user: &str,
                passwords: &[crate::secret::Secret],
            ) -> Result<crate::passdb::Verdict, PassdbError> {
                crate::passdb::verify_entry(self.entry(user).await?, passwords).await
            }
            async fn lookup_credentials(
                &self,
                user: &str,
            ) -> Result<crate::passdb::Lookup, PassdbError> {
                crate::passdb::lookup_entry(self.entry(user).await?)
            }
            async fn digest_ha1(
                &self,
                user: &str,
                realm: &str,
            ) -> Result<Option<String>, PassdbError> {
                let _ = realm;
                Ok(crate::passdb::entry_ha1(self.entry(user).await?))
            }
        }
    };
}
use entry_passdb;

/// A small `Debug` that never shows the connection password.
struct Redacted<'a>(&'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_uri(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_bind_every_variable() {
        let t = Template::compile(
            "SELECT pw AS password FROM t WHERE local = '%n' AND dom = %d AND x = '%%' OR u = %{user} OR l = %n",
            Dialect::Postgres,
        )
        .unwrap();
        assert_eq!(
            t.sql,
            "SELECT pw AS password FROM t WHERE local = $1 AND dom = $2 AND x = '%' OR u = $3 OR l = $1"
        );
        assert_eq!(t.params, vec![Var::Local, Var::Domain, Var::User]);
        assert_eq!(t.values("a@b@c.org"), vec!["a@b", "c.org", "a@b@c.org"]);

        let t = Template::compile(
            "SELECT 1 WHERE a = \"%u\" AND b = %n AND c = %u",
            Dialect::Mysql,
        )
        .unwrap();
        assert_eq!(t.sql, "SELECT 1 WHERE a = ? AND b = ? AND c = ?");
        assert_eq!(t.params, vec![Var::User, Var::Local, Var::User]);
        assert_eq!(t.values("bob"), vec!["bob", "bob", "bob"]);
        assert_eq!(Var::Domain.value("bob"), "");
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "SELECT 1 WHERE u = %x",
            "SELECT 1 WHERE u = %",
            "SELECT 1 WHERE u = '%n@example.org'",
            "SELECT 1 WHERE u = %{nope}",
            "SELECT 1 WHERE u = %{user",
            "SELECT 'unterminated",
        ] {
            assert!(Template::compile(bad, Dialect::Postgres).is_err(), "{bad}");
        }
    }

    #[test]
    fn uri_options_are_split_off() {
        let (o, rest) = SqlOptions::split_uri(
            "postgres://u:p@h/db?sslmode=disable&pool_size=2&query_timeout=0.5",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@h/db?sslmode=disable");
        assert_eq!(o.pool_size, 2);
        assert_eq!(o.query_timeout, Duration::from_millis(500));
        assert_eq!(o.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert!(SqlOptions::split_uri("mysql://h/db?pool_size=0").is_err());
        assert!(SqlOptions::split_uri("mysql://h/db?connect_timeout=-1").is_err());
        assert_eq!(
            redact_uri("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact_uri("mysql://u@h/db"), "mysql://u@h/db");
    }
}
