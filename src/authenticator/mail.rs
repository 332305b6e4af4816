//! Mail logins (nginx `auth_http`): mechanism, SMTP relay, the passdb chain,
//! the upstream choice and the `Auth-Wait` back-off.

use std::net::IpAddr;
use std::time::Instant;

use crate::audit::{AuditRecord, Outcome, ThrottleAction};
use crate::auth_http::{
    AuthMethod, ClientHost, Failure, FailureKind, MailAuthRequest, MailAuthResponse, MailProtocol,
};
use crate::mech::external::NoMatch;
use crate::mech::{apop, cram_md5, Mechanism};
use crate::passdb::app_password::Login;
use crate::passdb::{Lookup, PassdbError, Principal, Rejection, Verdict};
use crate::scheme::StoredPassword;
use crate::secret::Secret;
use crate::throttle::Scope;

use super::chain::{CheckNotes, StaleNote, Walk};
use super::{Authenticator, Count, Counted, Decision, Throttled, WaitPolicy};

/// SMTP rules beyond the passdb, Postfix style (`smtpd_*_restrictions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SmtpRules {
    /// Postfix's `reject_unknown_client_hostname`: refuse SMTP clients whose
    /// address has no confirmed reverse-DNS name (nginx's `Client-Host`).
    pub reject_unknown_client: bool,
}

/// An SMTP refusal by rule rather than by credentials, answered like
/// Postfix answers that one command: the reply code says permanent (5xx)
/// or temporary (4xx), and the session goes on (`Auth-Wait`) until the
/// per-connection schedule says close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SmtpRefusal {
    /// `smtp_auth none`: a recipient outside the local domains.
    RelayDenied,
    /// `reject_unknown_client`, `Client-Host: [UNAVAILABLE]`.
    UnknownClient,
    /// `reject_unknown_client`, `Client-Host: [TEMPUNAVAIL]`.
    ClientTempfail,
}

impl SmtpRefusal {
    fn reason(self) -> &'static str {
        match self {
            SmtpRefusal::RelayDenied => "relay-denied",
            SmtpRefusal::UnknownClient => "unknown-client-hostname",
            SmtpRefusal::ClientTempfail => "client-hostname-tempfail",
        }
    }

    /// The reply, with the wait for attempt `attempt` of the session: a
    /// permanent refusal waits as after a failure, a DNS tempfail as after
    /// a temporary failure.
    fn failure(self, wait: &WaitPolicy, attempt: u32) -> Failure {
        let (kind, wait) = match self {
            SmtpRefusal::RelayDenied => (FailureKind::RelayDenied, wait.after_failure(attempt)),
            SmtpRefusal::UnknownClient => (FailureKind::UnknownClient, wait.after_failure(attempt)),
            SmtpRefusal::ClientTempfail => {
                (FailureKind::ClientTempfail, wait.after_temporary(attempt))
            }
        };
        Failure {
            kind,
            wait,
            smtp: true,
        }
    }
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
    /// Refused as not supported (the reason is for the audit line).
    NotSupported(&'static str),
    /// Refused by the throttle before the passdb was asked.
    Blocked(Scope),
    /// Refused by an SMTP rule.
    Smtp(SmtpRefusal),
    /// `smtp_auth none` from a network the throttle blocks.
    RelayBlocked(Scope),
}

impl Counted for Judgement {
    fn count(&self) -> Count {
        match self {
            Judgement::Reject(..) => Count::Failure,
            Judgement::Accept { .. } => Count::Success,
            _ => Count::Nothing,
        }
    }
}

/// A relay decision (`smtp_auth none`) inside the throttle: a refused
/// recipient counts as a failure, so a relay prober ends up blocked; an
/// accepted one proves nothing about the client and resets nothing.
struct Relay(Judgement);

impl Counted for Relay {
    fn count(&self) -> Count {
        match self.0 {
            Judgement::Smtp(SmtpRefusal::RelayDenied) => Count::Failure,
            _ => Count::Nothing,
        }
    }
}

/// Facts gathered while judging, for the reply and the audit line.
#[derive(Default)]
struct Notes {
    /// The throttle's `Auth-Wait` for a counted failure.
    throttle_wait: Option<u32>,
    /// The cache, rehash and app password notes of a plaintext check.
    checked: CheckNotes,
    /// The effective client address (see [`crate::client_ip::TrustedProxies`]).
    client_ip: Option<IpAddr>,
    /// EXTERNAL: the user the certificate mapped to (for the audit line).
    mapped_user: Option<String>,
}

/// The judgement for a walk that found nobody (or only failures).
fn unknown_or_failed<T>(walk: Walk<T>) -> Judgement {
    match walk {
        Walk::Failed(e) => Judgement::Temporary(e.to_string()),
        _ => Judgement::Reject(Rejection::UnknownUser, None),
    }
}

