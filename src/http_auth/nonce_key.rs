//! The Digest nonce key shared by several instances (`nonce_key_file`,
//! `--nonce-key-file`), and `nginx-auth-fcgi nonce-key init`, which makes one.
//!
//! # Format
//! The file holds the key as **hexadecimal text**: at least 64 hex digits
//! (32 bytes), an even number of them, upper or lower case, optionally
//! followed by one line end (`\n` or `\r\n`). Nothing else: no spaces, no
//! comments, no second line. `nonce-key init` writes 64 lower-case digits
//! and a `\n`; `openssl rand -hex 32 > FILE` makes the same. Hex keeps a
//! stray `echo passphrase > FILE` from passing as a key, and a key whose
//! bytes are all equal (`000…`) is refused as not random.
//!
//! The file must be a regular file that neither group nor others may read
//! or write (mode `0600` or `0400`); it is checked on the opened file, so
//! what is checked is what is read. `serve`, `check-config` and every
//! SIGHUP reload read it; a reload that finds it broken is refused and the
//! key in use stays.

use std::fs::OpenOptions;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore as _;

use crate::secret::Secret;

/// Fewest key bytes.
pub const MIN_KEY_BYTES: usize = 32;
/// Largest file read (a key of 2 KiB is already absurd).
const MAX_FILE_BYTES: u64 = 4096;
/// Where `nonce-key init` writes without a path: beside the default SQLite
/// database, in the daemon's own directory.
pub const DEFAULT_PATH: &str = "/var/lib/nginx-auth-fcgi/nonce.key";

/// Why a key file was refused. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum NonceKeyError {
    /// Could not be opened or read.
    #[error("nonce_key_file {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Not a regular file.
    #[error("nonce_key_file {}: not a regular file", .0.display())]
    NotAFile(PathBuf),
    /// Group or others may read or write it.
    #[error(
        "nonce_key_file {}: mode {mode:04o} lets group or others read or write the key; \
         `chmod 600` it (owned by the user the daemon runs as)",
        .path.display()
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not the hex format (see the module docs).
    #[error(
        "nonce_key_file {}: {what}; expected only hex digits (at least {} of them, e.g. \
         from `nginx-auth-fcgi nonce-key init` or `openssl rand -hex 32`) and one line end",
        .path.display(), 2 * MIN_KEY_BYTES
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// Fewer than [`MIN_KEY_BYTES`] bytes.
    #[error(
        "nonce_key_file {}: the key is {bytes} bytes; at least {MIN_KEY_BYTES} are needed",
        .path.display()
    )]
    TooShort {
        /// The file.
        path: PathBuf,
        /// The bytes it holds.
        bytes: usize,
    },
}

/// A nonce key read from its file.
pub struct NonceKey(Secret);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(…)")
    }
}

impl NonceKey {
    /// Reads and checks `path` (see the module docs for what is refused).
    pub fn read(path: &Path) -> Result<NonceKey, NonceKeyError> {
        let io = |source| NonceKeyError::Io {
            path: path.to_owned(),
            source,
        };
        // Non-blocking: a FIFO in its place must not hang start-up or a
        // reload before the regular-file check refuses it.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(NonceKeyError::NotAFile(path.to_owned()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(NonceKeyError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(io)?;
        let text = Secret::new(text);
        if meta.size() > MAX_FILE_BYTES || text.expose().len() as u64 > MAX_FILE_BYTES {
            return Err(NonceKeyError::Format {
                path: path.to_owned(),
                what: "the file is too large",
            });
        }
        parse(text.expose()).map_err(|e| match e {
            ParseError::Format(what) => NonceKeyError::Format {
                path: path.to_owned(),
                what,
            },
            ParseError::TooShort(bytes) => NonceKeyError::TooShort {
                path: path.to_owned(),
                bytes,
            },
        })
    }

