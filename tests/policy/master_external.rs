//! Logins verified without a plaintext, decided in process: CRAM-MD5 against
//! a `{CRAM-MD5}` context made by Dovecot's own `doveadm pw`, answered with a
//! Dovecot master login, and EXTERNAL client certificates mapped by rules.
//! CGI params as nginx sends them → `Service::respond`; real passwd-file.
//! (`tests/e2e_suite/master.rs` runs the same through real nginx and Dovecot.)

use std::process::Command;

use crate::common::policy::base_policy;
use nginx_auth_fcgi::authenticator::Authenticator;
use nginx_auth_fcgi::fastcgi::Params;
use nginx_auth_fcgi::master_user::MasterUser;
use nginx_auth_fcgi::mech::external::{Rule, Rules};
use nginx_auth_fcgi::mech::{cram_md5, Mechanism};
use nginx_auth_fcgi::passdb::AnyPassdb;
use nginx_auth_fcgi::secret::Secret;
use nginx_auth_fcgi::service::Service;

const SALT: &str = "<4711.1795895186@mail.example.test>";
const MASTER_SECRET: &str = "m4ster-S3cret-never-logged";
const FP_ALICE: &str = "0123456789abcdef0123456789abcdef01234567";
const CA: &str = "CN=Test CA,O=Example";

fn doveadm_cram(password: &str) -> String {
    let out = Command::new(crate::common::proc::require("doveadm", "dovecot-core"))
        .args(["pw", "-s", "CRAM-MD5", "-p", password])
        .output()
        .expect("doveadm (Debian package dovecot-core) must be installed for this test");
    assert!(out.status.success(), "doveadm pw failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Fixture {
    _dir: tempfile::TempDir,
    service: Service,
}

fn fixture(master: Option<MasterUser>, rules: Rules) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("users");
    let carol = doveadm_cram("cram-pw");
    let frank = doveadm_cram("frank-pw");
    let long = "l".repeat(850);
    std::fs::write(
        &passwd,
        format!(
            "alice:{{PLAIN}}alice-pw::::::\n\
             carol:{carol}::::::\n\
             frank:{frank}::::::user=frank@backend\n\
             erin:{carol}::::::nologin\n\
             odd*name:{carol}::::::\n\
             {long}:{carol}::::::\n"
        ),
    )
    .unwrap();
    let upstreams = crate::common::policy::local_upstreams();
    let db = AnyPassdb::open(&format!("passwd-file:{}", passwd.display()), None).unwrap();
    let policy = base_policy(Mechanism::ALL, upstreams);
    let auth = Authenticator::new(policy, vec![db])
        .unwrap()
        .with_master_user(master)
        .with_external(rules)
        .unwrap();
    Fixture {
        _dir: dir,
        service: Service::new(auth, vec![]),
    }
}

fn master() -> Option<MasterUser> {
    Some(MasterUser::new("master", Secret::from(MASTER_SECRET), "*").unwrap())
}

fn rules() -> Rules {
    Rules(vec![
        Rule::fingerprint(FP_ALICE, "alice").unwrap(),
        Rule::subject("CN", Some(CA)).unwrap(),
    ])
}

fn req(protocol: &str, method: &str, user: &str, pass: &str) -> Vec<(String, Vec<u8>)> {
    let mut p = vec![
        ("HTTP_AUTH_METHOD".into(), method.as_bytes().to_vec()),
        ("HTTP_AUTH_USER".into(), user.as_bytes().to_vec()),
        ("HTTP_AUTH_PASS".into(), pass.as_bytes().to_vec()),
        ("HTTP_AUTH_PROTOCOL".into(), protocol.as_bytes().to_vec()),
        ("HTTP_AUTH_LOGIN_ATTEMPT".into(), b"1".to_vec()),
        ("HTTP_CLIENT_IP".into(), b"198.51.100.9".to_vec()),
    ];
    if method != "external" {
        p.push(("HTTP_AUTH_SALT".into(), SALT.as_bytes().to_vec()));
    }
    p
}

fn cram(user: &str, password: &str) -> Vec<(String, Vec<u8>)> {
    let d = hex::encode(cram_md5::digest(password.as_bytes(), SALT.as_bytes()));
    req("imap", "cram-md5", user, &d)
}

