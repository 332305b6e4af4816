//! Hop 3, the only place with policy: given a typed mail auth request, decide.
//!
//! Steps: refuse what the configuration does not allow (mechanism, SMTP relay),
//! verify through the passdb chain, pick the upstream, choose the `Auth-Wait`
//! back-off, and describe the decision for the audit log. Three outcomes are kept
//! apart (style.md, "Error model"): a *rejection* (wrong credentials: generic
//! message, growing `Auth-Wait`), a *temporary failure* (backend trouble: its own
//! message and `451 4.3.0`, never OK), and a *refusal* (not allowed at all).
//!
//! Around the passdb sit the [`Throttle`] (asked before it: a blocked client
//! is refused without a passdb lookup; rejections — only those — are counted
//! after it, successes reset the client's count for that user) and the
//! verification [`Cache`] (PLAIN against expensive schemes only).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audit::{AuditRecord, Outcome};
use crate::auth_http::{AuthMethod, Failure, MailAuthRequest, MailAuthResponse, MailProtocol};
use crate::cache::Cache;
use crate::client_ip::TrustedProxies;
use crate::master_user::MasterUser;
use crate::mech::external::{NoMatch, Rules};
use crate::mech::{apop, cram_md5, plain::Plain, Mechanism, Need};
use crate::passdb::{AnyPassdb, Lookup, Passdb, PassdbError, Principal, Rejection, Verdict};
use crate::scheme::StoredPassword;
use crate::secret::Secret;
use crate::throttle::{Check, Scope, Throttle};
use crate::upstream::Upstreams;

/// Text shown to the client for any credential failure. One message for
/// unknown user and wrong password alike, so user names cannot be probed.
pub const INVALID_LOGIN: &str = "Invalid login or password";
/// Text for backend trouble.
pub const TEMPORARY: &str = "Temporary server problem, try again later";
const SMTP_INVALID: &str = "535 5.7.8";
const SMTP_TEMPORARY: &str = "451 4.3.0";

/// `Auth-Wait` schedule. nginx has no attempt limit of its own: with a wait it
/// lets the client try again on the same connection, without one it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Seconds after the first failed attempt; doubles each attempt.
    pub base: u32,
    /// Upper bound of one wait.
    pub max: u32,
    /// From this attempt on, answer without `Auth-Wait` so nginx closes the
    /// connection (nginx's docs advise stopping after 10–20 attempts).
    pub max_attempts: u32,
    /// Wait after a temporary failure (0: close the connection).
    pub temporary: u32,
}

impl Default for WaitPolicy {
    fn default() -> Self {
        WaitPolicy {
            base: 1,
            max: 16,
            max_attempts: 10,
            temporary: 3,
        }
    }
}

impl WaitPolicy {
    /// The wait after failed attempt number `attempt` (1-based); `None` closes.
    pub fn after_failure(&self, attempt: u32) -> Option<u32> {
        if attempt >= self.max_attempts || self.base == 0 {
            return None;
        }
        let doubled = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        Some(doubled.min(self.max.max(self.base)))
    }

    fn after_temporary(&self, attempt: u32) -> Option<u32> {
        (attempt < self.max_attempts && self.temporary > 0).then_some(self.temporary)
    }
}

/// Everything the decision needs besides the request.
#[derive(Debug)]
pub struct Policy {
    /// Mechanisms we accept (nginx's `*_auth` lists should match).
    pub mechanisms: HashSet<Mechanism>,
    /// Domains we accept mail for without AUTH (`smtp_auth none`).
    pub local_domains: Vec<String>,
    /// Default upstreams.
    pub upstreams: Upstreams,
    /// Back-off.
    pub wait: WaitPolicy,
    /// Send `Auth-Pass` on SMTP success too (needed with nginx `proxy_smtp_auth on`).
    pub smtp_pass: bool,
    /// Longest a decision may take (passdb lookups and hash checks); past it
    /// the answer is a temporary failure. Keep it well below nginx's
    /// `auth_http_timeout` (default 60 s).
    pub timeout: Duration,
    /// Brute-force limits (`None`: off). An `Arc` so in-process instances
    /// can share one in-memory state.
    pub throttle: Option<Arc<Throttle>>,
    /// Verification cache for expensive schemes (`None`: off).
    pub cache: Option<Arc<Cache>>,
}

