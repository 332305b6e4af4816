//! HTTP Basic and Digest for nginx `auth_request`, end to end: real nginx
//! running the shipped `nginx-conf/http-auth.conf`, our daemon on a Unix
//! socket, and real clients (curl, Python's urllib and python3-requests,
//! headless Chromium, a Digest client that can replay and wait out nonces).
//!
//! `/private/` is a directory with an index file: nginx serves it through an
//! internal redirect to `/private/index.html`, which runs the `auth_request`
//! subrequest a second time with the same `Authorization` header.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::daemon::Daemon;
use crate::common::e2e::{free_ports, repo_root, require, run_toml};
use crate::common::proc::{
    port_open, require_file, require_python_module, run_lines, try_wait_until, Proc,
};
use serde::Deserialize;

/// The shared secret `render` writes into the nginx config.
pub(super) const KEY: &str = "http-e2e-key-0815";
pub(super) const ALICE_PW: &str = "Circle of Life";
/// What `www/private/index.html` shows (`document.body.innerText`).
const INDEX_TEXT: &str = "the private index";
/// What `www/members/index.html` (Basic only) shows.
const MEMBERS_TEXT: &str = "the members page";

struct Site {
    port: u16,
    nginx: Proc,
    /// Serves from the site's dir, which it owns.
    daemon: Daemon,
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A site daemon's flags: a socket nginx's workers reach, the log on
/// stderr, the shared secret of the rendered config, `users` as passwd-file.
pub(super) fn daemon_args(users: &Path) -> Vec<String> {
    vec![
        "--socket-mode".to_owned(),
        "0666".into(),
        "--log".into(),
        "stderr".into(),
        "--require-header".into(),
        format!("X-Auth-Key={KEY}"),
        "--passdb".into(),
        format!("passwd-file:{}", users.display()),
    ]
}

/// The shipped file with each TEST: value replaced; every pattern must occur
/// exactly as often as stated, so drift in the shipped file fails here.
/// `socks` are the upstream's servers (round-robin, in this order).
pub(super) fn render(dir: &Path, port: u16, socks: &[&Path]) -> String {
    let shipped = fs::read_to_string(repo_root().join("nginx-conf/http-auth.conf")).unwrap();
    let d = dir.display();
    let subs: Vec<(String, String, usize)> = vec![
        (
            "pid /run/nginx.pid;".into(),
            format!("pid {d}/nginx.pid;"),
            1,
        ),
        (
            "error_log /var/log/nginx/error.log;".into(),
            format!("error_log {d}/error.log info;"),
            1,
        ),
        (
            "access_log /var/log/nginx/access.log;".into(),
            format!("access_log {d}/access.log;"),
            1,
        ),
        ("/var/lib/nginx/".into(), format!("{d}/tmp-"), 5),
        (
            "unix:/run/nginx-auth-fcgi/auth.sock".into(),
            socks
                .iter()
                .map(|s| format!("unix:{}", s.display()))
                .collect::<Vec<_>>()
                .join("; server "),
            1,
        ),
        ("listen 80;".into(), format!("listen 127.0.0.1:{port};"), 1),
        ("root /var/www/html;".into(), format!("root {d}/www;"), 1),
        (
            "\"CHANGE-ME-shared-secret\"".into(),
            format!("\"{KEY}\""),
            3,
        ),
    ];
    let mut out = String::new();
    let mut counts = vec![0; subs.len()];
    for line in shipped.lines() {
        let (code, comment) = line.split_at(line.find('#').unwrap_or(line.len()));
        let mut code = code.to_owned();
        for (i, (from, to, _)) in subs.iter().enumerate() {
            counts[i] += code.matches(from.as_str()).count();
            code = code.replace(from.as_str(), to);
        }
        for sys in ["/var/", "/run/", "/etc/", "/usr/"] {
            assert!(
                !code.contains(sys),
                "http-auth.conf: `{}` escapes the test sandbox",
                line.trim()
            );
        }
        out.push_str(&code);
        out.push_str(comment);
        out.push('\n');
    }
    for ((from, _, want), got) in subs.iter().zip(counts) {
        assert_eq!(
            got, *want,
            "http-auth.conf: `{from}` expected {want} time(s), found {got}"
        );
    }
    out
}

impl Site {
    fn start() -> Site {
        Site::start_with("")
    }

