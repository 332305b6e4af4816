//! Stored-password schemes, as Dovecot names and formats them
//! (<https://doc.dovecot.org/configuration_manual/authentication/password_schemes/>).
//!
//! [`StoredPassword::parse`] reads what a passdb holds: `{SCHEME}data` (with
//! Dovecot's `.HEX`/`.B64` suffixes), `{CRYPT}` or a bare crypt string (`$1$`,
//! `$5$`, `$6$`, `$2a$`/`$2b$`/`$2y$`, `$argon2i$`, `$argon2id$`), or a value in
//! the configured default scheme; [`hash()`] writes what `doveadm pw` would.
//! The tests check both directions against Dovecot 2.3.
//!
//! Verification of the expensive schemes (crypt, bcrypt, Argon2, PBKDF2) is
//! CPU-bound: callers run it on the blocking pool. Every digest comparison is
//! constant-time, and no error or `Debug` output contains a stored hash or a
//! password. An Argon2 hash whose memory cost is above
//! [`argon2_max_memory_kib`] (`argon2_max_memory`, default 256 MiB) is
//! refused when it is parsed, so it is never verified.
//!
//! # Layout
//! This file holds the [`Scheme`] names and [`SchemeError`]. The other files
//! are private submodules; their public items are re-exported here:
//! - `stored`: [`StoredPassword`] (parsing, format checks, verification) and
//!   the SHA-family digests;
//! - `argon2_limit`: the process-wide Argon2 memory limit and the PHC parse
//!   that enforces it;
//! - `cram`: Dovecot's `{CRAM-MD5}` HMAC-MD5 contexts and CRAM-MD5 responses;
//! - `md5_crypt`: MD5-crypt (`$1$`, `$apr1$`), which no crate in use provides;
//! - `hash`: [`hash()`], `doveadm pw`'s formats and work factors;
//! - `cost`: [`Cost`], the work factor a stored hash was made with, and
//!   [`hash_at`], hashing with a chosen one;
//! - `test_vectors` (tests only): `doveadm pw` output the tests share.

use std::fmt;

mod argon2_limit;
mod cost;
mod cram;
mod hash;
mod md5_crypt;
mod stored;

pub use argon2_limit::{
    argon2_max_memory_kib, set_argon2_max_memory_kib, DEFAULT_ARGON2_MAX_MEMORY_KIB,
};
pub use cost::{hash_at, Cost};
pub use hash::hash;
pub use stored::StoredPassword;

/// A Dovecot password scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `{PLAIN}`: plaintext.
    Plain,
    /// `{CLEAR}`: plaintext (alias kept distinct for display).
    Clear,
    /// `{CRAM-MD5}`: HMAC-MD5 inner/outer context, 64 hex digits.
    CramMd5,
    /// `{MD5-CRYPT}` (`$1$`), also Dovecot's `{MD5}`.
    Md5Crypt,
    /// `{SHA256-CRYPT}` (`$5$`).
    Sha256Crypt,
    /// `{SHA512-CRYPT}` (`$6$`).
    Sha512Crypt,
    /// `{BLF-CRYPT}`: bcrypt (`$2a$`, `$2b$`, `$2y$`).
    BlfCrypt,
    /// `{ARGON2I}`.
    Argon2i,
    /// `{ARGON2ID}`.
    Argon2id,
    /// `{SHA}` / `{SHA1}`: base64 SHA-1.
    Sha,
    /// `{SSHA}`: salted SHA-1.
    Ssha,
    /// `{SHA256}`.
    Sha256,
    /// `{SSHA256}`.
    Ssha256,
    /// `{SHA512}`.
    Sha512,
    /// `{SSHA512}`.
    Ssha512,
    /// `{PBKDF2}`: Dovecot's `$1$salt$rounds$hex` (HMAC-SHA1).
    Pbkdf2,
}

