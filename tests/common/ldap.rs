//! A real OpenLDAP `slapd` (Debian package `slapd`; `slapadd` loads
//! `tests/ldap/users.ldif`), started in a temp dir on a free loopback port
//! and stopped on drop. Shared by `tests/backends/ldap.rs` and
//! `tests/e2e_suite/directory.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::proc::{port_open, require, retry_on_clash, run, Proc};

pub const PEOPLE: &str = "ou=people,dc=example,dc=org";
pub const READER: &str = "binddn=cn=reader,ou=services,dc=example,dc=org&bindpw=reader-pw";

/// A running (or killed, restartable) slapd.
pub struct Slapd {
    dir: tempfile::TempDir,
    pub port: u16,
    /// `ldaps://` port and the certificate (PEM) its clients trust.
    pub tls: Option<(u16, PathBuf)>,
    proc: Option<Proc>,
}

impl Slapd {
    pub fn start() -> Slapd {
        Slapd::start_with(false)
    }

    /// Also serves `ldaps://` (and StartTLS) with a fresh self-signed certificate for 127.0.0.1.
    pub fn start_with(tls: bool) -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir(&db).unwrap();
        let conf = format!(
            "{tls}include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include /etc/ldap/schema/misc.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             pidfile {dir}/slapd.pid\n\
             database mdb\n\
             maxsize 10485760\n\
             suffix \"dc=example,dc=org\"\n\
             directory {db}\n\
             access to attrs=userPassword\n\
             \tby dn.exact=\"cn=reader,ou=services,dc=example,dc=org\" read\n\
             \tby anonymous auth\n\
             \tby * none\n\
             access to * by * read\n",
            dir = dir.path().display(),
            db = db.display(),
            tls = if tls {
                tls_files(dir.path())
            } else {
                String::new()
            },
        );
        std::fs::write(dir.path().join("slapd.conf"), conf).unwrap();
        let ldif = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ldap/users.ldif");
        run(
            Command::new(require("slapadd", "slapd"))
                .arg("-f")
                .arg(dir.path().join("slapd.conf"))
                .arg("-l")
                .arg(&ldif),
            "slapadd",
        );
        let mut s = Slapd {
            dir,
            port: 0,
            tls: None,
            proc: None,
        };
        let cert = s.dir.path().join("cert.pem");
        retry_on_clash("slapd", |[port, tls_port]| {
            s.port = port;
            s.tls = tls.then(|| (tls_port, cert.clone()));
            s.spawn()
        });
        s
    }

    /// Starts slapd again on the same port(s) and waits until it answers.
    pub fn restart(&mut self) {
        if let Err(e) = self.spawn() {
            panic!("slapd restart: {e}");
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(require("slapd", "slapd"));
        cmd.arg("-h")
            .arg(match &self.tls {
                None => format!("ldap://127.0.0.1:{}/", self.port),
                Some((tls, _)) => {
                    format!("ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{tls}/", self.port)
                }
            })
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .args(["-d", "0"]);
        let port = self.port;
        let log = self.dir.path().join("slapd.log");
        self.proc
            .insert(Proc::spawn("slapd", &mut cmd, &log))
            .try_wait_for("its port", Duration::from_secs(10), || port_open(port))
    }

    /// SIGKILL, no shutdown.
    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    pub fn uri(&self, options: &str) -> String {
        format!("ldap://127.0.0.1:{}/{PEOPLE}?{options}", self.port)
    }
}

/// A self-signed certificate for 127.0.0.1 (`cert.pem`, `key.pem` in `dir`)
/// and the slapd.conf lines that serve it.
fn tls_files(dir: &Path) -> String {
    run(
        Command::new(require("openssl", "openssl"))
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "30"])
            .args(["-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "extendedKeyUsage=serverAuth"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem")),
        "openssl req",
    );
    format!(
        "TLSCertificateFile {d}/cert.pem\nTLSCertificateKeyFile {d}/key.pem\n",
        d = dir.display()
    )
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.kill();
    }
}
