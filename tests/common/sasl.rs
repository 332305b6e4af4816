//! Real Dovecot and Cyrus saslauthd for the plaintext-only socket passdbs
//! (`tests/backends/dovecot_auth.rs`, `tests/backends/saslauthd.rs`).
//!
//! [`Dovecot`] runs in its own temp dir: its `auth-client` socket for the
//! `dovecot:` passdb and an IMAP listener on a free loopback port, both over
//! one passwd-file. [`Saslauthd`] runs `saslauthd -a rimap` against that IMAP
//! listener. Why rimap: `-a sasldb` is fixed to `/etc/sasldb2` in Debian's
//! build (the `-O` path is ignored) and `-a shadow`/`pam` would need system
//! users added to and removed from the machine; rimap needs nothing outside
//! the temp dir and still drives the real saslauthd daemon end to end.
//!
//! Every process runs in its own process group and is stopped on drop, also
//! when a test panics. A missing program panics naming the Debian package
//! (`bash tests/run` installs them); nothing is skipped.
#![allow(dead_code)]

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A user in the passwd-file (`{PLAIN}` passwords: no `:` allowed).
pub struct User {
    pub name: &'static str,
    pub password: &'static str,
    /// Passdb extra fields (passwd-file's 8th field, space-separated).
    pub extra: &'static str,
}

pub const ALICE: User = User {
    name: "alice",
    password: "alice-pw-31b7",
    extra: "",
};
/// Space, `%` and UTF-8 in the password.
pub const SPECIAL: User = User {
    name: "special",
    password: "p w%25é ü",
    extra: "",
};
/// Routed to its own upstream by extra fields.
pub const ROUTED: User = User {
    name: "routed",
    password: "routed-pw-5e",
    extra: "host=192.0.2.44 port=1143 destuser=routed-backend",
};
/// `nologin`: the password is right but the account may not log in.
pub const LOCKED: User = User {
    name: "locked",
    password: "locked-pw-0c",
    extra: "nologin reason=locked",
};
pub const USERS: [User; 4] = [ALICE, SPECIAL, ROUTED, LOCKED];

fn require(program: &str, package: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "program `{program}` not found; install the Debian package `{package}` \
         (`bash tests/run` installs everything the tests need)"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn kill_group(child: &mut Child) {
    let pgid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child's process group; no memory involved.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        sleep(Duration::from_millis(10));
    }
    // SAFETY: as above; reaps workers that outlived their master.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let _ = child.wait();
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let out = fs::File::create(log).expect("create log");
    let err = out.try_clone().expect("dup log");
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

fn wait_for(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !ready() {
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        sleep(Duration::from_millis(20));
    }
}

/// A running Dovecot (auth service + IMAP) in a temp dir.
pub struct Dovecot {
    dir: tempfile::TempDir,
    pub imap_port: u16,
    child: Option<Child>,
}

impl Dovecot {
    pub fn start() -> Dovecot {
        require("dovecot", "dovecot-core");
        assert!(
            Path::new("/usr/lib/dovecot/imap").exists(),
            "/usr/lib/dovecot/imap not found; install the Debian package `dovecot-imapd`"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let imap_port = free_port();
        let passwd: String = USERS
            .iter()
            .map(|u| format!("{}:{{PLAIN}}{}::::::{}\n", u.name, u.password, u.extra))
            .collect();
        fs::write(d.join("passwd"), passwd).expect("write passwd");
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let root = unsafe { libc::geteuid() } == 0;
        let (login_user, internal_user) = if root {
            ("dovenull".to_owned(), "dovecot".to_owned())
        } else {
            let me = std::env::var("USER").expect("USER");
            (me.clone(), me)
        };
        let conf = format!(
            r#"base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
# Failures are answered at once (production: 2 s), to keep the tests fast.
auth_failure_delay = 0
# saslauthd's rimap logins all come from 127.0.0.1, so Dovecot's per-IP auth
# penalty would slow every login after the first failure (2 s, 4 s, …).
# The auth process skips the penalty when anvil's socket is missing.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
default_login_user = {login_user}
default_internal_user = {internal_user}
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={d}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"#,
            d = d.display()
        );
        fs::write(d.join("dovecot.conf"), conf).expect("write dovecot.conf");
        let mut d = Dovecot {
            dir,
            imap_port,
            child: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(require("dovecot", "dovecot-core"));
        cmd.arg("-F")
            .arg("-c")
            .arg(self.dir.path().join("dovecot.conf"));
        self.child = Some(spawn(&mut cmd, &self.dir.path().join("dovecot.out")));
        let socket = self.auth_socket();
        let port = self.imap_port;
        wait_for("dovecot", &self.dir.path().join("dovecot.out"), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// The `auth-client` socket (the `dovecot:` passdb's path).
    pub fn auth_socket(&self) -> PathBuf {
        self.dir.path().join("run/auth-client")
    }

    /// Stops Dovecot; its socket files stay behind, as after a crash.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c);
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `saslauthd -a rimap` against a [`Dovecot`]'s IMAP listener.
pub struct Saslauthd {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Saslauthd {
    pub fn start(imap_port: u16) -> Saslauthd {
        let bin = require("saslauthd", "sasl2-bin");
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        fs::create_dir(&run).expect("mkdir run");
        let mut cmd = Command::new(bin);
        // -d: stay in the foreground (and log to stderr); -n 1: one worker.
        cmd.args(["-a", "rimap", "-O"])
            .arg(format!("127.0.0.1/{imap_port}"))
            .arg("-m")
            .arg(&run)
            .args(["-n", "1", "-d"]);
        let log = dir.path().join("saslauthd.log");
        let child = spawn(&mut cmd, &log);
        let s = Saslauthd {
            dir,
            child: Some(child),
        };
        let mux = s.socket();
        wait_for("saslauthd", &log, || {
            std::os::unix::net::UnixStream::connect(&mux).is_ok()
        });
        s
    }

    /// The `mux` socket (the `saslauthd:` passdb's path).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/mux")
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c);
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("saslauthd.log")).unwrap_or_default()
    }
}

impl Drop for Saslauthd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A unix socket that accepts and never answers, for timeout tests. Lives
/// as long as the returned guard.
pub struct Silent {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    _listener: std::os::unix::net::UnixListener,
}

impl Silent {
    pub fn new() -> Silent {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("silent");
        // The backlog takes our connection; nobody reads from it.
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        Silent {
            _dir: dir,
            path,
            _listener: listener,
        }
    }
}
