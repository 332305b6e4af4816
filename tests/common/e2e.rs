//! End-to-end harness: the shipped `nginx-conf/nginx.conf` in front of our
//! daemon, with real Dovecot as the IMAP/POP3 backend and a small Python SMTP
//! sink (`tests/e2e/smtp_sink.py`) as the submission backend, all on loopback
//! in one temp dir per [`Stack`].
//!
//! ```text
//! client.py ──IMAP/POP3/SMTP──> nginx mail{} ──auth_http──> nginx http{}
//!   ──FastCGI, unix socket──> nginx-auth-fcgi (Auth-Server/Port/Pass)
//! nginx mail{} ──LOGIN with Auth-Pass──> Dovecot (checks the SAME passwd-file)
//!              ──EHLO/XCLIENT──> smtp_sink.py
//! ```
//!
//! Dovecot verifying the password nginx forwards (from the daemon's
//! `Auth-Pass`) against the same passwd-file proves the daemon handed back the
//! right plaintext, not just "OK".
//!
//! A program the stack needs that is missing makes the test panic with the
//! Debian package to install (`tests/run` installs them all); nothing is
//! skipped. Every process runs in its own process group and is stopped on
//! drop, also when a test panics; then the logs are printed to help.
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Deserialize;

pub use super::proc::{free_ports, require, require_file, run, run_stdout};

/// openssl `req` arguments for a new P-256 key without a passphrase.
pub const NEW_EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn curl_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(require("curl", "curl"));
    cmd.args(["--silent", "--show-error", "--max-time", "30"])
        .args(args);
    cmd
}

/// Runs `cmd` (see [`run`]) and parses what it printed as TOML.
pub fn run_toml<T: serde::de::DeserializeOwned>(cmd: &mut Command, what: &str) -> T {
    let stdout = run_stdout(cmd, what);
    toml::from_str(&stdout).unwrap_or_else(|e| panic!("{what} output: {e}\n{stdout}"))
}
use super::proc::{is_clash, port_open, read_lossy, try_wait_until, wait_until, Proc};

/// The shared secret nginx sends as `X-Auth-Key` and the daemon requires.
pub const AUTH_KEY: &str = "e2e-shared-key-4711";
/// `--local-domain` of the daemon.
pub const LOCAL_DOMAIN: &str = "example.org";
/// What the mail module prints for any failed login (and what the daemon must
/// say for an unknown user as well as for a wrong password).
pub const INVALID_LOGIN: &str = "Invalid login or password";

const NGINX_MAIL_MODULE: &str = "/usr/lib/nginx/modules/ngx_mail_module.so";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Set this variable to keep each stack's temp dir (configs, logs) after
/// the test, for debugging.
pub const KEEP_ENV: &str = "NGINX_AUTH_FCGI_E2E_KEEP";

/// The daemon's binary, built by cargo for this test run.
pub fn daemon_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nginx-auth-fcgi")
}

/// The repository root (where `nginx-conf/`, `systemd/` and `tests/` live).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ------------------------------------------------------------------ users

/// A user in the passwd-file both the daemon and Dovecot read (also the
/// users of [`super::sasl`]'s Dovecot).
#[derive(Debug, Clone, Copy)]
pub struct User {
    pub name: &'static str,
    /// Dovecot scheme the password is stored with (`doveadm pw -s`).
    pub scheme: &'static str,
    pub password: &'static str,
    /// Passdb extra fields (passwd-file's 8th field, space-separated).
    pub extra: &'static str,
}

impl User {
    pub const fn new(name: &'static str, scheme: &'static str, password: &'static str) -> User {
        User {
            name,
            scheme,
            password,
            extra: "",
        }
    }

    /// The same user with passdb extra fields.
    pub const fn with_extra(self, extra: &'static str) -> User {
        User { extra, ..self }
    }
}

/// {PLAIN}: the only scheme that allows CRAM-MD5 and APOP.
pub const ALICE: User = User::new("alice", "PLAIN", "alice-pw-8c1f");
pub const SHA512_USER: User = User::new("sha512user", "SHA512-CRYPT", "sha512-pw-77aa");
pub const BLF_USER: User = User::new("blfuser", "BLF-CRYPT", "blf-pw-93d0");
pub const ARGON2_USER: User = User::new("argonuser", "ARGON2ID", "argon-pw-1e5b");
pub const SSHA256_USER: User = User::new("sshauser", "SSHA256", "ssha-pw-04c2");
/// Space, `%`, `+`, `:` and UTF-8: nginx %-escapes the first two in
/// `Auth-Pass`, passes the rest raw. Hashed, because a `:` cannot be stored
/// as {PLAIN} in a passwd-file (it is the field separator).
pub const SPECIAL_USER: User = User::new("special", "SHA512-CRYPT", "p w%+:é");