    /// With `daemon_toml` (when not empty) as the daemon's `--config`.
    fn start_with(daemon_toml: &str) -> Site {
        let nginx_bin = require("nginx", "nginx-full");
        require("python3", "python3");
        let dir = tempfile::tempdir().unwrap();
        // nginx's workers run as www-data: they must reach the content.
        chmod(dir.path(), 0o755);
        let p = |rel: &str| dir.path().join(rel);
        for sub in ["www/private", "www/legacy", "www/members"] {
            fs::create_dir_all(p(sub)).unwrap();
        }
        chmod(&p("www"), 0o755);
        chmod(&p("www/private"), 0o755);
        chmod(&p("www/legacy"), 0o755);
        chmod(&p("www/members"), 0o755);
        fs::write(p("www/private/secret.txt"), "the private page\n").unwrap();
        fs::write(p("www/legacy/old.txt"), "the legacy page\n").unwrap();
        fs::write(
            p("www/members/index.html"),
            format!("<!doctype html><title>Members</title><p>{MEMBERS_TEXT}</p>\n"),
        )
        .unwrap();
        fs::write(
            p("www/private/index.html"),
            format!("<!doctype html><title>Private</title><p>{INDEX_TEXT}</p>\n"),
        )
        .unwrap();
        for f in [
            "www/private/secret.txt",
            "www/private/index.html",
            "www/legacy/old.txt",
            "www/members/index.html",
        ] {
            chmod(&p(f), 0o644);
        }
        let crypt =
            nginx_auth_fcgi::scheme::hash(nginx_auth_fcgi::scheme::Scheme::Sha512Crypt, b"bob-pw")
                .unwrap();
        fs::write(
            p("users"),
            format!("alice:{{PLAIN}}{ALICE_PW}::::::\nbob:{crypt}::::::\n"),
        )
        .unwrap();
        fs::copy("/etc/nginx/fastcgi_params", p("fastcgi_params"))
            .expect("fastcgi_params (nginx-common)");
        let sock = p("auth.sock");
        let [port] = free_ports::<1>();
        fs::write(p("nginx.conf"), render(dir.path(), port, &[&sock])).unwrap();

        let mut args = daemon_args(&p("users"));
        if !daemon_toml.is_empty() {
            fs::write(p("daemon.toml"), daemon_toml).unwrap();
            args.extend(["--config".into(), p("daemon.toml").display().to_string()]);
        }
        let mut nginx = Command::new(nginx_bin);
        nginx
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(p("nginx.conf"))
            .args(["-g", "daemon off;"]);
        let nginx_out = p("nginx.out");
        let daemon = Daemon::start(dir, args);
        assert_eq!(daemon.sock(), sock, "nginx.conf names the daemon's socket");
        let mut nginx = Proc::spawn("nginx", &mut nginx, &nginx_out);
        nginx.wait_for("its port", Duration::from_secs(10), || port_open(port));
        Site {
            port,
            nginx,
            daemon,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn curl(&self, args: &[&str]) -> Output {
        Command::new(require("curl", "curl"))
            .args(["-s", "-i", "--max-time", "10"])
            .args(args)
            .output()
            .expect("run curl")
    }

    fn digest_client(&self, args: &[&str]) -> Vec<String> {
        run_lines(
            Command::new(require("python3", "python3"))
                .arg(repo_root().join("tests/e2e/http_digest.py"))
                .args(args),
            "http_digest.py",
        )
    }

    /// Debian's python3-requests lives in the system interpreter.
    fn requests_client(&self, url: &str, user: &str, password: &str) -> Vec<String> {
        require_file(
            "/usr/lib/python3/dist-packages/requests",
            "python3-requests",
        );
        run_lines(
            Command::new(require_file("/usr/bin/python3", "python3"))
                .arg(repo_root().join("tests/e2e/http_digest.py"))
                .args(["requests", url, user, password]),
            "http_digest.py requests",
        )
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.daemon.path(name)).unwrap_or_default()
    }

    /// Lines of the daemon's log containing `what`.
    fn daemon_lines(&self, what: &str) -> Vec<String> {
        self.log("daemon.log")
            .lines()
            .filter(|l| l.contains(what))
            .map(str::to_owned)
            .collect()
    }

    /// nginx's access log (format `combined`): the requests whose
    /// User-Agent is `agent`, in order.
    fn access(&self, agent: &str) -> Vec<Hit> {
        self.log("access.log")
            .lines()
            .filter_map(|line| {
                // addr - user [time] "GET /path HTTP/1.1" 200 88 "referer" "agent"
                let f: Vec<&str> = line.split('"').collect();
                if f.len() < 6 || f[5] != agent {
                    return None;
                }
                Some(Hit {
                    path: f[1].split(' ').nth(1)?.to_owned(),
                    status: f[2].split_whitespace().next()?.parse().ok()?,
                })
            })
            .collect()
    }

    /// Polls [`Site::access`] until `done` holds: nginx writes a request's
    /// line as it finishes the request, which may be just after the client
    /// read the response.
    fn access_until(&self, agent: &str, what: &str, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let mut hits = Vec::new();
        let waited = try_wait_until(
            &format!("nginx's access log for {agent:?} to show {what}"),
            Duration::from_secs(10),
            || {
                hits = self.access(agent);
                Ok(done(&hits))
            },
        );
        if let Err(e) = waited {
            panic!("{e}: {hits:?}");
        }
        hits
    }

    /// `tests/e2e/http_clients.py MODE ARGS…` (system interpreter: Debian's
    /// python3-requests lives there), its TOML output parsed.
    fn http_clients(&self, mode: &str, args: &[&str]) -> ClientsOut {
        http_clients(mode, args)
    }
}

/// `tests/e2e/http_clients.py MODE ARGS…`, its TOML output parsed.
pub(super) fn http_clients(mode: &str, args: &[&str]) -> ClientsOut {
    run_toml(
        Command::new(require_file("/usr/bin/python3", "python3"))
            .arg(repo_root().join("tests/e2e/http_clients.py"))
            .arg(mode)
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        &format!("http_clients.py {mode}"),
    )
}

/// One request in nginx's access log.
#[derive(Debug, Clone, PartialEq)]
struct Hit {
    path: String,
    status: u16,
}

fn count_401(hits: &[Hit], path: &str) -> usize {
    hits.iter()
        .filter(|h| h.path == path && h.status == 401)
        .count()
}

/// What `tests/e2e/http_clients.py` prints.
#[derive(Debug, Deserialize)]
pub(super) struct ClientsOut {
    /// requests: all 401s the session saw.
    #[serde(default)]
    pub(super) challenges: usize,
    pub(super) results: Vec<Fetched>,
}

/// One page fetched by `tests/e2e/http_clients.py`.
#[derive(Debug, Deserialize)]
pub(super) struct Fetched {
    pub(super) path: String,
    /// Absent when Chromium got no document (a net error).
    pub(super) status: Option<u16>,
    /// Chromium's net error.
    error: Option<String>,
    pub(super) body: String,
    /// requests: the 401s of this fetch (history plus a final 401).
    #[serde(default)]
    pub(super) challenges: usize,
    /// requests: HTTP requests this fetch made.
    #[serde(default)]
    requests: usize,
    /// Chromium: how often it asked for credentials.
    #[serde(default)]
    auth_prompts: usize,
    /// requests: the `Authorization` header of its last request.
    #[serde(default)]
    pub(super) authorization: String,
    /// requests, on a 200 with Digest: `ok` when `Authentication-Info`'s
    /// rspauth is the one the client computed, `bad`, or `missing`.
    pub(super) rspauth: Option<String>,
    /// requests: `Authentication-Info` carried a `nextnonce`.
    #[serde(default)]
    pub(super) nextnonce: bool,
}

impl Drop for Site {
    fn drop(&mut self) {
        // nginx first, then the daemon (which prints its log on a panic).
        self.nginx.stop();
        if std::thread::panicking() {
            eprintln!("--- error.log\n{}", self.log("error.log"));
        }
    }
}

/// The last response curl printed (`--digest` makes two requests, `-i` shows both).
fn last_response(o: &Output) -> String {
    let all = String::from_utf8_lossy(&o.stdout).into_owned();
    match all.rfind("HTTP/1.1 ") {
        Some(i) => all[i..].to_owned(),
        None => all,
    }
}

fn status_line(o: &Output) -> String {
    last_response(o)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn header(o: &Output, name: &str) -> Vec<String> {
    last_response(o)
        .split("\r\n")
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.to_owned())
        .collect()
}

#[test]
fn curl_digest_sha256_md5_and_basic() {
    let site = Site::start();
    let url = site.url("/private/secret.txt");
    let anon = site.curl(&[&url]);
    assert_eq!(
        header(&anon, "WWW-Authenticate").len(),
        1,
        "nginx 1.22 passes the first challenge only"
    );
    assert!(
        status_line(&anon).contains(" 401"),
        "{}",
        status_line(&anon)
    );
    let challenges = header(&anon, "WWW-Authenticate");
    assert!(
        challenges[0].starts_with(
            "Digest realm=\"Private area\", qop=\"auth\", algorithm=SHA-256, nonce=\""
        ),
        "{challenges:?}"
    );

    let ok = site.curl(&["--digest", "-u", &format!("alice:{ALICE_PW}"), &url]);
    assert!(
        status_line(&ok).contains(" 200"),
        "{}\n{}",
        site.log("daemon.log"),
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).ends_with("the private page\n"));
    assert_eq!(header(&ok, "X-Authenticated-User"), vec!["alice"]);

