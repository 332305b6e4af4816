//! Files that hold password hashes are nobody else's business: the SQLite
//! database is created `0600` in a directory created `0700`, owned by the
//! user the daemon runs as, and `check-config` warns about passdb and
//! configuration files that others can read.
//!
//! SQLite creates its `-wal`, `-shm` and `-journal` files with the mode of
//! the database file (and, run as root, its owner), so a database created
//! here keeps its siblings private too.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// A uid and gid to own a created file.
pub type Owner = (u32, u32);

/// Creates `path` as an empty file of mode `0600` if it does not exist (and
/// its missing directories `0700`), then gives what was created to `owner`.
/// Without an `owner`, root gives a new file to the owner of its directory
/// (`user add` run as root beside a daemon that runs as its own user). An
/// existing file is left as it is: its mode and owner are the admin's.
pub fn create_private(path: &Path, owner: Option<Owner>) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dirs(dir, owner)?;
    }
    // Created meanwhile by someone else: theirs.
    let Some(file) = create_new_private(path, owner)? else {
        return Ok(());
    };
    // The umask may only have taken bits away; make it exactly 0600.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
}

/// Creates `path`, which must not exist, mode `0600` from the moment it
/// exists (`O_CREAT|O_EXCL`), and gives it to `owner`; without one, root
/// gives it to the owner of its directory. The owner is set on the open
/// file, not the name, which the directory's owner could have swapped for a
/// symlink meanwhile. `None` when `path` exists (it is not touched); a file
/// that could not be given away is removed again.
pub fn create_new_private(path: &Path, owner: Option<Owner>) -> io::Result<Option<File>> {
    let file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => return Err(e),
    };
    let owner = owner.or_else(|| {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
        let meta = std::fs::metadata(dir).ok()?;
        (nix::unistd::geteuid().is_root() && meta.uid() != 0).then(|| (meta.uid(), meta.gid()))
    });
    if let Some((uid, gid)) = owner {
        if let Err(e) = std::os::unix::fs::fchown(&file, Some(uid), Some(gid)) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    }
    Ok(Some(file))
}

/// `create_dir_all` with mode `0700` for each directory it creates, each
/// given to `owner`.
fn create_dirs(dir: &Path, owner: Option<Owner>) -> io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dirs(parent, owner)?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    chown(dir, owner)
}

fn chown(path: &Path, owner: Option<Owner>) -> io::Result<()> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
        None => Ok(()),
    }
}

/// A warning when `path` can be read by others than its owner and group
/// (`what` names the file's role), else `None`. A file that cannot be
/// examined gives none: opening it reports that.
pub fn readable_by_others(path: &Path, what: &str) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "{what} {} is readable by every user of this machine (mode {:04o}); \
             chmod o-rwx it",
            path.display(),
            mode & 0o7777
        )
    })
}

/// The file a passdb URI reads, when it is a local file (passwd-file,
/// htpasswd, htdigest, sqlite).
pub fn passdb_file(uri: &str) -> Option<&Path> {
    ["passwd-file:", "htpasswd:", "htdigest:", "sqlite:"]
        .iter()
        .find_map(|p| uri.strip_prefix(p))
        .map(|rest| Path::new(rest.split_once('?').map_or(rest, |(p, _)| p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_private_file_and_directories_and_keeps_existing_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("a/b/users.db");
        create_private(&db, None).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&tmp.path().join("a/b")), 0o700);
        assert!(readable_by_others(&db, "passdb").is_none());

        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_private(&db, None).unwrap();
        assert_eq!(mode(&db), 0o644, "an existing file is the admin's");
        let w = readable_by_others(&db, "passdb").unwrap();
        assert!(w.contains("mode 0644") && w.contains("users.db"), "{w}");
    }

    #[test]
    fn passdb_files_of_uris() {
        assert_eq!(
            passdb_file("sqlite:/var/lib/x/users.db"),
            Some(Path::new("/var/lib/x/users.db"))
        );
        assert_eq!(passdb_file("htpasswd:/etc/h"), Some(Path::new("/etc/h")));
        assert_eq!(
            passdb_file("passwd-file:/etc/p?x=1"),
            Some(Path::new("/etc/p"))
        );
        assert_eq!(passdb_file("postgres://h/db"), None);
    }
}
