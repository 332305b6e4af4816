//! SASL mechanisms as nginx hands them to us: pure verifiers, no I/O.
//!
//! nginx runs the client side of each exchange itself and passes the result:
//! for PLAIN/LOGIN the user and password ([`plain`], validated through rsasl),
//! for CRAM-MD5 and APOP the client's digest and the challenge (`Auth-Salt`)
//! ([`cram_md5`], [`apop`]); for EXTERNAL the TLS client certificate's facts,
//! which [`external`] maps to a user by configured rules (EXTERNAL is offered
//! when rules exist, not through [`Mechanism`]). What a mechanism needs from a
//! passdb is given by [`Mechanism::need`] and checked against backends at
//! start-up.

pub mod apop;
pub mod cram_md5;
pub mod external;
pub mod plain;

use crate::auth_http::AuthMethod;

/// A mechanism we verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// PLAIN and LOGIN (nginx reports both as `plain`).
    Plain,
    /// CRAM-MD5 (RFC 2195).
    CramMd5,
    /// APOP (RFC 1939 §7).
    Apop,
}

/// What a mechanism needs from a passdb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Check a plaintext password (any backend can).
    VerifyPlain,
    /// Hand back stored credentials that can answer a challenge (plaintext or
    /// a scheme that serves it, e.g. `{CRAM-MD5}` for CRAM-MD5).
    LookupCredentials,
}

impl Mechanism {
    /// All mechanisms.
    pub const ALL: [Mechanism; 3] = [Mechanism::Plain, Mechanism::CramMd5, Mechanism::Apop];

    /// The mechanism behind an nginx `Auth-Method`, if it is one we verify.
    pub fn from_method(m: AuthMethod) -> Option<Self> {
        match m {
            AuthMethod::Plain => Some(Mechanism::Plain),
            AuthMethod::CramMd5 => Some(Mechanism::CramMd5),
            AuthMethod::Apop => Some(Mechanism::Apop),
            AuthMethod::External | AuthMethod::None => None,
        }
    }

    /// What the mechanism needs from a passdb.
    pub fn need(self) -> Need {
        match self {
            Mechanism::Plain => Need::VerifyPlain,
            Mechanism::CramMd5 | Mechanism::Apop => Need::LookupCredentials,
        }
    }

    /// Lower-case name as in nginx's `*_auth` directives.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "plain",
            Mechanism::CramMd5 => "cram-md5",
            Mechanism::Apop => "apop",
        }
    }
}

/// A mechanism name we do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mechanism `{0}` (plain, login, cram-md5, apop)")]
pub struct UnknownMechanism(pub String);

impl std::str::FromStr for Mechanism {
    type Err = UnknownMechanism;
    fn from_str(s: &str) -> Result<Self, UnknownMechanism> {
        match s.to_ascii_lowercase().as_str() {
            "plain" | "login" => Ok(Mechanism::Plain),
            "cram-md5" => Ok(Mechanism::CramMd5),
            "apop" => Ok(Mechanism::Apop),
            _ => Err(UnknownMechanism(s.to_owned())),
        }
    }
}

/// Whether `response_hex`, a lower- or upper-case hex digest, spells
/// `expected` (compared in constant time; a malformed one never does).
pub(crate) fn hex_digest_matches<const N: usize>(expected: &[u8; N], response_hex: &[u8]) -> bool {
    let mut got = [0u8; N];
    hex::decode_to_slice(response_hex, &mut got).is_ok() && crate::secret::ct_eq(expected, &got)
}
