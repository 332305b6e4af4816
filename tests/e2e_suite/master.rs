//! End to end, logins the daemon verifies without a plaintext password:
//!
//! - CRAM-MD5 against a `{CRAM-MD5}` context (made by `doveadm pw`), through
//!   nginx (`imap_auth`/`pop3_auth cram-md5`) into Dovecot with master users
//!   enabled: the daemon answers `Auth-User: carol*master` + the master
//!   secret, Dovecot checks the master password and opens carol's mailbox.
//! - EXTERNAL with client certificates the test makes with openssl: nginx
//!   `ssl_verify_client` + `auth_http_pass_client_cert`, Python imaplib with
//!   the client certificate, `AUTHENTICATE EXTERNAL`.
//!
//! The session really is the user: Dovecot's userdb gives each user the home
//! `mail/<user>`, which exists only after that user's session opened INBOX.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::e2e::*;

const MASTER: &str = "master";
const MASTER_SECRET: &str = "e2e-master-s3cret-0f9a";
const CAROL_PW: &str = "carol-cram-pw-5521";

/// A dir (kept for the test's life) with the master secret for the daemon
/// and Dovecot's master passdb.
fn master_files() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("nginx-auth-fcgi-master.")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.path().join("secret"), format!("{MASTER_SECRET}\n")).unwrap();
    // Dovecot checks the master password itself, here against a hash.
    let hash = doveadm_pw("SHA512-CRYPT", MASTER_SECRET);
    fs::write(
        dir.path().join("master-users"),
        format!("{MASTER}:{hash}\n"),
    )
    .unwrap();
    dir
}

fn master_extras(files: &Path, with_master: bool) -> Extras {
    Extras {
        daemon_args: if with_master {
            vec![
                "--master-user".into(),
                MASTER.into(),
                "--master-password-file".into(),
                files.join("secret").display().to_string(),
            ]
        } else {
            vec![]
        },
        dovecot_conf: format!(
            r#"
auth_master_user_separator = *
passdb {{
  driver = passwd-file
  args = {}
  master = yes
  pass = yes
}}
"#,
            files.join("master-users").display()
        ),
        ..Extras::default()
    }
}

fn add_carol(stack: &Stack) {
    stack.add_passwd_line(&format!("carol:{}::::::", doveadm_pw("CRAM-MD5", CAROL_PW)));
}

fn mailbox_exists(stack: &Stack, user: &str) -> bool {
    stack.path(&format!("mail/{user}/Maildir")).is_dir()
}

fn assert_secret_not_logged(stack: &Stack) {
    for (name, log) in [
        ("daemon", stack.daemon_log()),
        ("nginx", stack.nginx_error_log()),
        ("dovecot", stack.dovecot_log()),
    ] {
        assert!(
            !log.contains(MASTER_SECRET),
            "{name} log has the master secret"
        );
        assert!(!log.contains(CAROL_PW), "{name} log has carol's password");
    }
}

#[test]
fn cram_md5_from_a_cram_context_logs_in_through_a_master_user() {
    let files = master_files();
    let stack = Stack::start_with_extras(Launch::Direct, master_extras(files.path(), true));
    add_carol(&stack);

    let r = stack.client("imap", "cram-md5", "carol", &[CAROL_PW], &[]);
    assert!(r.ok, "IMAP CRAM-MD5 via master login: {r:#?}");
    assert!(
        r.after.as_ref().is_some_and(|a| a.ok),
        "SELECT INBOX: {r:#?}"
    );
    assert!(mailbox_exists(&stack, "carol"), "the session was carol's");
    assert!(!mailbox_exists(&stack, MASTER), "…not the master's");

    let r = stack.client("pop3", "cram-md5", "carol", &[CAROL_PW], &[]);
    assert!(r.ok, "POP3 CRAM-MD5 via master login: {r:#?}");
    assert!(r.after.as_ref().is_some_and(|a| a.ok), "STAT: {r:#?}");

    // Dovecot saw master logins as carol (auth_verbose logs them).
    let dovecot = stack.dovecot_log();
    assert_eq!(
        dovecot.matches("Master user logging in as carol").count(),
        2,
        "{dovecot}"
    );
    assert!(dovecot.contains("Login: user=<carol>"), "{dovecot}");
    // The daemon's audit says ok for carol.
    let audit = stack.audit_lines("carol");
    assert!(
        audit.iter().filter(|l| l.contains("result=ok")).count() >= 2,
        "{audit:#?}"
    );

    // A wrong response is a normal NO, for both protocols.
    let r = stack.client("imap", "cram-md5", "carol", &["not-carols-pw"], &[]);
    assert!(!r.ok && r.attempts[0].response.starts_with("NO "), "{r:#?}");
    let r = stack.client("pop3", "cram-md5", "carol", &["not-carols-pw"], &[]);
    assert!(
        !r.ok && r.attempts[0].response.starts_with("-ERR"),
        "{r:#?}"
    );
    assert_secret_not_logged(&stack);
}

