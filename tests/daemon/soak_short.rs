//! The soak in short (20 s): `tests/soak/driver.py` drives mixed traffic
//! (good logins on kept and fresh connections, wrong passwords from many
//! client addresses, unknown users, malformed records, over-limit params,
//! ABORT_REQUEST, dropped connections) at the daemon built for this test run,
//! with the throttle on. Asserts behaviour only: no wrong verdict, no
//! protocol surprise, the daemon alive, and its idle fd count back at the
//! baseline. Memory growth is judged by the long run (`tests/soak/run`),
//! not here: 20 s of a debug build says nothing about a plateau.

use std::process::Command;

#[test]
fn short_soak_has_no_wrong_verdict_and_no_fd_leak() {
    let python = crate::common::e2e::require("python3", "python3");
    let driver = crate::common::e2e::repo_root().join("tests/soak/driver.py");
    let out = Command::new(python)
        .arg(&driver)
        .args(["--bin", crate::common::e2e::daemon_bin()])
        .args(["--seconds", "20", "--sample", "5", "--workers", "4"])
        .output()
        .expect("run tests/soak/driver.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in the driver output"))
            .to_owned()
    };
    for (prefix, want) in [
        ("wrong verdicts:", "wrong verdicts: 0"),
        ("protocol anomalies:", "protocol anomalies: 0"),
        ("daemon alive", "daemon alive at the end: True"),
        (
            "passwords in the daemon log:",
            "passwords in the daemon log: 0",
        ),
    ] {
        assert_eq!(line(prefix), want);
    }
    // "fds: baseline N, at the end (idle) N, ..."
    let fds = line("fds:");
    let nums: Vec<u64> = fds
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(nums[0], nums[1], "fd leak: {fds}");
    let total: u64 = line("total requests:")
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(total > 100, "only {total} requests driven");
    assert!(out.status.success(), "driver verdict: {}", line("verdict:"));
}
