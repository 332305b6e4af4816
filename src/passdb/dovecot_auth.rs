//! `dovecot:` passdb: asks a Dovecot auth service, over its `auth-client`
//! unix socket, to check a plaintext password with the PLAIN mechanism.
//!
//! Protocol: <https://doc.dovecot.org/developer_manual/design/auth_protocol/>.
//! Lines are tab-separated, values tab-escaped (`\x01` + `1`/`t`/`r`/`n`).
//!
//! ```text
//! C: VERSION 1 2           S: VERSION 1 2
//! C: CPID <id>             S: MECH … / SPID … / CUID … / COOKIE … / DONE
//! C: AUTH 1 PLAIN service=imap secured no-penalty resp=<base64(\0user\0pass)>
//! S: OK 1 user=alice [host=… port=… destuser=…]   |   FAIL 1 [temp] [user_disabled] …
//! ```
//!
//! URI: `dovecot:[SOCKET][?service=S&timeout=SECS]`; `SOCKET` defaults to
//! [`DEFAULT_SOCKET`], `service` to `imap` (Dovecot's `%s`, which its passdbs
//! and PAM see), `timeout` to 5 s for the whole exchange. Dovecot delays every
//! failure by `auth_failure_delay` (2 s by default), so keep the timeout above
//! it. The socket must be writable by this daemon: add a `unix_listener` to
//! Dovecot's `service auth` with the daemon's `user`/`mode`.
//!
//! Connections: one per check. Dovecot identifies an auth client by its CPID
//! and refuses a second live connection with the same one, so each connection
//! gets its own CPID from `2^31` up — far above any Linux PID (`pid_max` is at
//! most `2^22`), so it never clashes with a login process of Dovecot's own.
//! A pooled, multiplexed connection would save the handshake but needs a
//! reader task and reconnect logic; Dovecot's replies are small and local.
//!
//! Request flags: `secured` because nginx enforces the TLS policy before it
//! asks us (without it Dovecot refuses PLAIN under `disable_plaintext_auth`);
//! `no-penalty` because our throttle already counts failures, and Dovecot
//! would only see the daemon, not the client, as the remote party.
//!
//! Answers: `OK` → accepted; the `user=` Dovecot returns is the principal's
//! name, and the extra fields `host=`, `port=` and `destuser=` become its
//! upstream host, port and backend login (as Dovecot's own proxy uses them).
//! `FAIL` → [`Rejection::PasswordMismatch`] (Dovecot does not tell clients
//! whether the user exists), [`Rejection::Disabled`] with `user_disabled` or
//! `nologin` (without `proxy`); `FAIL … temp` and any I/O or protocol error →
//! [`PassdbError`] (temporary failure).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::socket::{field, split_options, SocketUriError};
use super::{seconds, Lookup, Passdb, PassdbError, Principal, Rejection, Verdict};
use crate::secret::Secret;

/// Where Debian's Dovecot puts its auth client socket.
pub const DEFAULT_SOCKET: &str = "/run/dovecot/auth-client";
/// Default limit for one check.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest line we accept from Dovecot (its own limit is 8 KiB).
const MAX_LINE: usize = 16 * 1024;
/// Longest password sent: Dovecot drops a client whose line exceeds its
/// limit, which would read as an outage; such a password cannot be right.
const MAX_PASSWORD: usize = 4096;

/// A Dovecot auth-client socket.
#[derive(Debug, Clone)]
pub struct DovecotAuth {
    socket: PathBuf,
    service: String,
    timeout: Duration,
}

/// What one `AUTH` came back with.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Ok(Vec<(String, String)>),
    Fail(Vec<(String, String)>),
}

impl DovecotAuth {
    /// Parses the part of a `dovecot:` URI after the colon. Does not
    /// connect: each check connects anew.
    pub fn open(spec: &str) -> Result<DovecotAuth, SocketUriError> {
        let (socket, options) = split_options(spec, DEFAULT_SOCKET)?;
        let mut passdb = DovecotAuth {
            socket,
            service: "imap".to_owned(),
            timeout: DEFAULT_TIMEOUT,
        };
        for (key, value) in options {
            match key {
                "service" => passdb.service = field(key, value)?.to_owned(),
                "timeout" => passdb.timeout = seconds(key, value)?,
                _ => {
                    return Err(SocketUriError::UnknownOption {
                        key: key.to_owned(),
                        known: "service, timeout",
                    })
                }
            }
        }
        if passdb.service.is_empty() || passdb.service.contains(['\t', ' ']) {
            return Err(SocketUriError::Service("be one word"));
        }
        Ok(passdb)
    }

