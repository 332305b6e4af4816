//! HTTP Digest across two instances, end to end: ONE nginx running the
//! shipped `nginx-conf/http-auth.conf` whose upstream holds two daemons
//! (round-robin, keepalive, `fastcgi_keep_conn on`), both with the same
//! passwd-file, the same `--nonce-key-file` and the same `--state` in a real
//! `redis-server`. Clients: python3-requests (one session, nonce reused,
//! `rspauth` recomputed by the client), `curl --digest` (a challenge per
//! URL), captured headers replayed to each instance's socket directly, and
//! Redis killed mid-run.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::daemon::Daemon;
use crate::common::e2e::{free_ports, require};
use crate::common::fcgi;
use crate::common::proc::{port_open, require_file, Proc};
use crate::common::redis::Redis;

use super::http::{daemon_args, http_clients, render, Fetched, ALICE_PW as PW, KEY};

const REALM: &str = "Private area";
/// The fallback line of the Digest counts (src/http_auth/shared_nc.rs).
const LOST: &str = "digest: shared nonce counts unreachable";
const OK_LINE: &str = "auth result=ok protocol=http method=digest user=alice ";

struct Pool {
    port: u16,
    nginx: Proc,
    daemons: Vec<Daemon>,
    redis: Redis,
    dir: tempfile::TempDir,
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

impl Pool {
    fn start() -> Pool {
        let nginx_bin = require("nginx", "nginx-full");
        require_file("/usr/bin/python3", "python3");
        require_file(
            "/usr/lib/python3/dist-packages/requests",
            "python3-requests",
        );
        let redis = Redis::start();
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let p = |rel: &str| dir.path().join(rel);
        for sub in ["www", "www/private", "www/legacy"] {
            fs::create_dir_all(p(sub)).unwrap();
            chmod(&p(sub), 0o755);
        }
        for i in 0..50 {
            for prefix in ["p", "c", "q"] {
                let f = p(&format!("www/private/{prefix}{i}.txt"));
                fs::write(&f, format!("page {prefix}{i}\n")).unwrap();
                chmod(&f, 0o644);
            }
        }
        // `/private/` is served by its index file through an internal
        // redirect, which runs the auth subrequest again: nginx may send
        // the second to the other instance.
        let index = p("www/private/index.html");
        fs::write(&index, "the private index\n").unwrap();
        chmod(&index, 0o644);
        fs::write(p("users"), format!("alice:{{PLAIN}}{PW}::::::\n")).unwrap();
        fs::copy("/etc/nginx/fastcgi_params", p("fastcgi_params"))
            .expect("fastcgi_params (nginx-common)");
        let key = p("nonce.key");
        let init = Command::new(crate::common::e2e::daemon_bin())
            .args(["nonce-key", "init"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(init.status.success(), "nonce-key init: {init:?}");
        let daemons: Vec<Daemon> = (0..2)
            .map(|_| {
                let mut args = daemon_args(&p("users"));
                args.extend([
                    "--nonce-key-file".into(),
                    key.display().to_string(),
                    "--state".into(),
                    redis.url(),
                ]);
                Daemon::start(Daemon::open_dir(), args)
            })
            .collect();
        let [port] = free_ports::<1>();
        let socks: Vec<&Path> = daemons.iter().map(Daemon::sock).collect();
        let conf = render(dir.path(), port, &socks);
        assert!(
            conf.contains(&format!(
                "server unix:{}; server unix:{};",
                socks[0].display(),
                socks[1].display()
            )),
            "one upstream of both instances"
        );
        fs::write(p("nginx.conf"), conf).unwrap();
        let mut cmd = Command::new(nginx_bin);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(p("nginx.conf"))
            .args(["-g", "daemon off;"]);
        let mut nginx = Proc::spawn("nginx", &mut cmd, &p("nginx.out"));
        nginx.wait_for("its port", Duration::from_secs(10), || port_open(port));
        Pool {
            port,
            nginx,
            daemons,
            redis,
            dir,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One python3-requests session fetching `paths` in order.
    fn requests(&self, paths: &[String]) -> Vec<Fetched> {
        let mut args = vec![self.base(), "alice".into(), PW.into()];
        args.extend(paths.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        http_clients("requests", &args).results
    }

    /// One `curl --digest` invocation fetching `paths` (a challenge per
    /// URL): the final status of each, and curl's output.
    fn curl_digest(&self, paths: &[String]) -> (Vec<String>, std::process::Output) {
        let mut curl = Command::new(require("curl", "curl"));
        curl.args(["-s", "--max-time", "20", "--digest", "-u"])
            .arg(format!("alice:{PW}"))
            .args(["-w", "%{http_code}\\n"]);
        for path in paths {
            curl.args(["-o", "/dev/null"])
                .arg(format!("{}{path}", self.base()));
        }
        let out = curl.output().expect("run curl");
        let codes = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        (codes, out)
    }

    /// How often `what` occurs in each daemon's log.
    fn counts(&self, what: &str) -> Vec<usize> {
        self.daemons
            .iter()
            .map(|d| d.log().matches(what).count())
            .collect()
    }

    /// `header` for `path` sent straight to daemon `i`'s socket, with the
    /// params of the shipped `/_auth/private` and a request id of its own
    /// (another client request, as a replay is); the reply's status line
    /// and `WWW-Authenticate`.
    fn direct(&self, i: usize, path: &str, header: &str, id: &str) -> (String, String) {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b"REQUEST_METHOD", b"GET"),
            (b"REQUEST_URI", path.as_bytes()),
            (b"REMOTE_ADDR", b"127.0.0.1"),
            (b"AUTH_REALM", REALM.as_bytes()),
            (b"AUTH_SCHEMES", b"digest basic"),
            (b"AUTH_DIGEST_ALGORITHMS", b"SHA-256 MD5"),
            (b"AUTH_NONCE_LIFETIME", b"300"),
            (b"AUTH_USERHASH", b"on"),
            (b"AUTH_REQUEST_ID", id.as_bytes()),
            (b"HTTP_X_AUTH_KEY", KEY.as_bytes()),
            (b"HTTP_AUTHORIZATION", header.as_bytes()),
        ];
        let reply = fcgi::exchange(self.daemons[i].sock(), &pairs);
        (
            reply.header("Status").unwrap_or_default(),
            reply.header("WWW-Authenticate").unwrap_or_default(),
        )
    }

    /// Every header of `fetched` sent to daemon `i` is refused as a replay
    /// (401 with `stale=true`: the nonce is ours and the response right, only
    /// the count is used).
    fn assert_replays_refused(&self, i: usize, fetched: &[&Fetched], tag: &str) {
        for (n, f) in fetched.iter().enumerate() {
            let (status, www) = self.direct(i, &f.path, &f.authorization, &format!("{tag}-{n}"));
            assert!(
                status.starts_with("401") && www.contains("stale=true"),
                "{tag}: replay of {} to instance {i}: {status} {www}",
                f.path
            );
        }
    }

    /// Which daemon accepted the request for `path` (its audit line).
    fn served_by(&self, path: &str) -> usize {
        let who: Vec<usize> = (0..2)
            .filter(|&i| {
                self.daemons[i]
                    .log()
                    .lines()
                    .any(|l| l.contains(OK_LINE) && l.contains(&format!(" uri={path}")))
            })
            .collect();
        assert_eq!(
            who.len(),
            1,
            "{path} accepted by exactly one instance: {who:?}"
        );
        who[0]
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.nginx.stop();
        if std::thread::panicking() {
            let log = fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
            eprintln!("--- nginx error.log\n{log}");
            for (i, d) in self.daemons.iter().enumerate() {
                eprintln!("--- daemon {i} log\n{}", d.log());
            }
        }
    }
}

fn paths(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("/private/{prefix}{i}.txt"))
        .collect()
}

/// Two instances act as one for Digest: requests reuses one nonce across
/// both without a second challenge, curl gets every URL, both serve, every
/// `rspauth` checks out, a captured header is refused by both instances, and
/// with Redis killed each instance still refuses what it saw itself while
/// fresh logins go on (the loss logged once per instance).
#[test]
fn two_instances_behind_one_upstream_act_as_one() {
    let mut pool = Pool::start();

    // python3-requests: one session, 50 pages; the nonce of the first
    // challenge serves all of them, on whichever instance nginx picks.
    let p = paths("p", 50);
    let got = pool.requests(&p);
    assert_eq!(got.len(), 50);
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f.status, Some(200), "requests {}: {f:?}", f.path);
        assert_eq!(f.body, format!("page p{i}\n"));
        assert_eq!(
            f.challenges,
            usize::from(i == 0),
            "requests {}: only the first request is challenged",
            f.path
        );
        assert_eq!(f.rspauth.as_deref(), Some("ok"), "rspauth of {}", f.path);
        assert!(!f.nextnonce, "a fresh nonce has no nextnonce: {f:?}");
    }
    let served = pool.counts(OK_LINE);
    assert!(
        served.iter().all(|&n| n > 0) && served.iter().sum::<usize>() == 50,
        "both instances served the session: {served:?}"
    );

