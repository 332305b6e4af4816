//! The `saslauthd:` passdb (issue 4) against a real Cyrus saslauthd
//! (`-a rimap` in front of a real Dovecot IMAP listener, see
//! `tests/common/sasl.rs` for why), plus the start-up checks every
//! plaintext-only passdb gets: challenge mechanisms are refused, in-process
//! and by `nginx-auth-fcgi check-config`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::policy::base_policy;
use crate::common::sasl::{Dovecot, Saslauthd, Silent, ALICE, SPECIAL};
use nginx_auth_fcgi::authenticator::{Authenticator, Policy};
use nginx_auth_fcgi::fastcgi::Params;
use nginx_auth_fcgi::mech::Mechanism;
use nginx_auth_fcgi::passdb::{AnyPassdb, Passdb, PassdbError, Rejection, Verdict};
use nginx_auth_fcgi::secret::Secret;
use nginx_auth_fcgi::service::Service;
use nginx_auth_fcgi::upstream::Upstreams;

fn passdb(socket: &std::path::Path, options: &str) -> AnyPassdb {
    AnyPassdb::open(&format!("saslauthd:{}{options}", socket.display()), None).expect("open")
}

async fn verify(db: &AnyPassdb, user: &str, password: &str) -> Result<Verdict, PassdbError> {
    db.verify_plain(user, &[Secret::from(password)]).await
}

fn policy(mechanisms: &[Mechanism]) -> Policy {
    let mut upstreams = Upstreams::default();
    upstreams.add("imap=127.0.0.1:1143").unwrap();
    base_policy(mechanisms.iter().copied(), upstreams)
}

/// An nginx mail `auth_http` request for PLAIN, through the whole service.
async fn ask_plain(service: &Service, user: &str, pass: &str) -> String {
    let escape = |v: &str| {
        let mut out = Vec::new();
        for &b in v.as_bytes() {
            if b <= 0x20 || b == b'%' {
                out.extend_from_slice(format!("%{b:02X}").as_bytes());
            } else {
                out.push(b);
            }
        }
        out
    };
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = [
        ("REQUEST_METHOD", b"GET".to_vec()),
        ("REMOTE_ADDR", b"127.0.0.1".to_vec()),
        ("HTTP_AUTH_METHOD", b"plain".to_vec()),
        ("HTTP_AUTH_USER", escape(user)),
        ("HTTP_AUTH_PASS", escape(pass)),
        ("HTTP_AUTH_PROTOCOL", b"imap".to_vec()),
        ("HTTP_AUTH_LOGIN_ATTEMPT", b"1".to_vec()),
        ("HTTP_CLIENT_IP", b"198.51.100.9".to_vec()),
    ]
    .into_iter()
    .map(|(k, v)| (k.as_bytes().to_vec(), v))
    .collect();
    let out = service.respond(&Params::from_pairs(pairs)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saslauthd_checks_passwords_and_fails_temporarily_when_down() {
    let dovecot = Dovecot::start();
    let mut saslauthd = Saslauthd::start(dovecot.imap_port);
    let db = passdb(&saslauthd.socket(), "?service=imap&timeout=3");
    assert_eq!(db.name(), "saslauthd");
    let caps = db.capabilities();
    assert!(caps.verify_plain && !caps.lookup_credentials);
    let logs = || {
        format!(
            "saslauthd:\n{}\ndovecot:\n{}",
            saslauthd.log(),
            dovecot.log()
        )
    };

    match verify(&db, ALICE.name, ALICE.password).await {
        Ok(Verdict::Accepted(p)) => assert_eq!(p.user, ALICE.name),
        other => panic!("{other:?}\n{}", logs()),
    }
    assert!(
        matches!(
            verify(&db, SPECIAL.name, SPECIAL.password).await,
            Ok(Verdict::Accepted(_))
        ),
        "space/%/UTF-8 password\n{}",
        logs()
    );
    // saslauthd only says NO: unknown users look like wrong passwords.
    for (user, pw) in [(ALICE.name, "wrong"), ("nobody", "x")] {
        assert_eq!(
            verify(&db, user, pw)
                .await
                .map_err(|e| format!("{e}\n{}", logs())),
            Ok(Verdict::Rejected(Rejection::PasswordMismatch)),
            "{user}"
        );
    }

    // saslauthd's longest field is 256 bytes; a longer password cannot be
    // right and is not sent.
    for len in [256, 257, 5000] {
        assert_eq!(
            verify(&db, ALICE.name, &"x".repeat(len))
                .await
                .map_err(|e| format!("{e}\n{}", logs())),
            Ok(Verdict::Rejected(Rejection::PasswordMismatch)),
            "{len}"
        );
    }

    // Through the whole service, with only this passdb: PLAIN works.
    let auth = Authenticator::new(policy(&[Mechanism::Plain]), vec![db]).expect("plain is served");
    let service = Service::new(auth, vec![]);
    let reply = ask_plain(&service, SPECIAL.name, SPECIAL.password).await;
    assert!(reply.contains("Auth-Status: OK"), "{reply}\n{}", logs());
    let reply = ask_plain(&service, ALICE.name, "wrong").await;
    assert!(
        reply.contains("Auth-Status: Invalid login or password"),
        "{reply}"
    );

    // saslauthd stopped: a temporary failure, at once.
    saslauthd.stop();
    let db = passdb(&saslauthd.socket(), "");
    let start = Instant::now();
    let r = verify(&db, ALICE.name, ALICE.password).await;
    assert!(matches!(r, Err(PassdbError::Unavailable(_))), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    let reply = ask_plain(&service, ALICE.name, ALICE.password).await;
    assert!(!reply.contains("Auth-Status: OK"), "{reply}");
    assert!(
        !reply.contains("Invalid login"),
        "temporary, not a rejection: {reply}"
    );
}

#[tokio::test]
async fn a_silent_saslauthd_socket_times_out() {
    Silent::assert_times_out("saslauthd").await;
}

#[test]
fn plaintext_only_passdbs_refuse_challenge_mechanisms() {
    for uri in [
        "saslauthd:/nonexistent/mux",
        "dovecot:/nonexistent/auth-client",
    ] {
        for mech in [Mechanism::CramMd5, Mechanism::Apop] {
            let db = AnyPassdb::open(uri, None).expect("open does not connect");
            let err = Authenticator::new(policy(&[Mechanism::Plain, mech]), vec![db])
                .expect_err("challenge mechanism without stored credentials");
            assert!(
                err.iter().any(|e| e.contains(mech.as_str())),
                "{uri} {mech:?}: {err:?}"
            );
        }
        let db = AnyPassdb::open(uri, None).unwrap();
        assert!(Authenticator::new(policy(&[Mechanism::Plain]), vec![db]).is_ok());
    }

    let bin = env!("CARGO_BIN_EXE_nginx-auth-fcgi");
    let out = Command::new(bin)
        .args([
            "check-config",
            "--passdb",
            "saslauthd:/run/saslauthd/mux",
            "--mechanism",
            "cram-md5",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cram-md5"), "{err}");
    let out = Command::new(bin)
        .args([
            "check-config",
            "--passdb",
            "saslauthd:/run/saslauthd/mux?service=smtp",
            "--mechanism",
            "plain",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
