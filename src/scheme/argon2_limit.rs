//! The largest Argon2 memory cost a stored hash may ask for (the
//! `argon2_max_memory` setting), and the PHC-string parse that enforces it.
//! Every verification of an Argon2 hash allocates its memory cost, so the
//! limit bounds what one login can cost.

use std::sync::atomic::{AtomicU32, Ordering};

use super::{malformed, Scheme, SchemeError};

/// Default of `argon2_max_memory` (KiB): 256 MiB, four times what `doveadm
/// pw -s ARGON2ID` uses (64 MiB) and eight times its ARGON2I (32 MiB).
pub const DEFAULT_ARGON2_MAX_MEMORY_KIB: u32 = 256 * 1024;

/// The largest Argon2 memory cost (KiB) accepted from a stored hash; see
/// [`set_argon2_max_memory_kib`].
static ARGON2_MAX_MEMORY_KIB: AtomicU32 = AtomicU32::new(DEFAULT_ARGON2_MAX_MEMORY_KIB);

/// Sets the largest Argon2 memory cost (KiB) a stored hash may ask for, for
/// the whole process, and returns the previous limit. Every verification of
/// such a hash allocates that much, so the limit bounds what one login can
/// cost. A hash above it is refused when it is parsed
/// ([`StoredPassword::parse`]: file passdbs at load, SQL/LDAP at lookup) and
/// never verified. Set from the configuration before the passdbs are opened.
///
/// [`StoredPassword::parse`]: super::StoredPassword::parse
pub fn set_argon2_max_memory_kib(kib: u32) -> u32 {
    ARGON2_MAX_MEMORY_KIB.swap(kib, Ordering::SeqCst)
}

/// The current limit of [`set_argon2_max_memory_kib`], in KiB: what one
/// Argon2 verification may allocate at most.
pub fn argon2_max_memory_kib() -> u32 {
    ARGON2_MAX_MEMORY_KIB.load(Ordering::SeqCst)
}

/// Parses a PHC Argon2 string and checks its costs are usable.
pub(super) fn argon2_hash(s: Scheme, text: &str) -> Result<argon2::PasswordHash, SchemeError> {
    argon2_hash_within(s, text, argon2_max_memory_kib())
}

/// [`argon2_hash`] with the memory limit given.
fn argon2_hash_within(
    s: Scheme,
    text: &str,
    max_kib: u32,
) -> Result<argon2::PasswordHash, SchemeError> {
    let hash =
        argon2::PasswordHash::new(text).map_err(|_| malformed(s, "not a PHC argon2 string"))?;
    let params =
        argon2::Params::try_from(&hash).map_err(|_| malformed(s, "unusable argon2 parameters"))?;
    if params.m_cost() > max_kib {
        return Err(SchemeError::MemoryCost {
            scheme: s,
            m_kib: params.m_cost(),
            max_kib,
        });
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::StoredPassword;

    #[test]
    fn argon2_memory_cost_is_limited_and_the_refusal_shows_no_hash() {
        const SALT_AND_HASH: &str =
            "4RGsphEBhN3o4+I2a4W2Ww$+QVcbWSet86GduCd3fae4gB3YqLf3/2e8G00IOh1fAs";
        let phc = |alg: &str, m: u32| format!("$argon2{alg}$v=19$m={m},t=3,p=1${SALT_AND_HASH}");
        // No unit test changes the process-wide limit.
        assert_eq!(argon2_max_memory_kib(), DEFAULT_ARGON2_MAX_MEMORY_KIB);
        assert_eq!(DEFAULT_ARGON2_MAX_MEMORY_KIB, 256 * 1024);
        // doveadm's defaults (Argon2i 32 MiB, Argon2id 64 MiB) and the limit
        // itself are accepted.
        for stored in [
            format!("{{ARGON2I}}{}", phc("i", 32768)),
            format!("{{ARGON2ID}}{}", phc("id", 65536)),
            format!("{{ARGON2ID}}{}", phc("id", 262144)),
            phc("id", 262144),
        ] {
            StoredPassword::parse(&stored, Scheme::Plain).expect(&stored);
        }
        for (stored, scheme) in [
            (
                format!("{{ARGON2ID}}{}", phc("id", 524288)),
                Scheme::Argon2id,
            ),
            (phc("id", 262145), Scheme::Argon2id),
            (format!("{{CRYPT}}{}", phc("i", 1 << 20)), Scheme::Argon2i),
        ] {
            let err = StoredPassword::parse(&stored, Scheme::Plain).unwrap_err();
            let m_kib = stored
                .split("m=")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                err,
                SchemeError::MemoryCost {
                    scheme,
                    m_kib,
                    max_kib: 262144
                }
            );
            let msg = err.to_string();
            assert_eq!(
                msg,
                format!("{scheme} memory cost {m_kib} KiB is above argon2_max_memory (262144 KiB)")
            );
            for part in SALT_AND_HASH.split('$') {
                assert!(!msg.contains(part), "the hash is not shown: {msg}");
            }
            assert!(!msg.contains("$argon2"), "{msg}");
        }
        // Other limits (the setting itself is process-wide, see main.rs).
        let id = phc("id", 65536);
        assert!(argon2_hash_within(Scheme::Argon2id, &id, 65536).is_ok());
        assert!(argon2_hash_within(Scheme::Argon2id, &id, u32::MAX).is_ok());
        assert_eq!(
            argon2_hash_within(Scheme::Argon2id, &id, 65535).unwrap_err(),
            SchemeError::MemoryCost {
                scheme: Scheme::Argon2id,
                m_kib: 65536,
                max_kib: 65535
            }
        );
    }
}
