//! App passwords: per-device passwords a user can have any number of, each
//! named, revocable on its own and limited to what it must open.
//!
//! An app password has scopes (`imap`, `pop3`, `smtp`, `http`, or
//! `http:REALM` for one `auth_request` realm), an optional expiry and
//! optional allowed networks. The passdb hands them out with the user's main
//! credential in one lookup ([`super::Lookup::Found`]); the policy layer
//! checks an offered password against them ([`AppPassword::allows`]) with
//! the protocol of the login and the effective client address, and refuses
//! the main password for the protocols in `require_app_password` (global, or
//! per user).
//!
//! They are generated ([`generate`]: 24 characters from the OS CSPRNG, about
//! 140 bits) and stored as SHA256-CRYPT: a slow hash protects guessable
//! passwords, and at this entropy nothing is guessable, so a fast scheme
//! costs nothing in safety.
//!
//! - `sqlite`: the built-in schema's table, its admin commands and the
//!   background writer of "last used".

pub mod sqlite;

use std::fmt;
use std::net::IpAddr;

use crate::auth_http::MailProtocol;
use crate::net::Cidr;
use crate::scheme::StoredPassword;

/// A protocol a login is for, as scopes and `require_app_password` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// IMAP.
    Imap,
    /// POP3.
    Pop3,
    /// SMTP submission.
    Smtp,
    /// HTTP `auth_request` (Basic).
    Http,
}

impl Service {
    const ALL: [Service; 4] = [Service::Imap, Service::Pop3, Service::Smtp, Service::Http];

    /// The name in scopes and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Imap => "imap",
            Service::Pop3 => "pop3",
            Service::Smtp => "smtp",
            Service::Http => "http",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Service::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl From<MailProtocol> for Service {
    fn from(p: MailProtocol) -> Self {
        match p {
            MailProtocol::Imap => Service::Imap,
            MailProtocol::Pop3 => Service::Pop3,
            MailProtocol::Smtp => Service::Smtp,
        }
    }
}

/// A value that is not a scope, protocol list, network or duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppPasswordError {
    /// Not imap, pop3, smtp, http or http:REALM.
    #[error("`{0}`: a scope is imap, pop3, smtp, http or http:REALM")]
    Scope(String),
    /// Not imap, pop3, smtp or http.
    #[error("`{0}`: expected imap, pop3, smtp or http")]
    Service(String),
    /// No scope at all.
    #[error("an app password needs at least one scope")]
    NoScope,
    /// A network that does not parse.
    #[error(transparent)]
    Network(#[from] crate::net::CidrError),
    /// Not `90d`, `12h` or `4w`.
    #[error("`{0}`: expected a duration such as 90d, 12h or 4w")]
    Duration(String),
}

/// A set of [`Service`]s: `require_app_password`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Services(u8);

impl Services {
    /// Parses `imap`, `pop3`, `smtp`, `http` names (each item may itself be
    /// a comma-separated list).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, AppPasswordError> {
        let mut set = Services::default();
        for part in items
            .iter()
            .flat_map(|i| i.as_ref().split(','))
            .filter(|p| !p.trim().is_empty())
        {
            let s = Service::parse(part).ok_or_else(|| AppPasswordError::Service(part.into()))?;
            set.0 |= s.bit();
        }
        Ok(set)
    }

    /// Both sets together.
    pub fn union(self, other: Services) -> Services {
        Services(self.0 | other.0)
    }

    /// Whether `s` is in the set.
    pub fn contains(self, s: Service) -> bool {
        self.0 & s.bit() != 0
    }

    /// True when empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = Service::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(Service::as_str)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// What an app password opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every login of this protocol (`http`: every realm).
    Service(Service),
    /// HTTP logins to this realm only (`http:REALM`).
    HttpRealm(String),
}

