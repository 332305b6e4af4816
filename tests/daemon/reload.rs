//! SIGHUP reload of the real daemon under load: the config file is changed
//! (the IMAP upstream port, visible in `Auth-Port`) and SIGHUP sent while a
//! few clients send mail auth requests in a loop over the independent FastCGI
//! client in `common::fcgi`. No request may fail, every new port must show up,
//! and a broken config must be rejected (logged) with the old one still
//! serving.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::fcgi;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

const WORKERS: usize = 4;
/// A worker opens a new connection after this many requests, so both kept
/// and fresh connections cross the reloads.
const PER_CONNECTION: usize = 25;

fn write_config(path: &Path, users: &Path, port: u16, extra: &str) {
    let text = format!(
        "passdb = [\"passwd-file:{}\"]\n\
         upstream = [\"imap=127.0.0.1:{port}\"]\n\
         log = \"stderr\"\n\
         log_level = \"info\"\n\
         {extra}\n\
         [throttle]\n\
         enabled = false\n",
        users.display()
    );
    // Whole file at once: the daemon must never read a half-written one.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Threads of process `pid` named like the passwd-file watcher (Linux keeps
/// 15 bytes of a thread name: "watch passwd-fi").
fn watcher_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("watch passwd"))
        .count()
}

fn sighup(child: &Child) {
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill -HUP");
}

/// The daemon, killed if the test panics before stopping it (an orphan would
/// keep the test's output pipe open and the test run would never end).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

struct Stats {
    ok: u64,
    failures: Vec<String>,
}

/// One client: requests in a loop until `stop`; records the last port seen
/// in `seen` and checks that a client never goes back to an older config.
async fn worker(sock: std::path::PathBuf, stop: Arc<AtomicBool>, seen: Arc<AtomicU16>) -> Stats {
    let mut stats = Stats {
        ok: 0,
        failures: Vec::new(),
    };
    let pairs: [(&[u8], &[u8]); 6] = [
        (b"HTTP_AUTH_METHOD", b"plain"),
        (b"HTTP_AUTH_USER", b"alice"),
        (b"HTTP_AUTH_PASS", b"wonderland"),
        (b"HTTP_AUTH_PROTOCOL", b"imap"),
        (b"HTTP_AUTH_LOGIN_ATTEMPT", b"1"),
        (b"HTTP_CLIENT_IP", b"192.0.2.7"),
    ];
    let mut last_port = 0u16;
    'outer: while !stop.load(Ordering::Relaxed) {
        let mut conn = match UnixStream::connect(&sock).await {
            Ok(c) => c,
            Err(e) => {
                stats.failures.push(format!("connect: {e}"));
                break;
            }
        };
        for i in 0..PER_CONNECTION {
            let last = i + 1 == PER_CONNECTION || stop.load(Ordering::Relaxed);
            let flags = if last { 0 } else { fcgi::KEEP_CONN };
            let id = (i + 1) as u16;
            if let Err(e) = conn.write_all(&fcgi::request(id, flags, &pairs, b"")).await {
                stats.failures.push(format!("write: {e}"));
                break 'outer;
            }
            let reply = fcgi::read_reply(&mut conn, id).await;
            let status = reply.header("Auth-Status");
            let port = reply
                .header("Auth-Port")
                .and_then(|p| p.parse::<u16>().ok());
            match (status.as_deref(), port) {
                (Some("OK"), Some(port)) if reply.protocol_status == fcgi::REQUEST_COMPLETE => {
                    stats.ok += 1;
                    if port < last_port {
                        stats
                            .failures
                            .push(format!("went back from port {last_port} to {port}"));
                    }
                    last_port = port;
                    seen.store(port, Ordering::Relaxed);
                }
                _ => stats.failures.push(format!(
                    "bad reply: {:?}",
                    String::from_utf8_lossy(&reply.stdout)
                )),
            }
            if last {
                break;
            }
        }
    }
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_the_config_without_failing_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:{PLAIN}wonderland::::::\n").unwrap();
    let config = dir.path().join("config.toml");
    write_config(&config, &users, 1143, "");
    let sock = dir.path().join("auth.sock");
    let log_path = dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut daemon = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_nginx-auth-fcgi"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .stdin(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "daemon did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU16::new(0));
    let tasks: Vec<_> = (0..WORKERS)
        .map(|_| tokio::spawn(worker(sock.clone(), stop.clone(), seen.clone())))
        .collect();
    let wait_for = |port: u16| {
        let seen = seen.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(3);
            while seen.load(Ordering::Relaxed) != port {
                assert!(Instant::now() < deadline, "port {port} never served");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_for(1143).await;
    let mut problems = Vec::new();
    for port in [1144, 1145, 1146] {
        tokio::time::sleep(Duration::from_millis(250)).await;
        write_config(&config, &users, port, "");
        sighup(&daemon.0);
        wait_for(port).await;
    }
    // Two quick SIGHUPs without a change in between are harmless too.
    sighup(&daemon.0);
    sighup(&daemon.0);
    tokio::time::sleep(Duration::from_millis(250)).await;

    // A broken config: rejected, the old one keeps serving.
    write_config(&config, &users, 1999, "no_such_key = 1");
    sighup(&daemon.0);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !std::fs::read_to_string(&log_path)
        .unwrap()
        .contains("reload rejected")
    {
        assert!(Instant::now() < deadline, "no `reload rejected` log line");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let after_rejected = seen.load(Ordering::Relaxed);
    if after_rejected != 1146 {
        problems.push(format!("after a rejected reload: port {after_rejected}"));
    }

    // Every reload opened the passwd-file again, with a watcher thread of its
    // own; a replaced passdb ends its thread when its service is dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = watcher_threads(daemon.0.id());
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} passwd-file watcher threads after the reloads"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for t in tasks {
        let stats = t.await.expect("worker panicked");
        ok += stats.ok;
        problems.extend(stats.failures);
    }
    unsafe { libc::kill(daemon.0.id() as libc::pid_t, libc::SIGTERM) };
    let status = daemon.0.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(problems.is_empty(), "{problems:#?}\n{log}");
    assert!(ok > 100, "only {ok} requests served");
    assert!(status.success(), "exit {status:?}\n{log}");
    // Three changes, then two SIGHUPs that may coalesce into one reload.
    let reloads = log.matches("configuration reloaded").count();
    assert!((4..=5).contains(&reloads), "{reloads} reloads\n{log}");
    assert!(log.contains("no_such_key"), "the bad key is named\n{log}");
    assert!(
        !log.contains("1999"),
        "the broken config was never used\n{log}"
    );
}
