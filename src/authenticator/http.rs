//! HTTP `auth_request` decisions (Basic and Digest), by the same rules as
//! mail: the one passdb walk, the verification cache and bounded verifier,
//! the throttle on typed outcomes, the decision timeout, trusted proxies and
//! one audit record.

use std::net::IpAddr;
use std::time::Instant;

use zeroize::Zeroizing;

use crate::audit::{AuditRecord, Outcome, Protocol, ThrottleAction};
use crate::http_auth::digest::{Credentials, NonceState};
use crate::http_auth::{AuthInfo, HttpAuth, HttpAuthRequest, HttpCredentials, HttpOutcome};
use crate::passdb::app_password::{Login, Service};
use crate::passdb::{AppPasswords, Lookup, Passdb, PassdbError, Rejection, Verdict};
use crate::scheme::StoredPassword;
use crate::secret::Secret;
use crate::throttle::Scope;

use super::chain::{Answer, CheckNotes, Checked, StaleNote, Walk};
use super::{Authenticator, Count, Counted, Throttled};

/// The decision for one HTTP request.
#[derive(Debug)]
pub struct HttpDecision {
    /// What nginx gets.
    pub outcome: HttpOutcome,
    /// What the audit log gets; `None` for a repeat of a client request
    /// already decided (one client request, one audit line).
    pub audit: Option<AuditRecord>,
}

/// Internal result before rendering.
enum Judgement {
    Allow {
        user: String,
        passdb: &'static str,
        /// Digest's `Authentication-Info`.
        info: Option<AuthInfo>,
    },
    /// Wrong credentials: counted by the throttle.
    Reject {
        rejection: Rejection,
        passdb: Option<&'static str>,
    },
    /// Unusable credentials (wrong realm or URI, a nonce not ours, a used
    /// count): a new challenge, not counted.
    Refuse {
        reason: String,
        stale: bool,
    },
    /// No credentials yet.
    Challenge,
    Temporary(String),
    Blocked(Scope),
}

impl Counted for Judgement {
    fn count(&self) -> Count {
        match self {
            Judgement::Reject { .. } => Count::Failure,
            Judgement::Allow { .. } => Count::Success,
            _ => Count::Nothing,
        }
    }
}

/// What a passdb holds that can check a Digest response.
enum DigestSecret {
    /// HA1 as stored (htdigest, an SQL `digest_ha1` column).
    Ha1(String),
    /// The stored password: usable when it is a plaintext.
    Stored(StoredPassword),
    Rejected(Rejection),
}

/// The login an HTTP request is, for app password scopes.
fn login(req: &HttpAuthRequest, ip: Option<IpAddr>) -> Login<'_> {
    Login {
        service: Service::Http,
        realm: Some(&req.settings.realm),
        ip,
    }
}

fn refuse(reason: &str, stale: bool) -> Judgement {
    Judgement::Refuse {
        reason: reason.to_owned(),
        stale,
    }
}

fn rejected(rejection: Rejection, passdb: Option<&'static str>) -> Judgement {
    Judgement::Reject { rejection, passdb }
}

impl Authenticator {
    /// Decides one `auth_request` subrequest. `state` holds the Digest
    /// nonces and the decisions already made per client request.
    pub async fn authenticate_http(&self, req: &HttpAuthRequest, state: &HttpAuth) -> HttpDecision {
        let started = Instant::now();
        let repeat = state.repeats.key(req);
        if let Some(outcome) = repeat.as_ref().and_then(|k| state.repeats.recall(k)) {
            log::debug!(
                "auth_request repeated within client request {}: same decision",
                req.request_id.as_deref().unwrap_or("-")
            );
            return HttpDecision {
                outcome,
                audit: None,
            };
        }
        let ip = self
            .trusted_proxies
            .http_client_ip(req.peer, &req.forwarded_for, req.real_ip);
        let mut user = match &req.credentials {
            HttpCredentials::Basic { user, .. } | HttpCredentials::Malformed { user, .. } => {
                user.clone()
            }
            HttpCredentials::Digest(c) if !c.userhash => c.username.clone(),
            _ => String::new(),
        };
        let mut checked = CheckNotes::default();
        let judgement = self
            .within(
                self.judge_http(req, state, ip, &mut user, &mut checked),
                Judgement::Temporary,
            )
            .await;
        let mut audit = AuditRecord::new(Protocol::Http, req.credentials.scheme(), user, ip);
        audit.uri = Some(req.uri.clone());
        checked.record(&mut audit);
        let outcome = conclude(judgement, &mut audit);
        if let Some(k) = repeat {
            state.repeats.remember(k, &outcome);
        }
        audit.latency = started.elapsed();
        HttpDecision {
            outcome,
            audit: Some(audit),
        }
    }

