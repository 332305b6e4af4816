//! Real PostgreSQL and MariaDB servers for the SQL passdb tests: each
//! [`Server`] runs in its own temp dir on a free loopback port, in its own
//! process group, and is stopped on drop (also when a test panics).
//!
//! Start-up is kept fast by initialising a data directory once (`initdb`,
//! `mariadb-install-db`) into `target/tmp/` and copying it per server; the
//! copy is keyed by the server's version so an upgrade starts afresh.
//!
//! A missing server program panics with the Debian package to install
//! (`tests/run` installs them); nothing is skipped.
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use super::proc::{self, require, require_file, retry_on_clash, run, Proc};

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Mariadb,
}

/// A running (or killed, restartable) database server.
pub struct Server {
    pub kind: Kind,
    dir: tempfile::TempDir,
    pub port: u16,
    proc: Option<Proc>,
    starts: u32,
    /// Extra server options (TLS set-up).
    extra: Vec<String>,
}

/// The newest installed `/usr/lib/postgresql/N/bin`.
fn pg_bin() -> PathBuf {
    let mut versions: Vec<u32> = fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_unstable();
    let Some(v) = versions.pop() else {
        panic!("PostgreSQL is missing: apt-get install postgresql (bash tests/run installs it)")
    };
    let bin = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
    require_file(bin.join("postgres"), "postgresql");
    require_file(bin.join("initdb"), "postgresql");
    bin
}

/// uid and gid of a system user, from /etc/passwd.
fn user_ids(name: &str, package: &str) -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
        .unwrap_or_else(|| panic!("user `{name}` is missing: apt-get install {package}"))
}

/// Every process below `pid`, from /proc.
/// `pid` exists and is not a zombie.
fn running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| {
                let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                // `pid (comm) state ppid …`; comm may hold spaces and parens.
                let ppid = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some((pid, ppid))
            })
            .collect()
        })
        .unwrap_or_default();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Fills a fresh data directory.
type InitDir = Box<dyn Fn(&Path)>;

