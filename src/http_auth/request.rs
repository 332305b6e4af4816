//! An nginx `auth_request` subrequest, typed at the edge: the location's
//! settings, the request line, the client's addresses and the credentials.
//! All string → value conversion for HTTP happens here, as
//! [`crate::auth_http::request`] does it for mail.

use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::digest::Credentials;
use super::{HttpScheme, HttpSettings, SettingsError};
use crate::audit::Method;
use crate::fastcgi::Params;
use crate::secret::Secret;

/// The param carrying nginx's `$request_id`: the same for every subrequest
/// of one client request, internal redirects included.
pub const REQUEST_ID_PARAM: &str = "AUTH_REQUEST_ID";

/// What the client offered in `Authorization`.
#[derive(Debug, Clone)]
pub enum HttpCredentials {
    /// No `Authorization` header: the client gets the challenge.
    None,
    /// A scheme this location does not offer.
    NotOffered,
    /// `Basic` (RFC 7617).
    Basic {
        /// User name.
        user: String,
        /// The password, as sent.
        password: Secret,
    },
    /// `Digest` (RFC 7616).
    Digest(Box<Credentials>),
    /// Credentials of an offered scheme that cannot be used.
    Malformed {
        /// Why (audit only).
        reason: String,
        /// The user name, when one could be read.
        user: String,
    },
}

impl HttpCredentials {
    /// The scheme, for the audit line and metrics.
    pub fn scheme(&self) -> Method {
        match self {
            HttpCredentials::Basic { .. } => Method::Http(HttpScheme::Basic),
            HttpCredentials::Digest(_) => Method::Http(HttpScheme::Digest),
            HttpCredentials::None | HttpCredentials::NotOffered => Method::Unknown,
            HttpCredentials::Malformed { .. } => Method::Unknown,
        }
    }
}

/// One `auth_request` subrequest.
#[derive(Debug, Clone)]
pub struct HttpAuthRequest {
    /// The location's settings (`AUTH_REALM`, …).
    pub settings: HttpSettings,
    /// `REQUEST_METHOD` (part of Digest's HA2).
    pub method: String,
    /// `REQUEST_URI`: the client's original URI, also after internal redirects.
    pub uri: String,
    /// `REMOTE_ADDR`: the peer nginx saw.
    pub peer: Option<IpAddr>,
    /// `X-Forwarded-For`, left to right; `None` for an entry that is not an
    /// address. Believed only from trusted proxies.
    pub forwarded_for: Vec<Option<IpAddr>>,
    /// `X-Real-IP`, believed only from trusted proxies.
    pub real_ip: Option<IpAddr>,
    /// `AUTH_REQUEST_ID` (nginx's `$request_id`).
    pub request_id: Option<String>,
    /// What the client offered.
    pub credentials: HttpCredentials,
    /// The `Authorization` header as sent (for recognising a repeat).
    pub authorization: Option<Secret>,
}

fn text(p: &Params, name: &str) -> Option<String> {
    p.get(name).map(|v| String::from_utf8_lossy(v).into_owned())
}

fn address(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let bare = s
        .strip_prefix('[')
        .and_then(|v| v.split_once(']'))
        .map_or(s, |(ip, _)| ip);
    bare.parse().ok()
}

impl HttpAuthRequest {
    /// Reads the params nginx sends for an `auth_request` location.
    pub fn from_params(p: &Params) -> Result<Self, SettingsError> {
        let settings = HttpSettings::from_params(p)?;
        let authorization = p.get("HTTP_AUTHORIZATION").map(|v| Secret::new(v.to_vec()));
        let credentials = match &authorization {
            None => HttpCredentials::None,
            Some(h) => parse_authorization(&String::from_utf8_lossy(h.expose()), &settings),
        };
        Ok(HttpAuthRequest {
            method: text(p, "REQUEST_METHOD").unwrap_or_default(),
            uri: text(p, "REQUEST_URI").unwrap_or_default(),
            peer: text(p, "REMOTE_ADDR").and_then(|a| address(&a)),
            forwarded_for: text(p, "HTTP_X_FORWARDED_FOR")
                .map(|v| v.split(',').map(address).collect())
                .unwrap_or_default(),
            real_ip: text(p, "HTTP_X_REAL_IP").and_then(|a| address(&a)),
            request_id: text(p, REQUEST_ID_PARAM).filter(|id| !id.is_empty()),
            settings,
            credentials,
            authorization,
        })
    }
}

