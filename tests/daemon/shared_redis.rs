//! The daemon's shared state in a real Redis over TLS (`rediss://`, with
//! certificates made by openssl) and behind real `redis-sentinel`s with a
//! failover: throttle blocks made through one instance are seen by another
//! and stored in that Redis; a server that does not verify is refused with
//! a clear log line while the daemon goes on in memory; a killed master is
//! followed to the promoted replica.

use std::path::Path;
use std::time::{Duration, Instant};

use md5::{Digest as _, Md5};
use nginx_auth_fcgi::http_auth::shared_nc;

use crate::cli::{admin_target_with, mail_login};
use crate::common::daemon::{run_cli, Daemon};
use crate::common::fcgi;
use crate::common::proc::wait_until;
use crate::common::redis::{ClientAuth, Passwords, Redis, RedisTls, SentinelSet};

/// A guesser's address (never trusted).
const GUESSER: &str = "203.0.113.9";
/// A client logging in with the right password.
const CLIENT: &str = "198.51.100.7";
const REFUSED: &str = "Invalid login or password";
/// Generous upper bounds so nothing can hang; not speed assertions.
const WAIT: Duration = Duration::from_secs(60);

/// `serve` with users alice/a, bob/b, carol/c and `state` (the `--state…`
/// flags).
fn start(state: &[&str]) -> Daemon {
    let dir = Daemon::open_dir();
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        "alice:{PLAIN}a::::::\nbob:{PLAIN}b::::::\ncarol:{PLAIN}c::::::\n",
    )
    .unwrap();
    let passdb = format!("passwd-file:{}", users.display());
    admin_target_with(dir, &passdb, state)
}

/// Ten different wrong passwords: the pair (ip, user) is blocked.
fn guess(d: &Daemon, user: &str, ip: &str) {
    for i in 0..10 {
        assert_eq!(
            mail_login(d.sock(), user, &format!("guess{i}"), ip),
            REFUSED
        );
    }
}