    let wrong = site.curl(&["--digest", "-u", "alice:circle of life", &url]);
    assert!(status_line(&wrong).contains(" 401"));
    assert!(!String::from_utf8_lossy(&wrong.stdout).contains("the private page"));

    // Basic is offered too (second challenge; nginx 1.22 shows only the first,
    // but a client that sends Basic pre-emptively is served).
    let basic = site.curl(&["--basic", "-u", "bob:bob-pw", &url]);
    assert!(
        status_line(&basic).contains(" 200"),
        "{}",
        status_line(&basic)
    );
    assert_eq!(header(&basic, "X-Authenticated-User"), vec!["bob"]);
    let basic_wrong = site.curl(&["--basic", "-u", "bob:bob-PW", &url]);
    assert!(status_line(&basic_wrong).contains(" 401"));
    // bob's password is hashed: Digest cannot be served for him.
    let bob_digest = site.curl(&["--digest", "-u", "bob:bob-pw", &url]);
    assert!(!status_line(&bob_digest).contains(" 200"));

    // The challenge offers userhash=true; curl answers with H(user:realm),
    // which the daemon maps back to alice.
    assert!(challenges[0].contains("userhash=true"), "{challenges:?}");
    let verbose = site.curl(&["-v", "--digest", "-u", &format!("alice:{ALICE_PW}"), &url]);
    let sent = String::from_utf8_lossy(&verbose.stderr);
    assert!(
        sent.contains("userhash=true"),
        "curl used userhash:\n{sent}"
    );
    assert!(
        !sent.contains("username=\"alice\""),
        "name not in clear:\n{sent}"
    );
    assert!(status_line(&verbose).contains(" 200"));

