//! nginx `auth_request` with HTTP Basic (RFC 7617) and Digest (RFC 7616)
//! against the same passdbs as mail.
//!
//! The auth location turns this mode on with `fastcgi_param AUTH_REALM "…"`;
//! per-location settings come from further `fastcgi_param`s (names in
//! [`HttpSettings::from_params`]). nginx copies a 401's `WWW-Authenticate` to
//! the client (only the first one on nginx 1.22), lets a 2xx through, turns a
//! 403 into 403 and anything else into 500 (reference §6).
//!
//! This module holds only what is HTTP: the typed request ([`request`]),
//! Basic/Digest parsing, the Digest maths ([`digest`]), nonces and their
//! counts ([`nonce`], with the key file in [`nonce_key`] and the counts
//! shared through Redis in [`shared_nc`]), the memory of recent decisions
//! per client request ([`Repeats`]) and the rendering of every reply header
//! ([`HttpAuth::render`]). Deciding is the policy layer's
//! ([`crate::authenticator::Authenticator::authenticate_http`]), shared
//! with mail.

pub mod digest;
pub mod nonce;
pub mod nonce_key;
pub mod request;
pub mod shared_nc;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore as _;
use sha2::Sha256;

use crate::fastcgi::Params;
use digest::{Algorithm, Nonces};
pub use request::{HttpAuthRequest, HttpCredentials, REQUEST_ID_PARAM};

/// The param that marks an http auth_request location.
pub const REALM_PARAM: &str = "AUTH_REALM";

/// An authentication scheme offered to browsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpScheme {
    /// Basic (RFC 7617): the password in clear.
    Basic,
    /// Digest (RFC 7616): a challenge–response over the password.
    Digest,
}

impl HttpScheme {
    /// The name in `AUTH_SCHEMES` and on the audit line.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpScheme::Basic => "basic",
            HttpScheme::Digest => "digest",
        }
    }
}

/// Per-location settings, from `fastcgi_param` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// `AUTH_REALM`: the protection space (part of Digest's HA1).
    pub realm: String,
    /// `AUTH_SCHEMES` (`digest basic`): offered, in challenge order.
    pub schemes: Vec<HttpScheme>,
    /// `AUTH_DIGEST_ALGORITHMS` (`SHA-256 MD5`): allowed, preferred first.
    pub algorithms: Vec<Algorithm>,
    /// `AUTH_NONCE_LIFETIME` seconds (default 300, as Apache).
    pub nonce_lifetime: u64,
    /// `AUTH_USERHASH on`: offer `userhash=true` (RFC 7616 §3.4.4), so the
    /// user name does not cross the wire in clear. Needs a passdb that can list
    /// its users (passwd-file, htpasswd, htdigest).
    pub userhash: bool,
}