impl Scheme {
    /// Every scheme.
    pub const ALL: &'static [Scheme] = &[
        Scheme::Plain,
        Scheme::Clear,
        Scheme::CramMd5,
        Scheme::Md5Crypt,
        Scheme::Sha256Crypt,
        Scheme::Sha512Crypt,
        Scheme::BlfCrypt,
        Scheme::Argon2i,
        Scheme::Argon2id,
        Scheme::Sha,
        Scheme::Ssha,
        Scheme::Sha256,
        Scheme::Ssha256,
        Scheme::Sha512,
        Scheme::Ssha512,
        Scheme::Pbkdf2,
    ];

    /// True for schemes slow on purpose: verify them off the async threads.
    pub fn is_expensive(self) -> bool {
        matches!(
            self,
            Scheme::Md5Crypt
                | Scheme::Sha256Crypt
                | Scheme::Sha512Crypt
                | Scheme::BlfCrypt
                | Scheme::Argon2i
                | Scheme::Argon2id
                | Scheme::Pbkdf2
        )
    }

    fn name(self) -> &'static str {
        match self {
            Scheme::Plain => "PLAIN",
            Scheme::Clear => "CLEAR",
            Scheme::CramMd5 => "CRAM-MD5",
            Scheme::Md5Crypt => "MD5-CRYPT",
            Scheme::Sha256Crypt => "SHA256-CRYPT",
            Scheme::Sha512Crypt => "SHA512-CRYPT",
            Scheme::BlfCrypt => "BLF-CRYPT",
            Scheme::Argon2i => "ARGON2I",
            Scheme::Argon2id => "ARGON2ID",
            Scheme::Sha => "SHA",
            Scheme::Ssha => "SSHA",
            Scheme::Sha256 => "SHA256",
            Scheme::Ssha256 => "SSHA256",
            Scheme::Sha512 => "SHA512",
            Scheme::Ssha512 => "SSHA512",
            Scheme::Pbkdf2 => "PBKDF2",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scheme {
    type Err = SchemeError;
    fn from_str(s: &str) -> Result<Self, SchemeError> {
        let upper = s.trim().to_ascii_uppercase();
        if let Some(found) = Scheme::ALL.iter().find(|k| k.name() == upper) {
            return Ok(*found);
        }
        // Dovecot's aliases (`doveadm pw -l`); `{MD5}` is MD5-crypt there.
        match upper.as_str() {
            "SHA1" => Ok(Scheme::Sha),
            "MD5" => Ok(Scheme::Md5Crypt),
            "CLEARTEXT" => Ok(Scheme::Clear),
            "HMAC-MD5" => Ok(Scheme::CramMd5),
            _ => Err(unknown(s.trim())),
        }
    }
}

/// An [`SchemeError::UnknownScheme`] that repeats `name` only when it looks
/// like a scheme name: the text between `{` and `}` of a mistyped value may
/// be part of a password.
fn unknown(name: &str) -> SchemeError {
    let plausible = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    SchemeError::UnknownScheme(if plausible {
        name.to_owned()
    } else {
        "(not a scheme name)".to_owned()
    })
}

/// A stored password that cannot be used, or a hashing failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemeError {
    /// `{NAME}` is not a scheme we know.
    #[error("unknown password scheme `{0}`")]
    UnknownScheme(String),
    /// The data after `{SCHEME}` is not in that scheme's format.
    #[error("malformed {scheme} value: {reason}")]
    Malformed {
        /// The scheme the value was read as.
        scheme: Scheme,
        /// What is wrong (never the value itself).
        reason: &'static str,
    },
    /// An Argon2 hash that asks for more memory than `argon2_max_memory`.
    #[error("{scheme} memory cost {m_kib} KiB is above argon2_max_memory ({max_kib} KiB)")]
    MemoryCost {
        /// `{ARGON2I}` or `{ARGON2ID}`.
        scheme: Scheme,
        /// The memory cost the hash asks for, in KiB.
        m_kib: u32,
        /// `argon2_max_memory` when the hash was parsed, in KiB.
        max_kib: u32,
    },
    /// [`hash()`] could not hash with this scheme: an empty or non-UTF-8
    /// password for `{PLAIN}`/`{CLEAR}`, or the hashing crate refused.
    #[error("cannot hash with {0}")]
    Hash(Scheme),
}

fn malformed(scheme: Scheme, reason: &'static str) -> SchemeError {
    SchemeError::Malformed { scheme, reason }
}

#[cfg(test)]
mod test_vectors;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Scheme::ALL {
            assert_eq!(s.to_string().parse::<Scheme>().unwrap(), *s);
            assert_eq!(s.to_string().to_lowercase().parse::<Scheme>().unwrap(), *s);
        }
        let names: Vec<String> = Scheme::ALL.iter().map(Scheme::to_string).collect();
        assert_eq!(
            names.join(" "),
            "PLAIN CLEAR CRAM-MD5 MD5-CRYPT SHA256-CRYPT SHA512-CRYPT BLF-CRYPT ARGON2I \
             ARGON2ID SHA SSHA SHA256 SSHA256 SHA512 SSHA512 PBKDF2"
        );
        assert_eq!("SHA1".parse::<Scheme>().unwrap(), Scheme::Sha);
        assert_eq!("sha1".parse::<Scheme>().unwrap(), Scheme::Sha);
        assert!(matches!(
            "ROT13".parse::<Scheme>(),
            Err(SchemeError::UnknownScheme(n)) if n == "ROT13"
        ));
        assert!("".parse::<Scheme>().is_err());
    }

    #[test]
    fn expensive_schemes() {
        let expensive: Vec<String> = Scheme::ALL
            .iter()
            .filter(|s| s.is_expensive())
            .map(Scheme::to_string)
            .collect();
        // Names, not variants: `names_round_trip` shows each is one scheme's.
        assert_eq!(
            expensive.join(" "),
            "MD5-CRYPT SHA256-CRYPT SHA512-CRYPT BLF-CRYPT ARGON2I ARGON2ID PBKDF2"
        );
    }

    #[test]
    fn errors_never_repeat_passwords_or_hashes() {
        // Text between braces that cannot be a scheme name may be a password.
        let err = StoredPassword::parse("{my secret pw}x", Scheme::Plain).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        let err = "{my secret pw}".parse::<Scheme>().unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        let err = StoredPassword::parse("{NOSUCH}hunter2", Scheme::Plain).unwrap_err();
        assert_eq!(err.to_string(), "unknown password scheme `NOSUCH`");
        let err = hash(Scheme::Plain, b"").unwrap_err();
        assert_eq!(err.to_string(), "cannot hash with PLAIN");
    }
}
