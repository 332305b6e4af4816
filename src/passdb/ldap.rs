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

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry, SearchOptions};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::sql::Var;
use super::{
    parse_stored, resolve_host, seconds, verify_entry, Capabilities, Entry, Lookup, Passdb,
    PassdbError, Principal, Rejection, Verdict,
};
use crate::scheme::{Scheme, SchemeError};
use crate::secret::Secret;

/// The default user filter.
pub const DEFAULT_FILTER: &str = "(&(objectClass=inetOrgPerson)(uid=%u))";
/// Default number of pooled connections.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Default limit for connecting (and the service bind).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default limit for one LDAP operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// LDAP result code invalidCredentials (RFC 4511 §A.1).
const INVALID_CREDENTIALS: u32 = 49;

/// How a password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read the password attribute and check it here.
    Search,
    /// Bind as the user's DN with the password.
    Bind,
}

/// One piece of a filter template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A user filter with `%u`/`%n`/`%d` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterTemplate(Vec<Piece>);

impl FilterTemplate {
    /// Parses `text`; unknown placeholders and filters that do not parse are refused.
    pub fn parse(text: &str) -> Result<FilterTemplate, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let var = match chars.next() {
                Some('%') => {
                    lit.push('%');
                    continue;
                }
                Some('u') => Var::User,
                Some('n') => Var::Local,
                Some('d') => Var::Domain,
                Some('{') => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err("unterminated `%{` in filter".into()),
                        }
                    }
                    match name.as_str() {
                        "user" => Var::User,
                        "username" => Var::Local,
                        "domain" => Var::Domain,
                        _ => return Err(format!("unknown variable `%{{{name}}}` in filter")),
                    }
                }
                other => {
                    return Err(format!(
                        "unknown variable `%{}` in filter (known: %u %n %d; %% for a literal %)",
                        other.map(String::from).unwrap_or_default()
                    ))
                }
            };
            if !lit.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Var(var));
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        let t = FilterTemplate(pieces);
        if ldap3::parse_filter(t.expand("user@example.org")).is_err() {
            return Err(format!("filter `{text}` is not a valid LDAP filter"));
        }
        Ok(t)
    }

    /// The filter for `user`, every value escaped.
    pub fn expand(&self, user: &str) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => out.push_str(&escape_filter_value(v.value(user))),
            }
        }
        out
    }
}

/// Escapes an assertion value for a string filter (RFC 4515 §3): `*`, `(`,
/// `)`, `\` and NUL become `\2a`, `\28`, `\29`, `\5c`, `\00`; other control
/// characters are escaped too, which the RFC allows for any octet.
pub fn escape_filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '*' | '(' | ')' | '\\' | '\0'..='\u{1f}' | '\u{7f}' => {
                out.push_str(&format!("\\{:02x}", c as u32));
            }
            _ => out.push(c),
        }
    }
    out
}

/// Everything the URI configures.
#[derive(Clone)]
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