fn parse_authorization(header: &str, settings: &HttpSettings) -> HttpCredentials {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") && settings.schemes.contains(&HttpScheme::Basic) {
        parse_basic(rest.trim())
    } else if scheme.eq_ignore_ascii_case("digest")
        && settings.schemes.contains(&HttpScheme::Digest)
    {
        match Credentials::parse(rest) {
            Ok(c) => HttpCredentials::Digest(Box::new(c)),
            Err(e) => HttpCredentials::Malformed {
                reason: e.to_string(),
                user: String::new(),
            },
        }
    } else {
        HttpCredentials::NotOffered
    }
}

fn parse_basic(b64: &str) -> HttpCredentials {
    let malformed = |reason: &str, user: &str| HttpCredentials::Malformed {
        reason: reason.to_owned(),
        user: user.to_owned(),
    };
    let Ok(raw) = B64.decode(b64) else {
        return malformed("malformed Basic credentials", "");
    };
    let raw = Secret::new(raw);
    let Some(colon) = raw.expose().iter().position(|b| *b == b':') else {
        return malformed("malformed Basic credentials", "");
    };
    let Ok(user) = std::str::from_utf8(&raw.expose()[..colon]) else {
        return malformed("user name not UTF-8", "");
    };
    let password = Secret::new(raw.expose()[colon + 1..].to_vec());
    if user.is_empty() || password.is_empty() {
        return malformed("empty user or password", user);
    }
    HttpCredentials::Basic {
        user: user.to_owned(),
        password,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(extra: &[(&str, &str)]) -> Params {
        let mut pairs = vec![
            (b"AUTH_REALM".to_vec(), b"R".to_vec()),
            (b"REQUEST_METHOD".to_vec(), b"GET".to_vec()),
            (b"REQUEST_URI".to_vec(), b"/p/".to_vec()),
            (b"REMOTE_ADDR".to_vec(), b"192.0.2.1".to_vec()),
        ];
        for (k, v) in extra {
            pairs.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
        Params::from_pairs(pairs)
    }

    #[test]
    fn typed_at_the_edge() {
        let r = HttpAuthRequest::from_params(&params(&[
            ("HTTP_AUTHORIZATION", "Basic YWxpY2U6d29uZGVybGFuZA=="),
            (
                "HTTP_X_FORWARDED_FOR",
                "203.0.113.9, junk, [2001:db8::1]:443",
            ),
            ("HTTP_X_REAL_IP", "198.51.100.4"),
            ("AUTH_REQUEST_ID", "0123abcd"),
        ]))
        .unwrap();
        assert_eq!((r.method.as_str(), r.uri.as_str()), ("GET", "/p/"));
        assert_eq!(r.peer, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(
            r.forwarded_for,
            vec![
                Some("203.0.113.9".parse().unwrap()),
                None,
                Some("2001:db8::1".parse().unwrap())
            ]
        );
        assert_eq!(r.real_ip, Some("198.51.100.4".parse().unwrap()));
        assert_eq!(r.request_id.as_deref(), Some("0123abcd"));
        match &r.credentials {
            HttpCredentials::Basic { user, password } => {
                assert_eq!(user, "alice");
                assert!(password.ct_eq(b"wonderland"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{r:?}").contains("wonderland"));
    }

    #[test]
    fn unusable_credentials_are_typed_too() {
        let cred = |h: &str| {
            HttpAuthRequest::from_params(&params(&[("HTTP_AUTHORIZATION", h)]))
                .unwrap()
                .credentials
        };
        assert!(matches!(
            cred("Basic !!!"),
            HttpCredentials::Malformed { .. }
        ));
        assert!(matches!(
            cred("Basic OnB3"), // ":pw"
            HttpCredentials::Malformed { .. }
        ));
        assert!(matches!(cred("Bearer x"), HttpCredentials::NotOffered));
        assert!(matches!(
            cred("Digest nonsense"),
            HttpCredentials::Malformed { .. }
        ));
        let none = HttpAuthRequest::from_params(&params(&[])).unwrap();
        assert!(matches!(none.credentials, HttpCredentials::None));
        assert_eq!(none.request_id, None);
    }
}
