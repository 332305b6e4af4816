//! End to end through real programs: Python/curl/swaks mail clients →
//! nginx running the shipped `nginx-conf/nginx.conf` → our daemon over
//! FastCGI → Dovecot (IMAP/POP3, checking the password nginx forwards
//! against the same passwd-file) or an SMTP sink that records XCLIENT.
//!
//! Each test starts its own [`Stack`] (own temp dir, ports and daemon, so
//! failed-login penalties of one test cannot slow another). See
//! `tests/common/e2e.rs` for the wiring and `tests/run` for installing the
//! programs.

use std::fs;
use std::process::Command;
use std::thread;

use crate::common::e2e::*;
use crate::common::proc::Proc;

fn assert_ok(result: &ClientResult, what: &str) {
    assert!(
        result.ok,
        "{what}: expected a working login, got {result:#?}"
    );
}

/// The one failure answer, per protocol, as the client sees it.
fn assert_invalid(result: &ClientResult, attempt: usize, protocol: &str, what: &str) {
    let got = &result
        .attempts
        .get(attempt)
        .unwrap_or_else(|| panic!("{what}: no attempt {attempt}: {result:#?}"))
        .response;
    let want = match protocol {
        "imap" => format!("NO {INVALID_LOGIN}"),
        "pop3" => format!("-ERR {INVALID_LOGIN}"),
        "smtp" => format!("535 5.7.8 {INVALID_LOGIN}"),
        _ => unreachable!(),
    };
    assert_eq!(got, &want, "{what}: attempt {attempt} answer; {result:#?}");
    assert!(
        !result.attempts[attempt].ok,
        "{what}: must not log in: {result:#?}"
    );
}

/// No password of any test user in the daemon's or nginx's logs, neither raw
/// nor in nginx's %-escaped form.
fn assert_no_secrets_logged(stack: &Stack) {
    let logs = [
        ("daemon log", stack.daemon_log()),
        ("nginx error.log", stack.nginx_error_log()),
    ];
    for user in USERS {
        let escaped = user.password.replace('%', "%25").replace(' ', "%20");
        for (name, log) in &logs {
            for secret in [user.password, escaped.as_str()] {
                assert!(
                    !log.contains(secret),
                    "{name} contains the password of {} ({secret:?}):\n{log}",
                    user.name
                );
            }
        }
    }
}

/// Audit lines of `user` that carry `result=<result>`.
fn audit_count(stack: &Stack, user: &str, result: &str) -> usize {
    let needle = format!("result={result}");
    stack
        .audit_lines(user)
        .iter()
        .filter(|l| l.split_whitespace().any(|w| w == needle))
        .count()
}

// ------------------------------------------------------------------ IMAP

#[test]
fn imap_login_works_for_every_password_scheme() {
    let stack = Stack::start();
    for user in [ALICE, SHA512_USER, BLF_USER, ARGON2_USER, SSHA256_USER] {
        let r = stack.client("imap", "login", user.name, &[user.password], &[]);
        assert_ok(&r, &format!("IMAP LOGIN {} ({})", user.name, user.scheme));
        let after = r.after.as_ref().expect("SELECT ran");
        assert!(after.response.starts_with("SELECT OK"), "{after:?}");
        assert_eq!(
            audit_count(&stack, user.name, "ok"),
            1,
            "{}",
            stack.daemon_log()
        );
    }
    assert_no_secrets_logged(&stack);
}

#[test]
fn imap_authenticate_plain_login_and_starttls() {
    let stack = Stack::start();
    let r = stack.client(
        "imap",
        "plain",
        SHA512_USER.name,
        &[SHA512_USER.password],
        &[],
    );
    assert_ok(&r, "IMAP AUTHENTICATE PLAIN");
    let r = stack.client(
        "imap",
        "authlogin",
        ARGON2_USER.name,
        &[ARGON2_USER.password],
        &[],
    );
    assert_ok(&r, "IMAP AUTHENTICATE LOGIN");
    let r = stack.client(
        "imap",
        "plain",
        BLF_USER.name,
        &[BLF_USER.password],
        &["--starttls"],
    );
    assert_ok(&r, "IMAP STARTTLS + AUTHENTICATE PLAIN");
    assert_no_secrets_logged(&stack);
}

