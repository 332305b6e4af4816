//! [`hash`]: a password into a `{SCHEME}…` string, as `doveadm pw -s SCHEME`
//! writes it (what `nginx-auth-fcgi hash` and `user add` store).

use argon2::{Argon2, PasswordHasher as _};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore as _;
use zeroize::Zeroize;

use super::md5_crypt::{self, ITOA64};
use super::stored::{pbkdf2_sha1, plain_digest};
use super::{cram, Scheme, SchemeError};

/// `n` random characters of the crypt(3) alphabet.
fn salt_chars(n: usize) -> String {
    let mut raw = vec![0u8; n];
    rand::rng().fill_bytes(&mut raw);
    raw.iter()
        .map(|b| ITOA64[(b & 0x3f) as usize] as char)
        .collect()
}

/// `N` random bytes.
fn salt_bytes<const N: usize>() -> [u8; N] {
    let mut salt = [0u8; N];
    rand::rng().fill_bytes(&mut salt);
    salt
}

/// Work factors for the expensive schemes.
pub(super) struct Costs {
    /// bcrypt cost (log2 of the rounds).
    pub(super) bcrypt: u32,
    /// SHA-crypt rounds.
    pub(super) sha_crypt: u32,
    /// Argon2i memory (KiB), passes, lanes.
    pub(super) argon2i: (u32, u32, u32),
    /// Argon2id memory (KiB), passes, lanes.
    pub(super) argon2id: (u32, u32, u32),
    /// PBKDF2-HMAC-SHA1 rounds.
    pub(super) pbkdf2: u32,
}

impl Costs {
    /// What `doveadm pw` (Dovecot 2.3) uses, except bcrypt: Dovecot's cost 5
    /// is weak today, so cost 10.
    pub(super) const DEFAULT: Costs = Costs {
        bcrypt: 10,
        sha_crypt: 5000,
        argon2i: (32768, 4, 1),
        argon2id: (65536, 3, 1),
        pbkdf2: 5000,
    };
}

/// Hashes `password` into a `{SCHEME}…` string like `doveadm pw -s SCHEME`:
/// a fresh random salt; bcrypt cost 10 (`$2y$`); SHA-crypt 5000 rounds;
/// Argon2i m=32768,t=4,p=1 and Argon2id m=65536,t=3,p=1 (Dovecot's
/// defaults); PBKDF2 in Dovecot's `$1$salt$5000$hex` form. `{PLAIN}` and
/// `{CLEAR}` need a non-empty UTF-8 password.
pub fn hash(scheme: Scheme, password: &[u8]) -> Result<String, SchemeError> {
    hash_with(scheme, password, &Costs::DEFAULT)
}

