//! Processes for the tests: the programs they need, free loopback ports,
//! waiting for a state (with a deadline and a message saying what was
//! awaited), and children in a process group of their own that is stopped
//! when the guard drops, also when a test panics.
//!
//! A program the tests need that is missing makes them fail with the Debian
//! package to install (`bash tests/run` installs them all); nothing is
//! skipped.

use std::collections::HashSet;
use std::fs;
use std::future::Future;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(10);
/// How long a stopped process gets between SIGTERM (or its own stop
/// signal) and SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

// --------------------------------------------------------------- programs

/// Full path of `program` (on PATH, or in /usr/sbin and /sbin, which are not
/// on every user's PATH), or a panic naming it and the Debian package.
pub fn require(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(program);
        if let Ok(meta) = fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return candidate;
            }
        }
    }
    panic!(
        "program `{program}` not found; install the Debian package `{package}` \
         (`bash tests/run` installs everything the tests need)"
    );
}

/// Like [`require`] for a file given by its path (a module, a program
/// outside PATH).
pub fn require_file(path: impl AsRef<Path>, package: &str) -> PathBuf {
    let path = path.as_ref();
    assert!(
        path.exists(),
        "{} not found; install the Debian package `{package}` \
         (`bash tests/run` installs everything the tests need)",
        path.display()
    );
    path.to_owned()
}

/// The Python interpreter of `tests/run`'s virtualenv (PyPI packages the
/// tests need, e.g. `selenium`, over Debian's python3 and its site
/// packages): `$NGINX_AUTH_FCGI_TEST_PYTHON`, else `TARGET/test-venv`, where
/// TARGET is the cargo target directory this test binary was built in.
/// Panics, naming the module, when that interpreter cannot import `module`.
pub fn require_python_module(module: &str) -> PathBuf {
    let python = std::env::var_os("NGINX_AUTH_FCGI_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // TARGET/debug/deps/<test binary>
            let exe = std::env::current_exe().expect("the test binary's path");
            let target = exe.ancestors().nth(3).expect("TARGET/debug/deps/binary");
            target.join("test-venv/bin/python3")
        });
    let imported = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        imported,
        "the Python package `{module}` (PyPI) is missing: {} cannot import it \
         (`bash tests/run` installs it into the target dir's test-venv; or set \
         NGINX_AUTH_FCGI_TEST_PYTHON to a python3 that has it)",
        python.display()
    );
    python
}

/// Runs `cmd` to its end; its output, or a panic with what it printed when it
/// could not start or failed.
pub fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`run`], its standard output as text.
pub fn run_stdout(cmd: &mut Command, what: &str) -> String {
    String::from_utf8_lossy(&run(cmd, what).stdout).into_owned()
}

/// [`run_stdout`], split into lines.
pub fn run_lines(cmd: &mut Command, what: &str) -> Vec<String> {
    run_stdout(cmd, what).lines().map(str::to_owned).collect()
}

// ------------------------------------------------------------------ ports

/// `N` distinct free loopback ports, never handed out twice in this process.
///
/// All listeners are held until every port is chosen, so one call cannot
/// return the same port twice; the port is free again when the server under
/// test binds it. Another process may take it meanwhile: start servers with
/// [`retry_on_clash`].
pub fn free_ports<const N: usize>() -> [u16; N] {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    let mut listeners = Vec::new();
    let mut ports = [0u16; N];
    let mut i = 0;
    while i < N {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        listeners.push(listener);
        if handed_out.insert(port) {
            ports[i] = port;
            i += 1;
        }
    }
    ports
}

/// One free loopback port (see [`free_ports`]).
pub fn free_port() -> u16 {
    let [port] = free_ports::<1>();
    port
}

/// Whether a start failure's text says a port was taken.
pub fn is_clash(text: &str) -> bool {
    text.to_ascii_lowercase().contains("address already in use")
}

/// Calls `start` with fresh free ports until it does not fail with a port
/// clash ([`is_clash`] on its error), three tries at most; the last error
/// panics.
pub fn retry_on_clash<const N: usize, T>(
    what: &str,
    mut start: impl FnMut([u16; N]) -> Result<T, String>,
) -> T {
    const TRIES: u32 = 3;
    for attempt in 1..=TRIES {
        match start(free_ports::<N>()) {
            Ok(started) => return started,
            Err(e) if attempt < TRIES && is_clash(&e) => {
                eprintln!("{what}: a port was taken meanwhile, starting again: {e}");
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    unreachable!("the last try returns or panics")
}

/// Whether something accepts connections on loopback `port`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

// ------------------------------------------------------------------ waits

/// Polls `ready` until it holds; a panic naming `what` after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    if let Err(e) = try_wait_until(what, timeout, || Ok(ready())) {
        panic!("{e}");
    }
}

/// Polls `ready` until it says `Ok(true)`; its first `Err`, or an error naming
/// `what` after `timeout`.
pub fn try_wait_until(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        sleep(POLL);
    }
}

