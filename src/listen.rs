//! Where connections come from: a `--listen` spec (unix socket path, inherited
//! fd, TCP address, systemd) or, with none given, the process start-up
//! conventions; plus `sd_notify` readiness.
//!
//! Conventions followed (`nginx-auth-protocols.md` §5.10):
//! * systemd socket activation, `sd_listen_fds(3)`
//!   (<https://www.freedesktop.org/software/systemd/man/latest/sd_listen_fds.html>):
//!   `LISTEN_PID` must be our pid, fds are `3..3+LISTEN_FDS` (read by
//!   [`sd_notify::listen_fds`]); the variables are unset so children do not
//!   inherit them.
//! * FastCGI `FCGI_LISTENSOCK_FILENO` = 0 (spec §2.2,
//!   <https://fastcgi-archives.github.io/FastCGI_Specification.html>): spawn-fcgi
//!   binds, chmods and chowns the socket and passes it as fd 0.
//! * `sd_notify(3)`: `READY=1` once listening, `RELOADING=1` then `READY=1`
//!   around a reload, `STOPPING=1` on shutdown.
//!
//! Every inherited fd is checked to be a *listening stream* socket
//! (`SO_TYPE`, `SO_ACCEPTCONN`) of family unix or inet before it is adopted, so
//! `fd:N` pointing at a file, a tty or a connected socket is an error rather than
//! a server that never accepts anything.
//!
//! User and group lookup, the privilege drop and the socket checks go through
//! `nix`. This module holds the crate's only `unsafe`: borrowing an inherited
//! fd number to inspect it, then adopting it.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType};
use nix::sys::socket::{SockaddrLike, SockaddrStorage};
use nix::unistd::{Gid, Group, Uid, User};

/// `FCGI_LISTENSOCK_FILENO`.
const FCGI_LISTENSOCK_FILENO: RawFd = 0;

/// One `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenSpec {
    /// `unix:PATH`: bind a unix socket at PATH (created, chmod/chown'ed by us).
    Unix(PathBuf),
    /// `fd:N`: adopt an inherited listening socket (unix or TCP).
    Fd(i32),
    /// `tcp:HOST:PORT`: bind TCP, e.g. `tcp:127.0.0.1:9000`, `tcp:[::1]:9000`.
    Tcp(String),
    /// `systemd`: every socket passed through `LISTEN_FDS`.
    Systemd,
}

impl FromStr for ListenSpec {
    type Err = ListenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &'static str| ListenError::BadSpec {
            spec: s.to_owned(),
            reason,
        };
        if s == "systemd" {
            Ok(ListenSpec::Systemd)
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty path"));
            }
            Ok(ListenSpec::Unix(PathBuf::from(path)))
        } else if let Some(n) = s.strip_prefix("fd:") {
            match n.parse::<i32>() {
                Ok(fd) if fd >= 0 => Ok(ListenSpec::Fd(fd)),
                _ => Err(bad("fd must be a non-negative integer")),
            }
        } else if let Some(addr) = s.strip_prefix("tcp:") {
            match addr.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(ListenSpec::Tcp(addr.to_owned()))
                }
                _ => Err(bad("expected tcp:HOST:PORT")),
            }
        } else {
            Err(bad("expected unix:PATH, fd:N, tcp:HOST:PORT or systemd"))
        }
    }
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenSpec::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenSpec::Fd(n) => write!(f, "fd:{n}"),
            ListenSpec::Tcp(a) => write!(f, "tcp:{a}"),
            ListenSpec::Systemd => f.write_str("systemd"),
        }
    }
}

/// How a unix socket we bind is set up so the nginx workers can connect.
/// Ignored for inherited sockets: whoever created them set them up.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Permission bits of the socket file; nginx needs write permission.
    pub mode: u32,
    /// Owner, as a user name or numeric uid; `None` keeps ours.
    pub owner: Option<String>,
    /// Group, as a group name or numeric gid; `None` keeps ours.
    pub group: Option<String>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            mode: 0o660,
            owner: None,
            group: None,
        }
    }
}

