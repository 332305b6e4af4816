//! CGI params → [`MailAuthRequest`]: nginx's `Auth-*` header values become
//! typed fields here (and [`MailProtocol`]'s `FromStr` serves the
//! configuration's protocol names too).
//!
//! nginx escapes `Auth-User`, `Auth-Pass` and `Auth-SSL-Cert` with
//! `ngx_escape_uri(…, NGX_ESCAPE_MAIL_AUTH)`: bytes 0x00–0x20 and `%` become
//! `%XX`; everything else, `+` and UTF-8 included, arrives raw (reference §2.4).
//! The other headers are not escaped.

use std::net::IpAddr;

use crate::fastcgi::Params;
use crate::secret::Secret;

/// `Auth-Method`, lower-case on the wire. nginx reports LOGIN as `plain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `plain`: IMAP LOGIN, AUTH PLAIN, AUTH LOGIN, POP3 USER/PASS.
    Plain,
    /// `apop`: POP3 APOP; `Auth-Pass` is the client's MD5 digest.
    Apop,
    /// `cram-md5`: `Auth-Pass` is the client's HMAC-MD5 digest.
    CramMd5,
    /// `external`: TLS client certificate; `Auth-Pass` is empty.
    External,
    /// `none`: SMTP without AUTH (`smtp_auth none`); decided at RCPT TO.
    None,
}

impl AuthMethod {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Plain => "plain",
            AuthMethod::Apop => "apop",
            AuthMethod::CramMd5 => "cram-md5",
            AuthMethod::External => "external",
            AuthMethod::None => "none",
        }
    }

    /// From its wire name (`Auth-Method`), `login` being `plain`.
    pub fn parse(v: &[u8]) -> Option<Self> {
        Some(match v {
            b"plain" | b"login" => AuthMethod::Plain,
            b"apop" => AuthMethod::Apop,
            b"cram-md5" => AuthMethod::CramMd5,
            b"external" => AuthMethod::External,
            b"none" => AuthMethod::None,
            _ => return None,
        })
    }
}

/// `Auth-Protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailProtocol {
    /// IMAP.
    Imap,
    /// POP3.
    Pop3,
    /// SMTP (submission).
    Smtp,
}

impl MailProtocol {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MailProtocol::Imap => "imap",
            MailProtocol::Pop3 => "pop3",
            MailProtocol::Smtp => "smtp",
        }
    }
}

/// A mail protocol name we do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol `{0}` (imap, pop3, smtp)")]
pub struct UnknownProtocol(pub String);

impl std::str::FromStr for MailProtocol {
    type Err = UnknownProtocol;
    fn from_str(s: &str) -> Result<Self, UnknownProtocol> {
        match s.to_ascii_lowercase().as_str() {
            "imap" => Ok(MailProtocol::Imap),
            "pop3" => Ok(MailProtocol::Pop3),
            "smtp" => Ok(MailProtocol::Smtp),
            _ => Err(UnknownProtocol(s.to_owned())),
        }
    }
}

/// TLS facts nginx passes when the client connection is TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslInfo {
    /// `Auth-SSL-Protocol`, e.g. `TLSv1.3`.
    pub protocol: Option<String>,
    /// `Auth-SSL-Cipher`.
    pub cipher: Option<String>,
    /// `Auth-SSL-Verify`: `SUCCESS`, `NONE` or `FAILED:reason`.
    pub verify: Option<String>,
    /// `Auth-SSL-Subject` (RFC 2253 DN).
    pub subject: Option<String>,
    /// `Auth-SSL-Issuer` (RFC 2253 DN).
    pub issuer: Option<String>,
    /// `Auth-SSL-Serial`.
    pub serial: Option<String>,
    /// `Auth-SSL-Fingerprint` (SHA-1, lower-case hex).
    pub fingerprint: Option<String>,
    /// `Auth-SSL-Cert` (PEM, unescaped).
    pub cert: Option<Vec<u8>>,
}

/// PROXY protocol addresses of the client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// `Proxy-Protocol-Addr`.
    pub addr: Option<IpAddr>,
    /// `Proxy-Protocol-Port`.
    pub port: Option<u16>,
    /// `Proxy-Protocol-Server-Addr`.
    pub server_addr: Option<IpAddr>,
    /// `Proxy-Protocol-Server-Port`.
    pub server_port: Option<u16>,
}

