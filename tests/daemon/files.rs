//! Issue 16: files that hold hashes are private (`user add` creates the
//! database 0600 in a 0700 directory; check-config warns about files others
//! can read), and `user app-password …` never shows a secret.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use crate::common::daemon::run_cli;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", text(&o.stderr));
    o
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn user_add_on_a_fresh_path_makes_a_private_database() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state/nginx-auth-fcgi");
    let db = dir.join("users.db");
    let db_arg = db.to_str().unwrap();
    ok(run_cli(
        [
            "user",
            "add",
            "alice@example.org",
            "--password-stdin",
            "--db",
            db_arg,
        ],
        "pw\n",
    ));
    assert_eq!(mode(&db), 0o600, "database");
    assert_eq!(
        mode(&dir) & 0o077,
        0,
        "its directory has no access for others"
    );
    assert_eq!(mode(&dir), 0o700);
    // Later edits keep the modes, and SQLite's siblings are as private.
    ok(run_cli(
        [
            "user",
            "--db",
            db_arg,
            "passwd",
            "alice@example.org",
            "--password-stdin",
        ],
        "pw2\n",
    ));
    ok(run_cli(
        ["user", "--db", db_arg, "disable", "alice@example.org"],
        "",
    ));
    assert_eq!(mode(&db), 0o600);
    for sibling in ["users.db-wal", "users.db-shm", "users.db-journal"] {
        let p = dir.join(sibling);
        if p.exists() {
            assert_eq!(mode(&p) & 0o077, 0, "{sibling}");
        }
    }
}

#[test]
fn check_config_warns_about_readable_passdb_and_secret_config_files() {
    let tmp = tempfile::tempdir().unwrap();
    let users = tmp.path().join("users");
    std::fs::write(&users, "alice:{PLAIN}a::::::\n").unwrap();
    let cfg = tmp.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "passdb = [\"passwd-file:{}\"]\nupstream = [\"imap=127.0.0.1:143\"]\n\
             require_header = [\"X-Auth-Key=s3cret-header\"]\n",
            users.display()
        ),
    )
    .unwrap();
    let set = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    set(&users, 0o644).unwrap();
    set(&cfg, 0o644).unwrap();
    let out = ok(run_cli(
        ["check-config", "--config", cfg.to_str().unwrap()],
        "",
    ));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("warning: passdb file") && stdout.contains("users is readable"),
        "{stdout}"
    );
    assert!(
        stdout.contains("warning: config file (it holds secrets)"),
        "{stdout}"
    );
    assert!(!stdout.contains("s3cret-header"), "{stdout}");

    set(&users, 0o640).unwrap();
    set(&cfg, 0o600).unwrap();
    let stdout = text(
        &ok(run_cli(
            ["check-config", "--config", cfg.to_str().unwrap()],
            "",
        ))
        .stdout,
    );
    assert!(!stdout.contains("readable by every user"), "{stdout}");
}

#[test]
fn app_password_add_prints_the_secret_once_and_list_never_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("users.db");
    let db_arg = db.to_str().unwrap();
    let user = |args: &[&str]| {
        let mut all = vec!["user"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--db", db_arg]);
        run_cli(all, "pw\n")
    };
    ok(user(&["add", "alice@example.org", "--password-stdin"]));
    let added = ok(user(&[
        "app-password",
        "add",
        "alice@example.org",
        "phone",
        "--scope",
        "imap,smtp",
        "--expires",
        "90d",
        "--network",
        "192.0.2.0/24",
    ]));
    let secret = text(&added.stdout).trim().to_owned();
    assert!(secret.len() >= 24, "{secret}");
    assert_eq!(
        text(&added.stdout).lines().count(),
        1,
        "only the secret on stdout"
    );
    // The stored hash verifies the printed secret.
    let hash = stored_hash(&db);
    let stored = nginx_auth_fcgi::scheme::StoredPassword::parse(
        &hash,
        nginx_auth_fcgi::scheme::Scheme::Plain,
    )
    .unwrap();
    assert!(stored.verify(secret.as_bytes()).unwrap());

    let dup = user(&[
        "app-password",
        "add",
        "alice@example.org",
        "phone",
        "--scope",
        "imap",
    ]);
    assert_eq!(dup.status.code(), Some(2));
    let bad = user(&[
        "app-password",
        "add",
        "alice@example.org",
        "x",
        "--scope",
        "ftp",
    ]);
    assert_eq!(bad.status.code(), Some(2));

    let list = ok(user(&["app-password", "list", "alice@example.org"]));
    let shown = format!("{}{}", text(&list.stdout), text(&list.stderr));
    assert!(
        shown.contains("phone\timap,smtp\t192.0.2.0/24\t"),
        "{shown}"
    );
    assert!(shown.contains("\tnever\t-\t"), "never used yet: {shown}");
    assert!(!shown.contains(&secret), "the secret is never listed");
    assert!(!shown.contains(&hash), "nor its hash");
    assert!(!shown.contains("$5$"), "nor any part of it: {shown}");

    ok(user(&[
        "require-app-password",
        "alice@example.org",
        "imap,smtp",
    ]));
    ok(user(&["app-password", "del", "alice@example.org", "phone"]));
    let gone = user(&["app-password", "del", "alice@example.org", "phone"]);
    assert_eq!(gone.status.code(), Some(2));
    let list = text(&ok(user(&["app-password", "list", "alice@example.org"])).stdout);
    assert!(!list.contains("phone"), "{list}");
    assert_eq!(mode(&db), 0o600, "app password commands keep the mode");
}

/// The stored hash of alice's app password `phone`, read through the
/// library's own connection.
fn stored_hash(db: &Path) -> String {
    let admin = nginx_auth_fcgi::passdb::sqlite::Admin::open(db).unwrap();
    admin
        .connection()
        .query_row(
            "SELECT password FROM app_passwords WHERE name = 'phone'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}