impl fmt::Debug for LdapOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapOptions")
            .field("url", &self.url)
            .field("base", &self.base)
            .field("mode", &self.mode)
            .field("filter", &self.filter)
            .field("scope", &self.scope)
            .field("bind_dn", &self.bind_dn)
            .field("bind_pw", &"***")
            .field("pass_attr", &self.pass_attr)
            .field("host_attr", &self.host_attr)
            .field("port_attr", &self.port_attr)
            .field("starttls", &self.starttls)
            .field("tls_ca", &self.tls_ca)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .finish()
    }
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
    pub fn parse(uri: &str) -> Result<LdapOptions, String> {
        let (scheme, rest) = uri
            .split_once("://")
            .filter(|(s, _)| *s == "ldap" || *s == "ldaps")
            .ok_or("expected ldap://HOST:PORT/BASEDN or ldaps://…")?;
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
        if authority.is_empty() {
            return Err("no host in the URI".into());
        }
        if authority.contains('@') {
            return Err("credentials go in binddn= and bindpw=, not user@host".into());
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
            let nonempty = || {
                Some(value.to_owned())
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| format!("{key}= needs a value"))
            };
            match key {
                "mode" => {
                    opts.mode = match value {
                        "search" => Mode::Search,
                        "bind" => Mode::Bind,
                        _ => return Err(format!("mode `{value}`: expected search or bind")),
                    }
                }
                "filter" => opts.filter = FilterTemplate::parse(value)?,
                "scope" => {
                    opts.scope = match value {
                        "sub" | "subtree" => Scope::Subtree,
                        "one" | "onelevel" => Scope::OneLevel,
                        "base" => Scope::Base,
                        _ => return Err(format!("scope `{value}`: expected sub, one or base")),
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
                        _ => return Err(format!("starttls `{value}`: expected true or false")),
                    }
                }
                "tls_ca" => opts.tls_ca = Some(PathBuf::from(nonempty()?)),
                "pool_size" => {
                    opts.pool_size = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=256).contains(n))
                        .ok_or_else(|| format!("pool_size `{value}`: expected 1..=256"))?
                }
                "connect_timeout" => opts.connect_timeout = seconds(key, value)?,
                "timeout" => opts.timeout = seconds(key, value)?,
                _ => unreachable!("split_options returns known keys only"),
            }
        }
        if opts.starttls && scheme == "ldaps" {
            return Err("starttls=true goes with ldap://, ldaps:// is TLS already".into());
        }
        if opts.bind_dn.is_none() && !opts.bind_pw.is_empty() {
            return Err("bindpw= without binddn=".into());
        }
        Ok(opts)
    }

    fn tls_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        let Some(path) = &self.tls_ca else {
            return Ok(None);
        };
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let shown = path.display();
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            CertificateDer::pem_file_iter(path).map_err(|e| format!("tls_ca {shown}: {e}"))?
        {
            let cert = cert.map_err(|e| format!("tls_ca {shown}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("tls_ca {shown}: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("tls_ca {shown}: no certificate in it"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(Arc::new(config)))
    }
}

/// Splits the query string into known `key=value` options. A piece that does
/// not start with a known key belongs to the previous value (a filter's `&`).
fn split_options(query: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    let mut start = 0;
    // Byte offsets of option starts.
    let mut starts = Vec::new();
    for (i, _) in query.match_indices('&').map(|(i, s)| (i + 1, s)) {
        let piece = &query[i..];
        let key = piece.split(['=', '&']).next().unwrap_or("");
        if KEYS.contains(&key) && piece[key.len()..].starts_with('=') {
            starts.push(i);
        }
    }
    if query.is_empty() {
        return Ok(out);
    }
    starts.push(query.len() + 1);
    for next in starts {
        let pair = &query[start..next - 1];
        start = next;
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !KEYS.contains(&key) {
            return Err(format!(
                "unknown option `{key}` (known: {})",
                KEYS.join(", ")
            ));
        }
        if out.iter().any(|(k, _)| *k == key) {
            return Err(format!("option `{key}` given twice"));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 once decoded"))
}

/// A pooled connection and who it is bound as.
struct Conn {
    ldap: ldap3::Ldap,
    /// False after a user bind (bind mode): rebind before the next search.
    as_service: bool,
}

/// What one attempt found out.
enum Outcome {
    NoUser,
    /// Search mode: the entry with its attributes.
    Found(Box<SearchEntry>),
    /// Bind mode: the password was right.
    Bound(Box<SearchEntry>),
    /// Bind mode: no offered password was right.
    Mismatch,
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
    pub fn open(uri: &str, default_scheme: Option<Scheme>) -> Result<Ldap, String> {
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

    async fn connect(&self) -> Result<Conn, LdapError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.opts.connect_timeout)
            .set_starttls(self.opts.starttls);
        if let Some(config) = &self.tls {
            settings = settings.set_config(config.clone());
        }
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.opts.url).await?;
        // The driver ends when the server closes the connection or every
        // handle is dropped.
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                log::debug!("ldap connection ended: {e}");
            }
        });
        let mut conn = Conn {
            ldap,
            as_service: false,
        };
        self.bind_service(&mut conn).await?;
        Ok(conn)
    }

    async fn bind_service(&self, conn: &mut Conn) -> Result<(), LdapError> {
        let dn = self.opts.bind_dn.as_deref().unwrap_or("");
        let pw = std::str::from_utf8(self.opts.bind_pw.expose()).unwrap_or("");
        conn.ldap
            .with_timeout(self.opts.timeout)
            .simple_bind(dn, pw)
            .await?
            .success()?;
        conn.as_service = true;
        Ok(())
    }

    /// A connection (reused when one is idle and open) and its pool slot.
    async fn checkout(&self) -> Result<(Conn, bool, OwnedSemaphorePermit), PassdbError> {
        let limit = self.opts.connect_timeout;
        let permit = tokio::time::timeout(limit, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| PassdbError::Timeout)?
            .map_err(|_| PassdbError::Unavailable("ldap pool closed".into()))?;
        loop {
            let idle = self.idle.lock().expect("ldap pool lock").pop();
            match idle {
                Some(mut c) => {
                    if !c.ldap.is_closed() {
                        return Ok((c, true, permit));
                    }
                }
                None => break,
            }
        }
        // set_conn_timeout covers the TCP connect; this covers TLS and the bind too.
        let conn = tokio::time::timeout(limit + self.opts.timeout, self.connect())
            .await
            .map_err(|_| PassdbError::Timeout)?
            .map_err(ldap_error)?;
        Ok((conn, false, permit))
    }

    fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.lock().expect("ldap pool lock");
        if idle.len() < self.opts.pool_size {
            idle.push(conn);
        }
    }

    /// Runs one lookup (and, in bind mode with `passwords`, the user bind),
    /// retrying once on a fresh connection when a reused one turns out dead.
    async fn perform(
        &self,
        user: &str,
        passwords: Option<&[Secret]>,
    ) -> Result<Outcome, PassdbError> {
        let mut retried = false;
        loop {
            let (mut conn, reused, permit) = self.checkout().await?;
            let attempt = tokio::time::timeout(
                self.opts.timeout * 3,
                self.attempt(&mut conn, user, passwords),
            )
            .await
            .unwrap_or_else(|e| Err(LdapError::from(e)));
            match attempt {
                Ok(outcome) => {
                    self.checkin(conn);
                    drop(permit);
                    return Ok(outcome);
                }
                Err(e) => {
                    drop(conn);
                    drop(permit);
                    if reused && !retried && is_transport(&e) {
                        retried = true;
                        continue;
                    }
                    return Err(ldap_error(e));
                }
            }
        }
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
            return Err(LdapError::AdapterInit(
                "the user filter matches more than one entry".into(),
            ));
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

/// True for errors of the connection itself (closed, reset), as opposed to
/// an answer from the server or a timeout.
fn is_transport(e: &LdapError) -> bool {
    !matches!(
        e,
        LdapError::LdapResult { .. } | LdapError::Timeout { .. } | LdapError::AdapterInit(_)
    )
}

fn ldap_error(e: LdapError) -> PassdbError {
    match e {
        LdapError::Timeout { .. } => PassdbError::Timeout,
        other => PassdbError::Unavailable(format!("ldap: {other}")),
    }
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
            Outcome::Found(e) => self.entry(user, &e).await?.lookup(),
            Outcome::Bound(_) | Outcome::Mismatch => Err(PassdbError::Unavailable(
                "ldap: unexpected bind outcome".into(),
            )),
        }
    }
}