/// The SMTP envelope nginx sends with `Auth-Method: none`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmtpEnvelope {
    /// `Auth-SMTP-Helo`: the HELO/EHLO argument.
    pub helo: String,
    /// `Auth-SMTP-From`: the whole `MAIL FROM:<…> …` command line.
    pub from: String,
    /// `Auth-SMTP-To`: the whole `RCPT TO:<…>` command line.
    pub to: String,
}

impl SmtpEnvelope {
    /// The address inside `<…>` of the RCPT TO line, if any.
    pub fn recipient(&self) -> Option<&str> {
        angle_address(&self.to)
    }

    /// The address inside `<…>` of the MAIL FROM line, if any.
    pub fn sender(&self) -> Option<&str> {
        angle_address(&self.from)
    }
}

/// `Client-Host` (SMTP only): what nginx's reverse lookup of the client
/// found (reference §2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHost {
    /// A name whose forward lookup gave the client's address back.
    Name(String),
    /// `[UNAVAILABLE]`: no PTR record, a PTR name that does not resolve back
    /// to the client, or no `resolver` in nginx's `mail {}` at all.
    Unavailable,
    /// `[TEMPUNAVAIL]`: a resolver error (e.g. a timeout), a unix-socket
    /// client, or (nginx 1.29.7+, Debian's backport) a PTR name with bytes
    /// outside `[A-Za-z0-9.-]`.
    TempUnavailable,
}

impl ClientHost {
    fn parse(v: &[u8]) -> Option<Self> {
        Some(match v {
            b"" => return None,
            b"[UNAVAILABLE]" => ClientHost::Unavailable,
            b"[TEMPUNAVAIL]" => ClientHost::TempUnavailable,
            name => ClientHost::Name(String::from_utf8_lossy(name).into_owned()),
        })
    }
}

fn angle_address(line: &str) -> Option<&str> {
    let start = line.find('<')? + 1;
    let len = line[start..].find('>')?;
    Some(&line[start..start + len])
}

/// One mail login attempt as nginx describes it.
#[derive(Debug, Clone)]
pub struct MailAuthRequest {
    /// `Auth-Method`.
    pub method: AuthMethod,
    /// `Auth-Protocol`.
    pub protocol: MailProtocol,
    /// `Auth-User`, unescaped. Empty for `none` on current nginx; a stale value
    /// may arrive with `none` on 1.22, so it is never trusted for that method.
    pub user: Vec<u8>,
    /// `Auth-Pass`, unescaped: a password (`plain`) or a hex digest (`apop`, `cram-md5`).
    pub pass: Secret,
    /// `Auth-Salt`, kept only for `apop` and `cram-md5` (1.22 also sends it with
    /// other methods, where it means nothing).
    pub salt: Option<Vec<u8>>,
    /// `Auth-Login-Attempt`, 1-based per client session.
    pub attempt: u32,
    /// `Client-IP`: the mail client (not `REMOTE_ADDR`, which is nginx itself).
    pub client_ip: Option<IpAddr>,
    /// `Client-Host` (SMTP only).
    pub client_host: Option<ClientHost>,
    /// TLS details, when `Auth-SSL: on`.
    pub ssl: Option<SslInfo>,
    /// PROXY protocol details, when nginx listens with `proxy_protocol`.
    pub proxy: Option<ProxyProtocol>,
    /// SMTP envelope, for `Auth-Method: none`.
    pub smtp: Option<SmtpEnvelope>,
    /// Names of params that occurred more than once (the first value was used).
    pub duplicates: Vec<&'static str>,
}

/// Why a request could not be turned into a [`MailAuthRequest`]. These come from
/// a misconfigured nginx or a peer that is not nginx; the user is not at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A required header is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A header has a value nginx never sends.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

const USER: &str = "HTTP_AUTH_USER";
const PASS: &str = "HTTP_AUTH_PASS";

/// Params whose duplicates we report. nginx 1.22 passes a repeated request
/// header as repeated params; 1.23+ joins them with `, `.
const WATCHED: [&str; 8] = [
    "HTTP_AUTH_METHOD",
    USER,
    PASS,
    "HTTP_AUTH_SALT",
    "HTTP_AUTH_PROTOCOL",
    "HTTP_AUTH_LOGIN_ATTEMPT",
    "HTTP_CLIENT_IP",
    "HTTP_AUTH_SSL_VERIFY",
];