    let md5 = site.curl(&[
        "--digest",
        "-u",
        &format!("alice:{ALICE_PW}"),
        &site.url("/legacy/old.txt"),
    ]);
    assert!(status_line(&md5).contains(" 200"), "{}", status_line(&md5));

    let log = site.log("daemon.log");
    assert!(
        log.contains("auth result=ok protocol=http method=digest user=alice"),
        "{log}"
    );
    assert!(
        !log.contains(ALICE_PW) && !log.contains("bob-pw"),
        "no password in the log:\n{log}"
    );
}

#[test]
fn python_urllib_and_requests_digest() {
    let site = Site::start();
    let url = site.url("/legacy/old.txt");
    assert_eq!(
        site.digest_client(&["urllib", &url, "alice", ALICE_PW]),
        vec!["status 200"]
    );
    assert_eq!(
        site.digest_client(&["urllib", &url, "alice", "nope"]),
        vec!["status 401"]
    );
    // python3-requests does SHA-256 (the /private/ location's first challenge).
    let private = site.url("/private/secret.txt");
    assert_eq!(
        site.requests_client(&private, "alice", ALICE_PW),
        vec!["status 200"]
    );
    assert_eq!(
        site.requests_client(&private, "alice", "nope"),
        vec!["status 401"]
    );
    assert_eq!(
        site.requests_client(&url, "alice", ALICE_PW),
        vec!["status 200"]
    );
}

#[test]
fn replayed_nc_wrong_realm_and_stale_nonce() {
    let site = Site::start();
    let url = site.url("/private/secret.txt");
    let tries = site.digest_client(&["manual", &url, "alice", ALICE_PW, "--repeat", "2"]);
    assert!(tries[0].starts_with("status 200"), "{tries:?}");
    assert!(
        tries[1].starts_with("status 401") && tries[1].contains("stale=true"),
        "replay refused: {tries:?}"
    );

    let tries = site.digest_client(&["manual", &url, "alice", ALICE_PW, "--realm", "Other"]);
    assert!(
        tries[0].starts_with("status 401") && !tries[0].contains("stale"),
        "{tries:?}"
    );

    // /legacy/ nonces live 2 s: a correct answer after 3 s gets stale=true.
    let legacy = site.url("/legacy/old.txt");
    let tries = site.digest_client(&["manual", &legacy, "alice", ALICE_PW, "--sleep", "3.2"]);
    assert!(
        tries[0].starts_with("status 401") && tries[0].contains("stale=true"),
        "{tries:?}"
    );
}

#[test]
fn malformed_authorization_headers_get_401_and_service_goes_on() {
    let site = Site::start();
    let url = site.url("/private/secret.txt");
    let bad = [
        "Digest",
        "Digest username=",
        "Digest username=\"alice\", realm=\"Private area\"",
        "Digest username=\"alice\", username=\"bob\"",
        "Digest username=\"alice\", realm=\"Private area\", nonce=\"x\", uri=\"/private/secret.txt\", qop=auth, nc=00000001, cnonce=\"c\", response=\"zz\"",
        "Digest username=\"al\\",
        "Basic !!!notbase64",
        "Basic YWxpY2U=",
        "Bearer abc",
        "Digest \u{7f}\u{1}",
    ];
    for h in bad {
        let o = site.curl(&["-H", &format!("Authorization: {h}"), &url]);
        assert!(
            status_line(&o).contains(" 401"),
            "{h:?}: {}",
            status_line(&o)
        );
    }
    let long = format!("Authorization: Digest username=\"{}\"", "a".repeat(6000));
    let o = site.curl(&["-H", &long, &url]);
    assert!(!status_line(&o).contains(" 200"));
    let ok = site.curl(&["--digest", "-u", &format!("alice:{ALICE_PW}"), &url]);
    assert!(
        status_line(&ok).contains(" 200"),
        "still serving: {}",
        status_line(&ok)
    );
}

#[test]
fn shipped_http_conf_keeps_its_test_markers() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = render(dir.path(), 1, &[Path::new("/tmp/x.sock")]);
    assert!(rendered.contains("fastcgi_param AUTH_REALM \"Private area\";"));
    assert!(rendered.contains(&format!("fastcgi_param HTTP_X_AUTH_KEY \"{KEY}\";")));
    // Every auth location: internal redirects re-run auth_request with the
    // same $request_id (one client request, one decision).
    let auth_locations = rendered.matches("location = /_auth/").count();
    assert_eq!(auth_locations, 3, "private, legacy, members");
    assert_eq!(
        rendered
            .matches("fastcgi_param AUTH_REQUEST_ID $request_id;")
            .count(),
        auth_locations
    );
}

