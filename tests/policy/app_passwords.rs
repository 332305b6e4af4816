//! Issue 16, app passwords, in-process on a real SQLite database: scope per
//! protocol and realm, expiry, allowed networks (the effective client
//! address), `require_app_password` global and per user, refusals that look
//! like a wrong password to the client, the verification cache never
//! bypassing a scope, and "last used" written off the request path.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use crate::common::policy::{base_policy, local_upstreams};
use nginx_auth_fcgi::audit::{AuditRecord, Outcome};
use nginx_auth_fcgi::auth_http::MailAuthRequest;
use nginx_auth_fcgi::authenticator::{Authenticator, Decision, Policy};
use nginx_auth_fcgi::cache::{Cache, CachePolicy};
use nginx_auth_fcgi::fastcgi::Params;
use nginx_auth_fcgi::http_auth::{HttpAuth, HttpAuthRequest, HttpOutcome};
use nginx_auth_fcgi::mech::Mechanism;
use nginx_auth_fcgi::passdb::app_password::{self, sqlite as apps, Scope, Services};
use nginx_auth_fcgi::passdb::sqlite::Admin;
use nginx_auth_fcgi::passdb::AnyPassdb;
use nginx_auth_fcgi::scheme::{self, Scheme};

const MAIN: &str = "main-password";

struct Fixture {
    _dir: tempfile::TempDir,
    admin: Admin,
    auth: Authenticator,
    http: HttpAuth,
}

/// alice@example.org with main password [`MAIN`] (SHA512-CRYPT), her
/// app passwords added by `setup`, behind an authenticator built by `build`.
fn fixture(
    cache: bool,
    build: impl FnOnce(Authenticator) -> Authenticator,
    setup: impl FnOnce(&Admin),
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    let admin = Admin::open(&path).unwrap();
    let main = scheme::hash(Scheme::Sha512Crypt, MAIN.as_bytes()).unwrap();
    admin.add("alice@example.org", &main).unwrap();
    setup(&admin);
    let db = AnyPassdb::open(&format!("sqlite:{}", path.display()), None).unwrap();
    let upstreams = local_upstreams();
    let policy = Policy {
        cache: cache.then(|| Arc::new(Cache::new(CachePolicy::default()))),
        ..base_policy([Mechanism::Plain], upstreams)
    };
    Fixture {
        _dir: dir,
        admin,
        auth: build(Authenticator::new(policy, vec![db]).unwrap()),
        http: HttpAuth::new(),
    }
}

/// Adds app password `name` = `secret` with `scopes`, expiring at unix time
/// `expires`, from `networks`.
fn add(admin: &Admin, name: &str, secret: &str, scopes: &str, expires: Option<i64>, nets: &[&str]) {
    let stored = scheme::hash(Scheme::Sha256Crypt, secret.as_bytes()).unwrap();
    let networks: Vec<_> = nets.iter().map(|n| n.parse().unwrap()).collect();
    let scopes = Scope::parse_list(scopes).unwrap();
    let new = apps::NewAppPassword {
        name,
        stored: &stored,
        scopes: &scopes,
        networks: &networks,
        expires,
    };
    apps::add(admin.connection(), "alice@example.org", &new).unwrap();
}

impl Fixture {
    async fn mail(&self, protocol: &str, pass: &str, ip: &str) -> Decision {
        let pairs = [
            ("HTTP_AUTH_METHOD", "plain"),
            ("HTTP_AUTH_USER", "alice@example.org"),
            ("HTTP_AUTH_PASS", pass),
            ("HTTP_AUTH_PROTOCOL", protocol),
            ("HTTP_AUTH_LOGIN_ATTEMPT", "1"),
            ("HTTP_CLIENT_IP", ip),
        ]
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        let req = MailAuthRequest::from_params(&Params::from_pairs(pairs)).unwrap();
        self.auth.authenticate(&req).await
    }

    async fn basic(&self, realm: &str, pass: &str) -> (HttpOutcome, AuditRecord) {
        let b64 =
            base64::engine::general_purpose::STANDARD.encode(format!("alice@example.org:{pass}"));
        let auth = format!("Basic {b64}");
        let params = crate::params_with(
            &[
                ("REQUEST_METHOD", "GET"),
                ("REQUEST_URI", "/private/"),
                ("REMOTE_ADDR", "198.51.100.2"),
                ("AUTH_REALM", realm),
                ("AUTH_SCHEMES", "basic"),
            ],
            &[("HTTP_AUTHORIZATION", &auth)],
        );
        let req = HttpAuthRequest::from_params(&params).unwrap();
        let d = self.auth.authenticate_http(&req, &self.http).await;
        (d.outcome, d.audit.unwrap())
    }
}

