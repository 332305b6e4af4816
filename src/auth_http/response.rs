//! [`MailAuthResponse`] → the CGI header block nginx's mail module parses,
//! and [`FailureKind`] → the `Auth-Status` text and SMTP reply code a client
//! sees: no other code writes those texts or codes.
//!
//! Sharp edges handled here (reference §3): success is the exact bytes `OK`;
//! `Auth-Server` is a bare IP literal (IPv6 without brackets); server and port
//! appear only on success, because nginx treats a reply without `Auth-Status`
//! but with server/port as a success; the whole header block nginx relays must
//! fit 1024 bytes; no value may contain CR, LF or NUL.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::secret::Secret;

/// How much of nginx's 1024-byte buffer our headers may take; nginx http adds
/// its status line, `Server`, `Date` and `Connection` (about 100 bytes).
pub const MAX_HEADER_BYTES: usize = 900;

/// Text shown to the client for any credential failure. One message for
/// unknown user and wrong password alike, so user names cannot be probed.
pub const INVALID_LOGIN: &str = "Invalid login or password";
/// Text for backend trouble.
pub const TEMPORARY: &str = "Temporary server problem, try again later";

/// The answer to one mail auth request.
#[derive(Debug, Clone)]
pub enum MailAuthResponse {
    /// Log the client in at `server:port`.
    Ok {
        /// Upstream mail server address (literal IP).
        server: IpAddr,
        /// Upstream port, 1..=65535.
        port: u16,
        /// Login to use towards the upstream, when it differs from the client's.
        user: Option<Vec<u8>>,
        /// Password nginx uses towards the upstream (IMAP/POP3 need one after
        /// CRAM-MD5/APOP/EXTERNAL; SMTP only with `proxy_smtp_auth on`).
        pass: Option<Secret>,
    },
    /// Refuse the attempt.
    Fail(Failure),
}

/// Why a mail login is refused, as the client is told. Each kind has one
/// `Auth-Status` text and one SMTP reply code (`Auth-Error-Code`), the
/// latter modelled on Postfix's answer to the same case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Wrong or unusable credentials, unknown user, throttle block:
    /// [`INVALID_LOGIN`], `535 5.7.8`.
    InvalidLogin,
    /// Backend trouble or overload: [`TEMPORARY`], `451 4.3.0`.
    Temporary,
    /// The mechanism is off, or cannot serve this user (no plaintext for the
    /// upstream login, a hash that cannot answer a challenge): `504 5.5.4`.
    MechanismNotSupported,
    /// `smtp_auth none` with a recipient outside the local domains:
    /// `554 5.7.1`.
    RelayDenied,
    /// `reject_unknown_client`, `Client-Host: [UNAVAILABLE]`: `550 5.7.25`.
    UnknownClient,
    /// `reject_unknown_client`, `Client-Host: [TEMPUNAVAIL]` (the client's
    /// DNS failed): `450 4.7.25`, with a marker in the text that tells the
    /// two cases apart in logs and clients.
    ClientTempfail,
}

impl FailureKind {
    /// The `Auth-Status` text (never `OK`).
    pub fn status(self) -> &'static str {
        match self {
            FailureKind::InvalidLogin => INVALID_LOGIN,
            FailureKind::Temporary => TEMPORARY,
            FailureKind::MechanismNotSupported => "Authentication mechanism not supported",
            FailureKind::RelayDenied => "Relay access denied",
            FailureKind::UnknownClient => "Client host rejected: cannot find your hostname",
            FailureKind::ClientTempfail => {
                "Client host rejected: cannot find your hostname [TEMPUNAVAIL]"
            }
        }
    }

    /// The SMTP reply code nginx sends the client (`Auth-Error-Code`).
    pub fn smtp_code(self) -> &'static str {
        match self {
            FailureKind::InvalidLogin => "535 5.7.8",
            FailureKind::Temporary => "451 4.3.0",
            FailureKind::MechanismNotSupported => "504 5.5.4",
            FailureKind::RelayDenied => "554 5.7.1",
            FailureKind::UnknownClient => "550 5.7.25",
            FailureKind::ClientTempfail => "450 4.7.25",
        }
    }
}

/// A refusal as nginx shows it to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// What the client is told.
    pub kind: FailureKind,
    /// `Auth-Wait` seconds; `None` makes nginx close the client connection.
    pub wait: Option<u32>,
    /// Send the SMTP reply code (`Auth-Error-Code`): SMTP sessions only.
    pub smtp: bool,
}

impl Failure {
    /// The `Auth-Status` text.
    pub fn message(&self) -> &'static str {
        self.kind.status()
    }

    /// The `Auth-Error-Code` sent, if any.
    pub fn smtp_code(&self) -> Option<&'static str> {
        self.smtp.then(|| self.kind.smtp_code())
    }
}

/// A response that cannot be rendered safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A value contains CR, LF or NUL and would break the header block.
    #[error("{0} contains CR, LF or NUL")]
    UnsafeValue(&'static str),
    /// The header block would not fit nginx's 1024-byte buffer.
    #[error("reply of {0} bytes exceeds the auth_http limit")]
    TooLong(usize),
}