    // curl --digest: 50 URLs in one invocation, each challenged afresh.
    let (codes, out) = pool.curl_digest(&paths("c", 50));
    assert_eq!(codes, vec!["200"; 50], "curl --digest: {out:?}");
    let served = pool.counts(OK_LINE);
    assert_eq!(served.iter().sum::<usize>(), 100, "{served:?}");

    // A directory URL: its two auth subrequests (one client request, one
    // AUTH_REQUEST_ID) may land on both instances; the second must get the
    // first's verdict, not a replay refusal. Ten times, so both orders occur.
    let (codes, out) = pool.curl_digest(&vec!["/private/".to_owned(); 10]);
    assert_eq!(codes, vec!["200"; 10], "curl --digest /private/: {out:?}");
    let dir_pages = pool.requests(&vec!["/private/".to_owned(); 10]);
    for f in &dir_pages {
        assert_eq!(f.status, Some(200), "requests /private/: {f:?}");
        assert_eq!(f.body, "the private index\n");
    }
    let dir_served = pool.counts(OK_LINE);
    assert!(
        dir_served.iter().sum::<usize>() >= 120,
        "every directory request decided: {dir_served:?}"
    );
    assert_eq!(
        pool.counts("nc replayed"),
        [0, 0],
        "no subrequest of one client request refused as a replay"
    );