/// Responses curl printed with `-i` (`--digest` shows the 401 and the retry).
fn responses(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .split("\r\n")
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .map(str::to_owned)
        .collect()
}

/// `/private/` (the index file, reached by an internal redirect that runs
/// `auth_request` again) and a file below it: curl's Digest makes exactly
/// one unauthorised request, then the authorised one, which must get 200.
#[test]
fn curl_digest_directory_url_after_one_challenge() {
    let site = Site::start();
    let user = format!("alice:{ALICE_PW}");
    for (path, body) in [
        ("/private/", INDEX_TEXT),
        ("/private/secret.txt", "the private page"),
    ] {
        let agent = format!("e2e-curl {path}");
        let o = site.curl(&["--digest", "-u", &user, "-A", &agent, &site.url(path)]);
        let seen = responses(&o);
        let challenges = seen.iter().filter(|l| l.contains(" 401")).count();
        assert!(
            status_line(&o).contains(" 200") && challenges <= 1,
            "curl --digest {path}: got {:?} after {challenges} challenge(s) in {} request(s)",
            status_line(&o),
            seen.len()
        );
        assert!(
            last_response(&o).contains(body),
            "curl --digest {path}: {}",
            last_response(&o)
        );
        assert_eq!(header(&o, "X-Authenticated-User"), vec!["alice"]);
        // nginx saw the same: every request curl made, at most one 401.
        let hits = site.access_until(&agent, "curl's last request", |h| h.len() >= seen.len());
        assert_eq!(hits.len(), seen.len(), "{hits:?}");
        assert!(count_401(&hits, path) <= 1, "{hits:?}");
    }
}

