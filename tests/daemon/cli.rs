//! The admin command line, run as a real process: `check-config`, `hash`,
//! `user …` on the embedded SQLite database, `auth test`, and `status` /
//! `throttle` against a running service.

use std::io::Write;
use std::process::Output;

use crate::common::daemon::{run_cli, Daemon};
use crate::common::fcgi;
use nginx_auth_fcgi::scheme::{Scheme, StoredPassword};

fn run(args: &[&str], stdin: &str) -> Output {
    run_cli(args, stdin)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_config_reports_every_problem_at_once() {
    let out = run(
        &[
            "check-config",
            "--listen",
            "bogus:1",
            "--upstream",
            "imap=no-port",
            "--require-header",
            "X_Key=supersecretvalue",
            "--mechanism",
            "gssapi",
            "--log",
            "file",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 5, "{err}");
    for needle in ["bogus:1", "no-port", "X_Key", "gssapi", "file"] {
        assert!(err.contains(needle), "{needle} missing in:\n{err}");
    }
    assert!(!err.contains("supersecretvalue"), "secrets never echoed");
}

#[test]
fn check_config_reads_toml_and_checks_passdbs() {
    let (dir, users) =
        crate::common::temp_file("users", "alice:{PLAIN}a::::::\nbob:{NOSUCH}x::::::\n");
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "passdb = [\"passwd-file:{}\"]\nupstream = [\"imap=127.0.0.1:143\"]\n",
            users.display()
        ),
    )
    .unwrap();
    let out = run(&["check-config", "--config", cfg.to_str().unwrap()], "");
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad line in passwd-file is a problem"
    );
    assert!(
        text(&out.stderr).contains("line 2: user bob"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(&users, "alice:{PLAIN}a::::::\n").unwrap();
    let out = run(&["check-config", "--config", cfg.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("configuration OK") && stdout.contains("upstream imap: 127.0.0.1:143"));

    std::fs::write(&cfg, "lisen = []\n").unwrap();
    let out = run(&["check-config", "--config", cfg.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("lisen"),
        "unknown keys are refused"
    );
}

#[test]
fn check_config_says_whether_reject_unknown_client_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:{PLAIN}a::::::\n").unwrap();
    let passdb = format!("--passdb=passwd-file:{}", users.display());
    let base = [
        "check-config",
        passdb.as_str(),
        "--local-domain",
        "example.org",
    ];
    let out = run(&base, "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("  reject_unknown_client: off\n"),
        "off by default:\n{stdout}"
    );
    assert!(
        stdout.contains("smtp_auth none: mail accepted for example.org"),
        "{stdout}"
    );
    let out = run(&[&base[..], &["--reject-unknown-client"]].concat(), "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("  reject_unknown_client: on ("),
        "{}",
        text(&out.stdout)
    );
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "reject_unknown_client = true\n").unwrap();
    let out = run(
        &[&base[..], &["--config", cfg.to_str().unwrap()]].concat(),
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("  reject_unknown_client: on ("),
        "from the TOML file:\n{}",
        text(&out.stdout)
    );
}

#[test]
fn check_config_refuses_argon2_hashes_above_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    // `doveadm pw -s ARGON2ID` / `-s ARGON2I` (m=65536 and m=32768 KiB: under
    // the default limit), then a hand-made PHC string asking for 512 MiB.
    // The limit is checked when the line is parsed, before any verification.
    let salt_and_hash = "2sZcItI1HuQ8Jd1z3JoTaA$vWYdMTirXl6ps8wOy5uAjH23p3BamHpuhpdGCSeUl44";
    std::fs::write(
        &users,
        format!(
            "alice:{{ARGON2ID}}$argon2id$v=19$m=65536,t=3,p=1${salt_and_hash}::::::\n\
             bob:{{ARGON2I}}$argon2i$v=19$m=32768,t=4,p=1$JpgKwTThAkNwGNa7++I35Q$IgwMfoEJf/fQgTLaIxyVUiscJRYLB16GdB0ZPpJhWZk::::::\n\
             carol:{{ARGON2ID}}$argon2id$v=19$m=524288,t=3,p=1${salt_and_hash}::::::\n"
        ),
    )
    .unwrap();
    let passdb = format!("--passdb=passwd-file:{}", users.display());
    let base = ["check-config", &passdb, "--upstream", "imap=127.0.0.1:143"];

    let out = run(&base, "");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "line 3: user carol: ARGON2ID memory cost 524288 KiB is above argon2_max_memory \
             (262144 KiB)"
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "alice and bob are fine: {err}");
    for part in salt_and_hash.split('$') {
        assert!(!err.contains(part), "the hash is not shown: {err}");
    }

    let out = run(
        &[
            &base[..],
            &[
                "--argon2-max-memory",
                "1G",
                "--verify-concurrency",
                "3",
                "--verify-queue",
                "40",
            ],
        ]
        .concat(),
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("  argon2 max memory: 1 GiB per verification"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  verifier: 3 expensive checks at once, 40 waiting at most"),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("  verifier worst-case memory: 6 GiB (6 x argon2 max memory: 3 for unknown"),
        "{stdout}"
    );
    let out = run(&[&base[..], &["--verify-concurrency", "0"]].concat(), "");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--verify-concurrency) must be at least 1"),
        "{}",
        text(&out.stderr)
    );

    // The TOML twin; without carol the default limit is printed.
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "argon2_max_memory = \"512M\"\n").unwrap();
    let cfg_flag = format!("--config={}", cfg.display());
    let out = run(&[&base[..], &[&cfg_flag]].concat(), "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("  argon2 max memory: 512 MiB per verification"),
        "{}",
        text(&out.stdout)
    );
    let text_now = std::fs::read_to_string(&users).unwrap();
    std::fs::write(
        &users,
        text_now.lines().take(2).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    let out = run(&base, "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("  argon2 max memory: 256 MiB per verification"),
        "{}",
        text(&out.stdout)
    );

    // A bare number is not a size.
    let out = run(
        &[&base[..], &["--argon2-max-memory", "262144"]].concat(),
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("argon2_max_memory `262144`: expected a size"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn hash_output_verifies() {
    for scheme in ["SHA512-CRYPT", "BLF-CRYPT", "SSHA256", "CRAM-MD5"] {
        let out = run(&["hash", "--scheme", scheme], "pässwörd %+:\n");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let line = text(&out.stdout);
        let stored = StoredPassword::parse(line.trim_end(), Scheme::Plain).unwrap();
        assert_eq!(stored.scheme().to_string(), scheme);
        assert!(stored.verify("pässwörd %+:".as_bytes()).unwrap());
    }
    let out = run(&["hash", "--scheme", "ROT13"], "x\n");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn user_admin_and_auth_test_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let db = db.to_str().unwrap();
    let user = |args: &[&str], stdin: &str| {
        let mut all = vec!["user", "--db", db];
        all.extend_from_slice(args);
        run(&all, stdin)
    };
    let ok = |o: Output| {
        assert!(o.status.success(), "{}", text(&o.stderr));
        o
    };
    ok(user(
        &["add", "alice@example.org", "--password-stdin"],
        "first pw\n",
    ));
    ok(user(
        &[
            "add",
            "bob@example.org",
            "--scheme",
            "PLAIN",
            "--password-stdin",
            "--upstream",
            "192.0.2.7:1143",
        ],
        "bob-pw\n",
    ));
    let dup = user(&["add", "alice@example.org", "--password-stdin"], "x\n");
    assert_eq!(dup.status.code(), Some(2));
    assert!(text(&dup.stderr).contains("exists"));
    ok(user(
        &["passwd", "alice@example.org", "--password-stdin"],
        "second pw\n",
    ));
    let list = text(&ok(user(&["list"], "")).stdout);
    assert!(
        list.contains("alice@example.org\t{SHA512-CRYPT}\tenabled\t-"),
        "{list}"
    );
    assert!(
        list.contains("bob@example.org\t{PLAIN}\tenabled\t192.0.2.7:1143"),
        "{list}"
    );
    assert!(!list.contains("bob-pw"), "list never prints secrets");

    let sqlite = format!("sqlite:{db}");
    let auth = |user: &str, method: &str, password: &str| {
        run(
            &[
                "auth",
                "test",
                user,
                "--protocol",
                "pop3",
                "--method",
                method,
                "--passdb",
                &sqlite,
                "--upstream",
                "pop3=127.0.0.1:110",
            ],
            &format!("{password}\n"),
        )
    };
    let out = auth("alice@example.org", "plain", "second pw");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let headers = text(&out.stdout);
    assert!(
        headers.contains("Auth-Status: OK") && headers.contains("Auth-Port: 110"),
        "{headers}"
    );
    assert!(headers.contains("Auth-Pass: <hidden>") && !headers.contains("second pw"));
    let out = auth("alice@example.org", "plain", "first pw");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("Auth-Status: Invalid login or password"));
    // APOP needs the plaintext: bob is {PLAIN} and routed to his own upstream.
    let out = auth("bob@example.org", "apop", "bob-pw");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Auth-Server: 192.0.2.7"));
    assert!(text(&out.stdout).contains("Auth-Port: 1143"));

    ok(user(&["disable", "bob@example.org"], ""));
    assert_eq!(
        auth("bob@example.org", "plain", "bob-pw").status.code(),
        Some(1)
    );
    ok(user(&["enable", "bob@example.org"], ""));
    assert!(auth("bob@example.org", "cram-md5", "bob-pw")
        .status
        .success());
    ok(user(&["del", "bob@example.org"], ""));
    assert_eq!(user(&["del", "bob@example.org"], "").status.code(), Some(2));
    assert_eq!(
        auth("bob@example.org", "plain", "bob-pw").status.code(),
        Some(1)
    );
}

#[test]
fn status_reads_metrics_from_the_running_service() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:{PLAIN}a::::::\n").unwrap();
    let daemon = admin_target(dir, &format!("passwd-file:{}", users.display()));
    let listen = format!("unix:{}", daemon.sock().display());
    let out = run(
        &[
            "status",
            "--listen",
            &listen,
            "--require-header",
            "X-Auth-Key=k",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let metrics = text(&out.stdout);
    assert!(
        metrics.contains("nginx_auth_fcgi_requests_total{protocol=\"imap\",result=\"ok\"} 0"),
        "{metrics}"
    );
    let denied = run(
        &[
            "status",
            "--listen",
            &listen,
            "--require-header",
            "X-Auth-Key=bad",
        ],
        "",
    );
    assert_eq!(denied.status.code(), Some(2));
    assert!(
        text(&denied.stderr).contains("403"),
        "{}",
        text(&denied.stderr)
    );

    // The throttle's admin view over the same socket. A guesser from
    // 203.0.113.9: ten different wrong passwords block the pair.
    for i in 0..10 {
        let status = mail_login(daemon.sock(), "alice", &format!("guess{i}"), "203.0.113.9");
        assert_eq!(status, "Invalid login or password");
    }
    assert_eq!(
        mail_login(daemon.sock(), "alice", "a", "203.0.113.9"),
        "Invalid login or password"
    );
    let conn = ["--listen", &listen, "--require-header", "X-Auth-Key=k"];
    let show = |who: &[&str]| {
        let out = run(&[&["throttle", "show"][..], who, &conn].concat(), "");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let shown = show(&["--ip", "203.0.113.9", "--user", "alice"]);
    assert!(
        shown.contains("user alice from there: 10 of 10 failures"),
        "{shown}"
    );
    assert!(
        shown.contains("block of ip 203.0.113.9 user alice: 900 s left"),
        "{shown}"
    );
    assert!(shown.contains("next login: refused"), "{shown}");
    let lifted = run(
        &[
            &[
                "throttle",
                "unblock",
                "--ip",
                "203.0.113.9",
                "--user",
                "alice",
            ][..],
            &conn,
        ]
        .concat(),
        "",
    );
    assert!(lifted.status.success(), "{}", text(&lifted.stderr));
    assert_eq!(
        text(&lifted.stdout),
        "unblocked ip 203.0.113.9 user alice\n"
    );
    assert_eq!(mail_login(daemon.sock(), "alice", "a", "203.0.113.9"), "OK");
    let shown = show(&["--ip", "127.0.0.1"]);
    assert!(
        shown.contains("never counted, delayed or blocked"),
        "{shown}"
    );
    // The shared secret guards it as it guards the metrics; a bad address
    // is a clear error.
    let denied = run(
        &[
            "throttle",
            "show",
            "--ip",
            "203.0.113.9",
            "--listen",
            &listen,
        ],
        "",
    );
    assert_eq!(denied.status.code(), Some(2));
    let bad = run(
        &[&["throttle", "show", "--ip", "nope"][..], &conn].concat(),
        "",
    );
    assert!(
        text(&bad.stderr).contains("not an IP address"),
        "{}",
        text(&bad.stderr)
    );
}

/// A daemon on `passdb` for the admin commands to ask: shared secret
/// `X-Auth-Key=k` (what [`mail_login`] sends), audit lines in its log.
pub(crate) fn admin_target(dir: tempfile::TempDir, passdb: &str) -> Daemon {
    admin_target_with(dir, passdb, &[])
}

/// [`admin_target`] with `more` flags after its own.
pub(crate) fn admin_target_with(dir: tempfile::TempDir, passdb: &str, more: &[&str]) -> Daemon {
    let mut args = vec![
        "--passdb",
        passdb,
        "--log",
        "stderr",
        "--require-header",
        "X-Auth-Key=k",
        "--upstream",
        "imap=127.0.0.1:1143",
    ];
    args.extend_from_slice(more);
    Daemon::start(dir, args)
}

/// One mail login over FastCGI, as nginx sends it; the Auth-Status.
pub(crate) fn mail_login(sock: &std::path::Path, user: &str, pass: &str, ip: &str) -> String {
    use std::io::Read;
    let mut pairs = fcgi::mail_pairs(user.as_bytes(), pass.as_bytes(), ip.as_bytes());
    pairs.push((b"HTTP_X_AUTH_KEY", b"k"));
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.write_all(&fcgi::request(1, 0, &pairs, b"")).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    fcgi::reply_from_bytes(&reply, 1)
        .header("Auth-Status")
        .unwrap_or_default()
}

#[test]
fn man_page_covers_every_subcommand() {
    let out = run(&["man"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH nginx-auth-fcgi 1"),
        "{page}"
    );
    for sub in [
        "SERVE",
        "CHECK-CONFIG",
        "STATUS",
        "THROTTLE",
        "HASH",
        "AUTH",
        "USER",
        "CACHE",
    ] {
        assert!(
            page.contains(&format!(".SH \"NGINX-AUTH-FCGI {sub}\"")),
            "{sub} missing"
        );
    }
    assert!(page.contains("require\\-header"), "flags are listed");
}
