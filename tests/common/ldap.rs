//! A real OpenLDAP `slapd` (Debian package `slapd`; `slapadd` loads
//! `tests/ldap/users.ldif`), started in a temp dir on a free loopback port
//! and stopped on drop. Shared by `tests/backends/ldap.rs` and
//! `tests/e2e_suite/directory.rs`.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub const PEOPLE: &str = "ou=people,dc=example,dc=org";
pub const READER: &str = "binddn=cn=reader,ou=services,dc=example,dc=org&bindpw=reader-pw";

/// A running (or killed, restartable) slapd.
pub struct Slapd {
    dir: tempfile::TempDir,
    pub port: u16,
    /// `ldaps://` port and the certificate (PEM) its clients trust.
    pub tls: Option<(u16, PathBuf)>,
    child: Option<Child>,
}

fn program(name: &str) -> PathBuf {
    let path = Path::new("/usr/sbin").join(name);
    assert!(
        path.exists(),
        "{} is missing: apt-get install slapd (bash tests/run installs it)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn check(out: Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
        check(
            Command::new(program("slapadd"))
                .arg("-f")
                .arg(dir.path().join("slapd.conf"))
                .arg("-l")
                .arg(&ldif)
                .output()
                .unwrap(),
            "slapadd",
        );
        let tls = tls.then(|| (free_port(), dir.path().join("cert.pem")));
        let mut s = Slapd {
            dir,
            port: free_port(),
            tls,
            child: None,
        };
        s.restart();
        s
    }

    /// Starts slapd (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        let child = Command::new(program("slapd"))
            .arg("-h")
            .arg(match &self.tls {
                None => format!("ldap://127.0.0.1:{}/", self.port),
                Some((tls, _)) => {
                    format!("ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{tls}/", self.port)
                }
            })
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .args(["-d", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start slapd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("slapd exited: {status}");
            }
            assert!(Instant::now() < deadline, "slapd did not start");
            sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn uri(&self, options: &str) -> String {
        format!("ldap://127.0.0.1:{}/{PEOPLE}?{options}", self.port)
    }
}

/// A self-signed certificate for 127.0.0.1 (`cert.pem`, `key.pem` in `dir`)
/// and the slapd.conf lines that serve it.
fn tls_files(dir: &Path) -> String {
    let openssl = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "30"])
        .args(["-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl is missing: apt-get install openssl");
    check(openssl, "openssl req");
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
