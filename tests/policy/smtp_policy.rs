//! SMTP policy like Postfix, inside the process: CGI params as nginx sends
//! them → `Authenticator` (real passwd-file) → the rendered header block
//! nginx's mail module parses, and the audit record.
//!
//! - relay refusal under `smtp_auth none`: `554 5.7.1` with `Auth-Wait`, so
//!   nginx answers that one RCPT and the session goes on;
//! - relay probing is counted by the throttle until the network is blocked,
//!   and then closed;
//! - `reject_unknown_client` (Postfix's `reject_unknown_client_hostname`).
//!
//! Client addresses are never loopback: the throttle will trust loopback by
//! default. Throttle tests run on paused tokio time.

use std::sync::Arc;
use std::time::Duration;

use crate::common::policy::base_policy;
use nginx_auth_fcgi::audit::{Outcome, ThrottleAction};
use nginx_auth_fcgi::auth_http::{Failure, MailAuthRequest, MailAuthResponse};
use nginx_auth_fcgi::authenticator::{Authenticator, Decision, Policy};
use nginx_auth_fcgi::fastcgi::Params;
use nginx_auth_fcgi::mech::Mechanism;
use nginx_auth_fcgi::passdb::AnyPassdb;
use nginx_auth_fcgi::throttle::{Clock, Throttle, ThrottlePolicy};
use nginx_auth_fcgi::upstream::Upstreams;

const LOCAL: &str = "example.org";
const PROBER: &str = "203.0.113.77";

struct Fixture {
    _dir: tempfile::TempDir,
    auth: Authenticator,
}

impl Fixture {
    /// The decision on a RCPT under `smtp_auth none` (see [`rcpt`]).
    async fn rcpt(&self, to: &str, ip: &str, attempt: u32) -> Decision {
        self.auth.authenticate(&rcpt(to, ip, attempt)).await
    }

    /// The same from the client host `host`, as nginx resolved it.
    async fn rcpt_from_host(&self, to: &str, ip: &str, attempt: u32, host: &str) -> Decision {
        self.auth
            .authenticate(&rcpt_from_host(to, ip, attempt, host))
            .await
    }
}

fn fixture(throttle: Option<Arc<Throttle>>, reject_unknown_client: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("users");
    std::fs::write(&passwd, "alice:{PLAIN}alice-pw::::::\n").unwrap();
    let db = AnyPassdb::open(&format!("passwd-file:{}", passwd.display()), None).unwrap();
    let mut upstreams = Upstreams::default();
    upstreams.add("imap=127.0.0.1:1143").unwrap();
    upstreams.add("smtp=127.0.0.1:1025").unwrap();
    let policy = Policy {
        local_domains: vec![LOCAL.into()],
        throttle,
        ..base_policy([Mechanism::Plain], upstreams)
    };
    let auth = Authenticator::new(policy, vec![db])
        .unwrap()
        .with_reject_unknown_client(reject_unknown_client);
    Fixture { _dir: dir, auth }
}

/// Small limits, so a few attempts block (the rest as shipped).
fn throttle() -> Arc<Throttle> {
    let policy = ThrottlePolicy {
        block_ip: 5,
        block_ip_user: 5,
        ..ThrottlePolicy::default()
    };
    Arc::new(Throttle::in_memory(policy, Clock::system()))
}

fn request(pairs: &[(&str, &str)]) -> MailAuthRequest {
    let pairs = pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    MailAuthRequest::from_params(&Params::from_pairs(pairs)).unwrap()
}

/// A RCPT under `smtp_auth none`, as nginx asks: `Auth-Login-Attempt` counts
/// the auth requests of the session (every refused RCPT adds one).
fn rcpt(to: &str, ip: &str, attempt: u32) -> MailAuthRequest {
    rcpt_from_host(to, ip, attempt, "[UNAVAILABLE]")
}

