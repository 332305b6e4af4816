//! The one policy layer applies to HTTP `auth_request` as to mail: the
//! verification cache, the bounded verifier (shedding), the decision timeout,
//! trusted proxies, the throttle for Basic and Digest, and one decision per
//! client request (`AUTH_REQUEST_ID`). In-process, against a real
//! passwd-file, through `Authenticator::authenticate_http` so the audit
//! record of each decision can be read.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::common::policy::{base_policy, fixed_throttle};
use base64::Engine as _;
use nginx_auth_fcgi::audit::{AuditRecord, Outcome};
use nginx_auth_fcgi::auth_http::{MailAuthRequest, MailAuthResponse};
use nginx_auth_fcgi::authenticator::{Authenticator, Policy, TEMPORARY};
use nginx_auth_fcgi::cache::{Cache, CachePolicy, CacheUse};
use nginx_auth_fcgi::client_ip::TrustedProxies;
use nginx_auth_fcgi::fastcgi::Params;
use nginx_auth_fcgi::http_auth::digest::Algorithm;
use nginx_auth_fcgi::http_auth::{HttpAuth, HttpAuthRequest, HttpOutcome};
use nginx_auth_fcgi::mech::Mechanism;
use nginx_auth_fcgi::passdb::AnyPassdb;
use nginx_auth_fcgi::scheme::{self, Scheme};
use nginx_auth_fcgi::throttle::{Clock, Throttle, ThrottlePolicy};
use nginx_auth_fcgi::upstream::Upstreams;
use nginx_auth_fcgi::verifier::{Verifier, VerifierPolicy};

const REALM: &str = "R";

struct Fixture {
    _dir: tempfile::TempDir,
    auth: Authenticator,
    http: HttpAuth,
}

struct Options {
    throttle: bool,
    cache: bool,
    timeout: Duration,
    verifier: VerifierPolicy,
    trusted_proxy: Option<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            throttle: false,
            cache: true,
            timeout: Duration::from_secs(10),
            verifier: VerifierPolicy::default(),
            trusted_proxy: None,
        }
    }
}

/// alice {PLAIN} (cheap), bob BLF-CRYPT (expensive).
fn fixture(o: Options) -> Fixture {
    let bcrypt = scheme::hash(Scheme::BlfCrypt, b"bob-pw").unwrap();
    let (dir, users) = crate::common::temp_file(
        "users",
        &format!("alice:{{PLAIN}}wonderland::::::\nbob:{bcrypt}::::::\n"),
    );
    let throttle = o.throttle.then(|| {
        Arc::new(Throttle::in_memory(
            ThrottlePolicy {
                block_ip: 100,
                block_ip_user: 2,
                // Known networks on: they pick the verifier's lane.
                known_for: Duration::from_secs(30 * 86_400),
                ..fixed_throttle()
            },
            Clock::system(),
        ))
    });
    let mut upstreams = Upstreams::default();
    upstreams.add("imap=127.0.0.1:1143").unwrap();
    upstreams.add("smtp=127.0.0.1:1025").unwrap();
    let policy = Policy {
        timeout: o.timeout,
        throttle,
        cache: o
            .cache
            .then(|| Arc::new(Cache::new(CachePolicy::default()))),
        ..base_policy([Mechanism::Plain], upstreams)
    };
    let passdb = AnyPassdb::open(&format!("passwd-file:{}", users.display()), None).unwrap();
    let trusted = o
        .trusted_proxy
        .map(|n| TrustedProxies::new(vec![n.parse().unwrap()]))
        .unwrap_or_default();
    let auth = Authenticator::new(policy, vec![passdb])
        .unwrap()
        .with_trusted_proxies(trusted)
        .with_verifier(Verifier::new(o.verifier));
    Fixture {
        _dir: dir,
        auth,
        http: HttpAuth::new(),
    }
}

fn params(extra: &[(&str, &str)]) -> Params {
    crate::params_with(
        &[
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_URI", "/private/"),
            ("REMOTE_ADDR", "198.51.100.2"),
            ("AUTH_REALM", REALM),
            ("AUTH_SCHEMES", "digest basic"),
            ("AUTH_DIGEST_ALGORITHMS", "MD5"),
        ],
        extra,
    )
}

