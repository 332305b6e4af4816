//! Upstream pools with health checks, per-domain pools and PROXY-protocol
//! client-address trust, against the real daemon binary over FastCGI (the
//! independent client in `common::fcgi`), with real TCP listeners on
//! loopback as the pool members and a real `redis-server` for shared health.
//!
//! Members are closed and reopened for real; the daemon's checks (every
//! 100 ms here) notice. Waiting is by polling the daemon's answers until they
//! change (bounded by a generous deadline), never by asserting on timing.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::daemon;
use crate::common::e2e::{daemon_bin, require};
use crate::common::fcgi;
use crate::common::proc::{port_open, require_file, run_stdout, wait_until_async, Proc};
use crate::common::redis::Redis;
use tokio::io::AsyncWriteExt;

/// Longest we wait for the daemon to notice a change (checks run every 100 ms).
const NOTICE: Duration = Duration::from_secs(20);
const TEMPORARY: &str = "Temporary server problem, try again later";

// ------------------------------------------------------------- backends

/// A pool member: a listening socket, until [`stop`]ped. Connections are
/// accepted at once (so the kernel backlog never fills) and either closed or,
/// for [`Backend::imap`], served as a minimal IMAP server that accepts the
/// login nginx performs and records the user name.
struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// `Some`: an IMAP server; the users nginx logged in here.
    logins: Option<Arc<Mutex<Vec<String>>>>,
    /// Connections accepted so far (health checks included).
    accepted: Arc<AtomicUsize>,
}