/// A socket to accept FastCGI connections on.
#[derive(Debug)]
pub enum Listener {
    /// Unix stream socket.
    Unix(tokio::net::UnixListener),
    /// TCP socket.
    Tcp(tokio::net::TcpListener),
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listener::Unix(l) => match l.local_addr() {
                Ok(a) => match a.as_pathname() {
                    Some(p) => write!(f, "unix:{}", p.display()),
                    None => f.write_str("unix:(unnamed)"),
                },
                Err(_) => f.write_str("unix:?"),
            },
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => write!(f, "tcp:{a}"),
                Err(_) => f.write_str("tcp:?"),
            },
        }
    }
}

/// Why no listener could be set up. Each message names the spec, path or fd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// A `--listen` value that does not parse.
    #[error("invalid listen spec {spec:?}: {reason}")]
    BadSpec {
        /// The value as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Nothing to listen on.
    #[error(
        "no listener: no --listen given, no LISTEN_FDS from systemd, and fd 0 is not a listening socket"
    )]
    NoListener,
    /// `systemd` was asked for but the process was not socket-activated.
    #[error("listen spec systemd: LISTEN_FDS/LISTEN_PID are not set for this process")]
    NoSystemdSockets,
    /// An inherited fd that is not a listening unix/TCP stream socket.
    #[error("fd {fd}: {reason}")]
    BadFd {
        /// The fd number.
        fd: RawFd,
        /// What it is instead.
        reason: String,
    },
    /// The same fd named twice; adopting it twice would close it twice.
    #[error("fd {0} given more than once")]
    DuplicateFd(RawFd),
    /// A live server already accepts on this socket path.
    #[error("{0}: socket is in use by another process")]
    InUse(PathBuf),
    /// Something that is not a socket exists at the path; we do not delete it.
    #[error("{0}: exists and is not a socket")]
    NotASocket(PathBuf),
    /// Owner not found in the user database.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// Group not found in the group database.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path or address.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ListenError {
    let what = what.into();
    move |source| ListenError::Io { what, source }
}

/// Opens what `specs` say, in order. With no spec: the systemd sockets
/// (`LISTEN_FDS` for our `LISTEN_PID`), else fd 0 if it is a listening socket,
/// else [`ListenError::NoListener`].
///
/// Unix sockets are bound after removing a stale socket file (only if
/// connecting to it is refused, i.e. no server is behind it), creating the parent
/// directory, then chmod to `opts.mode` and chown to `opts.owner`/`opts.group`.
/// Socket files created here are removed by [`crate::server::run`] when it ends.
///
/// Must run inside a tokio runtime (the listeners register with its reactor),
/// and, because it may unset `LISTEN_*`, before other threads read the
/// environment. An `fd:N` must be an fd nothing else in the process owns.
pub fn open(specs: &[ListenSpec], opts: &SocketOptions) -> Result<Vec<Listener>, ListenError> {
    let mut listeners = Vec::new();
    let result = open_into(specs, opts, &mut listeners);
    if result.is_err() {
        // Do not leave socket files of a half-started daemon behind.
        for l in &listeners {
            if let Listener::Unix(u) = l {
                remove_created_socket(u);
            }
        }
        result?;
    }
    Ok(listeners)
}

fn open_into(
    specs: &[ListenSpec],
    opts: &SocketOptions,
    out: &mut Vec<Listener>,
) -> Result<(), ListenError> {
    if specs.is_empty() {
        let fds = take_systemd_fds()?;
        if !fds.is_empty() {
            for fd in fds {
                out.push(adopt_fd(fd)?);
            }
            return Ok(());
        }
        // fd 0 that is not a listening socket (the usual case) is no error
        // of its own: there is just nothing to listen on.
        return match adopt_fd(FCGI_LISTENSOCK_FILENO) {
            Ok(l) => {
                out.push(l);
                Ok(())
            }
            Err(ListenError::BadFd { .. }) => Err(ListenError::NoListener),
            Err(e) => Err(e),
        };
    }

    let mut adopted: Vec<RawFd> = Vec::new();
    let mut adopt_once = |fd: RawFd, out: &mut Vec<Listener>| {
        if adopted.contains(&fd) {
            return Err(ListenError::DuplicateFd(fd));
        }
        out.push(adopt_fd(fd)?);
        adopted.push(fd);
        Ok(())
    };
    for spec in specs {
        match spec {
            ListenSpec::Unix(path) => out.push(bind_unix(path, opts)?),
            ListenSpec::Tcp(addr) => {
                let l = std::net::TcpListener::bind(addr.as_str())
                    .map_err(io_err(format!("bind tcp:{addr}")))?;
                out.push(tcp_to_tokio(l).map_err(io_err(format!("tcp:{addr}")))?);
            }
            ListenSpec::Fd(fd) => adopt_once(*fd, out)?,
            ListenSpec::Systemd => {
                let fds = take_systemd_fds()?;
                if fds.is_empty() {
                    return Err(ListenError::NoSystemdSockets);
                }
                for fd in fds {
                    adopt_once(fd, out)?;
                }
            }
        }
    }
    Ok(())
}

