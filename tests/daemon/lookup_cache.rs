//! The credential lookup cache of a running daemon (SQLite passdb, the
//! cache on by default): a record changed behind the daemon's back still
//! answers until `cache flush [--user U]` over the socket; the `user`
//! commands tell the service themselves, so `disable`, `passwd` and `del`
//! take effect at once; without a service to tell they say so.

use std::process::Output;

use crate::cli::{admin_target, mail_login};
use crate::common::daemon::{run_cli, Daemon};

const OK: &str = "OK";
const INVALID: &str = "Invalid login or password";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// `UPDATE users` straight in the database, as another tool would.
fn behind_our_back(db: &std::path::Path, user: &str, password: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let n = conn
        .execute(
            "UPDATE users SET password = ?1 WHERE username = ?2",
            [password, user],
        )
        .unwrap();
    assert_eq!(n, 1, "{user}");
}

#[test]
fn user_commands_and_cache_flush_reach_the_running_service() {
    let dir = Daemon::open_dir();
    let db = dir.path().join("users.db");
    let db_arg = format!("sqlite:{}", db.display());
    let user = |args: &[&str], conn: &[&str], stdin: &str| {
        let mut all = vec!["user", "--db", &db_arg];
        all.extend_from_slice(conn);
        all.extend_from_slice(args);
        run_cli(all, stdin)
    };
    for (name, pw) in [
        ("alice@example.org", "alice-pw\n"),
        ("bob@example.org", "bob-pw\n"),
        ("carol@example.org", "carol-pw\n"),
    ] {
        ok(user(
            &["add", name, "--scheme", "PLAIN", "--password-stdin"],
            &[],
            pw,
        ));
    }
    // No service on that socket: the change is made all the same, and the
    // command says the service could not be told and what to do.
    let nobody = format!("unix:{}", dir.path().join("nobody.sock").display());
    let out = ok(user(
        &[
            "passwd",
            "carol@example.org",
            "--scheme",
            "PLAIN",
            "--password-stdin",
        ],
        &["--listen", &nobody],
        "carol-pw2\n",
    ));
    let err = text(&out.stderr);
    assert!(
        err.contains("note: could not tell the running service to forget its cached record of carol@example.org")
            && err.contains("nobody.sock")
            && err.contains("cache flush --user carol@example.org"),
        "{err}"
    );

    let daemon = admin_target(dir, &db_arg);
    let listen = format!("unix:{}", daemon.sock().display());
    let conn = [
        "--listen",
        listen.as_str(),
        "--require-header",
        "X-Auth-Key=k",
    ];
    let login = |user: &str, pw: &str| mail_login(daemon.sock(), user, pw, "192.0.2.1");

    // Changed behind our back: the cached record answers (lookup_cache_ttl
    // is 60 s by default) until `cache flush --user` (case ignored).
    assert_eq!(login("alice@example.org", "alice-pw"), OK);
    behind_our_back(&db, "alice@example.org", "{PLAIN}alice-new");
    assert_eq!(login("alice@example.org", "alice-pw"), OK, "cached");
    let mut flush = vec!["cache", "flush", "--user", "ALICE@example.org"];
    flush.extend_from_slice(&conn);
    let out = ok(run_cli(&flush, ""));
    assert_eq!(
        text(&out.stdout),
        "lookup cache: 1 record(s) of ALICE@example.org forgotten\n"
    );
    assert_eq!(login("alice@example.org", "alice-pw"), INVALID);
    assert_eq!(login("alice@example.org", "alice-new"), OK);

    // `user disable` tells the service: refused at once.
    assert_eq!(login("bob@example.org", "bob-pw"), OK);
    let out = ok(user(&["disable", "bob@example.org"], &conn, ""));
    assert!(
        text(&out.stderr)
            .contains("the running service forgot its cached record of bob@example.org"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(login("bob@example.org", "bob-pw"), INVALID);
    ok(user(&["enable", "bob@example.org"], &conn, ""));
    assert_eq!(login("bob@example.org", "bob-pw"), OK);
    // `user passwd` likewise: the old password stops at once.
    ok(user(
        &[
            "passwd",
            "bob@example.org",
            "--scheme",
            "PLAIN",
            "--password-stdin",
        ],
        &conn,
        "bob-pw2\n",
    ));
    assert_eq!(login("bob@example.org", "bob-pw"), INVALID);
    assert_eq!(login("bob@example.org", "bob-pw2"), OK);

    // `cache flush` without --user forgets everyone (and the verification
    // cache).
    assert_eq!(login("carol@example.org", "carol-pw2"), OK);
    behind_our_back(&db, "carol@example.org", "{PLAIN}carol-new");
    assert_eq!(login("carol@example.org", "carol-pw2"), OK, "cached");
    let mut flush = vec!["cache", "flush"];
    flush.extend_from_slice(&conn);
    let out = text(&ok(run_cli(&flush, "")).stdout);
    assert!(
        out.starts_with("lookup cache: 3 entries forgotten\n")
            && out.contains("verification cache: 0 entries forgotten"),
        "{out}"
    );
    assert_eq!(login("carol@example.org", "carol-pw2"), INVALID);
    assert_eq!(login("carol@example.org", "carol-new"), OK);

    // `user del`: gone at once.
    ok(user(&["del", "alice@example.org"], &conn, ""));
    assert_eq!(login("alice@example.org", "alice-new"), INVALID);

    let log = daemon.log();
    assert!(
        log.contains("cache flush: 1 cached record(s) of user ALICE@example.org forgotten"),
        "{log}"
    );
    for secret in ["alice-pw", "alice-new", "bob-pw", "carol-pw", "carol-new"] {
        assert!(!log.contains(secret), "a password in the log:\n{log}");
    }
}

/// Two daemons on one SQLite file (two instances on one host): `user
/// disable` and `cache flush` with both sockets tell both, so the account
/// is refused at once on each.
#[test]
fn user_commands_tell_every_listener_given() {
    let dir = Daemon::open_dir();
    let db = dir.path().join("users.db");
    let db_arg = format!("sqlite:{}", db.display());
    ok(run_cli(
        [
            "user",
            "--db",
            &db_arg,
            "add",
            "dave@example.org",
            "--scheme",
            "PLAIN",
            "--password-stdin",
        ],
        "dave-pw\n",
    ));
    let daemons = [
        admin_target(Daemon::open_dir(), &db_arg),
        admin_target(Daemon::open_dir(), &db_arg),
    ];
    let socks: Vec<String> = daemons
        .iter()
        .map(|d| format!("unix:{}", d.sock().display()))
        .collect();
    let conn = [
        "--listen",
        &socks[0],
        "--listen",
        &socks[1],
        "--require-header",
        "X-Auth-Key=k",
    ];
    let login = |d: &Daemon| mail_login(d.sock(), "dave@example.org", "dave-pw", "192.0.2.1");
    for d in &daemons {
        assert_eq!(login(d), OK, "cached now");
    }
    let mut disable = vec!["user", "--db", &db_arg];
    disable.extend_from_slice(&conn);
    disable.extend(["disable", "dave@example.org"]);
    let err = text(&ok(run_cli(&disable, "")).stderr);
    for sock in &socks {
        assert!(
            err.contains(&format!(
                "the running service forgot its cached record of dave@example.org ({sock})"
            )),
            "{err}"
        );
    }
    for d in &daemons {
        assert_eq!(login(d), INVALID, "refused at once on every instance");
    }
    // `cache flush` answers per listener when there are several.
    let mut flush = vec!["cache", "flush", "--user", "dave@example.org"];
    flush.extend_from_slice(&conn);
    let out = text(&ok(run_cli(&flush, "")).stdout);
    for sock in &socks {
        assert!(out.contains(&format!("{sock}: lookup cache: ")), "{out}");
    }
}
