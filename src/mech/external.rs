//! EXTERNAL (RFC 4422 App. A): the client proved who it is with a TLS client
//! certificate that nginx verified (`ssl_verify_client`); we map that
//! certificate to a user by configured [`Rules`]. Pure, no I/O.
//!
//! What nginx passes (reference §2.2, §2.7): `Auth-SSL-Verify` (`SUCCESS`,
//! `NONE`, `FAILED:reason`), `Auth-SSL-Subject`/`-Issuer` (RFC 2253 strings as
//! OpenSSL's `XN_FLAG_RFC2253` prints them: most specific RDN first, `,`
//! between RDNs, `+` inside one, specials and non-ASCII bytes `\`-escaped, not
//! %-escaped), `Auth-SSL-Fingerprint` (SHA-1 of the DER, 40 lower-case hex)
//! and, with `auth_http_pass_client_cert on`, the PEM as `Auth-SSL-Cert`.
//!
//! Only `Auth-SSL-Verify: SUCCESS` can ever map: `optional`/`optional_no_ca`
//! let unverified or absent certificates through with another value. When
//! the PEM is passed its SHA-1 must equal the fingerprint header (or stands in
//! for it when that is missing). A non-empty authzid (nginx's `Auth-User`)
//! must equal the mapped user: a certificate never lets its holder act as
//! someone else.

use std::fmt;

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

use crate::auth_http::SslInfo;
use crate::secret::ct_eq;

/// Longest user name a certificate may map to.
const MAX_USER: usize = 256;

// ------------------------------------------------------------------ DNs

/// One `type=value` of a DN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ava {
    /// Attribute type as printed (`CN`, `emailAddress`, or a dotted OID).
    pub attr: String,
    /// Value after unescaping; a `#hex` (DER dump) value is kept as printed.
    pub value: Vec<u8>,
}

/// A distinguished name: RDNs in the printed order, each one or more AVAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dn {
    rdns: Vec<Vec<Ava>>,
}

/// Why a DN string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnError {
    /// Empty string or empty RDN/attribute type.
    #[error("empty DN component")]
    Empty,
    /// An attribute without `=`.
    #[error("attribute without `=`")]
    NoEquals,
    /// A `\` not followed by a special character or two hex digits.
    #[error("bad escape")]
    BadEscape,
    /// A character RFC 2253 requires escaped (`"`, `;`, `<`, `>`) appeared raw.
    #[error("unescaped special character")]
    Unescaped,
    /// An attribute type that is neither a name nor a dotted OID.
    #[error("bad attribute type")]
    BadType,
}

impl Dn {
    /// Parses an RFC 2253 string as OpenSSL prints it.
    pub fn parse(s: &str) -> Result<Dn, DnError> {
        let b = s.as_bytes();
        let mut rdns = Vec::new();
        let mut rdn = Vec::new();
        let mut i = 0;
        if b.is_empty() {
            return Err(DnError::Empty);
        }
        loop {
            // Attribute type up to `=`.
            let start = i;
            while i < b.len() && b[i] != b'=' {
                if matches!(b[i], b',' | b'+') {
                    return Err(DnError::NoEquals);
                }
                i += 1;
            }
            if i == b.len() {
                return Err(DnError::NoEquals);
            }
            let attr = s[start..i].trim();
            if attr.is_empty() {
                return Err(DnError::Empty);
            }
            if !attr
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
            {
                return Err(DnError::BadType);
            }
            i += 1;
            // Value up to an unescaped `,` or `+`.
            let mut value = Vec::new();
            while i < b.len() && !matches!(b[i], b',' | b'+') {
                match b[i] {
                    b'\\' => {
                        let next = *b.get(i + 1).ok_or(DnError::BadEscape)?;
                        if b",=+<>#;\\\" ".contains(&next) {
                            value.push(next);
                            i += 2;
                        } else {
                            let hex = b.get(i + 1..i + 3).ok_or(DnError::BadEscape)?;
                            let mut byte = [0u8; 1];
                            hex::decode_to_slice(hex, &mut byte).map_err(|_| DnError::BadEscape)?;
                            value.push(byte[0]);
                            i += 3;
                        }
                    }
                    b'"' | b';' | b'<' | b'>' => return Err(DnError::Unescaped),
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            rdn.push(Ava {
                attr: attr.to_owned(),
                value,
            });
            if i == b.len() {
                rdns.push(rdn);
                return Ok(Dn { rdns });
            }
            if b[i] == b',' {
                rdns.push(std::mem::take(&mut rdn));
            }
            i += 1;
            if i == b.len() {
                return Err(DnError::Empty);
            }
        }
    }

    /// Every value of attribute `attr` (type compared case-insensitively).
    pub fn values<'a>(&'a self, attr: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.rdns
            .iter()
            .flatten()
            .filter(move |a| a.attr.eq_ignore_ascii_case(attr))
            .map(|a| a.value.as_slice())
    }

    /// Same DN: same RDNs in the same order, types compared
    /// case-insensitively, values exactly (after unescaping).
    pub fn same_as(&self, other: &Dn) -> bool {
        self.rdns.len() == other.rdns.len()
            && self.rdns.iter().zip(&other.rdns).all(|(a, b)| {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| x.attr.eq_ignore_ascii_case(&y.attr) && x.value == y.value)
            })
    }
}