/// Reads and unsets `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`. Returns no fds
/// unless `LISTEN_PID` names this process: the variables may have been
/// inherited from a socket-activated parent. The fds returned are already
/// close-on-exec.
fn take_systemd_fds() -> Result<Vec<RawFd>, ListenError> {
    let fds = sd_notify::listen_fds().map(Iterator::collect);
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Edition 2021: remove_var is safe; the caller runs before threads
        // that read the environment exist (see `open`).
        std::env::remove_var(var);
    }
    fds.map_err(io_err("LISTEN_PID/LISTEN_FDS from systemd"))
}

/// Socket family of a listening socket we can serve.
enum Family {
    Unix,
    Inet,
}

/// Checks, without taking ownership, that `fd` is a listening stream socket of
/// family unix or inet/inet6.
fn check_listening_socket(fd: BorrowedFd<'_>) -> Result<Family, ListenError> {
    let bad = |reason: String| ListenError::BadFd {
        fd: fd.as_raw_fd(),
        reason,
    };
    match getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        // EINVAL: a socket type nix has no name for, so not a stream either.
        Ok(_) | Err(Errno::EINVAL) => return Err(bad("not a stream socket".into())),
        Err(e) => return Err(bad(format!("not a socket ({})", io::Error::from(e)))),
    }
    let accepting = getsockopt(&fd, sockopt::AcceptConn).map_err(|e| {
        bad(format!(
            "cannot query SO_ACCEPTCONN ({})",
            io::Error::from(e)
        ))
    })?;
    if !accepting {
        return Err(bad("socket is not listening".into()));
    }
    let addr = getsockname::<SockaddrStorage>(fd.as_raw_fd())
        .map_err(|e| bad(format!("getsockname failed ({})", io::Error::from(e))))?;
    match addr.family() {
        Some(AddressFamily::Unix) => Ok(Family::Unix),
        Some(AddressFamily::Inet | AddressFamily::Inet6) => Ok(Family::Inet),
        other => Err(bad(format!("unsupported socket family {other:?}"))),
    }
}

/// Takes ownership of an inherited listening socket.
fn adopt_fd(fd: RawFd) -> Result<Listener, ListenError> {
    // SAFETY: the borrow lives only for the checks below. If `fd` is not open,
    // each call fails with EBADF and nothing is kept; if it is, the contract
    // of `open` is that nothing else in the process owns it, so it stays open
    // for the borrow.
    let inherited = unsafe { BorrowedFd::borrow_raw(fd) };
    let family = check_listening_socket(inherited)?;
    // Children we might spawn must not inherit the listener.
    fcntl(inherited, FcntlArg::F_GETFD)
        .and_then(|flags| {
            let flags = FdFlag::from_bits_retain(flags) | FdFlag::FD_CLOEXEC;
            fcntl(inherited, FcntlArg::F_SETFD(flags))
        })
        .map_err(|e| ListenError::Io {
            what: format!("fd {fd}: set FD_CLOEXEC"),
            source: e.into(),
        })?;
    // SAFETY: the fd is open (the checks above succeeded on it) and is a
    // listening socket handed to this process (by systemd, spawn-fcgi or
    // `fd:N`). The contract of `open` is that nothing else in the process owns
    // it, and `open_into` refuses to adopt the same number twice, so this
    // OwnedFd is its only owner and closes it exactly once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let what = format!("fd {fd}");
    match family {
        Family::Unix => {
            let l = std::os::unix::net::UnixListener::from(owned);
            l.set_nonblocking(true).map_err(io_err(what.clone()))?;
            tokio::net::UnixListener::from_std(l)
                .map(Listener::Unix)
                .map_err(io_err(what))
        }
        Family::Inet => tcp_to_tokio(std::net::TcpListener::from(owned)).map_err(io_err(what)),
    }
}

