//! Work factors of stored hashes: [`Cost`] read from a crypt or PHC string
//! ([`StoredPassword::cost`](super::StoredPassword::cost)), and [`hash_at`],
//! which hashes with a chosen cost instead of `doveadm pw`'s defaults. The
//! transparent rehash (`upgrade_scheme`) compares the two.

use std::fmt;

use super::hash::{hash_with, Costs};
use super::{Scheme, SchemeError};

/// The work factor of one hash, in its scheme's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// A scheme without a tunable cost (MD5-crypt, the SHA digests, PLAIN).
    Fixed,
    /// SHA-crypt or PBKDF2 rounds.
    Rounds(u32),
    /// bcrypt cost (log2 of the rounds).
    Bcrypt(u32),
    /// Argon2 memory (KiB), passes, lanes.
    Argon2 {
        /// `m=`, KiB.
        m_kib: u32,
        /// `t=`.
        t: u32,
        /// `p=`.
        p: u32,
    },
}

impl Cost {
    /// What [`super::hash()`] uses for `scheme` (Dovecot's defaults, bcrypt 10).
    pub fn default_for(scheme: Scheme) -> Cost {
        let d = Costs::DEFAULT;
        match scheme {
            Scheme::Sha256Crypt | Scheme::Sha512Crypt => Cost::Rounds(d.sha_crypt),
            Scheme::Pbkdf2 => Cost::Rounds(d.pbkdf2),
            Scheme::BlfCrypt => Cost::Bcrypt(d.bcrypt),
            Scheme::Argon2i => argon2(d.argon2i),
            Scheme::Argon2id => argon2(d.argon2id),
            _ => Cost::Fixed,
        }
    }

    /// True when `self` is below `target` in any parameter (a cost of
    /// another kind is never below: the schemes differ then anyway).
    pub fn below(&self, target: &Cost) -> bool {
        match (*self, *target) {
            (Cost::Rounds(a), Cost::Rounds(b)) | (Cost::Bcrypt(a), Cost::Bcrypt(b)) => a < b,
            (
                Cost::Argon2 { m_kib, t, p },
                Cost::Argon2 {
                    m_kib: tm,
                    t: tt,
                    p: tp,
                },
            ) => m_kib < tm || t < tt || p < tp,
            _ => false,
        }
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cost::Fixed => f.write_str("fixed cost"),
            Cost::Rounds(r) => write!(f, "rounds={r}"),
            Cost::Bcrypt(c) => write!(f, "cost={c}"),
            Cost::Argon2 { m_kib, t, p } => write!(f, "m={m_kib},t={t},p={p}"),
        }
    }
}

fn argon2((m_kib, t, p): (u32, u32, u32)) -> Cost {
    Cost::Argon2 { m_kib, t, p }
}

/// The cost of `text`, a validated stored value of `scheme` (`None`: not
/// readable, which validation has already ruled out).
pub(super) fn cost_of(scheme: Scheme, text: &str) -> Option<Cost> {
    Some(match scheme {
        Scheme::Sha256Crypt | Scheme::Sha512Crypt => {
            // `$6$rounds=N$salt$hash`; without `rounds=` crypt(3) uses 5000.
            let field = text.split('$').nth(2)?;
            Cost::Rounds(match field.strip_prefix("rounds=") {
                Some(n) => n.parse().ok()?,
                None => 5000,
            })
        }
        Scheme::BlfCrypt => Cost::Bcrypt(text.split('$').nth(2)?.parse().ok()?),
        Scheme::Argon2i | Scheme::Argon2id => {
            let hash = argon2::PasswordHash::new(text).ok()?;
            let params = argon2::Params::try_from(&hash).ok()?;
            Cost::Argon2 {
                m_kib: params.m_cost(),
                t: params.t_cost(),
                p: params.p_cost(),
            }
        }
        Scheme::Pbkdf2 => Cost::Rounds(text.split('$').nth(3)?.parse().ok()?),
        _ => Cost::Fixed,
    })
}

/// [`super::hash()`] with `cost` instead of the default for `scheme` (a cost
/// of another kind than the scheme's is ignored: the default applies).
pub fn hash_at(scheme: Scheme, password: &[u8], cost: Cost) -> Result<String, SchemeError> {
    let mut costs = Costs::DEFAULT;
    match (scheme, cost) {
        (Scheme::Sha256Crypt | Scheme::Sha512Crypt, Cost::Rounds(r)) => costs.sha_crypt = r,
        (Scheme::Pbkdf2, Cost::Rounds(r)) => costs.pbkdf2 = r,
        (Scheme::BlfCrypt, Cost::Bcrypt(c)) => costs.bcrypt = c,
        (Scheme::Argon2i, Cost::Argon2 { m_kib, t, p }) => costs.argon2i = (m_kib, t, p),
        (Scheme::Argon2id, Cost::Argon2 { m_kib, t, p }) => costs.argon2id = (m_kib, t, p),
        _ => {}
    }
    hash_with(scheme, password, &costs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::StoredPassword;

    fn cost(h: &str) -> Cost {
        StoredPassword::parse(h, Scheme::Plain).unwrap().cost()
    }

    #[test]
    fn costs_are_read_from_stored_hashes_and_written_by_hash_at() {
        for (scheme, c) in [
            (Scheme::Sha512Crypt, Cost::Rounds(1000)),
            (Scheme::Sha256Crypt, Cost::Rounds(1234)),
            (Scheme::BlfCrypt, Cost::Bcrypt(5)),
            (
                Scheme::Argon2id,
                Cost::Argon2 {
                    m_kib: 64,
                    t: 2,
                    p: 1,
                },
            ),
            (Scheme::Pbkdf2, Cost::Rounds(20)),
        ] {
            let h = hash_at(scheme, b"pw", c).unwrap();
            assert_eq!(cost(&h), c, "{h}");
            assert!(StoredPassword::parse(&h, Scheme::Plain)
                .unwrap()
                .verify(b"pw")
                .unwrap());
        }
        // crypt(3)'s default when `rounds=` is absent.
        assert_eq!(
            cost("$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/"),
            Cost::Rounds(5000)
        );
        assert_eq!(
            cost(&crate::scheme::hash(Scheme::Md5Crypt, b"pw").unwrap()),
            Cost::Fixed
        );
        assert_eq!(cost("{PLAIN}x"), Cost::Fixed);
    }

    #[test]
    fn below_compares_every_parameter() {
        let a = |m_kib, t, p| Cost::Argon2 { m_kib, t, p };
        assert!(Cost::Rounds(5000).below(&Cost::Rounds(500_000)));
        assert!(!Cost::Rounds(500_000).below(&Cost::Rounds(500_000)));
        assert!(Cost::Bcrypt(5).below(&Cost::Bcrypt(10)));
        assert!(!Cost::Bcrypt(12).below(&Cost::Bcrypt(10)));
        assert!(a(65536, 2, 1).below(&a(65536, 3, 1)));
        assert!(a(32768, 9, 1).below(&a(65536, 3, 1)));
        assert!(!a(65536, 3, 2).below(&a(65536, 3, 1)));
        assert!(!Cost::Fixed.below(&Cost::Rounds(1)));
    }
}
