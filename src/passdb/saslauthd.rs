//! `saslauthd:` passdb: asks Cyrus saslauthd over its unix socket whether a
//! plaintext password is right.
//!
//! Wire protocol (cyrus-sasl `saslauthd/ipc_unix.c`): the client sends four
//! counted strings — login, password, service, realm — each a big-endian
//! `u16` length followed by that many bytes; saslauthd answers one counted
//! string that starts with `OK` or `NO` and closes the connection. So there is
//! exactly one connection per check; nothing is pooled.
//!
//! URI: `saslauthd:[SOCKET][?service=S&realm=R&timeout=SECS]`
//!
//! - `SOCKET`: the `mux` socket (default [`DEFAULT_SOCKET`], Debian's).
//! - `service` (default `imap`): the service name saslauthd passes to its
//!   mechanism (PAM uses it to pick `/etc/pam.d/SERVICE`). The trait gives no
//!   mail protocol, so it is one fixed name per passdb.
//! - `realm` (default empty): a fixed realm, or `%d` to split `user@domain`
//!   into login `user` and realm `domain` (a login without `@` gets an
//!   empty realm).
//! - `timeout` (default 5 s): for connect, request and answer together.
//!
//! Limits of the backend, by design of saslauthd: it only says yes or no, so
//! a wrong password and an unknown user are both
//! [`Rejection::PasswordMismatch`]; it has no stored credentials, so only
//! plaintext mechanisms can use it ([`Capabilities::lookup_credentials`] is
//! false and start-up refuses CRAM-MD5/APOP with only this passdb); and it
//! gives no routing facts. A socket that is missing, refuses, times out or
//! answers garbage is a [`PassdbError`] (temporary failure), never a rejection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::socket::{field, split_options, SocketUriError, MAX_FIELD};
use super::{seconds, Passdb, PassdbError, Principal, Rejection, Verdict};
use crate::secret::Secret;

/// Where Debian's saslauthd listens.
pub const DEFAULT_SOCKET: &str = "/run/saslauthd/mux";
/// Default limit for one check.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest answer we read; saslauthd's are a few dozen bytes.
const MAX_ANSWER: usize = 1024;

/// Which realm to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Realm {
    /// The same realm for everyone (empty: none).
    Fixed(String),
    /// `%d`: the domain of `user@domain`; the login sent is the local part.
    FromUser,
}

/// A saslauthd socket and the fixed request fields.
#[derive(Debug, Clone)]
pub struct Saslauthd {
    socket: PathBuf,
    service: String,
    realm: Realm,
    timeout: Duration,
}

impl Saslauthd {
    /// Parses the part of a `saslauthd:` URI after the colon. Does not
    /// connect: saslauthd may start after us, and each check connects anew.
    pub fn open(spec: &str) -> Result<Saslauthd, SocketUriError> {
        let (path, options) = split_options(spec, DEFAULT_SOCKET)?;
        let mut passdb = Saslauthd {
            socket: path,
            service: "imap".to_owned(),
            realm: Realm::Fixed(String::new()),
            timeout: DEFAULT_TIMEOUT,
        };
        for (key, value) in options {
            match key {
                "service" => passdb.service = field(key, value)?.to_owned(),
                "realm" if value == "%d" => passdb.realm = Realm::FromUser,
                "realm" => passdb.realm = Realm::Fixed(field(key, value)?.to_owned()),
                "timeout" => passdb.timeout = seconds(key, value)?,
                _ => {
                    return Err(SocketUriError::UnknownOption {
                        key: key.to_owned(),
                        known: "service, realm, timeout",
                    })
                }
            }
        }
        if passdb.service.is_empty() {
            return Err(SocketUriError::Service("not be empty"));
        }
        Ok(passdb)
    }