/// An EXTERNAL request as nginx sends it for a TLS client certificate.
fn external(
    protocol: &str,
    authzid: &str,
    verify: &str,
    subject: &str,
    fp: &str,
) -> Vec<(String, Vec<u8>)> {
    let mut p = req(protocol, "external", authzid, "");
    for (k, v) in [
        ("HTTP_AUTH_SSL", "on"),
        ("HTTP_AUTH_SSL_VERIFY", verify),
        ("HTTP_AUTH_SSL_SUBJECT", subject),
        ("HTTP_AUTH_SSL_ISSUER", CA),
        ("HTTP_AUTH_SSL_SERIAL", "1A"),
        ("HTTP_AUTH_SSL_FINGERPRINT", fp),
    ] {
        p.push((k.into(), v.as_bytes().to_vec()));
    }
    p
}

fn set(mut p: Vec<(String, Vec<u8>)>, k: &str, v: &str) -> Vec<(String, Vec<u8>)> {
    p.retain(|(n, _)| n != k);
    p.push((k.into(), v.as_bytes().to_vec()));
    p
}

struct Reply(String);

impl Reply {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .split("\r\n")
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    fn status(&self) -> &str {
        self.get("Auth-Status").unwrap_or("<none>")
    }
}

async fn ask(f: &Fixture, pairs: Vec<(String, Vec<u8>)>) -> Reply {
    let params = Params::from_pairs(
        pairs
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v))
            .collect(),
    );
    let bytes = f.service.respond(&params).await;
    assert!(bytes.len() <= 900, "reply fits nginx's buffer");
    let r = Reply(String::from_utf8(bytes).unwrap());
    if r.status() != "OK" {
        assert!(
            r.get("Auth-Server").is_none() && r.get("Auth-Pass").is_none(),
            "{}",
            r.0
        );
    }
    r
}

const INVALID: &str = "Invalid login or password";
const UNSUPPORTED: &str = "Authentication mechanism not supported";

#[tokio::test]
async fn cram_md5_from_doveadm_context_logs_in_as_master() {
    let f = fixture(master(), Rules::default());
    for (proto, port) in [("imap", "1143"), ("pop3", "1110")] {
        let d = hex::encode(cram_md5::digest(b"cram-pw", SALT.as_bytes()));
        let r = ask(&f, req(proto, "cram-md5", "carol", &d)).await;
        assert_eq!(r.status(), "OK", "{}", r.0);
        assert_eq!(r.get("Auth-Port"), Some(port));
        assert_eq!(r.get("Auth-User"), Some("carol*master"));
        assert_eq!(r.get("Auth-Pass"), Some(MASTER_SECRET));
    }
    // The passdb's backend login (user=) is what the master logs in as.
    let r = ask(&f, cram("frank", "frank-pw")).await;
    assert_eq!(r.get("Auth-User"), Some("frank@backend*master"), "{}", r.0);
    // Wrong digest: the usual invalid-login answer.
    let r = ask(&f, cram("carol", "not-cram-pw")).await;
    assert_eq!(r.status(), INVALID);
    // A {PLAIN} user keeps getting the own password, no master involved.
    let r = ask(&f, cram("alice", "alice-pw")).await;
    assert_eq!(r.get("Auth-Pass"), Some("alice-pw"), "{}", r.0);
    assert_eq!(r.get("Auth-User"), None);
    // SMTP without proxy_smtp_auth needs no password: no master login either.
    let d = hex::encode(cram_md5::digest(b"cram-pw", SALT.as_bytes()));
    let r = ask(&f, req("smtp", "cram-md5", "carol", &d)).await;
    assert_eq!(r.status(), "OK");
    assert!(
        r.get("Auth-Pass").is_none() && r.get("Auth-User").is_none(),
        "{}",
        r.0
    );
    // Disabled stays disabled.
    let r = ask(&f, cram("erin", "cram-pw")).await;
    assert_eq!(r.status(), INVALID);
}