#[test]
fn cram_context_user_without_master_config_gets_a_clean_no() {
    let files = master_files();
    let mut stack = Stack::start_with_extras(Launch::Direct, master_extras(files.path(), false));
    add_carol(&stack);
    for protocol in ["imap", "pop3"] {
        let r = stack.client(protocol, "cram-md5", "carol", &[CAROL_PW], &[]);
        assert!(!r.ok, "{protocol}: {r:#?}");
        let answer = &r.attempts[0].response;
        assert!(
            answer.contains("Authentication mechanism not supported"),
            "{protocol}: {r:#?}"
        );
        assert!(!answer.contains("internal server error"), "{r:#?}");
    }
    assert!(!mailbox_exists(&stack, "carol"));
    stack.assert_daemon_running();
    // check-config says why.
    let out = Command::new(daemon_bin())
        .args(["check-config", "--passdb"])
        .arg(format!("passwd-file:{}", stack.passwd_path().display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning: cram-md5 is enabled but no [master_user]"),
        "{text}"
    );
}

// ------------------------------------------------------------- EXTERNAL

/// CA, and client certificates it signs, made with openssl.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("nginx-auth-fcgi-pki.")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let pki = Pki { dir };
        pki.openssl(
            &[
                &["req", "-x509"][..],
                &NEW_EC_KEY,
                &["-days", "2", "-subj", "/O=Example/CN=Test CA"],
                &["-keyout", "ca.key", "-out", "ca.pem"],
            ]
            .concat(),
        );
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) -> String {
        run_stdout(
            Command::new(require("openssl", "openssl"))
                .args(args)
                .current_dir(self.dir.path()),
            &format!("openssl {args:?}"),
        )
    }

    /// A client certificate `name.pem`/`name.key` for `subject`, signed by
    /// the CA; returns its SHA-1 fingerprint (lower-case hex, as nginx sends).
    fn client(&self, name: &str, subject: &str) -> String {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        self.openssl(
            &[
                &["req", "-new"][..],
                &NEW_EC_KEY,
                &["-subj", subject, "-keyout", &key, "-out", &csr],
            ]
            .concat(),
        );
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
        ]);
        let fp = self.openssl(&["x509", "-in", &pem, "-noout", "-fingerprint", "-sha1"]);
        fp.trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_ascii_lowercase()
    }
}

/// imaplib over implicit TLS with an optional client certificate, then
/// `AUTHENTICATE EXTERNAL` with `authzid` and `SELECT INBOX`. Prints
/// `OK`/`NO <text>` lines.
/// The start both EXTERNAL clients share: their arguments and a TLS context
/// with the optional client certificate (a macro, for `concat!`).
macro_rules! tls_client_preamble {
    ($modules:literal) => {
        concat!(
            "\nimport ",
            $modules,
            r#", ssl, sys
port, cert, key, authzid = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if cert:
    ctx.load_cert_chain(cert, key)
"#
        )
    };
}

const EXTERNAL_CLIENT: &str = concat!(
    tls_client_preamble!("imaplib"),
    r#"conn = imaplib.IMAP4_SSL("127.0.0.1", int(port), ssl_context=ctx, timeout=30)
try:
    typ, dat = conn.authenticate("EXTERNAL", lambda _: authzid.encode())
    print("AUTH", typ, dat)
except imaplib.IMAP4.error as e:
    print("AUTH NO", e)
    sys.exit(0)
typ, dat = conn.select("INBOX")
print("SELECT", typ, dat)
conn.logout()
"#
);

/// The same for POP3 (RFC 5034 `AUTH EXTERNAL`, then `STAT`), over a raw
/// TLS socket: poplib has no SASL.
const EXTERNAL_POP3_CLIENT: &str = concat!(
    tls_client_preamble!("base64, socket"),
    r#"s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port)), timeout=30))
f = s.makefile("rb")
def cmd(line):
    s.sendall(line.encode() + b"\r\n")
    return f.readline().decode().rstrip()
print("GREETING", f.readline().decode().rstrip())
r = cmd("AUTH EXTERNAL")
if r.startswith("+"):
    r = cmd(base64.b64encode(authzid.encode()).decode())
if not r.startswith("+OK"):
    print("AUTH NO", r)
    sys.exit(0)
print("AUTH OK", r)
print("STAT", cmd("STAT"))
cmd("QUIT")
"#
);

fn external_login(port: u16, pki: &Pki, cert: Option<&str>, authzid: &str) -> String {
    external_client(EXTERNAL_CLIENT, port, pki, cert, authzid)
}

