//! The mail auth_http decision end to end inside the process: CGI params as
//! nginx sends them → `Service::respond` → the header block nginx would parse.
//! Real passwd-file and SQLite passdbs in a temp dir; no mocks.

use crate::common::policy::base_policy;
use nginx_auth_fcgi::authenticator::{Authenticator, Policy};
use nginx_auth_fcgi::fastcgi::Params;
use nginx_auth_fcgi::mech::{apop, cram_md5, Mechanism};
use nginx_auth_fcgi::passdb::AnyPassdb;
use nginx_auth_fcgi::scheme::{self, Scheme};
use nginx_auth_fcgi::service::Service;
use nginx_auth_fcgi::upstream::Upstreams;

const SALT: &str = "<4711.1795895186@mail.example.test>";
const KEY: &str = "k3y-for-tests";
const ODD_PASSWORD: &str = "p %s+:é\u{2603}";

struct Fixture {
    _dir: tempfile::TempDir,
    service: Service,
    sqlite_path: std::path::PathBuf,
}

/// nginx's escaping (NGX_ESCAPE_MAIL_AUTH): 0x00-0x20 and `%`.
fn escape(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in v {
        if b <= 0x20 || b == b'%' {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

fn fixture_with(passdbs: &[&str], mechanisms: &[Mechanism]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("users");
    let crypt = scheme::hash(Scheme::Sha512Crypt, b"crypt-pw").unwrap();
    let cram = scheme::hash(Scheme::CramMd5, b"cram-pw").unwrap();
    // passwd-file fields are split on `:`, so a password with one is stored hashed.
    let odd = scheme::hash(Scheme::Ssha512, ODD_PASSWORD.as_bytes()).unwrap();
    std::fs::write(
        &passwd,
        format!(
            "alice:{{PLAIN}}alice-pw::::::\n\
             bob:{crypt}::::::\n\
             carol:{cram}::::::\n\
             dave:{{PLAIN}}dave-pw::::::host=192.0.2.44 port=10143 user=dave@backend\n\
             erin:{{PLAIN}}erin-pw::::::nologin\n\
             odd:{odd}::::::\n\
             v6:{{PLAIN}}v6-pw::::::host=2001:db8::25\n"
        ),
    )
    .unwrap();
    let sqlite_path = dir.path().join("users.db");
    let admin = nginx_auth_fcgi::passdb::sqlite::Admin::open(&sqlite_path).unwrap();
    admin
        .add(
            "sql@example.org",
            &scheme::hash(Scheme::Ssha256, b"sql-pw").unwrap(),
        )
        .unwrap();
    let mut upstreams = Upstreams::default();
    upstreams.add("imap=127.0.0.1:1143").unwrap();
    upstreams.add("pop3=127.0.0.1:1110").unwrap();
    upstreams.add("smtp=127.0.0.1:1025").unwrap();
    let dbs = passdbs
        .iter()
        .map(|kind| {
            let uri = match *kind {
                "passwd-file" => format!("passwd-file:{}", passwd.display()),
                "sqlite" => format!("sqlite:{}", sqlite_path.display()),
                other => other.to_owned(),
            };
            AnyPassdb::open(&uri, None).unwrap()
        })
        .collect();
    let policy = Policy {
        local_domains: vec!["example.org".into()],
        ..base_policy(mechanisms.iter().copied(), upstreams)
    };
    let auth = Authenticator::new(policy, dbs).unwrap();
    let service = Service::new(auth, vec![format!("X-Auth-Key={KEY}").parse().unwrap()]);
    Fixture {
        _dir: dir,
        service,
        sqlite_path,
    }
}

fn fixture() -> Fixture {
    fixture_with(&["passwd-file", "sqlite"], &Mechanism::ALL)
}

struct Req {
    pairs: Vec<(String, Vec<u8>)>,
}

impl Req {
    fn new(protocol: &str, method: &str, user: &str, pass: &[u8]) -> Self {
        let mut pairs = vec![
            ("REQUEST_METHOD".into(), b"GET".to_vec()),
            ("REMOTE_ADDR".into(), b"127.0.0.1".to_vec()),
            ("HTTP_AUTH_METHOD".into(), method.as_bytes().to_vec()),
            ("HTTP_AUTH_USER".into(), escape(user.as_bytes())),
            ("HTTP_AUTH_PASS".into(), escape(pass)),
            ("HTTP_AUTH_PROTOCOL".into(), protocol.as_bytes().to_vec()),
            ("HTTP_AUTH_LOGIN_ATTEMPT".into(), b"1".to_vec()),
            ("HTTP_CLIENT_IP".into(), b"198.51.100.9".to_vec()),
            ("HTTP_X_AUTH_KEY".into(), KEY.as_bytes().to_vec()),
        ];
        if method == "cram-md5" || method == "apop" {
            pairs.push(("HTTP_AUTH_SALT".into(), SALT.as_bytes().to_vec()));
        }
        Req { pairs }
    }
    fn plain(protocol: &str, user: &str, pass: &str) -> Self {
        Self::new(protocol, "plain", user, pass.as_bytes())
    }
    fn set(mut self, name: &str, value: &[u8]) -> Self {
        self.pairs.retain(|(k, _)| k != name);
        self.pairs.push((name.into(), value.to_vec()));
        self
    }
    fn without(mut self, name: &str) -> Self {
        self.pairs.retain(|(k, _)| k != name);
        self
    }
    fn params(&self) -> Params {
        Params::from_pairs(
            self.pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
                .collect(),
        )
    }
}

/// The reply, parsed like nginx's mail module does: header name → value.
#[derive(Debug)]
struct Reply {
    raw: String,
}

impl Reply {
    fn get(&self, name: &str) -> Option<&str> {
        self.raw
            .split("\r\n")
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    fn ok(&self) -> bool {
        self.get("Auth-Status") == Some("OK")
    }
    fn assert_no_route(&self) {
        assert!(
            self.get("Auth-Server").is_none() && self.get("Auth-Port").is_none(),
            "a failure must not carry server/port: {}",
            self.raw
        );
    }
}

async fn ask(f: &Fixture, r: Req) -> Reply {
    let bytes = f.service.respond(&r.params()).await;
    assert!(bytes.len() <= 900, "reply fits nginx's buffer");
    Reply {
        raw: String::from_utf8(bytes).unwrap(),
    }
}

#[tokio::test]
async fn plain_login_each_protocol() {
    let f = fixture();
    for (proto, port) in [("imap", "1143"), ("pop3", "1110")] {
        let r = ask(&f, Req::plain(proto, "alice", "alice-pw")).await;
        assert!(r.ok(), "{}", r.raw);
        assert_eq!(r.get("Auth-Server"), Some("127.0.0.1"));
        assert_eq!(r.get("Auth-Port"), Some(port));
        assert_eq!(
            r.get("Auth-Pass"),
            Some("alice-pw"),
            "IMAP/POP3 always get Auth-Pass"
        );
    }
    let r = ask(&f, Req::plain("smtp", "alice", "alice-pw")).await;
    assert!(r.ok(), "{}", r.raw);
    assert_eq!(r.get("Auth-Port"), Some("1025"));
    assert_eq!(
        r.get("Auth-Pass"),
        None,
        "SMTP needs no Auth-Pass without proxy_smtp_auth"
    );
}

#[tokio::test]
async fn hashed_scheme_and_sqlite_chain() {
    let f = fixture();
    assert!(ask(&f, Req::plain("imap", "bob", "crypt-pw")).await.ok());
    assert!(!ask(&f, Req::plain("imap", "bob", "crypt-PW")).await.ok());
    // Not in the passwd-file: the chain goes on to SQLite.
    let r = ask(&f, Req::plain("imap", "sql@example.org", "sql-pw")).await;
    assert!(r.ok(), "{}", r.raw);
    assert!(!ask(&f, Req::plain("imap", "sql@example.org", "nope"))
        .await
        .ok());
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same_and_back_off() {
    let f = fixture();
    let wrong = ask(&f, Req::plain("imap", "alice", "guess")).await;
    let unknown = ask(&f, Req::plain("imap", "mallory", "guess")).await;
    let disabled = ask(&f, Req::plain("imap", "erin", "erin-pw")).await;
    for r in [&wrong, &unknown, &disabled] {
        assert_eq!(r.get("Auth-Status"), Some("Invalid login or password"));
        assert_eq!(r.get("Auth-Wait"), Some("1"));
        assert_eq!(r.get("Auth-Error-Code"), None, "no SMTP code for IMAP");
        r.assert_no_route();
    }
    assert_eq!(wrong.raw, unknown.raw);
    let mut waits = Vec::new();
    for attempt in 1..=11 {
        let r = ask(
            &f,
            Req::plain("pop3", "alice", "guess")
                .set("HTTP_AUTH_LOGIN_ATTEMPT", attempt.to_string().as_bytes()),
        )
        .await;
        waits.push(r.get("Auth-Wait").map(str::to_owned));
    }
    let waits: Vec<_> = waits.iter().map(|w| w.as_deref()).collect();
    assert_eq!(
        waits,
        [
            Some("1"),
            Some("2"),
            Some("4"),
            Some("8"),
            Some("16"),
            Some("16"),
            Some("16"),
            Some("16"),
            Some("16"),
            None,
            None
        ],
        "grows, caps, then stops so nginx closes the connection"
    );
    let smtp = ask(&f, Req::plain("smtp", "alice", "guess")).await;
    assert_eq!(smtp.get("Auth-Error-Code"), Some("535 5.7.8"));
}

#[tokio::test]
async fn escaped_odd_password_round_trips() {
    let f = fixture();
    let r = ask(&f, Req::plain("imap", "odd", ODD_PASSWORD)).await;
    assert!(r.ok(), "{}", r.raw);
    assert_eq!(r.get("Auth-Pass"), Some(ODD_PASSWORD));
    // `+` must not be read as a space, nor `%20` left encoded.
    let r = ask(
        &f,
        Req::plain("imap", "odd", &ODD_PASSWORD.replace(' ', "+")),
    )
    .await;
    assert!(!r.ok());
}

#[tokio::test]
async fn cram_md5_and_apop() {
    let f = fixture();
    let digest = hex::encode(cram_md5::digest(b"alice-pw", SALT.as_bytes()));
    for proto in ["imap", "pop3", "smtp"] {
        let r = ask(&f, Req::new(proto, "cram-md5", "alice", digest.as_bytes())).await;
        assert!(r.ok(), "{proto}: {}", r.raw);
        if proto != "smtp" {
            assert_eq!(
                r.get("Auth-Pass"),
                Some("alice-pw"),
                "plaintext for the upstream login"
            );
        }
    }
    let upper = digest.to_ascii_uppercase();
    assert!(
        ask(&f, Req::new("imap", "cram-md5", "alice", upper.as_bytes()))
            .await
            .ok()
    );
    let bad = hex::encode(cram_md5::digest(b"wrong", SALT.as_bytes()));
    let r = ask(&f, Req::new("imap", "cram-md5", "alice", bad.as_bytes())).await;
    assert_eq!(r.get("Auth-Status"), Some("Invalid login or password"));
    let r = ask(&f, Req::new("imap", "cram-md5", "alice", b"not-hex")).await;
    assert_eq!(r.get("Auth-Status"), Some("Invalid login or password"));

    let apop_digest = hex::encode(apop::digest(b"alice-pw", SALT.as_bytes()));
    let r = ask(
        &f,
        Req::new("pop3", "apop", "alice", apop_digest.as_bytes()),
    )
    .await;
    assert!(r.ok(), "{}", r.raw);
    assert_eq!(r.get("Auth-Pass"), Some("alice-pw"));
    // A missing salt for a challenge method is nginx misbehaving: temporary, no route.
    let r = ask(
        &f,
        Req::new("pop3", "apop", "alice", apop_digest.as_bytes()).without("HTTP_AUTH_SALT"),
    )
    .await;
    assert_eq!(
        r.get("Auth-Status"),
        Some("Temporary server problem, try again later")
    );
    r.assert_no_route();
}

#[tokio::test]
async fn challenge_against_a_hash_cannot_log_in_upstream() {
    let f = fixture();
    // bob has SHA512-CRYPT: nothing can answer CRAM-MD5 → the mechanism is
    // refused for him (not "wrong password", not a server fault).
    let d = hex::encode(cram_md5::digest(b"crypt-pw", SALT.as_bytes()));
    let r = ask(&f, Req::new("imap", "cram-md5", "bob", d.as_bytes())).await;
    assert_eq!(
        r.get("Auth-Status"),
        Some("Authentication mechanism not supported")
    );
    r.assert_no_route();
    // carol has {CRAM-MD5}: the digest verifies, SMTP needs no password upstream…
    let d = hex::encode(cram_md5::digest(b"cram-pw", SALT.as_bytes()));
    let r = ask(&f, Req::new("smtp", "cram-md5", "carol", d.as_bytes())).await;
    assert!(r.ok(), "{}", r.raw);
    // …but IMAP has no plaintext to hand nginx for the upstream login, and
    // no master user is configured here (tests/policy/master_external.rs has one).
    let r = ask(&f, Req::new("imap", "cram-md5", "carol", d.as_bytes())).await;
    assert_eq!(
        r.get("Auth-Status"),
        Some("Authentication mechanism not supported")
    );
    r.assert_no_route();
}

#[tokio::test]
async fn per_user_routing_and_ipv6() {
    let f = fixture();
    let r = ask(&f, Req::plain("imap", "dave", "dave-pw")).await;
    assert!(r.ok());
    assert_eq!(r.get("Auth-Server"), Some("192.0.2.44"));
    assert_eq!(r.get("Auth-Port"), Some("10143"));
    assert_eq!(r.get("Auth-User"), Some("dave@backend"));
    let r = ask(&f, Req::plain("pop3", "v6", "v6-pw")).await;
    assert_eq!(
        r.get("Auth-Server"),
        Some("2001:db8::25"),
        "bare IPv6 as nginx wants"
    );
    assert_eq!(r.get("Auth-Port"), Some("1110"));
}

#[tokio::test]
async fn smtp_none_is_no_open_relay() {
    let f = fixture();
    let none = |to: &str| {
        Req::new("smtp", "none", "stale-user", b"")
            .set("HTTP_AUTH_SMTP_HELO", b"client.example")
            .set("HTTP_AUTH_SMTP_FROM", b"MAIL FROM:<x@remote.example>")
            .set("HTTP_AUTH_SMTP_TO", to.as_bytes())
    };
    let r = ask(&f, none("RCPT TO:<someone@Example.ORG>")).await;
    assert!(r.ok(), "{}", r.raw);
    assert_eq!(
        r.get("Auth-User"),
        None,
        "never assert an identity for an unauthenticated session"
    );
    assert_eq!(r.get("Auth-Port"), Some("1025"));
    for to in [
        "RCPT TO:<victim@elsewhere.example>",
        "RCPT TO:<a@example.org.evil.example>",
        "RCPT TO:",
    ] {
        let r = ask(&f, none(to)).await;
        assert_eq!(r.get("Auth-Status"), Some("Relay access denied"), "{to}");
        assert_eq!(r.get("Auth-Error-Code"), Some("554 5.7.1"));
        r.assert_no_route();
    }
}

#[tokio::test]
async fn shared_secret_is_required() {
    let f = fixture();
    for r in [
        Req::plain("imap", "alice", "alice-pw").without("HTTP_X_AUTH_KEY"),
        Req::plain("imap", "alice", "alice-pw").set("HTTP_X_AUTH_KEY", b"k3y-for-test"),
    ] {
        let r = ask(&f, r).await;
        assert!(!r.ok());
        assert!(
            r.get("Auth-Wait").is_none(),
            "refused requests close the connection"
        );
        r.assert_no_route();
    }
}

#[tokio::test]
async fn malformed_requests_get_defined_answers() {
    let f = fixture();
    let cases = [
        Req::plain("imap", "alice", "alice-pw").set("HTTP_AUTH_USER", b"al%zzice"),
        Req::plain("imap", "alice", "alice-pw").set("HTTP_AUTH_PROTOCOL", b"nntp"),
        Req::plain("imap", "alice", "alice-pw").set("HTTP_AUTH_METHOD", b"gssapi"),
        Req::plain("imap", "alice", "alice-pw").set("HTTP_AUTH_LOGIN_ATTEMPT", b"-1"),
        Req::plain("imap", "alice", "alice-pw").set("HTTP_CLIENT_IP", b"not-an-ip"),
    ];
    for c in cases {
        let r = ask(&f, c).await;
        assert_eq!(
            r.get("Auth-Status"),
            Some("Temporary server problem, try again later")
        );
        r.assert_no_route();
    }
    // Bytes that are escaped on the wire but are not acceptable credentials.
    for (user, pass) in [
        ("al\0ice", "alice-pw"),
        ("alice", ""),
        ("", "x"),
        ("alice", "a\r\nb"),
    ] {
        let r = ask(&f, Req::plain("imap", user, pass)).await;
        assert_eq!(
            r.get("Auth-Status"),
            Some("Invalid login or password"),
            "{user:?}/{pass:?}"
        );
        r.assert_no_route();
    }
    let r = ask(&f, Req::new("imap", "plain", "alice", &[0xff, 0xfe])).await;
    assert_eq!(r.get("Auth-Status"), Some("Invalid login or password"));
    // Not a mail request at all.
    let r = ask(
        &f,
        Req {
            pairs: vec![("REQUEST_METHOD".into(), b"GET".to_vec())],
        },
    )
    .await;
    assert!(r.raw.starts_with("Status: 400"));
    assert!(r.get("Auth-Status").is_none());
}

#[tokio::test]
async fn disabled_mechanism_is_refused() {
    let f = fixture_with(&["passwd-file"], &[Mechanism::Plain]);
    let d = hex::encode(cram_md5::digest(b"alice-pw", SALT.as_bytes()));
    let r = ask(&f, Req::new("smtp", "cram-md5", "alice", d.as_bytes())).await;
    assert_eq!(
        r.get("Auth-Status"),
        Some("Authentication mechanism not supported")
    );
    assert_eq!(r.get("Auth-Error-Code"), Some("504 5.5.4"));
    r.assert_no_route();
    let r = ask(&f, Req::new("imap", "external", "alice", b"")).await;
    assert!(!r.ok());
    r.assert_no_route();
}

#[tokio::test]
async fn backend_failure_is_temporary_never_ok_and_recovers() {
    let f = fixture_with(&["sqlite"], &Mechanism::ALL);
    // The database disappears before any connection was pooled: every query fails.
    let moved = f.sqlite_path.with_extension("moved");
    std::fs::rename(&f.sqlite_path, &moved).unwrap();
    for proto in ["imap", "smtp"] {
        let r = ask(&f, Req::plain(proto, "sql@example.org", "sql-pw")).await;
        assert_eq!(
            r.get("Auth-Status"),
            Some("Temporary server problem, try again later"),
            "{}",
            r.raw
        );
        assert_eq!(r.get("Auth-Wait"), Some("3"));
        r.assert_no_route();
        if proto == "smtp" {
            assert_eq!(r.get("Auth-Error-Code"), Some("451 4.3.0"));
        }
    }
    // It comes back: used again without a restart.
    std::fs::rename(&moved, &f.sqlite_path).unwrap();
    assert!(ask(&f, Req::plain("imap", "sql@example.org", "sql-pw"))
        .await
        .ok());
}

#[tokio::test]
async fn unusable_stored_hash_is_temporary() {
    let f = fixture();
    let passwd = f._dir.path().join("users");
    let mut text = std::fs::read_to_string(&passwd).unwrap();
    text.push_str("broken:{SHA512-CRYPT}$6$garbage::::::\n");
    std::fs::write(&passwd, text).unwrap();
    // The passdb's watcher picks the new line up within about a second; until
    // then `broken` is an unknown user. Whatever answer comes first after
    // that must be the temporary failure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        let r = ask(&f, Req::plain("imap", "broken", "whatever")).await;
        if r.get("Auth-Status") != Some("Invalid login or password") {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new line was never loaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        r.get("Auth-Status"),
        Some("Temporary server problem, try again later")
    );
    r.assert_no_route();
}
