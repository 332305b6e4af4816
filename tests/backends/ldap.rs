//! LDAP passdb (issue 4) against a real OpenLDAP `slapd` (Debian package
//! `slapd`; `slapadd` loads `tests/ldap/users.ldif`), started per test in a
//! temp dir on a free loopback port and stopped on drop.
//!
//! Both modes (search + compare, auth bind): right and wrong passwords,
//! unknown users, per-user upstream, filter-injection user names, a server
//! killed and restarted under a live passdb, and the configuration check
//! that refuses CRAM-MD5 when the only passdb binds.

use std::net::{IpAddr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::ldap::{Slapd, PEOPLE, READER};
use crate::common::policy::base_policy;
use nginx_auth_fcgi::audit::Outcome;
use nginx_auth_fcgi::auth_http::MailAuthRequest;
use nginx_auth_fcgi::authenticator::{Authenticator, Policy};
use nginx_auth_fcgi::fastcgi::Params;
use nginx_auth_fcgi::mech::Mechanism;
use nginx_auth_fcgi::passdb::{AnyPassdb, Lookup, Passdb, PassdbError, Rejection, Verdict};
use nginx_auth_fcgi::scheme::Scheme;
use nginx_auth_fcgi::secret::Secret;
use nginx_auth_fcgi::upstream::Upstreams;

fn open(uri: &str) -> AnyPassdb {
    AnyPassdb::open(uri, None).unwrap_or_else(|e| panic!("{e}"))
}

async fn verify(db: &AnyPassdb, user: &str, pw: &str) -> Result<Verdict, PassdbError> {
    db.verify_plain(user, &[Secret::from(pw)]).await
}

#[track_caller]
fn accepted(r: Result<Verdict, PassdbError>) -> nginx_auth_fcgi::passdb::Principal {
    match r {
        Ok(Verdict::Accepted(p)) => p,
        other => panic!("expected Accepted, got {other:?}"),
    }
}

#[track_caller]
fn rejected(r: Result<Verdict, PassdbError>, why: Rejection) {
    match r {
        Ok(Verdict::Rejected(r)) => assert_eq!(r, why),
        other => panic!("expected Rejected({why:?}), got {other:?}"),
    }
}

const INJECTIONS: &[&str] = &[
    "*",
    ")(uid=*",
    "admin)(|(uid=*",
    "alice)(uid=*",
    "*)(objectClass=*",
    "\\",
    "\0",
    "alice\0",
    "al*",
    "(uid=alice)",
];

#[tokio::test]
async fn search_mode_compares_stored_passwords() {
    let slapd = Slapd::start();
    let db = open(&slapd.uri(&format!(
        "{READER}&host_attr=mailHost&port_attr=employeeNumber"
    )));
    assert!(db.capabilities().verify_plain && db.capabilities().lookup_credentials);
    // {SSHA}, {CRYPT}$6$ and {PLAIN} from the directory.
    let alice = accepted(verify(&db, "alice", "alice-pw").await);
    assert_eq!(alice.user, "alice");
    assert_eq!(alice.upstream_host, None);
    let bob = accepted(verify(&db, "bob", "bob-pw").await);
    assert_eq!(
        bob.upstream_host,
        Some("192.0.2.25".parse::<IpAddr>().unwrap())
    );
    assert_eq!(bob.upstream_port, Some(1143));
    accepted(verify(&db, "carol", "carol-pw").await);

    rejected(
        verify(&db, "alice", "bob-pw").await,
        Rejection::PasswordMismatch,
    );
    rejected(verify(&db, "carol", "").await, Rejection::PasswordMismatch);
    rejected(verify(&db, "nobody", "x").await, Rejection::UnknownUser);
    // A `person` that is not an inetOrgPerson is outside the filter.
    rejected(
        verify(&db, "admin", "reader-pw").await,
        Rejection::UnknownUser,
    );

    match db.lookup_credentials("carol").await.unwrap() {
        Lookup::Found {
            principal, secret, ..
        } => {
            assert_eq!(principal.user, "carol");
            assert_eq!(secret.scheme(), Scheme::Plain);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        db.lookup_credentials("nobody").await.unwrap(),
        Lookup::Rejected(Rejection::UnknownUser)
    ));
    for evil in INJECTIONS {
        for pw in ["alice-pw", "carol-pw", "*"] {
            rejected(verify(&db, evil, pw).await, Rejection::UnknownUser);
        }
    }

    // Without the service DN the password attribute is not readable: a
    // temporary failure, never a login.
    let anonymous = open(&slapd.uri(""));
    match verify(&anonymous, "alice", "alice-pw").await {
        Err(PassdbError::BadStoredPassword(msg)) => {
            assert!(msg.contains("userPassword"), "{msg}")
        }
        other => panic!("expected BadStoredPassword, got {other:?}"),
    }
    // A wrong service password is a temporary failure too.
    let wrong =
        open(&slapd.uri("binddn=cn=reader,ou=services,dc=example,dc=org&bindpw=nope-secret"));
    let err = verify(&wrong, "alice", "alice-pw").await.unwrap_err();
    assert!(matches!(err, PassdbError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("nope-secret"), "{err}");
}

#[tokio::test]
async fn bind_mode_lets_the_server_check() {
    let slapd = Slapd::start();
    let db = open(
        &slapd.uri("mode=bind&filter=(&(objectClass=inetOrgPerson)(uid=%n))&host_attr=mailHost"),
    );
    let caps = db.capabilities();
    assert!(caps.verify_plain && !caps.lookup_credentials);

    accepted(verify(&db, "alice", "alice-pw").await);
    accepted(verify(&db, "alice@example.org", "alice-pw").await);
    let bob = accepted(verify(&db, "bob", "bob-pw").await);
    assert_eq!(
        bob.upstream_host,
        Some("192.0.2.25".parse::<IpAddr>().unwrap())
    );
    assert_eq!(bob.upstream_port, None);
    // Several candidates (PLAIN's two forms): any right one wins.
    accepted(
        db.verify_plain("alice", &[Secret::from("wrong"), Secret::from("alice-pw")])
            .await,
    );

    rejected(
        verify(&db, "alice", "bob-pw").await,
        Rejection::PasswordMismatch,
    );
    // An empty password would be an unauthenticated bind, which succeeds.
    rejected(verify(&db, "alice", "").await, Rejection::PasswordMismatch);
    rejected(verify(&db, "nobody", "x").await, Rejection::UnknownUser);
    // The connection was bound as alice; the next search rebinds first.
    accepted(verify(&db, "bob", "bob-pw").await);
    for evil in INJECTIONS {
        rejected(verify(&db, evil, "alice-pw").await, Rejection::UnknownUser);
    }
    assert!(db.lookup_credentials("alice").await.is_err());
}

#[tokio::test]
async fn a_restarted_server_is_used_again() {
    let mut slapd = Slapd::start();
    for mode in ["search", "bind"] {
        let db = open(&slapd.uri(&format!(
            "mode={mode}&{READER}&connect_timeout=1&timeout=1&pool_size=2"
        )));
        accepted(verify(&db, "alice", "alice-pw").await);

        slapd.kill();
        let started = Instant::now();
        for _ in 0..3 {
            match verify(&db, "alice", "alice-pw").await {
                Err(PassdbError::Unavailable(_) | PassdbError::Timeout) => {}
                other => panic!("{mode}: expected a temporary failure, got {other:?}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{mode}: fails fast"
        );

        slapd.restart();
        accepted(verify(&db, "alice", "alice-pw").await);
        rejected(
            verify(&db, "alice", "nope").await,
            Rejection::PasswordMismatch,
        );

        // A restart between two requests: the pooled connection is dead,
        // the next request must still be answered (not a temporary failure).
        slapd.kill();
        slapd.restart();
        accepted(verify(&db, "bob", "bob-pw").await);
    }
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_timeout() {
    // Accepts TCP but never speaks LDAP.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let db = open(&format!(
        "ldap://127.0.0.1:{port}/{PEOPLE}?connect_timeout=0.5&timeout=0.5"
    ));
    let started = Instant::now();
    let err = verify(&db, "alice", "alice-pw").await.unwrap_err();
    assert!(
        matches!(err, PassdbError::Timeout | PassdbError::Unavailable(_)),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    drop(silent);
}

#[tokio::test]
async fn tls_and_starttls_check_the_certificate() {
    let slapd = Slapd::start_with(true);
    let (tls_port, cert) = slapd.tls.clone().unwrap();
    let ca = format!("tls_ca={}", cert.display());
    let ldaps = |opts: &str| format!("ldaps://127.0.0.1:{tls_port}/{PEOPLE}?{opts}");

    for mode in ["search", "bind"] {
        let db = open(&ldaps(&format!("mode={mode}&{READER}&{ca}")));
        accepted(verify(&db, "alice", "alice-pw").await);
        rejected(
            verify(&db, "alice", "bob-pw").await,
            Rejection::PasswordMismatch,
        );
        let db = open(&slapd.uri(&format!("mode={mode}&{READER}&starttls=true&{ca}")));
        accepted(verify(&db, "bob", "bob-pw").await);
    }
    // Not signed by a CA we trust: a temporary failure, never a login.
    let untrusted = open(&ldaps(&format!("{READER}&timeout=2")));
    match verify(&untrusted, "alice", "alice-pw").await {
        Err(PassdbError::Unavailable(m)) => assert!(m.contains("certificate"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(AnyPassdb::open(&ldaps("tls_ca=/nonexistent.pem"), None).is_err());
}

fn policy(mechanisms: &[Mechanism]) -> Policy {
    let mut upstreams = Upstreams::default();
    upstreams.add("imap=127.0.0.1:1143").unwrap();
    base_policy(mechanisms.iter().copied(), upstreams)
}

fn request(method: &str, user: &str, pass: &str, salt: Option<&str>) -> MailAuthRequest {
    let mut pairs = vec![
        ("HTTP_AUTH_METHOD", method),
        ("HTTP_AUTH_USER", user),
        ("HTTP_AUTH_PASS", pass),
        ("HTTP_AUTH_PROTOCOL", "imap"),
        ("HTTP_AUTH_LOGIN_ATTEMPT", "1"),
        ("HTTP_CLIENT_IP", "192.0.2.1"),
    ];
    if let Some(s) = salt {
        pairs.push(("HTTP_AUTH_SALT", s));
    }
    let pairs = pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    MailAuthRequest::from_params(&Params::from_pairs(pairs)).unwrap()
}

#[tokio::test]
async fn cram_md5_needs_a_passdb_that_can_look_up() {
    let slapd = Slapd::start();
    let bind = || open(&slapd.uri("mode=bind"));

    // Refused at start-up, naming the mechanism.
    let Err(problems) = Authenticator::new(
        policy(&[Mechanism::Plain, Mechanism::CramMd5]),
        vec![bind()],
    ) else {
        panic!("cram-md5 over an auth-bind passdb must be refused");
    };
    assert!(
        problems.iter().any(|p| p.contains("cram-md5")),
        "{problems:?}"
    );
    // Search mode can serve it.
    Authenticator::new(
        policy(&[Mechanism::Plain, Mechanism::CramMd5]),
        vec![open(&slapd.uri(READER))],
    )
    .unwrap();

    // PLAIN only: logins work, a CRAM-MD5 attempt is refused cleanly.
    let auth = Authenticator::new(policy(&[Mechanism::Plain]), vec![bind()]).unwrap();
    let ok = auth
        .authenticate(&request("plain", "bob", "bob-pw", None))
        .await;
    assert_eq!(ok.audit.outcome, Outcome::Ok, "{}", ok.audit);
    let cram = auth
        .authenticate(&request(
            "cram-md5",
            "alice",
            "0123456789abcdef0123456789abcdef",
            Some("<1896.697170952@example.org>"),
        ))
        .await;
    assert_ne!(cram.audit.outcome, Outcome::Ok, "{}", cram.audit);
    assert_ne!(cram.audit.outcome, Outcome::TempFail, "{}", cram.audit);
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nginx-auth-fcgi"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn check_config_explains_cram_md5_over_auth_bind() {
    // No server needed: the passdb connects on first use.
    let base =
        "ldap://127.0.0.1:9/dc=example,dc=org?binddn=cn=r,dc=example,dc=org&bindpw=hunter2secret";
    let bind = format!("{base}&mode=bind");
    let check_cram_md5 = |passdb: &str| {
        cli(&[
            "check-config",
            "--passdb",
            passdb,
            "--mechanism",
            "plain",
            "--mechanism",
            "cram-md5",
            "--upstream",
            "imap=127.0.0.1:143",
        ])
    };
    let out = check_cram_md5(&bind);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cram-md5"), "{stderr}");
    assert!(!stderr.contains("hunter2secret"), "{stderr}");

    let out = check_cram_md5(base);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ldap://127.0.0.1:9/"), "{stdout}");
    assert!(!stdout.contains("hunter2secret"), "{stdout}");

    let out = cli(&["check-config", "--passdb", &format!("{base}&mode=nope")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("mode"), "{stderr}");
    assert!(!stderr.contains("hunter2secret"), "{stderr}");
}