impl Backend {
    fn start(bind: &str) -> Backend {
        Self::listen(
            TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}")),
            None,
        )
    }

    fn imap(bind: &str) -> Backend {
        Self::listen(
            TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}")),
            Some(Arc::default()),
        )
    }

    fn listen(l: TcpListener, logins: Option<Arc<Mutex<Vec<String>>>>) -> Backend {
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let record = logins.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        match &record {
                            Some(r) => {
                                let r = Arc::clone(r);
                                std::thread::spawn(move || serve_imap_login(s, &r));
                            }
                            None => drop(s),
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // The listener is dropped here: connects are refused from now on.
        });
        Backend {
            addr,
            stop,
            thread: Some(thread),
            logins,
            accepted,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    fn logins(&self) -> Vec<String> {
        self.logins.as_ref().unwrap().lock().unwrap().clone()
    }

    /// Closes the listening socket.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// Listens again on the same address.
    fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + NOTICE;
        let l = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}", self.addr);
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        let logins = self.logins.take();
        *self = Backend::listen(l, logins);
    }

    fn spec(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The upstream side of nginx's IMAP proxy login (ngx_mail_proxy_module):
/// greeting; `TAG LOGIN {n}` → `+`; `USER {m}` → `+`; `PASS` → `TAG OK`.
/// Records USER. A health check (connect, close) just ends the session.
fn serve_imap_login(s: TcpStream, logins: &Mutex<Vec<String>>) {
    use std::io::BufRead;
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut line = String::new();
    let mut next = |line: &mut String| {
        line.clear();
        matches!(r.read_line(line), Ok(n) if n > 0)
    };
    if w.write_all(b"* OK fake IMAP ready\r\n").is_err() || !next(&mut line) {
        return;
    }
    let Some((tag, _)) = line.split_once("LOGIN") else {
        let _ = w.write_all(b"* BAD expected LOGIN\r\n");
        return;
    };
    let tag = tag.to_owned();
    let _ = w.write_all(b"+ go ahead\r\n");
    if !next(&mut line) {
        return;
    }
    let user = line.split(" {").next().unwrap_or_default().to_owned();
    let _ = w.write_all(b"+ go ahead\r\n");
    if !next(&mut line) {
        return;
    }
    logins.lock().unwrap().push(user);
    let _ = w.write_all(format!("{tag}OK logged in\r\n").as_bytes());
    // Whatever the client sends next (LOGOUT), answer and close.
    if next(&mut line) {
        let tag = line.split(' ').next().unwrap_or("*").to_owned();
        let _ = w.write_all(format!("* BYE\r\n{tag} OK bye\r\n").as_bytes());
    }
}

// --------------------------------------------------------------- daemon

/// The daemon with the test's users; its FastCGI questions below.
struct Daemon(daemon::Daemon);

impl std::ops::Deref for Daemon {
    type Target = daemon::Daemon;
    fn deref(&self) -> &daemon::Daemon {
        &self.0
    }
}

const USERS: usize = 30;

fn passwd(dir: &Path, extra: &str) -> PathBuf {
    let mut text = String::new();
    for i in 0..USERS {
        text.push_str(&format!("user{i}:{{PLAIN}}pw{i}::::::\n"));
        text.push_str(&format!("user{i}@example.org:{{PLAIN}}pw{i}::::::\n"));
        text.push_str(&format!("user{i}@other.example:{{PLAIN}}pw{i}::::::\n"));
    }
    text.push_str(extra);
    let path = dir.join("users");
    std::fs::write(&path, text).unwrap();
    path
}

impl Daemon {
    /// Starts the daemon with `args` (plus listen, passdb, log flags) and
    /// waits for its socket.
    fn start(args: &[String], config: &str, passwd_extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let users = passwd(dir.path(), passwd_extra);
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut all = vec![
            "--config".to_owned(),
            config_path.display().to_string(),
            "--passdb".to_owned(),
            format!("passwd-file:{}", users.display()),
        ];
        all.extend(["--log", "stderr", "--log-level", "debug"].map(String::from));
        all.extend_from_slice(args);
        Daemon(daemon::Daemon::start(dir, all))
    }

    fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// One FastCGI request; the reply's CGI headers.
    async fn ask(&self, pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut conn = tokio::net::UnixStream::connect(self.sock()).await.unwrap();
        let pairs: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        conn.write_all(&fcgi::request(1, 0, &pairs, b""))
            .await
            .unwrap();
        let reply = fcgi::read_reply(&mut conn, 1).await;
        let text = String::from_utf8_lossy(&reply.stdout).into_owned();
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let mut out: BTreeMap<String, String> = head
            .split("\r\n")
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        out.insert("_body".into(), text.clone());
        out
    }

    /// A login as nginx would ask for it; (Auth-Status, Auth-Server:Auth-Port).
    async fn login(&self, proto: &str, user: &str, pass: &str) -> (String, Option<SocketAddr>) {
        self.login_from(proto, user, pass, "192.0.2.1", None).await
    }

    async fn login_from(
        &self,
        proto: &str,
        user: &str,
        pass: &str,
        client: &str,
        proxy: Option<&str>,
    ) -> (String, Option<SocketAddr>) {
        let mut p = vec![
            ("HTTP_AUTH_METHOD", "plain"),
            ("HTTP_AUTH_USER", user),
            ("HTTP_AUTH_PASS", pass),
            ("HTTP_AUTH_PROTOCOL", proto),
            ("HTTP_AUTH_LOGIN_ATTEMPT", "1"),
            ("HTTP_CLIENT_IP", client),
        ];
        if let Some(x) = proxy {
            p.push(("HTTP_PROXY_PROTOCOL_ADDR", x));
            p.push(("HTTP_PROXY_PROTOCOL_PORT", "40000"));
        }
        let h = self.ask(&p).await;
        let status = h.get("Auth-Status").cloned().unwrap_or_default();
        let server = match (h.get("Auth-Server"), h.get("Auth-Port")) {
            (Some(s), Some(p)) => {
                assert!(!s.contains('['), "Auth-Server must be a bare IP: {s}");
                let ip: std::net::IpAddr = s.parse().unwrap();
                Some(SocketAddr::new(ip, p.parse().unwrap()))
            }
            _ => None,
        };
        if proto == "smtp" && status != "OK" {
            assert!(h.contains_key("Auth-Error-Code"), "{h:?}");
        }
        (status, server)
    }

    /// Where each of `users` goes now (all must succeed).
    async fn placement(&self, users: &[(String, String)]) -> BTreeMap<String, SocketAddr> {
        let mut out = BTreeMap::new();
        for (u, p) in users {
            let (status, server) = self.login("imap", u, p).await;
            assert_eq!(status, "OK", "{u}:\n{}", self.log());
            out.insert(u.clone(), server.unwrap());
        }
        out
    }

    async fn metrics(&self) -> String {
        self.ask(&[("AUTH_METRICS", "on")]).await["_body"].clone()
    }
}

fn users(domain: &str) -> Vec<(String, String)> {
    (0..USERS)
        .map(|i| (format!("user{i}{domain}"), format!("pw{i}")))
        .collect()
}

/// Polls `f` until it returns true, or panics after [`NOTICE`] with `what`.
async fn until<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_async(what, NOTICE, f).await;
}