    /// The socket this passdb asks.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn io_err(&self, e: impl std::fmt::Display) -> PassdbError {
        PassdbError::Unavailable(format!("dovecot auth {}: {e}", self.socket.display()))
    }

    /// One handshake and one `AUTH` on a fresh connection.
    async fn ask(&self, user: &str, password: &[u8]) -> Result<Reply, PassdbError> {
        let exchange = async {
            let stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| self.io_err(e))?;
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read);
            let hello = format!("VERSION\t1\t2\nCPID\t{}\n", next_cpid());
            write
                .write_all(hello.as_bytes())
                .await
                .map_err(|e| self.io_err(e))?;
            let mut plain_offered = false;
            loop {
                let line = read_line(&mut lines).await.map_err(|e| self.io_err(e))?;
                let mut parts = line.split('\t');
                match parts.next() {
                    Some("VERSION") if parts.next() != Some("1") => {
                        return Err(self.io_err(format!("unsupported {line:?}")));
                    }
                    Some("MECH") => plain_offered |= parts.next() == Some("PLAIN"),
                    Some("DONE") => break,
                    // SPID, CUID, COOKIE: for the master's REQUEST, which we never send.
                    _ => {}
                }
            }
            if !plain_offered {
                return Err(self.io_err("PLAIN is not in auth_mechanisms"));
            }
            let mut resp = Vec::with_capacity(user.len() + password.len() + 2);
            resp.push(0);
            resp.extend_from_slice(user.as_bytes());
            resp.push(0);
            resp.extend_from_slice(password);
            let mut line = format!(
                "AUTH\t1\tPLAIN\tservice={}\tsecured\tno-penalty\tresp=",
                self.service
            );
            base64::engine::general_purpose::STANDARD.encode_string(&resp, &mut line);
            line.push('\n');
            zeroize::Zeroize::zeroize(&mut resp);
            let written = write.write_all(line.as_bytes()).await;
            zeroize::Zeroize::zeroize(&mut line);
            written.map_err(|e| self.io_err(e))?;
            loop {
                let line = read_line(&mut lines).await.map_err(|e| self.io_err(e))?;
                let mut parts = line.split('\t');
                let verb = parts.next().unwrap_or("");
                if parts.next() != Some("1") {
                    continue; // not about our request
                }
                let fields = || parts.clone().map(unescape_field).collect();
                return match verb {
                    "OK" => Ok(Reply::Ok(fields())),
                    "FAIL" => Ok(Reply::Fail(fields())),
                    _ => Err(self.io_err(format!("unexpected {verb} for a PLAIN request"))),
                };
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| PassdbError::Timeout)?
    }
}

impl Passdb for DovecotAuth {
    super::common::fixed_identity!("dovecot", PLAIN_ONLY);
    async fn verify_plain(&self, user: &str, passwords: &[Secret]) -> Result<Verdict, PassdbError> {
        // PLAIN separates its fields with NUL.
        if user.is_empty() || user.contains('\0') {
            return Ok(Verdict::Rejected(Rejection::UnknownUser));
        }
        let mut rejection = Rejection::PasswordMismatch;
        for password in passwords {
            let p = password.expose();
            if p.len() > MAX_PASSWORD || user.len() > MAX_PASSWORD || p.contains(&0) {
                continue;
            }
            match self.ask(user, p).await? {
                Reply::Ok(fields) => {
                    if has(&fields, "nologin") && !has(&fields, "proxy") {
                        return Ok(Verdict::Rejected(Rejection::Disabled));
                    }
                    return principal(user, fields).await.map(Verdict::Accepted);
                }
                Reply::Fail(fields) => {
                    if has(&fields, "temp") {
                        let reason = value(&fields, "reason").unwrap_or("temporary failure");
                        return Err(self.io_err(format!("FAIL temp: {reason}")));
                    }
                    if has(&fields, "user_disabled")
                        || (has(&fields, "nologin") && !has(&fields, "proxy"))
                    {
                        rejection = Rejection::Disabled;
                    }
                }
            }
        }
        Ok(Verdict::Rejected(rejection))
    }

