//! Hop 3, the one policy layer: every login, mail `auth_http` or HTTP
//! `auth_request`, is decided here, by the same rules (the
//! [`crate::service`] only refuses requests without the shared secret or
//! malformed ones before).
//!
//! - `chain`: the one walk over the passdb chain (every stored record
//!   through the credential [`LookupCache`]), and password checks through
//!   the verification [`Cache`] and the bounded [`Verifier`].
//! - `mail`: mail logins: mechanism, SMTP relay, upstream choice,
//!   `Auth-Wait`.
//! - `http`: HTTP Basic and Digest.
//!
//! Both kinds of request go through `Authenticator::within` (the decision
//! timeout) and `Authenticator::throttled` (the brute-force [`Throttle`],
//! fed typed outcomes: a rejection counts, a success resets, anything else
//! is left alone), and end in one [`AuditRecord`].
//!
//! Three outcomes are kept apart (style.md, "Error model"): a *rejection*
//! (wrong credentials: generic message, growing `Auth-Wait`), a *temporary
//! failure* (backend trouble or overload: its own message and SMTP code,
//! never OK), and a *refusal* (not allowed at all). What the client is told
//! for each is a [`crate::auth_http::FailureKind`].

mod app_check;
pub(crate) mod chain;
mod http;
mod mail;

use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditRecord;
use crate::auth_http::MailAuthResponse;
use crate::cache::Cache;
use crate::client_ip::TrustedProxies;
use crate::lookup_cache::LookupCache;
use crate::master_user::MasterUser;
use crate::mech::external::Rules;
use crate::mech::{plain::Plain, Mechanism, Need};
use crate::passdb::rehash::Rehasher;
use crate::passdb::{AnyPassdb, Passdb};
use crate::throttle::{Check, Scope, Throttle};
use crate::upstream::Upstreams;
use crate::verifier::Verifier;

pub use crate::auth_http::response::{INVALID_LOGIN, TEMPORARY};
pub use http::HttpDecision;

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
        Some(crate::backoff::doubling(self.base, attempt, self.max))
    }

    fn after_temporary(&self, attempt: u32) -> Option<u32> {
        (attempt < self.max_attempts && self.temporary > 0).then_some(self.temporary)
    }
}

/// EXTERNAL rules were given, but no passdb can look the mapped user up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("external rules need a passdb that can look users up (lookup_credentials)")]
pub struct ExternalNeedsLookup;

/// Everything the decision needs besides the request.
#[derive(Debug)]
pub struct Policy {
    /// Mechanisms we accept (nginx's `*_auth` lists should match).
    pub mechanisms: HashSet<Mechanism>,
    /// Domains we accept mail for without AUTH (`smtp_auth none`).
    pub local_domains: Vec<String>,
    /// Default upstreams.
    pub upstreams: Upstreams,
    /// The `Auth-Wait` schedule over a connection's attempts.
    pub wait: WaitPolicy,
    /// Send `Auth-Pass` on SMTP success too (needed with nginx `proxy_smtp_auth on`).
    pub smtp_pass: bool,
    /// Longest a decision may take (passdb lookups, the verifier's queue and
    /// hash checks); past it the answer is a temporary failure. Keep it well
    /// below nginx's `auth_http_timeout` (default 60 s).
    pub timeout: Duration,
    /// Brute-force limits (`None`: off). An `Arc` so in-process instances
    /// can share one in-memory state.
    pub throttle: Option<Arc<Throttle>>,
    /// Verification cache for expensive schemes (`None`: off).
    pub cache: Option<Arc<Cache>>,
}

/// The decision for one mail request and its audit record.
#[derive(Debug)]
pub struct Decision {
    /// What nginx gets.
    pub response: MailAuthResponse,
    /// What the audit log gets.
    pub audit: AuditRecord,
}

/// Decides mail logins and HTTP requests against a passdb chain.
#[derive(Debug)]
pub struct Authenticator {
    policy: Policy,
    passdbs: Vec<AnyPassdb>,
    plain: Plain,
    /// Whose `Proxy-Protocol-Addr` (mail) or `X-Forwarded-For` /
    /// `X-Real-IP` (HTTP) is believed.
    trusted_proxies: TrustedProxies,
    /// Upstream login for users verified without a plaintext.
    master: Option<MasterUser>,
    /// EXTERNAL rules (empty: EXTERNAL refused as not supported).
    external: Rules,
    /// Where expensive password checks run.
    verifier: Verifier,
    /// SMTP rules beyond the passdb (see [`mail::SmtpRules`]).
    smtp: mail::SmtpRules,
    /// Protocols for which main passwords are refused (`require_app_password`).
    require_app: crate::passdb::app_password::Services,
    /// Transparent rehash (`upgrade_scheme`; `None`: off).
    rehash: Option<Rehasher>,
    /// Credential lookup cache (`lookup_cache_ttl`; `None`: off).
    lookup_cache: Option<Arc<LookupCache>>,
}

/// What the throttle learns from a judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    /// Wrong credentials: counts toward a block.
    Failure,
    /// Logged in: forgets this client's failures for the user.
    Success,
    /// Neither (malformed, refused, temporary): left alone.
    Nothing,
}

