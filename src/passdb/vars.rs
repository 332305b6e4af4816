//! The user variables of query and filter templates (`%u`, `%n`, `%d` and
//! their long forms), shared by the SQL `password_query` and the LDAP
//! `filter=`: what a placeholder means, and how one is read.

/// A value a template can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `%u`, `%{user}`: the login as given.
    User,
    /// `%n`, `%{username}`: the part before the last `@` (all of it without `@`).
    Local,
    /// `%d`, `%{domain}`: the part after the last `@` (empty without `@`).
    Domain,
    /// `%{hash}`, `update_query` only: the new hash a rehash writes.
    NewHash,
    /// `%{old_hash}`, `update_query` only: the stored value it replaces.
    OldHash,
}

impl Var {
    /// This variable's value for `user`.
    pub fn value(self, user: &str) -> &str {
        match (self, user.rsplit_once('@')) {
            (Var::User, _) => user,
            (Var::Local, Some((local, _))) => local,
            (Var::Local, None) => user,
            (Var::Domain, Some((_, domain))) => domain,
            (Var::Domain, None) => "",
            // Refused outside `update_query`, whose binding supplies them.
            (Var::NewHash | Var::OldHash, _) => "",
        }
    }
}

/// A placeholder that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarError {
    /// `%{` without its `}`.
    #[error("unterminated `%{{` in {place}")]
    Unterminated {
        /// `password_query` or `filter`.
        place: &'static str,
    },
    /// `%x` or `%{name}` with an unknown letter or name.
    #[error(
        "unknown variable `%{name}` in {place} (known: %u %n %d, %{{user}} %{{username}} \
         %{{domain}}; %% for a literal %)"
    )]
    Unknown {
        /// What followed the `%` (`x`, `{name}`, or nothing at the end).
        name: String,
        /// `password_query` or `filter`.
        place: &'static str,
    },
}

/// Reads the placeholder at the start of `after`, the text just after a `%`:
/// the variable (`None` for `%%`, a literal `%`) and how many characters of
/// `after` it took.
pub fn placeholder(after: &[char], place: &'static str) -> Result<(Option<Var>, usize), VarError> {
    let var = match after.first() {
        Some('%') => return Ok((None, 1)),
        Some('u') => Var::User,
        Some('n') => Var::Local,
        Some('d') => Var::Domain,
        Some('{') => {
            let name: String = after[1..].iter().take_while(|c| **c != '}').collect();
            if 1 + name.chars().count() >= after.len() {
                return Err(VarError::Unterminated { place });
            }
            let var = match name.as_str() {
                "user" => Var::User,
                "username" => Var::Local,
                "domain" => Var::Domain,
                "hash" if place == "update_query" => Var::NewHash,
                "old_hash" if place == "update_query" => Var::OldHash,
                _ => {
                    return Err(VarError::Unknown {
                        name: format!("{{{name}}}"),
                        place,
                    })
                }
            };
            return Ok((Some(var), name.chars().count() + 2));
        }
        other => {
            return Err(VarError::Unknown {
                name: other.map(char::to_string).unwrap_or_default(),
                place,
            })
        }
    };
    Ok((Some(var), 1))
}
