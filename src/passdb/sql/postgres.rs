//! PostgreSQL passdb: `postgres://USER:PASSWORD@HOST:PORT/DB?OPTIONS` (or
//! `postgresql://`), through tokio-postgres and a deadpool pool.
//!
//! The URI is libpq's, so `host=/run/postgresql` (a socket directory),
//! `application_name=` and the like work as in `psql`. TLS (rustls):
//!
//! - `sslmode=disable` (and `prefer`, the default): no TLS.
//! - `sslmode=require`: TLS, certificate not checked (libpq's `require`):
//!   protects against eavesdropping, not against an active attacker.
//! - `sslmode=verify-full&sslrootcert=/path/ca.pem`: TLS, the server's chain
//!   must lead to a CA in that file and name the host connected to.
//!
//! `verify-ca` and client certificates are not supported (refused at start-up).

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{NoTls, Row};

use super::{error_chain as chain, row_entry, Dialect, Fields, Redacted, SqlOptions, SqlUriError};
use super::{Template, Value, DEFAULT_PASSWORD_QUERY};
use crate::passdb::{tls, Entry, PassdbError};
use crate::scheme::Scheme;

/// The built-in schema for PostgreSQL: the SQLite one with native types.
pub const POSTGRES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    username      TEXT PRIMARY KEY NOT NULL,
    domain        TEXT NOT NULL DEFAULT '',
    password      TEXT NOT NULL,
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    upstream_host TEXT,
    upstream_port INTEGER CHECK (upstream_port IS NULL OR upstream_port BETWEEN 1 AND 65535),
    backend_user  TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS users_domain ON users(domain);
";

/// A PostgreSQL passdb.
pub struct Postgres {
    uri: String,
    pool: Pool,
    query: Template,
    /// `app_password_query`, when set.
    app_query: Option<Template>,
    opts: SqlOptions,
    default_scheme: Option<Scheme>,
    /// `None`: plain TCP / unix socket.
    tls: Option<MakeRustlsConnect>,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("uri", &Redacted(&self.uri))
            .field("query", &self.query.sql)
            .field("opts", &self.opts)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// How to check the server's certificate.
enum Verify {
    /// Not at all (`sslmode=require`).
    Nothing,
    /// Chain to these roots, and the host name (`verify-full`).
    Roots(RootCertStore),
}

/// Takes `sslrootcert=` and `sslmode=verify-*` (which tokio-postgres does not
/// know) out of the URI; returns the TLS choice and the URI for the driver.
fn split_tls(uri: &str) -> Result<(Option<Verify>, String), SqlUriError> {
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut mode = None;
    let mut root = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("sslmode", m) => mode = Some(m.to_owned()),
            ("sslrootcert", path) => root = Some(path.to_owned()),
            _ => rest.push(pair),
        }
    }
    let verify = match (mode.as_deref(), root) {
        (None | Some("disable" | "prefer"), None) => None,
        (Some("require"), None) => Some(Verify::Nothing),
        (Some("verify-full"), Some(path)) => Some(Verify::Roots(tls::load_roots(
            "sslrootcert",
            path.as_ref(),
        )?)),
        (Some("verify-full"), None) => return Err(SqlUriError::VerifyFullWithoutRoot),
        (Some(m), Some(_)) if m != "verify-full" => {
            return Err(SqlUriError::RootWithout("sslmode=verify-full"))
        }
        (None, Some(_)) => return Err(SqlUriError::RootWithout("sslmode=verify-full")),
        (Some(m), _) => return Err(SqlUriError::SslMode(m.to_owned())),
    };
    // The driver only needs to know whether TLS is on.
    if verify.is_some() {
        rest.push("sslmode=require");
    } else {
        rest.push("sslmode=disable");
    }
    Ok((verify, format!("{base}?{}", rest.join("&"))))
}