fn rcpt_from_host(to: &str, ip: &str, attempt: u32, host: &str) -> MailAuthRequest {
    let to = format!("RCPT TO:<{to}>");
    let attempt = attempt.to_string();
    request(&[
        ("HTTP_AUTH_METHOD", "none"),
        ("HTTP_AUTH_USER", ""),
        ("HTTP_AUTH_PASS", ""),
        ("HTTP_AUTH_PROTOCOL", "smtp"),
        ("HTTP_AUTH_LOGIN_ATTEMPT", &attempt),
        ("HTTP_CLIENT_IP", ip),
        ("HTTP_CLIENT_HOST", host),
        ("HTTP_AUTH_SMTP_HELO", "client.example"),
        ("HTTP_AUTH_SMTP_FROM", "MAIL FROM:<x@remote.example>"),
        ("HTTP_AUTH_SMTP_TO", &to),
    ])
}

fn login(protocol: &str, pass: &str, ip: &str, host: Option<&str>) -> MailAuthRequest {
    let mut pairs = vec![
        ("HTTP_AUTH_METHOD", "plain"),
        ("HTTP_AUTH_USER", "alice"),
        ("HTTP_AUTH_PASS", pass),
        ("HTTP_AUTH_PROTOCOL", protocol),
        ("HTTP_AUTH_LOGIN_ATTEMPT", "1"),
        ("HTTP_CLIENT_IP", ip),
    ];
    if let Some(host) = host {
        pairs.push(("HTTP_CLIENT_HOST", host));
    }
    request(&pairs)
}