/// `uri` with a `bindpw=` value replaced, for logs and error messages; other
/// passdb URIs go through [`super::sql::redact_uri`].
pub fn redact_uri(uri: &str) -> String {
    if !(uri.starts_with("ldap://") || uri.starts_with("ldaps://")) {
        return super::sql::redact_uri(uri);
    }
    let Some((head, query)) = uri.split_once('?') else {
        return uri.to_owned();
    };
    let Ok(pairs) = split_options(query) else {
        // Unparseable: hide everything after the first bindpw=.
        return match uri.find("bindpw=") {
            Some(i) => format!("{}bindpw=***", &uri[..i]),
            None => uri.to_owned(),
        };
    };
    let shown: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            if *k == "bindpw" {
                "bindpw=***".to_owned()
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    format!("{head}?{}", shown.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_escaped_per_rfc_4515() {
        assert_eq!(escape_filter_value("alice"), "alice");
        assert_eq!(escape_filter_value("*"), "\\2a");
        assert_eq!(escape_filter_value(")(uid=*"), "\\29\\28uid=\\2a");
        assert_eq!(
            escape_filter_value("admin)(|(uid=*"),
            "admin\\29\\28|\\28uid=\\2a"
        );
        assert_eq!(escape_filter_value("a\\b"), "a\\5cb");
        assert_eq!(escape_filter_value("a\0b\n"), "a\\00b\\0a");
        assert_eq!(escape_filter_value("jürgen@ex.org"), "jürgen@ex.org");
        // Every escaped filter still parses as one equality match.
        let t = FilterTemplate::parse(DEFAULT_FILTER).unwrap();
        for evil in ["*", ")(uid=*", "admin)(|(uid=*", "\\", "\0", "(", "a*b"] {
            let f = t.expand(evil);
            assert!(ldap3::parse_filter(&f).is_ok(), "{f}");
        }
    }

    #[test]
    fn templates_know_user_local_and_domain() {
        let t = FilterTemplate::parse("(&(uid=%n)(dom=%d)(mail=%{user})(x=100%%))").unwrap();
        assert_eq!(
            t.expand("a*b@ex.org"),
            "(&(uid=a\\2ab)(dom=ex.org)(mail=a\\2ab@ex.org)(x=100%))"
        );
        for bad in [
            "(uid=%x)",
            "(uid=%{nope})",
            "(uid=%{user",
            "(uid=%u",
            "uid=%u)",
        ] {
            assert!(FilterTemplate::parse(bad).is_err(), "{bad}");
        }
    }

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
        ] {
            assert!(LdapOptions::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            redact_uri("ldap://h/dc=x?binddn=cn=a&bindpw=top&secret&mode=search"),
            "ldap://h/dc=x?binddn=cn=a&bindpw=***&mode=search"
        );
    }
}
