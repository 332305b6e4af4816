//! The daemon binary as a process on its own (no nginx in front): `serve`
//! on a unix socket in a temp dir, its output in a log file there, waited
//! for until the socket accepts and stopped with its process group on drop
//! (the log is printed when a test panics). The e2e [`Stack`] runs its
//! daemon the same way, behind nginx.
//!
//! [`Stack`]: super::e2e::Stack

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use super::e2e::daemon_bin;
use super::proc::Proc;

/// How long the daemon may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the binary with `args` (an admin command), `stdin` as its input; its
/// output, whatever the exit status.
pub fn run_cli<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>, stdin: &str) -> Output {
    let mut child = Command::new(daemon_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nginx-auth-fcgi");
    // A command that fails before reading its stdin (bad flag) closes the
    // pipe first: a broken pipe here is expected, not a test failure.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().expect("wait for nginx-auth-fcgi")
}

/// A running `nginx-auth-fcgi serve`.
pub struct Daemon {
    proc: Proc,
    sock: PathBuf,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// `serve --listen unix:DIR/auth.sock ARGS` in `dir` (where the test put
    /// its config and users), output in `DIR/daemon.log`; returns once the
    /// socket accepts, panics with the log if the daemon exits first.
    pub fn start<S: AsRef<OsStr>>(
        dir: tempfile::TempDir,
        args: impl IntoIterator<Item = S>,
    ) -> Daemon {
        let sock = dir.path().join("auth.sock");
        let mut cmd = Command::new(daemon_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .args(args);
        let mut proc = Proc::spawn("nginx-auth-fcgi", &mut cmd, &dir.path().join("daemon.log"));
        proc.wait_for("its socket to accept", START_TIMEOUT, || {
            UnixStream::connect(&sock).is_ok()
        });
        Daemon { proc, sock, dir }
    }

    /// A temp dir for [`Daemon::start`] that others can enter (a daemon that
    /// drops privileges still reaches its files).
    pub fn open_dir() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        dir
    }

    /// The FastCGI socket.
    pub fn sock(&self) -> &Path {
        &self.sock
    }

    /// The daemon's dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `rel` in the daemon's dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Panics with the log if the daemon has exited.
    #[track_caller]
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.proc.exited() {
            panic!("daemon died ({status}):\n{}", self.log());
        }
    }

    /// Sends `sig` to the daemon; whether that worked.
    pub fn signal(&self, sig: libc::c_int) -> bool {
        self.proc.signal(sig)
    }

    /// SIGTERM; the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.proc.terminate()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.proc.stop();
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log());
        }
    }
}