/// An initialised data directory to copy, made once per server version.
fn template(kind: Kind) -> PathBuf {
    // Tests of one binary run in parallel: one of them builds, the others wait.
    static BUILDING: Mutex<()> = Mutex::new(());
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sql-templates");
    fs::create_dir_all(&base).expect("create template dir");
    let (name, init): (String, InitDir) = match kind {
        Kind::Postgres => {
            let bin = pg_bin();
            let version = run(
                Command::new(bin.join("postgres")).arg("--version"),
                "postgres --version",
            );
            let version = String::from_utf8_lossy(&version.stdout)
                .trim()
                .replace(' ', "_");
            let (uid, gid) = user_ids("postgres", "postgresql");
            (
                version,
                Box::new(move |dir: &Path| {
                    fs::create_dir_all(dir).unwrap();
                    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
                    run(
                        Command::new(bin.join("initdb"))
                            .arg("-D")
                            .arg(dir.join("data"))
                            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"])
                            .args(["--locale=C", "--no-sync", "--no-instructions"])
                            .uid(uid)
                            .gid(gid)
                            .current_dir("/"),
                        "initdb",
                    );
                }),
            )
        }
        Kind::Mariadb => {
            let install = require("mariadb-install-db", "mariadb-server");
            let server = require("mariadbd", "mariadb-server");
            let version = run(Command::new(&server).arg("--version"), "mariadbd --version");
            let version = String::from_utf8_lossy(&version.stdout);
            let version = version
                .split_whitespace()
                .find(|w| w.contains("MariaDB"))
                .unwrap_or("mariadb")
                .to_owned();
            (
                version,
                Box::new(move |dir: &Path| {
                    fs::create_dir_all(dir).unwrap();
                    run(
                        Command::new(&install)
                            .arg("--no-defaults")
                            .arg(format!("--datadir={}", dir.join("data").display()))
                            .args(MARIADB_OPTS)
                            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                            .arg("--user=root"),
                        "mariadb-install-db",
                    );
                }),
            )
        }
    };
    let done = base.join(&name);
    if !done.exists() {
        let tmp = base.join(format!("{name}.tmp.{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        init(&tmp);
        // Another test binary may have won the race; then use its copy.
        if fs::rename(&tmp, &done).is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
    }
    done
}

/// Server options shared by install and start (the redo log size must match).
const MARIADB_OPTS: &[&str] = &[
    "--innodb-log-file-size=8M",
    "--innodb-buffer-pool-size=16M",
    "--skip-log-bin",
];

impl Server {
    /// Starts a fresh server with an empty data directory.
    pub fn start(kind: Kind) -> Server {
        Server::start_inner(kind, false)
    }

    /// A server with TLS on: a certificate for `localhost` and `127.0.0.1`
    /// signed by a test CA (at [`Server::tls_cert`]).
    pub fn start_tls(kind: Kind) -> Server {
        Server::start_inner(kind, true)
    }

    /// The CA that signed the server's certificate, with TLS on.
    pub fn tls_cert(&self) -> PathBuf {
        self.dir().join("test-ca.crt")
    }

    fn start_inner(kind: Kind, tls: bool) -> Server {
        let template = template(kind);
        let dir = tempfile::Builder::new()
            .prefix(match kind {
                Kind::Postgres => "nginx-auth-fcgi-pg.",
                Kind::Mariadb => "nginx-auth-fcgi-mariadb.",
            })
            .tempdir()
            .expect("temp dir");
        run(
            Command::new("cp")
                .arg("-a")
                .arg(template.join("data"))
                .arg(dir.path()),
            "cp data dir",
        );
        if kind == Kind::Postgres {
            let (uid, gid) = user_ids("postgres", "postgresql");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut server = Server {
            kind,
            dir,
            port: 0,
            proc: None,
            starts: 0,
            extra: Vec::new(),
        };
        if tls {
            let ca = make_ca(server.dir(), "test-ca");
            let (key, cert) = make_leaf(server.dir(), &ca);
            server.extra = match kind {
                Kind::Postgres => {
                    let (uid, gid) = user_ids("postgres", "postgresql");
                    std::os::unix::fs::chown(&key, Some(uid), Some(gid)).unwrap();
                    vec![
                        "-c".into(),
                        "ssl=on".into(),
                        "-c".into(),
                        format!("ssl_cert_file={}", cert.display()),
                        "-c".into(),
                        format!("ssl_key_file={}", key.display()),
                    ]
                }
                Kind::Mariadb => vec![
                    format!("--ssl-cert={}", cert.display()),
                    format!("--ssl-key={}", key.display()),
                    format!("--ssl-ca={}", ca.1.display()),
                ],
            };
        }
        retry_on_clash(&format!("{kind:?}"), |[port]| {
            server.port = port;
            server.spawn()
        });
        server
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server on [`Server::port`] and waits until it is ready.
    fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = self.dir().join(format!("server.{}.log", self.starts));
        let mut cmd = match self.kind {
            Kind::Postgres => {
                let (uid, gid) = user_ids("postgres", "postgresql");
                fs::File::create(&log).expect("create log");
                std::os::unix::fs::chown(&log, Some(uid), Some(gid)).unwrap();
                let mut cmd = Command::new(pg_bin().join("postgres"));
                cmd.arg("-D")
                    .arg(self.dir().join("data"))
                    .arg("-k")
                    .arg(self.dir())
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                    .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
                    .args(["-c", "max_connections=50"])
                    .args(&self.extra)
                    .uid(uid)
                    .gid(gid);
                cmd
            }
            Kind::Mariadb => {
                let mut cmd = Command::new(require("mariadbd", "mariadb-server"));
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", self.dir().join("data").display()))
                    .arg(format!("--socket={}", self.dir().join("sock").display()))
                    .arg(format!("--pid-file={}", self.dir().join("pid").display()))
                    .arg(format!("--port={}", self.port))
                    .args(MARIADB_OPTS)
                    .args(["--bind-address=127.0.0.1", "--user=root"])
                    .args(&self.extra)
                    .args(["--skip-name-resolve"]);
                cmd
            }
        };
        cmd.current_dir(self.dir());
        let proc = Proc::spawn(&format!("{:?}", self.kind), &mut cmd, &log);
        // PostgreSQL's SIGTERM waits for clients to leave; SIGINT does not.
        let proc = match self.kind {
            Kind::Postgres => proc.stop_signal(libc::SIGINT),
            Kind::Mariadb => proc,
        };
        let ready = match self.kind {
            Kind::Postgres => "database system is ready to accept connections",
            Kind::Mariadb => "ready for connections",
        };
        self.proc
            .insert(proc)
            .try_wait_for("ready for connections", READY_TIMEOUT, || {
                fs::read_to_string(&log).unwrap_or_default().contains(ready)
            })
    }

    /// SIGKILL, no shutdown: the server "goes away" under its clients.
    /// PostgreSQL backends run in process groups of their own (setsid), so
    /// they are found by parent pid and killed too; otherwise one could
    /// still answer a query before it notices the postmaster is gone.
    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            let children = descendants(proc.id());
            proc.kill();
            for &pid in &children {
                proc::signal(pid as i32, libc::SIGKILL);
            }
            // Gone, not just signalled: a PostgreSQL backend still dying
            // holds the shared memory a restart needs.
            proc::wait_until(
                "the killed server's processes",
                Duration::from_secs(10),
                || children.iter().all(|&pid| !running(pid)),
            );
        }
    }

    /// Starts again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("{:?} restart: {e}", self.kind);
        }
    }

    /// Superuser URI (no password: trust / empty root password).
    pub fn admin_uri(&self) -> String {
        match self.kind {
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
            Kind::Mariadb => format!(
                "mysql://root@127.0.0.1:{}/mysql?prefer_socket=false",
                self.port
            ),
        }
    }

    /// Runs `statements` in order as the superuser: in database `db` (the
    /// admin database if `None`) on PostgreSQL, on the admin connection on
    /// MariaDB (its statements name their database).
    pub async fn execute(&self, db: Option<&str>, statements: &[String]) {
        match self.kind {
            Kind::Postgres => {
                let uri = db.map_or_else(|| self.admin_uri(), |db| self.uri(db, ""));
                let (client, conn) = tokio_postgres::connect(&uri, tokio_postgres::NoTls)
                    .await
                    .unwrap_or_else(|e| panic!("connect {uri}: {e}"));
                let task = tokio::spawn(conn);
                for s in statements {
                    client
                        .batch_execute(s)
                        .await
                        .unwrap_or_else(|e| panic!("{s}: {e:?}"));
                }
                drop(client);
                let _ = task.await;
            }
            Kind::Mariadb => {
                use mysql_async::prelude::Queryable;
                let mut conn = mysql_async::Conn::from_url(self.admin_uri())
                    .await
                    .expect("admin connect");
                for s in statements {
                    conn.query_drop(s)
                        .await
                        .unwrap_or_else(|e| panic!("{s}: {e}"));
                }
                conn.disconnect().await.expect("disconnect");
            }
        }
    }

    /// The URI of database `db` for a passdb, with extra query options.
    pub fn uri(&self, db: &str, options: &str) -> String {
        let sep = |base: String| {
            if options.is_empty() {
                base
            } else if base.contains('?') {
                format!("{base}&{options}")
            } else {
                format!("{base}?{options}")
            }
        };
        match self.kind {
            Kind::Postgres => sep(format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)),
            Kind::Mariadb => sep(format!(
                "mariadb://root@127.0.0.1:{}/{db}?prefer_socket=false",
                self.port
            )),
        }
    }

    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                fs::read_to_string(self.dir().join(format!("server.{n}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

fn openssl() -> Command {
    Command::new(require("openssl", "openssl"))
}

/// A test CA in `dir`: returns (key, certificate).
pub fn make_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, cert) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.crt")),
    );
    run(
        openssl()
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN={name}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "openssl req (CA)",
    );
    (key, cert)
}

/// A server certificate for `localhost` / `127.0.0.1` signed by the CA
/// (key mode 0600): returns (key, certificate).
pub fn make_leaf(dir: &Path, ca: &(PathBuf, PathBuf)) -> (PathBuf, PathBuf) {
    make_named_leaf(dir, ca, "server")
}

/// [`make_leaf`] as `NAME.key` / `NAME.crt` (e.g. a client certificate,
/// which may serve either way).
pub fn make_named_leaf(dir: &Path, ca: &(PathBuf, PathBuf), name: &str) -> (PathBuf, PathBuf) {
    let (key, csr, cert, ext) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.ext")),
    );
    run(
        openssl()
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-subj", "/CN=localhost"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
        "openssl req (server)",
    );
    fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(
        openssl()
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca.1)
            .arg("-CAkey")
            .arg(&ca.0)
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
        "openssl x509 (sign)",
    );
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    (key, cert)
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.stop();
        }
        if std::thread::panicking() {
            eprintln!("{:?} server log:\n{}", self.kind, self.logs());
        }
    }
}