/// One python3-requests Session with HTTPDigestAuth, several rounds over
/// `/private/` and `/private/secret.txt`: every fetch 200, and at most one
/// 401 in total (requests reuses the nonce with a growing nonce count).
#[test]
fn python_requests_session_directory_url() {
    require_file(
        "/usr/lib/python3/dist-packages/requests",
        "python3-requests",
    );
    let site = Site::start();
    let agent = "e2e-python-requests";
    let base = site.url("");
    let out = site.http_clients(
        "requests",
        &[
            &base,
            "alice",
            ALICE_PW,
            "/private/",
            "/private/secret.txt",
            "--rounds",
            "3",
            "--agent",
            agent,
        ],
    );
    assert_eq!(out.results.len(), 6, "{out:?}");
    let summary: Vec<String> = out
        .results
        .iter()
        .map(|r| {
            format!(
                "{} {:?} after {} challenge(s)",
                r.path, r.status, r.challenges
            )
        })
        .collect();
    assert!(
        out.results.iter().all(|r| r.status == Some(200)) && out.challenges <= 1,
        "python3-requests session: {} challenge(s) in total; {summary:?}",
        out.challenges
    );
    for r in &out.results {
        let want = if r.path == "/private/" {
            INDEX_TEXT
        } else {
            "the private page"
        };
        assert!(r.body.contains(want), "{}: {:?}", r.path, r.body);
    }
    let sent: usize = out.results.iter().map(|r| r.requests).sum();
    let hits = site.access_until(agent, "every request of the session", |h| h.len() >= sent);
    assert_eq!(hits.len(), sent, "{hits:?}");
    assert!(
        hits.iter().filter(|h| h.status == 401).count() <= 1,
        "{hits:?}"
    );
}