impl MailAuthRequest {
    /// True when the params look like an nginx mail auth request at all.
    pub fn is_mail_request(params: &Params) -> bool {
        params.get("HTTP_AUTH_PROTOCOL").is_some() || params.get("HTTP_AUTH_METHOD").is_some()
    }

    /// Parses the params nginx sends for a mail auth request.
    pub fn from_params(p: &Params) -> Result<Self, ProtocolError> {
        let method = p
            .get("HTTP_AUTH_METHOD")
            .ok_or(ProtocolError::Missing("Auth-Method"))
            .and_then(|v| AuthMethod::parse(v).ok_or(ProtocolError::Malformed("Auth-Method")))?;
        let protocol = match p.get("HTTP_AUTH_PROTOCOL") {
            None => return Err(ProtocolError::Missing("Auth-Protocol")),
            Some(b"imap") => MailProtocol::Imap,
            Some(b"pop3") => MailProtocol::Pop3,
            Some(b"smtp") => MailProtocol::Smtp,
            Some(_) => return Err(ProtocolError::Malformed("Auth-Protocol")),
        };
        let user = unescape(p.get(USER).unwrap_or_default())
            .ok_or(ProtocolError::Malformed("Auth-User"))?;
        let pass = Secret::new(
            unescape(p.get(PASS).unwrap_or_default())
                .ok_or(ProtocolError::Malformed("Auth-Pass"))?,
        );
        let salt = match method {
            AuthMethod::Apop | AuthMethod::CramMd5 => Some(
                p.get("HTTP_AUTH_SALT")
                    .filter(|s| !s.is_empty())
                    .ok_or(ProtocolError::Missing("Auth-Salt"))?
                    .to_vec(),
            ),
            _ => None,
        };
        let attempt = match p.get("HTTP_AUTH_LOGIN_ATTEMPT") {
            None => 1,
            Some(v) => parse_num::<u32>(v)
                .filter(|n| *n >= 1)
                .ok_or(ProtocolError::Malformed("Auth-Login-Attempt"))?,
        };
        let client_ip = match p.get("HTTP_CLIENT_IP") {
            None => None,
            Some(v) => Some(parse_ip(v).ok_or(ProtocolError::Malformed("Client-IP"))?),
        };
        let text = |name: &str| p.get(name).map(|v| String::from_utf8_lossy(v).into_owned());
        let ssl = (p.get("HTTP_AUTH_SSL") == Some(b"on")).then(|| SslInfo {
            protocol: text("HTTP_AUTH_SSL_PROTOCOL"),
            cipher: text("HTTP_AUTH_SSL_CIPHER"),
            verify: text("HTTP_AUTH_SSL_VERIFY"),
            subject: text("HTTP_AUTH_SSL_SUBJECT"),
            issuer: text("HTTP_AUTH_SSL_ISSUER"),
            serial: text("HTTP_AUTH_SSL_SERIAL"),
            fingerprint: text("HTTP_AUTH_SSL_FINGERPRINT"),
            cert: p.get("HTTP_AUTH_SSL_CERT").and_then(unescape),
        });
        let proxy = match p.get("HTTP_PROXY_PROTOCOL_ADDR") {
            None => None,
            Some(addr) => Some(ProxyProtocol {
                addr: Some(parse_ip(addr).ok_or(ProtocolError::Malformed("Proxy-Protocol-Addr"))?),
                port: p.get("HTTP_PROXY_PROTOCOL_PORT").and_then(parse_num),
                server_addr: p.get("HTTP_PROXY_PROTOCOL_SERVER_ADDR").and_then(parse_ip),
                server_port: p.get("HTTP_PROXY_PROTOCOL_SERVER_PORT").and_then(parse_num),
            }),
        };
        let smtp = (method == AuthMethod::None).then(|| SmtpEnvelope {
            helo: text("HTTP_AUTH_SMTP_HELO").unwrap_or_default(),
            from: text("HTTP_AUTH_SMTP_FROM").unwrap_or_default(),
            to: text("HTTP_AUTH_SMTP_TO").unwrap_or_default(),
        });
        let duplicates = WATCHED
            .iter()
            .copied()
            .filter(|name| p.count(name) > 1)
            .collect();
        Ok(MailAuthRequest {
            method,
            protocol,
            user,
            pass,
            salt,
            attempt,
            client_ip,
            client_host: p.get("HTTP_CLIENT_HOST").and_then(ClientHost::parse),
            ssl,
            proxy,
            smtp,
            duplicates,
        })
    }
}

