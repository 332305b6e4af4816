//! Oracle of the `digest_authorization` fuzz target: the HTTP Digest
//! `Authorization` header parser. Included with `#[path]` by the target and by
//! `tests/fuzz_regressions.rs` (see there); public API only.

use std::sync::LazyLock;

use nginx_auth_fcgi::http_auth::digest::{self, Algorithm, Credentials, NonceState, Nonces};

static NONCES: LazyLock<Nonces> = LazyLock::new(Nonces::new);

/// `digest_authorization` target: the bytes are an `Authorization` header
/// value (made UTF-8 lossily, as the daemon does), split into scheme and rest
/// as `HttpAuth` does; the auth-param parser runs on both, the credential
/// parser on the rest.
///
/// Checks: no name or value is longer than the input; names are lower-case
/// tokens, unique; serialising the params and parsing again gives the same
/// list; accepted credentials have a hex response of the algorithm's length,
/// an 8-hex-digit non-zero nc, and hash without panicking; a nonce we did not
/// issue is never accepted; an nc is accepted at most once.
pub fn check_digest_authorization(data: &[u8]) {
    let header = String::from_utf8_lossy(data);
    let trimmed = header.trim();
    let (_scheme, rest) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
    check_auth_params(&header);
    check_auth_params(rest);
    let Ok(c) = Credentials::parse(rest) else {
        return;
    };
    for v in [
        &c.username,
        &c.realm,
        &c.nonce,
        &c.uri,
        &c.cnonce,
        &c.response,
    ]
    .into_iter()
    .chain(c.opaque.as_ref())
    {
        assert!(v.len() <= rest.len(), "value longer than the input");
    }
    let hex_len = match c.algorithm {
        Algorithm::Md5 | Algorithm::Md5Sess => 32,
        Algorithm::Sha256 | Algorithm::Sha256Sess => 64,
    };
    assert_eq!(c.response.len(), hex_len);
    assert!(c
        .response
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(c.nc_text.len(), 8);
    assert_eq!(u32::from_str_radix(&c.nc_text, 16).ok(), Some(c.nc));
    assert!(c.nc > 0);
    let expected = c.expected(b"password", "GET");
    assert_eq!(expected.len(), hex_len);
    assert_eq!(c.matches(&expected), c.response == expected);
    assert_eq!(c.expected_from_ha1(&"0".repeat(32), "GET").len(), hex_len);
    assert_eq!(
        NONCES.check_at(&c.nonce, &c.realm, 300, 1_700_000_000),
        NonceState::Invalid,
        "a nonce we never issued was accepted"
    );
    // The first use may or may not be new (the fuzzer repeats inputs).
    let _ = NONCES.accept_nc(&c.nonce, &c.cnonce, c.nc);
    assert!(
        !NONCES.accept_nc(&c.nonce, &c.cnonce, c.nc),
        "nc replay accepted"
    );
}

fn check_auth_params(s: &str) {
    let Ok(list) = digest::parse_params(s) else {
        return;
    };
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    for (i, (name, value)) in list.iter().enumerate() {
        assert!(
            !name.is_empty() && name.bytes().all(is_tchar),
            "name {name:?}"
        );
        assert_eq!(*name, name.to_ascii_lowercase());
        assert!(
            name.len() + value.len() < s.len(),
            "param longer than the input"
        );
        assert!(
            !list[..i].iter().any(|(n, _)| n == name),
            "duplicate {name}"
        );
    }
    let quoted: Vec<String> = list
        .iter()
        .map(|(n, v)| format!("{n}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    assert_eq!(
        digest::parse_params(&quoted.join(", ")).as_ref(),
        Ok(&list),
        "quoted round trip"
    );
}