#[test]
fn imap_cram_md5_with_plaintext_user_logs_in_to_dovecot() {
    let stack = Stack::start();
    // nginx has no plaintext password after CRAM-MD5: the login to Dovecot
    // works only if the daemon returned the right Auth-Pass.
    let r = stack.client("imap", "cram-md5", ALICE.name, &[ALICE.password], &[]);
    assert_ok(&r, "IMAP AUTHENTICATE CRAM-MD5");
    let r = stack.client("imap", "cram-md5", ALICE.name, &["not-the-password"], &[]);
    assert_invalid(&r, 0, "imap", "IMAP CRAM-MD5 wrong password");
    assert_no_secrets_logged(&stack);
}

#[test]
fn imap_cram_md5_with_hashed_user_is_refused_cleanly() {
    let stack = Stack::start();
    // A hash cannot verify a CRAM-MD5 digest; the client must get a normal
    // NO (not nginx's "internal server error"), and the daemon must live on.
    let r = stack.client(
        "imap",
        "cram-md5",
        SHA512_USER.name,
        &[SHA512_USER.password],
        &[],
    );
    assert!(!r.ok, "{r:#?}");
    let answer = &r.attempts[0].response;
    assert!(answer.starts_with("NO "), "{r:#?}");
    assert!(!answer.contains("internal server error"), "{r:#?}");
    let r = stack.client(
        "imap",
        "login",
        SHA512_USER.name,
        &[SHA512_USER.password],
        &[],
    );
    assert_ok(&r, "IMAP LOGIN after a refused CRAM-MD5");
}

#[test]
fn imap_wrong_password_is_delayed_and_the_session_can_retry() {
    let stack = Stack::start();
    let r = stack.client(
        "imap",
        "login",
        ALICE.name,
        &["wrong-1", "wrong-2", ALICE.password],
        &[],
    );
    assert_invalid(&r, 0, "imap", "attempt 1");
    assert_invalid(&r, 1, "imap", "attempt 2");
    // Auth-Wait: nginx holds the NO back and keeps the connection open.
    let (first, second) = (r.attempts[0].elapsed_s, r.attempts[1].elapsed_s);
    assert!(
        first >= 0.9,
        "attempt 1 answered after {first} s: no Auth-Wait? {r:#?}"
    );
    assert!(
        second >= 0.9,
        "attempt 2 answered after {second} s: no Auth-Wait? {r:#?}"
    );
    // Auth-Wait grows with the attempt number (1 s, then 2 s by default).
    assert!(
        second >= first + 0.5,
        "the delay must grow with more failures: {first} s then {second} s"
    );
    // The third attempt, on the same connection, succeeds.
    assert!(r.attempts[2].ok, "{r:#?}");
    assert!(r.ok, "{r:#?}");
    assert_eq!(
        audit_count(&stack, ALICE.name, "fail"),
        2,
        "{}",
        stack.daemon_log()
    );
    assert_eq!(
        audit_count(&stack, ALICE.name, "ok"),
        1,
        "{}",
        stack.daemon_log()
    );
    assert_no_secrets_logged(&stack);
}

/// Unknown user and wrong password must look the same to the client. One
/// stack per protocol: failures are counted per client address (all tests
/// use 127.0.0.1), so fewer failures per daemon keep the Auth-Wait short.
fn unknown_user_answer_equals_wrong_password(protocol: &str, mech: &str) {
    let stack = Stack::start();
    let wrong = stack.client(protocol, mech, ALICE.name, &["wrong"], &["--no-after"]);
    let unknown = stack.client(protocol, mech, "nosuchuser", &["wrong"], &["--no-after"]);
    assert_invalid(&wrong, 0, protocol, "wrong password");
    assert_invalid(&unknown, 0, protocol, "unknown user");
    assert_eq!(wrong.attempts[0].response, unknown.attempts[0].response);
    assert_eq!(
        audit_count(&stack, "nosuchuser", "fail"),
        1,
        "{}",
        stack.daemon_log()
    );
}

#[test]
fn imap_unknown_user_gets_the_same_answer_as_a_wrong_password() {
    unknown_user_answer_equals_wrong_password("imap", "login");
}

#[test]
fn pop3_unknown_user_gets_the_same_answer_as_a_wrong_password() {
    unknown_user_answer_equals_wrong_password("pop3", "user");
}

#[test]
fn smtp_unknown_user_gets_the_same_answer_as_a_wrong_password() {
    unknown_user_answer_equals_wrong_password("smtp", "plain");
}

// ------------------------------------------------------------------ POP3