/// Every user written to the passwd-file.
pub const USERS: [User; 6] = [
    ALICE,
    SHA512_USER,
    BLF_USER,
    ARGON2_USER,
    SSHA256_USER,
    SPECIAL_USER,
];

/// `password` hashed with `doveadm pw -s scheme`: Dovecot's own hash.
pub fn doveadm_pw(scheme: &str, password: &str) -> String {
    run_stdout(
        Command::new(require("doveadm", "dovecot-core")).args(["pw", "-s", scheme, "-p", password]),
        &format!("doveadm pw -s {scheme}"),
    )
    .trim()
    .to_owned()
}

/// The passwd-file text (Dovecot format), hashed once per test binary with
/// `doveadm pw` so the stored hashes are Dovecot's own.
pub fn passwd_file_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut text = String::new();
        for user in USERS {
            let hash = doveadm_pw(user.scheme, user.password);
            assert!(
                hash.starts_with(&format!("{{{}}}", user.scheme)),
                "unexpected doveadm pw output {hash:?}"
            );
            text.push_str(&format!("{}:{}::::::\n", user.name, hash));
        }
        text
    })
}

// ------------------------------------------------------------------ stack

/// How the daemon gets its listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// `serve --listen unix:PATH --socket-mode 0666`: binds the socket itself.
    Direct,
    /// `spawn-fcgi -s PATH -M 0666 -n -- BIN serve --listen fd:0`.
    SpawnFcgi,
    /// `systemd-socket-activate -l PATH BIN serve --listen systemd`
    /// (LISTEN_FDS=1, fd 3; the program is exec'd at the first connection).
    SocketActivate,
}

/// Additions to a stack's configuration, for tests that need more than the
/// shipped defaults (all empty by default: [`Stack::start`] uses none).
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Appended to the daemon's command line after [`Stack::daemon_args`].
    pub daemon_args: Vec<String>,
    /// Appended to the generated dovecot.conf.
    pub dovecot_conf: String,
    /// Inserted at the top of the `mail {}` block of the rendered nginx.conf
    /// (e.g. more `server {}` blocks on ports the test picked).
    pub nginx_mail: String,
    /// The daemon's `--passdb` instead of the stack's passwd-file (which
    /// Dovecot goes on checking the forwarded password against).
    pub passdb: Option<String>,
    /// A configuration file for the daemon (`--config`), as TOML text.
    pub daemon_config: Option<String>,
    /// Environment variables of the daemon.
    pub daemon_env: Vec<(String, String)>,
}

impl Extras {
    /// The daemon asks `passdb` instead of the passwd-file, and a temporary
    /// failure answers after 1 s instead of the default 3 (the tests stop
    /// the passdb's server to see one).
    pub fn passdb(passdb: impl Into<String>, daemon_args: &[&str]) -> Extras {
        Extras {
            passdb: Some(passdb.into()),
            daemon_config: Some("[auth_wait]\ntemporary = 1\n".into()),
            daemon_args: daemon_args.iter().map(|a| a.to_string()).collect(),
            ..Extras::default()
        }
    }
}

/// One complete mail stack in a temp dir. Dropping it stops every process.
pub struct Stack {
    extras: Extras,
    dir: tempfile::TempDir,
    /// nginx mail ports (what clients use).
    pub imap: u16,
    pub pop3: u16,
    pub smtp: u16,
    /// nginx's `smtp_auth none` (MX) port.
    pub mx: u16,
    /// nginx's internal http server (auth_http target).
    pub auth_http: u16,
    /// Backends.
    pub dovecot_imap: u16,
    pub dovecot_pop3: u16,
    pub sink: u16,
    /// The daemon's FastCGI socket.
    pub socket: PathBuf,
    pub launch: Launch,
    daemon: Option<Proc>,
    /// nginx, Dovecot, the sink; stopped in reverse order of start.
    others: Vec<Proc>,
}

impl Stack {
    /// The usual stack: daemon binds its own socket.
    pub fn start() -> Stack {
        Stack::start_with(Launch::Direct)
    }

    /// A stack whose daemon gets its socket as `launch` says.
    ///
    /// Ports are picked free but handed over only when the servers bind
    /// them; if another process took one meanwhile, the start is retried
    /// with new ports (twice at most).
    pub fn start_with(launch: Launch) -> Stack {
        Stack::start_with_extras(launch, Extras::default())
    }

