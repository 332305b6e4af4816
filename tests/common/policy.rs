//! The authenticator's policy for in-process tests, with the values most of
//! them use; a test changes what it needs with `Policy { field, ..base_policy(..) }`.

use std::time::Duration;

use nginx_auth_fcgi::authenticator::{Policy, WaitPolicy};
use nginx_auth_fcgi::mech::Mechanism;
use nginx_auth_fcgi::upstream::Upstreams;

/// `mechanisms` allowed, routed by `upstreams`; no local domains, the default
/// waits, no `Auth-Pass` for SMTP, a 10 s timeout, no throttle, no cache.
pub fn base_policy(
    mechanisms: impl IntoIterator<Item = Mechanism>,
    upstreams: Upstreams,
) -> Policy {
    Policy {
        mechanisms: mechanisms.into_iter().collect(),
        local_domains: Vec::new(),
        upstreams,
        wait: WaitPolicy::default(),
        smtp_pass: false,
        timeout: Duration::from_secs(10),
        throttle: None,
        cache: None,
    }
}
