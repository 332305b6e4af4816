//! A throwaway `redis-server` on a free loopback port, in its own temp dir
//! and process group, nothing saved; stopped on drop. Also over TLS
//! ([`RedisTls`], [`Redis::start_tls`]) with certificates made by openssl,
//! as a replica ([`Redis::start_replica_of`]), and a master + replica
//! watched by `redis-sentinel` ([`SentinelSet`]) whose master can be killed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::proc::{
    port_open, require, retry_on_clash, run_stdout, try_wait_until, wait_until, Proc,
};
use super::sql::{make_ca, make_named_leaf};

const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The master name the sentinels of a [`SentinelSet`] watch.
pub const MASTER_NAME: &str = "mymaster";

/// A test CA with a server certificate (`localhost`, `127.0.0.1`) and a
/// client certificate, and a second CA that signed neither.
pub struct RedisTls {
    dir: tempfile::TempDir,
    /// (key, certificate) of the CA.
    pub ca: (PathBuf, PathBuf),
    /// (key, certificate) of the server.
    pub server: (PathBuf, PathBuf),
    /// (key, certificate) of the client.
    pub client: (PathBuf, PathBuf),
    /// (key, certificate) of a CA that signed nothing here.
    pub other_ca: (PathBuf, PathBuf),
}

impl RedisTls {
    pub fn make() -> RedisTls {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = make_ca(dir.path(), "redis-ca");
        let server = make_named_leaf(dir.path(), &ca, "redis-server");
        let client = make_named_leaf(dir.path(), &ca, "redis-client");
        let other_ca = make_ca(dir.path(), "other-ca");
        RedisTls {
            dir,
            ca,
            server,
            client,
            other_ca,
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// How a TLS server treats client certificates (`tls-auth-clients`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
}

pub struct Redis {
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    pub port: u16,
    /// The CA, server and client files, and whether client certificates
    /// are required; `None`: plain TCP.
    tls: Option<(PathBuf, PathBuf, PathBuf, PathBuf, PathBuf, ClientAuth)>,
    /// More `redis-server` arguments (e.g. `--replicaof`).
    extra: Vec<String>,
    /// `requirepass` (and `masterauth`), used by [`Redis::cli`] too.
    password: Option<String>,
}

/// Passwords of a [`SentinelSet`]: the servers' (`requirepass`,
/// `masterauth`, the sentinels' `auth-pass`) and the sentinels' own.
#[derive(Clone, Default)]
pub struct Passwords {
    pub data: Option<String>,
    pub sentinel: Option<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_inner(None, Vec::new(), None)
    }

    /// A server on a TLS port only (`port 0`), its certificate from `tls`.
    pub fn start_tls(tls: &RedisTls, auth: ClientAuth) -> Redis {
        let files = (
            tls.ca.1.clone(),
            tls.server.1.clone(),
            tls.server.0.clone(),
            tls.client.1.clone(),
            tls.client.0.clone(),
            auth,
        );
        Redis::start_inner(Some(files), Vec::new(), None)
    }

    /// A replica of the plain server on `master`; returns once it is in
    /// sync with it.
    pub fn start_replica_of(master: u16) -> Redis {
        Redis::start_replica_with(master, None)
    }

    /// [`Redis::start_replica_of`] with `password` on both.
    fn start_replica_with(master: u16, password: Option<String>) -> Redis {
        let extra = ["--replicaof", "127.0.0.1", &master.to_string()]
            .map(str::to_owned)
            .to_vec();
        let replica = Redis::start_inner(None, extra, password);
        wait_until(
            &format!("replica {} to sync with {master}", replica.port),
            START_TIMEOUT * 3,
            || {
                replica
                    .info("replication")
                    .contains("master_link_status:up")
            },
        );
        replica
    }

    fn start_inner(
        tls: Option<(PathBuf, PathBuf, PathBuf, PathBuf, PathBuf, ClientAuth)>,
        extra: Vec<String>,
        password: Option<String>,
    ) -> Redis {
        let mut redis = Redis {
            proc: None,
            dir: tempfile::tempdir().expect("tempdir"),
            port: 0,
            tls,
            extra,
            password,
        };
        retry_on_clash("redis-server", |[port]| redis.try_spawn(port));
        redis
    }

    /// Starts the server (again) on `port`, e.g. the one it had before
    /// [`Redis::stop`].
    pub fn spawn(&mut self, port: u16) {
        if let Err(e) = self.try_spawn(port) {
            panic!("redis-server on port {port}: {e}");
        }
    }

    fn try_spawn(&mut self, port: u16) -> Result<(), String> {
        let mut cmd = Command::new(require("redis-server", "redis-server"));
        cmd.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => {
                cmd.args(["--port", &port.to_string()]);
            }
            Some((ca, cert, key, _, _, auth)) => {
                cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .arg("--tls-ca-cert-file")
                    .arg(ca)
                    .args([
                        "--tls-auth-clients",
                        match auth {
                            ClientAuth::Required => "yes",
                            ClientAuth::Optional => "optional",
                        },
                    ]);
            }
        }
        cmd.args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdin(Stdio::null());
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw, "--masterauth", pw]);
        }
        let log = self.dir.path().join(format!("redis.{port}.log"));
        self.port = port;
        self.proc
            .insert(Proc::spawn("redis-server", &mut cmd, &log))
            .try_wait_for("its port", START_TIMEOUT, || port_open(port))
    }

    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}/", self.port),
            Some(_) => format!("rediss://127.0.0.1:{}/", self.port),
        }
    }

    /// SIGKILL: the server is gone at once.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// Whether the server process runs.
    pub fn running(&self) -> bool {
        self.proc.is_some()
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        super::proc::read_lossy(&self.dir.path().join(format!("redis.{}.log", self.port)))
    }

    /// One command in RESP over plain TCP; the reply's first line.
    pub fn cmd(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// One command through `redis-cli` (over TLS with the client
    /// certificate when the server speaks TLS); its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = cli_command(self.port, self.password.as_deref());
        if let Some((ca, _, _, cert, key, _)) = &self.tls {
            cmd.arg("--tls")
                .arg("--cacert")
                .arg(ca)
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key);
        }
        run_stdout(cmd.args(args), "redis-cli")
    }

    /// `INFO SECTION`.
    pub fn info(&self, section: &str) -> String {
        self.cli(&["INFO", section])
    }

    /// The keys this program stored (`nginx-auth-fcgi:*`).
    pub fn our_keys(&self) -> Vec<String> {
        self.cli(&["--scan", "--pattern", "nginx-auth-fcgi:*"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn cli_command(port: u16, password: Option<&str>) -> Command {
    let mut cmd = Command::new(require("redis-cli", "redis-tools"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(pw) = password {
        cmd.args(["--no-auth-warning", "-a", pw]);
    }
    cmd
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() && self.port != 0 {
            eprintln!("--- redis-server {} log ---\n{}", self.port, self.log());
        }
    }
}

/// One `redis-sentinel` on a free loopback port watching [`MASTER_NAME`].
pub struct Sentinel {
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    pub port: u16,
    passwords: Passwords,
}

impl Sentinel {
    /// Watches the master on `master` with quorum 1, finding it down after
    /// 1 s without an answer.
    pub fn start(master: u16) -> Sentinel {
        Sentinel::start_with(master, Passwords::default())
    }

    /// [`Sentinel::start`] with `passwords`.
    pub fn start_with(master: u16, passwords: Passwords) -> Sentinel {
        let mut sentinel = Sentinel {
            proc: None,
            dir: tempfile::tempdir().expect("tempdir"),
            port: 0,
            passwords,
        };
        retry_on_clash("redis-sentinel", |[port]| sentinel.try_spawn(port, master));
        sentinel
    }

    fn try_spawn(&mut self, port: u16, master: u16) -> Result<(), String> {
        // Sentinel rewrites its configuration file: one per start.
        let conf = self.dir.path().join(format!("sentinel.{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {port}\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 1\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 10000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n{auth}",
                dir = self.dir.path().display(),
                auth = self.auth_lines(),
            ),
        )
        .expect("write sentinel.conf");
        let mut cmd = Command::new(require("redis-sentinel", "redis-sentinel"));
        cmd.arg(&conf).stdin(Stdio::null());
        let log = self.dir.path().join(format!("sentinel.{port}.log"));
        self.port = port;
        self.proc
            .insert(Proc::spawn("redis-sentinel", &mut cmd, &log))
            .try_wait_for("its port", START_TIMEOUT, || port_open(port))
    }

    /// The configuration lines for [`Passwords`].
    fn auth_lines(&self) -> String {
        let mut lines = String::new();
        if let Some(pw) = &self.passwords.data {
            lines.push_str(&format!("sentinel auth-pass {MASTER_NAME} {pw}\n"));
        }
        if let Some(pw) = &self.passwords.sentinel {
            lines.push_str(&format!(
                "requirepass \"{pw}\"\nsentinel sentinel-pass {pw}\n"
            ));
        }
        lines
    }

    /// SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// Starts again on its port, now watching the master on `master`.
    pub fn restart_watching(&mut self, master: u16) {
        self.stop();
        let port = self.port;
        if let Err(e) = self.try_spawn(port, master) {
            panic!("redis-sentinel on port {port}: {e}");
        }
    }

    /// `SENTINEL ARGS…` through redis-cli; its output.
    pub fn cmd(&self, args: &[&str]) -> String {
        run_stdout(
            cli_command(self.port, self.passwords.sentinel.as_deref())
                .arg("SENTINEL")
                .args(args),
            "redis-cli SENTINEL",
        )
    }

    /// The master's port as this sentinel names it.
    pub fn master_port(&self) -> Option<u16> {
        let out = self.cmd(&["get-master-addr-by-name", MASTER_NAME]);
        out.lines().nth(1)?.trim().parse().ok()
    }

    pub fn log(&self) -> String {
        super::proc::read_lossy(&self.dir.path().join(format!("sentinel.{}.log", self.port)))
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() && self.port != 0 {
            eprintln!("--- redis-sentinel {} log ---\n{}", self.port, self.log());
        }
    }
}

/// A master, one replica in sync with it, and `n` sentinels that know both:
/// ready for a failover by [`SentinelSet::kill_master`].
pub struct SentinelSet {
    /// The master first, then the replica; a killed one stays (stopped).
    pub servers: Vec<Redis>,
    pub sentinels: Vec<Sentinel>,
}

impl SentinelSet {
    pub fn start(n: usize) -> SentinelSet {
        SentinelSet::start_with(n, Passwords::default())
    }

    /// [`SentinelSet::start`] with `passwords` on servers and sentinels.
    pub fn start_with(n: usize, passwords: Passwords) -> SentinelSet {
        let master = Redis::start_inner(None, Vec::new(), passwords.data.clone());
        let replica = Redis::start_replica_with(master.port, passwords.data.clone());
        let sentinels: Vec<_> = (0..n)
            .map(|_| Sentinel::start_with(master.port, passwords.clone()))
            .collect();
        for s in &sentinels {
            // The sentinel learns the replica from the master's INFO.
            wait_until(
                &format!("sentinel {} to know the replica", s.port),
                Duration::from_secs(30),
                || {
                    s.cmd(&["replicas", MASTER_NAME])
                        .contains(&replica.port.to_string())
                },
            );
        }
        SentinelSet {
            servers: vec![master, replica],
            sentinels,
        }
    }

    /// `redis+sentinel://127.0.0.1:S1,…/mymaster`.
    pub fn url(&self) -> String {
        let hosts: Vec<_> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The server the first sentinel names master.
    pub fn master(&self) -> &Redis {
        let port = self.sentinels[0].master_port().expect("a master");
        self.servers
            .iter()
            .find(|r| r.port == port)
            .expect("the master is one of ours")
    }

    /// Waits until the replica holds what the master holds (the same
    /// number of keys) and has acknowledged it.
    pub fn wait_replicated(&self) {
        let master = self.master();
        let keys = master.cli(&["DBSIZE"]);
        for r in self
            .servers
            .iter()
            .filter(|r| r.port != master.port && r.running())
        {
            wait_until(
                &format!("replica {} to hold {} keys", r.port, keys.trim()),
                Duration::from_secs(30),
                || r.cli(&["DBSIZE"]) == keys,
            );
        }
    }

    /// SIGKILLs the master; its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master().port;
        let server = self.servers.iter_mut().find(|r| r.port == port).unwrap();
        server.stop();
        port
    }

    /// Starts the killed server on `port` again: the sentinels make it a
    /// replica of the master; returns once it is in sync.
    pub fn restart(&mut self, port: u16) {
        let server = self.servers.iter_mut().find(|r| r.port == port).unwrap();
        server.spawn(port);
        let server = self.servers.iter().find(|r| r.port == port).unwrap();
        wait_until(
            &format!("{port} to be made a replica in sync"),
            Duration::from_secs(60),
            || {
                let info = server.info("replication");
                info.contains("role:slave") && info.contains("master_link_status:up")
            },
        );
    }

    /// `SENTINEL FAILOVER`: the replica is promoted and the master demoted
    /// without a failure (retried while the sentinel finds no good replica
    /// yet); the old master's port.
    pub fn failover(&self) -> u16 {
        let old = self.master().port;
        wait_until(
            "SENTINEL FAILOVER to be accepted",
            Duration::from_secs(60),
            || {
                let said = self.sentinels[0].cmd(&["failover", MASTER_NAME]);
                std::thread::sleep(Duration::from_millis(200));
                said.trim() == "OK"
            },
        );
        old
    }

    /// Waits (at most `timeout`) until every sentinel names another master
    /// than `old`, and that server says `master` to ROLE; the new master's
    /// port and how long the wait took.
    pub fn wait_for_failover(&self, old: u16, timeout: Duration) -> (u16, Duration) {
        let start = Instant::now();
        let mut new = 0;
        let promoted = try_wait_until(
            &format!("the sentinels to promote a replica of {old}"),
            timeout,
            || {
                let ports: Vec<_> = self.sentinels.iter().map(Sentinel::master_port).collect();
                let Some(Some(port)) = ports.first().copied() else {
                    return Ok(false);
                };
                if port == old || ports.iter().any(|p| *p != Some(port)) {
                    return Ok(false);
                }
                new = port;
                let server = self.servers.iter().find(|r| r.port == port);
                Ok(server.is_some_and(|r| r.cli(&["ROLE"]).starts_with("master")))
            },
        );
        if let Err(e) = promoted {
            let logs: Vec<_> = self.sentinels.iter().map(Sentinel::log).collect();
            panic!("{e}\n{}", logs.join("\n---\n"));
        }
        (new, start.elapsed())
    }
}
