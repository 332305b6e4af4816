//! `serve --user/--group`: the daemon binds its socket as root, then runs as
//! an unprivileged user for good, and still answers.

use std::os::unix::fs::PermissionsExt;

use crate::common::daemon::Daemon;
use crate::common::fcgi;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

fn status_ids(pid: u32, field: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    line[field.len()..]
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn serves_as_nobody_after_binding_as_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test drops privileges and must run as root (as tests/run does)"
    );
    let dir = Daemon::open_dir();
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:{PLAIN}wonderland::::::\n").unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    let passdb = format!("passwd-file:{}", users.display());
    let mut daemon = Daemon::start(
        dir,
        [
            "--socket-mode",
            "0666",
            "--user",
            "nobody",
            "--group",
            "nogroup",
            "--log",
            "stderr",
            "--passdb",
            &passdb,
            "--upstream",
            "imap=127.0.0.1:143",
        ],
    );
    let mut stream = UnixStream::connect(daemon.sock()).await.unwrap();
    let pairs = fcgi::mail_pairs(b"alice", b"wonderland", b"192.0.2.1");
    stream
        .write_all(&fcgi::request(1, 0, &pairs, b""))
        .await
        .unwrap();
    let reply = fcgi::read_reply(&mut stream, 1).await;
    assert_eq!(reply.header("Auth-Status").as_deref(), Some("OK"));
    assert_eq!(reply.header("Auth-Port").as_deref(), Some("143"));
    // The socket exists (and takes connections into its backlog) before the
    // daemon drops privileges; it answers only after: check the ids now.
    let pid = daemon.pid();
    assert_eq!(
        status_ids(pid, "Uid:"),
        vec![65534; 4],
        "real/effective/saved/fs uid"
    );
    assert_eq!(
        status_ids(pid, "Gid:"),
        vec![65534; 4],
        "real/effective/saved/fs gid"
    );
    assert!(
        status_ids(pid, "Groups:").is_empty(),
        "supplementary groups cleared"
    );

    let status = daemon.terminate();
    let log = daemon.log();
    assert!(status.success(), "{log}");
    assert!(log.contains("running as uid 65534"));
}
