//! Dovecot master-user logins: how nginx logs a user in upstream when we
//! verified them without ever seeing their plaintext password.
//!
//! nginx needs `Auth-Pass` for IMAP and POP3 after CRAM-MD5, APOP and EXTERNAL
//! (reference §0 item 6). A `{CRAM-MD5}` stored password verifies CRAM-MD5
//! without a plaintext, and a client certificate has none at all; for those
//! we answer `Auth-User: <login><separator><master>` and `Auth-Pass: <master
//! secret>`, which Dovecot (`auth_master_user_separator`, a `master = yes`
//! passdb) accepts as "log in as `<login>`, authorised by the master".
//!
//! The master secret opens every mailbox: it lives in a [`Secret`] (redacted
//! `Debug`, wiped on drop), is never logged, and is refused at load time if it
//! could not travel in a header (CR, LF, NUL).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::secret::Secret;

/// Default separator, as in Dovecot's documentation examples.
pub const DEFAULT_SEPARATOR: &str = "*";

/// The master credentials we answer with.
#[derive(Clone)]
pub struct MasterUser {
    user: String,
    password: Secret,
    separator: String,
}

/// The upstream login built for one user.
#[derive(Debug, Clone)]
pub struct MasterLogin {
    /// `Auth-User`: `<login><separator><master>`.
    pub user: Vec<u8>,
    /// `Auth-Pass`: the master secret.
    pub password: Secret,
}

/// Why a master login cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MasterUserError {
    /// The user name is empty or has spaces or control bytes.
    #[error("master_user.user must be non-empty without spaces or control bytes")]
    BadUser,
    /// The separator is empty or has spaces or control bytes.
    #[error("master_user.separator must be non-empty without spaces or control bytes")]
    BadSeparator,
    /// The user name contains the separator.
    #[error("master_user.user must not contain the separator")]
    UserHasSeparator,
    /// The secret is empty.
    #[error("master_user password is empty")]
    EmptyPassword,
    /// The secret has CR, LF or NUL (never echoed).
    #[error("master_user password contains CR, LF or NUL")]
    UnsafePassword,
    /// `password_file` could not be read.
    #[error("master_user.password_file {}: {source}", path.display())]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
}

impl MasterUser {
    /// Checks and builds. `password` is the secret itself (from the TOML
    /// file or read from `password_file` by [`MasterUser::read_password_file`]).
    pub fn new(user: &str, password: Secret, separator: &str) -> Result<Self, MasterUserError> {
        let bad = |s: &[u8]| s.iter().any(|b| b.is_ascii_control() || *b == b' ');
        if user.is_empty() || bad(user.as_bytes()) {
            return Err(MasterUserError::BadUser);
        }
        if separator.is_empty() || bad(separator.as_bytes()) {
            return Err(MasterUserError::BadSeparator);
        }
        if user.contains(separator) {
            return Err(MasterUserError::UserHasSeparator);
        }
        if password.is_empty() {
            return Err(MasterUserError::EmptyPassword);
        }
        if password
            .expose()
            .iter()
            .any(|b| matches!(b, b'\r' | b'\n' | 0))
        {
            // Never echo it: the message only says what is wrong.
            return Err(MasterUserError::UnsafePassword);
        }
        Ok(MasterUser {
            user: user.to_owned(),
            password,
            separator: separator.to_owned(),
        })
    }

    /// Reads the secret from the first line of `path` (trailing CR/LF removed).
    pub fn read_password_file(path: &Path) -> Result<Secret, MasterUserError> {
        let mut bytes = std::fs::read(path).map_err(|source| MasterUserError::PasswordFile {
            path: path.to_owned(),
            source,
        })?;
        let end = bytes
            .iter()
            .position(|b| *b == b'\n')
            .unwrap_or(bytes.len());
        let line = bytes[..end].strip_suffix(b"\r").unwrap_or(&bytes[..end]);
        let secret = Secret::new(line.to_vec());
        zeroize::Zeroize::zeroize(&mut bytes);
        Ok(secret)
    }

    /// The master user's name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The separator.
    pub fn separator(&self) -> &str {
        &self.separator
    }

    /// The upstream login for `login`, or `None` when `login` cannot be used
    /// (empty, control bytes, or containing the separator, which would make
    /// Dovecot split it at the wrong place).
    pub fn login_for(&self, login: &[u8]) -> Option<MasterLogin> {
        if login.is_empty()
            || login.iter().any(|b| b.is_ascii_control())
            || contains(login, self.separator.as_bytes())
        {
            return None;
        }
        let mut user = Vec::with_capacity(login.len() + self.separator.len() + self.user.len());
        user.extend_from_slice(login);
        user.extend_from_slice(self.separator.as_bytes());
        user.extend_from_slice(self.user.as_bytes());
        Some(MasterLogin {
            user,
            password: self.password.clone(),
        })
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl fmt::Debug for MasterUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterUser")
            .field("user", &self.user)
            .field("separator", &self.separator)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_is_user_separator_master() {
        let m = MasterUser::new("master", Secret::from("s3cret"), "*").unwrap();
        let l = m.login_for(b"alice").unwrap();
        assert_eq!(l.user, b"alice*master");
        assert_eq!(l.password.expose(), b"s3cret");
        let m = MasterUser::new("admin", Secret::from("x"), "%%").unwrap();
        assert_eq!(
            m.login_for(b"bob@ex.org").unwrap().user,
            b"bob@ex.org%%admin"
        );
    }

    #[test]
    fn unusable_logins_get_none() {
        let m = MasterUser::new("master", Secret::from("s3cret"), "*").unwrap();
        for bad in [&b""[..], b"al*ice", b"a\r\nb", b"a\0"] {
            assert!(m.login_for(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn bad_settings_are_refused_without_echoing_the_secret() {
        let cases = [
            ("", "pw", "*"),
            ("ma ster", "pw", "*"),
            ("master", "pw", ""),
            ("ma*ster", "pw", "*"),
            ("master", "", "*"),
            ("master", "top\r\nsecret", "*"),
            ("master", "top\0secret", "*"),
        ];
        for (u, p, s) in cases {
            let e = MasterUser::new(u, Secret::from(p), s)
                .unwrap_err()
                .to_string();
            assert!(!e.contains("secret") || e.contains("password"), "{e}");
            assert!(!e.contains("top"), "{e}");
        }
    }

    #[test]
    fn debug_is_redacted_and_file_reads_first_line() {
        let m = MasterUser::new("master", Secret::from("s3cret"), "*").unwrap();
        assert!(!format!("{m:?}").contains("s3cret"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\r\nignored\n").unwrap();
        assert_eq!(
            MasterUser::read_password_file(&p).unwrap().expose(),
            b"s3cret"
        );
        assert!(MasterUser::read_password_file(&dir.path().join("nope")).is_err());
    }
}
