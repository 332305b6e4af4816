//! APOP (RFC 1939 §7): the client sends `hex(MD5(timestamp ‖ password))`, where
//! the timestamp is the POP3 banner's `<…>` that nginx passes as `Auth-Salt`.

use md5::{Digest, Md5};

use super::hex_digest_matches;

/// The expected digest.
pub fn digest(password: &[u8], timestamp: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(timestamp);
    h.update(password);
    h.finalize().into()
}

/// True when `response_hex` (either hex case) is the right answer.
pub fn verify(password: &[u8], timestamp: &[u8], response_hex: &[u8]) -> bool {
    hex_digest_matches(&digest(password, timestamp), response_hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1939_vector_and_malformed_responses() {
        let ts: &[u8] = b"<1896.697170952@dbc.mtview.ca.us>";
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"tanstaaf", b"c4c9334bac560ecc979e58001b3e22fb", true),
            (b"tanstaaf", b"C4C9334BAC560ECC979E58001B3E22FB", true),
            (b"tanstaag", b"c4c9334bac560ecc979e58001b3e22fb", false),
            (b"tanstaaf", b"c4c9334bac560ecc979e58001b3e22f", false),
            (b"tanstaaf", b"not hex at all, not hex at all!!", false),
            (b"tanstaaf", b"", false),
        ];
        for (pw, resp, want) in cases {
            assert_eq!(verify(pw, ts, resp), *want, "{resp:?}");
        }
    }
}
