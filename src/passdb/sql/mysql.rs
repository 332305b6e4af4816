//! MySQL/MariaDB passdb: `mysql://USER:PASSWORD@HOST:PORT/DB?OPTIONS` (or
//! `mariadb://`), through mysql_async's pool.
//!
//! The driver's own URL options apply (`socket=/run/mysqld/mysqld.sock`,
//! `prefer_socket=false`, …), among them TLS (rustls):
//!
//! - `require_ssl=true`: TLS; the chain must lead to a public (webpki) root
//!   and name the host.
//! - `…&sslrootcert=/path/ca.pem` (ours): trust only the CAs in that file.
//! - `…&verify_identity=false`: do not check the host name;
//!   `…&verify_ca=false`: accept any certificate (encryption only).
//!
//! A connection the driver moves to the server's unix socket
//! (`prefer_socket`, on by default for loopback) is not encrypted; it never
//! leaves the machine.

use std::fmt;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, Row};

use super::DEFAULT_PASSWORD_QUERY;
use super::{row_entry, Dialect, Fields, Redacted, SqlOptions, SqlUriError, Template, Value};
use crate::passdb::{Entry, PassdbError};
use crate::scheme::Scheme;

/// The built-in schema for MySQL/MariaDB. User names are `VARBINARY` so they
/// compare byte-exactly, as in SQLite and PostgreSQL: a text collation would
/// let `ALICE` find `alice` (`_ci`) or `alice ` find `alice` (PAD SPACE,
/// which MariaDB's `utf8mb4_bin` still does).
pub const MYSQL_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    username      VARBINARY(255) NOT NULL PRIMARY KEY,
    domain        VARBINARY(255) NOT NULL DEFAULT '',
    password      VARCHAR(255) NOT NULL,
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    upstream_host VARCHAR(255) NULL,
    upstream_port SMALLINT UNSIGNED NULL CHECK (upstream_port IS NULL OR upstream_port BETWEEN 1 AND 65535),
    backend_user  VARCHAR(255) NULL,
    created_at    TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at    TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
    KEY users_domain (domain)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
";

/// A MySQL/MariaDB passdb.
pub struct Mysql {
    uri: String,
    pool: Pool,
    query: Template,
    /// `app_password_query`, when set.
    app_query: Option<Template>,
    opts: SqlOptions,
    default_scheme: Option<Scheme>,
}

impl fmt::Debug for Mysql {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mysql")
            .field("uri", &Redacted(&self.uri))
            .field("query", &self.query.sql)
            .field("opts", &self.opts)
            .finish()
    }
}