/// Refused with `reason`, and the client gets exactly what a wrong password gets.
#[track_caller]
fn refused_like_a_wrong_password(d: &Decision, wrong: &Decision, reason: &str) {
    assert_eq!(d.audit.outcome, Outcome::Fail, "{}", d.audit);
    assert_eq!(d.audit.reason, reason, "{}", d.audit);
    assert_eq!(
        d.response.render().unwrap(),
        wrong.response.render().unwrap(),
        "same bytes as a wrong password"
    );
}

#[tokio::test]
async fn an_smtp_app_password_opens_smtp_only() {
    let f = fixture(
        false,
        |a| a,
        |a| add(a, "phone", "phone-secret", "smtp", None, &[]),
    );
    let ok = f.mail("smtp", "phone-secret", "198.51.100.1").await;
    assert_eq!(ok.audit.outcome, Outcome::Ok, "{}", ok.audit);
    assert!(
        ok.audit.to_string().contains("app_password=phone"),
        "{}",
        ok.audit
    );
    assert!(!ok.audit.to_string().contains("phone-secret"));
    let wrong = f.mail("imap", "wrong", "198.51.100.1").await;
    let imap = f.mail("imap", "phone-secret", "198.51.100.1").await;
    refused_like_a_wrong_password(&imap, &wrong, "app-password-scope");
    assert!(imap.audit.to_string().contains("app_password=phone"));
    // HTTP is another scope too; the main password still opens everything.
    assert!(matches!(
        f.basic("Intranet", "phone-secret").await.0,
        HttpOutcome::Challenge { .. }
    ));
    assert_eq!(
        f.mail("imap", MAIN, "198.51.100.1").await.audit.outcome,
        Outcome::Ok
    );
}

#[tokio::test]
async fn an_http_realm_scope_opens_that_realm_only() {
    let f = fixture(
        false,
        |a| a,
        |a| add(a, "wiki", "wiki-secret", "http:Wiki", None, &[]),
    );
    assert!(matches!(
        f.basic("Wiki", "wiki-secret").await.0,
        HttpOutcome::Allow { .. }
    ));
    let (o, audit) = f.basic("Intranet", "wiki-secret").await;
    assert!(matches!(o, HttpOutcome::Challenge { stale: false }));
    assert_eq!(audit.reason, "app-password-scope");
}

#[tokio::test]
async fn an_expired_app_password_is_refused() {
    let past = app_password::now() - 10;
    let f = fixture(
        false,
        |a| a,
        |a| {
            add(a, "old", "old-secret", "imap", Some(past), &[]);
            add(a, "new", "new-secret", "imap", Some(past + 3600), &[]);
        },
    );
    let wrong = f.mail("imap", "wrong", "198.51.100.1").await;
    let old = f.mail("imap", "old-secret", "198.51.100.1").await;
    refused_like_a_wrong_password(&old, &wrong, "app-password-expired");
    assert_eq!(
        f.mail("imap", "new-secret", "198.51.100.1")
            .await
            .audit
            .outcome,
        Outcome::Ok
    );
}

/// In-process, the client address is nginx's `Client-IP` (the effective
/// address the policy layer uses; behind a trusted proxy it is the PROXY
/// protocol's): the e2e stack's client is always 127.0.0.1.
#[tokio::test]
async fn a_network_limited_app_password_is_refused_from_outside_its_network() {
    let f = fixture(
        false,
        |a| a,
        |a| {
            add(
                a,
                "office",
                "office-secret",
                "imap",
                None,
                &["192.0.2.0/24", "2001:db8::/32"],
            )
        },
    );
    assert_eq!(
        f.mail("imap", "office-secret", "192.0.2.77")
            .await
            .audit
            .outcome,
        Outcome::Ok
    );
    assert_eq!(
        f.mail("imap", "office-secret", "2001:db8::5")
            .await
            .audit
            .outcome,
        Outcome::Ok
    );
    let wrong = f.mail("imap", "wrong", "198.51.100.1").await;
    let outside = f.mail("imap", "office-secret", "198.51.100.1").await;
    refused_like_a_wrong_password(&outside, &wrong, "app-password-network");
}

