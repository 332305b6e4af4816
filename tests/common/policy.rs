//! The authenticator's policy for in-process tests, with the values most of
//! them use; a test changes what it needs with `Policy { field, ..base_policy(..) }`
//! (and likewise `ThrottlePolicy { field, ..fixed_throttle() }`).

use std::time::Duration;

use nginx_auth_fcgi::authenticator::{Policy, WaitPolicy};
use nginx_auth_fcgi::mech::Mechanism;
use nginx_auth_fcgi::throttle::ThrottlePolicy;
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

/// A throttle without its adaptive parts (no success bonus, no per-network
/// ceiling, no known networks; `tests/throttle_model.rs` covers those), no
/// trusted networks: it blocks after 20 failures per address, 5 per address
/// and user, for 900 s, in a 600 s window.
pub fn fixed_throttle() -> ThrottlePolicy {
    ThrottlePolicy {
        window: Duration::from_secs(600),
        block_ip: 20,
        block_ip_user: 5,
        block_time: Duration::from_secs(900),
        delay_base: 1,
        delay_max: 30,
        ipv6_prefix: 64,
        trusted: Vec::new(),
        success_bonus: 0,
        block_ip_max: 0,
        known_for: Duration::ZERO,
    }
}

/// An IMAP LOGIN (`plain`) of `user` with `pass` from 198.51.100.1, attempt
/// 1, decided by `auth` in process.
pub async fn imap_login(
    auth: &nginx_auth_fcgi::authenticator::Authenticator,
    user: &str,
    pass: &str,
) -> nginx_auth_fcgi::authenticator::Decision {
    use nginx_auth_fcgi::auth_http::MailAuthRequest;
    use nginx_auth_fcgi::fastcgi::Params;
    let pairs = [
        ("HTTP_AUTH_METHOD", "plain"),
        ("HTTP_AUTH_USER", user),
        ("HTTP_AUTH_PASS", pass),
        ("HTTP_AUTH_PROTOCOL", "imap"),
        ("HTTP_AUTH_LOGIN_ATTEMPT", "1"),
        ("HTTP_CLIENT_IP", "198.51.100.1"),
    ]
    .iter()
    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect();
    let req = MailAuthRequest::from_params(&Params::from_pairs(pairs)).unwrap();
    auth.authenticate(&req).await
}

/// IMAP, POP3 and SMTP upstreams on 127.0.0.1 ports 1143, 1110 and 1025.
pub fn local_upstreams() -> Upstreams {
    let mut upstreams = Upstreams::default();
    for u in [
        "imap=127.0.0.1:1143",
        "pop3=127.0.0.1:1110",
        "smtp=127.0.0.1:1025",
    ] {
        upstreams.add(u).unwrap();
    }
    upstreams
}