#[test]
fn pop3_user_pass_auth_plain_login_apop_cram_md5() {
    let stack = Stack::start();
    let cases = [
        ("user", SHA512_USER, false),
        ("user", BLF_USER, true),
        ("plain", ARGON2_USER, false),
        ("authlogin", SSHA256_USER, false),
        // APOP and CRAM-MD5 need the stored plaintext ({PLAIN}); Dovecot then
        // gets the password from the daemon's Auth-Pass.
        ("apop", ALICE, false),
        ("cram-md5", ALICE, true),
    ];
    for (mech, user, starttls) in cases {
        let extra: &[&str] = if starttls { &["--starttls"] } else { &[] };
        let r = stack.client("pop3", mech, user.name, &[user.password], extra);
        assert_ok(
            &r,
            &format!("POP3 {mech} {} starttls={starttls}", user.name),
        );
        let after = r.after.as_ref().expect("STAT ran");
        assert!(after.response.starts_with("STAT "), "{after:?}");
    }
    let r = stack.client("pop3", "apop", ALICE.name, &["wrong"], &[]);
    assert_invalid(&r, 0, "pop3", "POP3 APOP wrong password");
    assert_no_secrets_logged(&stack);
}

// ------------------------------------------------------------------ SMTP

#[test]
fn smtp_auth_plain_login_cram_md5_relay_with_xclient_login() {
    let stack = Stack::start();
    let cases = [
        ("plain", ALICE, "m-plain", false),
        ("login", SHA512_USER, "m-login", true),
        ("cram-md5", ALICE, "m-cram", false),
    ];
    for (mech, user, marker, starttls) in cases {
        let mut extra = vec!["--marker", marker];
        if starttls {
            extra.push("--starttls");
        }
        let r = stack.client("smtp", mech, user.name, &[user.password], &extra);
        assert_ok(&r, &format!("SMTP AUTH {mech} {}", user.name));
        assert_eq!(r.attempts[0].response, "235 2.0.0 OK", "{r:#?}");
    }
    let messages = stack.sink_messages();
    assert_eq!(messages.len(), cases.len(), "{messages:#?}");
    for ((mech, user, marker, _), msg) in cases.iter().zip(&messages) {
        assert_eq!(
            msg.xclient.get("LOGIN").map(String::as_str),
            Some(user.name),
            "{mech}: nginx must pass the login via XCLIENT: {msg:#?}"
        );
        assert_eq!(
            msg.xclient.get("ADDR").map(String::as_str),
            Some("127.0.0.1"),
            "{msg:#?}"
        );
        assert_eq!(msg.xclient_count, 1, "{msg:#?}");
        assert!(msg.data.contains(marker), "{mech}: {msg:#?}");
        assert_eq!(msg.rcpt_to, ["TO:<rcpt@example.org>"], "{msg:#?}");
        // nginx's own EHLO (server_name from the shipped config) comes first.
        assert_eq!(
            msg.ehlo.first().map(String::as_str),
            Some("mail.example.org"),
            "{msg:#?}"
        );
    }
    assert_no_secrets_logged(&stack);
}

#[test]
fn smtp_wrong_password_gets_535_5_7_8_and_nothing_is_relayed() {
    let stack = Stack::start();
    let r = stack.client("smtp", "plain", ALICE.name, &["wrong"], &[]);
    assert_invalid(&r, 0, "smtp", "SMTP AUTH PLAIN wrong password");
    let r = stack.client("smtp", "cram-md5", ALICE.name, &["wrong"], &[]);
    assert_invalid(&r, 0, "smtp", "SMTP AUTH CRAM-MD5 wrong password");
    assert!(stack.sink_messages().is_empty());
}