impl Scope {
    /// Parses a comma-separated scope list (`imap,smtp`, `http:Intranet`).
    pub fn parse_list(text: &str) -> Result<Vec<Scope>, AppPasswordError> {
        let scopes = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s.split_once(':') {
                Some((h, realm)) if h.eq_ignore_ascii_case("http") && !realm.is_empty() => {
                    Ok(Scope::HttpRealm(realm.to_owned()))
                }
                _ => Service::parse(s)
                    .map(Scope::Service)
                    .ok_or_else(|| AppPasswordError::Scope(s.into())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if scopes.is_empty() {
            return Err(AppPasswordError::NoScope);
        }
        Ok(scopes)
    }

    fn covers(&self, login: &Login<'_>) -> bool {
        match self {
            Scope::Service(s) => *s == login.service,
            Scope::HttpRealm(r) => login.service == Service::Http && login.realm == Some(r),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Service(s) => f.write_str(s.as_str()),
            Scope::HttpRealm(r) => write!(f, "http:{r}"),
        }
    }
}

/// The scope list as stored and shown: `imap,smtp`.
pub fn scopes_text(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a stored or given network list (comma or space separated).
pub fn parse_networks(text: &str) -> Result<Vec<Cidr>, AppPasswordError> {
    text.split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(AppPasswordError::from))
        .collect()
}

/// A duration such as `90d`, `12h`, `4w` or `30m`, in seconds.
pub fn parse_duration(text: &str) -> Result<i64, AppPasswordError> {
    let bad = || AppPasswordError::Duration(text.into());
    let t = text.trim();
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: i64 = n.parse().map_err(|_| bad())?;
    let per = match unit {
        "m" => 60,
        "h" => 3600,
        "d" | "" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(per).filter(|s| *s > 0).ok_or_else(bad)
}

/// The login an offered password is checked for.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    /// Its protocol.
    pub service: Service,
    /// HTTP: the location's realm.
    pub realm: Option<&'a str>,
    /// The effective client address (after the trusted-proxy rules).
    pub ip: Option<IpAddr>,
}

impl Login<'_> {
    /// A mail login of `protocol` from `ip`.
    pub fn mail(protocol: MailProtocol, ip: Option<IpAddr>) -> Self {
        Login {
            service: protocol.into(),
            realm: None,
            ip,
        }
    }
}

/// Why a matching app password may not be used for a login (the audit
/// line's reason; the client is told only "invalid login").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppRefusal {
    /// Its scopes do not cover the protocol (or realm).
    Scope,
    /// It has expired.
    Expired,
    /// The client is outside its allowed networks.
    Network,
}

/// One app password as the passdb holds it.
#[derive(Debug, Clone)]
pub struct AppPassword {
    /// Its name, unique per user (`phone`, `laptop-thunderbird`).
    pub name: String,
    /// The stored hash.
    pub stored: StoredPassword,
    /// What it opens.
    pub scopes: Vec<Scope>,
    /// Unix time after which it no longer works.
    pub expires: Option<i64>,
    /// Client networks it works from (empty: any).
    pub networks: Vec<Cidr>,
}

impl AppPassword {
    /// Whether this (matching) app password may open `login` at unix time
    /// `now`. Scope first: a password used for the wrong protocol says so
    /// even when it has also expired.
    pub fn allows(&self, login: &Login<'_>, now: i64) -> Result<(), AppRefusal> {
        if !self.scopes.iter().any(|s| s.covers(login)) {
            return Err(AppRefusal::Scope);
        }
        if self.expires.is_some_and(|e| e <= now) {
            return Err(AppRefusal::Expired);
        }
        if !self.networks.is_empty()
            && !login
                .ip
                .is_some_and(|ip| self.networks.iter().any(|n| n.contains(ip)))
        {
            return Err(AppRefusal::Network);
        }
        Ok(())
    }
}

/// A user's app passwords and their own `require_app_password`.
#[derive(Debug, Clone, Default)]
pub struct AppPasswords {
    /// Their app passwords.
    pub list: Vec<AppPassword>,
    /// Protocols for which this user's main password is refused.
    pub required: Services,
}