fn tls_connector(verify: Verify) -> Result<MakeRustlsConnect, SqlUriError> {
    let (builder, provider) = tls::builder()?;
    let config = match verify {
        Verify::Roots(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// libpq's `sslmode=require`: any certificate is accepted, but the handshake
/// signatures are still checked, so the session key is the server's.
#[derive(Debug)]
struct EncryptOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

impl Postgres {
    /// Checks the URI and query and sets up the pool. Connects lazily: a
    /// server that is down at start-up is a temporary failure per request,
    /// not a start-up error. Needs a tokio runtime (entered or running).
    pub fn open(
        uri: &str,
        password_query: Option<&str>,
        app_password_query: Option<&str>,
        default_scheme: Option<Scheme>,
    ) -> Result<Self, SqlUriError> {
        let (opts, driver_uri) = SqlOptions::split_uri(uri)?;
        let (verify, driver_uri) = split_tls(&driver_uri)?;
        let mut config: tokio_postgres::Config =
            driver_uri.parse().map_err(SqlUriError::Postgres)?;
        let tls = verify.map(tls_connector).transpose()?;
        config.connect_timeout(opts.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("nginx-auth-fcgi");
        }
        let query = Template::compile(
            password_query.unwrap_or(DEFAULT_PASSWORD_QUERY),
            Dialect::Postgres,
        )?;
        let app_query = app_password_query
            .map(|q| Template::compile(q, Dialect::Postgres))
            .transpose()?;
        let manager_config = ManagerConfig {
            // A connection whose server went away is closed by its task;
            // Fast notices that and opens a new one.
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            None => Manager::from_config(config, NoTls, manager_config),
            Some(tls) => Manager::from_config(config, tls.clone(), manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(opts.connect_timeout))
            .create_timeout(Some(opts.connect_timeout))
            .recycle_timeout(Some(opts.connect_timeout))
            .build()
            .map_err(SqlUriError::PostgresPool)?;
        Ok(Postgres {
            uri: uri.to_owned(),
            pool,
            query,
            app_query,
            opts,
            default_scheme,
            tls,
        })
    }

    /// The pool and the lookup, for the rehash writer.
    pub(crate) fn rehash_parts(&self) -> (Pool, Template) {
        (self.pool.clone(), self.query.clone())
    }

    async fn entry(&self, user: &str) -> Result<Option<Entry>, PassdbError> {
        if user.contains('\0') {
            // PostgreSQL text cannot hold NUL, so no such user can exist.
            return Ok(None);
        }
        let rows = self.rows(&self.query, user).await?;
        let entry = row_entry(&rows, "postgres", fields, user, self.default_scheme).await?;
        let apps = self.app_query.as_ref().map(|q| self.rows(q, user));
        super::with_apps(entry, "postgres", fields, user, apps).await
    }

    /// The rows of `query` for `user`, within the query timeout.
    async fn rows(&self, query: &Template, user: &str) -> Result<Vec<Row>, PassdbError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let cancel = client.cancel_token();
        let values = query.values(user);
        let types = vec![Type::TEXT; values.len()];
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let run = async {
            let stmt = client.prepare_typed_cached(&query.sql, &types).await?;
            client.query(&stmt, &params).await
        };
        match tokio::time::timeout(self.opts.query_timeout, run).await {
            Ok(rows) => rows.map_err(pg_error),
            Err(_) => {
                // Stop the statement server-side and keep the connection out
                // of the pool: it is still busy with the slow query.
                let tls = self.tls.clone();
                tokio::spawn(async move {
                    let _ = match tls {
                        None => cancel.cancel_query(NoTls).await,
                        Some(tls) => cancel.cancel_query(tls).await,
                    };
                });
                drop(Object::take(client));
                Err(PassdbError::Timeout)
            }
        }
    }
}

fn fields(row: &Row) -> Result<Fields, PassdbError> {
    let mut fields = Fields::default();
    let mut has_password = false;
    for (i, column) in row.columns().iter().enumerate() {
        let name = column.name().to_ascii_lowercase();
        let bad = |e: tokio_postgres::Error| {
            PassdbError::Unavailable(format!(
                "postgres: column `{name}` ({}): {}; cast it to text",
                column.type_(),
                chain(&e)
            ))
        };
        if name == "password" {
            has_password = true;
            fields.password = row.try_get::<_, Option<String>>(i).map_err(bad)?;
        } else {
            let value = row.try_get::<_, Option<Flex>>(i).map_err(bad)?;
            fields
                .extra
                .push((name, value.map(|f| f.0).unwrap_or(Value::Null)));
        }
    }
    if !has_password {
        return Err(PassdbError::Unavailable(
            "postgres: password_query returned no `password` column".into(),
        ));
    }
    Ok(fields)
}

/// An optional column of any type we can read.
struct Flex(Value);

impl<'a> FromSql<'a> for Flex {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Flex(match *ty {
            Type::BOOL => Value::Bool(bool::from_sql(ty, raw)?),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INET => Value::Text(std::net::IpAddr::from_sql(ty, raw)?.to_string()),
            _ => Value::Text(String::from_sql(ty, raw)?),
        }))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::BOOL | Type::INT2 | Type::INT4 | Type::INT8 | Type::INET
        ) || <String as FromSql>::accepts(ty)
    }
}

fn pg_error(e: tokio_postgres::Error) -> PassdbError {
    match e.as_db_error() {
        Some(db) => PassdbError::Unavailable(format!(
            "postgres: {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        )),
        None => PassdbError::Unavailable(format!("postgres: {}", chain(&e))),
    }
}

fn pool_error(e: PoolError) -> PassdbError {
    match e {
        PoolError::Timeout(_) => PassdbError::Timeout,
        PoolError::Backend(e) => pg_error(e),
        other => PassdbError::Unavailable(format!("postgres pool: {other}")),
    }
}

super::entry_passdb!(Postgres, "postgres");
