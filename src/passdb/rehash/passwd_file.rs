//! The rehash writer of a passwd-file (opt-in, `rehash_passwd_file`): the
//! file is rewritten with only the user's password field changed (line
//! order, comments, the other fields and the extra fields stay byte for
//! byte), into a temporary file in the same directory with the original's
//! mode and owner, which is then renamed over it. Readers, Dovecot and the
//! daemon's own file watcher alike, see the old file or the new one, never
//! half of one; the watcher loads the new one within its check interval.
//!
//! Compare-and-set: the line must still hold the hash the worker read, and
//! the file must still be what was read just before the rename; otherwise
//! nothing is written (a concurrent edit wins). An editor writing in the
//! moment between that last check and the rename can still lose its edit;
//! the window is a few microseconds against the editor's whole write.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::{Store, StoreError};

/// Writes new hashes into a passwd-file.
#[derive(Debug)]
pub struct PasswdFileStore {
    path: PathBuf,
}

/// The line of `user` (as the passdb picks it: the first non-comment line
/// with that name) and its password field's byte range in `text`.
fn find(text: &[u8], user: &str) -> Option<std::ops::Range<usize>> {
    let mut start = 0;
    for raw in text.split(|b| *b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let here = start;
        start += raw.len() + 1;
        if line.starts_with(b"#") || line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut fields = line.splitn(3, |b| *b == b':');
        if fields.next() != Some(user.as_bytes()) {
            continue;
        }
        let password = fields.next()?;
        let from = here + user.len() + 1;
        return Some(from..from + password.len());
    }
    None
}

/// `text` with `user`'s password field `old` replaced by `new`; `None` when
/// the user has no line or the field is no longer `old`.
pub fn rewrite_line(text: &[u8], user: &str, old: &str, new: &str) -> Option<Vec<u8>> {
    let range = find(text, user)?;
    if &text[range.clone()] != old.as_bytes() || new.contains([':', '\n', '\r']) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() + new.len());
    out.extend_from_slice(&text[..range.start]);
    out.extend_from_slice(new.as_bytes());
    out.extend_from_slice(&text[range.end..]);
    Some(out)
}

impl PasswdFileStore {
    /// The passwd-file at `path`.
    pub fn new(path: &Path) -> PasswdFileStore {
        PasswdFileStore {
            path: path.to_owned(),
        }
    }

    fn err(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::File {
            what,
            path: self.path.clone(),
            source,
        }
    }

    fn read(&self) -> Result<Vec<u8>, StoreError> {
        fs::read(&self.path).map_err(self.err("read"))
    }

    /// Writes `text` beside the file with its mode and owner, then renames
    /// it over the file if the file is still `was`.
    fn swap(&self, was: &[u8], text: &[u8]) -> Result<bool, StoreError> {
        let meta = fs::metadata(&self.path).map_err(self.err("stat"))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.rehash.{}", std::process::id()));
        let written = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // Owner first (only root may give a file away; keeping our own
            // uid/gid is a no-op), then the mode, then the contents.
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
            f.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            f.write_all(text)?;
            f.sync_all()
        })();
        let swapped = written.map_err(self.err("write")).and_then(|()| {
            if self.read()? != was {
                return Ok(false);
            }
            fs::rename(&tmp, &self.path).map_err(self.err("rename"))?;
            // The rename itself, durable.
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(true)
        });
        if !matches!(swapped, Ok(true)) {
            let _ = fs::remove_file(&tmp);
        }
        swapped
    }
}

use std::os::unix::fs::OpenOptionsExt as _;

impl Store for PasswdFileStore {
    fn current(&self, user: &str) -> Result<Option<String>, StoreError> {
        let text = self.read()?;
        Ok(find(&text, user).and_then(|r| String::from_utf8(text[r].to_vec()).ok()))
    }

    fn replace(&self, user: &str, old: &str, new: &str) -> Result<bool, StoreError> {
        let text = self.read()?;
        match rewrite_line(&text, user, old, new) {
            Some(out) => self.swap(&text, &out),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# users of example.org\n\
        alice:{PLAIN}a::::::\n\
        \n\
        bob:{MD5-CRYPT}$1$old$x:1000:1000:Bob B:/home/bob:/bin/sh:host=10.0.0.5 port=143 user=b\r\n\
        # bob:{PLAIN}commented\n\
        carol:{SHA}y::::::nologin\n\
        bob:{PLAIN}second-line-ignored\n";

    #[test]
    fn rewrites_one_field_and_keeps_everything_else() {
        let out = rewrite_line(
            FILE.as_bytes(),
            "bob",
            "{MD5-CRYPT}$1$old$x",
            "{ARGON2ID}$new",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            FILE.replace("bob:{MD5-CRYPT}$1$old$x:", "bob:{ARGON2ID}$new:")
        );
        // Compare-and-set: a field that is not the old value any more.
        assert!(rewrite_line(FILE.as_bytes(), "bob", "{PLAIN}other", "x").is_none());
        assert!(rewrite_line(FILE.as_bytes(), "nobody", "x", "y").is_none());
        // A prefix of a name is not the name; comments are not lines.
        assert!(rewrite_line(FILE.as_bytes(), "bo", "x", "y").is_none());
        assert!(rewrite_line(FILE.as_bytes(), "# bob", "{PLAIN}commented", "y").is_none());
        // A value that would break the line is refused.
        assert!(rewrite_line(FILE.as_bytes(), "alice", "{PLAIN}a", "a:b").is_none());
        let out = rewrite_line(FILE.as_bytes(), "carol", "{SHA}y", "{SSHA}z").unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("\ncarol:{SSHA}z::::::nologin\n"));
    }

    #[test]
    fn the_file_keeps_its_mode_owner_and_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        fs::write(&path, FILE).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        // As root (the test suite's usual case), give the file away first, so
        // keeping the owner is not keeping our own uid.
        // (A file we created is owned by our effective uid.)
        if fs::metadata(&path).unwrap().uid() == 0 {
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        }
        let before = fs::metadata(&path).unwrap();
        let store = PasswdFileStore::new(&path);
        assert_eq!(
            store.current("bob").unwrap().as_deref(),
            Some("{MD5-CRYPT}$1$old$x")
        );
        assert_eq!(store.current("nobody").unwrap(), None);
        assert!(store
            .replace("bob", "{MD5-CRYPT}$1$old$x", "{ARGON2ID}$new")
            .unwrap());
        let after = fs::metadata(&path).unwrap();
        assert_eq!(after.mode() & 0o7777, 0o640);
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        assert_ne!(after.ino(), before.ino(), "a new file, renamed over");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            FILE.replace("{MD5-CRYPT}$1$old$x", "{ARGON2ID}$new")
        );
        // A concurrent edit (the old value is gone) wins; no temp file stays.
        assert!(!store
            .replace("bob", "{MD5-CRYPT}$1$old$x", "{ARGON2ID}$other")
            .unwrap());
        assert_eq!(
            store.current("bob").unwrap().as_deref(),
            Some("{ARGON2ID}$new")
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["users"]);
        // The passdb parser reads the rewritten file as before.
        let (users, problems) =
            crate::passdb::passwd_file::parse_without_dns(&fs::read(&path).unwrap(), None);
        assert_eq!(users.len(), 3, "{problems:?}");
    }
}
