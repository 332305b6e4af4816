//! nginx `auth_request` decisions in-process: params as nginx sends them for
//! an auth location → `Service::respond` → status and challenge.

use crate::common::policy::{base_policy, fixed_throttle};
use nginx_auth_fcgi::authenticator::{Authenticator, Policy};
use nginx_auth_fcgi::fastcgi::Params;
use nginx_auth_fcgi::http_auth::digest::Algorithm;
use nginx_auth_fcgi::mech::Mechanism;
use nginx_auth_fcgi::passdb::AnyPassdb;
use nginx_auth_fcgi::service::Service;
use nginx_auth_fcgi::upstream::Upstreams;

fn service(dir: &tempfile::TempDir, passdb: &str) -> Service {
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:{PLAIN}wonderland::::::\n").unwrap();
    let uri = match passdb {
        "passwd-file" => format!("passwd-file:{}", users.display()),
        other => other.to_owned(),
    };
    let policy = Policy {
        timeout: std::time::Duration::from_secs(5),
        ..base_policy(Mechanism::ALL, Upstreams::default())
    };
    let auth = Authenticator::new(policy, vec![AnyPassdb::open(&uri, None).unwrap()]).unwrap();
    Service::new(auth, vec!["X-Auth-Key=k".parse().unwrap()])
}

fn params(extra: &[(&str, &str)]) -> Params {
    crate::params_with(
        &[
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_URI", "/private/x"),
            ("REMOTE_ADDR", "198.51.100.2"),
            ("AUTH_REALM", "R"),
            ("HTTP_X_AUTH_KEY", "k"),
        ],
        extra,
    )
}

async fn ask(s: &Service, extra: &[(&str, &str)]) -> String {
    String::from_utf8(s.respond(&params(extra)).await).unwrap()
}

fn digest_header(nonce: &str, password: &str, nc: &str, uri: &str) -> String {
    let h = |s: String| Algorithm::Md5.h(s.as_bytes());
    let ha1 = h(format!("alice:R:{password}"));
    let ha2 = h(format!("GET:{uri}"));
    let resp = h(format!("{ha1}:{nonce}:{nc}:cn:auth:{ha2}"));
    format!(
        "Digest username=\"alice\", realm=\"R\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm=MD5, \
         qop=auth, nc={nc}, cnonce=\"cn\", response=\"{resp}\""
    )
}

fn nonce_of(reply: &str) -> String {
    let i = reply.find("nonce=\"").expect("a Digest challenge") + 7;
    reply[i..i + reply[i..].find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn challenge_then_digest_then_replay() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(&dir, "passwd-file");
    let md5 = [("AUTH_DIGEST_ALGORITHMS", "MD5")];
    let first = ask(&s, &md5).await;
    assert!(first.starts_with("Status: 401"), "{first}");
    assert!(first.contains("WWW-Authenticate: Digest realm=\"R\", qop=\"auth\", algorithm=MD5"));
    assert!(first.contains("WWW-Authenticate: Basic realm=\"R\", charset=\"UTF-8\""));
    let nonce = nonce_of(&first);
    let auth = digest_header(&nonce, "wonderland", "00000001", "/private/x");
    let ok = ask(&s, &[md5[0], ("HTTP_AUTHORIZATION", &auth)]).await;
    // rspauth (RFC 7616 §3.5): the response with A2 = ":" uri.
    let h = |s: String| Algorithm::Md5.h(s.as_bytes());
    let ha1 = h("alice:R:wonderland".into());
    let rspauth = h(format!(
        "{ha1}:{nonce}:00000001:cn:auth:{}",
        h(":/private/x".into())
    ));
    assert_eq!(
        ok,
        format!(
            "Status: 200 OK\r\nX-Auth-User: alice\r\nAuthentication-Info: rspauth=\"{rspauth}\", \
             qop=auth, nc=00000001, cnonce=\"cn\"\r\n\r\n"
        )
    );
    let replay = ask(&s, &[md5[0], ("HTTP_AUTHORIZATION", &auth)]).await;
    assert!(
        replay.starts_with("Status: 401") && replay.contains("stale=true"),
        "{replay}"
    );
    let next = digest_header(&nonce, "wonderland", "00000002", "/private/x");
    assert!(ask(&s, &[md5[0], ("HTTP_AUTHORIZATION", &next)])
        .await
        .starts_with("Status: 200"));
    // The digest is bound to the request-target.
    let other_uri = digest_header(&nonce, "wonderland", "00000003", "/elsewhere");
    assert!(ask(&s, &[md5[0], ("HTTP_AUTHORIZATION", &other_uri)])
        .await
        .starts_with("Status: 401"));
    // An algorithm the location does not allow.
    let sha_only = [
        ("AUTH_DIGEST_ALGORITHMS", "SHA-256"),
        ("HTTP_AUTHORIZATION", &next),
    ];
    assert!(ask(&s, &sha_only).await.starts_with("Status: 401"));
}

#[tokio::test]
async fn basic_and_offered_schemes() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(&dir, "passwd-file");
    // alice:wonderland
    let good = [("HTTP_AUTHORIZATION", "Basic YWxpY2U6d29uZGVybGFuZA==")];
    assert!(ask(&s, &good).await.starts_with("Status: 200"));
    let digest_only = [good[0], ("AUTH_SCHEMES", "digest")];
    assert!(
        ask(&s, &digest_only).await.starts_with("Status: 401"),
        "Basic not offered here"
    );
    // alice:wrong, and a password containing ':' is allowed by RFC 7617
    assert!(ask(&s, &[("HTTP_AUTHORIZATION", "Basic YWxpY2U6d3Jvbmc=")])
        .await
        .starts_with("Status: 401"));
}