    async fn judge_http(
        &self,
        req: &HttpAuthRequest,
        state: &HttpAuth,
        ip: Option<IpAddr>,
        user: &mut String,
        checked: &mut CheckNotes,
    ) -> Judgement {
        let throttled = match &req.credentials {
            HttpCredentials::None => return Judgement::Challenge,
            HttpCredentials::NotOffered => return refuse("scheme not offered", false),
            HttpCredentials::Malformed { reason, .. } => return refuse(reason, false),
            HttpCredentials::Basic { user, password } => {
                self.throttled(
                    ip,
                    user.as_bytes(),
                    Some(password.expose()),
                    self.judge_basic(user, password, &login(req, ip), checked),
                )
                .await
            }
            HttpCredentials::Digest(sent) => {
                // With `userhash`, HA1 is computed over the real name.
                let mut c = sent.clone();
                if c.userhash {
                    if !req.settings.userhash {
                        return refuse("userhash not offered", false);
                    }
                    match self.resolve_userhash(&c).await {
                        Some(Ok(real)) => {
                            c.username.clone_from(&real);
                            *user = real;
                        }
                        // Counted as an unknown user, as for a name in clear.
                        None => {
                            let unknown = async { rejected(Rejection::UnknownUser, None) };
                            return self.settle(self.throttled(ip, b"", None, unknown).await);
                        }
                        Some(Err(j)) => return j,
                    }
                }
                let who = user.clone();
                self.throttled(
                    ip,
                    who.as_bytes(),
                    None,
                    self.judge_digest(req, &c, &who, state, checked),
                )
                .await
            }
        };
        self.settle(throttled)
    }

    fn settle(&self, t: Throttled<Judgement>) -> Judgement {
        match t {
            Throttled::Blocked(scope) => Judgement::Blocked(scope),
            Throttled::Judged(j, _) => j,
        }
    }

    async fn judge_basic(
        &self,
        user: &str,
        password: &Secret,
        login: &Login<'_>,
        checked: &mut CheckNotes,
    ) -> Judgement {
        let passwords = std::slice::from_ref(password);
        match self
            .walk(|db| self.verify_plain(db, user, passwords, login))
            .await
        {
            Walk::Decided(Checked { verdict, notes }, passdb) => {
                *checked = notes;
                match verdict {
                    Verdict::Accepted(p) => Judgement::Allow {
                        user: if p.user.is_empty() {
                            user.to_owned()
                        } else {
                            p.user
                        },
                        passdb,
                        info: None,
                    },
                    Verdict::Rejected(r) => rejected(r, Some(passdb)),
                }
            }
            Walk::Unknown => rejected(Rejection::UnknownUser, None),
            Walk::Failed(e) => Judgement::Temporary(e.to_string()),
        }
    }

    /// The real user behind a `userhash` username: the first passdb user
    /// whose H(`user:realm`) equals it. `None`: nobody.
    async fn resolve_userhash(&self, c: &Credentials) -> Option<Result<String, Judgement>> {
        let wanted = c.username.to_ascii_lowercase();
        let matches = |u: &str| {
            let h = c.algorithm.h(format!("{u}:{}", c.realm).as_bytes());
            crate::secret::ct_eq(h.as_bytes(), wanted.as_bytes())
        };
        let walk = self
            .walk(|db| async {
                Ok(match db.find_user(&matches).await? {
                    Some(u) => Answer::Decide(u),
                    None => Answer::Next,
                })
            })
            .await;
        match walk {
            Walk::Decided(u, _) => Some(Ok(u)),
            Walk::Unknown => None,
            Walk::Failed(e) => Some(Err(Judgement::Temporary(e.to_string()))),
        }
    }

