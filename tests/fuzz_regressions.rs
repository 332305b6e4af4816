//! Replays, on stable, every input the fuzz targets keep: the minimised corpus
//! of each target (`fuzz/corpus/<target>/`) and every crash reproducer
//! (`tests/fuzz-regressions/<target>/`), through the same invariant checks the
//! targets run. So CI checks them without nightly or cargo-fuzz, and a fixed
//! crash cannot come back unnoticed.
//!
//! The checks, one file per target in `tests/support/fuzz_oracles/`, are not
//! part of the library: this test and each `fuzz/fuzz_targets/<target>.rs`
//! compile the file as a module of their own (`#[path = ...] mod`). Each
//! `check_*` function takes arbitrary bytes, runs them through one parser the
//! way the daemon does, and panics when the parser panics **or** when its
//! result breaks an invariant: "no panic" alone would let a parser that
//! silently returns garbage pass.

use std::path::{Path, PathBuf};

#[path = "support/fuzz_oracles/auth_http_request.rs"]
mod auth_http_request;
#[path = "support/fuzz_oracles/digest_authorization.rs"]
mod digest_authorization;
#[path = "support/fuzz_oracles/fastcgi_records.rs"]
mod fastcgi_records;
#[path = "support/fuzz_oracles/passwd_file.rs"]
mod passwd_file;

type Check = fn(&[u8]);

/// Every file of `dir`, sorted; none if the directory does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Runs `check` on every corpus file and reproducer of `target`; fails naming
/// each file whose check panicked. An empty corpus fails too: a replay that
/// replays nothing would pass silently.
fn replay(target: &str, check: Check) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = files(&root.join("fuzz/corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is empty or missing: nothing to replay"
    );
    let reproducers = files(&root.join("tests/fuzz-regressions").join(target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&reproducers) {
        let data = std::fs::read(path).expect("readable corpus file");
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail their invariants: {failed:?}",
        failed.len(),
        corpus.len() + reproducers.len()
    );
}

#[test]
fn fastcgi_records_corpus() {
    replay("fastcgi_records", fastcgi_records::check_fastcgi_records);
}

#[test]
fn auth_http_request_corpus() {
    replay(
        "auth_http_request",
        auth_http_request::check_auth_http_request,
    );
}

#[test]
fn digest_authorization_corpus() {
    replay(
        "digest_authorization",
        digest_authorization::check_digest_authorization,
    );
}

#[test]
fn passwd_file_corpus() {
    replay("passwd_file", passwd_file::check_passwd_file);
}

/// fuzz/passwd_file found `user=` accepting a control character (here a
/// vertical tab, which `split_ascii_whitespace` does not split on): the user
/// loaded fine and every login then failed when the reply could not be
/// rendered. Now the line is refused at load time, with a problem that names
/// the user and not the value.
#[test]
fn passwd_file_user_field_with_a_control_character_is_refused() {
    use nginx_auth_fcgi::passdb::passwd_file::parse_without_dns;
    let reproducer = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz-regressions/passwd_file/user-field-control-character"),
    )
    .expect("reproducer");
    assert!(reproducer.ends_with(b"user=\x0b"));
    let (users, problems) = parse_without_dns(&reproducer, None);
    assert!(users.is_empty(), "{:?}", users.keys());
    assert!(
        problems
            .iter()
            .any(|p| p == "line 2: user al: user= holds a control character, skipped"),
        "{problems:?}"
    );
    for bad in ["a\0b", "\x7f", "x\x0by"] {
        let text = format!("bob:{{PLAIN}}pw::::::user={bad}\n");
        let (users, problems) = parse_without_dns(text.as_bytes(), None);
        assert!(
            users.is_empty() && problems.len() == 1,
            "{bad:?}: {problems:?}"
        );
    }
    let (users, problems) =
        parse_without_dns(b"bob:{PLAIN}pw::::::user=b\xc3\xb6b@internal\n", None);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        users["bob"].principal.backend_user.as_deref(),
        Some("b\u{f6}b@internal")
    );
}