const NO_THROTTLE: &str = "[throttle]\nenabled = false\n";

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_leave_a_dead_member_and_come_back() {
    let mut b: Vec<Backend> = (0..3).map(|_| Backend::start("127.0.0.1:0")).collect();
    let pool = format!("imap={},{},{}", b[0].spec(), b[1].spec(), b[2].spec());
    let d = Daemon::start(
        &args(&["--upstream", &pool, "--upstream-check-ms", "100"]),
        NO_THROTTLE,
        "",
    );
    let everyone = users("");
    let before = d.placement(&everyone).await;
    for m in &b {
        let n = before.values().filter(|a| **a == m.addr).count();
        assert!(n > 0, "no user hashed to {}: {before:?}", m.addr);
    }
    // Sticky: asking again changes nothing.
    assert_eq!(d.placement(&everyone).await, before);

    let gone = b[1].addr;
    let victims: Vec<_> = everyone
        .iter()
        .filter(|(u, _)| before[u] == gone)
        .cloned()
        .collect();
    b[1].stop();
    until("users of the closed member moved", || async {
        d.login("imap", &victims[0].0, &victims[0].1).await.1 != Some(gone)
    })
    .await;
    let during = d.placement(&everyone).await;
    for (u, _) in &everyone {
        if before[u] == gone {
            assert_ne!(during[u], gone, "{u} still sent to the dead member");
        } else {
            assert_eq!(during[u], before[u], "{u} moved although its member is up");
        }
    }
    let m = d.metrics().await;
    assert!(
        m.contains(&format!(
            "nginx_auth_fcgi_upstream_up{{address=\"{gone}\"}} 0"
        )),
        "{m}"
    );
    assert!(m.contains(&format!(
        "nginx_auth_fcgi_upstream_up{{address=\"{}\"}} 1",
        b[0].addr
    )));

    b[1].restart();
    until("users came back to the reopened member", || async {
        d.login("imap", &victims[0].0, &victims[0].1).await.1 == Some(gone)
    })
    .await;
    assert_eq!(d.placement(&everyone).await, before);
    // Each transition logged once.
    assert_eq!(
        d.log_count(&format!("upstream {gone} is down")),
        1,
        "{}",
        d.log()
    );
    assert_eq!(d.log_count(&format!("upstream {gone} is up again")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_pools_per_user_host_and_ipv6() {
    let default = Backend::start("127.0.0.1:0");
    let dom: Vec<Backend> = (0..2).map(|_| Backend::start("127.0.0.1:0")).collect();
    let v6 = Backend::start("[::1]:0");
    // The TOML table form; the flag form is used with check-config below.
    let config = format!(
        "[throttle]\nenabled = false\n\
         [upstream_domains.\"other.example\"]\nimap = [\"{}\"]\n\
         [upstream_domains.\"Example.org\"]\nimap = [\"{}\", \"{}\"]\n",
        v6.spec(),
        dom[0].spec(),
        dom[1].spec()
    );
    let d = Daemon::start(
        &args(&[
            "--upstream",
            &format!("imap={}", default.spec()),
            "--upstream-check-ms",
            "100",
        ]),
        &config,
        "routed@example.org:{PLAIN}routed-pw::::::host=127.0.0.9 port=1143\n",
    );
    let in_domain = d.placement(&users("@example.org")).await;
    for m in &dom {
        assert!(
            in_domain.values().any(|a| *a == m.addr),
            "{} unused: {in_domain:?}",
            m.addr
        );
    }
    assert!(in_domain.values().all(|a| dom.iter().any(|m| m.addr == *a)));
    let plain = d.placement(&users("")).await;
    assert!(plain.values().all(|a| *a == default.addr), "{plain:?}");
    // IPv6 member, rendered bare in Auth-Server (checked in login()).
    let v6_users = d.placement(&users("@other.example")).await;
    assert!(v6_users.values().all(|a| *a == v6.addr), "{v6_users:?}");
    // Only pools of two or more are checked (a pool of one has nothing to
    // fail over to).
    let m = d.metrics().await;
    assert!(
        m.contains(&format!("upstream_up{{address=\"{}\"}} 1", dom[0].addr)),
        "{m}"
    );
    assert!(!m.contains(&default.addr.to_string()), "{m}");
    assert!(!m.contains(&v6.addr.to_string()), "{m}");
    // The passdb's per-user host wins over the domain pool.
    let (status, server) = d.login("imap", "routed@example.org", "routed-pw").await;
    assert_eq!(status, "OK");
    assert_eq!(server, Some("127.0.0.9:1143".parse().unwrap()));
    // check-config shows the pools.
    let out = Command::new(daemon_bin())
        .args(["check-config", "--passdb"])
        .arg(format!("passwd-file:{}", d.path("users").display()))
        .arg("--config")
        .arg(d.path("config.toml"))
        .args([
            "--upstream-domain",
            &format!("example.org:imap={}", dom[0].spec()),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // The flag replaces the file's domain pools.
    assert!(
        text.contains(&format!("upstream imap for example.org: {}\n", dom[0].addr)),
        "{text}"
    );
    assert!(!text.contains("other.example"), "{text}");
    // A bad value is named by check-config.
    let out = Command::new(daemon_bin())
        .args(["check-config", "--passdb"])
        .arg(format!("passwd-file:{}", d.path("users").display()))
        .args(["--upstream", "imap=127.0.0.1:143,[::1]:0"])
        .args(["--upstream-domain", "example.org:gopher=127.0.0.1:70"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("imap=127.0.0.1:143,[::1]:0") && err.contains("port must be"),
        "{err}"
    );
    assert!(err.contains("gopher"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_members_down_is_a_temporary_failure() {
    let mut imap: Vec<Backend> = vec![Backend::start("127.0.0.1:0"), Backend::start("[::1]:0")];
    let mut smtp: Vec<Backend> = (0..2).map(|_| Backend::start("127.0.0.1:0")).collect();
    let d = Daemon::start(
        &args(&[
            "--upstream",
            &format!("imap={},{}", imap[0].spec(), imap[1].spec()),
            "--upstream",
            &format!("smtp={},{}", smtp[0].spec(), smtp[1].spec()),
            "--upstream-check-ms",
            "100",
        ]),
        NO_THROTTLE,
        "",
    );
    assert_eq!(d.login("imap", "user1", "pw1").await.0, "OK");
    assert_eq!(d.login("smtp", "user1", "pw1").await.0, "OK");
    for m in imap.iter_mut().chain(smtp.iter_mut()) {
        m.stop();
    }
    until("imap answers a temporary failure", || async {
        d.login("imap", "user1", "pw1").await.0 == TEMPORARY
    })
    .await;
    until("smtp answers a temporary failure", || async {
        d.login("smtp", "user1", "pw1").await.0 == TEMPORARY
    })
    .await;
    let h = d
        .ask(&[
            ("HTTP_AUTH_METHOD", "plain"),
            ("HTTP_AUTH_USER", "user2"),
            ("HTTP_AUTH_PASS", "pw2"),
            ("HTTP_AUTH_PROTOCOL", "smtp"),
            ("HTTP_AUTH_LOGIN_ATTEMPT", "1"),
            ("HTTP_CLIENT_IP", "192.0.2.1"),
        ])
        .await;
    assert_eq!(
        h.get("Auth-Error-Code").map(String::as_str),
        Some("451 4.3.0"),
        "{h:?}"
    );
    assert!(!h.contains_key("Auth-Server"));
    assert!(
        d.log_count("all 2 upstream(s) of the imap pool are down") >= 1,
        "{}",
        d.log()
    );
    // A wrong password is still a wrong password, not a temporary failure.
    assert_eq!(
        d.login("imap", "user1", "nope").await.0,
        "Invalid login or password"
    );
    imap[1].restart();
    until("the IPv6 member is used again", || async {
        d.login("imap", "user1", "pw1").await.1 == Some(imap[1].addr)
    })
    .await;
}

// ---------------------------------------------------------------- Redis

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_shared_through_redis() {
    let mut redis = Redis::start();
    let mut b: Vec<Backend> = (0..2).map(|_| Backend::start("127.0.0.1:0")).collect();
    let pool = format!("imap={},{}", b[0].spec(), b[1].spec());
    let flags = args(&[
        "--upstream",
        &pool,
        "--upstream-check-ms",
        "100",
        "--state",
        &redis.url(),
    ]);
    let one = Daemon::start(&flags, NO_THROTTLE, "");
    let two = Daemon::start(&flags, NO_THROTTLE, "");
    let everyone = users("");
    let before = one.placement(&everyone).await;
    assert_eq!(two.placement(&everyone).await, before, "instances disagree");
    let (victim, victim_pw) = everyone
        .iter()
        .find(|(u, _)| before[u] == b[0].addr)
        .cloned()
        .expect("someone on the first member");

    // Another instance (simulated: an entry in the shared set) found the
    // first member down, although both of ours can reach it.
    let key = format!("nginx-auth-fcgi:upstream-down:{}", b[0].addr);
    let far = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000)
        .to_string();
    assert_eq!(redis.cmd(&["ZADD", &key, &far, "elsewhere"]), ":1");
    for d in [&one, &two] {
        until("the shared finding is followed", || async {
            d.login("imap", &victim, &victim_pw).await.1 == Some(b[1].addr)
        })
        .await;
    }
    assert_eq!(
        one.placement(&everyone).await,
        two.placement(&everyone).await
    );
    assert_eq!(redis.cmd(&["ZREM", &key, "elsewhere"]), ":1");
    for d in [&one, &two] {
        until("back once the finding is withdrawn", || async {
            d.login("imap", &victim, &victim_pw).await.1 == Some(b[0].addr)
        })
        .await;
    }

    // Our own findings are published, and withdrawn when the member is back.
    b[0].stop();
    until("both instances published the member down", || async {
        redis.cmd(&["ZCARD", &key]) == ":2"
    })
    .await;
    b[0].restart();
    until("findings withdrawn", || async {
        redis.cmd(&["ZCARD", &key]) == ":0"
    })
    .await;
    for d in [&one, &two] {
        until("member used again", || async {
            d.login("imap", &victim, &victim_pw).await.1 == Some(b[0].addr)
        })
        .await;
    }

    // Redis gone: logins go on, on local findings alone.
    redis.stop();
    until("Redis failure noticed", || async {
        one.log_count("upstream health: Redis failed") == 1
    })
    .await;
    assert_eq!(one.placement(&everyone).await, before);
    b[1].stop();
    until("local finding used without Redis", || async {
        let moved = everyone
            .iter()
            .find(|(u, _)| before[u] == b[1].addr)
            .unwrap();
        one.login("imap", &moved.0, &moved.1).await.1 == Some(b[0].addr)
    })
    .await;
    assert_eq!(
        one.log_count("upstream health: Redis failed"),
        1,
        "logged once"
    );
}

// ------------------------------------------------------ PROXY trust

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_address_only_from_trusted_proxies() {
    let up = Backend::start("127.0.0.1:0");
    let config = "[throttle]\nblock_ip = 50\nblock_ip_user = 3\nblock_secs = 600\n";
    let d = Daemon::start(
        &args(&[
            "--upstream",
            &format!("imap={}", up.spec()),
            "--trusted-proxy",
            "10.9.0.0/16",
        ]),
        config,
        "",
    );
    let proxy = "10.9.0.1";
    let x = "198.51.100.7";
    for i in 0..3 {
        // Distinct guesses (a repeated wrong password counts once).
        let guess = format!("wrong{i}");
        let (s, _) = d.login_from("imap", "user1", &guess, proxy, Some(x)).await;
        assert_eq!(s, "Invalid login or password");
    }
    // X is blocked for user1: the right password does not help…
    let (s, _) = d.login_from("imap", "user1", "pw1", proxy, Some(x)).await;
    assert_eq!(s, "Invalid login or password", "{}", d.log());
    assert!(d
        .log()
        .lines()
        .any(|l| l.contains(&format!("ip={x}")) && l.contains("throttle=blocked")));
    // …but another client behind the same proxy gets in: the proxy is not blocked.
    let (s, _) = d
        .login_from("imap", "user1", "pw1", proxy, Some("198.51.100.8"))
        .await;
    assert_eq!(s, "OK");
    assert!(d
        .log()
        .lines()
        .any(|l| l.contains("result=ok") && l.contains("ip=198.51.100.8")));

    // An untrusted peer's PROXY address is ignored: this is the peer itself,
    // not the blocked X, and the peer is what is counted.
    let rogue = "10.8.0.1";
    let (s, _) = d.login_from("imap", "user1", "pw1", rogue, Some(x)).await;
    assert_eq!(s, "OK", "{}", d.log());
    assert!(d
        .log()
        .lines()
        .any(|l| l.contains("result=ok") && l.contains(&format!("ip={rogue}"))));
    assert!(
        d.log_count(&format!(
            "Proxy-Protocol-Addr {x} ignored: peer {rogue} is not a trusted proxy"
        )) >= 1
    );
    for (i, other) in ["198.51.100.20", "198.51.100.21", "198.51.100.22"]
        .iter()
        .enumerate()
    {
        d.login_from("imap", "user2", &format!("wrong{i}"), rogue, Some(other))
            .await;
    }
    let (s, _) = d
        .login_from("imap", "user2", "pw2", rogue, Some("198.51.100.23"))
        .await;
    assert_eq!(
        s, "Invalid login or password",
        "the rogue peer itself is blocked"
    );
}

// ------------------------------------------------- through real nginx

/// nginx (mail module) in front of the daemon, in `dir`; stopped on drop.
struct Nginx {
    proc: Proc,
    dir: PathBuf,
}

impl Nginx {
    /// `imap`: a plain IMAP listener; `imap_pp`: one with `proxy_protocol`.
    fn start(dir: &Path, sock: &Path, imap: u16, imap_pp: u16, http: u16) -> Nginx {
        let nginx = require("nginx", "nginx-full");
        let module = "/usr/lib/nginx/modules/ngx_mail_module.so";
        require_file(module, "libnginx-mod-mail");
        let d = dir.display();
        let conf = format!(
            r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log info;
load_module {module};
events {{ worker_connections 64; }}
mail {{
    server_name mail.test;
    auth_http 127.0.0.1:{http}/mailauth;
    proxy_pass_error_message on;
    resolver off;
    server {{ listen 127.0.0.1:{imap}; protocol imap; imap_auth login plain; }}
    server {{ listen 127.0.0.1:{imap_pp} proxy_protocol; protocol imap; imap_auth login plain; }}
}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{http};
        location = /mailauth {{
            include /etc/nginx/fastcgi_params;
            fastcgi_pass unix:{sock};
        }}
    }}
}}
"#,
            sock = sock.display()
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let mut cmd = Command::new(nginx);
        cmd.arg("-p")
            .arg(format!("{d}/"))
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(dir.join("nginx-startup.log"));
        let mut n = Nginx {
            proc: Proc::spawn("nginx", &mut cmd, &dir.join("nginx.out")),
            dir: dir.to_owned(),
        };
        // On failure the panic prints the logs (drop).
        for port in [imap, imap_pp, http] {
            n.proc
                .wait_for(&format!("port {port}"), NOTICE, || port_open(port));
        }
        n
    }

    fn log(&self) -> String {
        ["nginx.out", "nginx-startup.log", "nginx-error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.proc.stop();
        if std::thread::panicking() {
            eprintln!("--- nginx log ---\n{}", self.log());
        }
    }
}

/// Logs in with Python's imaplib through nginx (optionally sending a PROXY
/// v1 header first, as a load balancer would); the server's reply to LOGIN.
fn imaplib_login(port: u16, user: &str, pass: &str, proxy_from: Option<&str>) -> String {
    let script = r#"
import imaplib, socket, sys
port, user, pw, src = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class Client(imaplib.IMAP4):
    def _create_socket(self, timeout):
        s = socket.create_connection((self.host, self.port), timeout)
        if src:
            s.sendall(f"PROXY TCP4 {src} 127.0.0.1 40000 {port}\r\n".encode())
        return s
c = Client("127.0.0.1", port, timeout=15)
try:
    typ, data = c.login(user, pw)
    print(typ, data[0].decode())
    c.logout()
except imaplib.IMAP4.error as e:
    print("NO", e)
"#;
    run_stdout(
        Command::new(require("python3", "python3"))
            .arg("-c")
            .arg(script)
            .args([&port.to_string(), user, pass, proxy_from.unwrap_or("")]),
        "imaplib client",
    )
    .trim()
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_logs_in_at_the_member_we_chose() {
    let mut b: Vec<Backend> = (0..2).map(|_| Backend::imap("127.0.0.1:0")).collect();
    let d = Daemon::start(
        &args(&[
            "--upstream",
            &format!("imap={},{}", b[0].spec(), b[1].spec()),
            "--upstream-check-ms",
            "100",
            "--trusted-proxy",
            "127.0.0.1/32",
        ]),
        NO_THROTTLE,
        "",
    );
    let [imap, imap_pp, http] = crate::common::e2e::free_ports::<3>();
    let nginx = Nginx::start(d.dir(), d.sock(), imap, imap_pp, http);

    let (user, pass) = ("user5", "pw5");
    let chosen = d.login("imap", user, pass).await.1.unwrap();
    let (at, other) = if chosen == b[0].addr { (0, 1) } else { (1, 0) };
    let reply = imaplib_login(imap, user, pass, None);
    assert!(reply.starts_with("OK"), "{reply}\n{}", nginx.log());
    assert_eq!(b[at].logins(), vec![user.to_owned()]);
    assert!(b[other].logins().is_empty());

    // The chosen member goes away: nginx is sent to the other one.
    b[at].stop();
    until("the user moved", || async {
        d.login("imap", user, pass).await.1 == Some(b[other].addr)
    })
    .await;
    let reply = imaplib_login(imap, user, pass, None);
    assert!(reply.starts_with("OK"), "{reply}\n{}", nginx.log());
    assert_eq!(b[other].logins(), vec![user.to_owned()]);

    // Through the proxy_protocol listener: nginx's peer (127.0.0.1) is a
    // trusted proxy, so the PROXY source is the client in our audit log.
    let reply = imaplib_login(imap_pp, user, pass, Some("198.51.100.77"));
    assert!(reply.starts_with("OK"), "{reply}\n{}", nginx.log());
    assert!(
        d.log()
            .lines()
            .any(|l| l.contains("result=ok") && l.contains("ip=198.51.100.77")),
        "{}",
        d.log()
    );
    // A wrong password through the same path is a failure for that client.
    let reply = imaplib_login(imap_pp, user, "wrong", Some("198.51.100.78"));
    assert!(reply.starts_with("NO"), "{reply}");
    assert!(d
        .log()
        .lines()
        .any(|l| l.contains("result=fail") && l.contains("ip=198.51.100.78")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_replaces_the_pools_and_their_checks() {
    let old: Vec<Backend> = (0..2).map(|_| Backend::start("127.0.0.1:0")).collect();
    let new: Vec<Backend> = (0..2).map(|_| Backend::start("127.0.0.1:0")).collect();
    let config = |pool: &[Backend]| {
        format!(
            "upstream = [\"imap={},{}\"]\nupstream_check_ms = 100\n{NO_THROTTLE}",
            pool[0].spec(),
            pool[1].spec()
        )
    };
    let d = Daemon::start(&[], &config(&old), "");
    until("the old members are checked", || async {
        old.iter().all(|b| b.accepted() >= 2)
    })
    .await;
    let (status, server) = d.login("imap", "user1", "pw1").await;
    assert_eq!(status, "OK");
    assert!(old.iter().any(|b| Some(b.addr) == server));

    std::fs::write(d.path("config.toml"), config(&new)).unwrap();
    assert!(d.signal(libc::SIGHUP), "kill -HUP");
    until("the new pool serves", || async {
        let server = d.login("imap", "user1", "pw1").await.1;
        new.iter().any(|b| Some(b.addr) == server)
    })
    .await;
    until("the new members are checked", || async {
        new.iter().all(|b| b.accepted() >= 2)
    })
    .await;
    // The old service is gone with its check tasks: no more connects to the
    // old members (ten intervals pass while we look).
    let counts: Vec<usize> = old.iter().map(Backend::accepted).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        old.iter().map(Backend::accepted).collect::<Vec<_>>(),
        counts,
        "the old configuration's checks still run"
    );
}