impl MailAuthResponse {
    /// Renders the CGI header block (`Status:` line, headers, blank line).
    /// A success that cannot be rendered is an error; the caller answers with a
    /// temporary failure instead, never with a partial success.
    pub fn render(&self) -> Result<Vec<u8>, RenderError> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"Status: 200 OK\r\n");
        match self {
            MailAuthResponse::Ok {
                server,
                port,
                user,
                pass,
            } => {
                let mut head = String::with_capacity(96);
                // IpAddr's Display writes IPv6 without brackets, as nginx wants.
                let _ = write!(
                    head,
                    "Auth-Status: OK\r\nAuth-Server: {server}\r\nAuth-Port: {port}\r\n"
                );
                out.extend_from_slice(head.as_bytes());
                if let Some(user) = user {
                    header(&mut out, "Auth-User", user)?;
                }
                if let Some(pass) = pass {
                    header(&mut out, "Auth-Pass", pass.expose())?;
                }
            }
            MailAuthResponse::Fail(f) => {
                header(&mut out, "Auth-Status", f.message().as_bytes())?;
                if let Some(wait) = f.wait.filter(|w| *w > 0) {
                    header(&mut out, "Auth-Wait", wait.to_string().as_bytes())?;
                }
                if let Some(code) = f.smtp_code() {
                    header(&mut out, "Auth-Error-Code", code.as_bytes())?;
                }
            }
        }
        out.extend_from_slice(b"\r\n");
        if out.len() > MAX_HEADER_BYTES {
            return Err(RenderError::TooLong(out.len()));
        }
        Ok(out)
    }
}

fn header(out: &mut Vec<u8>, name: &'static str, value: &[u8]) -> Result<(), RenderError> {
    if value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(RenderError::UnsafeValue(name));
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &MailAuthResponse) -> String {
        String::from_utf8(r.render().unwrap()).unwrap()
    }

    #[test]
    fn success_ipv4_with_pass() {
        let r = MailAuthResponse::Ok {
            server: "192.0.2.10".parse().unwrap(),
            port: 143,
            user: None,
            pass: Some(Secret::from("p w")),
        };
        assert_eq!(
            text(&r),
            "Status: 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 192.0.2.10\r\nAuth-Port: 143\r\nAuth-Pass: p w\r\n\r\n"
        );
    }

    #[test]
    fn success_ipv6_is_bare() {
        let r = MailAuthResponse::Ok {
            server: "2001:db8::1".parse().unwrap(),
            port: 993,
            user: Some(b"alice@example.org".to_vec()),
            pass: None,
        };
        let t = text(&r);
        assert!(t.contains("\r\nAuth-Server: 2001:db8::1\r\n"), "{t}");
        assert!(t.contains("\r\nAuth-User: alice@example.org\r\n"), "{t}");
        assert!(!t.contains('['));
    }

    #[test]
    fn failure_has_no_server_or_port() {
        let r = MailAuthResponse::Fail(Failure {
            kind: FailureKind::InvalidLogin,
            wait: Some(3),
            smtp: true,
        });
        assert_eq!(
            text(&r),
            "Status: 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 3\r\nAuth-Error-Code: 535 5.7.8\r\n\r\n"
        );
        let closing = MailAuthResponse::Fail(Failure {
            kind: FailureKind::InvalidLogin,
            wait: Some(0),
            smtp: false,
        });
        let t = text(&closing);
        assert!(!t.contains("Auth-Wait") && !t.contains("Auth-Server") && !t.contains("Auth-Port"));
        assert!(!t.contains("Auth-Error-Code"));
    }

    #[test]
    fn every_failure_kind_renders_its_text_and_code() {
        let all = [
            FailureKind::InvalidLogin,
            FailureKind::Temporary,
            FailureKind::MechanismNotSupported,
            FailureKind::RelayDenied,
            FailureKind::UnknownClient,
            FailureKind::ClientTempfail,
        ];
        for kind in all {
            let (status, code) = (kind.status(), kind.smtp_code());
            assert!(status != "OK" && !status.is_empty() && status.len() <= 200);
            assert!(
                code.len() > 4 && code.as_bytes()[0].is_ascii_digit(),
                "{code}"
            );
            let t = text(&MailAuthResponse::Fail(Failure {
                kind,
                wait: None,
                smtp: true,
            }));
            assert_eq!(
                t,
                format!(
                    "Status: 200 OK\r\nAuth-Status: {status}\r\nAuth-Error-Code: {code}\r\n\r\n"
                )
            );
        }
    }

    #[test]
    fn unsafe_or_oversized_values_are_refused() {
        let r = MailAuthResponse::Ok {
            server: "127.0.0.1".parse().unwrap(),
            port: 110,
            user: None,
            pass: Some(Secret::from("a\r\nAuth-Status: OK")),
        };
        assert_eq!(r.render(), Err(RenderError::UnsafeValue("Auth-Pass")));
        // A master secret or master login with NUL/LF never goes out either.
        for (user, pass) in [(&b"u*master"[..], &b"m\0s"[..]), (b"u\n*master", b"ms")] {
            let r = MailAuthResponse::Ok {
                server: "127.0.0.1".parse().unwrap(),
                port: 143,
                user: Some(user.to_vec()),
                pass: Some(Secret::new(pass.to_vec())),
            };
            assert!(matches!(r.render(), Err(RenderError::UnsafeValue(_))));
        }
        let r = MailAuthResponse::Ok {
            server: "127.0.0.1".parse().unwrap(),
            port: 110,
            user: Some(vec![b'u'; 1000]),
            pass: None,
        };
        assert!(matches!(r.render(), Err(RenderError::TooLong(_))));
    }
}
