//! MD5-crypt, `$1$salt$hash`, as in FreeBSD's crypt-md5.c, and Apache's
//! `$apr1$` (the same algorithm with another magic string, as
//! `htpasswd -m` writes). No crate in use implements it: `sha-crypt` does
//! `$5$`/`$6$` only.

use md5::{Digest as _, Md5};

use super::{malformed, Scheme, SchemeError};
use crate::secret::ct_eq;

/// The crypt(3) alphabet: MD5-crypt's output encoding and its salts.
pub(super) const ITOA64: &[u8] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `(magic, salt, hash)` of `$1$salt$hash` or `$apr1$salt$hash`.
pub(super) fn parts(s: &str) -> Result<(&'static str, &str, &str), SchemeError> {
    let (magic, rest) = if let Some(r) = s.strip_prefix("$1$") {
        ("$1$", r)
    } else if let Some(r) = s.strip_prefix("$apr1$") {
        ("$apr1$", r)
    } else {
        return Err(malformed(Scheme::Md5Crypt, "expected $1$salt$hash"));
    };
    let (salt, hash) = rest
        .split_once('$')
        .ok_or_else(|| malformed(Scheme::Md5Crypt, "expected $1$salt$hash"))?;
    if salt.len() > 8 || hash.len() != 22 {
        return Err(malformed(Scheme::Md5Crypt, "bad salt or hash length"));
    }
    Ok((magic, salt, hash))
}

/// Checks `password` against a `$1$`/`$apr1$` string, in constant time.
pub(super) fn verify(stored: &str, password: &[u8]) -> Result<bool, SchemeError> {
    let (magic, salt, expected) = parts(stored)?;
    Ok(ct_eq(
        crypt(password, salt, magic).as_bytes(),
        expected.as_bytes(),
    ))
}

/// `$1$salt$hash` of `password`.
pub(super) fn hash(password: &[u8], salt: &str) -> String {
    format!("$1${salt}${}", crypt(password, salt, "$1$"))
}

/// The 22-character hash part of MD5-crypt with `magic` (`$1$`, `$apr1$`).
fn crypt(pw: &[u8], salt: &str, magic: &str) -> String {
    let salt = salt.as_bytes();
    let alt = Md5::new()
        .chain_update(pw)
        .chain_update(salt)
        .chain_update(pw)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(pw)
        .chain_update(magic.as_bytes())
        .chain_update(salt);
    let mut left = pw.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = pw.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&pw[..1]);
        }
        i >>= 1;
    }
    let mut fin: [u8; 16] = ctx.finalize().into();
    for r in 0..1000 {
        let mut c = Md5::new();
        if r & 1 == 1 {
            c.update(pw);
        } else {
            c.update(fin);
        }
        if r % 3 != 0 {
            c.update(salt);
        }
        if r % 7 != 0 {
            c.update(pw);
        }
        if r & 1 == 1 {
            c.update(fin);
        } else {
            c.update(pw);
        }
        fin = c.finalize().into();
    }
    let mut out = String::with_capacity(22);
    let mut put = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put(
            (fin[a] as u32) << 16 | (fin[b] as u32) << 8 | fin[c] as u32,
            4,
        );
    }
    put(fin[11] as u32, 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::StoredPassword;

    #[test]
    fn md5_crypt_matches_openssl() {
        // `openssl passwd -1 -salt saltsalt password`
        assert_eq!(
            crypt(b"password", "saltsalt", "$1$"),
            "qjXMvbEw8oaL.CzflDtaK/"
        );
        // `openssl passwd -apr1 -salt saltsalt password` (Apache htpasswd -m)
        let apr1 = "$apr1$saltsalt$yAAkm4libquA.ZWLHbSBq/";
        assert_eq!(crypt(b"password", "saltsalt", "$apr1$"), &apr1[15..]);
        let sp = StoredPassword::parse(apr1, Scheme::Plain).unwrap();
        assert_eq!(sp.scheme(), Scheme::Md5Crypt);
        assert!(sp.verify(b"password").unwrap());
        assert!(!sp.verify(b"Password").unwrap());
    }
}