    // nginx passes Authentication-Info on for Digest, and adds no (empty)
    // header for Basic: `add_header` skips an empty value.
    let headers = |auth: &str| {
        let out = Command::new(require("curl", "curl"))
            .args(["-s", "-i", "--max-time", "10", auth, "-u"])
            .arg(format!("alice:{PW}"))
            .arg(format!("{}/private/c1.txt", pool.base()))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let last = text
            .rsplit("HTTP/1.1 ")
            .next()
            .unwrap_or_default()
            .to_owned();
        last
    };
    let digest = headers("--digest");
    assert!(digest.starts_with("200"), "{digest}");
    let info: Vec<&str> = digest
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("authentication-info:"))
        .collect();
    assert_eq!(info.len(), 1, "{digest}");
    assert!(
        info[0].contains("rspauth=\"") && info[0].contains("qop=auth, nc=00000001, cnonce=\""),
        "{}",
        info[0]
    );
    let basic = headers("--basic");
    assert!(basic.starts_with("200"), "{basic}");
    assert!(
        !basic.to_ascii_lowercase().contains("authentication-info"),
        "no empty header for Basic: {basic}"
    );

    // The counts are in Redis, under hashed keys of one size.
    let keys = pool.redis.cmd(&["KEYS", "nginx-auth-fcgi:digest-nc:*"]);
    let n: usize = keys.trim_start_matches('*').parse().unwrap();
    assert!(n >= 100, "one shared count per (nonce, cnonce): {keys}");

    // A control: the direct path is a well-formed request (Basic passes).
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("alice:{PW}")
        )
    );
    for i in 0..2 {
        assert!(pool
            .direct(i, "/private/p0.txt", &basic, &format!("basic-{i}"))
            .0
            .starts_with("200"));
    }
    // Every header requests used, replayed to BOTH instances (one of which
    // never saw it): refused everywhere.
    let all: Vec<&Fetched> = got.iter().collect();
    for i in 0..2 {
        pool.assert_replays_refused(i, &all, &format!("up-{i}"));
    }
    // Through nginx as well (round-robin over both).
    let mut replay = Command::new(require("curl", "curl"));
    replay.args(["-s", "--max-time", "20", "-H"]);
    replay.arg(format!("Authorization: {}", got[7].authorization));
    replay.args(["-w", "%{http_code}\\n"]);
    for _ in 0..6 {
        replay
            .args(["-o", "/dev/null"])
            .arg(format!("{}{}", pool.base(), got[7].path));
    }
    let out = replay.output().expect("run curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        vec!["401"; 6],
        "a captured header replayed through nginx"
    );
    assert_eq!(pool.counts(LOST), [0, 0], "Redis was up");

    // Redis killed mid-run.
    pool.redis.stop();
    let q = paths("q", 20);
    let fresh = pool.requests(&q);
    for (i, f) in fresh.iter().enumerate() {
        assert_eq!(f.status, Some(200), "without Redis, {}: {f:?}", f.path);
        assert_eq!(f.challenges, usize::from(i == 0), "{f:?}");
        assert_eq!(f.rspauth.as_deref(), Some("ok"), "rspauth of {}", f.path);
    }
    // Each header is refused by the instance that accepted it, from its
    // own memory (Redis is gone).
    for f in &fresh {
        let who = pool.served_by(&f.path);
        pool.assert_replays_refused(who, &[f], &format!("down-{who}"));
    }
    // So are the ones of before the outage, on both instances: each
    // recorded them in its own memory (served them, or had them replayed to
    // it above), and that memory alone decides now.
    for i in 0..2 {
        pool.assert_replays_refused(i, &all, &format!("before-{i}"));
    }
    for d in &mut pool.daemons {
        d.assert_alive();
    }
    assert_eq!(
        pool.counts(LOST),
        [1, 1],
        "the loss of Redis is logged once per instance"
    );
}