fn basic(user: &str, password: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b64}")
}

fn digest(nonce: &str, password: &str, nc: &str) -> String {
    let h = |s: String| Algorithm::Md5.h(s.as_bytes());
    let ha1 = h(format!("alice:{REALM}:{password}"));
    let ha2 = h("GET:/private/".to_owned());
    let response = h(format!("{ha1}:{nonce}:{nc}:c0ffee:auth:{ha2}"));
    format!(
        "Digest username=\"alice\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"/private/\", \
         algorithm=MD5, qop=auth, nc={nc}, cnonce=\"c0ffee\", response=\"{response}\""
    )
}

impl Fixture {
    async fn ask(
        &self,
        extra: &[(&str, &str)],
    ) -> (HttpOutcome, Option<nginx_auth_fcgi::audit::AuditRecord>) {
        let req = HttpAuthRequest::from_params(&params(extra)).unwrap();
        let d = self.auth.authenticate_http(&req, &self.http).await;
        (d.outcome, d.audit)
    }

    /// [`Fixture::ask`] with Basic credentials.
    async fn ask_basic(
        &self,
        user: &str,
        password: &str,
    ) -> (HttpOutcome, Option<nginx_auth_fcgi::audit::AuditRecord>) {
        self.ask(&[("HTTP_AUTHORIZATION", &basic(user, password))])
            .await
    }

    async fn status(&self, extra: &[(&str, &str)]) -> HttpOutcome {
        self.ask(extra).await.0
    }

    async fn mail(&self, protocol: &str, user: &str, pass: &str) -> MailAuthResponse {
        let p = Params::from_pairs(
            [
                ("HTTP_AUTH_METHOD", "plain"),
                ("HTTP_AUTH_USER", user),
                ("HTTP_AUTH_PASS", pass),
                ("HTTP_AUTH_PROTOCOL", protocol),
                ("HTTP_AUTH_LOGIN_ATTEMPT", "1"),
                ("HTTP_CLIENT_IP", "198.51.100.9"),
            ]
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect(),
        );
        let req = MailAuthRequest::from_params(&p).unwrap();
        self.auth.authenticate(&req).await.response
    }
}

fn allowed(o: &HttpOutcome) -> bool {
    matches!(o, HttpOutcome::Allow { .. })
}

/// A verifier with one slot and `queue` places.
fn one_slot(queue: usize) -> VerifierPolicy {
    VerifierPolicy {
        concurrency: 1,
        queue,
        max_wait: Duration::from_secs(60),
    }
}

/// A 503 whose audit record is a temporary failure saying `why`.
#[track_caller]
fn assert_temporary(o: HttpOutcome, a: Option<AuditRecord>, why: &str) {
    assert_eq!(o, HttpOutcome::Unavailable);
    let a = a.expect("an audit record");
    assert_eq!(a.outcome, Outcome::TempFail, "{a}");
    assert!(a.reason.contains(why), "{}", a.reason);
}

/// Takes every slot of the verifier with a check that waits for the gate.
fn hold_slots(v: &Verifier, n: usize) -> mpsc::Sender<()> {
    let (open, gate) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(gate));
    for _ in 0..n {
        let v = v.clone();
        let gate = Arc::clone(&gate);
        tokio::spawn(async move {
            v.run(move || {
                let _ = gate.lock().unwrap().recv();
            })
            .await
        });
    }
    open
}

/// [`hold_slots`] for one slot, once its check runs.
async fn hold_one_slot(v: &Verifier) -> mpsc::Sender<()> {
    let open = hold_slots(v, 1);
    until_running(v, 1).await;
    open
}

async fn until_running(v: &Verifier, n: usize) {
    while v.running() < n {
        tokio::task::yield_now().await;
        std::thread::yield_now();
    }
}

