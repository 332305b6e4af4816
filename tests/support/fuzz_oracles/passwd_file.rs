//! Oracle of the `passwd_file` fuzz target: the Dovecot passwd-file parser.
//! Included with `#[path]` by the target and by `tests/fuzz_regressions.rs`
//! (see there); public API only.

use nginx_auth_fcgi::passdb::passwd_file;
use nginx_auth_fcgi::scheme::Scheme;

/// `passwd_file` target: the bytes are a whole passwd-file, parsed without DNS
/// (`host=` takes IP literals only), with and without a default scheme.
///
/// Checks: no user name is empty or holds `:` or a line break; each user is
/// the first field of a line of the file; `port=` is never 0; `user=` is never
/// empty and holds no whitespace or control character (it becomes the
/// `Auth-User` header); and no problem message repeats a distinctive password
/// (see [`passwords_and_quotable_parts`]) outside the user names, scheme names
/// and extra fields it may quote.
pub fn check_passwd_file(data: &[u8]) {
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    let first_fields: std::collections::HashSet<&[u8]> = lines
        .iter()
        .filter_map(|l| l.iter().position(|b| *b == b':').map(|i| &l[..i]))
        .collect();
    for default in [None, Some(Scheme::Plain)] {
        let (users, problems) = passwd_file::parse_without_dns(data, default);
        assert!(users.len() <= lines.len());
        for (name, entry) in &users {
            assert!(!name.is_empty());
            assert!(
                !name.contains([':', '\n']),
                "user name {name:?} holds a separator"
            );
            assert_eq!(entry.principal.user, *name);
            assert!(
                first_fields.contains(name.as_bytes()),
                "user {name:?} is not the first field of any line"
            );
            assert_ne!(entry.principal.upstream_port, Some(0));
            if let Some(b) = &entry.principal.backend_user {
                assert!(
                    !b.is_empty()
                        && !b
                            .bytes()
                            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control()),
                    "user= value {b:?} cannot be sent as Auth-User"
                );
            }
        }
        let (secrets, quotable) = passwords_and_quotable_parts(&lines);
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        for p in &problems {
            if !secrets.iter().any(|s| contains(p.as_bytes(), s)) {
                continue;
            }
            // Cut out everything a message may legitimately quote (user
            // names, scheme names, extra fields); what is left is template
            // text and line numbers, which a distinctive password cannot be
            // part of. A '\n' keeps the pieces apart, as no password holds one.
            let mut rest = p.as_bytes().to_vec();
            for q in &quotable {
                rest = replace_all(&rest, q, b"\n");
            }
            for secret in &secrets {
                assert!(!contains(&rest, secret), "problem {p:?} repeats a password");
            }
        }
    }
}

fn replace_all(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// The distinctive passwords of the file (the part of the password field
/// after a `{SCHEME}` prefix, at least 4 bytes, with a byte no fixed message
/// text has: `~`, `^`, `|` or non-ASCII), and every part of the file a
/// problem message may quote, longest first.
fn passwords_and_quotable_parts<'a>(lines: &[&'a [u8]]) -> (Vec<&'a [u8]>, Vec<&'a [u8]>) {
    let mut secrets = Vec::new();
    let mut quotable: Vec<&[u8]> = Vec::new();
    for line in lines {
        let mut fields = line.splitn(8, |b| *b == b':');
        let Some(user) = fields.next() else { continue };
        quotable.push(user);
        let Some(field) = fields.next() else { continue };
        let secret = match field.strip_prefix(b"{") {
            Some(f) => match f.iter().position(|b| *b == b'}') {
                Some(close) => {
                    quotable.push(&f[..close]);
                    &f[close + 1..]
                }
                // No scheme, so nothing is parsed as a password; the extra
                // fields below are still quotable.
                None => &[][..],
            },
            None => field,
        };
        if secret.len() >= 4 && secret.iter().any(|b| b"~^|".contains(b) || *b >= 0x80) {
            secrets.push(secret);
        }
        if let Some(extra) = fields.nth(5) {
            for token in extra.split(u8::is_ascii_whitespace) {
                quotable.push(token);
                if let Some(eq) = token.iter().position(|b| *b == b'=') {
                    quotable.push(&token[eq + 1..]);
                }
            }
        }
    }
    quotable.retain(|q| !q.is_empty());
    quotable.sort_by_key(|q| std::cmp::Reverse(q.len()));
    (secrets, quotable)
}
