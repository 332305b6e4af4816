//! LDAP passdb: `ldap://HOST:PORT/BASEDN?OPTIONS` or `ldaps://…`, through
//! `ldap3` and a small pool of reused connections.
//!
//! Two modes, as Dovecot offers them:
//!
//! - **`mode=search`** (the default; Dovecot's `auth_bind = no`): bind as the
//!   service DN (`binddn=`, `bindpw=`; anonymous without them), search the
//!   user with `filter=`, read the password attribute (`pass_attr=`, default
//!   `userPassword`, values like `{SSHA}…`, `{CRYPT}$6$…`, `{PLAIN}…`) and check
//!   it here like every other backend does. Can serve CRAM-MD5/APOP/Digest
//!   when the stored scheme allows (`lookup_credentials`).
//! - **`mode=bind`** (Dovecot's `auth_bind = yes`): search the user's DN, then
//!   bind as that DN with the offered password; the server checks it. Only
//!   plaintext mechanisms (PLAIN, LOGIN, HTTP Basic) can be served.
//!
//! Options (after `?`, `&`-separated; a `&` inside a filter such as
//! `filter=(&(objectClass=inetOrgPerson)(uid=%u))` is kept, because only a
//! known `key=` starts a new option):
//!
//! | option | meaning (default) |
//! |---|---|
//! | `mode` | `search` or `bind` (`search`) |
//! | `filter` | user filter; `%u` user, `%n` local part, `%d` domain, `%%` a `%`; values are escaped per RFC 4515 (`(&(objectClass=inetOrgPerson)(uid=%u))`) |
//! | `scope` | `sub`, `one` or `base` (`sub`) |
//! | `binddn`, `bindpw` | service identity for the search (anonymous). **A `bindpw` in the URI lands in the configuration file and in `ps` output of a command line: keep that file readable by the service only.** It is never logged. |
//! | `pass_attr` | password attribute, search mode (`userPassword`) |
//! | `host_attr`, `port_attr` | per-user upstream host (IP or name) and port (none) |
//! | `starttls` | `true` upgrades `ldap://` with StartTLS (`false`) |
//! | `tls_ca` | PEM file of CAs for `ldaps://`/StartTLS (system roots) |
//! | `pool_size` | connections kept at most (4) |
//! | `connect_timeout`, `timeout` | seconds for connecting (+ service bind) and for each operation (3, 5) |
//!
//! The base DN is the URI path, percent-decoded (`dc=example,dc=org`). This
//! is not the RFC 4516 LDAP URL layout (`?attrs?scope?filter`), which cannot
//! carry our options.
//!
//! Failure model: a server that is down, slow, or answers with any error
//! gives a [`PassdbError`] (temporary failure), never a rejection. No entry is
//! `UnknownUser`; a wrong password in bind mode (result 49,
//! invalidCredentials) is `PasswordMismatch`. A pooled connection that the
//! server closed (restart) is replaced, and the operation is tried once more
//! on a fresh connection.

mod filter;
pub mod options;
mod pool;

use std::fmt;
use std::sync::{Arc, Mutex};

use ldap3::{LdapError, SearchEntry, SearchOptions};
use tokio::sync::Semaphore;

use super::{
    parse_stored, resolve_host, verify_entry, Capabilities, Entry, Lookup, Passdb, PassdbError,
    Principal, Rejection, Verdict,
};
use crate::scheme::{Scheme, SchemeError};
use crate::secret::Secret;

pub use self::filter::{FilterError, FilterTemplate};
pub use self::options::{
    LdapOptions, LdapUriError, Mode, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FILTER, DEFAULT_POOL_SIZE,
    DEFAULT_TIMEOUT,
};
/// Kept at its old path; see [`crate::passdb::redact_uri`].
pub use super::redact_uri;

use self::pool::Conn;

/// LDAP result code invalidCredentials (RFC 4511 §A.1).
const INVALID_CREDENTIALS: u32 = 49;

/// What one attempt found out.
enum Outcome {
    NoUser,
    /// The user filter matches more than one entry: the directory's data,
    /// not an outage (so no cached record answers for it).
    Ambiguous,
    /// Search mode: the entry with its attributes.
    Found(Box<SearchEntry>),
    /// Bind mode: the password was right.
    Bound(Box<SearchEntry>),
    /// Bind mode: no offered password was right.
    Mismatch,
}

/// The error of [`Outcome::Ambiguous`].
fn ambiguous() -> PassdbError {
    PassdbError::BadStoredPassword("ldap: the user filter matches more than one entry".into())
}

/// An LDAP passdb.
pub struct Ldap {
    opts: LdapOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
    default_scheme: Option<Scheme>,
    idle: Mutex<Vec<Conn>>,
    slots: Arc<Semaphore>,
}

impl fmt::Debug for Ldap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ldap").field("opts", &self.opts).finish()
    }
}

impl Ldap {
    /// Parses the URI; connects on first use (no runtime needed here).
    pub fn open(uri: &str, default_scheme: Option<Scheme>) -> Result<Ldap, LdapUriError> {
        let opts = LdapOptions::parse(uri)?;
        let tls = opts.tls_config()?;
        Ok(Ldap {
            slots: Arc::new(Semaphore::new(opts.pool_size)),
            idle: Mutex::new(Vec::new()),
            opts,
            tls,
            default_scheme,
        })
    }

    /// The parsed options (the bind password stays hidden in `Debug`).
    pub fn options(&self) -> &LdapOptions {
        &self.opts
    }