    async fn judge_digest(
        &self,
        req: &HttpAuthRequest,
        c: &Credentials,
        user: &str,
        state: &HttpAuth,
        checked: &mut CheckNotes,
    ) -> Judgement {
        let s = &req.settings;
        if c.realm != s.realm {
            return refuse("wrong realm", false);
        }
        if !s.algorithms.contains(&c.algorithm) {
            return refuse("algorithm not allowed", false);
        }
        if c.uri != req.uri {
            return refuse("uri does not match the request", false);
        }
        let nonce = state.nonces.check(&c.nonce, &s.realm, s.nonce_lifetime);
        if nonce == NonceState::Invalid {
            return refuse("nonce not ours", false);
        }
        // Digest answers with the main password (or its HA1): never where
        // HTTP is kept for app passwords.
        if self.required_app_password().contains(Service::Http) {
            return rejected(Rejection::AppPasswordRequired, None);
        }
        let stale = StaleNote::default();
        let stale = &stale;
        let walk = self
            .walk(|db| async move {
                // The record first, through the credential lookup cache (so
                // a Digest login costs no round trip while it is fresh and
                // is served stale while the passdb is down), and its
                // app-password rules.
                let found = self.lookup(db, user, stale).await;
                let refused = |apps: &AppPasswords| self.main_password_refused(apps, Service::Http);
                // Where the record holds no usable plaintext, an HA1 may
                // serve (MD5 only): an SQL `digest_ha1` column beside a
                // hashed or NULL password, or a passdb of HA1s only
                // (htdigest, in memory), which hands out no record.
                let wants_ha1 = c.md5_family()
                    && match &found {
                        Ok(Answer::Decide(Lookup::Found { secret, apps, .. })) => {
                            secret.plaintext().is_none() && !refused(apps)
                        }
                        Ok(Answer::Next) => !db.lookup_is_remote(),
                        Err(PassdbError::BadStoredPassword(_)) => true,
                        _ => false,
                    };
                if wants_ha1 {
                    if let Some(ha1) = db.digest_ha1(user, &s.realm).await? {
                        return Ok(Answer::Decide(DigestSecret::Ha1(ha1)));
                    }
                }
                Ok(match found? {
                    // Digest answers with the main password's plaintext:
                    // not where HTTP is kept for app passwords.
                    Answer::Decide(Lookup::Found { apps, .. }) if refused(&apps) => {
                        Answer::Decide(DigestSecret::Rejected(Rejection::AppPasswordRequired))
                    }
                    Answer::Decide(Lookup::Found { secret, .. }) => {
                        Answer::Decide(DigestSecret::Stored(secret))
                    }
                    Answer::Decide(Lookup::Rejected(r)) => {
                        Answer::Decide(DigestSecret::Rejected(r))
                    }
                    Answer::Next => Answer::Next,
                })
            })
            .await;
        checked.cache = stale.cache_use();
        // HA1 from the stored HA1 or the plaintext: the response and
        // `rspauth` are computed from it alike.
        let (ha1, passdb) = match walk {
            Walk::Decided(DigestSecret::Ha1(ha1), passdb) => (Zeroizing::new(ha1), passdb),
            Walk::Decided(DigestSecret::Stored(stored), passdb) => match stored.plaintext() {
                Some(plain) => (c.ha1(plain), passdb),
                None => {
                    return Judgement::Temporary(format!(
                        "stored scheme {} cannot serve Digest",
                        stored.scheme()
                    ))
                }
            },
            Walk::Decided(DigestSecret::Rejected(r), passdb) => return rejected(r, Some(passdb)),
            Walk::Unknown => return rejected(Rejection::UnknownUser, None),
            Walk::Failed(e) => return Judgement::Temporary(e.to_string()),
        };
        // A right answer with an expired nonce is `stale` (the client
        // retries silently); a count already used (here, or by another
        // instance when the counts are shared) is a replay.
        if !c.matches(&c.expected_from_ha1(&ha1, &req.method)) {
            rejected(Rejection::PasswordMismatch, Some(passdb))
        } else if nonce == NonceState::Stale {
            refuse("nonce expired", true)
        } else if !state
            .nonces
            .accept(
                &c.nonce,
                &c.cnonce,
                c.nc,
                req.request_id.as_deref(),
                s.nonce_lifetime,
            )
            .await
        {
            refuse("nc replayed", true)
        } else {
            Judgement::Allow {
                user: user.to_owned(),
                passdb,
                info: Some(AuthInfo {
                    rspauth: c.rspauth(&ha1),
                    nc: c.nc_text.clone(),
                    cnonce: c.cnonce.clone(),
                    next_nonce: nonce == NonceState::Fresh { ending: true },
                }),
            }
        }
    }
}

/// The outcome for nginx, with the audit record filled in.
fn conclude(j: Judgement, audit: &mut AuditRecord) -> HttpOutcome {
    match j {
        Judgement::Allow { user, passdb, info } => {
            audit.outcome = Outcome::Ok;
            audit.passdb = passdb;
            audit.user = user.clone();
            HttpOutcome::Allow { user, info }
        }
        Judgement::Reject { rejection, passdb } => {
            audit.reason = rejection.as_str().to_owned();
            audit.passdb = passdb.unwrap_or("-");
            HttpOutcome::Challenge { stale: false }
        }
        Judgement::Refuse { reason, stale } => {
            audit.reason = reason;
            audit.stale = stale;
            HttpOutcome::Challenge { stale }
        }
        Judgement::Challenge => {
            audit.outcome = Outcome::Challenge;
            audit.reason = "no credentials".to_owned();
            HttpOutcome::Challenge { stale: false }
        }
        Judgement::Temporary(reason) => {
            audit.outcome = Outcome::TempFail;
            audit.reason = reason;
            HttpOutcome::Unavailable
        }
        Judgement::Blocked(scope) => {
            audit.reason = format!("blocked-{}", scope.as_str());
            audit.throttle = Some(ThrottleAction::Blocked);
            HttpOutcome::Blocked
        }
    }
}
