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
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::proc::{port_open, read_lossy, require, require_file, retry_on_clash, Proc};

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A user in the passwd-file (`{PLAIN}` passwords: no `:` allowed).
pub use super::e2e::User;

pub const ALICE: User = User::new("alice", "PLAIN", "alice-pw-31b7");
/// Space, `%` and UTF-8 in the password.
pub const SPECIAL: User = User::new("special", "PLAIN", "p w%25é ü");
/// Routed to its own upstream by extra fields.
pub const ROUTED: User = User::new("routed", "PLAIN", "routed-pw-5e")
    .with_extra("host=192.0.2.44 port=1143 destuser=routed-backend");
/// `nologin`: the password is right but the account may not log in.
pub const LOCKED: User =
    User::new("locked", "PLAIN", "locked-pw-0c").with_extra("nologin reason=locked");
pub const USERS: [User; 4] = [ALICE, SPECIAL, ROUTED, LOCKED];

/// A running Dovecot (auth service + IMAP) in a temp dir.
/// Dropping it stops Dovecot (its [`Proc`]), then removes the dir.
pub struct Dovecot {
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    pub imap_port: u16,
}

impl Dovecot {
    pub fn start() -> Dovecot {
        require("dovecot", "dovecot-core");
        require_file("/usr/lib/dovecot/imap", "dovecot-imapd");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_owned();
        let passwd: String = USERS
            .iter()
            .map(|u| {
                format!(
                    "{}:{{{}}}{}::::::{}\n",
                    u.name, u.scheme, u.password, u.extra
                )
            })
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
        let conf = |imap_port: u16| {
            format!(
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
            )
        };
        let conf_path = d.join("dovecot.conf");
        let mut dovecot = Dovecot {
            dir,
            imap_port: 0,
            proc: None,
        };
        retry_on_clash("dovecot", |[port]| {
            fs::write(&conf_path, conf(port)).expect("write dovecot.conf");
            dovecot.imap_port = port;
            dovecot
                .spawn()
                .map_err(|e| format!("{e}\ndovecot.log:\n{}", dovecot.log()))
        });
        dovecot
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(require("dovecot", "dovecot-core"));
        cmd.arg("-F")
            .arg("-c")
            .arg(self.dir.path().join("dovecot.conf"));
        let log = self.dir.path().join("dovecot.out");
        let socket = self.auth_socket();
        let port = self.imap_port;
        self.proc
            .insert(Proc::spawn("dovecot", &mut cmd, &log))
            .try_wait_for("its auth socket and IMAP port", READY_TIMEOUT, || {
                UnixStream::connect(&socket).is_ok() && port_open(port)
            })
    }

    /// The `auth-client` socket (the `dovecot:` passdb's path).
    pub fn auth_socket(&self) -> PathBuf {
        self.dir.path().join("run/auth-client")
    }

    /// Stops Dovecot; its socket files stay behind, as after a crash.
    pub fn stop(&mut self) {
        drop(self.proc.take());
    }

    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("dovecot.log"))
    }
}

/// `saslauthd -a rimap` against a [`Dovecot`]'s IMAP listener.
/// Dropping it stops saslauthd, then removes the dir.
pub struct Saslauthd {
    proc: Option<Proc>,
    dir: tempfile::TempDir,
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
        let mut proc = Proc::spawn("saslauthd", &mut cmd, &log);
        let mux = run.join("mux");
        proc.wait_for("its mux socket", READY_TIMEOUT, || {
            UnixStream::connect(&mux).is_ok()
        });
        Saslauthd {
            dir,
            proc: Some(proc),
        }
    }

    /// The `mux` socket (the `saslauthd:` passdb's path).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/mux")
    }

    pub fn stop(&mut self) {
        drop(self.proc.take());
    }

    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("saslauthd.log"))
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

    /// A `scheme:` passdb (`dovecot`, `saslauthd`) on a silent socket fails
    /// with a timeout, quickly.
    pub async fn assert_times_out(scheme: &str) {
        use nginx_auth_fcgi::passdb::{AnyPassdb, Passdb, PassdbError};
        let silent = Silent::new();
        let uri = format!("{scheme}:{}?timeout=0.3", silent.path.display());
        let db = AnyPassdb::open(&uri, None).expect("open");
        let start = std::time::Instant::now();
        let r = db
            .verify_plain("alice", &[nginx_auth_fcgi::secret::Secret::from("pw")])
            .await;
        assert!(matches!(r, Err(PassdbError::Timeout)), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