#[tokio::test]
async fn what_cannot_be_answered_is_refused_cleanly() {
    let f = fixture(master(), Rules::default());
    // APOP needs the plaintext: a {CRAM-MD5} context cannot answer it.
    let d = hex::encode(nginx_auth_fcgi::mech::apop::digest(
        b"cram-pw",
        SALT.as_bytes(),
    ));
    let r = ask(&f, req("pop3", "apop", "carol", &d)).await;
    assert_eq!(r.status(), UNSUPPORTED);
    // A login containing the separator would be split wrongly by Dovecot.
    let r = ask(&f, cram("odd*name", "cram-pw")).await;
    assert_eq!(r.status(), UNSUPPORTED);
    // A reply over nginx's 1024-byte buffer is a temporary failure, never OK.
    let r = ask(&f, cram(&"l".repeat(850), "cram-pw")).await;
    assert_eq!(r.status(), "Temporary server problem, try again later");

    // Without a master user the verified {CRAM-MD5} user has no upstream password.
    let f = fixture(None, Rules::default());
    for proto in ["imap", "pop3"] {
        let d = hex::encode(cram_md5::digest(b"cram-pw", SALT.as_bytes()));
        let r = ask(&f, req(proto, "cram-md5", "carol", &d)).await;
        assert_eq!(r.status(), UNSUPPORTED, "{proto}");
    }
    // Without rules EXTERNAL is not offered.
    let r = ask(&f, external("imap", "", "SUCCESS", "CN=carol", FP_ALICE)).await;
    assert_eq!(r.status(), UNSUPPORTED);
}

#[tokio::test]
async fn master_secret_stays_out_of_audit_and_debug() {
    let f = fixture(master(), Rules::default());
    let d = hex::encode(cram_md5::digest(b"cram-pw", SALT.as_bytes()));
    let params = Params::from_pairs(
        req("imap", "cram-md5", "carol", &d)
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v))
            .collect(),
    );
    let request = nginx_auth_fcgi::auth_http::MailAuthRequest::from_params(&params).unwrap();
    let decision = f.service.authenticator().authenticate(&request).await;
    let audit = decision.audit.to_string();
    assert!(audit.contains("result=ok"), "{audit}");
    assert!(!audit.contains(MASTER_SECRET) && !format!("{decision:?}").contains(MASTER_SECRET));
    assert!(!format!("{:?}", f.service.authenticator()).contains(MASTER_SECRET));
}

#[tokio::test]
async fn external_maps_only_verified_certificates() {
    let f = fixture(master(), rules());
    let other_fp = "f".repeat(40);
    // Fingerprint rule → alice, a {PLAIN} user: her password goes upstream.
    let r = ask(&f, external("imap", "", "SUCCESS", "CN=whoever", FP_ALICE)).await;
    assert_eq!(r.status(), "OK", "{}", r.0);
    assert_eq!(r.get("Auth-User"), Some("alice"));
    assert_eq!(r.get("Auth-Pass"), Some("alice-pw"));
    // Subject CN from the pinned CA → carol ({CRAM-MD5}): the master logs in.
    for proto in ["imap", "pop3"] {
        let r = ask(
            &f,
            external(proto, "", "SUCCESS", "CN=carol,O=Example", &other_fp),
        )
        .await;
        assert_eq!(r.status(), "OK", "{}", r.0);
        assert_eq!(r.get("Auth-User"), Some("carol*master"));
        assert_eq!(r.get("Auth-Pass"), Some(MASTER_SECRET));
    }
    // The authzid may name the mapped user, never another one.
    let ok = ask(
        &f,
        external("imap", "carol", "SUCCESS", "CN=carol", &other_fp),
    )
    .await;
    assert_eq!(ok.status(), "OK");
    let r = ask(
        &f,
        external("imap", "alice", "SUCCESS", "CN=carol", &other_fp),
    )
    .await;
    assert_eq!(r.status(), INVALID);
    // Only SUCCESS maps.
    for verify in ["NONE", "FAILED:certificate has expired"] {
        let r = ask(&f, external("imap", "", verify, "CN=carol", FP_ALICE)).await;
        assert_eq!(r.status(), INVALID, "{verify}");
    }
    // Another issuer: the subject rule does not apply.
    let r = ask(
        &f,
        set(
            external("imap", "", "SUCCESS", "CN=carol", &other_fp),
            "HTTP_AUTH_SSL_ISSUER",
            "CN=Other CA,O=Example",
        ),
    )
    .await;
    assert_eq!(r.status(), INVALID);
    // Mapped but unknown, or disabled.
    for cn in ["CN=nobody", "CN=erin"] {
        let r = ask(&f, external("imap", "", "SUCCESS", cn, &other_fp)).await;
        assert_eq!(r.status(), INVALID, "{cn}");
    }
    // Not TLS at all.
    let plain = req("imap", "external", "", "");
    assert_eq!(ask(&f, plain).await.status(), INVALID);
    // SMTP: the mapped user is the identity nginx passes on (XCLIENT LOGIN=).
    let r = ask(&f, external("smtp", "", "SUCCESS", "CN=carol", &other_fp)).await;
    assert_eq!(r.get("Auth-User"), Some("carol"), "{}", r.0);
    assert!(r.get("Auth-Pass").is_none());

    // Without a master user a non-plaintext user is refused, a {PLAIN} one works.
    let f = fixture(None, rules());
    let r = ask(&f, external("imap", "", "SUCCESS", "CN=carol", &other_fp)).await;
    assert_eq!(r.status(), UNSUPPORTED);
    let r = ask(&f, external("imap", "", "SUCCESS", "CN=x", FP_ALICE)).await;
    assert_eq!(r.get("Auth-Pass"), Some("alice-pw"));
}