/// Waits until something listens on loopback `port`.
#[track_caller]
pub fn wait_port(port: u16, timeout: Duration) {
    wait_until(&format!("127.0.0.1:{port} to accept"), timeout, || {
        port_open(port)
    });
}

/// Waits until `path` exists.
#[track_caller]
pub fn wait_file(path: &Path, timeout: Duration) {
    wait_until(&format!("{} to exist", path.display()), timeout, || {
        path.exists()
    });
}

/// [`wait_until`] for async checks; polls on tokio's clock.
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

// -------------------------------------------------------------- processes

/// Sends `signal` to process `pid` (a negative `pid`: to that group);
/// whether kill(2) succeeded.
pub fn signal(pid: i32, signal: libc::c_int) -> bool {
    // SAFETY: kill(2) touches no memory of ours.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// Reads a log file for a message; a note instead when it cannot be read.
pub fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A child in a process group of its own, stopped with the whole group when
/// this guard drops.
pub struct Proc {
    name: String,
    child: Child,
    /// Where its stdout and stderr go, if to a file.
    log: Option<PathBuf>,
    /// Sent to the group first on [`Proc::stop`] (SIGTERM unless said).
    stop_signal: libc::c_int,
    /// The group is gone and its id may be reused.
    stopped: bool,
}

impl Proc {
    /// Starts `cmd` with stdin from /dev/null and stdout and stderr in `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let out = fs::File::create(log)
            .unwrap_or_else(|e| panic!("{name}: create log {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let mut proc = Proc::spawn_with(name, cmd);
        proc.log = Some(log.to_owned());
        proc
    }

    /// Starts `cmd` with the stdio it was given.
    pub fn spawn_with(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_owned(),
            child,
            log: None,
            stop_signal: libc::SIGTERM,
            stopped: false,
        }
    }

    /// The signal [`Proc::stop`] sends first (PostgreSQL wants SIGINT).
    pub fn stop_signal(mut self, signal: libc::c_int) -> Proc {
        self.stop_signal = signal;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// What it printed so far (empty without a log file).
    pub fn log(&self) -> String {
        self.log.as_deref().map(read_lossy).unwrap_or_default()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        let _ = try_wait_until("exit", timeout, || {
            status = self.exited();
            Ok(status.is_some())
        });
        status
    }

    /// Polls `ready` until it holds; an error with the output when the
    /// process exits first or `timeout` passes.
    pub fn try_wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let name = self.name.clone();
        let result = try_wait_until(&format!("{name}: {what}"), timeout, || {
            if ready() {
                return Ok(true);
            }
            match self.exited() {
                Some(status) => Err(format!(
                    "{name} exited ({status}) while waiting for {what}; its output:\n{}",
                    self.log()
                )),
                None => Ok(false),
            }
        });
        result.map_err(|e| {
            if e.starts_with("timed out") {
                format!("{e}; {name}'s output so far:\n{}", self.log())
            } else {
                e
            }
        })
    }

    /// [`Proc::try_wait_for`] that panics on failure.
    #[track_caller]
    pub fn wait_for(&mut self, what: &str, timeout: Duration, ready: impl FnMut() -> bool) {
        if let Err(e) = self.try_wait_for(what, timeout, ready) {
            panic!("{e}");
        }
    }

    /// Sends `sig` to the process alone; whether that worked.
    pub fn signal(&self, sig: libc::c_int) -> bool {
        signal(self.child.id() as i32, sig)
    }

    /// Sends `sig` to the whole group.
    pub fn signal_group(&self, sig: libc::c_int) {
        if !self.stopped {
            signal(-(self.child.id() as i32), sig);
        }
    }

    /// The stop signal to the group, SIGKILL to what is left after
    /// [`STOP_TIMEOUT`]; also reaps grandchildren that outlived their
    /// parent (nginx workers, Dovecot services).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        if self.exited().is_none() {
            self.signal_group(self.stop_signal);
            if self.wait_timeout(STOP_TIMEOUT).is_none() {
                eprintln!(
                    "{} ignored signal {}; killing it",
                    self.name, self.stop_signal
                );
            }
        }
        self.kill();
    }

    /// SIGTERM to the process alone (a daemon's own shutdown); its exit
    /// status, or a panic if it is still running after [`STOP_TIMEOUT`].
    /// What is left of its group is killed.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let status = self.wait_timeout(STOP_TIMEOUT);
        self.kill();
        status.unwrap_or_else(|| {
            panic!(
                "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM:\n{}",
                self.name,
                self.log()
            )
        })
    }

    /// SIGKILL to the whole group at once, no shutdown.
    pub fn kill(&mut self) {
        if self.stopped {
            return;
        }
        self.signal_group(libc::SIGKILL);
        self.stopped = true;
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
