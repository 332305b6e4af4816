//! End to end with the directory passdbs (issue 4): mail clients → nginx
//! (shipped config) → our daemon with `--passdb ldap://…`, `saslauthd:…` or
//! `dovecot:…` → the harness's Dovecot (IMAP/POP3) or SMTP sink.
//!
//! Each test starts the harness with its passdb swapped in
//! ([`Extras::passdb`], as `tests/e2e_suite/sql.rs` does), plus
//! `--mechanism plain` where the passdb cannot serve challenge mechanisms.
//!
//! The harness's Dovecot backend checks the password nginx forwards against
//! the harness passwd-file, so each test first gives the directory's users
//! the same passwords there ([`backend_passwords`]): a login works only if
//! the daemon asked the directory and handed nginx the right plaintext.
//!
//! Servers: a real slapd (`tests/common/ldap.rs`, `tests/ldap/users.ldif`),
//! Cyrus saslauthd `-a rimap` in front of its own Dovecot IMAP listener and a
//! Dovecot auth service (`tests/common/sasl.rs`).

use crate::common::ldap;
use crate::common::sasl;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::common::e2e::*;
use nginx_auth_fcgi::authenticator::TEMPORARY;

/// A stack whose daemon asks `passdb`, with `extra` flags.
fn stack_with(passdb: String, extra: &[&str]) -> Stack {
    Stack::start_with_extras(Launch::Direct, Extras::passdb(passdb, extra))
}

