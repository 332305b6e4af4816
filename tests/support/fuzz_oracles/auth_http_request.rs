//! Oracle of the `auth_http_request` fuzz target: the nginx mail auth_http
//! params parser. Included with `#[path]` by the target and by
//! `tests/fuzz_regressions.rs` (see there); public API only.

use nginx_auth_fcgi::auth_http::request::{AuthMethod, MailAuthRequest, ProtocolError};
use nginx_auth_fcgi::fastcgi::{record, Params};

/// `auth_http_request` target: the bytes are a PARAMS stream (its decodable
/// prefix is used), parsed into a [`MailAuthRequest`].
///
/// Checks: `user`, `pass` and the certificate are exactly what an independent
/// `%XX` decoder makes of the raw values (nothing the unescape should have
/// removed survives, nothing else is lost); method, protocol, salt, attempt,
/// envelope and TLS info are consistent with the raw params; every error names
/// a param that really is missing or malformed.
pub fn check_auth_http_request(data: &[u8]) {
    let list: Vec<(Vec<u8>, Vec<u8>)> = record::pairs(data)
        .map_while(Result::ok)
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    let p = Params::from_pairs(list);
    let _ = MailAuthRequest::is_mail_request(&p);
    let raw = |name: &str| p.get(name);
    match MailAuthRequest::from_params(&p) {
        Ok(r) => {
            for (name, got) in [
                ("HTTP_AUTH_USER", r.user.as_slice()),
                ("HTTP_AUTH_PASS", r.pass.expose()),
            ] {
                let raw_v = raw(name).unwrap_or_default();
                assert_eq!(Some(got), reference_unescape(raw_v).as_deref(), "{name}");
                let escapes = raw_v.iter().filter(|b| **b == b'%').count();
                assert_eq!(got.len(), raw_v.len() - 2 * escapes, "{name}");
            }
            let method = raw("HTTP_AUTH_METHOD").expect("parsed without Auth-Method");
            assert!(
                method == r.method.as_str().as_bytes()
                    || (method == b"login" && r.method == AuthMethod::Plain)
            );
            assert_eq!(
                raw("HTTP_AUTH_PROTOCOL"),
                Some(r.protocol.as_str().as_bytes())
            );
            let challenge = matches!(r.method, AuthMethod::Apop | AuthMethod::CramMd5);
            assert_eq!(r.salt.is_some(), challenge);
            if let Some(salt) = &r.salt {
                assert!(!salt.is_empty());
                assert_eq!(raw("HTTP_AUTH_SALT"), Some(salt.as_slice()));
            }
            assert!(r.attempt >= 1);
            if let Some(a) = raw("HTTP_AUTH_LOGIN_ATTEMPT") {
                assert_eq!(parse_text::<u32>(a), Some(r.attempt));
            }
            assert_eq!(
                r.client_ip,
                raw("HTTP_CLIENT_IP").map(|v| parse_text(v).expect("accepted Client-IP"))
            );
            assert_eq!(r.smtp.is_some(), r.method == AuthMethod::None);
            if let Some(env) = &r.smtp {
                for addr in [env.recipient(), env.sender()].into_iter().flatten() {
                    assert!(!addr.contains('>'));
                }
            }
            assert_eq!(r.ssl.is_some(), raw("HTTP_AUTH_SSL") == Some(b"on"));
            if let Some(cert) = r.ssl.as_ref().and_then(|s| s.cert.as_ref()) {
                let raw_cert = raw("HTTP_AUTH_SSL_CERT").expect("cert without param");
                assert_eq!(Some(cert), reference_unescape(raw_cert).as_ref());
            }
            for (i, name) in r.duplicates.iter().enumerate() {
                assert!(p.count(name) > 1, "{name} reported duplicate");
                assert!(!r.duplicates[..i].contains(name));
            }
        }
        Err(ProtocolError::Missing(what)) => {
            let present = match what {
                "Auth-Method" => raw("HTTP_AUTH_METHOD").is_some(),
                "Auth-Protocol" => raw("HTTP_AUTH_PROTOCOL").is_some(),
                "Auth-Salt" => raw("HTTP_AUTH_SALT").is_some_and(|s| !s.is_empty()),
                other => panic!("unexpected Missing({other})"),
            };
            assert!(!present, "Missing({what}) but it is there");
        }
        Err(ProtocolError::Malformed(what)) => {
            let value = |name| raw(name).unwrap_or_else(|| panic!("Malformed({what}) absent"));
            let bad = match what {
                "Auth-Method" => !matches!(
                    value("HTTP_AUTH_METHOD"),
                    b"plain" | b"login" | b"apop" | b"cram-md5" | b"external" | b"none"
                ),
                "Auth-Protocol" => {
                    !matches!(value("HTTP_AUTH_PROTOCOL"), b"imap" | b"pop3" | b"smtp")
                }
                "Auth-User" => reference_unescape(value("HTTP_AUTH_USER")).is_none(),
                "Auth-Pass" => reference_unescape(value("HTTP_AUTH_PASS")).is_none(),
                "Auth-Login-Attempt" => {
                    parse_text::<u32>(value("HTTP_AUTH_LOGIN_ATTEMPT")).is_none_or(|n| n == 0)
                }
                "Client-IP" => parse_text::<std::net::IpAddr>(value("HTTP_CLIENT_IP")).is_none(),
                "Proxy-Protocol-Addr" => {
                    parse_text::<std::net::IpAddr>(value("HTTP_PROXY_PROTOCOL_ADDR")).is_none()
                }
                other => panic!("unexpected Malformed({other})"),
            };
            assert!(bad, "Malformed({what}) for a valid value");
        }
    }
}

fn parse_text<T: std::str::FromStr>(v: &[u8]) -> Option<T> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// nginx's `NGX_ESCAPE_MAIL_AUTH` undone, written independently of
/// the daemon's `auth_http::request::unescape`: `%` must be followed by exactly two
/// hex digits (`u8::from_str_radix` alone would accept `%+1`).
fn reference_unescape(v: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = v;
    while let Some((&c, tail)) = rest.split_first() {
        if c != b'%' {
            out.push(c);
            rest = tail;
            continue;
        }
        let hex = tail
            .get(..2)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
        out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
        rest = &tail[2..];
    }
    Some(out)
}
