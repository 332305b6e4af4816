//! HTTP Digest (RFC 7616): credential parsing, stateless nonces, replay
//! protection, and the response computation. Pure except for the replay memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest as _, Md5};
use rand::RngCore as _;
use sha2::Sha256;

use crate::secret::ct_eq;

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
        Ok(Credentials {
            username,
            realm: need("realm")?,
            nonce: need("nonce")?,
            uri: need("uri")?,
            response: response.to_ascii_lowercase(),
            algorithm,
            cnonce: need("cnonce")?,
            nc,
            nc_text,
            opaque: get("opaque"),
            userhash,
        })
    }

    /// The expected `response` for `password` and `method` (qop=auth).
    pub fn expected(&self, password: &[u8], method: &str) -> String {
        let a = self.algorithm;
        let mut a1 =
            Vec::with_capacity(self.username.len() + self.realm.len() + password.len() + 2);
        a1.extend_from_slice(self.username.as_bytes());
        a1.push(b':');
        a1.extend_from_slice(self.realm.as_bytes());
        a1.push(b':');
        a1.extend_from_slice(password);
        let ha1 = a.h(&a1);
        zeroize::Zeroize::zeroize(&mut a1);
        self.expected_from_ha1(&ha1, method)
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

/// What a nonce check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    /// Ours, for this realm, not expired.
    Fresh,
    /// Ours, but older than the lifetime: answer `stale=true`.
    Stale,
    /// Not ours (or for another realm).
    Invalid,
}

/// Makes and checks self-validating nonces:
/// `base64url(time ‖ random ‖ HMAC-SHA256(key, time ‖ random ‖ realm)[..16])`.
/// No server-side state, so any instance sharing the key accepts them.
pub struct Nonces {
    key: [u8; 32],
    seen: Mutex<Replay>,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nonces")
    }
}

/// Highest `nc` seen per (nonce, cnonce), in two generations so memory stays
/// bounded: when the current one is full it becomes the previous one.
#[derive(Default)]
struct Replay {
    current: HashMap<String, u32>,
    previous: HashMap<String, u32>,
}

/// Entries per replay generation.
const REPLAY_GENERATION: usize = 50_000;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Nonces {
    /// With a random key (nonces die with the process).
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Nonces {
            key,
            seen: Mutex::new(Replay::default()),
        }
    }

    fn mac(&self, body: &[u8], realm: &str) -> [u8; 16] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("any key length");
        m.update(body);
        m.update(realm.as_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// A fresh nonce for `realm`, issued at `now` (seconds since the epoch).
    pub fn issue_at(&self, realm: &str, now: u64) -> String {
        let mut body = [0u8; 16];
        body[..8].copy_from_slice(&now.to_be_bytes());
        rand::rng().fill_bytes(&mut body[8..]);
        let mut raw = body.to_vec();
        raw.extend_from_slice(&self.mac(&body, realm));
        B64URL.encode(raw)
    }

    /// A fresh nonce for `realm`.
    pub fn issue(&self, realm: &str) -> String {
        self.issue_at(realm, now_secs())
    }

    /// Checks a nonce at `now` with `lifetime` seconds.
    pub fn check_at(&self, nonce: &str, realm: &str, lifetime: u64, now: u64) -> NonceState {
        let Ok(raw) = B64URL.decode(nonce) else {
            return NonceState::Invalid;
        };
        if raw.len() != 32 || !ct_eq(&self.mac(&raw[..16], realm), &raw[16..]) {
            return NonceState::Invalid;
        }
        let issued = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        if issued > now + 60 {
            NonceState::Invalid
        } else if now.saturating_sub(issued) > lifetime {
            NonceState::Stale
        } else {
            NonceState::Fresh
        }
    }

    /// Checks a nonce now.
    pub fn check(&self, nonce: &str, realm: &str, lifetime: u64) -> NonceState {
        self.check_at(nonce, realm, lifetime, now_secs())
    }

    /// Records `nc` for (nonce, cnonce); false when it is not above the last
    /// one seen (a replay).
    pub fn accept_nc(&self, nonce: &str, cnonce: &str, nc: u32) -> bool {
        let key = format!("{nonce}\u{0}{cnonce}");
        let mut r = crate::sync::lock(&self.seen);
        let last = r
            .current
            .get(&key)
            .or_else(|| r.previous.get(&key))
            .copied()
            .unwrap_or(0);
        if nc <= last {
            return false;
        }
        if r.current.len() >= REPLAY_GENERATION {
            r.previous = std::mem::take(&mut r.current);
        }
        r.current.insert(key, nc);
        true
    }
}

impl Default for Nonces {
    fn default() -> Self {
        Self::new()
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

    #[test]
    fn rfc2617_and_rfc7616_vectors() {
        let c = creds(
            "MD5",
            "testrealm@host.com",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "0a4f113b",
            "/dir/index.html",
            "6629fae49393a05397450978507c4ef1",
            "Mufasa",
        );
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

    #[test]
    fn nonces_expire_bind_realm_and_refuse_replays() {
        let n = Nonces::new();
        let t = 1_800_000_000;
        let nonce = n.issue_at("R", t);
        assert_eq!(n.check_at(&nonce, "R", 300, t + 10), NonceState::Fresh);
        assert_eq!(n.check_at(&nonce, "R", 300, t + 301), NonceState::Stale);
        assert_eq!(n.check_at(&nonce, "other", 300, t), NonceState::Invalid);
        assert_eq!(
            Nonces::new().check_at(&nonce, "R", 300, t),
            NonceState::Invalid,
            "another key"
        );
        let mut tampered = nonce.clone().into_bytes();
        tampered[3] ^= 1;
        let tampered = String::from_utf8(tampered).unwrap();
        assert_ne!(n.check_at(&tampered, "R", 300, t), NonceState::Fresh);
        assert_eq!(n.check_at("!!", "R", 300, t), NonceState::Invalid);

        assert!(n.accept_nc(&nonce, "c", 1));
        assert!(!n.accept_nc(&nonce, "c", 1), "replay");
        assert!(n.accept_nc(&nonce, "c", 2));
        assert!(!n.accept_nc(&nonce, "c", 2));
        assert!(n.accept_nc(&nonce, "other-cnonce", 1));
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
