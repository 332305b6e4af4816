//! nginx `auth_request` with HTTP Basic (RFC 7617) and Digest (RFC 7616)
//! against the same passdbs as mail.
//!
//! The auth location turns this mode on with `fastcgi_param AUTH_REALM "…"`;
//! per-location settings come from further `fastcgi_param`s (names in
//! [`HttpSettings::from_params`]). nginx copies a 401's `WWW-Authenticate` to
//! the client (only the first one on nginx 1.22), lets a 2xx through, turns a
//! 403 into 403 and anything else into 500 (reference §6).

pub mod digest;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::audit::quoted;
use crate::fastcgi::Params;
use crate::passdb::{AnyPassdb, Lookup, Passdb, Rejection, Verdict};
use crate::secret::Secret;
use crate::throttle::{Check, Throttle};
use digest::{Algorithm, Credentials, NonceState, Nonces};

/// The param that marks an http auth_request location.
pub const REALM_PARAM: &str = "AUTH_REALM";

/// An authentication scheme offered to browsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpScheme {
    /// Basic.
    Basic,
    /// Digest.
    Digest,
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
            Some(s) => s
                .parse()
                .map_err(|_| SettingsError("AUTH_NONCE_LIFETIME"))?,
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
        /// Who.
        user: String,
    },
    /// 401 with challenges; `stale` marks a Digest nonce that only expired.
    Challenge {
        /// Why (audit only).
        reason: String,
        /// Send `stale=true`.
        stale: bool,
    },
    /// 403: the brute-force throttle blocks this client; no passdb was asked.
    Blocked,
    /// 503 (nginx shows the client a 500): backend trouble or a bad setting.
    Unavailable {
        /// Why (audit only).
        reason: String,
    },
}

/// Decides HTTP Basic/Digest requests.
#[derive(Debug, Default)]
pub struct HttpAuth {
    nonces: Nonces,
}

impl HttpAuth {
    /// A decider with a fresh nonce key.
    pub fn new() -> Self {
        HttpAuth::default()
    }