    /// The socket this passdb asks.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One request on a fresh connection: `Ok(true)` for `OK`.
    async fn ask(&self, login: &str, password: &[u8], realm: &str) -> Result<bool, PassdbError> {
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket).await?;
            let mut request = Vec::with_capacity(8 + login.len() + password.len() + 64);
            for part in [
                login.as_bytes(),
                password,
                self.service.as_bytes(),
                realm.as_bytes(),
            ] {
                // MAX_FIELD is checked by the caller, so the length fits.
                request.extend_from_slice(&(part.len() as u16).to_be_bytes());
                request.extend_from_slice(part);
            }
            let written = stream.write_all(&request).await;
            zeroize::Zeroize::zeroize(&mut request);
            written?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await?;
            let len = usize::from(u16::from_be_bytes(len));
            if len > MAX_ANSWER {
                return Err(std::io::Error::other(format!("answer of {len} bytes")));
            }
            let mut answer = vec![0u8; len];
            stream.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| PassdbError::Timeout)?
            .map_err(|e| {
                PassdbError::Unavailable(format!("saslauthd {}: {e}", self.socket.display()))
            })?;
        if answer.starts_with(b"OK") {
            Ok(true)
        } else if answer.starts_with(b"NO") {
            Ok(false)
        } else {
            Err(PassdbError::Unavailable(format!(
                "saslauthd {}: unexpected answer {:?}",
                self.socket.display(),
                String::from_utf8_lossy(&answer[..answer.len().min(40)])
            )))
        }
    }
}

impl Passdb for Saslauthd {
    super::common::fixed_identity!("saslauthd", PLAIN_ONLY);
    async fn verify_plain(&self, user: &str, passwords: &[Secret]) -> Result<Verdict, PassdbError> {
        let (login, realm) = match &self.realm {
            Realm::Fixed(r) => (user, r.as_str()),
            Realm::FromUser => user.rsplit_once('@').unwrap_or((user, "")),
        };
        // saslauthd reads C strings: a NUL would cut the field short, and
        // it drops a request with a field over MAX_FIELD: such a login
        // cannot succeed, so it is not sent.
        if login.is_empty()
            || login.len() > MAX_FIELD
            || realm.len() > MAX_FIELD
            || login.contains('\0')
            || realm.contains('\0')
        {
            return Ok(Verdict::Rejected(Rejection::UnknownUser));
        }
        for password in passwords {
            let p = password.expose();
            if p.is_empty() || p.len() > MAX_FIELD || p.contains(&0) {
                continue;
            }
            if self.ask(login, p, realm).await? {
                return Ok(Verdict::Accepted(Principal {
                    user: user.to_owned(),
                    ..Principal::default()
                }));
            }
        }
        Ok(Verdict::Rejected(Rejection::PasswordMismatch))
    }

    async fn lookup_credentials(&self, _user: &str) -> Result<super::Lookup, PassdbError> {
        // Start-up refuses challenge mechanisms without a capable passdb, so
        // this is only reached by a bug.
        Err(PassdbError::Unavailable(
            "saslauthd cannot hand out stored credentials".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_parsed() {
        let p = Saslauthd::open("").unwrap();
        assert_eq!(p.socket(), Path::new(DEFAULT_SOCKET));
        assert_eq!(p.service, "imap");
        assert_eq!(p.realm, Realm::Fixed(String::new()));
        assert_eq!(p.timeout, DEFAULT_TIMEOUT);
        let p = Saslauthd::open("/tmp/x/mux?service=smtp&realm=%d&timeout=0.5").unwrap();
        assert_eq!(p.socket(), Path::new("/tmp/x/mux"));
        assert_eq!(p.service, "smtp");
        assert_eq!(p.realm, Realm::FromUser);
        assert_eq!(p.timeout, Duration::from_millis(500));
        let p = Saslauthd::open("/m?realm=example.org").unwrap();
        assert_eq!(p.realm, Realm::Fixed("example.org".into()));
        for bad in [
            "relative/mux",
            "/m?nope=1",
            "/m?timeout=0",
            "/m?timeout=x",
            "/m?service=",
        ] {
            assert!(Saslauthd::open(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_temporary_failure() {
        let dir = tempfile::tempdir().unwrap();
        let p = Saslauthd::open(dir.path().join("mux").to_str().unwrap()).unwrap();
        let r = p.verify_plain("u", &[Secret::from("pw")]).await;
        assert!(matches!(r, Err(PassdbError::Unavailable(_))), "{r:?}");
    }
}