    /// The key bytes (for the nonce MAC only).
    pub fn expose(&self) -> &[u8] {
        self.0.expose()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ParseError {
    Format(&'static str),
    TooShort(usize),
}

/// The key in `text` (the file's bytes).
fn parse(text: &[u8]) -> Result<NonceKey, ParseError> {
    let body = text
        .strip_suffix(b"\r\n")
        .or_else(|| text.strip_suffix(b"\n"))
        .unwrap_or(text);
    if body.is_empty() {
        return Err(ParseError::Format("the file is empty"));
    }
    if !body.iter().all(u8::is_ascii_hexdigit) {
        return Err(ParseError::Format(
            "it holds something other than hex digits",
        ));
    }
    if body.len() % 2 != 0 {
        return Err(ParseError::Format("an odd number of hex digits"));
    }
    let bytes = Secret::new(hex::decode(body).map_err(|_| ParseError::Format("not hex"))?);
    let b = bytes.expose();
    if b.len() < MIN_KEY_BYTES {
        return Err(ParseError::TooShort(b.len()));
    }
    if b.iter().all(|&x| x == b[0]) {
        return Err(ParseError::Format("all its bytes are equal (not random)"));
    }
    Ok(NonceKey(bytes))
}

/// What `nonce-key init` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// A new key was written.
    Created,
    /// The file existed and was left alone.
    Exists,
}

/// Creates `path` with a fresh random key, mode `0600` from the moment it
/// exists (`O_CREAT|O_EXCL`, never a chmod afterwards), unless it exists:
/// then it is not touched, not even read. Run as root, the new file is given
/// to the owner of its directory (the daemon's own directory), so a daemon
/// that drops privileges can read it on reload.
pub fn init(path: &Path) -> io::Result<Init> {
    let Some(mut file) = crate::passdb::private_file::create_new_private(path, None)? else {
        return Ok(Init::Exists);
    };
    let mut key = [0u8; MIN_KEY_BYTES];
    rand::rng().fill_bytes(&mut key);
    let text = Secret::new(format!("{}\n", hex::encode(key)).into_bytes());
    zeroize::Zeroize::zeroize(&mut key);
    let written = file.write_all(text.expose()).and_then(|()| file.sync_all());
    drop(text);
    if let Err(e) = written {
        // Half a key is no key: do not leave it for the daemon to refuse.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(Init::Created)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";

    fn write(dir: &Path, name: &str, text: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn the_format_is_hex_of_at_least_32_bytes_and_one_line_end() {
        for ok in [GOOD.to_owned(), format!("{GOOD}\n"), format!("{GOOD}\r\n")] {
            let k = parse(ok.as_bytes()).unwrap();
            assert_eq!(k.expose(), hex::decode(GOOD).unwrap(), "{ok:?}");
        }
        let long = format!("{GOOD}{GOOD}");
        assert_eq!(parse(long.as_bytes()).unwrap().expose().len(), 64);
    }

    #[test]
    fn malformed_keys_are_refused() {
        let short = &GOOD[..62];
        assert!(matches!(
            parse(short.as_bytes()),
            Err(ParseError::TooShort(31))
        ));
        for bad in [
            String::new(),
            "\n".to_owned(),
            format!("{GOOD}\n\n"),
            format!(" {GOOD}"),
            format!("{GOOD} # key"),
            format!("{GOOD}0"),
            GOOD.replace('a', "g"),
            "0".repeat(64),
            "ab".repeat(40),
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(ParseError::Format(_))),
                "{bad:?}"
            );
        }
        // Raw random bytes are not the format either.
        assert!(matches!(parse(&[0x9c; 40][..]), Err(ParseError::Format(_))));
    }

    #[test]
    fn files_others_can_reach_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(dir.path(), "ok.key", GOOD.as_bytes(), 0o600);
        assert!(NonceKey::read(&ok).is_ok());
        let ro = write(dir.path(), "ro.key", GOOD.as_bytes(), 0o400);
        assert!(NonceKey::read(&ro).is_ok());
        for mode in [0o640, 0o604, 0o620, 0o602, 0o644, 0o660] {
            let p = write(dir.path(), &format!("{mode:o}.key"), GOOD.as_bytes(), mode);
            let e = NonceKey::read(&p).unwrap_err();
            assert!(matches!(e, NonceKeyError::Exposed { .. }), "{mode:o}: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains(&p.display().to_string()) && msg.contains("chmod 600"),
                "{msg}"
            );
        }
        let short = write(dir.path(), "short.key", &GOOD.as_bytes()[..40], 0o600);
        let e = NonceKey::read(&short).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "nonce_key_file {}: the key is 20 bytes; at least 32 are needed",
                short.display()
            )
        );
        let text = write(
            dir.path(),
            "text.key",
            b"my secret passphrase, long enough!!\n",
            0o600,
        );
        let e = NonceKey::read(&text).unwrap_err();
        assert!(e.to_string().contains("other than hex digits"), "{e}");
        assert!(e.to_string().contains(&text.display().to_string()), "{e}");
        let missing = dir.path().join("missing.key");
        let e = NonceKey::read(&missing).unwrap_err();
        assert!(matches!(e, NonceKeyError::Io { .. }), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        assert!(matches!(
            NonceKey::read(dir.path()),
            Err(NonceKeyError::NotAFile(_))
        ));
        let huge = write(dir.path(), "huge.key", &[b'a'; 5000], 0o600);
        assert!(matches!(
            NonceKey::read(&huge),
            Err(NonceKeyError::Format { .. })
        ));
    }

    #[test]
    fn init_creates_0600_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nonce.key");
        assert_eq!(init(&p).unwrap(), Init::Created);
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.len(), 65, "{text:?}");
        assert!(text.ends_with('\n'));
        let first = NonceKey::read(&p).unwrap();
        assert_eq!(first.expose().len(), 32);

        assert_eq!(init(&p).unwrap(), Init::Exists);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text, "left alone");
        // An existing file is not touched even when it is no key at all.
        let other = write(dir.path(), "other", b"not a key", 0o644);
        assert_eq!(init(&other).unwrap(), Init::Exists);
        assert_eq!(std::fs::read(&other).unwrap(), b"not a key");
        assert_eq!(
            std::fs::metadata(&other).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let q = dir.path().join("second.key");
        init(&q).unwrap();
        assert_ne!(
            NonceKey::read(&q).unwrap().expose(),
            first.expose(),
            "every key is fresh"
        );
        assert!(init(&dir.path().join("no/such/dir/k")).is_err());
    }
}