/// `nginx-auth-fcgi hash -s CRAM-MD5` and `doveadm pw -s CRAM-MD5` agree.
#[test]
fn hash_cram_md5_equals_doveadm() {
    for pw in ["tanstaaftanstaaf", "p w%+:é", &"x".repeat(70)] {
        let out = crate::common::daemon::run_cli(["hash", "-s", "CRAM-MD5"], &format!("{pw}\n"));
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            doveadm_cram(pw)
        );
    }
}

#[test]
fn config_sections_validate_and_never_echo_the_secret() {
    use nginx_auth_fcgi::config::{Config, RawConfig};
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("master.secret");
    std::fs::write(&secret_file, format!("{MASTER_SECRET}\n")).unwrap();
    let raw: RawConfig = toml::from_str(&format!(
        r#"
        [master_user]
        user = "master"
        password_file = "{}"
        [[external.rule]]
        fingerprint = "01:23:45:67:89:AB:CD:EF:01:23:45:67:89:ab:cd:ef:01:23:45:67"
        user = "alice"
        [[external.rule]]
        subject_attribute = "emailAddress"
        issuer = "CN=Test CA,O=Example"
        "#,
        secret_file.display()
    ))
    .unwrap();
    let c = Config::validate(raw).unwrap();
    let m = c.master_user.as_ref().unwrap();
    assert_eq!((m.user(), m.separator()), ("master", "*"));
    assert_eq!(
        m.login_for(b"bob").unwrap().password.expose(),
        MASTER_SECRET.as_bytes()
    );
    assert_eq!(c.external.0.len(), 2);
    assert!(!format!("{c:?}").contains(MASTER_SECRET));

    let bad: RawConfig = toml::from_str(&format!(
        r#"
        [master_user]
        user = "master"
        password = "{MASTER_SECRET}"
        password_file = "/nonexistent"
        [[external.rule]]
        fingerprint = "0123"
        user = "alice"
        [[external.rule]]
        fingerprint = "{FP_ALICE}"
        subject_attribute = "CN"
        [[external.rule]]
        subject_attribute = "CN"
        issuer = "CN=unterminated\\"
        "#
    ))
    .unwrap();
    let problems = Config::validate(bad).unwrap_err();
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems
        .iter()
        .all(|p| !p.to_string().contains(MASTER_SECRET)));
    let no_user: RawConfig =
        toml::from_str("[master_user]\npassword = \"x\"\nseparator = \"*\"\n").unwrap();
    assert_eq!(Config::validate(no_user).unwrap_err().len(), 1);
    assert!(toml::from_str::<RawConfig>("[master_user]\nsecret = \"x\"\n").is_err());

    // check-config shows the master's name and the rules, never the secret.
    let passwd = dir.path().join("users");
    std::fs::write(&passwd, "alice:{PLAIN}alice-pw::::::\n").unwrap();
    // Not readable by others, so no file-mode warning either.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nginx-auth-fcgi"))
        .arg("check-config")
        .arg(format!("--passdb=passwd-file:{}", passwd.display()))
        .args(["--master-user", "master", "--master-password-file"])
        .arg(&secret_file)
        .args(["--external-subject", "CN", "--external-issuer", CA])
        .args(["--external-fingerprint", &format!("{FP_ALICE}=alice")])
        // Every protocol has an upstream, so no default-upstream warning.
        .args([
            "--upstream",
            "imap=127.0.0.1:143",
            "--upstream",
            "pop3=127.0.0.1:110",
        ])
        .args(["--upstream", "smtp=127.0.0.1:25"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("master user: master (Auth-User LOGIN*master)"),
        "{text}"
    );
    assert!(
        text.contains("external rule: subject CN (issuer pinned)"),
        "{text}"
    );
    assert!(text.contains(&format!("external rule: fingerprint {FP_ALICE} -> alice")));
    assert!(!text.contains("warning"), "{text}");
    assert!(!text.contains(MASTER_SECRET));
}