impl Authenticator {
    /// Decides one mail login.
    pub async fn authenticate(&self, req: &MailAuthRequest) -> Decision {
        let started = Instant::now();
        let mut notes = Notes {
            client_ip: self.trusted_proxies.client_ip(req),
            ..Notes::default()
        };
        let judgement = self
            .within(self.judge(req, &mut notes), Judgement::Temporary)
            .await;
        self.conclude(req, judgement, notes, started)
    }

    /// Refuses SMTP with `reject_unknown_client` (Postfix's
    /// `reject_unknown_client_hostname`): applied to SMTP logins of any
    /// method, `none` included, before the passdb. IMAP and POP3 carry no
    /// `Client-Host` and are never affected.
    pub fn with_reject_unknown_client(mut self, on: bool) -> Self {
        self.smtp.reject_unknown_client = on;
        self
    }

    /// Whether `reject_unknown_client` is on.
    pub fn rejects_unknown_clients(&self) -> bool {
        self.smtp.reject_unknown_client
    }

    /// The mechanism's judgement, inside the throttle.
    async fn judge(&self, req: &MailAuthRequest, notes: &mut Notes) -> Judgement {
        let ip = notes.client_ip;
        if req.method == AuthMethod::None {
            // The user is empty: relay attempts are counted per network
            // (the throttle's `ip` and `ip-user` scopes with an empty name),
            // never against a real user. There is no password either: each
            // refused recipient counts, even when a prober repeats one.
            let relay = async {
                Relay(
                    self.judge_client(req)
                        .unwrap_or_else(|| self.judge_relay(req)),
                )
            };
            // The throttle's own wait is not used: its per-user count for
            // the empty name is shared by every relay attempt from
            // anywhere. The session's schedule is the tarpit, the block
            // the stop.
            return match self.throttled(ip, b"", None, relay).await {
                Throttled::Blocked(scope) => Judgement::RelayBlocked(scope),
                Throttled::Judged(Relay(j), _) => j,
            };
        }
        let judge = async {
            match self.judge_client(req) {
                Some(refused) => refused,
                None => self.judge_mechanism(req, notes).await,
            }
        };
        match self
            .throttled(ip, &req.user, Some(req.pass.expose()), judge)
            .await
        {
            Throttled::Blocked(scope) => Judgement::Blocked(scope),
            Throttled::Judged(j, wait) => {
                notes.throttle_wait = wait;
                j
            }
        }
    }

    /// The SMTP client rules (`reject_unknown_client`); `None`: go on.
    fn judge_client(&self, req: &MailAuthRequest) -> Option<Judgement> {
        if req.protocol != MailProtocol::Smtp || !self.smtp.reject_unknown_client {
            return None;
        }
        match req.client_host {
            Some(ClientHost::Unavailable) => Some(Judgement::Smtp(SmtpRefusal::UnknownClient)),
            Some(ClientHost::TempUnavailable) => Some(Judgement::Smtp(SmtpRefusal::ClientTempfail)),
            // nginx sends Client-Host with every SMTP request; without
            // one nothing is known, and the rule does not apply.
            Some(ClientHost::Name(_)) | None => None,
        }
    }

    async fn judge_mechanism(&self, req: &MailAuthRequest, notes: &mut Notes) -> Judgement {
        if req.method == AuthMethod::External && !self.external.is_empty() {
            return self.judge_external(req, notes).await;
        }
        let Some(mech) = Mechanism::from_method(req.method) else {
            return Judgement::NotSupported("mechanism-not-supported");
        };
        if !self.policy.mechanisms.contains(&mech) {
            return Judgement::NotSupported("mechanism-disabled");
        }
        match mech {
            Mechanism::Plain => self.judge_plain(req, notes).await,
            Mechanism::CramMd5 | Mechanism::Apop => self.judge_challenge(req, mech, notes).await,
        }
    }

