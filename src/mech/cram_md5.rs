//! CRAM-MD5 (RFC 2195): the client answers the challenge (nginx's `Auth-Salt`)
//! with `hex(HMAC-MD5(key = password, msg = challenge))`.

use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;

use super::hex_digest_matches;

/// The expected digest for `password` and `challenge`.
pub fn digest(password: &[u8], challenge: &[u8]) -> [u8; 16] {
    // HMAC accepts keys of any length (longer ones are hashed first).
    let mut mac =
        <Hmac<Md5> as KeyInit>::new_from_slice(password).expect("HMAC takes any key length");
    mac.update(challenge);
    mac.finalize().into_bytes().into()
}

/// True when `response_hex` (either hex case) is the right answer.
pub fn verify(password: &[u8], challenge: &[u8], response_hex: &[u8]) -> bool {
    hex_digest_matches(&digest(password, challenge), response_hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHALLENGE: &[u8] = b"<1896.697170952@postoffice.reston.mci.net>";

    #[test]
    fn rfc2195_vector_and_malformed_responses() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (
                b"tanstaaftanstaaf",
                b"b913a602c7eda7a495b4e6e7334d3890",
                true,
            ),
            (
                b"tanstaaftanstaaf",
                b"B913A602C7EDA7A495B4E6E7334D3890",
                true,
            ),
            (
                b"tanstaaftanstaaX",
                b"b913a602c7eda7a495b4e6e7334d3890",
                false,
            ),
            (
                b"tanstaaftanstaaf",
                b"b913a602c7eda7a495b4e6e7334d389",
                false,
            ),
            (
                b"tanstaaftanstaaf",
                b"b913a602c7eda7a495b4e6e7334d38900",
                false,
            ),
            (
                b"tanstaaftanstaaf",
                b"zz13a602c7eda7a495b4e6e7334d3890",
                false,
            ),
            (b"tanstaaftanstaaf", b"", false),
        ];
        for (pw, resp, want) in cases {
            assert_eq!(verify(pw, CHALLENGE, resp), *want, "{resp:?}");
        }
    }

    #[test]
    fn long_key_is_hashed_not_truncated() {
        let long = [b'k'; 100];
        assert_ne!(digest(&long, CHALLENGE), digest(&long[..64], CHALLENGE));
    }
}