/// Headless Chromium, driven over the DevTools protocol (its own auth
/// handling answers the challenge: Fetch.authRequired → continueWithAuth),
/// opens `/private/` and `/private/secret.txt`: each shows its page, after
/// at most one 401 each in nginx's access log (Chromium retries a
/// stale=true nonce by itself, so only the log shows such loops).
#[test]
fn headless_chromium_directory_url() {
    let chromium = require("chromium", "chromium");
    let site = Site::start();
    let agent = "e2e-headless-chromium";
    let base = site.url("");
    let out = site.http_clients(
        "chromium",
        &[
            chromium.to_str().unwrap(),
            &base,
            "alice",
            ALICE_PW,
            agent,
            "/private/",
            "/private/secret.txt",
        ],
    );
    assert_eq!(out.results.len(), 2, "{out:?}");
    for (r, want) in out.results.iter().zip([INDEX_TEXT, "the private page"]) {
        if r.status != Some(200) {
            let hits = site.access(agent);
            panic!(
                "Chromium {}: got {:?} ({}) after {} 401(s) in nginx's access log, \
                 {} credential prompt(s); page text {:?}",
                r.path,
                r.status,
                r.error.as_deref().unwrap_or("no net error"),
                count_401(&hits, &r.path),
                r.auth_prompts,
                r.body
            );
        }
        assert_eq!(r.body.trim(), want, "Chromium {}: page text", r.path);
        let hits = site.access_until(agent, &format!("200 for {}", r.path), |h| {
            h.iter().any(|h| h.path == r.path && h.status == 200)
        });
        assert!(
            count_401(&hits, &r.path) <= 1,
            "Chromium {}: {} 401s: {hits:?}",
            r.path,
            count_401(&hits, &r.path)
        );
    }
}

/// What `tests/e2e/browser_selenium.py` prints: one table per page.
#[derive(Debug, Deserialize)]
struct BrowserOut {
    results: Vec<BrowserPage>,
}

#[derive(Debug, Deserialize)]
struct BrowserPage {
    path: String,
    title: String,
    body: String,
    screenshot: PathBuf,
    url: String,
}

/// A real browser as a web team drives it: Selenium (PyPI) through Debian's
/// chromedriver and headless Chromium, answering the challenges with the
/// test's credentials through WebDriver BiDi. It reads a Digest page
/// (`/private/secret.txt`, SHA-256 Digest first in the challenge) and a
/// Basic-only page (`/members/`), and saves a screenshot of each in the
/// test's temp dir. The daemon's audit shows which scheme served which.
#[test]
fn selenium_chromium_reads_digest_and_basic_pages() {
    let chromium = require("chromium", "chromium");
    let driver = require("chromedriver", "chromium-driver");
    let python = require_python_module("selenium");
    let site = Site::start();
    let shots = site.daemon.path("browser");
    fs::create_dir_all(&shots).unwrap();
    let out: BrowserOut = run_toml(
        Command::new(python)
            .arg(repo_root().join("tests/e2e/browser_selenium.py"))
            .arg(driver)
            .arg(chromium)
            .arg(site.url(""))
            .args(["alice", ALICE_PW, "e2e-selenium"])
            .arg(&shots)
            .args(["/private/secret.txt", "/members/"])
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        "browser_selenium.py",
    );
    let pages: Vec<(&str, &str, &str)> = out
        .results
        .iter()
        .map(|r| (r.path.as_str(), r.title.as_str(), r.body.trim()))
        .collect();
    assert_eq!(
        pages,
        [
            ("/private/secret.txt", "", "the private page"),
            ("/members/", "Members", MEMBERS_TEXT),
        ],
        "what Chromium showed: {out:?}"
    );
    for r in &out.results {
        assert_eq!(r.url, site.url(&r.path), "Chromium ended up elsewhere");
        let png = fs::read(&r.screenshot).unwrap_or_else(|e| {
            panic!("screenshot of {}: {}: {e}", r.path, r.screenshot.display())
        });
        assert!(
            r.screenshot.starts_with(&shots) && png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "screenshot of {} is no PNG in the temp dir: {}",
            r.path,
            r.screenshot.display()
        );
    }
    for method in ["digest", "basic"] {
        let oks = site.daemon_lines(&format!(
            "auth result=ok protocol=http method={method} user=alice "
        ));
        assert!(
            !oks.is_empty(),
            "no {method} login for alice in the daemon's audit:\n{}",
            site.log("daemon.log")
        );
    }
}