// ---------------------------------------------------------------- rules

/// One mapping rule.
#[derive(Clone, PartialEq, Eq)]
pub enum Rule {
    /// This exact certificate (SHA-1 of its DER) is `user`.
    Fingerprint {
        /// The certificate's SHA-1.
        sha1: [u8; 20],
        /// The user it maps to.
        user: String,
    },
    /// The (single) value of subject attribute `attribute` is the user,
    /// optionally only for certificates whose issuer DN is `issuer`.
    Subject {
        /// Attribute type, e.g. `CN` or `emailAddress`.
        attribute: String,
        /// Required issuer DN.
        issuer: Option<Dn>,
    },
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Fingerprint { sha1, user } => {
                write!(f, "fingerprint {} -> {user}", hex::encode(sha1))
            }
            Rule::Subject { attribute, issuer } => {
                write!(f, "subject {attribute}")?;
                if issuer.is_some() {
                    f.write_str(" (issuer pinned)")?;
                }
                Ok(())
            }
        }
    }
}

/// Why an EXTERNAL rule cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// Not a SHA-1 fingerprint.
    #[error("external rule fingerprint `{value}`: expected 40 hex digits (SHA-1)")]
    Fingerprint {
        /// As configured.
        value: String,
        /// Why it does not decode.
        #[source]
        source: hex::FromHexError,
    },
    /// The mapped user name cannot be used.
    #[error("external rule user `{0}`: not a usable user name")]
    User(String),
    /// Not an attribute name.
    #[error("external rule subject_attribute `{0}`: expected a name such as CN or emailAddress")]
    SubjectAttribute(String),
    /// The pinned issuer is not a DN.
    #[error("external rule issuer `{value}`: {source}")]
    Issuer {
        /// As configured.
        value: String,
        /// Why it does not parse.
        #[source]
        source: DnError,
    },
}

impl Rule {
    /// A fingerprint rule from hex (either case, `:` separators allowed, as
    /// `openssl x509 -fingerprint -sha1` prints it).
    pub fn fingerprint(hex_sha1: &str, user: &str) -> Result<Rule, RuleError> {
        let clean: String = hex_sha1.chars().filter(|c| *c != ':').collect();
        let mut sha1 = [0u8; 20];
        hex::decode_to_slice(clean.as_bytes(), &mut sha1).map_err(|source| {
            RuleError::Fingerprint {
                value: hex_sha1.to_owned(),
                source,
            }
        })?;
        valid_user(user.as_bytes()).ok_or_else(|| RuleError::User(user.to_owned()))?;
        Ok(Rule::Fingerprint {
            sha1,
            user: user.to_owned(),
        })
    }

    /// A subject-attribute rule.
    pub fn subject(attribute: &str, issuer: Option<&str>) -> Result<Rule, RuleError> {
        if attribute.is_empty()
            || !attribute
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        {
            return Err(RuleError::SubjectAttribute(attribute.to_owned()));
        }
        let issuer = issuer
            .map(|i| {
                Dn::parse(i).map_err(|source| RuleError::Issuer {
                    value: i.to_owned(),
                    source,
                })
            })
            .transpose()?;
        Ok(Rule::Subject {
            attribute: attribute.to_owned(),
            issuer,
        })
    }
}