#[tokio::test]
async fn require_app_password_imap_refuses_the_main_password_for_imap_but_not_http_basic() {
    let imap = Services::parse(&["imap"]).unwrap();
    let f = fixture(
        false,
        |a| a.with_require_app_password(imap),
        |a| add(a, "phone", "phone-secret", "imap", None, &[]),
    );
    let wrong = f.mail("imap", "wrong", "198.51.100.1").await;
    let main = f.mail("imap", MAIN, "198.51.100.1").await;
    refused_like_a_wrong_password(&main, &wrong, "app-password-required");
    assert_eq!(
        f.mail("imap", "phone-secret", "198.51.100.1")
            .await
            .audit
            .outcome,
        Outcome::Ok
    );
    assert_eq!(
        f.mail("smtp", MAIN, "198.51.100.1").await.audit.outcome,
        Outcome::Ok
    );
    let (o, audit) = f.basic("Intranet", MAIN).await;
    assert!(matches!(o, HttpOutcome::Allow { .. }), "{audit}");
}

#[tokio::test]
async fn require_app_password_per_user_from_the_database() {
    let f = fixture(
        false,
        |a| a,
        |a| {
            apps::set_required(
                a.connection(),
                "alice@example.org",
                Services::parse(&["smtp,http"]).unwrap(),
            )
            .unwrap()
        },
    );
    assert_eq!(
        f.mail("smtp", MAIN, "198.51.100.1").await.audit.reason,
        "app-password-required"
    );
    assert_eq!(
        f.basic("Intranet", MAIN).await.1.reason,
        "app-password-required"
    );
    assert_eq!(
        f.mail("imap", MAIN, "198.51.100.1").await.audit.outcome,
        Outcome::Ok
    );
    apps::set_required(
        f.admin.connection(),
        "alice@example.org",
        Services::default(),
    )
    .unwrap();
    assert_eq!(
        f.mail("smtp", MAIN, "198.51.100.1").await.audit.outcome,
        Outcome::Ok
    );
}

/// The cache only remembers "this password matches this hash"; scope,
/// expiry and networks are checked on every login, hit or miss.
#[tokio::test]
async fn a_cached_verification_never_bypasses_the_scope() {
    let f = fixture(
        true,
        |a| a,
        |a| add(a, "phone", "phone-secret", "smtp", None, &["192.0.2.0/24"]),
    );
    let first = f.mail("smtp", "phone-secret", "192.0.2.1").await;
    assert_eq!(first.audit.outcome, Outcome::Ok);
    assert_eq!(first.audit.cache.map(|c| c.as_str()), Some("miss"));
    let again = f.mail("smtp", "phone-secret", "192.0.2.1").await;
    assert_eq!(
        again.audit.cache.map(|c| c.as_str()),
        Some("hit"),
        "{}",
        again.audit
    );
    let imap = f.mail("imap", "phone-secret", "192.0.2.1").await;
    assert_eq!(
        imap.audit.cache.map(|c| c.as_str()),
        Some("hit"),
        "{}",
        imap.audit
    );
    assert_eq!(imap.audit.reason, "app-password-scope");
    let outside = f.mail("smtp", "phone-secret", "198.51.100.1").await;
    assert_eq!(outside.audit.cache.map(|c| c.as_str()), Some("hit"));
    assert_eq!(outside.audit.reason, "app-password-network");
}

#[tokio::test]
async fn last_use_is_recorded_in_the_background() {
    let f = fixture(
        false,
        |a| a,
        |a| add(a, "phone", "phone-secret", "imap", None, &[]),
    );
    let before = apps::list(f.admin.connection(), "alice@example.org").unwrap();
    assert_eq!(before[0].last_used, None);
    assert_eq!(
        f.mail("imap", "phone-secret", "203.0.113.8")
            .await
            .audit
            .outcome,
        Outcome::Ok
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = apps::list(f.admin.connection(), "alice@example.org").unwrap();
        if let Some((_, ip)) = &rows[0].last_used {
            assert_eq!(ip, "203.0.113.8");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last use never recorded"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