    /// Decides one request given its params.
    pub async fn decide(
        &self,
        p: &Params,
        settings: &HttpSettings,
        passdbs: &[AnyPassdb],
        throttle: Option<&Throttle>,
    ) -> (HttpOutcome, String) {
        let guard = Guard {
            throttle,
            ip: p
                .get("REMOTE_ADDR")
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()),
        };
        let (outcome, user) = self.decide_inner(p, settings, passdbs, &guard).await;
        // Count what a guesser produces (wrong password, unknown user), as for
        // mail; a bare first request without credentials is not a failure.
        if let Some(t) = guard.throttle {
            match &outcome {
                HttpOutcome::Allow { .. } => t.record_success(guard.ip, user.as_bytes()).await,
                HttpOutcome::Challenge { reason, .. }
                    if reason == Rejection::PasswordMismatch.as_str()
                        || reason == Rejection::UnknownUser.as_str() =>
                {
                    t.record_failure(guard.ip, user.as_bytes()).await;
                }
                _ => {}
            }
        }
        (outcome, user)
    }

    async fn decide_inner(
        &self,
        p: &Params,
        settings: &HttpSettings,
        passdbs: &[AnyPassdb],
        guard: &Guard<'_>,
    ) -> (HttpOutcome, String) {
        let header = p
            .get("HTTP_AUTHORIZATION")
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let Some(header) = header else {
            return (challenge("no credentials", false), String::new());
        };
        let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") && settings.schemes.contains(&HttpScheme::Basic) {
            self.basic(rest.trim(), passdbs, guard).await
        } else if scheme.eq_ignore_ascii_case("digest")
            && settings.schemes.contains(&HttpScheme::Digest)
        {
            let method = p
                .get("REQUEST_METHOD")
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default();
            let uri = p
                .get("REQUEST_URI")
                .map(|u| String::from_utf8_lossy(u).into_owned())
                .unwrap_or_default();
            self.digest(rest, &method, &uri, settings, passdbs, guard)
                .await
        } else {
            (challenge("scheme not offered", false), String::new())
        }
    }

    async fn basic(
        &self,
        b64: &str,
        passdbs: &[AnyPassdb],
        guard: &Guard<'_>,
    ) -> (HttpOutcome, String) {
        let Ok(raw) = B64.decode(b64) else {
            return (
                challenge("malformed Basic credentials", false),
                String::new(),
            );
        };
        let raw = Secret::new(raw);
        let Some(colon) = raw.expose().iter().position(|b| *b == b':') else {
            return (
                challenge("malformed Basic credentials", false),
                String::new(),
            );
        };
        let Ok(user) = std::str::from_utf8(&raw.expose()[..colon]) else {
            return (challenge("user name not UTF-8", false), String::new());
        };
        let user = user.to_owned();
        let password = Secret::new(raw.expose()[colon + 1..].to_vec());
        if user.is_empty() || password.is_empty() {
            return (challenge("empty user or password", false), user);
        }
        if guard.blocked(&user).await {
            return (HttpOutcome::Blocked, user);
        }
        let mut failure = None;
        for db in passdbs {
            match db
                .verify_plain(&user, std::slice::from_ref(&password))
                .await
            {
                Ok(Verdict::Accepted(p)) => return (HttpOutcome::Allow { user: p.user }, user),
                Ok(Verdict::Rejected(Rejection::UnknownUser)) => continue,
                Ok(Verdict::Rejected(r)) => return (challenge(r.as_str(), false), user),
                Err(e) => {
                    failure.get_or_insert(e.to_string());
                }
            }
        }
        match failure {
            Some(reason) => (HttpOutcome::Unavailable { reason }, user),
            None => (challenge(Rejection::UnknownUser.as_str(), false), user),
        }
    }

    async fn digest(
        &self,
        header: &str,
        method: &str,
        uri: &str,
        s: &HttpSettings,
        passdbs: &[AnyPassdb],
        guard: &Guard<'_>,
    ) -> (HttpOutcome, String) {
        let mut c = match Credentials::parse(header) {
            Ok(c) => c,
            Err(e) => return (challenge(&e.to_string(), false), String::new()),
        };
        if c.userhash {
            if !s.userhash {
                return (challenge("userhash not offered", false), String::new());
            }
            match resolve_userhash(&c, passdbs).await {
                Ok(Some(real)) => c.username = real,
                Ok(None) => {
                    return (
                        challenge(Rejection::UnknownUser.as_str(), false),
                        String::new(),
                    )
                }
                Err(reason) => return (HttpOutcome::Unavailable { reason }, String::new()),
            }
        }
        let user = c.username.clone();
        if guard.blocked(&user).await {
            return (HttpOutcome::Blocked, user);
        }
        if c.realm != s.realm {
            return (challenge("wrong realm", false), user);
        }
        if !s.algorithms.contains(&c.algorithm) {
            return (challenge("algorithm not allowed", false), user);
        }
        if c.uri != uri {
            return (challenge("uri does not match the request", false), user);
        }
        let nonce_state = self.nonces.check(&c.nonce, &s.realm, s.nonce_lifetime);
        if nonce_state == NonceState::Invalid {
            return (challenge("nonce not ours", false), user);
        }
        let mut failure = None;
        for db in passdbs {
            if c.md5_family() {
                match db.digest_ha1(&user, &s.realm).await {
                    Ok(Some(ha1)) => {
                        let ok = c.matches(&c.expected_from_ha1(&ha1, method));
                        return self.conclude_digest(ok, nonce_state, &c, user);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        failure.get_or_insert(e.to_string());
                        continue;
                    }
                }
            }
            if !db.capabilities().lookup_credentials {
                continue;
            }
            let stored = match db.lookup_credentials(&user).await {
                Ok(Lookup::Found { secret, .. }) => secret,
                Ok(Lookup::Rejected(Rejection::UnknownUser)) => continue,
                Ok(Lookup::Rejected(r)) => return (challenge(r.as_str(), false), user),
                Err(e) => {
                    failure.get_or_insert(e.to_string());
                    continue;
                }
            };
            let Some(plain) = stored.plaintext() else {
                return (
                    HttpOutcome::Unavailable {
                        reason: format!("stored scheme {} cannot serve Digest", stored.scheme()),
                    },
                    user,
                );
            };
            let ok = c.matches(&c.expected(plain, method));
            return self.conclude_digest(ok, nonce_state, &c, user);
        }
        match failure {
            Some(reason) => (HttpOutcome::Unavailable { reason }, user),
            None => (challenge(Rejection::UnknownUser.as_str(), false), user),
        }
    }

    /// The answer once the response was checked: a right answer with an
    /// expired nonce is `stale` (the client retries silently), a replayed
    /// `nc` is refused.
    fn conclude_digest(
        &self,
        ok: bool,
        nonce_state: NonceState,
        c: &Credentials,
        user: String,
    ) -> (HttpOutcome, String) {
        if !ok {
            return (challenge(Rejection::PasswordMismatch.as_str(), false), user);
        }
        if nonce_state == NonceState::Stale {
            return (challenge("nonce expired", true), user);
        }
        if !self.nonces.accept_nc(&c.nonce, &c.cnonce, c.nc) {
            return (challenge("nc replayed", true), user);
        }
        (HttpOutcome::Allow { user: user.clone() }, user)
    }

    /// Renders the CGI reply.
    pub fn render(&self, outcome: &HttpOutcome, s: &HttpSettings) -> Vec<u8> {
        let mut out = String::new();
        match outcome {
            HttpOutcome::Allow { user } => {
                out.push_str("Status: 200 OK\r\n");
                if !user.contains(['\r', '\n', '\0']) {
                    out.push_str(&format!("X-Auth-User: {user}\r\n"));
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
            HttpOutcome::Unavailable { .. } => out.push_str("Status: 503 Service Unavailable\r\n"),
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// The throttle and the client address of one request.
struct Guard<'a> {
    throttle: Option<&'a Throttle>,
    ip: Option<std::net::IpAddr>,
}

impl Guard<'_> {
    async fn blocked(&self, user: &str) -> bool {
        match self.throttle {
            Some(t) => matches!(t.check(self.ip, user.as_bytes()).await, Check::Blocked(_)),
            None => false,
        }
    }
}

/// The real user behind a `userhash` username: the first passdb user whose
/// H(`user:realm`) equals it.
async fn resolve_userhash(
    c: &Credentials,
    passdbs: &[AnyPassdb],
) -> Result<Option<String>, String> {
    let wanted = c.username.to_ascii_lowercase();
    let matches = |u: &str| {
        let h = c.algorithm.h(format!("{u}:{}", c.realm).as_bytes());
        crate::secret::ct_eq(h.as_bytes(), wanted.as_bytes())
    };
    for db in passdbs {
        if let Some(u) = db.find_user(&matches).await.map_err(|e| e.to_string())? {
            return Ok(Some(u));
        }
    }
    Ok(None)
}

fn challenge(reason: &str, stale: bool) -> HttpOutcome {
    HttpOutcome::Challenge {
        reason: reason.to_owned(),
        stale,
    }
}

/// One audit line for an HTTP decision.
pub fn audit(outcome: &HttpOutcome, user: &str, p: &Params) {
    let ip = p
        .get("REMOTE_ADDR")
        .map(|v| quoted(&String::from_utf8_lossy(v)))
        .unwrap_or_else(|| "-".into());
    let uri = p
        .get("REQUEST_URI")
        .map(|v| quoted(&String::from_utf8_lossy(v)))
        .unwrap_or_else(|| "-".into());
    match outcome {
        HttpOutcome::Allow { .. } => {
            log::info!(target: "audit", "auth result=ok protocol=http user={} ip={ip} uri={uri}", quoted(user))
        }
        HttpOutcome::Challenge { reason, stale } => log::warn!(
            target: "audit",
            "auth result=fail protocol=http user={} ip={ip} uri={uri} reason={}{}",
            quoted(user),
            quoted(reason),
            if *stale { " stale=true" } else { "" }
        ),
        HttpOutcome::Blocked => log::warn!(
            target: "audit",
            "auth result=fail protocol=http user={} ip={ip} uri={uri} throttle=blocked",
            quoted(user)
        ),
        HttpOutcome::Unavailable { reason } => log::error!(
            target: "audit",
            "auth result=tempfail protocol=http user={} ip={ip} uri={uri} reason={}",
            quoted(user),
            quoted(reason)
        ),
    }
}