fn tcp_to_tokio(l: std::net::TcpListener) -> io::Result<Listener> {
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l).map(Listener::Tcp)
}

/// Socket files bound by this process, by path, with the inode they had:
/// the server removes them at exit, but not if another instance has since
/// replaced the file with its own socket.
static CREATED: Mutex<Option<HashMap<PathBuf, (u64, u64)>>> = Mutex::new(None);

fn bind_unix(path: &Path, opts: &SocketOptions) -> Result<Listener, ListenError> {
    let shown = path.display().to_string();
    // Resolve names first: a typo in the group should not leave a socket behind.
    let uid = opts.owner.as_deref().map(lookup_uid).transpose()?;
    let gid = opts.group.as_deref().map(lookup_gid).transpose()?;
    let (uid, gid) = (uid.map(Uid::as_raw), gid.map(Gid::as_raw));

    remove_stale_socket(path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    }
    let listener =
        tokio::net::UnixListener::bind(path).map_err(io_err(format!("bind unix:{shown}")))?;
    // Between bind and chmod the file has umask permissions; nothing is
    // accepted before `open` returns, and nginx retries, so the window is
    // harmless.
    let meta = std::fs::symlink_metadata(path).map_err(io_err(format!("stat {shown}")))?;
    remember_created(path, &meta);
    let set_up = || -> Result<(), ListenError> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(opts.mode))
            .map_err(io_err(format!("chmod {:o} {shown}", opts.mode)))?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::chown(path, uid, gid).map_err(io_err(format!("chown {shown}")))?;
        }
        Ok(())
    };
    if let Err(e) = set_up() {
        remove_created_socket(&listener);
        return Err(e);
    }
    Ok(Listener::Unix(listener))
}

/// Removes a socket file left by a previous run, but only if no process accepts
/// on it, and never anything that is not a socket.
fn remove_stale_socket(path: &Path) -> Result<(), ListenError> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("stat {shown}"))(e)),
        Ok(m) if !m.file_type().is_socket() => Err(ListenError::NotASocket(path.to_owned())),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(ListenError::InUse(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                log::info!("removing stale socket {shown}");
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        Err(io_err(format!("remove stale socket {shown}"))(e))
                    }
                    _ => Ok(()),
                }
            }
            Err(e) => Err(io_err(format!("probe existing socket {shown}"))(e)),
        },
    }
}

fn remember_created(path: &Path, meta: &std::fs::Metadata) {
    let mut created = crate::sync::lock(&CREATED);
    created
        .get_or_insert_with(HashMap::new)
        .insert(path.to_owned(), (meta.dev(), meta.ino()));
}

/// Removes the socket file of `listener` if this process created it and it is
/// still the same file. Called by the server when it stops accepting.
pub(crate) fn remove_created_socket(listener: &tokio::net::UnixListener) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let Some(path) = addr.as_pathname() else {
        return;
    };
    let entry = {
        let mut created = crate::sync::lock(&CREATED);
        created.as_mut().and_then(|m| m.remove(path))
    };
    let Some((dev, ino)) = entry else {
        return;
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.dev() == dev && m.ino() == ino => {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("cannot remove socket {}: {e}", path.display());
            }
        }
        _ => log::debug!("socket {} was replaced; leaving it", path.display()),
    }
}

/// A uid from a user name or a number.
pub(crate) fn lookup_uid(name: &str) -> Result<Uid, ListenError> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(Uid::from_raw(n));
    }
    match User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid),
        _ => Err(ListenError::UnknownUser(name.to_owned())),
    }
}

/// A gid from a group name or a number.
pub(crate) fn lookup_gid(name: &str) -> Result<Gid, ListenError> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(Gid::from_raw(n));
    }
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid),
        _ => Err(ListenError::UnknownGroup(name.to_owned())),
    }
}

