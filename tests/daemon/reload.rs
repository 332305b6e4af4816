//! SIGHUP reload of the real daemon under load: the config file is changed
//! (the IMAP upstream port, visible in `Auth-Port`) and SIGHUP sent while a
//! few clients send mail auth requests in a loop over the independent FastCGI
//! client in `common::fcgi`. No request may fail, every new port must show up,
//! and a broken config must be rejected (logged) with the old one still
//! serving.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::daemon::Daemon;
use crate::common::fcgi;
use crate::common::proc::wait_until_async;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

const WORKERS: usize = 4;
/// A worker opens a new connection after this many requests, so both kept
/// and fresh connections cross the reloads.
const PER_CONNECTION: usize = 25;
/// Good replies the clients get on one config before the next change.
const TRAFFIC: u64 = 50;

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

fn sighup(daemon: &Daemon) {
    assert!(daemon.signal(libc::SIGHUP), "kill -HUP");
}

struct Stats {
    ok: u64,
    failures: Vec<String>,
}

/// One client: requests in a loop until `stop`; records the last port seen
/// in `seen` and checks that a client never goes back to an older config.
/// `served` counts the good replies of all clients.
async fn worker(
    sock: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU16>,
    served: Arc<AtomicU64>,
) -> Stats {
    let mut stats = Stats {
        ok: 0,
        failures: Vec::new(),
    };
    let pairs = fcgi::mail_pairs(b"alice", b"wonderland", b"192.0.2.7");
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
                    served.fetch_add(1, Ordering::Relaxed);
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
    let config_arg = config.display().to_string();
    let mut daemon = Daemon::start(dir, ["--config", &config_arg]);
    let sock = daemon.sock().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU16::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..WORKERS)
        .map(|_| {
            tokio::spawn(worker(
                sock.clone(),
                stop.clone(),
                seen.clone(),
                served.clone(),
            ))
        })
        .collect();
    // Lets traffic run on the config in force: `n` more good replies.
    let traffic = |n: u64| {
        let served = served.clone();
        async move {
            let target = served.load(Ordering::Relaxed) + n;
            wait_until_async(
                &format!("{n} more replies"),
                Duration::from_secs(10),
                || {
                    let served = served.clone();
                    async move { served.load(Ordering::Relaxed) >= target }
                },
            )
            .await;
        }
    };
    let wait_for = |port: u16| {
        let seen = seen.clone();
        async move {
            wait_until_async(
                &format!("port {port} to be served"),
                Duration::from_secs(3),
                || {
                    let seen = seen.clone();
                    async move { seen.load(Ordering::Relaxed) == port }
                },
            )
            .await;
        }
    };
    wait_for(1143).await;
    let mut problems = Vec::new();
    for port in [1144, 1145, 1146] {
        traffic(TRAFFIC).await;
        write_config(&config, &users, port, "");
        sighup(&daemon);
        wait_for(port).await;
    }
    // Two quick SIGHUPs without a change in between are harmless too.
    sighup(&daemon);
    sighup(&daemon);
    traffic(TRAFFIC).await;

    // A broken config: rejected, the old one keeps serving.
    write_config(&config, &users, 1999, "no_such_key = 1");
    sighup(&daemon);
    wait_until_async(
        "a `reload rejected` log line",
        Duration::from_secs(3),
        || async { daemon.log().contains("reload rejected") },
    )
    .await;
    traffic(TRAFFIC).await;
    let after_rejected = seen.load(Ordering::Relaxed);
    if after_rejected != 1146 {
        problems.push(format!("after a rejected reload: port {after_rejected}"));
    }

    // Every reload opened the passwd-file again, with a watcher thread of its
    // own; a replaced passdb ends its thread when its service is dropped.
    let pid = daemon.pid();
    wait_until_async(
        "one passwd-file watcher thread after the reloads",
        Duration::from_secs(10),
        || async { watcher_threads(pid) == 1 },
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for t in tasks {
        let stats = t.await.expect("worker panicked");
        ok += stats.ok;
        problems.extend(stats.failures);
    }
    let status = daemon.terminate();
    let log = daemon.log();
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
