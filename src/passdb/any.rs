//! [`AnyPassdb`]: every backend as one type, opened from its URI (a kind
//! whose cargo feature is off is recognised and refused by name), with
//! [`Passdb`] forwarded to the backend.

use std::net::IpAddr;

use super::*;

/// Every backend, one variant each; `impl Passdb` forwards.
#[derive(Debug)]
pub enum AnyPassdb {
    /// Dovecot passwd-file.
    PasswdFile(PasswdFile),
    /// SQLite with the built-in schema.
    #[cfg(feature = "sqlite")]
    Sqlite(Sqlite),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(Postgres),
    /// MySQL / MariaDB.
    #[cfg(feature = "mysql")]
    Mysql(Mysql),
    /// Apache htdigest file.
    Htdigest(Htdigest),
    /// Cyrus saslauthd socket (plaintext only).
    Saslauthd(Saslauthd),
    /// Dovecot auth-client socket (plaintext only).
    DovecotAuth(DovecotAuth),
    /// LDAP (search + compare, or auth bind).
    #[cfg(feature = "ldap")]
    Ldap(Ldap),
}

/// Settings that apply to every passdb of a configuration.
#[derive(Debug, Clone, Default)]
pub struct PassdbOptions {
    /// Scheme of stored passwords without a `{SCHEME}` prefix.
    pub default_scheme: Option<Scheme>,
    /// SQL server passdbs: the lookup as a Dovecot-style template (see
    /// [`sql::Template`]); `None` reads the built-in schema.
    pub password_query: Option<String>,
    /// SQL server passdbs: the app passwords' query (see
    /// `sql::app_passwords`); `None`: no app passwords there.
    pub app_password_query: Option<String>,
}

impl AnyPassdb {
    /// [`AnyPassdb::open_with`] with only a default scheme set.
    pub fn open(uri: &str, default_scheme: Option<Scheme>) -> Result<Self, PassdbConfigError> {
        AnyPassdb::open_with(
            uri,
            &PassdbOptions {
                default_scheme,
                ..PassdbOptions::default()
            },
        )
    }

    /// Opens the backend a URI names: `passwd-file:PATH`, `sqlite:PATH`,
    /// `postgres://…` / `postgresql://…`, `mysql://…` / `mariadb://…`,
    /// `saslauthd:SOCKET`, `dovecot:SOCKET` (see [`saslauthd`] and
    /// [`dovecot_auth`] for their options). The SQL
    /// server passdbs need a tokio runtime (entered or running) and connect
    /// on first use.
    pub fn open_with(uri: &str, options: &PassdbOptions) -> Result<Self, PassdbConfigError> {
        let default_scheme = options.default_scheme;
        let Some(kind) = Kind::of(uri) else {
            return Err(PassdbConfigError::Unknown(redact_uri(uri)));
        };
        // With a backend's feature off its kind is still recognised, and refused.
        let opened = match kind {
            #[cfg(feature = "postgres")]
            Kind::Postgres => wrap(
                Postgres::open(
                    uri,
                    options.password_query.as_deref(),
                    options.app_password_query.as_deref(),
                    default_scheme,
                ),
                AnyPassdb::Postgres,
            ),
            #[cfg(not(feature = "postgres"))]
            Kind::Postgres => {
                return Err(PassdbConfigError::NotBuilt {
                    kind: "postgres://",
                    feature: "postgres",
                })
            }
            #[cfg(feature = "mysql")]
            Kind::Mysql => wrap(
                Mysql::open(
                    uri,
                    options.password_query.as_deref(),
                    options.app_password_query.as_deref(),
                    default_scheme,
                ),
                AnyPassdb::Mysql,
            ),
            #[cfg(not(feature = "mysql"))]
            Kind::Mysql => {
                return Err(PassdbConfigError::NotBuilt {
                    kind: "mysql://",
                    feature: "mysql",
                })
            }
            Kind::Htdigest(path) => wrap(Htdigest::open(path.as_ref()), AnyPassdb::Htdigest),
            // Apache htpasswd lines (`user:hash`, hash bcrypt, $apr1$, {SHA},
            // $5$/$6$) are valid passwd-file lines; never guess a bare value.
            Kind::Htpasswd(path) => {
                wrap(PasswdFile::open(path.as_ref(), None), AnyPassdb::PasswdFile)
            }
            Kind::PasswdFile(path) => wrap(
                PasswdFile::open(path.as_ref(), default_scheme),
                AnyPassdb::PasswdFile,
            ),
            #[cfg(feature = "sqlite")]
            Kind::Sqlite(path) => wrap(
                Sqlite::open(path.as_ref(), default_scheme),
                AnyPassdb::Sqlite,
            ),
            #[cfg(not(feature = "sqlite"))]
            Kind::Sqlite(_) => {
                return Err(PassdbConfigError::NotBuilt {
                    kind: "sqlite:",
                    feature: "sqlite",
                })
            }
            Kind::Saslauthd(spec) => wrap(Saslauthd::open(spec), AnyPassdb::Saslauthd),
            Kind::Dovecot(spec) => wrap(DovecotAuth::open(spec), AnyPassdb::DovecotAuth),
            // `ldap://…` / `ldaps://…`; see [`ldap`] for the options.
            #[cfg(feature = "ldap")]
            Kind::Ldap => wrap(Ldap::open(uri, default_scheme), AnyPassdb::Ldap),
            #[cfg(not(feature = "ldap"))]
            Kind::Ldap => {
                return Err(PassdbConfigError::NotBuilt {
                    kind: "ldap://",
                    feature: "ldap",
                })
            }
        };
        opened.map_err(|reason| PassdbConfigError::Open {
            uri: redact_uri(uri),
            reason,
        })
    }
}