/// The daemon's audit lines for `smtp_auth none` (no user).
fn relay_audit(stack: &Stack) -> Vec<String> {
    stack
        .daemon_log()
        .lines()
        .filter(|l| l.contains("protocol=smtp method=none"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn smtp_auth_none_refuses_one_relay_rcpt_and_the_session_goes_on() {
    let stack = Stack::start();
    let s = stack.smtp_session(
        stack.mx,
        "sender@remote.example",
        &["victim@elsewhere.example", &format!("rcpt@{LOCAL_DOMAIN}")],
        "relay-session-marker",
    );
    assert_eq!(s.step("MAIL FROM").code, 250, "{s:#?}");
    let bad = s.step("RCPT TO:<victim@");
    assert_eq!(
        (bad.code, bad.text.as_str()),
        (554, "5.7.1 Relay access denied"),
        "{s:#?}"
    );
    // nginx held the reply for the Auth-Wait (1 s after the first attempt).
    assert!(bad.elapsed_s >= 0.9, "{s:#?}");
    // The same session: the next RCPT is asked about again and accepted;
    // nginx then hands the session to the backend, replaying MAIL FROM and
    // this RCPT.
    assert_eq!(s.step("RCPT TO:<rcpt@").code, 250, "{s:#?}");
    assert_eq!(s.step("DATA").code, 354, "{s:#?}");
    assert_eq!(s.step("<message>").code, 250, "{s:#?}");
    assert_eq!(s.step("QUIT").code, 221, "{s:#?}");
    assert!(!s.closed, "{s:#?}");
    let messages = stack.sink_messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let msg = &messages[0];
    assert_eq!(
        msg.rcpt_to,
        [format!("TO:<rcpt@{LOCAL_DOMAIN}>")],
        "{msg:#?}"
    );
    assert_eq!(
        msg.mail_from.as_deref(),
        Some("FROM:<sender@remote.example>"),
        "{msg:#?}"
    );
    assert!(msg.data.contains("relay-session-marker"), "{msg:#?}");
    assert_eq!(
        msg.xclient.get("LOGIN"),
        None,
        "not authenticated: {msg:#?}"
    );
    assert_eq!(
        msg.xclient.get("ADDR").map(String::as_str),
        Some("127.0.0.1")
    );
    let audit = relay_audit(&stack);
    assert_eq!(audit.len(), 2, "{audit:#?}");
    assert!(
        audit[0].contains("result=refused")
            && audit[0].contains("attempt=1")
            && audit[0].contains("reason=relay-denied")
            && audit[0].contains(" wait=1"),
        "{audit:#?}"
    );
    assert!(
        audit[1].contains("result=ok") && audit[1].contains("attempt=2"),
        "{audit:#?}"
    );
}

#[test]
fn smtp_auth_none_closes_the_session_past_max_attempts() {
    let stack = Stack::start_with_extras(
        Launch::Direct,
        Extras {
            daemon_args: vec!["--max-attempts".into(), "2".into()],
            ..Extras::default()
        },
    );
    let s = stack.smtp_session(
        stack.mx,
        "sender@remote.example",
        &[
            "one@elsewhere.example",
            "two@elsewhere.example",
            &format!("rcpt@{LOCAL_DOMAIN}"),
        ],
        "never-delivered",
    );
    assert_eq!(s.step("RCPT TO:<one@").code, 554, "{s:#?}");
    // Attempt 2 = max_attempts: the refusal comes without Auth-Wait and
    // nginx hangs up after it.
    let two = s.step("RCPT TO:<two@");
    assert_eq!(
        (two.code, two.text.as_str()),
        (554, "5.7.1 Relay access denied"),
        "{s:#?}"
    );
    assert!(s.closed, "{s:#?}");
    assert!(stack.sink_messages().is_empty());
}

/// `tests/e2e/dns_stub.py`, stopped with its process group on drop.
fn dns_stub(port: u16, mode: &str) -> Proc {
    use std::io::BufRead;
    let mut cmd = Command::new(require("python3", "python3"));
    cmd.arg(repo_root().join("tests/e2e/dns_stub.py"))
        .args(["--port", &port.to_string(), "--mode", mode])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(std::process::Stdio::piped());
    let mut proc = Proc::spawn_with("dns_stub.py", &mut cmd);
    // It prints one line once its socket is bound.
    let mut line = String::new();
    std::io::BufReader::new(proc.child_mut().stdout.take().unwrap())
        .read_line(&mut line)
        .expect("dns_stub.py output");
    assert!(line.starts_with("dns_stub:"), "dns_stub.py: {line:?}");
    proc
}

#[test]
fn reject_unknown_client_through_nginx_with_each_resolver_answer() {
    let [nx_dns, fail_dns, name_dns, mx_nx, mx_fail, mx_name] = free_ports::<6>();
    let _stubs = [
        dns_stub(nx_dns, "nxdomain"),
        dns_stub(fail_dns, "servfail"),
        dns_stub(name_dns, "name"),
    ];
    // One `smtp_auth none` server per resolver answer.
    let server = |port: u16, dns: u16| {
        format!(
            "    server {{\n        listen 127.0.0.1:{port};\n        protocol smtp;\n        \
             smtp_auth none;\n        resolver 127.0.0.1:{dns} ipv6=off;\n        \
             resolver_timeout 2s;\n    }}\n"
        )
    };
    let stack = Stack::start_with_extras(
        Launch::Direct,
        Extras {
            daemon_args: vec!["--reject-unknown-client".into()],
            nginx_mail: [
                server(mx_nx, nx_dns),
                server(mx_fail, fail_dns),
                server(mx_name, name_dns),
            ]
            .concat(),
            ..Extras::default()
        },
    );
    let local = format!("rcpt@{LOCAL_DOMAIN}");
    let unknown = "5.7.25 Client host rejected: cannot find your hostname";
    // NXDOMAIN, and the shipped `resolver off`: [UNAVAILABLE], 550.
    for port in [mx_nx, stack.mx] {
        let s = stack.smtp_session(port, "sender@remote.example", &[&local], "m");
        let r = s.step("RCPT TO:");
        assert_eq!((r.code, r.text.as_str()), (550, unknown), "{s:#?}");
        // Refused for that command only: the session goes on.
        assert_eq!(s.step("QUIT").code, 221, "{s:#?}");
    }
    // SERVFAIL: [TEMPUNAVAIL], 450, the marker in the text.
    let s = stack.smtp_session(mx_fail, "sender@remote.example", &[&local], "m");
    let r = s.step("RCPT TO:");
    assert_eq!(
        (r.code, r.text.as_str()),
        (
            450,
            &*format!("{} [TEMPUNAVAIL]", unknown.replace("5.7.25", "4.7.25"))
        ),
        "{s:#?}"
    );
    assert_eq!(s.step("QUIT").code, 221, "{s:#?}");
    assert!(stack.sink_messages().is_empty());
    // A name that resolves back to the client: delivered, and nginx tells
    // the backend the name (XCLIENT NAME=).
    let s = stack.smtp_session(mx_name, "sender@remote.example", &[&local], "named");
    assert_eq!(s.step("RCPT TO:").code, 250, "{s:#?}");
    assert_eq!(s.step("<message>").code, 250, "{s:#?}");
    let messages = stack.sink_messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(
        messages[0].xclient.get("NAME").map(String::as_str),
        Some("client.example.test"),
        "{messages:#?}"
    );
    // Submission with AUTH, no resolver: refused before the password check.
    let r = stack.client("smtp", "plain", ALICE.name, &[ALICE.password], &[]);
    assert_eq!(r.attempts[0].response, format!("550 {unknown}"), "{r:#?}");
    // IMAP is not affected.
    let r = stack.client("imap", "plain", ALICE.name, &[ALICE.password], &[]);
    assert_ok(&r, "IMAP with reject_unknown_client");
    let log = stack.daemon_log();
    for reason in ["unknown-client-hostname", "client-hostname-tempfail"] {
        assert!(log.contains(&format!("reason={reason}")), "{log}");
    }
}

#[test]
fn swaks_submits_through_nginx() {
    let stack = Stack::start();
    let swaks = require("swaks", "swaks");
    let out = Command::new(swaks)
        .args(["--server", &format!("127.0.0.1:{}", stack.smtp)])
        .args(["--from", "alice@example.org", "--to", "rcpt@example.org"])
        .args(["--auth", "LOGIN", "--auth-user", SSHA256_USER.name])
        .args(["--auth-password", SSHA256_USER.password])
        .args([
            "--header",
            "Subject: swaks-e2e",
            "--body",
            "swaks body marker",
        ])
        .args(["--timeout", "30"])
        .output()
        .expect("run swaks");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "swaks failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let messages = stack.sink_messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(
        messages[0].xclient.get("LOGIN").map(String::as_str),
        Some(SSHA256_USER.name)
    );
    assert!(
        messages[0].data.contains("swaks body marker"),
        "{messages:#?}"
    );
}

#[test]
fn per_user_upstream_from_a_hot_reloaded_passwd_file() {
    let mut stack = Stack::start();
    let (port, routed_log) = stack.start_extra_sink("sink-routed");
    // Added while everything runs: the daemon must pick the new line up
    // without a restart, with its per-user upstream (extra fields).
    stack.add_passwd_line(&format!(
        "routed:{{PLAIN}}routed-pw-5a7e::::::host=127.0.0.1 port={port}"
    ));
    let r = stack.client(
        "smtp",
        "plain",
        "routed",
        &["routed-pw-5a7e"],
        &["--marker", "m-routed"],
    );
    assert_ok(&r, "SMTP AUTH for a user added after start");
    let routed = read_sink_log(&routed_log);
    assert_eq!(
        routed.len(),
        1,
        "the user's own upstream got it: {routed:#?}"
    );
    assert_eq!(
        routed[0].xclient.get("LOGIN").map(String::as_str),
        Some("routed")
    );
    assert!(routed[0].data.contains("m-routed"), "{routed:#?}");
    assert!(stack.sink_messages().is_empty(), "not the default upstream");
    // Users without host/port still use the configured upstream.
    let r = stack.client("smtp", "plain", ALICE.name, &[ALICE.password], &[]);
    assert_ok(&r, "SMTP AUTH alice");
    assert_eq!(stack.sink_messages().len(), 1);
    assert_eq!(read_sink_log(&routed_log).len(), 1);
}

// ------------------------------------------------ awkward password bytes

#[test]
fn password_with_space_percent_plus_colon_and_utf8_works_everywhere() {
    let stack = Stack::start();
    let user = SPECIAL_USER;
    let cases = [
        ("imap", "login"), // an IMAP literal (non-ASCII cannot be quoted)
        ("imap", "plain"),
        ("pop3", "user"),
        ("pop3", "plain"),
        ("smtp", "plain"),
        ("smtp", "login"),
    ];
    for (protocol, mech) in cases {
        let r = stack.client(protocol, mech, user.name, &[user.password], &[]);
        assert_ok(
            &r,
            &format!("{protocol} {mech} with password {:?}", user.password),
        );
    }
    // A near miss must fail: the daemon must compare all bytes, decoded once.
    let r = stack.client("imap", "login", user.name, &["p w%+:e"], &[]);
    assert_invalid(&r, 0, "imap", "ASCII look-alike");
    let r = stack.client("imap", "login", user.name, &["p%20w%25+:é"], &[]);
    assert_invalid(&r, 0, "imap", "the escaped form itself");
    assert_no_secrets_logged(&stack);
}

// ------------------------------------------------------------ curl client

#[test]
fn curl_imap_client_logs_in() {
    let stack = Stack::start();
    let url = format!("imap://127.0.0.1:{}/", stack.imap);
    // curl picks the strongest advertised SASL mechanism (CRAM-MD5 here).
    let listing = stack.curl_ok(
        &[&url, "-u", &format!("{}:{}", ALICE.name, ALICE.password)],
        "curl",
    );
    assert!(listing.contains("INBOX"), "LIST output: {listing}");
    // PLAIN after STARTTLS for a hashed user.
    stack.curl_ok(
        &[
            &url,
            "--ssl-reqd",
            "--insecure",
            "--login-options",
            "AUTH=PLAIN",
            "-u",
            &format!("{}:{}", SHA512_USER.name, SHA512_USER.password),
        ],
        "curl STARTTLS",
    );
    // Wrong password: curl exit code 67 (CURLE_LOGIN_DENIED).
    let out = stack.curl(&[&url, "--login-options", "AUTH=PLAIN", "-u", "alice:wrong"]);
    assert_eq!(out.status.code(), Some(67), "{out:?}");
}

// ---------------------------------------------------- the auth_http hop

#[test]
fn auth_http_location_requires_the_shared_key() {
    let stack = Stack::start();
    let request = |key: Option<&str>| {
        let mut headers = vec![
            ("Auth-Method", "plain"),
            ("Auth-User", ALICE.name),
            ("Auth-Pass", ALICE.password),
            ("Auth-Protocol", "imap"),
            ("Auth-Login-Attempt", "1"),
            ("Client-IP", "127.0.0.1"),
        ];
        if let Some(key) = key {
            headers.push(("X-Auth-Key", key));
        }
        stack.auth_http_request(&headers)
    };
    let get = |headers: &[(String, String)], name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    for (key, what) in [
        (None, "no X-Auth-Key"),
        (Some("wrong-key"), "wrong X-Auth-Key"),
    ] {
        let headers = request(key);
        let status = get(&headers, "auth-status");
        assert!(
            status.is_some() && status.as_deref() != Some("OK"),
            "{what}: Auth-Status must be present and not OK: {headers:?}"
        );
        assert_eq!(get(&headers, "auth-server"), None, "{what}: {headers:?}");
        assert_eq!(get(&headers, "auth-port"), None, "{what}: {headers:?}");
        assert_eq!(get(&headers, "auth-pass"), None, "{what}: {headers:?}");
    }
    // The same request with the key is a success: the key was the difference.
    let headers = request(Some(AUTH_KEY));
    assert_eq!(
        get(&headers, "auth-status").as_deref(),
        Some("OK"),
        "{headers:?}"
    );
    assert_eq!(
        get(&headers, "auth-server").as_deref(),
        Some("127.0.0.1"),
        "{headers:?}"
    );
    let port = stack.dovecot_imap.to_string();
    assert_eq!(
        get(&headers, "auth-port").as_deref(),
        Some(port.as_str()),
        "{headers:?}"
    );
    assert_eq!(
        get(&headers, "auth-pass").as_deref(),
        Some(ALICE.password),
        "{headers:?}"
    );
    // Everything nginx mail must parse fits its 1024-byte buffer.
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + 4)
        .sum::<usize>()
        + 40;
    assert!(
        size < 1024,
        "auth reply header block ~{size} bytes: {headers:?}"
    );
}

// ------------------------------------------------- starting and stopping

#[test]
fn sigterm_stops_the_daemon_with_exit_code_0() {
    let mut stack = Stack::start();
    let r = stack.client("imap", "login", ALICE.name, &[ALICE.password], &[]);
    assert_ok(&r, "IMAP LOGIN before SIGTERM");
    let status = stack.stop_daemon();
    assert_eq!(
        status.code(),
        Some(0),
        "daemon exit after SIGTERM: {status}"
    );
    // With the daemon gone, nginx fails the login at once (no hang until
    // auth_http_timeout) with its internal error, and never lets anyone in.
    let r = stack.client("imap", "login", ALICE.name, &[ALICE.password], &[]);
    assert!(!r.ok, "{r:#?}");
    let answer = r.server_responses.join("\n");
    assert!(answer.contains("internal server error"), "{r:#?}");
    assert!(r.attempts[0].elapsed_s < 5.0, "{r:#?}");
}

/// A daemon started as `launch` says serves `logins` (protocol, mechanism,
/// user) through nginx and exits with 0 on SIGTERM.
fn launched_daemon_serves(launch: Launch, how: &str, logins: [(&str, &str, User); 2]) {
    let mut stack = Stack::start_with(launch);
    for (protocol, mech, user) in logins {
        let r = stack.client(protocol, mech, user.name, &[user.password], &[]);
        assert_ok(&r, &format!("{protocol} {mech} {} via {how}", user.name));
    }
    let status = stack.stop_daemon();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn spawn_fcgi_started_daemon_serves_imap() {
    launched_daemon_serves(
        Launch::SpawnFcgi,
        "spawn-fcgi daemon",
        [("imap", "login", SHA512_USER), ("pop3", "apop", ALICE)],
    );
}

#[test]
fn socket_activated_daemon_serves_imap() {
    launched_daemon_serves(
        Launch::SocketActivate,
        "socket-activated daemon",
        [("imap", "login", ARGON2_USER), ("smtp", "plain", ALICE)],
    );
}

#[test]
fn parallel_logins_share_the_daemon() {
    let mut stack = Stack::start();
    let users = USERS;
    thread::scope(|scope| {
        let stack = &stack;
        let handles: Vec<_> = users
            .iter()
            .enumerate()
            .map(|(i, user)| {
                scope.spawn(move || {
                    let protocol = ["imap", "pop3"][i % 2];
                    let mech = ["login", "user"][i % 2];
                    let r = stack.client(protocol, mech, user.name, &[user.password], &[]);
                    assert_ok(&r, &format!("parallel {protocol} {}", user.name));
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("client thread");
        }
    });
    stack.assert_daemon_running();
    for user in users {
        assert_eq!(
            audit_count(&stack, user.name, "ok"),
            1,
            "{}",
            stack.daemon_log()
        );
    }
}

// -------------------------------------------------- the shipped files

#[test]
fn shipped_nginx_conf_drift_is_caught() {
    let shipped = fs::read_to_string(repo_root().join("nginx-conf/nginx.conf")).expect("read");
    let subs = |from: &str, to: &str| vec![(from.to_string(), to.to_string())];
    // A substitution that no longer matches.
    let missing = std::panic::catch_unwind(|| {
        render_config(
            "pid /run/other.pid;\n",
            &subs("pid /run/nginx.pid;", "pid /x;"),
            "/x",
        )
    });
    assert!(missing.is_err());
    // A new system path nobody substitutes.
    let leftover =
        std::panic::catch_unwind(|| render_config("error_log /var/log/x.log;\n", &[], "/x"));
    assert!(leftover.is_err());
    // A new public listen.
    let listen = std::panic::catch_unwind(|| render_config("listen 993;\n", &[], "/x"));
    assert!(listen.is_err());
    // Comments are free text.
    let ok = render_config("# listen 993; /var/x\nuser www-data;\n", &[], "/x");
    assert!(ok.contains("user www-data;"));
    // The shipped file keeps the directives the design depends on.
    for needle in [
        "load_module /usr/lib/nginx/modules/ngx_mail_module.so;",
        "imap_auth login plain cram-md5;",
        "pop3_auth plain apop cram-md5;",
        "smtp_auth login plain cram-md5;",
        "smtp_auth none;",
        "xclient on;",
        "fastcgi_param REMOTE_ADDR $remote_addr;",
        "fastcgi_pass nginx_auth_fcgi;",
        "fastcgi_keep_conn on;",
        "keepalive 32;",
        "fastcgi_intercept_errors off;",
        "server_tokens off;",
    ] {
        assert!(
            shipped.contains(needle),
            "nginx-conf/nginx.conf lost `{needle}`"
        );
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let analyze = require("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().expect("tempdir");
    for unit in ["nginx-auth-fcgi.socket", "nginx-auth-fcgi.service"] {
        let text = fs::read_to_string(repo_root().join("systemd").join(unit)).expect("read unit");
        // verify checks that ExecStart's binary exists; use the one cargo built.
        let text = text.replace("/usr/bin/nginx-auth-fcgi ", &format!("{} ", daemon_bin()));
        fs::write(dir.path().join(unit), text).expect("write unit");
    }
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(dir.path().join("nginx-auth-fcgi.socket"))
        .arg(dir.path().join("nginx-auth-fcgi.service"))
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify:\n{stderr}");
    let unit_warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("nginx-auth-fcgi"))
        .collect();
    assert!(
        unit_warnings.is_empty(),
        "systemd-analyze verify warnings:\n{stderr}"
    );

    let service =
        fs::read_to_string(repo_root().join("systemd/nginx-auth-fcgi.service")).expect("read");
    let socket =
        fs::read_to_string(repo_root().join("systemd/nginx-auth-fcgi.socket")).expect("read");
    assert!(socket.contains("ListenStream=/run/nginx-auth-fcgi/auth.sock"));
    assert!(service.contains("Type=notify"));
    assert!(service.contains(" serve --listen systemd "));
    let nginx = fs::read_to_string(repo_root().join("nginx-conf/nginx.conf")).expect("read");
    assert!(
        nginx.contains("server unix:/run/nginx-auth-fcgi/auth.sock;"),
        "nginx.conf and the .socket unit must name the same socket"
    );
}

/// Issue 14's webmail case through real nginx, default throttle settings: a
/// webmail on the same host logs everybody in from 127.0.0.1, so 300 failed
/// logins over 100 users from there must not lock its users out.
#[test]
fn a_webmail_on_loopback_is_never_locked_out() {
    let stack = Stack::start();
    for i in 0..300 {
        let user = if i % 100 == 0 {
            ALICE.name.to_owned()
        } else {
            format!("webmail-user-{}", i % 100)
        };
        let pass = format!("mistyped-{i}");
        let headers = stack.auth_http_request(&[
            ("Auth-Method", "plain"),
            ("Auth-User", &user),
            ("Auth-Pass", &pass),
            ("Auth-Protocol", "imap"),
            ("Auth-Login-Attempt", "1"),
            ("Client-IP", "127.0.0.1"),
            ("X-Auth-Key", AUTH_KEY),
        ]);
        let status = headers
            .iter()
            .find(|(n, _)| n == "auth-status")
            .map(|(_, v)| v.as_str());
        assert_eq!(status, Some("Invalid login or password"), "attempt {i}");
    }
    // The real login through nginx's IMAP listener, from 127.0.0.1 too.
    let r = stack.client("imap", "login", ALICE.name, &[ALICE.password], &[]);
    assert_ok(&r, "IMAP LOGIN after 300 failures from loopback");
    let log = stack.daemon_log();
    assert!(!log.contains("throttle: blocked"), "{log}");
    assert!(
        log.contains("trusted networks, never counted, delayed or blocked: 127.0.0.0/8, ::1/128"),
        "start-up says what is trusted:\n{log}"
    );
}
