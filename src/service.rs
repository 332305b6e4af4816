//! The FastCGI handler: ties the hops together for each request —
//! params → shared-secret check → [`MailAuthRequest`] or [`HttpAuthRequest`]
//! → [`Authenticator`] → audit record → rendered headers.
//!
//! It decides only what comes before a login decision: a request without
//! the shared secret, or one nginx sent malformed, is refused (403, or a
//! mail temporary failure without `Auth-Wait`) and counted as a protocol
//! error. It also serves the metrics and the throttle and cache admin
//! requests.

use crate::audit::quoted;
use crate::auth_http::{Failure, FailureKind, MailAuthRequest, MailAuthResponse};
use crate::authenticator::Authenticator;
use crate::fastcgi::{Handler, Params, Request, Response};
use crate::http_auth::{self, HttpAuth, HttpAuthRequest};
use crate::metrics::METRICS;
use crate::secret::Secret;
use crate::upstream::Checks;

/// A header nginx must send (`auth_http_header X-Auth-Key "…"`), proving the
/// request came through our nginx and not from another local process.
#[derive(Debug, Clone)]
pub struct RequiredHeader {
    /// Header name as configured in nginx, e.g. `X-Auth-Key`.
    pub header: String,
    /// The CGI param nginx turns it into, e.g. `HTTP_X_AUTH_KEY`.
    pub param: String,
    /// Expected value.
    pub value: Secret,
}

/// A `--require-header` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequiredHeaderError {
    /// No `=`.
    #[error("expected NAME=VALUE, e.g. X-Auth-Key=secret")]
    NoValue,
    /// A name nginx would never pass on.
    #[error("header name `{0}` must be letters, digits and dashes (nginx drops others)")]
    Name(String),
    /// `NAME=` with nothing after it.
    #[error("the shared secret must not be empty")]
    EmptySecret,
}

impl std::str::FromStr for RequiredHeader {
    type Err = RequiredHeaderError;
    /// Parses `NAME=VALUE`.
    fn from_str(s: &str) -> Result<Self, RequiredHeaderError> {
        let (name, value) = s.split_once('=').ok_or(RequiredHeaderError::NoValue)?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            // nginx http drops header names with `_` or other characters
            // (underscores_in_headers off), so such a header would never arrive.
            return Err(RequiredHeaderError::Name(name.to_owned()));
        }
        if value.is_empty() {
            return Err(RequiredHeaderError::EmptySecret);
        }
        Ok(RequiredHeader {
            header: name.to_owned(),
            param: format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_")),
            value: Secret::from(value),
        })
    }
}

/// The request handler.
#[derive(Debug)]
pub struct Service {
    auth: Authenticator,
    /// Digest nonces and counts, recent decisions; a reloaded service
    /// inherits the memories ([`HttpAuth::inherit`]).
    http: std::sync::Arc<HttpAuth>,
    required: Vec<RequiredHeader>,
    /// The upstream health checks, stopped when this service is dropped.
    checks: Checks,
}

const NOT_MAIL: &[u8] = b"Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\n\
neither an nginx mail auth_http request (no Auth-Method / Auth-Protocol) \
nor an auth_request location (no fastcgi_param AUTH_REALM)\n";

/// The param that turns a location into the Prometheus metrics endpoint.
pub const METRICS_PARAM: &str = "AUTH_METRICS";
/// The param of the throttle's admin view (`show` or `unblock`), with
/// `AUTH_THROTTLE_IP` and `AUTH_THROTTLE_USER`; sent by `nginx-auth-fcgi
/// throttle` over the socket, never by nginx.
pub const THROTTLE_PARAM: &str = "AUTH_THROTTLE";
/// The param of the caches' admin request (`flush`), with `AUTH_CACHE_USER`
/// to flush one user; sent by `nginx-auth-fcgi cache flush` and the `user`
/// commands over the socket, never by nginx.
pub const CACHE_PARAM: &str = "AUTH_CACHE";

impl Service {
    /// A handler deciding with `auth`, requiring `required` headers.
    pub fn new(auth: Authenticator, required: Vec<RequiredHeader>) -> Self {
        Service {
            auth,
            http: std::sync::Arc::new(HttpAuth::new()),
            required,
            checks: Checks::default(),
        }
    }

    /// With this HTTP auth state (the nonce key file and shared counts of
    /// the configuration).
    pub fn with_http(mut self, http: HttpAuth) -> Self {
        self.http = std::sync::Arc::new(http);
        self
    }