impl Mysql {
    /// Checks the URI and query and sets up the pool (connections are opened
    /// on first use). Must be called inside a tokio runtime.
    pub fn open(
        uri: &str,
        password_query: Option<&str>,
        app_password_query: Option<&str>,
        default_scheme: Option<Scheme>,
    ) -> Result<Self, SqlUriError> {
        let (opts, driver_uri) = SqlOptions::split_uri(uri)?;
        let driver_uri = match driver_uri.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => driver_uri,
        };
        let (root_cert, driver_uri) = take_param(&driver_uri, "sslrootcert");
        let driver_opts = Opts::from_url(&driver_uri).map_err(SqlUriError::Mysql)?;
        let ssl = match (driver_opts.ssl_opts(), root_cert) {
            (None, None) => None,
            (None, Some(_)) => return Err(SqlUriError::RootWithout("require_ssl=true")),
            (Some(ssl), root) => {
                // mysql_async builds its rustls config with the process-wide
                // provider; make sure there is one (an error means one is set).
                let _ = rustls::crypto::ring::default_provider().install_default();
                Some(match root {
                    None => ssl.clone(),
                    Some(path) => {
                        if let Err(source) = std::fs::metadata(&path) {
                            return Err(SqlUriError::RootCert { path, source });
                        }
                        ssl.clone()
                            .with_root_certs(vec![std::path::PathBuf::from(path).into()])
                            .with_disable_built_in_roots(true)
                    }
                })
            }
        };
        let constraints =
            PoolConstraints::new(opts.pool_size, opts.pool_size).ok_or(SqlUriError::MysqlPool)?;
        let builder = OptsBuilder::from_opts(driver_opts)
            .pool_opts(
                PoolOpts::new()
                    .with_constraints(constraints)
                    // Read-only lookups leave no session state to reset.
                    .with_reset_connection(false),
            )
            .ssl_opts(ssl);
        let query = Template::compile(
            password_query.unwrap_or(DEFAULT_PASSWORD_QUERY),
            Dialect::Mysql,
        )?;
        let app_query = app_password_query
            .map(|q| Template::compile(q, Dialect::Mysql))
            .transpose()?;
        Ok(Mysql {
            uri: uri.to_owned(),
            pool: Pool::new(builder),
            query,
            app_query,
            opts,
            default_scheme,
        })
    }

    /// The pool and the lookup, for the rehash writer.
    pub(crate) fn rehash_parts(&self) -> (Pool, Template) {
        (self.pool.clone(), self.query.clone())
    }

    async fn conn(&self) -> Result<Conn, PassdbError> {
        match tokio::time::timeout(self.opts.connect_timeout, self.pool.get_conn()).await {
            Ok(conn) => conn.map_err(my_error),
            Err(_) => Err(PassdbError::Timeout),
        }
    }

    async fn entry(&self, user: &str) -> Result<Option<Entry>, PassdbError> {
        let rows = self.rows(&self.query, user).await?;
        let entry = row_entry(&rows, "mysql", fields, user, self.default_scheme).await?;
        let apps = self.app_query.as_ref().map(|q| self.rows(q, user));
        super::with_apps(entry, "mysql", fields, user, apps).await
    }

    /// The rows of `query` for `user`, within the query timeout.
    async fn rows(&self, query: &Template, user: &str) -> Result<Vec<Row>, PassdbError> {
        let params: Vec<mysql_async::Value> = query
            .values(user)
            .into_iter()
            .map(mysql_async::Value::from)
            .collect();
        // A pooled connection may have died with a server restart; that
        // shows as a connection error on first use, so try a second one.
        let mut retried = false;
        loop {
            let mut conn = self.conn().await?;
            let id = conn.id();
            let run =
                conn.exec::<Row, _, _>(query.sql.as_str(), Params::Positional(params.clone()));
            match tokio::time::timeout(self.opts.query_timeout, run).await {
                Ok(Ok(rows)) => return Ok(rows),
                Ok(Err(e)) if e.is_fatal() && !retried => retried = true,
                Ok(Err(e)) => return Err(my_error(e)),
                Err(_) => {
                    drop(conn);
                    self.kill_query(id);
                    return Err(PassdbError::Timeout);
                }
            }
        }
    }

    /// Stops a timed-out statement server-side (best effort), so it neither
    /// keeps the server busy nor its connection out of the pool for long.
    fn kill_query(&self, id: u32) {
        let pool = self.pool.clone();
        let limit = self.opts.connect_timeout;
        tokio::spawn(tokio::time::timeout(limit, async move {
            if let Ok(mut conn) = pool.get_conn().await {
                let _ = conn.query_drop(format!("KILL QUERY {id}")).await;
            }
        }));
    }
}

/// Removes `key=value` from `uri`'s query string; returns the value.
fn take_param(uri: &str, key: &str) -> (Option<String>, String) {
    let Some((base, query)) = uri.split_once('?') else {
        return (None, uri.to_owned());
    };
    let mut value = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((k, v)) if k == key => {
                value = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    let uri = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (value, uri)
}

fn fields(row: &Row) -> Result<Fields, PassdbError> {
    let mut fields = Fields::default();
    let mut has_password = false;
    for (i, column) in row.columns_ref().iter().enumerate() {
        let name = column.name_str().to_ascii_lowercase();
        let value = match row.as_ref(i) {
            None | Some(mysql_async::Value::NULL) => Value::Null,
            Some(mysql_async::Value::Int(n)) => Value::Int(*n),
            Some(mysql_async::Value::UInt(n)) => Value::Int(i64::try_from(*n).unwrap_or(i64::MAX)),
            Some(mysql_async::Value::Bytes(b)) => match String::from_utf8(b.clone()) {
                Ok(s) => Value::Text(s),
                Err(_) => {
                    return Err(PassdbError::Unavailable(format!(
                        "mysql: column `{name}` is not UTF-8 text"
                    )))
                }
            },
            Some(other) => {
                return Err(PassdbError::Unavailable(format!(
                    "mysql: column `{name}` has an unusable type ({other:?}); cast it to CHAR"
                )))
            }
        };
        if name == "password" {
            has_password = true;
            fields.password = match value {
                Value::Null => None,
                Value::Text(t) => Some(t),
                _ => {
                    return Err(PassdbError::Unavailable(
                        "mysql: the password column is not text".into(),
                    ))
                }
            };
        } else {
            fields.extra.push((name, value));
        }
    }
    if !has_password {
        return Err(PassdbError::Unavailable(
            "mysql: password_query returned no `password` column".into(),
        ));
    }
    Ok(fields)
}

fn my_error(e: mysql_async::Error) -> PassdbError {
    PassdbError::Unavailable(match e {
        // Both layers say "Input/output error"; once is enough.
        mysql_async::Error::Io(io) => format!("mysql: {io}"),
        e => format!("mysql: {e}"),
    })
}

super::entry_passdb!(Mysql, "mysql");