    async fn attempt(
        &self,
        conn: &mut Conn,
        user: &str,
        passwords: Option<&[Secret]>,
    ) -> Result<Outcome, LdapError> {
        if !conn.as_service {
            self.bind_service(conn).await?;
        }
        let mut attrs: Vec<&str> = Vec::new();
        if self.opts.mode == Mode::Search {
            attrs.push(&self.opts.pass_attr);
        }
        attrs.extend(self.opts.host_attr.as_deref());
        attrs.extend(self.opts.port_attr.as_deref());
        if attrs.is_empty() {
            // RFC 4511 §4.5.1.8: no attributes, only the DN.
            attrs.push("1.1");
        }
        let filter = self.opts.filter.expand(user);
        let result = conn
            .ldap
            .with_timeout(self.opts.timeout)
            .with_search_options(SearchOptions::new().sizelimit(2))
            .search(&self.opts.base, self.opts.scope, &filter, attrs)
            .await?;
        let (entries, _) = result.success()?;
        let mut entries: Vec<_> = entries.into_iter().filter(|e| !e.is_ref()).collect();
        if entries.len() > 1 {
            return Ok(Outcome::Ambiguous);
        }
        let Some(raw) = entries.pop() else {
            return Ok(Outcome::NoUser);
        };
        let entry = Box::new(SearchEntry::construct(raw));
        let Some(passwords) = passwords.filter(|_| self.opts.mode == Mode::Bind) else {
            return Ok(Outcome::Found(entry));
        };
        for pw in passwords {
            // An empty password would be an unauthenticated bind (RFC 4513
            // §5.1.2), which servers answer with success: never try one.
            let Ok(pw) = std::str::from_utf8(pw.expose()) else {
                continue;
            };
            if pw.is_empty() {
                continue;
            }
            conn.as_service = false;
            let res = conn
                .ldap
                .with_timeout(self.opts.timeout)
                .simple_bind(&entry.dn, pw)
                .await?;
            match res.rc {
                0 => return Ok(Outcome::Bound(entry)),
                INVALID_CREDENTIALS => continue,
                _ => return Err(LdapError::LdapResult { result: res }),
            }
        }
        Ok(Outcome::Mismatch)
    }

    async fn principal(&self, user: &str, entry: &SearchEntry) -> Result<Principal, PassdbError> {
        let upstream_host = match self.opts.host_attr.as_deref().and_then(|a| first(entry, a)) {
            None => None,
            Some(h) => Some(resolve_host(h.trim()).await.ok_or_else(|| {
                PassdbError::Unavailable(format!("upstream host of {user} does not resolve"))
            })?),
        };
        let upstream_port = self
            .opts
            .port_attr
            .as_deref()
            .and_then(|a| first(entry, a))
            .and_then(|p| p.trim().parse::<u16>().ok())
            .filter(|p| *p != 0);
        Ok(Principal {
            user: user.to_owned(),
            upstream_host,
            upstream_port,
            backend_user: None,
        })
    }

    async fn entry(&self, user: &str, found: &SearchEntry) -> Result<Entry, PassdbError> {
        let password = match first(found, &self.opts.pass_attr) {
            Some(p) => parse_stored(&p, self.default_scheme),
            None => Err(SchemeError::UnknownScheme(format!(
                "(no {} attribute readable; may the bind DN read it?)",
                self.opts.pass_attr
            ))),
        };
        Ok(Entry {
            principal: self.principal(user, found).await?,
            password: password.map_err(Arc::new),
            enabled: true,
            digest_ha1: None,
            apps: Default::default(),
        })
    }
}

/// The first value of `attr` (attribute names are case-insensitive).
fn first(entry: &SearchEntry, attr: &str) -> Option<String> {
    let text = entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(attr))
        .and_then(|(_, v)| v.first().cloned());
    text.or_else(|| {
        entry
            .bin_attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(attr))
            .and_then(|(_, v)| v.first())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    })
    .filter(|v| !v.is_empty())
}

impl Passdb for Ldap {
    fn name(&self) -> &'static str {
        "ldap"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            verify_plain: true,
            lookup_credentials: self.opts.mode == Mode::Search,
        }
    }

    async fn verify_plain(&self, user: &str, passwords: &[Secret]) -> Result<Verdict, PassdbError> {
        match self.perform(user, Some(passwords)).await? {
            Outcome::NoUser => Ok(Verdict::Rejected(Rejection::UnknownUser)),
            Outcome::Ambiguous => Err(ambiguous()),
            Outcome::Mismatch => Ok(Verdict::Rejected(Rejection::PasswordMismatch)),
            Outcome::Bound(e) => Ok(Verdict::Accepted(self.principal(user, &e).await?)),
            Outcome::Found(e) => verify_entry(Some(self.entry(user, &e).await?), passwords).await,
        }
    }

    async fn lookup_credentials(&self, user: &str) -> Result<Lookup, PassdbError> {
        if self.opts.mode == Mode::Bind {
            return Err(PassdbError::Unavailable(
                "an LDAP passdb in mode=bind cannot hand out stored credentials".into(),
            ));
        }
        match self.perform(user, None).await? {
            Outcome::NoUser => Ok(Lookup::Rejected(Rejection::UnknownUser)),
            Outcome::Ambiguous => Err(ambiguous()),
            Outcome::Found(e) => self.entry(user, &e).await?.lookup(),
            Outcome::Bound(_) | Outcome::Mismatch => Err(PassdbError::Unavailable(
                "ldap: unexpected bind outcome".into(),
            )),
        }
    }
}