    /// A stack with `extras` added to the daemon's, Dovecot's and nginx's
    /// configuration.
    pub fn start_with_extras(launch: Launch, extras: Extras) -> Stack {
        const TRIES: u32 = 3;
        for attempt in 1..=TRIES {
            let (stack, result) = Stack::try_start(launch, extras.clone());
            match result {
                Ok(()) => return stack,
                Err(e) if attempt < TRIES && stack.port_clash() => {
                    eprintln!("e2e: a port was taken meanwhile, starting again: {e}");
                    drop(stack);
                }
                // `stack` is dropped while unwinding: its logs are printed.
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!("the last try returns or panics")
    }

    /// Whether a server failed to bind its port.
    fn port_clash(&self) -> bool {
        [
            "sink.out",
            "dovecot.out",
            "dovecot/dovecot.log",
            "nginx.out",
            "log/nginx-startup.log",
            "log/error.log",
            "daemon.log",
        ]
        .iter()
        .any(|log| is_clash(&read_lossy(&self.path(log))))
    }

    fn try_start(launch: Launch, extras: Extras) -> (Stack, Result<(), String>) {
        let started = Instant::now();
        let nginx = require("nginx", "nginx-full");
        require_file(NGINX_MAIL_MODULE, "libnginx-mod-mail");
        let dovecot = require("dovecot", "dovecot-core");
        require_file("/usr/lib/dovecot/imap", "dovecot-imapd");
        require_file("/usr/lib/dovecot/pop3", "dovecot-pop3d");
        require("python3", "python3");
        let openssl = require("openssl", "openssl");
        let passwd_text = passwd_file_text();

        let dir = tempfile::Builder::new()
            .prefix("nginx-auth-fcgi-e2e.")
            .tempdir()
            .expect("create temp dir");
        // nginx workers (www-data) must reach the socket and Dovecot's mail
        // processes (nobody) their home below this directory.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        let [imap, pop3, smtp, mx, auth_http, dovecot_imap, dovecot_pop3, sink] = free_ports::<8>();
        let mut stack = Stack {
            extras,
            socket: dir.path().join("auth.sock"),
            dir,
            imap,
            pop3,
            smtp,
            mx,
            auth_http,
            dovecot_imap,
            dovecot_pop3,
            sink,
            launch,
            daemon: None,
            others: Vec::new(),
        };
        for sub in ["log", "lib", "dovecot", "mail"] {
            fs::create_dir_all(stack.path(sub)).expect("create dir");
        }
        fs::write(stack.passwd_path(), passwd_text).expect("write passwd-file");
        // Both the daemon and Dovecot (auth process, root) read it.
        fs::set_permissions(stack.passwd_path(), fs::Permissions::from_mode(0o644)).expect("chmod");

        // 1. SMTP sink.
        stack.spawn_sink(sink, "sink");

        // 2. Dovecot.
        let conf = stack.dovecot_conf();
        fs::write(stack.path("dovecot/dovecot.conf"), conf).expect("write dovecot.conf");
        let mut dovecot_cmd = Command::new(&dovecot);
        dovecot_cmd
            .arg("-F")
            .arg("-c")
            .arg(stack.path("dovecot/dovecot.conf"));
        stack.spawn_other("dovecot", &mut dovecot_cmd, "dovecot.out");

        // 3. The daemon.
        stack.spawn_daemon();

        // 4. nginx with the shipped config.
        run(
            Command::new(&openssl)
                .args(["req", "-x509"])
                .args(NEW_EC_KEY)
                .args(["-days", "2", "-subj", "/CN=localhost", "-keyout"])
                .arg(stack.path("key.pem"))
                .arg("-out")
                .arg(stack.path("cert.pem")),
            "openssl req",
        );
        let params = require_file("/etc/nginx/fastcgi_params", "nginx-common");
        // `include fastcgi_params;` is relative to the config file's directory.
        fs::copy(params, stack.path("fastcgi_params")).expect("copy fastcgi_params");
        let conf = stack.render_nginx_conf();
        fs::write(stack.path("nginx.conf"), conf).expect("write nginx.conf");
        let mut nginx_cmd = Command::new(&nginx);
        nginx_cmd
            .arg("-p")
            .arg(format!("{}/", stack.dir.path().display()))
            .arg("-c")
            .arg(stack.path("nginx.conf"))
            // The compiled-in error log (/var/log/nginx) is opened before the
            // config is read; keep even that inside the temp dir.
            .arg("-e")
            .arg(stack.path("log/nginx-startup.log"))
            .args(["-g", "daemon off;"]);
        stack.spawn_other("nginx", &mut nginx_cmd, "nginx.out");

        let mut ready = || -> Result<(), String> {
            for port in [
                sink,
                dovecot_imap,
                dovecot_pop3,
                imap,
                pop3,
                smtp,
                mx,
                auth_http,
            ] {
                stack.wait_for(&format!("127.0.0.1:{port}"), || port_open(port))?;
            }
            stack.wait_daemon_ready()
        };
        let result = ready();
        let took = started.elapsed();
        if took > Duration::from_secs(2) {
            eprintln!("e2e: stack start took {took:?} (budget 2 s)");
        }
        (stack, result)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn passwd_path(&self) -> PathBuf {
        self.path("passwd")
    }

    fn sink_log_path(&self) -> PathBuf {
        self.path("sink.toml")
    }

    fn spawn_other(&mut self, name: &'static str, cmd: &mut Command, log: &str) {
        let proc = Proc::spawn(name, cmd, &self.path(log));
        self.others.push(proc);
    }

    /// The daemon's command line after `serve --listen ...`, before
    /// [`Extras::daemon_args`].
    pub fn daemon_args(&self) -> Vec<String> {
        let passdb = match &self.extras.passdb {
            Some(passdb) => passdb.clone(),
            None => format!("passwd-file:{}", self.passwd_path().display()),
        };
        let mut args = match &self.extras.daemon_config {
            Some(_) => vec![
                "--config".into(),
                self.path("daemon.toml").display().to_string(),
            ],
            None => vec![],
        };
        args.extend([
            "--passdb".into(),
            passdb,
            "--upstream".into(),
            format!("imap=127.0.0.1:{}", self.dovecot_imap),
            "--upstream".into(),
            format!("pop3=127.0.0.1:{}", self.dovecot_pop3),
            "--upstream".into(),
            format!("smtp=127.0.0.1:{}", self.sink),
            "--require-header".into(),
            format!("X-Auth-Key={AUTH_KEY}"),
            "--local-domain".into(),
            LOCAL_DOMAIN.into(),
            "--log".into(),
            "stderr".into(),
            // Failures are counted per client address, and every client here
            // is 127.0.0.1: with the default doubling up to 16 s, a test with
            // five failed logins would wait 31 s. Capped at 2 s the growth
            // (1 s, then 2 s) is still visible to the tests.
            "--auth-wait-max".into(),
            "2".into(),
        ]);
        args
    }

    fn spawn_daemon(&mut self) {
        let bin = daemon_bin();
        assert!(
            Path::new(bin).exists(),
            "daemon binary {bin} missing (cargo test builds it)"
        );
        if let Some(config) = &self.extras.daemon_config {
            fs::write(self.path("daemon.toml"), config).expect("write daemon.toml");
        }
        let sock = self.socket.display().to_string();
        let mut cmd = match self.launch {
            Launch::Direct => {
                let mut cmd = Command::new(bin);
                cmd.args([
                    "serve",
                    "--listen",
                    &format!("unix:{sock}"),
                    "--socket-mode",
                    "0666",
                ]);
                cmd
            }
            Launch::SpawnFcgi => {
                let mut cmd = Command::new(require("spawn-fcgi", "spawn-fcgi"));
                // -n: exec the daemon in place (no fork), so the pid we hold
                // is the daemon's and SIGTERM reaches it.
                cmd.args([
                    "-s", &sock, "-M", "0666", "-n", "--", bin, "serve", "--listen", "fd:0",
                ]);
                cmd
            }
            Launch::SocketActivate => {
                let mut cmd = Command::new(require("systemd-socket-activate", "systemd"));
                cmd.args(["-l", &sock, bin, "serve", "--listen", "systemd"]);
                cmd
            }
        };
        cmd.args(self.daemon_args());
        cmd.args(&self.extras.daemon_args);
        cmd.envs(self.extras.daemon_env.iter().cloned());
        self.daemon = Some(Proc::spawn(
            "nginx-auth-fcgi",
            &mut cmd,
            &self.path("daemon.log"),
        ));
    }

    fn wait_daemon_ready(&mut self) -> Result<(), String> {
        let socket = self.socket.clone();
        self.wait_for(&format!("socket {}", socket.display()), || socket.exists())?;
        if self.launch == Launch::SocketActivate {
            // systemd-socket-activate creates it with the umask (0644); the
            // .socket unit would apply SocketMode=. nginx's workers
            // (www-data) need write permission to connect.
            fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).expect("chmod socket");
        }
        // For socket activation this first connection execs the daemon.
        self.wait_for(&format!("connect {}", socket.display()), || {
            UnixStream::connect(&socket).is_ok()
        })
    }

    /// Polls `ready` until it holds; fails on timeout or when a process died
    /// meanwhile (with that process's output).
    fn wait_for(&mut self, what: &str, mut ready: impl FnMut() -> bool) -> Result<(), String> {
        try_wait_until(what, STARTUP_TIMEOUT, || {
            if ready() {
                return Ok(true);
            }
            for proc in self.others.iter_mut().chain(self.daemon.as_mut()) {
                if let Some(status) = proc.exited() {
                    return Err(format!(
                        "{} exited ({status}) while waiting for {what}; its output:\n{}",
                        proc.name(),
                        proc.log()
                    ));
                }
            }
            Ok(false)
        })
        .map_err(|e| format!("e2e: {e}"))
    }

    fn dovecot_conf(&self) -> String {
        let d = self.dir.path().display();
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let euid = unsafe { libc::geteuid() };
        let (mail_uid, login_user, internal_user) = if euid == 0 {
            // Dovecot refuses uid 0 for mail processes; run them as nobody.
            fs::create_dir_all(self.path("mail")).expect("mkdir mail");
            std::os::unix::fs::chown(self.path("mail"), Some(65534), Some(65534))
                .expect("chown mail dir");
            (
                "65534".to_string(),
                "dovenull".to_string(),
                "dovecot".to_string(),
            )
        } else {
            // Best effort for non-root runs: everything as the current user.
            let me = std::env::var("USER").unwrap_or_else(|_| euid.to_string());
            (euid.to_string(), me.clone(), me)
        };
        format!(
            r#"# Generated by tests/common/e2e.rs for one test stack.
base_dir = {d}/dovecot/run
state_dir = {d}/dovecot/state
log_path = {d}/dovecot/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = 1
mail_location = maildir:~/Maildir
# The same passwd-file the daemon reads: Dovecot checks the plaintext
# password nginx forwards (the daemon's Auth-Pass).
passdb {{
  driver = passwd-file
  args = username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_uid} home={d}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"#,
            imap = self.dovecot_imap,
            pop3 = self.dovecot_pop3,
        ) + &self.extras.dovecot_conf
    }

    /// `nginx-conf/nginx.conf` with the values marked `TEST:` there replaced.
    pub fn render_nginx_conf(&self) -> String {
        let shipped = fs::read_to_string(repo_root().join("nginx-conf/nginx.conf"))
            .expect("read nginx-conf/nginx.conf");
        let d = self.dir.path().display();
        let subs = [
            (
                "pid /run/nginx.pid;".to_string(),
                format!("pid {d}/nginx.pid;"),
            ),
            (
                "error_log /var/log/nginx/error.log;".to_string(),
                // info: nginx logs failed logins ("client login failed") there.
                format!("error_log {d}/log/error.log info;"),
            ),
            (
                "access_log /var/log/nginx/access.log;".to_string(),
                format!("access_log {d}/log/access.log;"),
            ),
            ("/var/lib/nginx/body;".to_string(), format!("{d}/lib/body;")),
            (
                "/var/lib/nginx/proxy;".to_string(),
                format!("{d}/lib/proxy;"),
            ),
            (
                "/var/lib/nginx/fastcgi;".to_string(),
                format!("{d}/lib/fastcgi;"),
            ),
            (
                "/var/lib/nginx/uwsgi;".to_string(),
                format!("{d}/lib/uwsgi;"),
            ),
            ("/var/lib/nginx/scgi;".to_string(), format!("{d}/lib/scgi;")),
            (
                "/etc/ssl/certs/ssl-cert-snakeoil.pem;".to_string(),
                format!("{d}/cert.pem;"),
            ),
            (
                "/etc/ssl/private/ssl-cert-snakeoil.key;".to_string(),
                format!("{d}/key.pem;"),
            ),
            (
                "auth_http 127.0.0.1:9189/mailauth;".to_string(),
                format!("auth_http 127.0.0.1:{}/mailauth;", self.auth_http),
            ),
            (
                "auth_http_header X-Auth-Key \"CHANGE-ME-shared-secret\";".to_string(),
                format!("auth_http_header X-Auth-Key \"{AUTH_KEY}\";"),
            ),
            (
                "listen 143;".to_string(),
                format!("listen 127.0.0.1:{};", self.imap),
            ),
            (
                "listen 110;".to_string(),
                format!("listen 127.0.0.1:{};", self.pop3),
            ),
            (
                "listen 587;".to_string(),
                format!("listen 127.0.0.1:{};", self.smtp),
            ),
            (
                "listen 25;".to_string(),
                format!("listen 127.0.0.1:{};", self.mx),
            ),
            (
                "listen 127.0.0.1:9189;".to_string(),
                format!("listen 127.0.0.1:{};", self.auth_http),
            ),
            (
                "server unix:/run/nginx-auth-fcgi/auth.sock;".to_string(),
                format!("server unix:{};", self.socket.display()),
            ),
        ];
        let conf = render_config(&shipped, &subs, &d.to_string());
        if self.extras.nginx_mail.is_empty() {
            return conf;
        }
        let at = conf.find("\nmail {\n").expect("a mail {} block") + "\nmail {\n".len();
        format!("{}{}\n{}", &conf[..at], self.extras.nginx_mail, &conf[at..])
    }

    // -------------------------------------------------------- observations

    /// Everything the daemon printed (audit lines on stderr).
    pub fn daemon_log(&self) -> String {
        read_lossy(&self.path("daemon.log"))
    }

    /// nginx's error log (level info).
    pub fn nginx_error_log(&self) -> String {
        read_lossy(&self.path("log/error.log"))
    }

    pub fn dovecot_log(&self) -> String {
        read_lossy(&self.path("dovecot/dovecot.log"))
    }

    /// The daemon's audit lines for `user` (lines containing `user=<user>`).
    pub fn audit_lines(&self, user: &str) -> Vec<String> {
        let bare = format!("user={user}");
        let quoted = format!("user=\"{user}\"");
        self.daemon_log()
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == bare || w == quoted))
            .map(str::to_owned)
            .collect()
    }

    /// Messages the SMTP sink accepted so far.
    pub fn sink_messages(&self) -> Vec<SinkMessage> {
        read_sink_log(&self.sink_log_path())
    }

    /// Starts one more SMTP sink (e.g. as a per-user upstream); its port and
    /// the file [`read_sink_log`] reads its messages from.
    pub fn start_extra_sink(&mut self, name: &str) -> (u16, PathBuf) {
        let [port] = free_ports::<1>();
        let log = self.spawn_sink(port, name);
        self.wait_for(&format!("{name} on 127.0.0.1:{port}"), || port_open(port))
            .unwrap_or_else(|e| panic!("{e}"));
        (port, log)
    }

    fn spawn_sink(&mut self, port: u16, name: &str) -> PathBuf {
        let out = self.path(&format!("{name}.toml"));
        let mut cmd = Command::new(require("python3", "python3"));
        cmd.arg(repo_root().join("tests/e2e/smtp_sink.py"))
            .args(["--port", &port.to_string(), "--out"])
            .arg(&out)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        self.spawn_other("smtp_sink.py", &mut cmd, &format!("{name}.out"));
        out
    }

    /// Adds a line to the passwd-file both the daemon and Dovecot read
    /// (both notice the change without a restart). Dovecot re-reads it on
    /// its next lookup; the daemon's watcher checks it about once a second,
    /// so this returns once the daemon has logged the reload.
    pub fn add_passwd_line(&self, line: &str) {
        let reloaded = format!("passwd-file {}: reloaded", self.passwd_path().display());
        let reloads = || self.daemon_log().matches(&reloaded).count();
        let before = reloads();
        let mut text = fs::read_to_string(self.passwd_path()).expect("read passwd-file");
        text.push_str(line);
        text.push('\n');
        // Write a new file and rename it over the old one, as an admin's
        // editor would: readers never see half a file.
        let tmp = self.path("passwd.new");
        fs::write(&tmp, text).expect("write passwd-file");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::rename(&tmp, self.passwd_path()).expect("replace passwd-file");
        wait_until(
            &format!("the daemon to log `{reloaded}`"),
            Duration::from_secs(10),
            || reloads() > before,
        );
    }

    // ------------------------------------------------------------ clients

    /// Runs `tests/e2e/client.py` against nginx's port for `protocol`.
    /// Attempt i uses `passwords[i]` (the last one repeats); `--tries` is
    /// `passwords.len()` unless `extra` says otherwise.
    pub fn client(
        &self,
        protocol: &str,
        mech: &str,
        user: &str,
        passwords: &[&str],
        extra: &[&str],
    ) -> ClientResult {
        let port = match protocol {
            "imap" => self.imap,
            "pop3" => self.pop3,
            "smtp" => self.smtp,
            other => panic!("unknown protocol {other}"),
        };
        let mut cmd = Command::new(require("python3", "python3"));
        cmd.arg(repo_root().join("tests/e2e/client.py"))
            .arg(protocol)
            .args(["--port", &port.to_string(), "--mech", mech, "--user", user])
            .args(["--tries", &passwords.len().to_string(), "--format", "toml"])
            .env("PYTHONDONTWRITEBYTECODE", "1");
        for password in passwords {
            cmd.arg(format!("--password={password}"));
        }
        cmd.args(extra);
        run_toml(&mut cmd, &format!("client.py {protocol}"))
    }

    /// One SMTP session without AUTH (`tests/e2e/smtp_relay.py`) on nginx's
    /// `port`: EHLO, MAIL FROM `from`, each of `rcpts` in turn on the same
    /// connection, DATA with `marker` if one was accepted, QUIT.
    pub fn smtp_session(&self, port: u16, from: &str, rcpts: &[&str], marker: &str) -> SmtpSession {
        let mut cmd = Command::new(require("python3", "python3"));
        cmd.arg(repo_root().join("tests/e2e/smtp_relay.py"))
            .args(["--port", &port.to_string(), "--from", from])
            .args(["--marker", marker])
            .env("PYTHONDONTWRITEBYTECODE", "1");
        for rcpt in rcpts {
            cmd.arg(format!("--rcpt={rcpt}"));
        }
        run_toml(&mut cmd, "smtp_relay.py")
    }

    /// Runs curl with `args`; returns its output (any exit code).
    pub fn curl(&self, args: &[&str]) -> Output {
        curl_command(args).output().expect("run curl")
    }

    /// Runs curl with `args`, which must succeed (`what` names a failure);
    /// what it printed.
    pub fn curl_ok(&self, args: &[&str], what: &str) -> String {
        run_stdout(&mut curl_command(args), what)
    }

    /// A raw auth_http request (what nginx mail would send) to nginx's
    /// internal http server; returns the response headers, lower-cased names.
    pub fn auth_http_request(&self, headers: &[(&str, &str)]) -> Vec<(String, String)> {
        let url = format!("http://127.0.0.1:{}/mailauth", self.auth_http);
        let mut args: Vec<String> = vec!["--http1.0".into(), "--dump-header".into(), "-".into()];
        args.extend(["--output".into(), "/dev/null".into()]);
        for (name, value) in headers {
            args.push("--header".into());
            args.push(format!("{name}: {value}"));
        }
        args.push(url);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.curl(&args);
        assert!(
            out.status.success(),
            "curl auth_http: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect()
    }

    // ------------------------------------------------------------ control

    /// Pid of the daemon process (for spawn-fcgi/socket activation: the
    /// launcher, which exec'd the daemon in place).
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon running").id()
    }

    /// SIGTERM to the daemon alone; its exit status.
    pub fn stop_daemon(&mut self) -> ExitStatus {
        self.daemon.take().expect("daemon running").terminate()
    }

    /// Panics if the daemon has exited (e.g. crashed during the test).
    pub fn assert_daemon_running(&mut self) {
        let daemon = self.daemon.as_mut().expect("daemon running");
        if let Some(status) = daemon.exited() {
            panic!("daemon exited ({status}):\n{}", daemon.log());
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // nginx first, so it logs no errors about vanished upstreams; then
        // everything else at once (stop() waits for each in turn).
        let mut procs: Vec<&mut Proc> = self
            .others
            .iter_mut()
            .rev()
            .chain(self.daemon.as_mut())
            .collect();
        for proc in procs.iter_mut().filter(|p| p.name() == "nginx") {
            proc.stop();
        }
        for proc in procs.iter_mut() {
            if proc.exited().is_none() {
                proc.signal_group(libc::SIGTERM);
            }
        }
        for proc in procs {
            proc.stop();
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("e2e: {KEEP_ENV} is set; kept {}", dir.keep().display());
        }
        if std::thread::panicking() {
            for (name, path) in [
                ("daemon", self.path("daemon.log")),
                ("nginx error.log", self.path("log/error.log")),
                ("nginx stdout/stderr", self.path("nginx.out")),
                ("dovecot.log", self.path("dovecot/dovecot.log")),
                ("smtp_sink", self.path("sink.out")),
            ] {
                eprintln!("----- {name} (last 40 lines) -----");
                let text = read_lossy(&path);
                let lines: Vec<&str> = text.lines().collect();
                for line in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Replaces each `(from, to)` in the directive part of `shipped` (comments
/// are left alone), insisting that `from` occurs there exactly once. Then
/// checks that no system path outside `temp_dir` and no non-loopback
/// `listen` is left, so that a new path or port in the shipped file cannot
/// silently escape the test's sandbox.
pub fn render_config(shipped: &str, subs: &[(String, String)], temp_dir: &str) -> String {
    let mut counts = vec![0usize; subs.len()];
    let mut out = String::with_capacity(shipped.len() + 1024);
    for line in shipped.lines() {
        let (code, comment) = match line.find('#') {
            Some(i) => line.split_at(i),
            None => (line, ""),
        };
        let mut code = code.to_string();
        for (i, (from, to)) in subs.iter().enumerate() {
            let n = code.matches(from.as_str()).count();
            if n > 0 {
                counts[i] += n;
                code = code.replace(from.as_str(), to);
            }
        }
        let rest = code.replace(temp_dir, "").replace(NGINX_MAIL_MODULE, "");
        for forbidden in [
            "/var/", "/run/", "/etc/", "/usr/", "/home/", "/srv/", "/opt/",
        ] {
            assert!(
                !rest.contains(forbidden),
                "nginx-conf/nginx.conf: `{}` still names a system path after the test \
                 substitutions; mark it TEST: there and substitute it in render_nginx_conf",
                line.trim()
            );
        }
        if rest.trim_start().starts_with("listen ") {
            assert!(
                rest.contains("127.0.0.1:"),
                "nginx-conf/nginx.conf: `{}` is not substituted to a loopback test port",
                line.trim()
            );
        }
        out.push_str(&code);
        out.push_str(comment);
        out.push('\n');
    }
    for ((from, _), n) in subs.iter().zip(counts) {
        assert_eq!(
            n, 1,
            "nginx-conf/nginx.conf: expected `{from}` exactly once outside comments, found {n} \
             (the test substitutes it; update tests/common/e2e.rs with the file)"
        );
    }
    out
}

/// Messages an SMTP sink accepted so far (its `--out` file).
pub fn read_sink_log(path: &Path) -> Vec<SinkMessage> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read sink log: {e}"),
    };
    let log: SinkLog = toml::from_str(&text).unwrap_or_else(|e| panic!("sink log: {e}\n{text}"));
    log.message
}

/// Result line of `tests/e2e/client.py --format toml`.
#[derive(Debug, Deserialize)]
pub struct ClientResult {
    /// The last attempt logged in and the follow-up action succeeded.
    pub ok: bool,
    pub error: Option<String>,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    pub after: Option<After>,
    #[serde(default)]
    pub server_responses: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Attempt {
    pub ok: bool,
    pub response: String,
    pub elapsed_s: f64,
}

#[derive(Debug, Deserialize)]
pub struct After {
    pub ok: bool,
    pub response: String,
}

/// What `tests/e2e/smtp_relay.py` saw.
#[derive(Debug, Deserialize)]
pub struct SmtpSession {
    pub steps: Vec<SmtpStep>,
    /// The server hung up before QUIT was answered.
    pub closed: bool,
}

impl SmtpSession {
    /// The step whose command starts with `command` (the first such).
    pub fn step(&self, command: &str) -> &SmtpStep {
        self.steps
            .iter()
            .find(|s| s.command.starts_with(command))
            .unwrap_or_else(|| panic!("no step `{command}`: {self:#?}"))
    }
}

/// One command of an [`SmtpSession`] and its reply.
#[derive(Debug, Deserialize)]
pub struct SmtpStep {
    pub command: String,
    pub code: u16,
    /// The reply text after the code (smtplib joins multi-line replies).
    pub text: String,
    pub elapsed_s: f64,
}

#[derive(Debug, Deserialize)]
struct SinkLog {
    #[serde(default)]
    message: Vec<SinkMessage>,
}

/// One message the SMTP sink accepted, with the session before it.
#[derive(Debug, Deserialize)]
pub struct SinkMessage {
    pub commands: Vec<String>,
    pub ehlo: Vec<String>,
    /// XCLIENT attributes (upper-case names, xtext-decoded values).
    pub xclient: BTreeMap<String, String>,
    pub xclient_count: u32,
    pub mail_from: Option<String>,
    pub rcpt_to: Vec<String>,
    pub data: String,
}