    async fn lookup_credentials(&self, _user: &str) -> Result<Lookup, PassdbError> {
        // Start-up refuses challenge mechanisms without a capable passdb.
        Err(PassdbError::Unavailable(
            "the Dovecot auth client protocol cannot hand out stored credentials".into(),
        ))
    }
}

/// A distinct CPID per connection, never a real PID (see the module docs).
fn next_cpid() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    0x8000_0000 | (NEXT.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff)
}

async fn read_line(
    lines: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let n = (&mut *lines)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if buf.pop() != Some(b'\n') {
        return Err(std::io::Error::other("line too long or cut off"));
    }
    String::from_utf8(buf).map_err(|_| std::io::Error::other("line is not UTF-8"))
}

/// `key=value` (or a bare flag) with Dovecot's tab escaping undone.
fn unescape_field(raw: &str) -> (String, String) {
    let (k, v) = raw.split_once('=').unwrap_or((raw, ""));
    (unescape(k), unescape(v))
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\x01' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('1') => out.push('\x01'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

fn has(fields: &[(String, String)], key: &str) -> bool {
    fields.iter().any(|(k, _)| k == key)
}

fn value<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The principal from an `OK`'s fields. A `host=` that does not resolve is a
/// temporary failure (as with the SQL passdbs), never a login without it.
async fn principal(user: &str, fields: Vec<(String, String)>) -> Result<Principal, PassdbError> {
    let upstream_host = match value(&fields, "host") {
        None => None,
        Some(h) => Some(resolve(h).await.ok_or_else(|| {
            PassdbError::Unavailable(format!("host= of {user} from Dovecot does not resolve"))
        })?),
    };
    Ok(Principal {
        user: value(&fields, "user").unwrap_or(user).to_owned(),
        upstream_host,
        upstream_port: value(&fields, "port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0),
        backend_user: value(&fields, "destuser").map(str::to_owned),
    })
}

use crate::passdb::resolve_host as resolve;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_parsed() {
        let p = DovecotAuth::open("").unwrap();
        assert_eq!(p.socket(), Path::new(DEFAULT_SOCKET));
        assert_eq!(p.service, "imap");
        assert_eq!(p.timeout, DEFAULT_TIMEOUT);
        let p = DovecotAuth::open("/x/auth-client?service=pop3&timeout=2").unwrap();
        assert_eq!(p.socket(), Path::new("/x/auth-client"));
        assert_eq!(p.service, "pop3");
        assert_eq!(p.timeout, Duration::from_secs(2));
        for bad in ["x", "/s?realm=a", "/s?service=a b", "/s?timeout=-1"] {
            assert!(DovecotAuth::open(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_are_unescaped() {
        assert_eq!(
            unescape_field("reason=a\x01tb\x01nc\x011d\x01r"),
            ("reason".into(), "a\tb\nc\x01d\r".into())
        );
        assert_eq!(unescape_field("temp"), ("temp".into(), String::new()));
    }

    #[test]
    fn cpids_are_above_any_pid() {
        let (a, b) = (next_cpid(), next_cpid());
        assert_ne!(a, b);
        assert!(a >= 1 << 31 && b >= 1 << 31);
    }

    #[tokio::test]
    async fn extra_fields_become_the_principal() {
        let fields = vec![
            ("user".into(), "alice@example.org".into()),
            ("host".into(), "192.0.2.7".into()),
            ("port".into(), "1143".into()),
            ("destuser".into(), "a1".into()),
            ("proxy".into(), String::new()),
        ];
        let p = principal("alice", fields).await.unwrap();
        assert_eq!(p.user, "alice@example.org");
        assert_eq!(p.upstream_host, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(p.upstream_port, Some(1143));
        assert_eq!(p.backend_user.as_deref(), Some("a1"));
    }
}