#[tokio::test]
async fn bad_settings_missing_key_and_backend_down() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(&dir, "passwd-file");
    for bad in [
        ("AUTH_SCHEMES", "ntlm"),
        ("AUTH_DIGEST_ALGORITHMS", "SHA-1"),
        ("AUTH_NONCE_LIFETIME", "x"),
        ("AUTH_REALM", "a\"b"),
    ] {
        let r = ask(&s, &[bad]).await;
        assert!(r.starts_with("Status: 503"), "{bad:?}: {r}");
    }
    let r = ask(&s, &[("HTTP_X_AUTH_KEY", "wrong")]).await;
    assert!(r.starts_with("Status: 403"), "{r}");

    let db = dir.path().join("gone.db");
    let s = service(&dir, &format!("sqlite:{}", db.display()));
    std::fs::remove_file(&db).unwrap();
    let r = ask(
        &s,
        &[("HTTP_AUTHORIZATION", "Basic YWxpY2U6d29uZGVybGFuZA==")],
    )
    .await;
    assert!(
        r.starts_with("Status: 503"),
        "backend down is not a 401: {r}"
    );
}

fn service_with(passdbs: Vec<AnyPassdb>) -> Service {
    let policy = Policy {
        timeout: std::time::Duration::from_secs(5),
        ..base_policy([Mechanism::Plain], Upstreams::default())
    };
    Service::new(
        Authenticator::new(policy, passdbs).unwrap(),
        vec!["X-Auth-Key=k".parse().unwrap()],
    )
}

#[tokio::test]
async fn htdigest_serves_digest_without_plaintext_and_basic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htdigest");
    // HA1 = MD5("alice:R:wonderland"), as `htdigest FILE R alice` writes it.
    let ha1 = Algorithm::Md5.h(b"alice:R:wonderland");
    std::fs::write(&path, format!("alice:R:{ha1}\n")).unwrap();
    let s = service_with(vec![AnyPassdb::open(
        &format!("htdigest:{}", path.display()),
        None,
    )
    .unwrap()]);
    let md5 = ("AUTH_DIGEST_ALGORITHMS", "MD5 MD5-sess");
    let nonce = nonce_of(&ask(&s, &[md5]).await);
    let auth = digest_header(&nonce, "wonderland", "00000001", "/private/x");
    let r = ask(&s, &[md5, ("HTTP_AUTHORIZATION", &auth)]).await;
    assert!(r.starts_with("Status: 200"), "{r}");
    let bad = digest_header(&nonce, "Wonderland", "00000002", "/private/x");
    assert!(ask(&s, &[md5, ("HTTP_AUTHORIZATION", &bad)])
        .await
        .starts_with("Status: 401"));
    // Basic against the same file: MD5(user:realm:offered password) is compared.
    let basic = [("HTTP_AUTHORIZATION", "Basic YWxpY2U6d29uZGVybGFuZA==")];
    assert!(ask(&s, &basic).await.starts_with("Status: 200"));
}