pub(super) fn hash_with(
    scheme: Scheme,
    password: &[u8],
    costs: &Costs,
) -> Result<String, SchemeError> {
    let fail = || SchemeError::Hash(scheme);
    let data = match scheme {
        Scheme::Plain | Scheme::Clear => {
            if password.is_empty() {
                return Err(fail());
            }
            String::from_utf8(password.to_vec()).map_err(|e| {
                e.into_bytes().zeroize();
                fail()
            })?
        }
        Scheme::CramMd5 => hex::encode(cram::context_of(password)),
        Scheme::Md5Crypt => md5_crypt::hash(password, &salt_chars(8)),
        Scheme::Sha256Crypt | Scheme::Sha512Crypt => {
            use sha_crypt::{Algorithm, Params, PasswordHasher as _, ShaCrypt};
            let alg = if scheme == Scheme::Sha256Crypt {
                Algorithm::Sha256Crypt
            } else {
                Algorithm::Sha512Crypt
            };
            // 12 random bytes become the 16 salt characters crypt(3) allows.
            let salt: [u8; 12] = salt_bytes();
            let params = Params::new(costs.sha_crypt).map_err(|_| fail())?;
            ShaCrypt::new(alg, params)
                .hash_password_with_salt(password, &salt)
                .map_err(|_| fail())?
                .to_string()
        }
        Scheme::BlfCrypt => bcrypt::hash_with_salt(password, costs.bcrypt, salt_bytes())
            .map_err(|_| fail())?
            .format_for_version(bcrypt::Version::TwoY),
        Scheme::Argon2i | Scheme::Argon2id => {
            let (alg, (m, t, p)) = if scheme == Scheme::Argon2i {
                (argon2::Algorithm::Argon2i, costs.argon2i)
            } else {
                (argon2::Algorithm::Argon2id, costs.argon2id)
            };
            let params = argon2::Params::new(m, t, p, None).map_err(|_| fail())?;
            let salt: [u8; 16] = salt_bytes();
            Argon2::new(alg, argon2::Version::V0x13, params)
                .hash_password_with_salt(password, &salt)
                .map_err(|_| fail())?
                .to_string()
        }
        Scheme::Sha | Scheme::Sha256 | Scheme::Sha512 => {
            B64.encode(plain_digest(scheme, password, b""))
        }
        Scheme::Ssha | Scheme::Ssha256 | Scheme::Ssha512 => {
            let salt: [u8; 8] = salt_bytes();
            let mut raw = plain_digest(scheme, password, &salt);
            raw.extend_from_slice(&salt);
            B64.encode(raw)
        }
        Scheme::Pbkdf2 => {
            let salt = salt_chars(16);
            let rounds = costs.pbkdf2;
            let out = pbkdf2_sha1(password, &salt, rounds, 20);
            format!("$1${salt}${rounds}${}", hex::encode(out))
        }
    };
    Ok(format!("{{{scheme}}}{data}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::stored::digest_len;
    use crate::scheme::test_vectors::*;
    use crate::scheme::StoredPassword;

    /// Cheap work factors so round trips of the expensive schemes stay fast.
    const CHEAP: Costs = Costs {
        bcrypt: 4,
        sha_crypt: 1000,
        argon2i: (64, 1, 1),
        argon2id: (64, 1, 1),
        pbkdf2: 10,
    };

    fn round_trip(s: Scheme, h: &str, pw: &str) {
        assert!(h.starts_with(&format!("{{{s}}}")), "{h}");
        let sp = StoredPassword::parse(h, Scheme::Plain).unwrap_or_else(|e| panic!("{h}: {e}"));
        assert_eq!(sp.scheme(), s, "{h}");
        assert!(sp.verify(pw.as_bytes()).unwrap(), "{h}");
        assert!(!sp.verify(b"wrong").unwrap(), "{h}");
        let dbg = format!("{sp:?}");
        assert!(
            !dbg.contains(&h[h.find('}').unwrap() + 1..]),
            "Debug redacts: {dbg}"
        );
        assert!(!dbg.contains(pw), "{dbg}");
    }

    #[test]
    fn every_scheme_round_trips_cheaply() {
        for pw in [UNICODE_PW, ASCII_PW, long_pw().as_str()] {
            for s in Scheme::ALL {
                round_trip(*s, &hash_with(*s, pw.as_bytes(), &CHEAP).unwrap(), pw);
            }
        }
    }

    #[test]
    fn every_scheme_round_trips_with_default_costs() {
        for s in Scheme::ALL {
            let h = hash(*s, UNICODE_PW.as_bytes()).unwrap();
            round_trip(*s, &h, UNICODE_PW);
            let again = hash(*s, UNICODE_PW.as_bytes()).unwrap();
            let salted = !matches!(
                s,
                Scheme::Plain
                    | Scheme::Clear
                    | Scheme::CramMd5
                    | Scheme::Sha
                    | Scheme::Sha256
                    | Scheme::Sha512
            );
            assert_eq!(h != again, salted, "fresh salt each time: {s}");
        }
    }

    #[test]
    fn hash_uses_doveadm_formats_and_costs() {
        let pw = UNICODE_PW.as_bytes();
        let h = |s| hash(s, pw).unwrap();
        assert_eq!(h(Scheme::Plain), "{PLAIN}pässwörd %+:");
        assert_eq!(h(Scheme::Clear), "{CLEAR}pässwörd %+:");
        // Unsalted schemes give exactly doveadm's output.
        for (s, dv) in [
            (Scheme::CramMd5, 2),
            (Scheme::Sha, 9),
            (Scheme::Sha256, 11),
            (Scheme::Sha512, 13),
        ] {
            assert_eq!(h(s), DOVEADM_UNICODE[dv]);
        }
        assert!(h(Scheme::Md5Crypt).starts_with("{MD5-CRYPT}$1$"));
        assert!(h(Scheme::Sha256Crypt).starts_with("{SHA256-CRYPT}$5$rounds=5000$"));
        assert!(h(Scheme::Sha512Crypt).starts_with("{SHA512-CRYPT}$6$rounds=5000$"));
        let b = h(Scheme::BlfCrypt);
        assert!(
            b.starts_with("{BLF-CRYPT}$2y$10$") && b.len() == 11 + 60,
            "{b}"
        );
        assert!(h(Scheme::Argon2i).starts_with("{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$"));
        assert!(h(Scheme::Argon2id).starts_with("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$"));
        let p = h(Scheme::Pbkdf2);
        let fields: Vec<&str> = p.split('$').collect();
        assert_eq!(fields.len(), 5, "{p}");
        assert_eq!(
            (
                fields[0],
                fields[1],
                fields[2].len(),
                fields[3],
                fields[4].len()
            ),
            ("{PBKDF2}", "1", 16, "5000", 40)
        );
        for s in [Scheme::Ssha, Scheme::Ssha256, Scheme::Ssha512] {
            let raw = B64.decode(&h(s)[s.to_string().len() + 2..]).unwrap();
            assert_eq!(raw.len(), digest_len(s) + 8, "{s}");
        }
        assert!(matches!(
            hash(Scheme::Plain, b""),
            Err(SchemeError::Hash(Scheme::Plain))
        ));
        assert!(matches!(
            hash(Scheme::Clear, b"\xff"),
            Err(SchemeError::Hash(Scheme::Clear))
        ));
    }
}