/// `throttle show --ip IP --user USER` through `d`'s socket.
fn show(d: &Daemon, user: &str, ip: &str) -> String {
    let listen = format!("unix:{}", d.sock().display());
    let out = run_cli(
        [
            "throttle",
            "show",
            "--ip",
            ip,
            "--user",
            user,
            "--listen",
            &listen,
            "--require-header",
            "X-Auth-Key=k",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `d` reports (ip, user) blocked, and refuses even the right password.
#[track_caller]
fn assert_blocked(d: &Daemon, user: &str, pass: &str, ip: &str) {
    let shown = show(d, user, ip);
    assert!(
        shown.contains(&format!("block of ip {ip} user {user}:")),
        "{shown}\n--- log ---\n{}",
        d.log()
    );
    assert_eq!(mail_login(d.sock(), user, pass, ip), REFUSED);
}

/// The log lines of `d` containing `what`.
fn lines(d: &Daemon, what: &str) -> Vec<String> {
    d.log()
        .lines()
        .filter(|l| l.contains(what))
        .map(str::to_owned)
        .collect()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `--state URL --state-ca-file CA` and, with `client`, our certificate.
fn tls_state<'a>(url: &'a str, ca: &'a Path, tls: &'a RedisTls, client: bool) -> Vec<&'a str> {
    let mut state = vec!["--state", url, "--state-ca-file", p(ca)];
    if client {
        state.extend([
            "--state-cert-file",
            p(&tls.client.1),
            "--state-key-file",
            p(&tls.client.0),
        ]);
    }
    state
}

#[test]
fn rediss_with_a_client_certificate_carries_blocks_between_instances() {
    let tls = RedisTls::make();
    let redis = Redis::start_tls(&tls, ClientAuth::Required);
    let url = redis.url();
    let state = tls_state(&url, &tls.ca.1, &tls, true);
    let (a, b) = (start(&state), start(&state));
    assert!(redis.our_keys().is_empty());
    guess(&a, "alice", GUESSER);
    // Made through a, seen by b: the block lives in that Redis.
    assert_blocked(&b, "alice", "a", GUESSER);
    let keys = redis.our_keys();
    assert!(
        keys.iter().any(|k| k == "nginx-auth-fcgi:dedup-key"),
        "{keys:?}"
    );
    assert_eq!(mail_login(b.sock(), "bob", "b", CLIENT), "OK");
    for d in [&a, &b] {
        assert!(lines(d, "unreachable").is_empty(), "{}", d.log());
    }
    // check-config reads the same files and finds nothing to refuse.
    let out = run_cli([&["check-config"][..], &state].concat(), "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rediss_without_a_client_certificate_where_none_is_required() {
    let tls = RedisTls::make();
    let redis = Redis::start_tls(&tls, ClientAuth::Optional);
    let url = redis.url();
    let d = start(&tls_state(&url, &tls.ca.1, &tls, false));
    guess(&d, "alice", GUESSER);
    assert_blocked(&d, "alice", "a", GUESSER);
    assert!(!redis.our_keys().is_empty());
    assert!(lines(&d, "unreachable").is_empty(), "{}", d.log());
}

#[test]
fn a_server_that_does_not_verify_is_refused_and_memory_is_used() {
    let tls = RedisTls::make();
    let redis = Redis::start_tls(&tls, ClientAuth::Required);
    let url = redis.url();
    let cases = [
        // The server's certificate is not from this CA.
        (
            tls_state(&url, &tls.other_ca.1, &tls, true),
            "invalid peer certificate: UnknownIssuer",
        ),
        // The server wants a client certificate and gets none.
        (
            tls_state(&url, &tls.ca.1, &tls, false),
            "CertificateRequired",
        ),
    ];
    for (state, reason) in cases {
        let d = start(&state);
        // Still a decision, on this instance's own state: never open, never down.
        assert_eq!(mail_login(d.sock(), "bob", "b", CLIENT), "OK");
        assert_eq!(mail_login(d.sock(), "bob", "wrong", CLIENT), REFUSED);
        guess(&d, "alice", GUESSER);
        assert_blocked(&d, "alice", "a", GUESSER);
        let lost = lines(&d, "throttle: shared state unreachable (");
        assert_eq!(lost.len(), 1, "logged once: {}", d.log());
        assert!(lost[0].contains(reason), "{}", lost[0]);
        assert!(
            lost[0].contains("using this instance's own counts"),
            "{}",
            lost[0]
        );
        println!("{state:?}: {}", lost[0]);
    }
    assert!(redis.our_keys().is_empty());
    // A certificate file that is not one is refused before anything starts.
    let out = run_cli(
        [
            "check-config",
            "--state",
            &url,
            "--state-ca-file",
            p(&tls.client.0),
        ],
        "",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("state_ca_file"), "{err}");
}

#[test]
fn check_config_warns_about_a_key_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let tls = RedisTls::make();
    let key = tls.dir().join("open.key");
    std::fs::copy(&tls.client.0, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let check = |key: &Path| {
        run_cli(
            [
                "check-config",
                "--state",
                "rediss://127.0.0.1:1/",
                "--state-cert-file",
                p(&tls.client.1),
                "--state-key-file",
                p(key),
            ],
            "",
        )
    };
    let out = check(&key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("warning: state key file"), "{said}");
    let out = check(&tls.client.0);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("state key file"), "{said}");
    // A certificate without its key is refused.
    let out = run_cli(
        [
            "check-config",
            "--state",
            "rediss://127.0.0.1:1/",
            "--state-cert-file",
            p(&tls.client.1),
        ],
        "",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state_cert_file needs state_key_file"),
        "{err}"
    );
}

const REALM: &str = "Shared";

/// An HTTP Digest `auth_request` for `/x` to `d`'s socket (MD5, the realm
/// above), as nginx sends it with its own `AUTH_REQUEST_ID`; the status and
/// the `WWW-Authenticate` of the reply.
fn digest_request(d: &Daemon, authorization: Option<&str>, id: &str) -> (String, String) {
    let mut pairs: Vec<(&[u8], &[u8])> = vec![
        (b"REQUEST_METHOD", b"GET"),
        (b"REQUEST_URI", b"/x"),
        (b"REMOTE_ADDR", CLIENT.as_bytes()),
        (b"AUTH_REALM", REALM.as_bytes()),
        (b"AUTH_SCHEMES", b"digest"),
        (b"AUTH_DIGEST_ALGORITHMS", b"MD5"),
        (b"AUTH_REQUEST_ID", id.as_bytes()),
        (b"HTTP_X_AUTH_KEY", b"k"),
    ];
    if let Some(a) = authorization {
        pairs.push((b"HTTP_AUTHORIZATION", a.as_bytes()));
    }
    let reply = fcgi::exchange(d.sock(), &pairs);
    (
        reply.header("Status").unwrap_or_default(),
        reply.header("WWW-Authenticate").unwrap_or_default(),
    )
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// A nonce from `d`'s challenge.
fn nonce_from(d: &Daemon) -> String {
    let (status, www) = digest_request(d, None, "challenge");
    assert!(status.starts_with("401"), "{status} {www}");
    let start = www.find("nonce=\"").expect("a nonce") + 7;
    www[start..start + www[start..].find('"').unwrap()].to_owned()
}

/// alice's (password `a`) Authorization for `nonce`, `cnonce`, nc 1,
/// computed here (RFC 7616 §3.4.1, MD5, qop=auth).
fn alice_digest(nonce: &str, cnonce: &str) -> String {
    let ha1 = md5_hex(&format!("alice:{REALM}:a"));
    let ha2 = md5_hex("GET:/x");
    let response = md5_hex(&format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"alice\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"/x\", \
         algorithm=MD5, qop=auth, nc=00000001, cnonce=\"{cnonce}\", response=\"{response}\""
    )
}

/// Whether `master` holds a Digest count of 1 for (nonce, cnonce): `1`, or
/// `1 REQUEST-HASH` as the daemon stores it.
fn count_in(master: &Redis, nonce: &str, cnonce: &str) -> bool {
    let stored = master.cli(&["GET", &shared_nc::key(nonce, cnonce)]);
    stored.split_whitespace().next() == Some("1")
}

/// A Digest login with a fresh `cnonce` on each of `a` and `b`, which must
/// pass whatever Redis does. When both counts are in `master` (the Redis the
/// sentinels name; both instances' Digest connections use it then), a's
/// header is replayed to `b` in another client request and must be refused
/// as a replay: true. False while a count is not there yet.
fn digest_then_replay(a: &Daemon, b: &Daemon, nonce: &str, cnonce: &str, master: &Redis) -> bool {
    let mut in_master = true;
    let mut header = String::new();
    for (d, tag) in [(b, "b"), (a, "a")] {
        let cnonce = format!("{cnonce}-{tag}");
        header = alice_digest(nonce, &cnonce);
        let (status, www) = digest_request(d, Some(&header), &cnonce);
        assert!(
            status.starts_with("200"),
            "Digest login on {tag}: {status} {www}"
        );
        in_master &= count_in(master, nonce, &cnonce);
    }
    if !in_master {
        return false;
    }
    let (status, www) = digest_request(b, Some(&header), &format!("{cnonce}-replay"));
    assert!(
        status.starts_with("401") && www.contains("stale=true"),
        "a's Digest header replayed to b: {status} {www}"
    );
    true
}

#[test]
fn sentinel_failover_is_followed_and_blocks_keep_working() {
    let mut set = SentinelSet::start(2);
    let url = set.url();
    let keydir = tempfile::tempdir().unwrap();
    let key = keydir.path().join("nonce.key");
    let init = run_cli(["nonce-key", "init", key.to_str().unwrap()], "");
    assert!(init.status.success(), "nonce-key init: {init:?}");
    let flags = ["--state", &url, "--nonce-key-file", key.to_str().unwrap()];
    let (a, b) = (start(&flags), start(&flags));
    guess(&a, "alice", GUESSER);
    assert_blocked(&b, "alice", "a", GUESSER);
    // Digest counts are shared through the master too.
    let nonce = nonce_from(&b);
    assert!(
        digest_then_replay(&a, &b, &nonce, "before", set.master()),
        "the count is in the master"
    );
    let old = set.master().port;
    assert!(!set.master().our_keys().is_empty());
    let first = format!("Sentinel master `mymaster` is 127.0.0.1:{old}");
    // One line per user of the state: the throttle and the Digest counts.
    assert_eq!(lines(&a, &first).len(), 2, "{}", a.log());

    // What the master holds is on the replica too, then the master dies.
    set.wait_replicated();
    let killed = Instant::now();
    assert_eq!(set.kill_master(), old);
    let (new, promoted) = set.wait_for_failover(old, WAIT);
    println!("sentinels promoted 127.0.0.1:{new} {promoted:?} after 127.0.0.1:{old} was killed");

    // Each daemon follows on its next use of Redis, and says so.
    let moved = format!("moved from 127.0.0.1:{old} to 127.0.0.1:{new}");
    for d in [&a, &b] {
        wait_until(&format!("the daemon to log `{moved}`"), WAIT, || {
            assert_eq!(mail_login(d.sock(), "carol", "c", CLIENT), "OK");
            std::thread::sleep(Duration::from_millis(200));
            !lines(d, &moved).is_empty()
        });
        println!(
            "followed {:?} after the kill: {}",
            killed.elapsed(),
            lines(d, &moved)[0]
        );
        assert!(
            lines(d, &moved)[0].contains(" s after 127.0.0.1:"),
            "{}",
            d.log()
        );
        assert_eq!(
            lines(d, "throttle: shared state unreachable (").len(),
            1,
            "{}",
            d.log()
        );
        assert_eq!(
            lines(d, "throttle: shared state reachable again").len(),
            1,
            "{}",
            d.log()
        );
    }
    // The block made before the failover was replicated and still holds;
    // new blocks go to the new master and are shared.
    assert_blocked(&a, "alice", "a", GUESSER);
    let before = set.master().our_keys().len();
    guess(&b, "bob", "203.0.113.10");
    assert_blocked(&a, "bob", "b", "203.0.113.10");
    assert_eq!(set.master().port, new);
    assert!(set.master().our_keys().len() > before);

    // Digest counts follow the failover too: every login passes meanwhile
    // (each instance's own counts, logged once), and within the bound both
    // instances' counts reach the new master and b refuses a's header.
    let mut round = 0;
    wait_until("Digest counts on the new master", WAIT, || {
        round += 1;
        let shared = digest_then_replay(&a, &b, &nonce, &format!("after-{round}"), set.master());
        if !shared {
            std::thread::sleep(Duration::from_millis(200));
        }
        shared
    });
    println!(
        "Digest counts on the new master {:?} after the kill ({round} rounds)",
        killed.elapsed()
    );
    for d in [&a, &b] {
        // The throttle's connection and the Digest counts' each follow.
        assert!(
            lines(d, &moved).len() >= 2,
            "both users of the state followed: {}",
            d.log()
        );
    }

    // The old master comes back as a replica; a manual failover promotes
    // it again and demotes the master the daemons use, which does not die
    // but refuses writes (READONLY) or drops its clients: followed too.
    set.restart(old);
    set.wait_replicated();
    assert_eq!(set.failover(), new);
    let (back, promoted) = set.wait_for_failover(new, WAIT);
    assert_eq!(back, old);
    println!("sentinels promoted 127.0.0.1:{old} again {promoted:?} after SENTINEL FAILOVER");
    let moved = format!("moved from 127.0.0.1:{new} to 127.0.0.1:{old}");
    for d in [&a, &b] {
        wait_until(&format!("the daemon to log `{moved}`"), WAIT, || {
            guess(d, "carol", "203.0.113.11");
            std::thread::sleep(Duration::from_millis(200));
            !lines(d, &moved).is_empty()
        });
        let failed = lines(d, &format!("at 127.0.0.1:{new} failed ("));
        println!("{}\n{}", failed[0], lines(d, &moved)[0]);
    }
    assert_blocked(&a, "carol", "c", "203.0.113.11");
    assert_blocked(&b, "bob", "b", "203.0.113.10");
}

#[test]
fn sentinel_and_servers_with_passwords_of_their_own() {
    let set = SentinelSet::start_with(
        1,
        Passwords {
            data: Some("p@ss/w".into()),
            sentinel: Some("s&cret".into()),
        },
    );
    let port = set.sentinels[0].port;
    // Percent-encoded as the URL needs; database 1.
    let url = format!(
        "redis+sentinel://:p%40ss%2Fw@127.0.0.1:{port}/mymaster/1?sentinel_password=s%26cret"
    );
    let d = start(&["--state", &url]);
    guess(&d, "alice", GUESSER);
    assert_blocked(&d, "alice", "a", GUESSER);
    let master = set.master();
    assert!(master.our_keys().is_empty(), "database 0 is not ours");
    let in_db1 = master.cli(&["-n", "1", "--scan", "--pattern", "nginx-auth-fcgi:*"]);
    assert!(in_db1.contains("nginx-auth-fcgi:dedup-key"), "{in_db1}");
    assert!(lines(&d, "unreachable").is_empty(), "{}", d.log());
    assert!(
        !d.log().contains("p@ss") && !d.log().contains("s&cret"),
        "{}",
        d.log()
    );

    // A wrong sentinel password: no master, the fallback, still decisions.
    let wrong =
        format!("redis+sentinel://:p%40ss%2Fw@127.0.0.1:{port}/mymaster/1?sentinel_password=nope");
    let d = start(&["--state", &wrong]);
    assert_eq!(mail_login(d.sock(), "bob", "b", CLIENT), "OK");
    guess(&d, "carol", GUESSER);
    assert_blocked(&d, "carol", "c", GUESSER);
    let lost = lines(
        &d,
        "throttle: shared state unreachable (Sentinel: no usable master `mymaster`: ",
    );
    assert_eq!(lost.len(), 1, "{}", d.log());
    println!("{}", lost[0]);
}