/// The configured rules, tried in order; the first that matches decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules(pub Vec<Rule>);

/// Why a certificate did not map to a user (for the audit log only; the
/// client gets the generic invalid-login answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoMatch {
    /// The connection is not TLS.
    #[error("no-tls")]
    NoTls,
    /// `Auth-SSL-Verify` is not `SUCCESS` (or missing).
    #[error("cert-not-verified")]
    NotVerified,
    /// A header nginx sends for a verified certificate is missing or broken.
    #[error("malformed-cert-info: {0}")]
    Malformed(&'static str),
    /// The passed certificate's SHA-1 differs from `Auth-SSL-Fingerprint`.
    #[error("fingerprint-mismatch")]
    FingerprintMismatch,
    /// No rule matched.
    #[error("no-rule-matched")]
    NoRule,
    /// The client asked to act as another user (authzid).
    #[error("authzid-mismatch")]
    AuthzidMismatch,
}

impl Rules {
    /// True when no rule is configured (EXTERNAL is then not offered).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The user `ssl` maps to, checked against the client's `authzid`.
    pub fn map(&self, ssl: Option<&SslInfo>, authzid: &[u8]) -> Result<String, NoMatch> {
        let ssl = ssl.ok_or(NoMatch::NoTls)?;
        if ssl.verify.as_deref() != Some("SUCCESS") {
            return Err(NoMatch::NotVerified);
        }
        let fingerprint = fingerprint(ssl)?;
        let mut subject = None;
        let mut issuer = None;
        for rule in &self.0 {
            let user = match rule {
                Rule::Fingerprint { sha1, user } => {
                    ct_eq(sha1, &fingerprint).then(|| user.as_bytes().to_vec())
                }
                Rule::Subject {
                    attribute,
                    issuer: want,
                } => {
                    let subject = match &mut subject {
                        Some(s) => s,
                        None => subject.insert(parse_header(ssl.subject.as_deref(), "subject")?),
                    };
                    if let Some(want) = want {
                        let got = match &mut issuer {
                            Some(i) => i,
                            None => issuer.insert(parse_header(ssl.issuer.as_deref(), "issuer")?),
                        };
                        if !want.same_as(got) {
                            continue;
                        }
                    }
                    // Exactly one value: a subject with two CNs is ambiguous.
                    let mut values = subject.values(attribute);
                    match (values.next(), values.next()) {
                        (Some(v), None) => Some(v.to_vec()),
                        _ => None,
                    }
                }
            };
            let Some(user) = user else { continue };
            let user = valid_user(&user).ok_or(NoMatch::NoRule)?;
            if !authzid.is_empty() && authzid != user.as_bytes() {
                return Err(NoMatch::AuthzidMismatch);
            }
            return Ok(user);
        }
        Err(NoMatch::NoRule)
    }
}

fn parse_header(v: Option<&str>, what: &'static str) -> Result<Dn, NoMatch> {
    Dn::parse(v.ok_or(NoMatch::Malformed(what))?).map_err(|_| NoMatch::Malformed(what))
}

/// The certificate's SHA-1: from `Auth-SSL-Fingerprint`, cross-checked with
/// (or, if that is missing, computed from) the PEM in `Auth-SSL-Cert`.
fn fingerprint(ssl: &SslInfo) -> Result<[u8; 20], NoMatch> {
    let header = match &ssl.fingerprint {
        Some(h) => {
            let mut out = [0u8; 20];
            hex::decode_to_slice(h.as_bytes(), &mut out)
                .map_err(|_| NoMatch::Malformed("fingerprint"))?;
            Some(out)
        }
        None => None,
    };
    let from_pem = match &ssl.cert {
        Some(pem) => Some(pem_sha1(pem).ok_or(NoMatch::Malformed("certificate"))?),
        None => None,
    };
    match (header, from_pem) {
        (Some(h), Some(p)) if h != p => Err(NoMatch::FingerprintMismatch),
        (Some(h), _) => Ok(h),
        (None, Some(p)) => Ok(p),
        (None, None) => Err(NoMatch::Malformed("fingerprint")),
    }
}