    fn judge_relay(&self, req: &MailAuthRequest) -> Judgement {
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
            _ => Judgement::Smtp(SmtpRefusal::RelayDenied),
        }
    }

    async fn judge_plain(&self, req: &MailAuthRequest, notes: &mut Notes) -> Judgement {
        let creds = match self.plain.prepare(&req.user, &req.pass) {
            Ok(c) => c,
            Err(e) => return Judgement::Malformed(e.to_string()),
        };
        let login = Login::mail(req.protocol, notes.client_ip);
        let walk = self
            .walk(|db| self.verify_plain(db, &creds.user, &creds.passwords, &login))
            .await;
        match walk {
            Walk::Decided(checked, passdb) => {
                notes.checked = checked.notes;
                match checked.verdict {
                    Verdict::Accepted(principal) => Judgement::Accept {
                        principal,
                        password: Some(req.pass.clone()),
                        passdb,
                    },
                    Verdict::Rejected(r) => Judgement::Reject(r, Some(passdb)),
                }
            }
            other => unknown_or_failed(other),
        }
    }

    async fn judge_challenge(
        &self,
        req: &MailAuthRequest,
        mech: Mechanism,
        notes: &mut Notes,
    ) -> Judgement {
        let Ok(user) = std::str::from_utf8(&req.user) else {
            return Judgement::Malformed("user name is not UTF-8".into());
        };
        if user.is_empty() {
            return Judgement::Malformed("empty user name".into());
        }
        let salt = req.salt.as_deref().unwrap_or_default();
        let response = req.pass.expose();
        let stale = StaleNote::default();
        let walk = self.walk(|db| self.lookup(db, user, &stale)).await;
        notes.checked.cache = stale.cache_use();
        let (principal, stored, passdb) = match walk {
            // The main password's plaintext answers the challenge: not for
            // a protocol kept for app passwords.
            Walk::Decided(Lookup::Found { apps, .. }, passdb)
                if self.main_password_refused(&apps, req.protocol.into()) =>
            {
                return Judgement::Reject(Rejection::AppPasswordRequired, Some(passdb))
            }
            Walk::Decided(
                Lookup::Found {
                    principal, secret, ..
                },
                passdb,
            ) => (principal, secret, passdb),
            Walk::Decided(Lookup::Rejected(r), passdb) => {
                return Judgement::Reject(r, Some(passdb))
            }
            other => return unknown_or_failed(other),
        };
        match verify_challenge(mech, &stored, salt, response) {
            Ok(true) => Judgement::Accept {
                principal,
                password: stored.plaintext().map(|p| Secret::new(p.to_vec())),
                passdb,
            },
            Ok(false) => Judgement::Reject(Rejection::PasswordMismatch, Some(passdb)),
            // APOP needs the plaintext, and CRAM-MD5 the plaintext or a
            // {CRAM-MD5} context: a hashed password cannot answer them.
            // Not a server fault: refuse the mechanism for this user.
            Err(PassdbError::SchemeNotAvailable(scheme)) => {
                log::info!(
                    "passdb {passdb}: user {user}: {scheme} cannot serve {}",
                    mech.as_str()
                );
                Judgement::NotSupported("scheme-cannot-serve-mechanism")
            }
            Err(e) => {
                log::error!("passdb {passdb}: user {user}: {e}");
                Judgement::Temporary(e.to_string())
            }
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
        let stale = StaleNote::default();
        let walk = self.walk(|db| self.lookup(db, &user, &stale)).await;
        notes.checked.cache = stale.cache_use();
        match walk {
            Walk::Decided(
                Lookup::Found {
                    mut principal,
                    secret,
                    ..
                },
                passdb,
            ) => {
                if principal.user.is_empty() {
                    principal.user = user.clone();
                }
                Judgement::Accept {
                    principal,
                    password: secret.plaintext().map(|p| Secret::new(p.to_vec())),
                    passdb,
                }
            }
            Walk::Decided(Lookup::Rejected(r), passdb) => Judgement::Reject(r, Some(passdb)),
            other => unknown_or_failed(other),
        }
    }

    fn conclude(
        &self,
        req: &MailAuthRequest,
        j: Judgement,
        notes: Notes,
        started: Instant,
    ) -> Decision {
        let mut audit = AuditRecord::mail(req);
        notes.checked.record(&mut audit);
        audit.client_ip = notes.client_ip;
        if let Some(user) = notes.mapped_user {
            audit.user = user;
        }
        let smtp = req.protocol == MailProtocol::Smtp;
        // The per-connection schedule decides whether nginx may retry at
        // all; the throttle may only lengthen the wait.
        let invalid = Failure {
            kind: FailureKind::InvalidLogin,
            wait: self
                .policy
                .wait
                .after_failure(req.attempt)
                .map(|w| w.max(notes.throttle_wait.unwrap_or(0))),
            smtp,
        };
        let temporary = Failure {
            kind: FailureKind::Temporary,
            wait: self.policy.wait.after_temporary(req.attempt),
            smtp,
        };
        // Not supported: no Auth-Wait, so nginx closes the connection.
        let not_supported = Failure {
            kind: FailureKind::MechanismNotSupported,
            wait: None,
            smtp,
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
                        MailAuthResponse::Fail(not_supported)
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
                audit.throttle = Some(ThrottleAction::Blocked);
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
            Judgement::Smtp(refusal) => {
                // Refused by configuration, also for [TEMPUNAVAIL]: the
                // client's DNS, not our backends, is in trouble.
                audit.outcome = Outcome::Refused;
                audit.reason = refusal.reason().to_owned();
                MailAuthResponse::Fail(refusal.failure(&self.policy.wait, req.attempt))
            }
            Judgement::RelayBlocked(scope) => {
                // The relay answer, without Auth-Wait: nginx closes the
                // session of a blocked relay prober at once.
                audit.outcome = Outcome::Refused;
                audit.reason = format!("blocked-{}", scope.as_str());
                audit.throttle = Some(ThrottleAction::Blocked);
                MailAuthResponse::Fail(Failure {
                    wait: None,
                    ..SmtpRefusal::RelayDenied.failure(&self.policy.wait, req.attempt)
                })
            }
            Judgement::NotSupported(why) => {
                audit.outcome = Outcome::Refused;
                audit.reason = why.to_owned();
                MailAuthResponse::Fail(not_supported)
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