#[tokio::test]
async fn htpasswd_apr1_bcrypt_and_sha() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    // `openssl passwd -apr1 -salt saltsalt password` (= htpasswd -m), a bcrypt
    // and a {SHA} line as htpasswd -B / -s write them.
    let bcrypt =
        nginx_auth_fcgi::scheme::hash(nginx_auth_fcgi::scheme::Scheme::BlfCrypt, b"password")
            .unwrap()
            .replace("{BLF-CRYPT}", "");
    std::fs::write(
        &path,
        format!(
            "apr:$apr1$saltsalt$yAAkm4libquA.ZWLHbSBq/\nbcr:{bcrypt}\nsha:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"
        ),
    )
    .unwrap();
    let s = service_with(vec![AnyPassdb::open(
        &format!("htpasswd:{}", path.display()),
        None,
    )
    .unwrap()]);
    use base64::Engine as _;
    for user in ["apr", "bcr", "sha"] {
        let good = base64::engine::general_purpose::STANDARD.encode(format!("{user}:password"));
        let bad = base64::engine::general_purpose::STANDARD.encode(format!("{user}:passwort"));
        let ok = ask(&s, &[("HTTP_AUTHORIZATION", &format!("Basic {good}"))]).await;
        assert!(ok.starts_with("Status: 200"), "{user}: {ok}");
        let no = ask(&s, &[("HTTP_AUTHORIZATION", &format!("Basic {bad}"))]).await;
        assert!(no.starts_with("Status: 401"), "{user}: {no}");
    }
}

#[tokio::test]
async fn basic_guessing_is_throttled_per_client() {
    use nginx_auth_fcgi::throttle::{Clock, Throttle, ThrottlePolicy};
    let (_dir, users) = crate::common::temp_file("users", "alice:{PLAIN}wonderland::::::\n");
    let throttle = Throttle::in_memory(
        ThrottlePolicy {
            block_ip_user: 3,
            ..fixed_throttle()
        },
        Clock::system(),
    );
    let policy = Policy {
        timeout: std::time::Duration::from_secs(5),
        throttle: Some(std::sync::Arc::new(throttle)),
        ..base_policy([Mechanism::Plain], Upstreams::default())
    };
    let passdb = AnyPassdb::open(&format!("passwd-file:{}", users.display()), None).unwrap();
    let s = Service::new(
        Authenticator::new(policy, vec![passdb]).unwrap(),
        vec!["X-Auth-Key=k".parse().unwrap()],
    );
    let right = ("HTTP_AUTHORIZATION", "Basic YWxpY2U6d29uZGVybGFuZA==");
    let attacker = ("REMOTE_ADDR", "203.0.113.66");
    // A guesser: a different wrong password each time (a repeated one
    // counts once).
    use base64::Engine as _;
    for i in 0..3 {
        let guess = base64::engine::general_purpose::STANDARD.encode(format!("alice:guess{i}"));
        let wrong = ("HTTP_AUTHORIZATION", format!("Basic {guess}"));
        let r = ask(&s, &[(wrong.0, &wrong.1), attacker]).await;
        assert!(r.starts_with("Status: 401"), "{r}");
    }
    // Blocked now, even with the right password, without asking the passdb.
    assert!(ask(&s, &[right, attacker]).await.starts_with("Status: 403"));
    // The real user from elsewhere is not locked out.
    let r = ask(&s, &[right, ("REMOTE_ADDR", "198.51.100.7")]).await;
    assert!(r.starts_with("Status: 200"), "{r}");
}