/// The header block nginx gets, header name → value.
fn headers(d: &Decision) -> Vec<(String, String)> {
    let raw = String::from_utf8(d.response.render().unwrap()).unwrap();
    raw.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[track_caller]
fn failure(d: &Decision) -> &Failure {
    match &d.response {
        MailAuthResponse::Fail(f) => f,
        MailAuthResponse::Ok { .. } => panic!("expected a failure: {}", d.audit),
    }
}

#[track_caller]
fn assert_relay_denied(d: &Decision, wait: Option<u32>) {
    let h = headers(d);
    assert_eq!(
        header(&h, "Auth-Status"),
        Some("Relay access denied"),
        "{h:?}"
    );
    assert_eq!(header(&h, "Auth-Error-Code"), Some("554 5.7.1"), "{h:?}");
    assert_eq!(
        header(&h, "Auth-Wait").map(|w| w.parse().unwrap()),
        wait,
        "{h:?}"
    );
    assert!(header(&h, "Auth-Server").is_none() && header(&h, "Auth-Port").is_none());
    assert_eq!(d.audit.outcome, Outcome::Refused, "{}", d.audit);
}

#[track_caller]
fn assert_relayed(d: &Decision) {
    let h = headers(d);
    assert_eq!(header(&h, "Auth-Status"), Some("OK"), "{}", d.audit);
    assert_eq!(header(&h, "Auth-Port"), Some("1025"), "{h:?}");
    assert_eq!(header(&h, "Auth-User"), None, "no identity for `none`");
}

#[tokio::test]
async fn relay_denied_keeps_the_session_with_the_failure_schedule() {
    let f = fixture(None, false);
    // nginx counts every auth request of the session: the RCPTs refused
    // before this one raise Auth-Login-Attempt, and the wait grows as for
    // wrong passwords (WaitPolicy::default: 1, 2, 4, ... s).
    for (attempt, wait) in [(1, 1), (2, 2), (3, 4), (9, 16)] {
        let d = f.rcpt("victim@elsewhere.example", PROBER, attempt).await;
        assert_relay_denied(&d, Some(wait));
        assert_eq!(d.audit.reason, "relay-denied", "{}", d.audit);
        assert_eq!(d.audit.wait, Some(wait));
    }
    // From max_attempts on: no Auth-Wait, nginx closes the session.
    let d = f.rcpt("victim@elsewhere.example", PROBER, 10).await;
    assert_relay_denied(&d, None);
    // The next RCPT of the same session, to a local domain: relayed.
    assert_relayed(&f.rcpt("rcpt@Example.ORG", PROBER, 2).await);
}

#[tokio::test(start_paused = true)]
async fn relay_probing_is_counted_until_the_network_is_blocked_and_closed() {
    let t = throttle();
    let f = fixture(Some(t), false);
    // Each probe on a fresh session (attempt 1): the session schedule
    // alone would answer 1 s every time.
    let mut probes = 0;
    let blocked = loop {
        let d = f
            .rcpt(&format!("v{probes}@elsewhere.example"), PROBER, 1)
            .await;
        if d.audit.reason != "relay-denied" {
            break d;
        }
        assert_relay_denied(&d, Some(1));
        probes += 1;
        assert!(probes <= 5, "5 probes reach block_ip/block_ip_user");
    };
    assert_eq!(probes, 5, "every refused RCPT counts: {}", blocked.audit);
    // Blocked: the relay answer without Auth-Wait, so nginx closes at once.
    assert_relay_denied(&blocked, None);
    assert!(
        blocked.audit.reason.starts_with("blocked-"),
        "{}",
        blocked.audit
    );
    assert_eq!(blocked.audit.throttle, Some(ThrottleAction::Blocked));
    // Even its local-domain RCPTs: the network is blocked.
    let d = f.rcpt("rcpt@example.org", PROBER, 1).await;
    assert_relay_denied(&d, None);
    // Another network is not affected.
    let d = f.rcpt("v@elsewhere.example", "198.51.100.31", 1).await;
    assert_relay_denied(&d, Some(1));
    assert_relayed(&f.rcpt("rcpt@example.org", "198.51.100.31", 2).await);
    // The block ends like any other.
    tokio::time::advance(Duration::from_secs(901)).await;
    assert_relayed(&f.rcpt("rcpt@example.org", PROBER, 1).await);
}

#[tokio::test(start_paused = true)]
async fn accepted_relays_are_not_counted() {
    let f = fixture(Some(throttle()), false);
    // An MX gets many sessions from one big sender: none of them counts.
    for i in 0..20 {
        assert_relayed(&f.rcpt(&format!("u{i}@example.org"), PROBER, 1).await);
    }
    // ...nor resets anything: four probes, a relayed RCPT, a fifth probe,
    // and the network is blocked as after five probes in a row.
    for _ in 0..4 {
        let d = f.rcpt("v@elsewhere.example", PROBER, 1).await;
        assert_relay_denied(&d, Some(1));
    }
    assert_relayed(&f.rcpt("rcpt@example.org", PROBER, 1).await);
    let d = f.rcpt("v@elsewhere.example", PROBER, 1).await;
    assert_eq!(d.audit.reason, "relay-denied", "{}", d.audit);
    let d = f.rcpt("rcpt@example.org", PROBER, 1).await;
    assert!(d.audit.reason.starts_with("blocked-"), "{}", d.audit);
}

/// The PROBER's SMTP login and its RCPT under `smtp_auth none`, both with
/// the client host `host` as nginx resolved it.
async fn login_and_rcpt_from_host(f: &Fixture, host: &str) -> [Decision; 2] {
    [
        f.auth
            .authenticate(&login("smtp", "alice-pw", PROBER, Some(host)))
            .await,
        f.rcpt_from_host("rcpt@example.org", PROBER, 1, host).await,
    ]
}

#[tokio::test]
async fn reject_unknown_client_unavailable_is_550_5_7_25() {
    let f = fixture(None, true);
    for d in login_and_rcpt_from_host(&f, "[UNAVAILABLE]").await {
        let h = headers(&d);
        assert_eq!(
            header(&h, "Auth-Status"),
            Some("Client host rejected: cannot find your hostname"),
            "{h:?}"
        );
        assert_eq!(header(&h, "Auth-Error-Code"), Some("550 5.7.25"), "{h:?}");
        // Refused for that command; the session goes on (attempt 1: 1 s).
        assert_eq!(header(&h, "Auth-Wait"), Some("1"), "{h:?}");
        assert_eq!(d.audit.reason, "unknown-client-hostname", "{}", d.audit);
        assert_eq!(d.audit.outcome, Outcome::Refused);
        assert_eq!(d.audit.passdb, "-", "refused before the passdb");
    }
    // Past max_attempts: closed.
    let mut late = login("smtp", "alice-pw", PROBER, Some("[UNAVAILABLE]"));
    late.attempt = 10;
    assert_eq!(failure(&f.auth.authenticate(&late).await).wait, None);
}

#[tokio::test]
async fn reject_unknown_client_tempunavail_is_450_4_7_25_with_the_marker() {
    let f = fixture(None, true);
    for d in login_and_rcpt_from_host(&f, "[TEMPUNAVAIL]").await {
        let h = headers(&d);
        let status = header(&h, "Auth-Status").unwrap();
        assert!(status.contains("[TEMPUNAVAIL]"), "{h:?}");
        assert!(status.starts_with("Client host rejected"), "{h:?}");
        assert_eq!(header(&h, "Auth-Error-Code"), Some("450 4.7.25"), "{h:?}");
        // A temporary refusal: the temporary-failure wait (3 s by default).
        assert_eq!(header(&h, "Auth-Wait"), Some("3"), "{h:?}");
        assert_eq!(d.audit.reason, "client-hostname-tempfail", "{}", d.audit);
        assert_eq!(d.audit.outcome, Outcome::Refused, "not our backends' fault");
    }
}

#[tokio::test]
async fn reject_unknown_client_passes_named_clients_and_leaves_imap_alone() {
    let f = fixture(None, true);
    let named = Some("mx.client.example");
    assert!(matches!(
        f.auth
            .authenticate(&login("smtp", "alice-pw", PROBER, named))
            .await
            .response,
        MailAuthResponse::Ok { .. }
    ));
    assert_relayed(
        &f.rcpt_from_host("rcpt@example.org", PROBER, 1, "mx.client.example")
            .await,
    );
    // A named client still gets the relay rule.
    let d = f
        .rcpt_from_host("v@elsewhere.example", PROBER, 1, "mx.client.example")
        .await;
    assert_relay_denied(&d, Some(1));
    // IMAP: nginx sends no Client-Host; even a stray marker changes nothing.
    for host in [None, Some("[UNAVAILABLE]")] {
        let d = f
            .auth
            .authenticate(&login("imap", "alice-pw", PROBER, host))
            .await;
        assert_eq!(d.audit.outcome, Outcome::Ok, "{}", d.audit);
    }
}

#[tokio::test]
async fn reject_unknown_client_is_off_by_default() {
    let f = fixture(None, false);
    for host in ["[UNAVAILABLE]", "[TEMPUNAVAIL]"] {
        let d = f
            .auth
            .authenticate(&login("smtp", "alice-pw", PROBER, Some(host)))
            .await;
        assert_eq!(d.audit.outcome, Outcome::Ok, "{host}: {}", d.audit);
        assert_relayed(&f.rcpt_from_host("rcpt@example.org", PROBER, 1, host).await);
    }
}

#[tokio::test(start_paused = true)]
async fn unknown_client_refusals_are_not_counted() {
    let f = fixture(Some(throttle()), true);
    for _ in 0..10 {
        let d = f
            .rcpt_from_host("rcpt@example.org", PROBER, 1, "[UNAVAILABLE]")
            .await;
        assert_eq!(d.audit.reason, "unknown-client-hostname", "{}", d.audit);
    }
    // Not a guess: the network is not blocked, and once its name resolves
    // it gets through.
    assert_relayed(
        &f.rcpt_from_host("rcpt@example.org", PROBER, 1, "mx.client.example")
            .await,
    );
}