/// Characters of a generated password: letters and digits without the
/// look-alikes 0/O, 1/l/I (57 symbols, 5.8 bits each).
const ALPHABET: &[u8] = b"23456789abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ";

/// A new app password: 24 symbols from the OS CSPRNG (about 140 bits), in
/// groups of six for typing on a phone (`abcdef-ghijkm-…`).
pub fn generate() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let mut out = String::with_capacity(27);
    for i in 0..24 {
        if i > 0 && i % 6 == 0 {
            out.push('-');
        }
        out.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    out
}

/// Unix time now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::Scheme;

    fn app(scopes: &str, expires: Option<i64>, networks: &str) -> AppPassword {
        AppPassword {
            name: "phone".into(),
            stored: StoredPassword::parse("{PLAIN}x", Scheme::Plain).unwrap(),
            scopes: Scope::parse_list(scopes).unwrap(),
            expires,
            networks: parse_networks(networks).unwrap(),
        }
    }

    fn login<'a>(service: Service, realm: Option<&'a str>, ip: &str) -> Login<'a> {
        Login {
            service,
            realm,
            ip: ip.parse().ok(),
        }
    }

    #[test]
    fn scope_expiry_and_network_are_each_checked() {
        let a = app("smtp,http:Intranet", Some(1000), "192.0.2.0/24");
        let at = |l: Login<'_>, now| a.allows(&l, now);
        assert_eq!(at(login(Service::Smtp, None, "192.0.2.5"), 999), Ok(()));
        assert_eq!(
            at(login(Service::Imap, None, "192.0.2.5"), 999),
            Err(AppRefusal::Scope)
        );
        assert_eq!(
            at(login(Service::Http, Some("Intranet"), "192.0.2.5"), 999),
            Ok(())
        );
        assert_eq!(
            at(login(Service::Http, Some("Other"), "192.0.2.5"), 999),
            Err(AppRefusal::Scope)
        );
        assert_eq!(
            at(login(Service::Smtp, None, "192.0.2.5"), 1000),
            Err(AppRefusal::Expired)
        );
        assert_eq!(
            at(login(Service::Smtp, None, "198.51.100.1"), 999),
            Err(AppRefusal::Network)
        );
        assert_eq!(
            at(login(Service::Smtp, None, "none"), 999),
            Err(AppRefusal::Network),
            "no known client address is outside every network"
        );
        let any = app("http", None, "");
        assert_eq!(
            any.allows(&login(Service::Http, Some("X"), "203.0.113.1"), i64::MAX),
            Ok(())
        );
    }

    #[test]
    fn parses_scopes_services_and_durations() {
        assert_eq!(
            scopes_text(&Scope::parse_list("IMAP, smtp,http:Wiki").unwrap()),
            "imap,smtp,http:Wiki"
        );
        assert!(Scope::parse_list("imap,ftp").is_err());
        assert_eq!(Scope::parse_list(" , "), Err(AppPasswordError::NoScope));
        let s = Services::parse(&["imap,pop3", "smtp"]).unwrap();
        assert!(s.contains(Service::Smtp) && !s.contains(Service::Http));
        assert_eq!(s.to_string(), "imap,pop3,smtp");
        assert!(Services::parse(&["gopher"]).is_err());
        assert_eq!(parse_duration("90d"), Ok(90 * 86_400));
        assert_eq!(parse_duration("12h"), Ok(12 * 3600));
        assert_eq!(parse_duration("2w"), Ok(14 * 86_400));
        assert!(parse_duration("0d").is_err() && parse_duration("soon").is_err());
    }

    #[test]
    fn generated_passwords_are_long_and_differ() {
        let a = generate();
        assert_eq!(a.len(), 27);
        assert_eq!(a.split('-').count(), 4);
        assert!(a.bytes().all(|b| b == b'-' || ALPHABET.contains(&b)));
        assert_ne!(a, generate());
    }
}