impl AnyPassdb {
    /// Whether a lookup here is a round trip to a server or a database file
    /// (SQLite, PostgreSQL, MySQL, LDAP), worth the credential lookup cache;
    /// passwd-files and htdigest are held in memory already.
    pub fn lookup_is_remote(&self) -> bool {
        match self {
            #[cfg(feature = "sqlite")]
            AnyPassdb::Sqlite(_) => true,
            #[cfg(feature = "postgres")]
            AnyPassdb::Postgres(_) => true,
            #[cfg(feature = "mysql")]
            AnyPassdb::Mysql(_) => true,
            #[cfg(feature = "ldap")]
            AnyPassdb::Ldap(_) => true,
            _ => false,
        }
    }
}

/// The passdb a URI names, whether or not this binary includes its backend.
enum Kind<'a> {
    Postgres,
    Mysql,
    Htdigest(&'a str),
    Htpasswd(&'a str),
    PasswdFile(&'a str),
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Sqlite(&'a str),
    Saslauthd(&'a str),
    Dovecot(&'a str),
    Ldap,
}

impl<'a> Kind<'a> {
    /// The kind of `uri`, with what follows its prefix where the backend
    /// takes only that; `None`: not a passdb URI.
    fn of(uri: &'a str) -> Option<Kind<'a>> {
        let after = |prefix| uri.strip_prefix(prefix);
        Some(
            if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
                Kind::Postgres
            } else if uri.starts_with("mysql://") || uri.starts_with("mariadb://") {
                Kind::Mysql
            } else if let Some(path) = after("htdigest:") {
                Kind::Htdigest(path)
            } else if let Some(path) = after("htpasswd:") {
                Kind::Htpasswd(path)
            } else if let Some(path) = after("passwd-file:") {
                Kind::PasswdFile(path)
            } else if let Some(path) = after("sqlite:") {
                Kind::Sqlite(path)
            } else if let Some(spec) = after("saslauthd:") {
                Kind::Saslauthd(spec)
            } else if let Some(spec) = after("dovecot:") {
                Kind::Dovecot(spec)
            } else if uri.starts_with("ldap:") || uri.starts_with("ldaps:") {
                Kind::Ldap
            } else {
                return None;
            },
        )
    }
}

/// `$call` on the backend of every variant (`p`).
macro_rules! each {
    ($self:ident, $p:ident => $call:expr) => {
        match $self {
            AnyPassdb::PasswdFile($p) => $call,
            #[cfg(feature = "sqlite")]
            AnyPassdb::Sqlite($p) => $call,
            #[cfg(feature = "postgres")]
            AnyPassdb::Postgres($p) => $call,
            #[cfg(feature = "mysql")]
            AnyPassdb::Mysql($p) => $call,
            AnyPassdb::Htdigest($p) => $call,
            AnyPassdb::Saslauthd($p) => $call,
            AnyPassdb::DovecotAuth($p) => $call,
            #[cfg(feature = "ldap")]
            AnyPassdb::Ldap($p) => $call,
        }
    };
}

/// A backend's `open` answer as an [`AnyPassdb`] (its `variant`) or an [`OpenError`].
fn wrap<B, E>(opened: Result<B, E>, variant: fn(B) -> AnyPassdb) -> Result<AnyPassdb, OpenError>
where
    OpenError: From<E>,
{
    opened.map(variant).map_err(OpenError::from)
}

impl Passdb for AnyPassdb {
    fn name(&self) -> &'static str {
        each!(self, p => p.name())
    }
    fn capabilities(&self) -> Capabilities {
        each!(self, p => p.capabilities())
    }
    async fn verify_plain(&self, user: &str, passwords: &[Secret]) -> Result<Verdict, PassdbError> {
        each!(self, p => p.verify_plain(user, passwords).await)
    }
    async fn lookup_credentials(&self, user: &str) -> Result<Lookup, PassdbError> {
        each!(self, p => p.lookup_credentials(user).await)
    }
    async fn digest_ha1(&self, user: &str, realm: &str) -> Result<Option<String>, PassdbError> {
        // Backends without an HA1 answer `Ok(None)` (the trait's default).
        each!(self, p => p.digest_ha1(user, realm).await)
    }
    async fn find_user(
        &self,
        matches: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Option<String>, PassdbError> {
        each!(self, p => p.find_user(matches).await)
    }
    fn app_password_used(&self, user: &str, name: &str, ip: Option<IpAddr>) {
        each!(self, p => p.app_password_used(user, name, ip))
    }
}