/// Drops root privileges for good once the sockets are bound: supplementary
/// groups cleared, then `group` (default: the group named like the user),
/// then `user`. Verifies that root cannot be regained. glibc applies
/// set*id to every thread of the process, runtime workers included.
pub fn drop_privileges(user: &str, group: Option<&str>) -> Result<(), ListenError> {
    let uid = lookup_uid(user)?;
    let gid = lookup_gid(group.unwrap_or(user))?;
    let fail = |what: &'static str| {
        move |e: Errno| ListenError::Io {
            what: format!("dropping privileges ({what})"),
            source: e.into(),
        }
    };
    nix::unistd::setgroups(&[]).map_err(fail("setgroups"))?;
    nix::unistd::setgid(gid).map_err(fail("setgid"))?;
    nix::unistd::setuid(uid).map_err(fail("setuid"))?;
    if !uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(ListenError::Io {
            what: "dropping privileges (root could be regained)".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        });
    }
    log::info!("running as uid {uid}, gid {gid}");
    Ok(())
}

/// Tells systemd (Type=notify) that we accept connections. A no-op without
/// `NOTIFY_SOCKET`.
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        log::warn!("sd_notify READY=1 failed: {e}");
    }
}

/// Tells systemd that a configuration reload has started (`RELOADING=1`, with
/// `MONOTONIC_USEC` as `Type=notify-reload` wants); [`notify_ready`] ends it.
/// A no-op without `NOTIFY_SOCKET`.
pub fn notify_reloading() {
    let mut states = vec![sd_notify::NotifyState::Reloading];
    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    if let Err(e) = sd_notify::notify(&states) {
        log::warn!("sd_notify RELOADING=1 failed: {e}");
    }
}

/// Tells systemd that we are shutting down. A no-op without `NOTIFY_SOCKET`.
pub fn notify_stopping() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        log::warn!("sd_notify STOPPING=1 failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn parse_specs() {
        assert_eq!(
            "unix:/run/x.sock".parse::<ListenSpec>().unwrap(),
            ListenSpec::Unix("/run/x.sock".into())
        );
        assert_eq!("fd:0".parse::<ListenSpec>().unwrap(), ListenSpec::Fd(0));
        assert_eq!(
            "tcp:127.0.0.1:9000".parse::<ListenSpec>().unwrap(),
            ListenSpec::Tcp("127.0.0.1:9000".into())
        );
        assert_eq!(
            "tcp:[::1]:9000".parse::<ListenSpec>().unwrap(),
            ListenSpec::Tcp("[::1]:9000".into())
        );
        assert_eq!(
            "systemd".parse::<ListenSpec>().unwrap(),
            ListenSpec::Systemd
        );
        for bad in [
            "",
            "unix:",
            "fd:-1",
            "fd:x",
            "tcp:9000",
            "tcp::9000",
            "tcp:h:99999",
            "/run/x.sock",
        ] {
            assert!(bad.parse::<ListenSpec>().is_err(), "{bad:?} accepted");
        }
        for s in ["unix:/a b", "fd:3", "tcp:localhost:1", "systemd"] {
            assert_eq!(s.parse::<ListenSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn numeric_and_unknown_ids() {
        assert_eq!(lookup_uid("1234").unwrap().as_raw(), 1234);
        assert_eq!(lookup_gid("0").unwrap().as_raw(), 0);
        assert_eq!(lookup_uid("root").unwrap().as_raw(), 0);
        assert!(matches!(
            lookup_uid("no-such-user-xyzzy"),
            Err(ListenError::UnknownUser(_))
        ));
        assert!(matches!(
            lookup_gid("no-such-group-xyzzy"),
            Err(ListenError::UnknownGroup(_))
        ));
    }

    #[test]
    fn non_sockets_are_not_adopted() {
        let f = tempfile::tempfile().unwrap();
        let e = check_listening_socket(f.as_fd()).err().unwrap();
        assert!(e.to_string().contains("not a socket"), "{e}");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = check_listening_socket(a.as_fd()).err().unwrap();
        assert!(e.to_string().contains("not listening"), "{e}");
    }
}