/// A setting nginx passed that we cannot use (a configuration error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad fastcgi_param {0}")]
pub struct SettingsError(&'static str);

impl HttpSettings {
    /// Reads `AUTH_REALM`, `AUTH_SCHEMES`, `AUTH_DIGEST_ALGORITHMS`, `AUTH_NONCE_LIFETIME`.
    pub fn from_params(p: &Params) -> Result<Self, SettingsError> {
        let text = |n: &'static str| -> Result<Option<String>, SettingsError> {
            p.get(n)
                .map(|v| String::from_utf8(v.to_vec()).map_err(|_| SettingsError(n)))
                .transpose()
        };
        let realm = text(REALM_PARAM)?.ok_or(SettingsError(REALM_PARAM))?;
        if realm.is_empty() || realm.contains(['"', '\\']) || realm.chars().any(char::is_control) {
            return Err(SettingsError(REALM_PARAM));
        }
        let words = |s: String| {
            s.split([' ', ','])
                .filter(|w| !w.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let schemes = match text("AUTH_SCHEMES")? {
            None => vec![HttpScheme::Digest, HttpScheme::Basic],
            Some(s) => words(s)
                .iter()
                .map(|w| match w.to_ascii_lowercase().as_str() {
                    "basic" => Ok(HttpScheme::Basic),
                    "digest" => Ok(HttpScheme::Digest),
                    _ => Err(SettingsError("AUTH_SCHEMES")),
                })
                .collect::<Result<_, _>>()?,
        };
        let algorithms = match text("AUTH_DIGEST_ALGORITHMS")? {
            None => vec![Algorithm::Sha256, Algorithm::Md5],
            Some(s) => words(s)
                .iter()
                .map(|w| Algorithm::parse(w).ok_or(SettingsError("AUTH_DIGEST_ALGORITHMS")))
                .collect::<Result<_, _>>()?,
        };
        let nonce_lifetime = match text("AUTH_NONCE_LIFETIME")? {
            None => 300,
            // A second to a day: the count is kept in Redis that long.
            Some(s) => s
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=86_400).contains(n))
                .ok_or(SettingsError("AUTH_NONCE_LIFETIME"))?,
        };
        let userhash = match text("AUTH_USERHASH")?.as_deref() {
            None | Some("off") => false,
            Some("on") => true,
            Some(_) => return Err(SettingsError("AUTH_USERHASH")),
        };
        if schemes.is_empty() || algorithms.is_empty() {
            return Err(SettingsError("AUTH_SCHEMES"));
        }
        Ok(HttpSettings {
            realm,
            schemes,
            algorithms,
            nonce_lifetime,
            userhash,
        })
    }
}

/// The outcome of one auth_request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpOutcome {
    /// 200: let the request through; the user goes back in `X-Auth-User`.
    Allow {
        /// The user as the passdb names them (sent as `X-Auth-User`).
        user: String,
        /// For Digest: what `Authentication-Info` carries.
        info: Option<AuthInfo>,
    },
    /// 401 with challenges; `stale` marks a Digest nonce that only expired
    /// (or a count already used), so the client retries silently.
    Challenge {
        /// Send `stale=true`.
        stale: bool,
    },
    /// 403: the brute-force throttle blocks this client; no passdb was asked.
    Blocked,
    /// 503 (nginx shows the client a 500): backend trouble, overload or a
    /// bad setting.
    Unavailable,
}

/// What a successful Digest check sends back in `Authentication-Info`
/// (RFC 7616 §3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthInfo {
    /// H(HA1:nonce:nc:cnonce:auth:H(`:` uri)), proving we know the password.
    pub rspauth: String,
    /// The client's `nc`, as sent.
    pub nc: String,
    /// The client's `cnonce`.
    pub cnonce: String,
    /// The nonce is in the last quarter of its lifetime: send a `nextnonce`.
    pub next_nonce: bool,
}

/// HTTP state that outlives one request: the Digest nonce key and counts,
/// and recent decisions. A reload builds a new one from the configuration
/// (key file, Redis) that [`inherits`](HttpAuth::inherit) the memories.
#[derive(Debug, Default)]
pub struct HttpAuth {
    /// Digest nonces and the highest `nc` seen.
    pub nonces: Nonces,
    /// Recent decisions per client request.
    pub repeats: Arc<Repeats>,
}

impl HttpAuth {
    /// A decider with a fresh nonce key.
    pub fn new() -> Self {
        HttpAuth::default()
    }

    /// A decider with these nonces (key file, shared counts).
    pub fn with_nonces(nonces: Nonces) -> Self {
        HttpAuth {
            nonces,
            repeats: Arc::default(),
        }
    }

    /// After a reload: keeps `old`'s memories of counts and decisions (and
    /// its nonce key, unless this one has a key file).
    pub fn inherit(&mut self, old: &HttpAuth) {
        self.nonces.inherit(&old.nonces);
        self.repeats = Arc::clone(&old.repeats);
    }

