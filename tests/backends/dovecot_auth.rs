//! The `dovecot:` passdb (issue 4) against a real Dovecot auth service
//! started per test in a temp dir (see `tests/common/sasl.rs`).

use std::time::{Duration, Instant};

use crate::common::sasl::{Dovecot, Silent, ALICE, LOCKED, ROUTED, SPECIAL};
use nginx_auth_fcgi::passdb::{AnyPassdb, Passdb, PassdbError, Rejection, Verdict};
use nginx_auth_fcgi::secret::Secret;

fn passdb(socket: &std::path::Path, options: &str) -> AnyPassdb {
    AnyPassdb::open(&format!("dovecot:{}{options}", socket.display()), None).expect("open")
}

async fn verify(db: &AnyPassdb, user: &str, password: &str) -> Result<Verdict, PassdbError> {
    db.verify_plain(user, &[Secret::from(password)]).await
}

fn accepted(
    v: Result<Verdict, PassdbError>,
    dovecot: &Dovecot,
) -> nginx_auth_fcgi::passdb::Principal {
    match v {
        Ok(Verdict::Accepted(p)) => p,
        other => panic!(
            "expected Accepted, got {other:?}; dovecot log:\n{}",
            dovecot.log()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_auth_checks_passwords_and_fails_temporarily_when_down() {
    let mut dovecot = Dovecot::start();
    let db = passdb(&dovecot.auth_socket(), "?service=imap&timeout=3");
    assert_eq!(db.name(), "dovecot");
    let caps = db.capabilities();
    assert!(caps.verify_plain && !caps.lookup_credentials);

    // Right password.
    let p = accepted(verify(&db, ALICE.name, ALICE.password).await, &dovecot);
    assert_eq!(p.user, ALICE.name);
    assert_eq!(
        (p.upstream_host, p.upstream_port, p.backend_user),
        (None, None, None)
    );

    // Space, % and UTF-8 go through base64 untouched.
    accepted(verify(&db, SPECIAL.name, SPECIAL.password).await, &dovecot);

    // Wrong password and unknown user look the same to a Dovecot auth client.
    for (user, pw) in [
        (ALICE.name, "wrong"),
        (SPECIAL.name, "p w%25é"),
        ("nobody", "x"),
    ] {
        assert_eq!(
            verify(&db, user, pw).await.unwrap(),
            Verdict::Rejected(Rejection::PasswordMismatch),
            "{user}"
        );
    }

    // A password too long for Dovecot's line limit is wrong, not an outage.
    assert_eq!(
        verify(&db, ALICE.name, &"x".repeat(20_000)).await.unwrap(),
        Verdict::Rejected(Rejection::PasswordMismatch)
    );

    // The second of two offered passwords (PLAIN may offer two forms).
    let v = db
        .verify_plain(
            ALICE.name,
            &[Secret::from("nope"), Secret::from(ALICE.password)],
        )
        .await;
    accepted(v, &dovecot);

    // Per-user extra fields route the user.
    let p = accepted(verify(&db, ROUTED.name, ROUTED.password).await, &dovecot);
    assert_eq!(p.upstream_host, Some("192.0.2.44".parse().unwrap()));
    assert_eq!(p.upstream_port, Some(1143));
    assert_eq!(p.backend_user.as_deref(), Some("routed-backend"));

    // nologin: refused even with the right password.
    assert_eq!(
        verify(&db, LOCKED.name, LOCKED.password).await.unwrap(),
        Verdict::Rejected(Rejection::Disabled),
        "dovecot log:\n{}",
        dovecot.log()
    );

    // Concurrent checks: each connection needs its own CPID.
    let db = std::sync::Arc::new(db);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { verify(&db, ALICE.name, ALICE.password).await })
        })
        .collect();
    for t in tasks {
        accepted(t.await.expect("task"), &dovecot);
    }

    // Dovecot stopped: temporary failure, quickly, never a rejection.
    dovecot.stop();
    let start = Instant::now();
    let r = verify(&db, ALICE.name, ALICE.password).await;
    assert!(matches!(r, Err(PassdbError::Unavailable(_))), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_silent_dovecot_socket_times_out() {
    Silent::assert_times_out("dovecot").await;
}