/// Undoes nginx's mail-auth escaping: every `%XX` (either hex case) becomes the
/// byte; `+` stays `+` (this is not form decoding). A `%` without two hex digits
/// cannot come from nginx, so it is refused (`None`).
pub fn unescape(v: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' {
            let hi = hex_val(*v.get(i + 1)?)?;
            let lo = hex_val(*v.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    Some(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn parse_num<T: std::str::FromStr>(v: &[u8]) -> Option<T> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn parse_ip(v: &[u8]) -> Option<IpAddr> {
    parse_num(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &[u8])]) -> Params {
        Params::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
                .collect(),
        )
    }

    /// The param set observed from nginx 1.22 for an IMAP LOGIN (reference §4.2).
    fn imap_login() -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("QUERY_STRING", b""),
            ("REQUEST_METHOD", b"GET"),
            ("CONTENT_LENGTH", b""),
            ("REMOTE_ADDR", b"127.0.0.1"),
            ("HTTP_HOST", b"127.0.0.1"),
            ("HTTP_AUTH_METHOD", b"plain"),
            ("HTTP_AUTH_USER", b"us%20er"),
            ("HTTP_AUTH_PASS", b"p%25s%20+\xC3\xA9"),
            ("HTTP_AUTH_PROTOCOL", b"imap"),
            ("HTTP_AUTH_LOGIN_ATTEMPT", b"1"),
            ("HTTP_CLIENT_IP", b"192.0.2.7"),
            ("HTTP_X_CUSTOM_HDR", b"hello world"),
        ]
    }

    #[test]
    fn parses_observed_nginx_request() {
        let r = MailAuthRequest::from_params(&params(&imap_login())).unwrap();
        assert_eq!(r.method, AuthMethod::Plain);
        assert_eq!(r.protocol, MailProtocol::Imap);
        assert_eq!(r.user, b"us er");
        assert_eq!(r.pass.expose(), "p%s +é".as_bytes());
        assert_eq!(r.attempt, 1);
        assert_eq!(r.client_ip, Some("192.0.2.7".parse().unwrap()));
        assert!(r.salt.is_none() && r.ssl.is_none() && r.smtp.is_none());
        assert!(r.duplicates.is_empty());
    }

    #[test]
    fn unescape_table() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"", Some(b"")),
            (b"a+b", Some(b"a+b")),
            (b"%20%25%0a%0D%00", Some(b" %\n\r\0")),
            (b"%7e", Some(b"~")),
            (b"\xC3\xA9", Some(b"\xC3\xA9")),
            (b"%", None),
            (b"%2", None),
            (b"%zz", None),
            (b"abc%4", None),
        ];
        for (input, want) in cases {
            assert_eq!(unescape(input).as_deref(), *want, "input {input:?}");
        }
    }

    #[test]
    fn salt_only_for_challenge_methods() {
        let mut p = imap_login();
        p.push(("HTTP_AUTH_SALT", b"<1.2@host>"));
        let r = MailAuthRequest::from_params(&params(&p)).unwrap();
        assert!(r.salt.is_none(), "plain ignores a salt");
        p[5] = ("HTTP_AUTH_METHOD", b"cram-md5");
        let r = MailAuthRequest::from_params(&params(&p)).unwrap();
        assert_eq!(r.salt.as_deref(), Some(&b"<1.2@host>"[..]));
        p.pop();
        assert_eq!(
            MailAuthRequest::from_params(&params(&p)).unwrap_err(),
            ProtocolError::Missing("Auth-Salt")
        );
    }

    #[test]
    fn malformed_values_are_refused() {
        // Each value is refused as a malformed header of that name.
        let cases: &[(&str, &[u8], &str)] = &[
            ("HTTP_AUTH_METHOD", b"PLAIN", "Auth-Method"),
            ("HTTP_AUTH_METHOD", b"gssapi", "Auth-Method"),
            ("HTTP_AUTH_PROTOCOL", b"http", "Auth-Protocol"),
            ("HTTP_AUTH_USER", b"bad%", "Auth-User"),
            ("HTTP_AUTH_PASS", b"%g0", "Auth-Pass"),
            ("HTTP_AUTH_LOGIN_ATTEMPT", b"0", "Auth-Login-Attempt"),
            ("HTTP_AUTH_LOGIN_ATTEMPT", b"x", "Auth-Login-Attempt"),
            ("HTTP_CLIENT_IP", b"[::1]", "Client-IP"),
        ];
        for (name, value, want) in cases {
            let p: Vec<_> = imap_login()
                .into_iter()
                .map(|(k, v)| if k == *name { (k, *value) } else { (k, v) })
                .collect();
            assert_eq!(
                MailAuthRequest::from_params(&params(&p)).unwrap_err(),
                ProtocolError::Malformed(want),
                "{name}={value:?}"
            );
        }
        let p: Vec<_> = imap_login()
            .into_iter()
            .filter(|(k, _)| *k != "HTTP_AUTH_METHOD")
            .collect();
        assert_eq!(
            MailAuthRequest::from_params(&params(&p)).unwrap_err(),
            ProtocolError::Missing("Auth-Method")
        );
    }

    #[test]
    fn duplicates_are_reported_and_first_wins() {
        let mut p = imap_login();
        p.push(("HTTP_AUTH_USER", b"mallory"));
        let r = MailAuthRequest::from_params(&params(&p)).unwrap();
        assert_eq!(r.user, b"us er");
        assert_eq!(r.duplicates, vec!["HTTP_AUTH_USER"]);
    }

    #[test]
    fn smtp_none_envelope_and_ssl() {
        let p = params(&[
            ("HTTP_AUTH_METHOD", b"none"),
            ("HTTP_AUTH_USER", b"stale"),
            ("HTTP_AUTH_PASS", b""),
            ("HTTP_AUTH_SALT", b"<1.2@h>"),
            ("HTTP_AUTH_PROTOCOL", b"smtp"),
            ("HTTP_AUTH_LOGIN_ATTEMPT", b"1"),
            ("HTTP_CLIENT_IP", b"2001:db8::5"),
            ("HTTP_CLIENT_HOST", b"[UNAVAILABLE]"),
            ("HTTP_AUTH_SMTP_HELO", b"client.example"),
            ("HTTP_AUTH_SMTP_FROM", b"MAIL FROM:<a@x.example> SIZE=100"),
            ("HTTP_AUTH_SMTP_TO", b"RCPT TO:<b@example.org>"),
            ("HTTP_AUTH_SSL", b"on"),
            ("HTTP_AUTH_SSL_PROTOCOL", b"TLSv1.3"),
            ("HTTP_AUTH_SSL_CERT", b"-----BEGIN%20CERT-----%0Aabc"),
            ("HTTP_PROXY_PROTOCOL_ADDR", b"198.51.100.1"),
            ("HTTP_PROXY_PROTOCOL_PORT", b"4242"),
        ]);
        let r = MailAuthRequest::from_params(&p).unwrap();
        assert_eq!(r.method, AuthMethod::None);
        assert!(r.salt.is_none());
        let env = r.smtp.unwrap();
        assert_eq!(env.recipient(), Some("b@example.org"));
        assert_eq!(env.sender(), Some("a@x.example"));
        let ssl = r.ssl.unwrap();
        assert_eq!(ssl.protocol.as_deref(), Some("TLSv1.3"));
        assert_eq!(ssl.cert.as_deref(), Some(&b"-----BEGIN CERT-----\nabc"[..]));
        assert_eq!(r.proxy.unwrap().port, Some(4242));
        assert_eq!(r.client_ip, Some("2001:db8::5".parse().unwrap()));
        assert_eq!(r.client_host, Some(ClientHost::Unavailable));
    }

    #[test]
    fn client_host_markers() {
        for (value, want) in [
            (&b"[UNAVAILABLE]"[..], Some(ClientHost::Unavailable)),
            (b"[TEMPUNAVAIL]", Some(ClientHost::TempUnavailable)),
            (
                b"mx.example.net",
                Some(ClientHost::Name("mx.example.net".into())),
            ),
            (b"", None),
        ] {
            let mut p = imap_login();
            p[8] = ("HTTP_AUTH_PROTOCOL", b"smtp");
            p.push(("HTTP_CLIENT_HOST", value));
            let r = MailAuthRequest::from_params(&params(&p)).unwrap();
            assert_eq!(r.client_host, want, "{value:?}");
        }
        let r = MailAuthRequest::from_params(&params(&imap_login())).unwrap();
        assert_eq!(r.client_host, None);
    }
}
