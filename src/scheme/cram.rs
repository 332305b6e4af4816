//! CRAM-MD5 (RFC 2195) from Dovecot's `{CRAM-MD5}` contexts
//! (`hmac_md5_get_cram_context`): the MD5 states after the HMAC key's outer
//! and inner pad blocks, 16 bytes each (four little-endian words), 64 hex
//! digits in all. A response is HMAC-MD5 resumed from those two states, so
//! no plaintext is needed.
//!
//! The `hmac` crate keeps its pad states private, so the key padding is
//! written here; the MD5 states themselves are saved and restored through
//! md-5's own state (de)serialisation.

use digest::common::hazmat::{SerializableState as _, SerializedState};
use md5::{Digest as _, Md5};
use zeroize::Zeroize;

use crate::secret::ct_eq;

/// Dovecot's stored context: outer state, then inner state.
pub(super) type Context = [u8; 32];

/// The MD5 state (four little-endian words, as md-5 serialises them and as
/// Dovecot stores them) after absorbing one 64-byte block.
fn state_after(block: &[u8; 64]) -> [u8; 16] {
    let mut state = Md5::new_with_prefix(block).serialize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&state[..16]);
    state.as_mut_slice().zeroize();
    out
}

/// MD5 of `msg`, resumed from `state` (16 bytes) after one 64-byte block.
fn md5_resume(state: &[u8], msg: &[u8]) -> [u8; 16] {
    // md-5's serialised state: the state words, the number of blocks
    // absorbed (one) and an empty buffer.
    let mut saved = SerializedState::<Md5>::default();
    saved[..16].copy_from_slice(state);
    saved[16..24].copy_from_slice(&1u64.to_le_bytes());
    let hasher = Md5::deserialize(&saved);
    saved.as_mut_slice().zeroize();
    hasher
        .expect("any state words with an empty buffer are a valid MD5 state")
        .chain_update(msg)
        .finalize()
        .into()
}

/// The context of `password`, as `doveadm pw -s CRAM-MD5` stores it.
pub(super) fn context_of(password: &[u8]) -> Context {
    let mut key = [0u8; 64];
    if password.len() > 64 {
        key[..16].copy_from_slice(&Md5::digest(password));
    } else {
        key[..password.len()].copy_from_slice(password);
    }
    let mut out = [0u8; 32];
    for (half, pad) in out.chunks_exact_mut(16).zip([0x5c, 0x36]) {
        let mut block = key.map(|k| k ^ pad);
        half.copy_from_slice(&state_after(&block));
        block.zeroize();
    }
    key.zeroize();
    out
}

/// A stored context from its 64 hex digits.
pub(super) fn context_from_hex(hex_data: &[u8]) -> Option<Context> {
    let mut out = [0u8; 32];
    (hex_data.len() == 64).then_some(())?;
    hex::decode_to_slice(hex_data, &mut out).ok()?;
    Some(out)
}

/// HMAC-MD5 of `challenge` under the key `ctx` was made from.
fn response(ctx: &Context, challenge: &[u8]) -> [u8; 16] {
    let (outer, inner) = ctx.split_at(16);
    md5_resume(outer, &md5_resume(inner, challenge))
}

/// Checks a CRAM-MD5 response (hex, either case) to `challenge`, in
/// constant time; a response that is not 32 hex digits is wrong.
pub(super) fn verify(ctx: &Context, challenge: &[u8], response_hex: &[u8]) -> bool {
    let mut got = [0u8; 16];
    hex::decode_to_slice(response_hex, &mut got).is_ok() && ct_eq(&response(ctx, challenge), &got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::test_vectors::*;
    use crate::scheme::{hash, Scheme, StoredPassword};

    #[test]
    fn cram_md5_rfc2195_from_plain_and_context() {
        let challenge = b"<1896.697170952@postoffice.reston.mci.net>";
        let response = b"b913a602c7eda7a495b4e6e7334d3890";
        // `doveadm pw -s CRAM-MD5 -p tanstaaftanstaaf`
        let doveadm = "{CRAM-MD5}d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b";
        let ours = hash(Scheme::CramMd5, b"tanstaaftanstaaf").unwrap();
        assert_eq!(ours, doveadm, "same outer/inner state layout as Dovecot");
        for stored in [
            "{PLAIN}tanstaaftanstaaf",
            "{CLEAR}tanstaaftanstaaf",
            "tanstaaftanstaaf",
            doveadm,
        ] {
            let sp = StoredPassword::parse(stored, Scheme::Plain).unwrap();
            let check = |r: &[u8]| sp.verify_cram_md5(challenge, r).unwrap();
            assert_eq!(check(response), Some(true), "{stored}");
            assert_eq!(
                check(b"B913A602C7EDA7A495B4E6E7334D3890"),
                Some(true),
                "{stored}"
            );
            assert_eq!(
                check(b"0913a602c7eda7a495b4e6e7334d3890"),
                Some(false),
                "{stored}"
            );
            assert_eq!(
                check(b"b913a602c7eda7a495b4e6e7334d389"),
                Some(false),
                "{stored}"
            );
            assert_eq!(
                check(b"b913a602c7eda7a495b4e6e7334d3890aa"),
                Some(false),
                "{stored}"
            );
            assert_eq!(
                check(b"zz13a602c7eda7a495b4e6e7334d3890"),
                Some(false),
                "{stored}"
            );
            assert_eq!(check(b""), Some(false), "{stored}");
            assert_eq!(
                sp.verify_cram_md5(b"<other@challenge>", response).unwrap(),
                Some(false)
            );
        }
    }

    #[test]
    fn md5_resume_matches_rfc1321_and_the_md5_crate() {
        let resume = |m: &[u8]| {
            let st = state_after(m[..64].try_into().unwrap());
            hex::encode(md5_resume(&st, &m[64..]))
        };
        // RFC 1321 A.5, the one test message longer than a block.
        let m = b"12345678901234567890123456789012345678901234567890123456789012345678901234567890";
        assert_eq!(resume(m), "57edf4a22be3c955ac49da2e2107b67a");
        // Every tail length across the padding boundaries (55/56/64 bytes).
        for n in 64..300 {
            let m: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            assert_eq!(resume(&m), hex::encode(Md5::digest(&m)), "{n}");
        }
    }

    #[test]
    fn cram_md5_context_resumes_for_long_keys_and_long_challenges() {
        // Python: hmac.new(b"x"*70 + "ü".encode(), b"<1.2@x>", "md5").hexdigest()
        let sp = StoredPassword::parse(DOVEADM_LONG[0], Scheme::Plain).unwrap();
        assert_eq!(
            sp.verify_cram_md5(b"<1.2@x>", b"2a84d718dd0809f61ea23a4fe2bd39ff")
                .unwrap(),
            Some(true)
        );
        // Challenges of every length around the MD5 block boundaries agree
        // with HMAC-MD5 computed from the plaintext.
        use hmac::{KeyInit as _, Mac as _};
        let plain =
            StoredPassword::parse(&format!("{{PLAIN}}{}", long_pw()), Scheme::Plain).unwrap();
        for n in 0..200 {
            let challenge: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut m = hmac::Hmac::<Md5>::new_from_slice(long_pw().as_bytes()).unwrap();
            m.update(&challenge);
            let expected = hex::encode(m.finalize().into_bytes());
            assert_eq!(
                sp.verify_cram_md5(&challenge, expected.as_bytes()).unwrap(),
                Some(true),
                "{n}"
            );
            assert_eq!(
                plain
                    .verify_cram_md5(&challenge, expected.as_bytes())
                    .unwrap(),
                Some(true),
                "{n}"
            );
        }
    }
}
