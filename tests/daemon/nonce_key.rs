//! The Digest nonce key file through the binary: `nonce-key init` (0600, an
//! existing file left alone), `check-config` and `serve` refusing a short
//! or exposed key by name, and SIGHUP re-reading it (a new key retires the
//! nonces of the old one; a broken one is refused and the old key stays).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use nginx_auth_fcgi::http_auth::digest::Credentials;

use crate::common::daemon::{run_cli, Daemon};
use crate::common::fcgi;
use crate::common::proc::wait_until;

const PW: &str = "Circle of Life";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Exit code 2 with `message` on stderr.
#[track_caller]
fn refused(out: &std::process::Output, message: &str) {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains(message), "{}", text(&out.stderr));
}

#[test]
fn init_check_config_and_serve_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("nonce.key");
    let k = key.display().to_string();
    let out = run_cli(["nonce-key", "init", &k], "");
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).starts_with(&format!("created {k} (mode 0600)")),
        "{out:?}"
    );
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    let first = std::fs::read(&key).unwrap();
    let again = run_cli(["nonce-key", "init", &k], "");
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        text(&again.stdout),
        format!("{k} exists; left as it is (not read, not changed)\n")
    );
    assert_eq!(std::fs::read(&key).unwrap(), first, "not overwritten");

    let users = dir.path().join("users");
    std::fs::write(&users, format!("alice:{{PLAIN}}{PW}\n")).unwrap();
    let passdb = format!("passwd-file:{}", users.display());
    let check = || {
        run_cli(
            ["check-config", "--passdb", &passdb, "--nonce-key-file", &k],
            "",
        )
    };
    let ok = check();
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        text(&ok.stdout).contains(&format!(
            "  digest nonces: key from {k}; highest nc in this process\n"
        )),
        "{}",
        text(&ok.stdout)
    );
    chmod(&key, 0o640);
    refused(
        &check(),
        &format!("nonce_key_file {k}: mode 0640 lets group or others read or write the key"),
    );
    let short = dir.path().join("short.key");
    std::fs::write(&short, "00112233445566778899aabbccddeeff\n").unwrap();
    chmod(&short, 0o600);
    let s = short.display().to_string();
    // serve refuses to start on it, naming the file (exit 2, nothing bound).
    let serve = run_cli(
        [
            "serve",
            "--listen",
            &format!("unix:{}/auth.sock", dir.path().display()),
            "--passdb",
            &passdb,
            "--nonce-key-file",
            &s,
        ],
        "",
    );
    refused(
        &serve,
        &format!("nonce_key_file {s}: the key is 16 bytes; at least 32 are needed"),
    );
    assert!(!dir.path().join("auth.sock").exists());
}

/// Params of an auth location (MD5 only, so the test computes responses
/// with one hash), with `authorization` when given.
fn ask(d: &Daemon, authorization: Option<&str>, id: &str) -> fcgi::Reply {
    let mut pairs: Vec<(&[u8], &[u8])> = vec![
        (b"REQUEST_METHOD", b"GET"),
        (b"REQUEST_URI", b"/p/x"),
        (b"AUTH_REALM", b"R"),
        (b"AUTH_SCHEMES", b"digest"),
        (b"AUTH_DIGEST_ALGORITHMS", b"MD5"),
        (b"AUTH_REQUEST_ID", id.as_bytes()),
    ];
    if let Some(a) = authorization {
        pairs.push((b"HTTP_AUTHORIZATION", a.as_bytes()));
    }
    fcgi::exchange(d.sock(), &pairs)
}

/// A fresh nonce from a challenge.
fn challenge(d: &Daemon, id: &str) -> String {
    let www = ask(d, None, id).header("WWW-Authenticate").unwrap();
    let start = www.find("nonce=\"").unwrap() + 7;
    www[start..start + www[start..].find('"').unwrap()].to_owned()
}

/// An Authorization header for `nonce` and `nc`, the response computed by
/// the crate's Digest code (RFC-vector tested in its unit tests).
fn authorization(nonce: &str, nc: u32) -> String {
    let head = format!(
        "username=\"alice\", realm=\"R\", nonce=\"{nonce}\", uri=\"/p/x\", algorithm=MD5, \
         nc={nc:08x}, cnonce=\"cn\", qop=auth"
    );
    let c = Credentials::parse(&format!("{head}, response=\"{}\"", "0".repeat(32))).unwrap();
    format!(
        "Digest {head}, response=\"{}\"",
        c.expected(PW.as_bytes(), "GET")
    )
}

#[test]
fn sighup_rereads_the_key_file() {
    let dir = Daemon::open_dir();
    let users = dir.path().join("users");
    std::fs::write(&users, format!("alice:{{PLAIN}}{PW}\n")).unwrap();
    let key = dir.path().join("nonce.key");
    let k = key.display().to_string();
    assert!(run_cli(["nonce-key", "init", &k], "").status.success());
    let mut d = Daemon::start(
        dir,
        [
            "--log",
            "stderr",
            "--no-throttle",
            "--passdb",
            &format!("passwd-file:{}", users.display()),
            "--nonce-key-file",
            &k,
        ],
    );
    let old = challenge(&d, "c1");
    let ok = ask(&d, Some(&authorization(&old, 1)), "a1");
    assert_eq!(ok.header("Status").as_deref(), Some("200 OK"));
    assert!(ok
        .header("Authentication-Info")
        .is_some_and(|v| v.contains("rspauth=\"")));

    // A new key: the old nonce is no longer ours (a new challenge, not stale).
    let fresh = key.with_extension("new");
    assert!(
        run_cli(["nonce-key", "init", &fresh.display().to_string()], "")
            .status
            .success()
    );
    std::fs::rename(&fresh, &key).unwrap();
    let reloads = |d: &Daemon, what: &str| d.log().matches(what).count();
    assert!(d.signal(libc::SIGHUP));
    wait_until("the reload", Duration::from_secs(10), || {
        reloads(&d, "configuration reloaded") == 1
    });
    let refused = ask(&d, Some(&authorization(&old, 2)), "a2");
    assert_eq!(
        refused.header("Status").as_deref(),
        Some("401 Unauthorized")
    );
    assert!(!refused
        .header("WWW-Authenticate")
        .unwrap()
        .contains("stale"));
    let new = challenge(&d, "c2");
    let ok = ask(&d, Some(&authorization(&new, 1)), "a3");
    assert_eq!(ok.header("Status").as_deref(), Some("200 OK"));

    // An exposed key file: the reload is refused, the key in use stays.
    chmod(&key, 0o644);
    assert!(d.signal(libc::SIGHUP));
    wait_until("the refused reload", Duration::from_secs(10), || {
        reloads(&d, "reload rejected") == 1
    });
    assert!(
        d.log()
            .contains(&format!("reload: nonce_key_file {k}: mode 0644")),
        "{}",
        d.log()
    );
    let ok = ask(&d, Some(&authorization(&new, 2)), "a4");
    assert_eq!(ok.header("Status").as_deref(), Some("200 OK"));
    d.assert_alive();
}