fn external_client(
    script: &str,
    port: u16,
    pki: &Pki,
    cert: Option<&str>,
    authzid: &str,
) -> String {
    let (pem, key) = match cert {
        Some(c) => (
            pki.path(&format!("{c}.pem")).display().to_string(),
            pki.path(&format!("{c}.key")).display().to_string(),
        ),
        None => (String::new(), String::new()),
    };
    let out = Command::new(require("python3", "python3"))
        .args(["-c", script, &port.to_string(), &pem, &key, authzid])
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python client: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn external_client_certificates_map_to_users() {
    let pki = Pki::new();
    pki.client("carol", "/O=Example/CN=carol");
    pki.client("nobody", "/O=Example/CN=nobody");
    let fp = pki.client("pinned", "/O=Example/CN=pinned-holder");
    let files = master_files();
    let [verified, optional, pop3] = free_ports::<3>();
    let ca = pki.path("ca.pem").display().to_string();
    let mut extras = master_extras(files.path(), true);
    extras.daemon_args.extend([
        "--external-fingerprint".into(),
        format!("{fp}={}", ALICE.name),
        "--external-subject".into(),
        "CN".into(),
        "--external-issuer".into(),
        "CN=Test CA,O=Example".into(),
    ]);
    extras.nginx_mail = format!(
        r#"
    server {{
        listen 127.0.0.1:{verified} ssl;
        protocol imap;
        imap_auth external;
        ssl_verify_client on;
        ssl_client_certificate {ca};
        auth_http_pass_client_cert on;
    }}
    server {{
        listen 127.0.0.1:{optional} ssl;
        protocol imap;
        imap_auth external;
        ssl_verify_client optional;
        ssl_client_certificate {ca};
    }}
    server {{
        listen 127.0.0.1:{pop3} ssl;
        protocol pop3;
        pop3_auth external;
        ssl_verify_client on;
        ssl_client_certificate {ca};
    }}
"#
    );
    let stack = Stack::start_with_extras(Launch::Direct, extras);
    add_carol(&stack);

    // CN=carol from the pinned CA → carol ({CRAM-MD5}): master login.
    let out = external_login(verified, &pki, Some("carol"), "");
    assert!(
        out.contains("AUTH OK") && out.contains("SELECT OK"),
        "{out}"
    );
    assert!(mailbox_exists(&stack, "carol"), "the session was carol's");
    // The client may name the mapped user as authzid.
    let out = external_login(verified, &pki, Some("carol"), "carol");
    assert!(out.contains("AUTH OK"), "{out}");

    // Fingerprint rule → alice ({PLAIN}): her own password goes upstream.
    let out = external_login(verified, &pki, Some("pinned"), "");
    assert!(
        out.contains("AUTH OK") && out.contains("SELECT OK"),
        "{out}"
    );
    assert!(mailbox_exists(&stack, ALICE.name));
    assert!(!mailbox_exists(&stack, "pinned-holder"));

    // Verified, but maps to nobody in the passdb.
    let out = external_login(verified, &pki, Some("nobody"), "");
    assert!(out.contains("AUTH NO"), "{out}");
    // A certificate never lets its holder act as someone else.
    let out = external_login(verified, &pki, Some("carol"), ALICE.name);
    assert!(out.contains("AUTH NO"), "{out}");
    // `optional` without a certificate: Auth-SSL-Verify NONE never maps.
    let out = external_login(optional, &pki, None, "");
    assert!(out.contains("AUTH NO"), "{out}");
    assert!(!mailbox_exists(&stack, "nobody"));

    // POP3: the same certificate, the same mapping.
    let out = external_client(EXTERNAL_POP3_CLIENT, pop3, &pki, Some("carol"), "");
    assert!(out.contains("AUTH OK") && out.contains("STAT +OK"), "{out}");
    let out = external_client(EXTERNAL_POP3_CLIENT, pop3, &pki, Some("nobody"), "");
    assert!(out.contains("AUTH NO"), "{out}");

    // Each refusal for its own reason; the mapped user is audited.
    let log = stack.daemon_log();
    for (user, reason) in [
        ("nobody", "reason=unknown-user"),
        ("alice", "reason=authzid-mismatch"),
        ("\"\"", "reason=cert-not-verified"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("user={user} ")) && l.contains(reason)),
            "audit {user} {reason}:\n{log}"
        );
    }
    // Dovecot: the master logged in as carol; alice with her own password.
    let dovecot = stack.dovecot_log();
    assert_eq!(
        dovecot.matches("Master user logging in as carol").count(),
        3,
        "IMAP twice, POP3 once:\n{dovecot}"
    );
    assert!(
        !dovecot.contains("Master user logging in as alice"),
        "{dovecot}"
    );
    assert_secret_not_logged(&stack);
}
