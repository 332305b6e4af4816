//! HTTP Basic and Digest for nginx `auth_request`, end to end: real nginx
//! running the shipped `nginx-conf/http-auth.conf`, our daemon on a Unix
//! socket, and real clients (curl, Python's urllib, a Digest client that can
//! replay and wait out nonces).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::e2e::{daemon_bin, free_ports, repo_root, require};

const KEY: &str = "http-e2e-key-0815";
const ALICE_PW: &str = "Circle of Life";

struct Site {
    dir: tempfile::TempDir,
    port: u16,
    daemon: Child,
    nginx: Child,
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The shipped file with each TEST: value replaced; every pattern must occur
/// exactly as often as stated, so drift in the shipped file fails here.
fn render(dir: &Path, port: u16, sock: &Path) -> String {
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
            format!("unix:{}", sock.display()),
            1,
        ),
        ("listen 80;".into(), format!("listen 127.0.0.1:{port};"), 1),
        ("root /var/www/html;".into(), format!("root {d}/www;"), 1),
        (
            "\"CHANGE-ME-shared-secret\"".into(),
            format!("\"{KEY}\""),
            2,
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

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        sleep(Duration::from_millis(20));
    }
}

impl Site {
    fn start() -> Site {
        let nginx_bin = require("nginx", "nginx-full");
        require("python3", "python3");
        let dir = tempfile::tempdir().unwrap();
        // nginx's workers run as www-data: they must reach the content.
        chmod(dir.path(), 0o755);
        let p = |rel: &str| dir.path().join(rel);
        for sub in ["www/private", "www/legacy"] {
            fs::create_dir_all(p(sub)).unwrap();
        }
        chmod(&p("www"), 0o755);
        chmod(&p("www/private"), 0o755);
        chmod(&p("www/legacy"), 0o755);
        fs::write(p("www/private/secret.txt"), "the private page\n").unwrap();
        fs::write(p("www/legacy/old.txt"), "the legacy page\n").unwrap();
        for f in ["www/private/secret.txt", "www/legacy/old.txt"] {
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
        fs::write(p("nginx.conf"), render(dir.path(), port, &sock)).unwrap();

        let daemon = Command::new(daemon_bin())
            .args(["serve", "--listen"])
            .arg(format!("unix:{}", sock.display()))
            .args([
                "--socket-mode",
                "0666",
                "--log",
                "stderr",
                "--require-header",
            ])
            .arg(format!("X-Auth-Key={KEY}"))
            .arg("--passdb")
            .arg(format!("passwd-file:{}", p("users").display()))
            .stdout(Stdio::null())
            .stderr(fs::File::create(p("daemon.log")).unwrap())
            .spawn()
            .expect("start daemon");
        wait_for("daemon socket", || sock.exists());
        let nginx = Command::new(nginx_bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(p("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(p("nginx.out")).unwrap())
            .process_group(0)
            .spawn()
            .expect("start nginx");
        wait_for("nginx", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Site {
            dir,
            port,
            daemon,
            nginx,
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
        let out = Command::new("python3")
            .arg(repo_root().join("tests/e2e/http_digest.py"))
            .args(args)
            .output()
            .expect("run http_digest.py");
        assert!(
            out.status.success(),
            "http_digest.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Debian's python3-requests lives in the system interpreter.
    fn requests_client(&self, url: &str, user: &str, password: &str) -> Vec<String> {
        common::e2e::require_file(
            "/usr/lib/python3/dist-packages/requests",
            "python3-requests",
        );
        let out = Command::new("/usr/bin/python3")
            .arg(repo_root().join("tests/e2e/http_digest.py"))
            .args(["requests", url, user, password])
            .output()
            .expect("run /usr/bin/python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        // nginx runs in its own process group: stop master and workers.
        unsafe_kill(-(self.nginx.id() as i32), libc::SIGTERM);
        unsafe_kill(self.daemon.id() as i32, libc::SIGTERM);
        let _ = self.nginx.wait();
        let _ = self.daemon.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- daemon.log\n{}\n--- error.log\n{}",
                self.log("daemon.log"),
                self.log("error.log")
            );
        }
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) touches no memory of ours.
    unsafe {
        libc::kill(pid, sig);
    }
}

use std::os::unix::process::CommandExt;

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
        "{}",
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
        log.contains("auth result=ok protocol=http user=alice"),
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
    let rendered = render(dir.path(), 1, &PathBuf::from("/tmp/x.sock"));
    assert!(rendered.contains("fastcgi_param AUTH_REALM \"Private area\";"));
    assert!(rendered.contains(&format!("fastcgi_param HTTP_X_AUTH_KEY \"{KEY}\";")));
}