#[tokio::test]
async fn basic_of_an_expensive_hash_is_served_by_the_cache_and_a_wrong_password_never_is() {
    let f = fixture(Options::default());
    let right = basic("bob", "bob-pw");
    let wrong = basic("bob", "bob-wrong");
    let (o, a) = f.ask(&[("HTTP_AUTHORIZATION", &right)]).await;
    assert!(allowed(&o), "{o:?}");
    assert_eq!(a.unwrap().cache.map(CacheUse::as_str), Some("miss"));
    let (o, a) = f.ask(&[("HTTP_AUTHORIZATION", &right)]).await;
    assert!(allowed(&o), "{o:?}");
    assert_eq!(
        a.unwrap().cache.map(CacheUse::as_str),
        Some("hit"),
        "second Basic login is a cache hit"
    );
    for _ in 0..2 {
        let (o, a) = f.ask(&[("HTTP_AUTHORIZATION", &wrong)]).await;
        assert_eq!(o, HttpOutcome::Challenge { stale: false });
        let a = a.unwrap();
        assert_eq!(
            a.cache.map(CacheUse::as_str),
            Some("miss"),
            "a wrong password is verified again"
        );
        assert_eq!(a.reason, "password-mismatch");
    }
    // The same entry serves mail: bob's IMAP login is a hit too.
    let before = f.ask(&[("HTTP_AUTHORIZATION", &right)]).await.1.unwrap();
    assert_eq!(before.cache.map(CacheUse::as_str), Some("hit"));
    assert!(matches!(
        f.mail("imap", "bob", "bob-pw").await,
        MailAuthResponse::Ok { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_verifier_queue_is_a_temporary_failure_at_once_and_cheap_logins_go_on() {
    let f = fixture(Options {
        cache: false,
        verifier: one_slot(0),
        ..Options::default()
    });
    let v = f.auth.verifier().clone();
    let open = hold_one_slot(&v).await;
    // HTTP: 503, never a 401 or 200.
    let (o, a) = f.ask_basic("bob", "bob-pw").await;
    assert_temporary(o, a, "overloaded (queue full)");
    // Mail: the temporary text with an Auth-Wait; SMTP 451 4.3.0.
    match f.mail("imap", "bob", "bob-pw").await {
        MailAuthResponse::Fail(fail) => {
            assert_eq!(fail.message(), TEMPORARY);
            assert!(fail.wait.is_some(), "the session survives: Auth-Wait");
        }
        other => panic!("{other:?}"),
    }
    match f.mail("smtp", "bob", "bob-pw").await {
        MailAuthResponse::Fail(fail) => assert_eq!(fail.smtp_code(), Some("451 4.3.0")),
        other => panic!("{other:?}"),
    }
    // Cheap checks and unknown users never wait behind expensive ones.
    let (o, _) = f.ask_basic("alice", "wonderland").await;
    assert!(allowed(&o), "{o:?}");
    assert!(matches!(
        f.mail("imap", "alice", "wonderland").await,
        MailAuthResponse::Ok { .. }
    ));
    let (o, a) = f.ask_basic("nobody", "x").await;
    assert_eq!(o, HttpOutcome::Challenge { stale: false });
    assert_eq!(a.unwrap().reason, "unknown-user");
    // Once the slot is free, bob logs in.
    open.send(()).unwrap();
    let mut ok = false;
    for _ in 0..1000 {
        let (o, _) = f.ask_basic("bob", "bob-pw").await;
        if allowed(&o) {
            ok = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(ok, "bob logs in once the verifier is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_timeout_applies_to_http_and_takes_the_request_out_of_the_queue() {
    let f = fixture(Options {
        cache: false,
        timeout: Duration::from_millis(200),
        verifier: one_slot(10),
        ..Options::default()
    });
    let v = f.auth.verifier().clone();
    let open = hold_one_slot(&v).await;
    let (o, a) = f.ask_basic("bob", "bob-pw").await;
    assert_temporary(o, a, "no decision within 200 ms");
    assert_eq!(v.waiting(), 0, "the timed-out request left the queue");
    open.send(()).unwrap();
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let f = fixture(Options {
        throttle: true,
        trusted_proxy: Some("10.0.0.0/8"),
        ..Options::default()
    });
    let (wrong, wrong2) = (basic("alice", "nope"), basic("alice", "nope2"));
    let right = basic("alice", "wonderland");
    let via_proxy = |client: &'static str| {
        [
            ("REMOTE_ADDR", "10.0.0.5"),
            ("HTTP_X_FORWARDED_FOR", client),
        ]
    };
    let (_, a) = f
        .ask(
            &[
                &via_proxy("203.0.113.50")[..],
                &[("HTTP_AUTHORIZATION", &wrong)],
            ]
            .concat(),
        )
        .await;
    assert_eq!(a.unwrap().client_ip, Some("203.0.113.50".parse().unwrap()));
    f.ask(
        &[
            &via_proxy("203.0.113.50")[..],
            &[("HTTP_AUTHORIZATION", &wrong2)],
        ]
        .concat(),
    )
    .await;
    // That client is blocked (block_ip_user = 2) ...
    let o = f
        .status(
            &[
                &via_proxy("203.0.113.50")[..],
                &[("HTTP_AUTHORIZATION", &right)],
            ]
            .concat(),
        )
        .await;
    assert_eq!(o, HttpOutcome::Blocked);
    // ... not the proxy's other clients.
    let o = f
        .status(
            &[
                &via_proxy("203.0.113.51")[..],
                &[("HTTP_AUTHORIZATION", &right)],
            ]
            .concat(),
        )
        .await;
    assert!(allowed(&o), "{o:?}");
    // An untrusted peer cannot choose its address with the header.
    let (_, a) = f
        .ask(&[
            ("REMOTE_ADDR", "198.51.100.77"),
            ("HTTP_X_FORWARDED_FOR", "203.0.113.99"),
            ("HTTP_X_REAL_IP", "203.0.113.98"),
            ("HTTP_AUTHORIZATION", &right),
        ])
        .await;
    assert_eq!(a.unwrap().client_ip, Some("198.51.100.77".parse().unwrap()));
}

#[tokio::test]
async fn digest_failures_are_throttled_like_basic_ones() {
    let f = fixture(Options {
        throttle: true,
        ..Options::default()
    });
    let nonce = f.http.nonces.issue(REALM);
    for nc in ["00000001", "00000002"] {
        let (o, a) = f
            .ask(&[("HTTP_AUTHORIZATION", &digest(&nonce, "wrong", nc))])
            .await;
        assert_eq!(o, HttpOutcome::Challenge { stale: false });
        assert_eq!(a.unwrap().reason, "password-mismatch");
    }
    let o = f
        .status(&[(
            "HTTP_AUTHORIZATION",
            &digest(&nonce, "wonderland", "00000003"),
        )])
        .await;
    assert_eq!(o, HttpOutcome::Blocked, "the guesser is blocked for Digest");
    // Unusable credentials (a nonce not ours) are not counted.
    let g = fixture(Options {
        throttle: true,
        ..Options::default()
    });
    for nc in ["00000001", "00000002", "00000003"] {
        let (o, a) = g
            .ask(&[("HTTP_AUTHORIZATION", &digest("bm90IG91cnM", "x", nc))])
            .await;
        assert_eq!(o, HttpOutcome::Challenge { stale: false });
        assert_eq!(a.unwrap().reason, "nonce not ours");
    }
    let nonce = g.http.nonces.issue(REALM);
    let o = g
        .status(&[(
            "HTTP_AUTHORIZATION",
            &digest(&nonce, "wonderland", "00000001"),
        )])
        .await;
    assert!(allowed(&o), "{o:?}");
}

#[tokio::test]
async fn one_client_request_gets_one_decision() {
    let f = fixture(Options {
        throttle: true,
        ..Options::default()
    });
    let nonce = f.http.nonces.issue(REALM);
    let header = digest(&nonce, "wonderland", "00000001");
    let first = [
        ("HTTP_AUTHORIZATION", header.as_str()),
        ("AUTH_REQUEST_ID", "aaaa"),
    ];
    let (o, a) = f.ask(&first).await;
    assert!(allowed(&o), "{o:?}");
    assert!(a.is_some());
    // nginx repeats the subrequest after an internal redirect (index file):
    // same header, same request id → the same verdict, no second audit line.
    let (o, a) = f.ask(&first).await;
    assert!(allowed(&o), "the repeat is not a replay: {o:?}");
    assert!(a.is_none(), "one client request, one audit line");
    // The same header in another client request is a replay.
    let (o, a) = f
        .ask(&[
            ("HTTP_AUTHORIZATION", header.as_str()),
            ("AUTH_REQUEST_ID", "bbbb"),
        ])
        .await;
    assert_eq!(o, HttpOutcome::Challenge { stale: true });
    assert_eq!(a.unwrap().reason, "nc replayed");
    // ... and without a request id too.
    let (o, _) = f.ask(&[("HTTP_AUTHORIZATION", header.as_str())]).await;
    assert_eq!(o, HttpOutcome::Challenge { stale: true });

    // A wrong Basic password repeated within one client request counts once
    // (block_ip_user = 2): after it, the right password still gets in ...
    let wrong = basic("bob", "wrong");
    let w1 = [
        ("HTTP_AUTHORIZATION", wrong.as_str()),
        ("AUTH_REQUEST_ID", "cccc"),
    ];
    assert_eq!(f.status(&w1).await, HttpOutcome::Challenge { stale: false });
    let (o, a) = f.ask(&w1).await;
    assert_eq!(o, HttpOutcome::Challenge { stale: false });
    assert!(a.is_none());
    let right = basic("bob", "bob-pw");
    let o = f
        .status(&[("HTTP_AUTHORIZATION", &right), ("AUTH_REQUEST_ID", "dddd")])
        .await;
    assert!(
        allowed(&o),
        "a repeat was counted as a second failure: {o:?}"
    );
    // ... whereas two client requests with it are two failures.
    for (id, guess) in [("eeee", "guess1"), ("ffff", "guess2")] {
        let wrong = basic("bob", guess);
        f.status(&[("HTTP_AUTHORIZATION", &wrong), ("AUTH_REQUEST_ID", id)])
            .await;
    }
    let o = f
        .status(&[("HTTP_AUTHORIZATION", &right), ("AUTH_REQUEST_ID", "gggg")])
        .await;
    assert_eq!(o, HttpOutcome::Blocked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_from_a_known_network_gets_a_slot_while_a_flood_fills_the_queue() {
    let f = fixture(Options {
        throttle: true,
        cache: false,
        verifier: one_slot(0),
        ..Options::default()
    });
    let right = basic("bob", "bob-pw");
    let home = "198.51.100.60";
    // bob logged in from home once (a real bcrypt check: the cache is off).
    let o = f
        .status(&[("HTTP_AUTHORIZATION", &right), ("REMOTE_ADDR", home)])
        .await;
    assert!(allowed(&o), "{o:?}");
    // A flood of wrong passwords from unknown addresses holds every slot
    // of the first lane.
    let v = f.auth.verifier().clone();
    let open = hold_one_slot(&v).await;
    let (o, a) = f
        .ask(&[
            ("HTTP_AUTHORIZATION", &basic("bob", "wrong")),
            ("REMOTE_ADDR", "203.0.113.61"),
        ])
        .await;
    assert_eq!(
        o,
        HttpOutcome::Unavailable,
        "{:?}",
        a.map(|a| a.to_string())
    );
    // bob from elsewhere: temporary failure (never "wrong password") ...
    let o = f
        .status(&[
            ("HTTP_AUTHORIZATION", &right),
            ("REMOTE_ADDR", "198.51.100.61"),
        ])
        .await;
    assert_eq!(o, HttpOutcome::Unavailable);
    // ... bob from home: verified in the known networks' lane.
    let (o, a) = f
        .ask(&[("HTTP_AUTHORIZATION", &right), ("REMOTE_ADDR", home)])
        .await;
    assert!(allowed(&o), "{o:?}");
    assert_eq!(
        a.unwrap().cache.map(CacheUse::as_str),
        None,
        "the cache is off: a real bcrypt check"
    );
    // A wrong password from home is verified too (and refused), not shed.
    let o = f
        .status(&[
            ("HTTP_AUTHORIZATION", &basic("bob", "typo")),
            ("REMOTE_ADDR", home),
        ])
        .await;
    assert_eq!(o, HttpOutcome::Challenge { stale: false });
    open.send(()).unwrap();
}