    /// Takes over `old`'s per-process HTTP auth state (seen `nc` values,
    /// recent decisions, and the random nonce key when no key file is set),
    /// so a config reload does not invalidate the nonces clients already
    /// hold. A key file is read afresh by the new configuration.
    pub fn inherit_state(&mut self, old: &Service) {
        match std::sync::Arc::get_mut(&mut self.http) {
            Some(http) => http.inherit(&old.http),
            // Already shared (it never is before the service serves): the
            // old state whole.
            None => self.http = std::sync::Arc::clone(&old.http),
        }
        // Backends found down stay down across the reload.
        self.auth
            .policy()
            .upstreams
            .inherit_health(&old.auth.policy().upstreams);
    }

    /// Starts the upstream pools' health checks (inside a tokio runtime),
    /// sharing findings through `redis` (the `state`) when given. They
    /// run as long as this service exists.
    pub fn start_upstream_checks(&mut self, redis: Option<&crate::shared_state::Target>) {
        self.checks = self.auth.policy().upstreams.spawn_checks(redis);
    }

    /// The authenticator (for `auth test`).
    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// Answers one request's params with the CGI stdout bytes.
    pub async fn respond(&self, params: &Params) -> Vec<u8> {
        let mail = MailAuthRequest::is_mail_request(params);
        let metrics = params.get(METRICS_PARAM) == Some(b"on");
        let admin = params.get(THROTTLE_PARAM).map(<[u8]>::to_vec);
        let cache_admin = params.get(CACHE_PARAM).map(<[u8]>::to_vec);
        if !mail
            && !metrics
            && admin.is_none()
            && cache_admin.is_none()
            && params.get(http_auth::REALM_PARAM).is_none()
        {
            METRICS.protocol_error();
            log::warn!("request without Auth-Method/Auth-Protocol or AUTH_REALM refused (400)");
            return NOT_MAIL.to_vec();
        }
        for r in &self.required {
            if !params.get(&r.param).is_some_and(|v| r.value.ct_eq(v)) {
                log::warn!(
                    "request refused (no decision): missing or wrong {} header from peer {}",
                    r.header,
                    peer(params)
                );
                METRICS.protocol_error();
                return if mail {
                    render_fail(false)
                } else {
                    b"Status: 403 Forbidden\r\n\r\n".to_vec()
                };
            }
        }
        if metrics && !mail {
            let mut body = METRICS.render();
            body.push_str(&self.auth.policy().upstreams.render_metrics());
            return format!(
                "Status: 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes();
        }
        if let (Some(action), false) = (&admin, mail) {
            return self.throttle_admin(action, params).await;
        }
        if let (Some(action), false) = (&cache_admin, mail) {
            return self.cache_admin(action, params);
        }
        if !mail {
            return self.respond_http(params).await;
        }
        let req = match MailAuthRequest::from_params(params) {
            Ok(r) => r,
            Err(e) => {
                log::warn!(
                    "request answered with a temporary failure (no decision): protocol error \
                     from peer {}: {e}",
                    peer(params)
                );
                METRICS.protocol_error();
                let smtp = params.get("HTTP_AUTH_PROTOCOL") == Some(b"smtp");
                return render_fail(smtp);
            }
        };
        for d in &req.duplicates {
            log::warn!("param {d} sent more than once; the first value was used");
        }
        let decision = self.auth.authenticate(&req).await;
        decision.audit.emit();
        match decision.response.render() {
            Ok(bytes) => bytes,
            Err(e) => {
                log::error!("cannot render reply: {e}");
                render_fail(false)
            }
        }
    }
}

impl Service {
    /// An nginx `auth_request` subrequest (HTTP Basic/Digest).
    async fn respond_http(&self, params: &Params) -> Vec<u8> {
        let req = match HttpAuthRequest::from_params(params) {
            Ok(r) => r,
            Err(e) => {
                log::error!("auth_request location misconfigured: {e}");
                return b"Status: 503 Service Unavailable\r\n\r\n".to_vec();
            }
        };
        let decision = self.auth.authenticate_http(&req, &self.http).await;
        if let Some(audit) = &decision.audit {
            audit.emit();
        }
        self.http.render(&decision.outcome, &req.settings)
    }
}

impl Service {
    /// `nginx-auth-fcgi throttle show|unblock`: the throttle's view of an
    /// address and/or user, or lifting their blocks.
    async fn throttle_admin(&self, action: &[u8], params: &Params) -> Vec<u8> {
        let text = |name: &str| {
            params
                .get(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .filter(|v| !v.is_empty())
        };
        let ip = match text("AUTH_THROTTLE_IP").map(|v| v.parse::<std::net::IpAddr>()) {
            None => None,
            Some(Ok(ip)) => Some(ip),
            Some(Err(_)) => return plain("400 Bad Request", "not an IP address\n"),
        };
        let user = text("AUTH_THROTTLE_USER");
        let user = user.as_deref().map(str::as_bytes);
        let Some(throttle) = self.auth.policy().throttle.as_deref() else {
            return plain("200 OK", "throttle: off\n");
        };
        if ip.is_none() && user.is_none() {
            return plain(
                "400 Bad Request",
                "name an address (--ip), a user (--user) or both\n",
            );
        }
        match action {
            b"show" => plain("200 OK", &throttle.inspect(ip, user).await),
            b"unblock" => {
                let lifted = throttle.unblock(ip, user).await;
                let body = if lifted.is_empty() {
                    "no block in force\n".to_owned()
                } else {
                    lifted.iter().map(|l| format!("unblocked {l}\n")).collect()
                };
                plain("200 OK", &body)
            }
            _ => plain(
                "400 Bad Request",
                "unknown throttle action (show, unblock)\n",
            ),
        }
    }
}

impl Service {
    /// `nginx-auth-fcgi cache flush [--user U]`: forgets the records the
    /// credential lookup cache holds of one user (every passdb), or of
    /// everyone together with the verification cache.
    fn cache_admin(&self, action: &[u8], params: &Params) -> Vec<u8> {
        if action != b"flush" {
            return plain("400 Bad Request", "unknown cache action (flush)\n");
        }
        let user = params
            .get("AUTH_CACHE_USER")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|v| !v.is_empty());
        let lookups = self.auth.lookup_cache().map(|c| c.flush(user.as_deref()));
        let body = match (&user, lookups) {
            (Some(u), Some(n)) => {
                log::info!(
                    "cache flush: {n} cached record(s) of user {} forgotten",
                    quoted(u)
                );
                format!("lookup cache: {n} record(s) of {u} forgotten\n")
            }
            (Some(_), None) => "lookup cache: off\n".to_owned(),
            (None, lookups) => {
                let verified = self.auth.policy().cache.as_ref().map(|c| {
                    let n = c.len();
                    c.clear();
                    n
                });
                let shown = |n: Option<usize>, what: &str| {
                    n.map_or(format!("{what}: off\n"), |n| {
                        format!("{what}: {n} entries forgotten\n")
                    })
                };
                log::info!("cache flush: every cached record and verification forgotten");
                shown(lookups, "lookup cache") + &shown(verified, "verification cache")
            }
        };
        plain("200 OK", &body)
    }
}

fn plain(status: &str, body: &str) -> Vec<u8> {
    format!(
        "Status: {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A temporary failure that closes the client connection (no `Auth-Wait`);
/// `smtp` adds the SMTP reply code.
fn render_fail(smtp: bool) -> Vec<u8> {
    MailAuthResponse::Fail(Failure {
        kind: FailureKind::Temporary,
        wait: None,
        smtp,
    })
    .render()
    .expect("a constant failure renders")
}

impl Handler for Service {
    async fn handle(&self, req: Request) -> Response {
        Response {
            stdout: self.respond(&req.params).await,
            app_status: 0,
        }
    }
}

/// The FastCGI peer nginx reports, for log lines about refused requests
/// (built only when such a line is written).
fn peer(params: &Params) -> String {
    params
        .get("REMOTE_ADDR")
        .map(|v| quoted(&String::from_utf8_lossy(v)))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_header_parsing() {
        let r: RequiredHeader = "X-Auth-Key=s3cr=t".parse().unwrap();
        assert_eq!(r.param, "HTTP_X_AUTH_KEY");
        assert!(r.value.ct_eq(b"s3cr=t"));
        assert!("X_Auth=v".parse::<RequiredHeader>().is_err());
        assert!("X-Auth=".parse::<RequiredHeader>().is_err());
        assert!("novalue".parse::<RequiredHeader>().is_err());
    }
}