/// A judgement that tells the throttle what it means.
pub(crate) trait Counted {
    fn count(&self) -> Count;
}

/// A judgement inside the throttle.
pub(crate) enum Throttled<J> {
    /// Refused before the passdb was asked.
    Blocked(Scope),
    /// Judged; with the throttle's `Auth-Wait` for a counted failure.
    Judged(J, Option<u32>),
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
                verifier: Verifier::default(),
                smtp: mail::SmtpRules::default(),
                require_app: Default::default(),
                rehash: None,
                lookup_cache: None,
            })
        } else {
            Err(problems)
        }
    }

    /// Believes `Proxy-Protocol-Addr` (mail) and `X-Forwarded-For` /
    /// `X-Real-IP` (HTTP) from these peers (`--trusted-proxy`).
    pub fn with_trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted_proxies = trusted;
        self
    }

    /// Runs expensive password checks on this verifier (default: one slot
    /// per CPU, see [`crate::verifier::VerifierPolicy`]).
    pub fn with_verifier(mut self, verifier: Verifier) -> Self {
        self.verifier = verifier;
        self
    }

    /// Upgrades stored hashes after plaintext logins (`upgrade_scheme`).
    pub fn with_rehash(mut self, rehash: Option<Rehasher>) -> Self {
        self.rehash = rehash;
        self.link_rehash_to_lookup_cache();
        self
    }

    /// The rehash worker drops the records it rewrote (or found changed)
    /// from the lookup cache.
    fn link_rehash_to_lookup_cache(&self) {
        if let (Some(r), Some(c)) = (&self.rehash, &self.lookup_cache) {
            r.forget_in(Arc::clone(c));
        }
    }

    /// Remembers the records the passdbs return (`lookup_cache_ttl`; see
    /// [`crate::lookup_cache`]).
    pub fn with_lookup_cache(mut self, cache: Option<Arc<LookupCache>>) -> Self {
        self.lookup_cache = cache;
        self.link_rehash_to_lookup_cache();
        self
    }

    /// The credential lookup cache in force, if any.
    pub fn lookup_cache(&self) -> Option<&LookupCache> {
        self.lookup_cache.as_deref()
    }

    /// Answers users verified without a plaintext ({CRAM-MD5}, EXTERNAL)
    /// with this master login; without one they are refused.
    pub fn with_master_user(mut self, master: Option<MasterUser>) -> Self {
        self.master = master;
        self
    }

    /// Offers EXTERNAL with these rules (empty: not offered). The mapped user
    /// must exist in a passdb, so one must be able to look users up.
    pub fn with_external(mut self, rules: Rules) -> Result<Self, ExternalNeedsLookup> {
        if !rules.is_empty()
            && !self
                .passdbs
                .iter()
                .any(|p| p.capabilities().lookup_credentials)
        {
            return Err(ExternalNeedsLookup);
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

    /// The verifier in force.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The passdb chain, in order.
    pub fn passdbs(&self) -> &[AnyPassdb] {
        &self.passdbs
    }

    /// Runs `judge` within the decision timeout; past it, `late` says what
    /// to answer (a temporary failure). Dropping `judge` also takes a
    /// request waiting in the verifier's queue out of it.
    pub(crate) async fn within<T>(
        &self,
        judge: impl Future<Output = T>,
        late: impl FnOnce(String) -> T,
    ) -> T {
        // Boxed once here: the wrappers around a judgement (timeout,
        // throttle, verifier lane) would otherwise each hold a copy of its
        // state machine, and a request's future is held per connection.
        match tokio::time::timeout(self.policy.timeout, Box::pin(judge)).await {
            Ok(t) => t,
            Err(_) => late(format!(
                "no decision within {} ms",
                self.policy.timeout.as_millis()
            )),
        }
    }

    /// Runs `judge` inside the throttle: a blocked client is refused before
    /// any passdb is asked; a trusted client or a known network gets the
    /// verifier's priority lane; afterwards the judgement's [`Count`] is
    /// recorded.
    /// `secret` (the password offered, when there is one that repeats as
    /// sent) lets the throttle count a repeated wrong password once.
    pub(crate) async fn throttled<J: Counted>(
        &self,
        ip: Option<IpAddr>,
        user: &[u8],
        secret: Option<&[u8]>,
        judge: impl Future<Output = J>,
    ) -> Throttled<J> {
        let judge = Box::pin(judge);
        let Some(throttle) = &self.policy.throttle else {
            return Throttled::Judged(judge.await, None);
        };
        // A trusted client, or a user from a network they logged in from,
        // verifies in the verifier's priority lane: a flood from elsewhere
        // cannot take the owner's slot.
        let (priority, known) = match throttle.check(ip, user).await {
            Check::Blocked(scope) => return Throttled::Blocked(scope),
            Check::Exempt => (true, false),
            Check::Allowed => {
                let known = throttle.known(ip, user).await;
                (known, known)
            }
        };
        let j = crate::verifier::with_priority(priority, judge).await;
        let wait = match j.count() {
            Count::Failure => throttle.record_failure(ip, user, secret, known).await,
            Count::Success => {
                throttle.record_success(ip, user).await;
                None
            }
            Count::Nothing => None,
        };
        Throttled::Judged(j, wait)
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
