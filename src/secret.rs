//! [`Secret`]: bytes that must never reach a log line.
//!
//! Passwords, CRAM-MD5/APOP digests and shared keys travel through the program
//! wrapped in `Secret`. It has no `Display`, its `Debug` is redacted, and its
//! memory is wiped on drop. There is deliberately no switch that shows the
//! contents: code that needs the bytes calls [`Secret::expose`] at the point of
//! use, which keeps every such place greppable.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// A secret byte string (password, digest, shared key).
/// Deliberately not `PartialEq`: `==` on bytes returns early where they
/// differ; compare with [`Secret::ct_eq`].
#[derive(Clone, Default)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// The bytes, for the one place that has to use them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// True when no bytes are held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares with `other` in time independent of where they differ.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        ct_eq(&self.0, other)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.as_bytes().to_vec())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Constant-time equality of two byte strings. Lengths are not secret (digests
/// have fixed lengths; a length mismatch is answered at once).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn compares() {
        let s = Secret::from("abc");
        assert!(s.ct_eq(b"abc"));
        assert!(!s.ct_eq(b"abd"));
        assert!(!s.ct_eq(b"ab"));
        assert!(!s.ct_eq(b""));
    }
}
