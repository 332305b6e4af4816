//! Issue 16, app passwords end to end: nginx (shipped config) → the daemon
//! with its SQLite passdb and `--require-app-password imap` → Dovecot and
//! the SMTP sink. App passwords are made with the real command line
//! (`user app-password add`).
//!
//! The e2e client always connects from 127.0.0.1, so "outside its network"
//! is an app password limited to 192.0.2.0/24 used from 127.0.0.1; inside
//! and outside with other addresses (the effective address after the
//! trusted-proxy rules) are covered in-process (`tests/policy/app_passwords.rs`).

use std::process::Command;

use crate::common::daemon::run_cli;
use crate::common::e2e::*;
use crate::common::proc::require;
use nginx_auth_fcgi::passdb::app_password::{self, sqlite as apps, Scope};
use nginx_auth_fcgi::passdb::sqlite::Admin;

/// `user app-password add` on `db`: the printed secret.
fn add_app_password(db: &str, user: &str, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["user", "--db", db, "app-password", "add", user, name];
    args.extend_from_slice(extra);
    let out = run_cli(&args, "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn swaks(stack: &Stack, user: &str, password: &str, marker: &str) -> std::process::Output {
    Command::new(require("swaks", "swaks"))
        .args(["--server", &format!("127.0.0.1:{}", stack.smtp)])
        .args(["--from", "alice@example.org", "--to", "rcpt@example.org"])
        .args(["--auth", "LOGIN", "--auth-user", user])
        .args(["--auth-password", password])
        .args(["--header", "Subject: app-password-e2e", "--body", marker])
        .args(["--timeout", "30"])
        .output()
        .expect("run swaks")
}

#[test]
fn app_passwords_through_nginx_scope_expiry_network_and_required() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let db_arg = db.to_str().unwrap().to_owned();
    let admin = Admin::open(&db).unwrap();
    for line in passwd_file_text().lines() {
        let mut fields = line.split(':');
        admin
            .add(fields.next().unwrap(), fields.next().unwrap())
            .unwrap();
    }
    let user = SHA512_USER;
    let phone = add_app_password(&db_arg, user.name, "phone", &["--scope", "smtp"]);
    let office = add_app_password(
        &db_arg,
        user.name,
        "office",
        &["--scope", "smtp", "--network", "192.0.2.0/24"],
    );
    // The command line makes no expired password; one that expired a
    // minute ago, with a known secret, is stored directly.
    let stored = nginx_auth_fcgi::scheme::hash(
        nginx_auth_fcgi::scheme::Scheme::Sha256Crypt,
        b"old-app-secret-3f9a",
    )
    .unwrap();
    let new = apps::NewAppPassword {
        name: "old",
        stored: &stored,
        scopes: &Scope::parse_list("smtp,imap").unwrap(),
        networks: &[],
        expires: Some(app_password::now() - 60),
    };
    apps::add(admin.connection(), user.name, &new).unwrap();

    let passdb = format!("sqlite:{}", db.display());
    let stack = Stack::start_with_extras(
        Launch::Direct,
        Extras::passdb(passdb, &["--require-app-password", "imap"]),
    );

    // Scoped to smtp: swaks sends mail with it through nginx submission.
    let out = swaks(&stack, user.name, &phone, "app password marker");
    assert!(
        out.status.success(),
        "swaks:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stack.daemon_log()
    );
    let messages = stack.sink_messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(
        messages[0].xclient.get("LOGIN").map(String::as_str),
        Some(user.name)
    );
    assert!(messages[0].data.contains("app password marker"));

    // ... and refused for IMAP, with the answer of a wrong password.
    let invalid = format!("NO {INVALID_LOGIN}");
    let r = stack.client("imap", "login", user.name, &[&phone], &[]);
    assert_eq!(r.attempts[0].response, invalid, "{r:#?}");
    // Expired: refused.
    let r = stack.client("smtp", "plain", user.name, &["old-app-secret-3f9a"], &[]);
    assert!(!r.ok, "{r:#?}");
    assert!(
        swaks(&stack, user.name, "old-app-secret-3f9a", "x")
            .status
            .code()
            != Some(0)
    );
    // Limited to 192.0.2.0/24: refused from 127.0.0.1.
    assert!(!swaks(&stack, user.name, &office, "y").status.success());
    // require_app_password = ["imap"]: the main password is refused for
    // IMAP, still works for SMTP.
    let r = stack.client("imap", "login", user.name, &[user.password], &[]);
    assert_eq!(r.attempts[0].response, invalid, "{r:#?}");
    assert!(swaks(&stack, user.name, user.password, "main pw")
        .status
        .success());
    assert_eq!(stack.sink_messages().len(), 2);

    let log = stack.daemon_log();
    for reason in [
        "app-password-scope",
        "app-password-expired",
        "app-password-network",
        "app-password-required",
    ] {
        assert!(
            log.contains(&format!("reason={reason}")),
            "{reason}:\n{log}"
        );
    }
    assert!(log.contains("app_password=phone"), "{log}");
    for secret in [&phone, &office, &"old-app-secret-3f9a".to_owned()] {
        assert!(
            !log.contains(secret.as_str()),
            "a secret in the log:\n{log}"
        );
    }

    // `list` shows the use (off the request path: give the writer a moment)
    // and never a secret.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let listed = loop {
        let out = run_cli(
            ["user", "--db", &db_arg, "app-password", "list", user.name],
            "",
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with("phone\t"))
            .unwrap_or("")
            .to_owned();
        if !line.contains("\tnever\t") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(listed.contains("127.0.0.1"), "{listed}");
    assert!(
        !listed.contains(&phone) && !listed.contains(&office),
        "{listed}"
    );
}