/// A wrong Basic password on `/private/` is one failure in the throttle.
/// With block_ip_user = 2, one wrong client request leaves the right
/// password working; two block it (the control, for bob): so a count of
/// two for one client request would show as a 403.
#[test]
fn wrong_basic_password_on_directory_url_counts_once() {
    // nginx's peer is loopback, which the throttle trusts by default.
    let site = Site::start_with("[throttle]\nblock_ip_user = 2\ntrusted_networks = []\n");
    let url = site.url("/private/");
    let wrong = site.curl(&["--basic", "-u", "alice:wrong", &url]);
    assert!(
        status_line(&wrong).contains(" 401"),
        "{}",
        status_line(&wrong)
    );
    let ok = site.curl(&["--basic", "-u", &format!("alice:{ALICE_PW}"), &url]);
    assert!(
        status_line(&ok).contains(" 200"),
        "one wrong Basic password on /private/ counted more than once: \
         the right one then got {:?}",
        status_line(&ok)
    );
    assert!(last_response(&ok).contains(INDEX_TEXT));
    let fails = site.daemon_lines("auth result=fail protocol=http method=basic user=alice ");
    assert_eq!(fails.len(), 1, "one decision per client request: {fails:?}");

    // The control: two wrong client requests do block.
    for guess in ["bob:wrong1", "bob:wrong2"] {
        let o = site.curl(&["--basic", "-u", guess, &url]);
        assert!(status_line(&o).contains(" 401"), "{}", status_line(&o));
    }
    let blocked = site.curl(&["--basic", "-u", "bob:bob-pw", &url]);
    assert!(
        status_line(&blocked).contains(" 403"),
        "two failures block bob: {}",
        status_line(&blocked)
    );
}

/// The right Basic password on `/private/` is one decision: one audit
/// record (and one verification), not one per auth_request subrequest.
#[test]
fn basic_on_directory_url_is_one_decision() {
    let site = Site::start();
    let ok = site.curl(&[
        "--basic",
        "-u",
        &format!("alice:{ALICE_PW}"),
        &site.url("/private/"),
    ]);
    assert!(status_line(&ok).contains(" 200"), "{}", status_line(&ok));
    assert!(last_response(&ok).contains(INDEX_TEXT));
    let oks = site.daemon_lines("auth result=ok protocol=http method=basic user=alice ");
    assert_eq!(
        oks.len(),
        1,
        "Basic on /private/: {} decisions for one client request: {oks:?}",
        oks.len()
    );
}

/// A Digest header captured from a successful request and sent again in a
/// new client request (another $request_id) is a replay: 401.
#[test]
fn captured_digest_header_replayed_in_new_request_is_refused() {
    let site = Site::start();
    let url = site.url("/private/secret.txt");
    let first = site.curl(&["-v", "--digest", "-u", &format!("alice:{ALICE_PW}"), &url]);
    assert!(
        status_line(&first).contains(" 200"),
        "{}",
        status_line(&first)
    );
    let verbose = String::from_utf8_lossy(&first.stderr);
    let captured = verbose
        .lines()
        .filter_map(|l| l.strip_prefix("> Authorization: "))
        .next_back()
        .unwrap_or_else(|| panic!("no Authorization header in curl -v:\n{verbose}"))
        .trim_end()
        .to_owned();
    assert!(captured.starts_with("Digest "), "{captured}");
    let replay = site.curl(&["-H", &format!("Authorization: {captured}"), &url]);
    assert!(
        status_line(&replay).contains(" 401"),
        "replayed Digest header: {}",
        status_line(&replay)
    );
    assert!(!String::from_utf8_lossy(&replay.stdout).contains("the private page"));
}

/// Issue 16: `require_app_password = ["imap"]` keeps IMAP for app passwords
/// only (see `app_passwords`); HTTP Basic with the main password goes on
/// working through nginx.
#[test]
fn require_app_password_for_imap_leaves_http_basic_alone() {
    let site = Site::start_with("require_app_password = [\"imap\"]\n");
    let url = site.url("/private/secret.txt");
    let basic = site.curl(&["--basic", "-u", "bob:bob-pw", &url]);
    assert!(
        status_line(&basic).contains(" 200"),
        "{}\n{}",
        status_line(&basic),
        site.log("daemon.log")
    );
}
