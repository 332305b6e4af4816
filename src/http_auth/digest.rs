//! HTTP Digest (RFC 7616): credential parsing, the response computation
//! and `rspauth` for `Authentication-Info`. Pure; the nonces and the replay
//! memory are [`super::nonce`]'s.

use md5::{Digest as _, Md5};
use sha2::Sha256;

use zeroize::Zeroizing;

use crate::secret::ct_eq;

pub use super::nonce::{NonceState, Nonces};

/// A Digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `MD5` (the default when a client names none).
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256`.
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
}

impl Algorithm {
    /// The token as written in headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    /// Parses a token (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        [
            Algorithm::Md5,
            Algorithm::Md5Sess,
            Algorithm::Sha256,
            Algorithm::Sha256Sess,
        ]
        .into_iter()
        .find(|a| a.as_str().eq_ignore_ascii_case(s))
    }

    fn sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// Lower-case hex of H(data).
    pub fn h(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hex::encode(Md5::digest(data)),
            Algorithm::Sha256 | Algorithm::Sha256Sess => hex::encode(Sha256::digest(data)),
        }
    }
}

/// The client's `Authorization: Digest …` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `username` (or decoded `username*`).
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `uri`.
    pub uri: String,
    /// `response` (hex).
    pub response: String,
    /// `algorithm` (MD5 when absent).
    pub algorithm: Algorithm,
    /// `cnonce`.
    pub cnonce: String,
    /// `nc` (8 hex digits), parsed.
    pub nc: u32,
    /// `nc` as sent (part of the hash input).
    pub nc_text: String,
    /// `opaque`, echoed.
    pub opaque: Option<String>,
    /// `userhash=true`: `username` is H(`user:realm`), to be resolved.
    pub userhash: bool,
}

/// The longest `cnonce` accepted (bytes).
pub const MAX_CNONCE: usize = 256;

/// Why a Digest header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not a syntactically valid auth-param list.
    #[error("malformed Digest header: {0}")]
    Syntax(&'static str),
    /// A parameter is missing.
    #[error("Digest parameter `{0}` missing")]
    Missing(&'static str),
    /// A parameter value is not acceptable.
    #[error("Digest parameter `{0}` invalid")]
    Invalid(&'static str),
}

/// Splits RFC 7235 auth-params: `name=token` or `name="quoted \" string"`,
/// comma-separated, names case-insensitive; duplicates refused.
pub fn parse_params(s: &str) -> Result<Vec<(String, String)>, DigestError> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out: Vec<(String, String)> = Vec::new();
    let skip = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b',') {
            *i += 1;
        }
    };
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    loop {
        skip(&mut i);
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if start == i {
            return Err(DigestError::Syntax("expected a parameter name"));
        }
        let name = s[start..i].to_ascii_lowercase();
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            return Err(DigestError::Syntax("expected `=`"));
        }
        i += 1;
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        let value = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut v = Vec::new();
            loop {
                match b.get(i) {
                    None => return Err(DigestError::Syntax("unterminated quoted string")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let c = *b
                            .get(i + 1)
                            .ok_or(DigestError::Syntax("dangling backslash"))?;
                        v.push(c);
                        i += 2;
                    }
                    Some(&c) => {
                        v.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8(v).map_err(|_| DigestError::Syntax("not UTF-8"))?
        } else {
            let vs = i;
            while i < b.len() && is_tchar(b[i]) {
                i += 1;
            }
            if vs == i {
                return Err(DigestError::Syntax("empty value"));
            }
            s[vs..i].to_owned()
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(DigestError::Syntax("duplicate parameter"));
        }
        out.push((name, value));
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        if i < b.len() && b[i] != b',' {
            return Err(DigestError::Syntax("expected `,`"));
        }
    }
    Ok(out)
}

/// RFC 8187 `UTF-8''percent-encoded` (for `username*`).
fn ext_value(v: &str) -> Option<String> {
    let (charset, rest) = v.split_once('\'')?;
    let (_lang, enc) = rest.split_once('\'')?;
    if !charset.eq_ignore_ascii_case("UTF-8") {
        return None;
    }
    let raw = crate::auth_http::request::unescape(enc.as_bytes())?;
    String::from_utf8(raw).ok()
}

impl Credentials {
    /// Parses the part after `Digest `.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let params = parse_params(s)?;
        let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let need = |n: &'static str| get(n).ok_or(DigestError::Missing(n));
        let username = match (get("username"), get("username*")) {
            (Some(u), None) => u,
            (None, Some(x)) => ext_value(&x).ok_or(DigestError::Invalid("username*"))?,
            (Some(_), Some(_)) => return Err(DigestError::Invalid("username*")),
            (None, None) => return Err(DigestError::Missing("username")),
        };
        let userhash = get("userhash").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if userhash && get("username*").is_some() {
            return Err(DigestError::Invalid("userhash"));
        }
        let algorithm = match get("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(&a).ok_or(DigestError::Invalid("algorithm"))?,
        };
        // RFC 2069 (no qop) and auth-int (no body behind auth_request) are refused.
        match get("qop") {
            Some(q) if q.eq_ignore_ascii_case("auth") => {}
            Some(_) => return Err(DigestError::Invalid("qop")),
            None => return Err(DigestError::Missing("qop")),
        }
        let nc_text = need("nc")?;
        let nc = (nc_text.len() == 8)
            .then(|| u32::from_str_radix(&nc_text, 16).ok())
            .flatten()
            .filter(|n| *n > 0)
            .ok_or(DigestError::Invalid("nc"))?;
        let response = need("response")?;
        if response.len() != 2 * digest_len(algorithm)
            || !response.bytes().all(|c| c.is_ascii_hexdigit())
        {
            return Err(DigestError::Invalid("response"));
        }
        // The client nonce is kept (replay memory, repeats, Redis): clients
        // send 8 to 64 characters; a longer one is refused, not stored.
        let cnonce = need("cnonce")?;
        if cnonce.is_empty() || cnonce.len() > MAX_CNONCE {
            return Err(DigestError::Invalid("cnonce"));
        }
        Ok(Credentials {
            username,
            realm: need("realm")?,
            nonce: need("nonce")?,
            uri: need("uri")?,
            response: response.to_ascii_lowercase(),
            algorithm,
            cnonce,
            nc,
            nc_text,
            opaque: get("opaque"),
            userhash,
        })
    }

    /// The expected `response` for `password` and `method` (qop=auth).
    pub fn expected(&self, password: &[u8], method: &str) -> String {
        self.expected_from_ha1(&self.ha1(password), method)
    }

    /// HA1 = H(`user:realm:password`), lower-case hex (before `-sess`).
    pub fn ha1(&self, password: &[u8]) -> Zeroizing<String> {
        let mut a1 =
            Vec::with_capacity(self.username.len() + self.realm.len() + password.len() + 2);
        a1.extend_from_slice(self.username.as_bytes());
        a1.push(b':');
        a1.extend_from_slice(self.realm.as_bytes());
        a1.push(b':');
        a1.extend_from_slice(password);
        let ha1 = self.algorithm.h(&a1);
        zeroize::Zeroize::zeroize(&mut a1);
        Zeroizing::new(ha1)
    }

    /// `rspauth` of `Authentication-Info` (RFC 7616 §3.5): the response
    /// computation with A2 = `:` uri (no method), from the same HA1.
    pub fn rspauth(&self, ha1: &str) -> String {
        self.expected_from_ha1(ha1, "")
    }

    /// The expected `response` from a stored HA1 (lower-case hex of
    /// H(`user:realm:password`), as htdigest files hold for MD5).
    pub fn expected_from_ha1(&self, ha1: &str, method: &str) -> String {
        let a = self.algorithm;
        let mut ha1 = ha1.to_ascii_lowercase();
        if a.sess() {
            ha1 = a.h(format!("{ha1}:{}:{}", self.nonce, self.cnonce).as_bytes());
        }
        let ha2 = a.h(format!("{method}:{}", self.uri).as_bytes());
        a.h(format!(
            "{ha1}:{}:{}:{}:auth:{ha2}",
            self.nonce, self.nc_text, self.cnonce
        )
        .as_bytes())
    }

    /// True for the MD5 family, whose HA1 an htdigest file can hold.
    pub fn md5_family(&self) -> bool {
        matches!(self.algorithm, Algorithm::Md5 | Algorithm::Md5Sess)
    }

    /// Compares the client's response with `expected` in constant time.
    pub fn matches(&self, expected: &str) -> bool {
        ct_eq(self.response.as_bytes(), expected.as_bytes())
    }
}

fn digest_len(a: Algorithm) -> usize {
    match a {
        Algorithm::Md5 | Algorithm::Md5Sess => 16,
        Algorithm::Sha256 | Algorithm::Sha256Sess => 32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(
        alg: &str,
        realm: &str,
        nonce: &str,
        cnonce: &str,
        uri: &str,
        resp: &str,
        user: &str,
    ) -> Credentials {
        Credentials::parse(&format!(
            "username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             algorithm={alg}, nc=00000001, cnonce=\"{cnonce}\", qop=auth, response=\"{resp}\""
        ))
        .unwrap()
    }

    /// The RFC 2617 §3.5 example request.
    fn rfc2617_mufasa() -> Credentials {
        creds(
            "MD5",
            "testrealm@host.com",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "0a4f113b",
            "/dir/index.html",
            "6629fae49393a05397450978507c4ef1",
            "Mufasa",
        )
    }

    #[test]
    fn a_client_nonce_is_bounded() {
        let header = |cnonce: &str| {
            format!(
                "username=\"u\", realm=\"r\", nonce=\"n\", uri=\"/\", nc=00000001, \
                 cnonce=\"{cnonce}\", qop=auth, response=\"{}\"",
                "0".repeat(32)
            )
        };
        assert!(Credentials::parse(&header(&"c".repeat(MAX_CNONCE))).is_ok());
        for bad in ["".to_owned(), "c".repeat(MAX_CNONCE + 1)] {
            assert_eq!(
                Credentials::parse(&header(&bad)).unwrap_err(),
                DigestError::Invalid("cnonce"),
                "{} bytes",
                bad.len()
            );
        }
    }

    #[test]
    fn rfc2617_and_rfc7616_vectors() {
        let c = rfc2617_mufasa();
        assert!(c.matches(&c.expected(b"Circle Of Life", "GET")));
        assert!(!c.matches(&c.expected(b"Circle of Life", "GET")));
        assert!(!c.matches(&c.expected(b"Circle Of Life", "POST")));
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let c = creds(
            "MD5",
            "http-auth@example.org",
            nonce,
            cnonce,
            "/dir/index.html",
            "8ca523f5e9506fed4657c9700eebdbec",
            "Mufasa",
        );
        assert!(c.matches(&c.expected(b"Circle of Life", "GET")));
        let c = creds(
            "SHA-256",
            "http-auth@example.org",
            nonce,
            cnonce,
            "/dir/index.html",
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            "Mufasa",
        );
        assert!(c.matches(&c.expected(b"Circle of Life", "GET")));
    }

    /// `rspauth` (RFC 7616 §3.5) for the RFC 2617 and RFC 7616 example
    /// credentials, pinned to values computed independently (Python's
    /// hashlib: H(HA1:nonce:nc:cnonce:auth:H(":" uri))); the same from the
    /// stored HA1 as from the plaintext.
    #[test]
    fn rspauth_uses_a2_without_the_method() {
        let c = rfc2617_mufasa();
        let ha1 = c.ha1(b"Circle Of Life");
        assert_eq!(c.rspauth(&ha1), "376602cfd2f4e8e5e78b948a85263e85");
        assert_eq!(c.rspauth(&ha1.to_ascii_uppercase()), c.rspauth(&ha1));
        assert_ne!(c.rspauth(&ha1), c.expected(b"Circle Of Life", "GET"));
        let c = creds(
            "SHA-256",
            "http-auth@example.org",
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            "/dir/index.html",
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            "Mufasa",
        );
        assert_eq!(
            c.rspauth(&c.ha1(b"Circle of Life")),
            "86d3b25618d41854ca5039a5d7e53ff6355d5134a9b1fb088a78ac3c462195a0"
        );
        // -sess: HA1 takes the nonces in, as for the response.
        let s = creds(
            "SHA-256-sess",
            "R",
            "n0nce",
            "cn",
            "/x",
            &"0".repeat(64),
            "u",
        );
        let a = Algorithm::Sha256Sess;
        let ha1 = a.h(format!("{}:n0nce:cn", a.h(b"u:R:pw")).as_bytes());
        let want = a.h(format!("{ha1}:n0nce:00000001:cn:auth:{}", a.h(b":/x")).as_bytes());
        assert_eq!(s.rspauth(&s.ha1(b"pw")), want);
    }

    #[test]
    fn sess_variants_hash_the_nonces_into_ha1() {
        for (alg, name) in [
            (Algorithm::Md5Sess, "MD5-sess"),
            (Algorithm::Sha256Sess, "SHA-256-sess"),
        ] {
            let c = creds(
                name,
                "R",
                "n0nce",
                "cn",
                "/x",
                &"0".repeat(2 * digest_len(alg)),
                "u",
            );
            let ha1 = alg.h(format!("{}:n0nce:cn", alg.h(b"u:R:pw")).as_bytes());
            let ha2 = alg.h(b"GET:/x");
            let want = alg.h(format!("{ha1}:n0nce:00000001:cn:auth:{ha2}").as_bytes());
            assert_eq!(c.expected(b"pw", "GET"), want, "{name}");
            assert_eq!(
                c.expected_from_ha1(&alg.h(b"u:R:pw"), "GET"),
                want,
                "{name} from HA1"
            );
        }
    }

    #[test]
    fn param_parsing() {
        let p = parse_params(r#"a=1, B="x\"y, z" ,c=tok"#).unwrap();
        assert_eq!(
            p,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x\"y, z".into()),
                ("c".into(), "tok".into())
            ]
        );
        for bad in [
            r#"a="x"#,
            "a",
            "a=",
            "=x",
            "a=1 b=2",
            "a=1, a=2",
            r#"a="x\"#,
            "a=\"\u{0}\" junk",
        ] {
            assert!(parse_params(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credential_rules() {
        let ok = "username=\"u\", realm=\"r\", nonce=\"n\", uri=\"/\", nc=00000001, cnonce=\"c\", qop=auth, response=\"00112233445566778899aabbccddeeff\"";
        assert!(Credentials::parse(ok).is_ok());
        let cases = [
            (
                ok.replace("qop=auth", "qop=auth-int"),
                DigestError::Invalid("qop"),
            ),
            (ok.replace(", qop=auth", ""), DigestError::Missing("qop")),
            (
                ok.replace("nc=00000001", "nc=1"),
                DigestError::Invalid("nc"),
            ),
            (
                ok.replace("nc=00000001", "nc=00000000"),
                DigestError::Invalid("nc"),
            ),
            (
                ok.replace("00112233445566778899aabbccddeeff", "0011"),
                DigestError::Invalid("response"),
            ),
            (
                format!("{ok}, algorithm=SHA-512"),
                DigestError::Invalid("algorithm"),
            ),
            (
                format!(
                    "{}, userhash=true",
                    ok.replace("username=\"u\"", "username*=UTF-8''u")
                ),
                DigestError::Invalid("userhash"),
            ),
            (
                ok.replace("username=\"u\", ", ""),
                DigestError::Missing("username"),
            ),
            (
                ok.replace("realm=\"r\", ", ""),
                DigestError::Missing("realm"),
            ),
        ];
        for (header, want) in cases {
            assert_eq!(Credentials::parse(&header).unwrap_err(), want, "{header}");
        }
        let star = ok.replace("username=\"u\"", "username*=UTF-8''J%C3%A4ger");
        assert_eq!(Credentials::parse(&star).unwrap().username, "Jäger");
        let hashed = Credentials::parse(&format!("{ok}, userhash=true")).unwrap();
        assert!(hashed.userhash);
    }

    /// Fuzz-style: random mutations of a valid header and random bytes never
    /// panic the parser, and whatever parses keeps the invariants checked later.
    #[test]
    fn mutated_headers_never_panic() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7616);
        let valid = "username=\"Mufasa\", realm=\"http-auth@example.org\", nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", uri=\"/dir/index.html\", algorithm=SHA-256, nc=00000001, cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", qop=auth, response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\", opaque=\"x\", userhash=false";
        let alphabet = b"\"\\=, \t%*'abcAZ09\x00\x7f\xc3\xa9";
        for i in 0..20_000 {
            let mut bytes = valid.as_bytes().to_vec();
            for _ in 0..rng.random_range(1..6) {
                let pos = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[pos] = alphabet[rng.random_range(0..alphabet.len())],
                    1 => {
                        bytes.remove(pos);
                    }
                    _ => bytes.insert(pos, alphabet[rng.random_range(0..alphabet.len())]),
                }
            }
            if i % 4 == 0 {
                bytes = (0..rng.random_range(0..80)).map(|_| rng.random()).collect();
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(c) = Credentials::parse(&text) {
                assert!(c.nc > 0);
                assert_eq!(c.response.len(), 2 * digest_len(c.algorithm));
                let _ = c.expected(b"pw", "GET");
            }
        }
    }
}
