//! The user filter (`filter=`): a string filter with `%u`/`%n`/`%d`
//! placeholders whose values are escaped with [`ldap3::ldap_escape`]
//! (RFC 4515 §3), so a user name can never change the filter's structure.

use crate::passdb::vars::{placeholder, Var, VarError};

/// One piece of a filter template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A user filter with `%u`/`%n`/`%d` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterTemplate(Vec<Piece>);

/// A `filter=` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A placeholder we do not know.
    #[error(transparent)]
    Var(#[from] VarError),
    /// Not an LDAP string filter (RFC 4515).
    #[error("filter `{0}` is not a valid LDAP filter")]
    Invalid(String),
}

impl FilterTemplate {
    /// Parses `text`; unknown placeholders and filters that do not parse are refused.
    pub fn parse(text: &str) -> Result<FilterTemplate, FilterError> {
        let chars: Vec<char> = text.chars().collect();
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        while i < chars.len() {
            if chars[i] != '%' {
                lit.push(chars[i]);
                i += 1;
                continue;
            }
            let (var, len) = placeholder(&chars[i + 1..], "filter")?;
            i += 1 + len;
            let Some(var) = var else {
                lit.push('%');
                continue;
            };
            if !lit.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Var(var));
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        let t = FilterTemplate(pieces);
        if ldap3::parse_filter(t.expand("user@example.org")).is_err() {
            return Err(FilterError::Invalid(text.to_owned()));
        }
        Ok(t)
    }

    /// The filter for `user`, every value escaped.
    pub fn expand(&self, user: &str) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => out.push_str(&ldap3::ldap_escape(v.value(user))),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passdb::ldap::DEFAULT_FILTER;
    use ldap3::ldap_escape;

    #[test]
    fn filter_values_are_escaped_per_rfc_4515() {
        assert_eq!(ldap_escape("alice"), "alice");
        assert_eq!(ldap_escape("*"), "\\2a");
        assert_eq!(ldap_escape(")(uid=*"), "\\29\\28uid=\\2a");
        assert_eq!(ldap_escape("admin)(|(uid=*"), "admin\\29\\28|\\28uid=\\2a");
        assert_eq!(ldap_escape("a\\b"), "a\\5cb");
        // RFC 4515 requires only NUL, `*`, `(`, `)` and `\` escaped; other
        // control characters may stand as they are (the hand-written escaper
        // this replaced also escaped them: `\0a` for the newline).
        assert_eq!(ldap_escape("a\0b\n"), "a\\00b\n");
        assert_eq!(ldap_escape("jürgen@ex.org"), "jürgen@ex.org");
        // Every escaped filter still parses as one equality match.
        let t = FilterTemplate::parse(DEFAULT_FILTER).unwrap();
        for evil in [
            "*",
            ")(uid=*",
            "admin)(|(uid=*",
            "\\",
            "\0",
            "(",
            "a*b",
            "a\nb",
        ] {
            let f = t.expand(evil);
            assert!(ldap3::parse_filter(&f).is_ok(), "{f}");
        }
    }

    #[test]
    fn templates_know_user_local_and_domain() {
        let t = FilterTemplate::parse("(&(uid=%n)(dom=%d)(mail=%{user})(x=100%%))").unwrap();
        assert_eq!(
            t.expand("a*b@ex.org"),
            "(&(uid=a\\2ab)(dom=ex.org)(mail=a\\2ab@ex.org)(x=100%))"
        );
        for bad in [
            "(uid=%x)",
            "(uid=%{nope})",
            "(uid=%{user",
            "(uid=%u",
            "uid=%u)",
        ] {
            assert!(FilterTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
