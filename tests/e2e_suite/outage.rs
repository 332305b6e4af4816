//! A backend outage end to end: IMAP clients (Python imaplib) → nginx mail
//! proxy (shipped config) → the daemon with a PostgreSQL passdb and the
//! credential lookup cache (`--lookup-cache-ttl 1`, so the records are past
//! their TTL when the server goes away and the daemon really asks it) →
//! Dovecot. PostgreSQL is killed: users who logged in before still log in,
//! verified against the stale cached record (`cache=stale` in the audit,
//! counted in the metrics); a wrong password is refused as ever; a user
//! never seen gets nginx's "Temporary server problem". Restarted, lookups
//! are fresh again: a password changed in the table takes effect once the
//! TTL has passed, and `cache flush` answers over the socket.

use std::time::{Duration, Instant};

use crate::common::e2e::*;
use crate::common::sql::{Kind, Server};
use crate::sql::{database, load_users, run_cli};
use nginx_auth_fcgi::authenticator::TEMPORARY;

/// The test's lookup cache TTL.
const TTL: Duration = Duration::from_secs(1);

/// Sleeps until `TTL` (and a margin) has passed since `since`: time only
/// moves forward, so afterwards the cached records are past their TTL.
fn past_the_ttl(since: Instant) {
    let until = TTL + Duration::from_millis(200);
    std::thread::sleep(until.saturating_sub(since.elapsed()));
}

#[track_caller]
fn imap_login(stack: &Stack, user: &str, password: &str) -> ClientResult {
    stack.client("imap", "login", user, &[password], &[])
}

#[test]
fn postgres_outage_spares_users_who_logged_in_within_the_stale_ttl() {
    let mut db = Server::start(Kind::Postgres);
    load_users(&db);
    let passdb = db.uri(
        database(Kind::Postgres),
        "connect_timeout=1&query_timeout=2",
    );
    let ttl = TTL.as_secs().to_string();
    let stack = Stack::start_with_extras(
        Launch::Direct,
        Extras::passdb(passdb, &["--lookup-cache-ttl", &ttl]),
    );
    // ALICE is {PLAIN}; BLF_USER is bcrypt (the verification cache too).
    let seen = [ALICE, BLF_USER];
    for user in seen {
        let r = imap_login(&stack, user.name, user.password);
        assert!(r.ok, "before the outage: {}: {r:#?}", user.name);
    }
    let logged_in = Instant::now();

    db.kill();
    past_the_ttl(logged_in);
    for user in seen {
        let r = imap_login(&stack, user.name, user.password);
        assert!(r.ok, "PostgreSQL down: {} (cached): {r:#?}", user.name);
        let audit = stack.audit_lines(user.name);
        let last = audit.last().expect("an audit line");
        assert!(
            last.contains("result=ok") && last.contains(" cache=stale "),
            "{last}"
        );
    }
    // A wrong password against the stale record: refused as ever.
    let r = imap_login(&stack, ALICE.name, "wrong-pw");
    assert_eq!(
        r.attempts[0].response,
        format!("NO {INVALID_LOGIN}"),
        "{r:#?}"
    );
    // Never seen: the temporary failure nginx shows without a cache.
    let r = imap_login(&stack, SHA512_USER.name, SHA512_USER.password);
    assert!(!r.ok, "{r:#?}");
    assert_eq!(r.attempts[0].response, format!("NO {TEMPORARY}"), "{r:#?}");
    let log = stack.daemon_log();
    assert!(
        log.contains("answered from the lookup cache (stale: fetched"),
        "{log}"
    );

    let listen = format!("unix:{}", stack.socket.display());
    let key = format!("X-Auth-Key={AUTH_KEY}");
    let conn = [
        "--listen",
        listen.as_str(),
        "--require-header",
        key.as_str(),
    ];
    let ask = |command: &[&str]| {
        let args: Vec<String> = command.iter().chain(&conn).map(|a| a.to_string()).collect();
        let (ok, out) = run_cli(&args, "");
        assert!(ok, "{command:?}: {out}");
        out
    };
    let metrics = ask(&["status"]);
    assert!(
        metrics.contains("nginx_auth_fcgi_lookup_cache_stale_total 3\n"),
        "{metrics}"
    );

    // Back: fresh lookups again.
    db.restart();
    let r = imap_login(&stack, SHA512_USER.name, SHA512_USER.password);
    assert!(r.ok, "after the restart: never-seen user: {r:#?}");
    // A password changed in the table: the old one is refused (by the
    // daemon: Dovecot would still take it) once the TTL has passed.
    let changed = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(db.execute(
        None,
        &[format!(
            "UPDATE users SET password = '{{PLAIN}}changed-in-db' WHERE username = '{}'",
            ALICE.name
        )],
    ));
    past_the_ttl(changed);
    let r = imap_login(&stack, ALICE.name, ALICE.password);
    assert_eq!(
        r.attempts[0].response,
        format!("NO {INVALID_LOGIN}"),
        "{r:#?}"
    );
    let last = stack.audit_lines(ALICE.name).pop().unwrap();
    assert!(
        last.contains("reason=password-mismatch") && !last.contains("cache=stale"),
        "{last}"
    );
    // `cache flush` over the socket: what it forgot.
    let out = ask(&["cache", "flush"]);
    assert!(out.contains("lookup cache: 3 entries forgotten"), "{out}");
    let out = ask(&["cache", "flush", "--user", BLF_USER.name]);
    assert!(
        out.contains("lookup cache: 0 record(s) of blfuser forgotten"),
        "{out}"
    );

    let log = stack.daemon_log();
    for user in USERS {
        assert!(!log.contains(user.password), "password in the log:\n{log}");
    }
}