/// SHA-1 of the DER inside the first PEM `CERTIFICATE` block.
pub fn pem_sha1(pem: &[u8]) -> Option<[u8; 20]> {
    let text = std::str::from_utf8(pem).ok()?;
    let begin = "-----BEGIN CERTIFICATE-----";
    let start = text.find(begin)? + begin.len();
    let len = text[start..].find("-----END CERTIFICATE-----")?;
    let b64: String = text[start..start + len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .ok()?;
    if der.is_empty() {
        return None;
    }
    Some(Sha1::digest(&der).into())
}

/// A mapped value usable as a user name: UTF-8, 1..=256 bytes, no control
/// characters.
fn valid_user(v: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(v).ok()?;
    (!s.is_empty() && s.len() <= MAX_USER && !s.chars().any(char::is_control)).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dn(s: &str) -> Dn {
        Dn::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn vals(d: &Dn, a: &str) -> Vec<String> {
        d.values(a)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    #[test]
    fn dn_parsing_as_openssl_prints_it() {
        let d = dn("emailAddress=alice@example.org,CN=alice,O=Example\\, Inc.,C=DE");
        assert_eq!(vals(&d, "cn"), ["alice"]);
        assert_eq!(vals(&d, "EMAILADDRESS"), ["alice@example.org"]);
        assert_eq!(vals(&d, "O"), ["Example, Inc."]);
        // Multi-valued RDN, escaped specials, hex-escaped UTF-8, `=` raw in a value.
        let d = dn("CN=a\\+b+UID=x=y,OU=\\\"q\\\"\\;\\<\\>\\\\,L=M\\C3\\BCnchen,ST=\\ lead\\ ");
        assert_eq!(vals(&d, "CN"), ["a+b"]);
        assert_eq!(vals(&d, "UID"), ["x=y"]);
        assert_eq!(vals(&d, "OU"), ["\"q\";<>\\"]);
        assert_eq!(vals(&d, "L"), ["München"]);
        assert_eq!(vals(&d, "ST"), [" lead "]);
        // Unknown types as dotted OIDs with a DER dump.
        let d = dn("1.2.3.4=#0c03616263,CN=x");
        assert_eq!(vals(&d, "1.2.3.4"), ["#0c03616263"]);
        // Empty values exist.
        assert_eq!(vals(&dn("CN=,O=x"), "CN"), [""]);
    }

    #[test]
    fn dn_parsing_edge_cases_are_errors() {
        for bad in [
            "", "CN", "CN=a,", "CN=a+", ",CN=a", "=a", "CN=a\\", "CN=a\\4", "CN=a\\zz", "CN=\"a\"",
            "CN=a;O=b", "C N=a", "CN=a,O",
        ] {
            assert!(Dn::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn dn_equality_ignores_type_case_only() {
        assert!(dn("CN=Test CA,O=Ex").same_as(&dn("cn=Test CA,o=Ex")));
        assert!(!dn("CN=Test CA,O=Ex").same_as(&dn("CN=test ca,O=Ex")));
        assert!(!dn("CN=Test CA,O=Ex").same_as(&dn("O=Ex,CN=Test CA")));
        assert!(!dn("CN=Test CA,O=Ex").same_as(&dn("CN=Test CA")));
        assert!(!dn("CN=a+O=b").same_as(&dn("CN=a,O=b")));
    }

    const FP: &str = "0123456789abcdef0123456789abcdef01234567";

    fn ssl(verify: &str, subject: &str) -> SslInfo {
        SslInfo {
            verify: Some(verify.into()),
            subject: Some(subject.into()),
            issuer: Some("CN=Test CA,O=Example".into()),
            fingerprint: Some(FP.into()),
            ..SslInfo::default()
        }
    }

    fn rules() -> Rules {
        Rules(vec![
            Rule::fingerprint(&FP.to_uppercase(), "carol").unwrap(),
            Rule::subject("CN", Some("CN=Test CA,O=Example")).unwrap(),
        ])
    }

    #[test]
    fn fingerprint_rule_first_then_subject() {
        let r = rules();
        assert_eq!(
            r.map(Some(&ssl("SUCCESS", "CN=alice")), b""),
            Ok("carol".into())
        );
        let mut other = ssl("SUCCESS", "CN=alice,O=Example");
        other.fingerprint = Some("f".repeat(40));
        assert_eq!(r.map(Some(&other), b""), Ok("alice".into()));
        assert_eq!(r.map(Some(&other), b"alice"), Ok("alice".into()));
        assert_eq!(r.map(Some(&other), b"bob"), Err(NoMatch::AuthzidMismatch));
        // Wrong issuer: the subject rule does not apply.
        other.issuer = Some("CN=Evil CA,O=Example".into());
        assert_eq!(r.map(Some(&other), b""), Err(NoMatch::NoRule));
        // Two CNs: ambiguous, no match.
        other.issuer = Some("CN=Test CA,O=Example".into());
        other.subject = Some("CN=alice,CN=bob".into());
        assert_eq!(r.map(Some(&other), b""), Err(NoMatch::NoRule));
        // Colons as `openssl x509 -fingerprint` prints them.
        let colons: Vec<String> = FP
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect();
        assert!(Rule::fingerprint(&colons.join(":"), "carol").is_ok());
        assert!(Rule::fingerprint("abcd", "carol").is_err());
        assert!(Rule::fingerprint(FP, "").is_err());
        assert!(Rule::subject("C N", None).is_err());
        assert!(Rule::subject("CN", Some("CN=a,")).is_err());
    }

    #[test]
    fn only_success_can_ever_map() {
        let r = rules();
        for verify in [
            "NONE",
            "FAILED:unable to get local issuer certificate",
            "success",
            "",
        ] {
            assert_eq!(
                r.map(Some(&ssl(verify, "CN=alice")), b""),
                Err(NoMatch::NotVerified),
                "{verify}"
            );
        }
        let mut missing = ssl("SUCCESS", "CN=alice");
        missing.verify = None;
        assert_eq!(r.map(Some(&missing), b""), Err(NoMatch::NotVerified));
        assert_eq!(r.map(None, b""), Err(NoMatch::NoTls));
    }

    #[test]
    fn broken_headers_never_map() {
        let r = rules();
        let mut s = ssl("SUCCESS", "CN=alice");
        s.fingerprint = Some("xyz".into());
        assert_eq!(r.map(Some(&s), b""), Err(NoMatch::Malformed("fingerprint")));
        s.fingerprint = None;
        assert_eq!(r.map(Some(&s), b""), Err(NoMatch::Malformed("fingerprint")));
        let subject_only = Rules(vec![Rule::subject("CN", None).unwrap()]);
        let mut s = ssl("SUCCESS", "CN=al\\");
        s.fingerprint = Some("f".repeat(40));
        assert_eq!(
            subject_only.map(Some(&s), b""),
            Err(NoMatch::Malformed("subject"))
        );
        // A control character in the mapped value is not a user name.
        s.subject = Some("CN=al\\0Aice".into());
        assert_eq!(subject_only.map(Some(&s), b""), Err(NoMatch::NoRule));
        s.subject = Some("CN=".into());
        assert_eq!(subject_only.map(Some(&s), b""), Err(NoMatch::NoRule));
    }

    #[test]
    fn passed_pem_must_agree_with_the_fingerprint() {
        // Any DER works for the hash; this is not parsed as X.509.
        let der = b"0\x03\x02\x01\x05";
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
        let sha: [u8; 20] = Sha1::digest(der).into();
        assert_eq!(pem_sha1(pem.as_bytes()), Some(sha));
        let r = Rules(vec![Rule::fingerprint(&hex::encode(sha), "dave").unwrap()]);
        let mut s = ssl("SUCCESS", "CN=x");
        s.cert = Some(pem.into_bytes());
        assert_eq!(r.map(Some(&s), b""), Err(NoMatch::FingerprintMismatch));
        s.fingerprint = Some(hex::encode(sha));
        assert_eq!(r.map(Some(&s), b""), Ok("dave".into()));
        s.fingerprint = None;
        assert_eq!(r.map(Some(&s), b""), Ok("dave".into()));
        s.cert = Some(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----".to_vec());
        assert_eq!(r.map(Some(&s), b""), Err(NoMatch::Malformed("certificate")));
    }
}