    /// The `Authentication-Info` value, or `None` when the client's
    /// `cnonce` cannot be sent back as a quoted string (control bytes).
    fn authentication_info(&self, info: &AuthInfo, s: &HttpSettings) -> Option<String> {
        let cnonce = quoted_string(&info.cnonce)?;
        let mut v = format!(
            "rspauth=\"{}\", qop=auth, nc={}, cnonce={cnonce}",
            info.rspauth, info.nc
        );
        if info.next_nonce {
            v.push_str(&format!(", nextnonce=\"{}\"", self.nonces.issue(&s.realm)));
        }
        Some(v)
    }

    /// Renders the CGI reply.
    pub fn render(&self, outcome: &HttpOutcome, s: &HttpSettings) -> Vec<u8> {
        let mut out = String::new();
        match outcome {
            HttpOutcome::Allow { user, info } => {
                out.push_str("Status: 200 OK\r\n");
                if !user.contains(['\r', '\n', '\0']) {
                    out.push_str(&format!("X-Auth-User: {user}\r\n"));
                }
                if let Some(v) = info.as_ref().and_then(|i| self.authentication_info(i, s)) {
                    out.push_str(&format!("Authentication-Info: {v}\r\n"));
                }
            }
            HttpOutcome::Challenge { stale, .. } => {
                out.push_str("Status: 401 Unauthorized\r\n");
                for scheme in &s.schemes {
                    match scheme {
                        HttpScheme::Digest => {
                            for a in &s.algorithms {
                                out.push_str(&format!(
                                    "WWW-Authenticate: Digest realm=\"{}\", qop=\"auth\", algorithm={}, nonce=\"{}\", charset=UTF-8{}{}\r\n",
                                    s.realm,
                                    a.as_str(),
                                    self.nonces.issue(&s.realm),
                                    if s.userhash { ", userhash=true" } else { "" },
                                    if *stale { ", stale=true" } else { "" }
                                ));
                            }
                        }
                        HttpScheme::Basic => out.push_str(&format!(
                            "WWW-Authenticate: Basic realm=\"{}\", charset=\"UTF-8\"\r\n",
                            s.realm
                        )),
                    }
                }
            }
            HttpOutcome::Blocked => out.push_str("Status: 403 Forbidden\r\n"),
            HttpOutcome::Unavailable => out.push_str("Status: 503 Service Unavailable\r\n"),
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// `"v"` with `\\` and `"` escaped; `None` when `v` holds a control byte.
fn quoted_string(v: &str) -> Option<String> {
    if v.chars().any(char::is_control) {
        return None;
    }
    Some(format!(
        "\"{}\"",
        v.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// How long a decision is remembered for repeats of its client request.
/// nginx repeats a subrequest within the same request (milliseconds); the
/// margin covers a slow upstream before an `error_page` redirect.
const REPEAT_TTL: Duration = Duration::from_secs(30);
/// Decisions per generation of the repeat memory.
const REPEAT_GENERATION: usize = 20_000;

/// One client request, one decision. nginx runs the `auth_request`
/// subrequest again after an internal redirect (index file, `try_files`,
/// `error_page`) with the same `Authorization` header: without this a
/// Digest answer would be refused the second time as a replayed `nc`, a
/// Basic password hashed twice and a wrong one counted twice. With
/// `AUTH_REQUEST_ID` (nginx's `$request_id`, the same across internal
/// redirects and not settable by the client) a repeat of the same
/// credentials under the same id gets the decision already made. A header
/// replayed in another client request has another id and is judged afresh.
///
/// Keys are HMAC-SHA256 under a per-process key of the id, the location's
/// realm, the method, the URI and the header, so nothing stored reveals a
/// credential; two generations bound the memory.
pub struct Repeats {
    key: [u8; 32],
    memory: Mutex<Generations>,
    warned_missing_id: AtomicBool,
}

#[derive(Default)]
struct Generations {
    current: HashMap<[u8; 32], (Instant, HttpOutcome)>,
    previous: HashMap<[u8; 32], (Instant, HttpOutcome)>,
}

impl std::fmt::Debug for Repeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Repeats")
    }
}

impl Default for Repeats {
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Repeats {
            key,
            memory: Mutex::default(),
            warned_missing_id: AtomicBool::new(false),
        }
    }
}

/// The key of one client request's credentials.
#[derive(Clone, Copy)]
pub struct RepeatKey([u8; 32]);

impl Repeats {
    /// The key of `req`, when it carries credentials and a request id.
    /// Without an id, Digest cannot survive internal redirects: said once.
    pub fn key(&self, req: &HttpAuthRequest) -> Option<RepeatKey> {
        let authorization = req.authorization.as_ref()?;
        let Some(id) = &req.request_id else {
            if !self.warned_missing_id.swap(true, Relaxed) {
                log::warn!(
                    "auth_request location (realm \"{}\") sends no {REQUEST_ID_PARAM}: add \
                     `fastcgi_param {REQUEST_ID_PARAM} $request_id;`, or Digest fails on URLs \
                     nginx redirects internally (index files, try_files, error_page) and \
                     Basic failures there count twice",
                    req.settings.realm
                );
            }
            return None;
        };
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("any key length");
        for field in [
            id.as_bytes(),
            req.settings.realm.as_bytes(),
            req.method.as_bytes(),
            req.uri.as_bytes(),
            authorization.expose(),
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        Some(RepeatKey(mac.finalize().into_bytes().into()))
    }

    /// The decision already made for `key`, if it is recent.
    pub fn recall(&self, key: &RepeatKey) -> Option<HttpOutcome> {
        let m = crate::sync::lock(&self.memory);
        let (at, outcome) = m.current.get(&key.0).or_else(|| m.previous.get(&key.0))?;
        (at.elapsed() < REPEAT_TTL).then(|| outcome.clone())
    }

    /// Remembers the decision for `key`.
    pub fn remember(&self, key: RepeatKey, outcome: &HttpOutcome) {
        let mut m = crate::sync::lock(&self.memory);
        if m.current.len() >= REPEAT_GENERATION {
            m.previous = std::mem::take(&mut m.current);
        }
        m.current.insert(key.0, (Instant::now(), outcome.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HttpSettings {
        let p = Params::from_pairs(vec![(REALM_PARAM.into(), b"R".to_vec())]);
        HttpSettings::from_params(&p).unwrap()
    }

    fn allow(http: &HttpAuth, cnonce: &str, next_nonce: bool) -> String {
        let outcome = HttpOutcome::Allow {
            user: "alice".into(),
            info: Some(AuthInfo {
                rspauth: "00ff".into(),
                nc: "0000000a".into(),
                cnonce: cnonce.into(),
                next_nonce,
            }),
        };
        String::from_utf8(http.render(&outcome, &settings())).unwrap()
    }

    #[test]
    fn authentication_info_is_rendered_with_the_200() {
        let http = HttpAuth::new();
        assert_eq!(
            allow(&http, "c\"n\\x", false),
            "Status: 200 OK\r\nX-Auth-User: alice\r\nAuthentication-Info: rspauth=\"00ff\", \
             qop=auth, nc=0000000a, cnonce=\"c\\\"n\\\\x\"\r\n\r\n"
        );
        let with_next = allow(&http, "cn", true);
        let line = with_next
            .lines()
            .find(|l| l.starts_with("Authentication-Info: "))
            .unwrap();
        let next = line
            .split_once(", nextnonce=\"")
            .map(|(_, n)| n.trim_end_matches('"'))
            .expect("a nextnonce");
        assert!(http.nonces.check(next, "R", 300).fresh(), "{next}");
        assert_eq!(
            HttpAuth::new().nonces.check(next, "R", 300),
            digest::NonceState::Invalid
        );
        // A cnonce that cannot be quoted back: no header rather than a broken one.
        let bad = allow(&http, "c\u{1}n", false);
        assert!(!bad.contains("Authentication-Info"), "{bad}");
        let basic = HttpOutcome::Allow {
            user: "bob".into(),
            info: None,
        };
        let text = String::from_utf8(HttpAuth::new().render(&basic, &settings())).unwrap();
        assert_eq!(text, "Status: 200 OK\r\nX-Auth-User: bob\r\n\r\n");
    }
}