/// Gives `users` these `{PLAIN}` passwords in the harness passwd-file (which
/// the Dovecot backend checks): their old lines go, new ones are appended.
/// Written to a new file renamed over the old one, as
/// [`Stack::add_passwd_line`] does; Dovecot re-reads it on the next login
/// (the size changes, so even a change within the same second is seen).
fn backend_passwords(stack: &Stack, users: &[(&str, &str)]) {
    let path = stack.passwd_path();
    let old = fs::read_to_string(&path).expect("read passwd-file");
    let mut text: String = old
        .lines()
        .filter(|l| {
            !users
                .iter()
                .any(|(name, _)| l.starts_with(&format!("{name}:")))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str("# tests/e2e_suite/directory.rs: the directory's passwords\n");
    for (name, password) in users {
        assert!(!password.contains(':'), "{{PLAIN}} cannot hold a ':'");
        text.push_str(&format!("{name}:{{PLAIN}}{password}::::::\n"));
    }
    let tmp = stack.path("passwd.directory");
    fs::write(&tmp, text).expect("write passwd-file");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::rename(&tmp, &path).expect("replace passwd-file");
}

#[track_caller]
fn assert_ok(r: &ClientResult, what: &str) {
    assert!(r.ok, "{what}: expected a working login, got {r:#?}");
}

/// Refused, the first attempt answered `NO text`.
#[track_caller]
fn assert_refused_with(r: &ClientResult, text: &str, what: &str) {
    assert!(!r.ok, "{what}: must not log in: {r:#?}");
    assert_eq!(
        r.attempts.first().map(|a| a.response.as_str()),
        Some(format!("NO {text}").as_str()),
        "{what}: {r:#?}"
    );
}

#[track_caller]
fn assert_invalid(r: &ClientResult, what: &str) {
    assert_refused_with(r, INVALID_LOGIN, what);
}

#[track_caller]
fn assert_temporary(r: &ClientResult, what: &str) {
    assert_refused_with(r, TEMPORARY, what);
}

/// No password the test used shows up in the daemon's log.
#[track_caller]
fn assert_no_passwords_logged(stack: &Stack, passwords: &[&str]) {
    let log = stack.daemon_log();
    for password in passwords {
        assert!(
            !log.contains(password),
            "password in the daemon log:\n{log}"
        );
    }
}

/// The directory's users ({SSHA}, {CRYPT}$6$, {PLAIN}) as the backend sees them.
const LDAP_USERS: [(&str, &str); 3] = [
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("carol", "carol-pw"),
];

/// Search mode: every mail protocol, CRAM-MD5 from a `{PLAIN}` entry,
/// rejections that read alike (also for a filter-injection name), and once
/// slapd is gone a cached user still logs in and others get a temporary
/// failure.
#[test]
fn ldap_search_mode_through_nginx() {
    let mut slapd = ldap::Slapd::start();
    let uri = slapd.uri(&format!("{}&connect_timeout=1&timeout=2", ldap::READER));
    let stack = stack_with(uri, &[]);
    backend_passwords(&stack, &LDAP_USERS);

    // IMAP LOGIN, then SELECT on the backend: {SSHA} and {CRYPT}$6$.
    for (user, password) in [LDAP_USERS[0], LDAP_USERS[1]] {
        let r = stack.client("imap", "login", user, &[password], &[]);
        assert_ok(&r, &format!("IMAP LOGIN {user}"));
    }
    let (carol, carol_pw) = LDAP_USERS[2];
    let r = stack.client("pop3", "user", carol, &[carol_pw], &[]);
    assert_ok(&r, "POP3 USER/PASS carol");
    // CRAM-MD5: the daemon reads carol's {PLAIN} value from the directory and
    // hands it to nginx, which logs in to Dovecot with it.
    let r = stack.client("imap", "cram-md5", carol, &[carol_pw], &[]);
    assert_ok(&r, "IMAP CRAM-MD5 carol");

    let (bob, bob_pw) = LDAP_USERS[1];
    let r = stack.client("smtp", "plain", bob, &[bob_pw], &[]);
    assert_ok(&r, "SMTP AUTH PLAIN bob");
    let messages = stack.sink_messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(
        messages[0].xclient.get("LOGIN").map(String::as_str),
        Some(bob),
        "nginx passes the login via XCLIENT: {messages:#?}"
    );

    let r = stack.client("imap", "login", "alice", &["bob-pw"], &[]);
    assert_invalid(&r, "IMAP LOGIN alice, wrong password");
    let r = stack.client("imap", "login", "*)(uid=*", &["alice-pw"], &[]);
    assert_invalid(&r, "IMAP LOGIN with a filter-injection name");

    // The directory goes away: alice, looked up within lookup_cache_ttl,
    // logs in from the cached record; a user not looked up before gets a
    // temporary failure, not a rejection.
    slapd.kill();
    let r = stack.client("imap", "login", "alice", &["alice-pw"], &[]);
    assert_ok(&r, "IMAP LOGIN alice (cached) while slapd is down");
    let r = stack.client("imap", "login", "dave", &["dave-pw"], &[]);
    assert_temporary(&r, "IMAP LOGIN while slapd is down");

    assert_no_passwords_logged(&stack, &["alice-pw", "bob-pw", "carol-pw", "reader-pw"]);
}

/// Bind mode: slapd checks the password, so the daemon runs with
/// `--mechanism plain` (it refuses to start with CRAM-MD5 over auth bind).
#[test]
fn ldap_bind_mode_through_nginx() {
    let slapd = ldap::Slapd::start();
    let uri = slapd.uri("mode=bind&connect_timeout=1&timeout=2");
    let stack = stack_with(uri, &["--mechanism", "plain"]);
    backend_passwords(&stack, &LDAP_USERS);

    for (user, password) in [LDAP_USERS[0], LDAP_USERS[1]] {
        let r = stack.client("imap", "login", user, &[password], &[]);
        assert_ok(&r, &format!("IMAP LOGIN {user} (bind)"));
    }
    let r = stack.client("imap", "login", "bob", &["alice-pw"], &[]);
    assert_invalid(&r, "IMAP LOGIN bob, wrong password (bind)");
    // nginx offers CRAM-MD5, the daemon does not accept it: a refusal that
    // says so, not a temporary failure.
    let r = stack.client("imap", "cram-md5", "alice", &["alice-pw"], &[]);
    assert!(!r.ok, "IMAP CRAM-MD5 (bind): {r:#?}");
    assert_eq!(
        r.attempts.first().map(|a| a.response.as_str()),
        Some("NO Authentication mechanism not supported"),
        "IMAP CRAM-MD5 (bind, --mechanism plain): {r:#?}"
    );

    assert_no_passwords_logged(&stack, &["alice-pw", "bob-pw"]);
}

/// The sasl servers' users as the backend sees them (their passwd-file is
/// all `{PLAIN}`; SPECIAL has a space, `%` and UTF-8 in its password).
fn sasl_users() -> [(&'static str, &'static str); 2] {
    [
        (sasl::ALICE.name, sasl::ALICE.password),
        (sasl::SPECIAL.name, sasl::SPECIAL.password),
    ]
}

/// The plaintext-only socket passdbs: logins, a wrong password, and a
/// temporary failure once the server is stopped (`stop`).
fn socket_passdb_through_nginx(what: &str, passdb: String, stop: impl FnOnce()) {
    let stack = stack_with(passdb, &["--mechanism", "plain"]);
    let users = sasl_users();
    backend_passwords(&stack, &users);

    for (user, password) in users {
        let r = stack.client("imap", "login", user, &[password], &[]);
        assert_ok(&r, &format!("{what}: IMAP LOGIN {user}"));
    }
    let r = stack.client("imap", "login", users[0].0, &["wrong"], &[]);
    assert_invalid(&r, &format!("{what}: IMAP LOGIN, wrong password"));

    stop();
    let r = stack.client("imap", "login", users[0].0, &[users[0].1], &[]);
    assert_temporary(&r, &format!("{what}: IMAP LOGIN while the server is down"));

    assert_no_passwords_logged(&stack, &users.map(|(_, p)| p));
}

#[test]
fn saslauthd_through_nginx() {
    let dovecot = sasl::Dovecot::start();
    let mut saslauthd = sasl::Saslauthd::start(dovecot.imap_port);
    let passdb = format!(
        "saslauthd:{}?service=imap&timeout=3",
        saslauthd.socket().display()
    );
    socket_passdb_through_nginx("saslauthd", passdb, || saslauthd.stop());
}

#[test]
fn dovecot_auth_through_nginx() {
    let mut dovecot = sasl::Dovecot::start();
    let passdb = format!(
        "dovecot:{}?service=imap&timeout=3",
        dovecot.auth_socket().display()
    );
    socket_passdb_through_nginx("dovecot auth", passdb, || dovecot.stop());
}