/// The decision for one request and its audit record.
#[derive(Debug)]
pub struct Decision {
    /// What nginx gets.
    pub response: MailAuthResponse,
    /// What the audit log gets.
    pub audit: AuditRecord,
}

/// Decides mail logins against a passdb chain.
#[derive(Debug)]
pub struct Authenticator {
    policy: Policy,
    passdbs: Vec<AnyPassdb>,
    plain: Plain,
    /// Whose `Proxy-Protocol-Addr` is believed.
    trusted_proxies: TrustedProxies,
    /// Upstream login for users verified without a plaintext.
    master: Option<MasterUser>,
    /// EXTERNAL rules (empty: EXTERNAL refused as not supported).
    external: Rules,
}

/// Why a verified login still cannot be answered with OK.
enum AcceptError {
    /// Backend or rendering trouble: a temporary failure.
    Temporary(String),
    /// No password for the upstream login (no plaintext, no master user).
    NoUpstreamPassword(&'static str),
}

/// Internal result before rendering.
enum Judgement {
    Accept {
        principal: Principal,
        /// Plaintext password for the upstream login, when we have it.
        password: Option<Secret>,
        passdb: &'static str,
    },
    Reject(Rejection, Option<&'static str>),
    /// EXTERNAL: the certificate maps to no (allowed) user.
    Unmapped(NoMatch),
    Malformed(String),
    Temporary(String),
    Refuse(&'static str, Failure),
    /// Refused by the throttle before the passdb was asked.
    Blocked(Scope),
}

/// Facts gathered while judging, for the reply and the audit line.
#[derive(Default)]
struct Notes {
    /// The throttle's `Auth-Wait` for a counted failure.
    throttle_wait: Option<u32>,
    cache: Option<&'static str>,
    /// The effective client address (see [`TrustedProxies::client_ip`]).
    client_ip: Option<IpAddr>,
    /// EXTERNAL: the user the certificate mapped to (for the audit line).
    mapped_user: Option<String>,
}

impl Authenticator {
    /// Builds an authenticator. Fails with every problem when an enabled
    /// mechanism cannot be served by any passdb.
    pub fn new(policy: Policy, passdbs: Vec<AnyPassdb>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        if passdbs.is_empty() {
            problems.push("no passdb configured".to_owned());
        }
        for m in &policy.mechanisms {
            let served = passdbs.iter().any(|p| {
                let c = p.capabilities();
                match m.need() {
                    Need::VerifyPlain => c.verify_plain,
                    Need::LookupCredentials => c.lookup_credentials,
                }
            });
            if !served && !passdbs.is_empty() {
                problems.push(format!(
                    "mechanism {} needs stored credentials, which no configured passdb can give",
                    m.as_str()
                ));
            }
        }
        if problems.is_empty() {
            Ok(Authenticator {
                policy,
                passdbs,
                plain: Plain::new(),
                trusted_proxies: TrustedProxies::default(),
                master: None,
                external: Rules::default(),
            })
        } else {
            Err(problems)
        }
    }

    /// Believes `Proxy-Protocol-Addr` from these peers (`--trusted-proxy`).
    pub fn with_trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted_proxies = trusted;
        self
    }

    /// Answers users verified without a plaintext ({CRAM-MD5}, EXTERNAL)
    /// with this master login; without one they are refused.
    pub fn with_master_user(mut self, master: Option<MasterUser>) -> Self {
        self.master = master;
        self
    }

    /// Offers EXTERNAL with these rules (empty: not offered). The mapped user
    /// must exist in a passdb, so one must be able to look users up.
    pub fn with_external(mut self, rules: Rules) -> Result<Self, String> {
        if !rules.is_empty()
            && !self
                .passdbs
                .iter()
                .any(|p| p.capabilities().lookup_credentials)
        {
            return Err(
                "external rules need a passdb that can look users up (lookup_credentials)".into(),
            );
        }
        self.external = rules;
        Ok(self)
    }

    /// The master login in force, if any.
    pub fn master_user(&self) -> Option<&MasterUser> {
        self.master.as_ref()
    }

    /// The EXTERNAL rules in force.
    pub fn external_rules(&self) -> &Rules {
        &self.external
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The passdb chain, in order (HTTP auth uses the same users).
    pub fn passdbs(&self) -> &[AnyPassdb] {
        &self.passdbs
    }

    /// Decides one mail login.
    pub async fn authenticate(&self, req: &MailAuthRequest) -> Decision {
        let started = Instant::now();
        let mut notes = Notes {
            client_ip: self.trusted_proxies.client_ip(req),
            ..Notes::default()
        };
        let judged = tokio::time::timeout(self.policy.timeout, self.judge(req, &mut notes)).await;
        let judgement = match judged {
            Ok(j) => j,
            Err(_) => Judgement::Temporary(format!(
                "no decision within {} ms",
                self.policy.timeout.as_millis()
            )),
        };
        self.conclude(req, judgement, notes, started)
    }

    /// The mechanism's judgement, inside the throttle.
    async fn judge(&self, req: &MailAuthRequest, notes: &mut Notes) -> Judgement {
        if req.method == AuthMethod::None {
            return self.judge_relay(req);
        }
        let Some(throttle) = &self.policy.throttle else {
            return self.judge_mechanism(req, notes).await;
        };
        if let Check::Blocked(scope) = throttle.check(notes.client_ip, &req.user).await {
            return Judgement::Blocked(scope);
        }
        let j = self.judge_mechanism(req, notes).await;
        match &j {
            Judgement::Reject(..) => {
                notes.throttle_wait = throttle.record_failure(notes.client_ip, &req.user).await;
            }
            Judgement::Accept { .. } => throttle.record_success(notes.client_ip, &req.user).await,
            _ => {}
        }
        j
    }

    async fn judge_mechanism(&self, req: &MailAuthRequest, notes: &mut Notes) -> Judgement {
        if req.method == AuthMethod::External && !self.external.is_empty() {
            return self.judge_external(req, notes).await;
        }
        let Some(mech) = Mechanism::from_method(req.method) else {
            return Judgement::Refuse(
                "mechanism-not-supported",
                Failure {
                    message: "Authentication mechanism not supported",
                    wait: None,
                    smtp_code: Some("504 5.5.4"),
                },
            );
        };
        if !self.policy.mechanisms.contains(&mech) {
            return Judgement::Refuse(
                "mechanism-disabled",
                Failure {
                    message: "Authentication mechanism not supported",
                    wait: None,
                    smtp_code: Some("504 5.5.4"),
                },
            );
        }
        match mech {
            Mechanism::Plain => self.judge_plain(req, notes).await,
            Mechanism::CramMd5 | Mechanism::Apop => self.judge_challenge(req, mech).await,
        }
    }

    fn judge_relay(&self, req: &MailAuthRequest) -> Judgement {
        let deny = Failure {
            message: "Relay access denied",
            wait: None,
            smtp_code: Some("554 5.7.1"),
        };
        if req.protocol != MailProtocol::Smtp {
            return Judgement::Malformed("method none outside SMTP".into());
        }
        let domain = req
            .smtp
            .as_ref()
            .and_then(|e| e.recipient())
            .and_then(|r| r.rsplit_once('@'))
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase());
        match domain {
            Some(d) if self.policy.local_domains.contains(&d) => Judgement::Accept {
                // nginx passes the identity to the MTA as XCLIENT LOGIN=; an
                // unauthenticated session must not assert one (1.22 may even
                // send a stale Auth-User here).
                principal: Principal::default(),
                password: None,
                passdb: "-",
            },
            _ => Judgement::Refuse("relay-denied", deny),
        }
    }

    async fn judge_plain(&self, req: &MailAuthRequest, notes: &mut Notes) -> Judgement {
        let creds = match self.plain.prepare(&req.user, &req.pass) {
            Ok(c) => c,
            Err(e) => return Judgement::Malformed(e.to_string()),
        };
        let mut failure = None;
        for db in &self.passdbs {
            let verdict = match &self.policy.cache {
                Some(cache) => cache
                    .verify_plain(db, &creds.user, &creds.passwords)
                    .await
                    .map(|(verdict, used)| {
                        notes.cache = used.or(notes.cache);
                        verdict
                    }),
                None => db.verify_plain(&creds.user, &creds.passwords).await,
            };
            match verdict {
                Ok(Verdict::Accepted(principal)) => {
                    return Judgement::Accept {
                        principal,
                        password: Some(req.pass.clone()),
                        passdb: db.name(),
                    }
                }
                Ok(Verdict::Rejected(Rejection::UnknownUser)) => continue,
                Ok(Verdict::Rejected(r)) => return Judgement::Reject(r, Some(db.name())),
                Err(e) => {
                    log::error!("passdb {}: {e}", db.name());
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) => Judgement::Temporary(e.to_string()),
            None => Judgement::Reject(Rejection::UnknownUser, None),
        }
    }

    async fn judge_challenge(&self, req: &MailAuthRequest, mech: Mechanism) -> Judgement {
        let Ok(user) = std::str::from_utf8(&req.user) else {
            return Judgement::Malformed("user name is not UTF-8".into());
        };
        if user.is_empty() {
            return Judgement::Malformed("empty user name".into());
        }
        let salt = req.salt.as_deref().unwrap_or_default();
        let response = req.pass.expose();
        let mut failure = None;
        for db in &self.passdbs {
            if !db.capabilities().lookup_credentials {
                continue;
            }
            let (principal, stored) = match db.lookup_credentials(user).await {
                Ok(Lookup::Found { principal, secret }) => (principal, secret),
                Ok(Lookup::Rejected(Rejection::UnknownUser)) => continue,
                Ok(Lookup::Rejected(r)) => return Judgement::Reject(r, Some(db.name())),
                Err(e) => {
                    log::error!("passdb {}: {e}", db.name());
                    failure.get_or_insert(e);
                    continue;
                }
            };
            return match verify_challenge(mech, &stored, salt, response) {
                Ok(true) => Judgement::Accept {
                    principal,
                    password: stored.plaintext().map(|p| Secret::new(p.to_vec())),
                    passdb: db.name(),
                },
                Ok(false) => Judgement::Reject(Rejection::PasswordMismatch, Some(db.name())),
                // APOP needs the plaintext, and CRAM-MD5 the plaintext or a
                // {CRAM-MD5} context: a hashed password cannot answer them.
                // Not a server fault: refuse the mechanism for this user.
                Err(PassdbError::SchemeNotAvailable(scheme)) => {
                    log::info!(
                        "passdb {}: user {user}: {scheme} cannot serve {}",
                        db.name(),
                        mech.as_str()
                    );
                    Judgement::Refuse(
                        "scheme-cannot-serve-mechanism",
                        Failure {
                            message: "Authentication mechanism not supported",
                            wait: None,
                            smtp_code: Some("504 5.5.4"),
                        },
                    )
                }
                Err(e) => {
                    log::error!("passdb {}: user {user}: {e}", db.name());
                    Judgement::Temporary(e.to_string())
                }
            };
        }
        match failure {
            Some(e) => Judgement::Temporary(e.to_string()),
            None => Judgement::Reject(Rejection::UnknownUser, None),
        }
    }

    /// EXTERNAL: map the verified certificate to a user, who must exist
    /// (and not be disabled) in the passdb chain.
    async fn judge_external(&self, req: &MailAuthRequest, notes: &mut Notes) -> Judgement {
        let user = match self.external.map(req.ssl.as_ref(), &req.user) {
            Ok(u) => u,
            Err(e) => return Judgement::Unmapped(e),
        };
        notes.mapped_user = Some(user.clone());
        let mut failure = None;
        for db in &self.passdbs {
            if !db.capabilities().lookup_credentials {
                continue;
            }
            match db.lookup_credentials(&user).await {
                Ok(Lookup::Found {
                    mut principal,
                    secret,
                }) => {
                    if principal.user.is_empty() {
                        principal.user = user;
                    }
                    return Judgement::Accept {
                        principal,
                        password: secret.plaintext().map(|p| Secret::new(p.to_vec())),
                        passdb: db.name(),
                    };
                }
                Ok(Lookup::Rejected(Rejection::UnknownUser)) => continue,
                Ok(Lookup::Rejected(r)) => return Judgement::Reject(r, Some(db.name())),
                Err(e) => {
                    log::error!("passdb {}: {e}", db.name());
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) => Judgement::Temporary(e.to_string()),
            None => Judgement::Reject(Rejection::UnknownUser, None),
        }
    }

    fn conclude(
        &self,
        req: &MailAuthRequest,
        j: Judgement,
        notes: Notes,
        started: Instant,
    ) -> Decision {
        let mut audit = AuditRecord::new(req);
        audit.cache = notes.cache;
        audit.client_ip = notes.client_ip;
        if let Some(user) = notes.mapped_user {
            audit.user = user;
        }
        let smtp = req.protocol == MailProtocol::Smtp;
        let code = |c: &'static str| smtp.then_some(c);
        // The per-connection schedule decides whether nginx may retry at
        // all; the throttle may only lengthen the wait.
        let invalid = Failure {
            message: INVALID_LOGIN,
            wait: self
                .policy
                .wait
                .after_failure(req.attempt)
                .map(|w| w.max(notes.throttle_wait.unwrap_or(0))),
            smtp_code: code(SMTP_INVALID),
        };
        let temporary = Failure {
            message: TEMPORARY,
            wait: self.policy.wait.after_temporary(req.attempt),
            smtp_code: code(SMTP_TEMPORARY),
        };
        let response = match j {
            Judgement::Accept {
                principal,
                password,
                passdb,
            } => {
                audit.passdb = passdb;
                audit.user = if principal.user.is_empty() {
                    audit.user
                } else {
                    principal.user.clone()
                };
                match self.accept(req, &principal, password) {
                    Ok(ok) => {
                        if let MailAuthResponse::Ok { server, port, .. } = &ok {
                            audit.upstream = Some((*server, *port));
                        }
                        audit.outcome = Outcome::Ok;
                        ok
                    }
                    Err(AcceptError::Temporary(reason)) => {
                        audit.outcome = Outcome::TempFail;
                        audit.reason = reason;
                        MailAuthResponse::Fail(temporary)
                    }
                    Err(AcceptError::NoUpstreamPassword(reason)) => {
                        // Verified, but nginx could not log in upstream:
                        // the client should use a mechanism that carries
                        // the password (PLAIN/LOGIN).
                        audit.outcome = Outcome::Refused;
                        audit.reason = reason.to_owned();
                        MailAuthResponse::Fail(Failure {
                            message: "Authentication mechanism not supported",
                            wait: None,
                            smtp_code: code("504 5.5.4"),
                        })
                    }
                }
            }
            Judgement::Reject(r, passdb) => {
                audit.outcome = Outcome::Fail;
                audit.reason = r.as_str().to_owned();
                audit.passdb = passdb.unwrap_or("-");
                MailAuthResponse::Fail(invalid)
            }
            Judgement::Unmapped(why) => {
                audit.outcome = Outcome::Fail;
                audit.reason = why.to_string();
                MailAuthResponse::Fail(invalid)
            }
            Judgement::Blocked(scope) => {
                // No Auth-Wait: nginx closes the connection at once, and the
                // client learns nothing it would not from a wrong password.
                audit.outcome = Outcome::Fail;
                audit.reason = format!("blocked-{}", scope.as_str());
                audit.throttle = Some("blocked");
                MailAuthResponse::Fail(Failure {
                    wait: None,
                    ..invalid
                })
            }
            Judgement::Malformed(why) => {
                audit.outcome = Outcome::Fail;
                audit.reason = format!("malformed: {why}");
                MailAuthResponse::Fail(invalid)
            }
            Judgement::Temporary(why) => {
                audit.outcome = Outcome::TempFail;
                audit.reason = why;
                MailAuthResponse::Fail(temporary)
            }
            Judgement::Refuse(why, failure) => {
                audit.outcome = Outcome::Refused;
                audit.reason = why.to_owned();
                MailAuthResponse::Fail(Failure {
                    smtp_code: failure.smtp_code.filter(|_| smtp),
                    ..failure
                })
            }
        };
        audit.wait = match &response {
            MailAuthResponse::Fail(f) => f.wait,
            MailAuthResponse::Ok { .. } => None,
        };
        audit.latency = started.elapsed();
        Decision { response, audit }
    }

    fn accept(
        &self,
        req: &MailAuthRequest,
        principal: &Principal,
        password: Option<Secret>,
    ) -> Result<MailAuthResponse, AcceptError> {
        let (server, port) = self
            .policy
            .upstreams
            .pick(req.protocol, principal, &req.user)
            .map_err(|e| AcceptError::Temporary(e.to_string()))?;
        // IMAP and POP3 upstream logins always need a password from us once
        // nginx has no plaintext (CRAM-MD5, APOP, EXTERNAL); sending it
        // always is safest.
        let needs_pass = match req.protocol {
            MailProtocol::Imap | MailProtocol::Pop3 => true,
            // `none` (relay) never logs in upstream.
            MailProtocol::Smtp => self.policy.smtp_pass && req.method != AuthMethod::None,
        };
        // The upstream login: the passdb's backend user, else (EXTERNAL,
        // where nginx only has the authzid) the mapped user.
        let mapped = (req.method == AuthMethod::External)
            .then(|| principal.user.clone())
            .filter(|u| !u.is_empty());
        let login = principal.backend_user.clone().or(mapped);
        let (user, pass) =
            match password {
                Some(p) => (login.map(String::into_bytes), needs_pass.then_some(p)),
                None if !needs_pass => (login.map(String::into_bytes), None),
                None => {
                    let Some(master) = &self.master else {
                        return Err(AcceptError::NoUpstreamPassword(
                            "no-plaintext-and-no-master-user",
                        ));
                    };
                    let login = login
                        .or_else(|| Some(principal.user.clone()).filter(|u| !u.is_empty()))
                        .unwrap_or_else(|| String::from_utf8_lossy(&req.user).into());
                    let m = master.login_for(login.as_bytes()).ok_or(
                        AcceptError::NoUpstreamPassword("login-unusable-with-master-user"),
                    )?;
                    (Some(m.user), Some(m.password))
                }
            };
        let response = MailAuthResponse::Ok {
            server,
            port,
            user,
            pass,
        };
        // Refuse here what cannot be rendered (CR/LF in a password, an
        // oversized reply), so the caller never sends half a success.
        response
            .render()
            .map_err(|e| AcceptError::Temporary(e.to_string()))?;
        Ok(response)
    }
}

fn verify_challenge(
    mech: Mechanism,
    stored: &StoredPassword,
    salt: &[u8],
    response: &[u8],
) -> Result<bool, PassdbError> {
    match (mech, stored.plaintext()) {
        (Mechanism::Apop, Some(p)) => Ok(apop::verify(p, salt, response)),
        (Mechanism::CramMd5, Some(p)) => Ok(cram_md5::verify(p, salt, response)),
        (Mechanism::CramMd5, None) => stored
            .verify_cram_md5(salt, response)
            .map_err(|e| PassdbError::BadStoredPassword(e.to_string()))?
            .ok_or(PassdbError::SchemeNotAvailable(stored.scheme())),
        _ => Err(PassdbError::SchemeNotAvailable(stored.scheme())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_grows_caps_and_stops() {
        let w = WaitPolicy::default();
        let waits: Vec<_> = (1..=11).map(|a| w.after_failure(a)).collect();
        assert_eq!(
            waits,
            vec![
                Some(1),
                Some(2),
                Some(4),
                Some(8),
                Some(16),
                Some(16),
                Some(16),
                Some(16),
                Some(16),
                None,
                None
            ]
        );
        assert_eq!(w.after_failure(u32::MAX), None);
        let never = WaitPolicy { base: 0, ..w };
        assert_eq!(never.after_failure(1), None);
    }
}
