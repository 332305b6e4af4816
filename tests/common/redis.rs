//! A throwaway `redis-server` on a free loopback port, in its own temp dir
//! and process group, nothing saved; stopped on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::proc::{port_open, require, retry_on_clash, Proc};

const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Redis {
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis {
            proc: None,
            dir: tempfile::tempdir().expect("tempdir"),
            port: 0,
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
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null());
        let log = self.dir.path().join(format!("redis.{port}.log"));
        self.port = port;
        self.proc
            .insert(Proc::spawn("redis-server", &mut cmd, &log))
            .try_wait_for("its port", START_TIMEOUT, || port_open(port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: the server is gone at once.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// One command in RESP; the reply's first line.
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
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
