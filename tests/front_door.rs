//! The front door: what a new admin types first.
//!
//! `readme_quick_start_logs_in` follows the README's quick start as written,
//! on the paths it names (`/run/nginx-auth-fcgi`, `/var/lib/nginx-auth-fcgi`,
//! the shipped `nginx-conf/nginx.conf` on ports 143/110/587/25, Dovecot on
//! 127.0.0.1:10143). So that it can use those fixed paths and ports on a
//! shared machine, it runs in private mount and network namespaces
//! (`unshare`, as root): `/run` and the nginx and daemon state directories are
//! fresh temp dirs there, loopback is its own, and a pid namespace ends every
//! process the steps started when the script ends.

mod common;

use std::path::Path;
use std::process::Command;

use common::daemon::run_cli;
use common::e2e::{daemon_bin, repo_root, require, require_file};

#[test]
fn user_db_flag_goes_before_or_after_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let db = db.to_str().unwrap();
    let run = |args: &[&str], stdin: &str| {
        let out = run_cli(args, stdin);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["user", "add", "alice@example.org", "--db", db], "pw-a\n");
    run(&["user", "--db", db, "add", "bob@example.org"], "pw-b\n");
    let list = run(&["user", "list", "--db", db], "");
    assert!(
        list.contains("alice@example.org") && list.contains("bob@example.org"),
        "{list}"
    );
}

/// The quick start's script (the README shows this file; the docs test
/// checks they are equal), with the substitutions a test must make, each
/// required to apply exactly once so that a changed README fails here.
fn quick_start_script(bin: &'static str) -> String {
    let script = std::fs::read_to_string(repo_root().join("docs/examples/shell/quickstart.sh"))
        .expect("docs/examples/shell/quickstart.sh");
    type Rule = (fn(&str) -> bool, Box<dyn Fn(&str) -> String>);
    let rules: [Rule; 6] = [
        // tests/run installed the packages; the test requires their programs.
        (
            |l| l.starts_with("apt-get install "),
            Box::new(|_| ": packages".into()),
        ),
        // The binary `cargo run --release` would build and run.
        (
            |l| l.contains("cargo run --release -- "),
            Box::new(move |l| l.replace("cargo run --release -- ", &format!("{bin} "))),
        ),
        // The password the admin types at the prompts.
        (
            |l| l.contains(" user add alice@example.org"),
            Box::new(|l| format!("echo alice-secret | {l}")),
        ),
        (
            |l| l.starts_with("python3 ") && l.contains("imaplib"),
            Box::new(|l| format!("echo alice-secret | {l}")),
        ),
        // No systemd in the namespace: start the servers themselves.
        (
            |l| l.contains("systemctl restart dovecot"),
            Box::new(|l| l.replace("systemctl restart dovecot", "dovecot")),
        ),
        (
            |l| l.contains("systemctl reload nginx"),
            Box::new(|l| l.replace("systemctl reload nginx", "nginx")),
        ),
    ];
    let mut applied = [0usize; 6];
    let mut out = Vec::new();
    for line in script.lines() {
        let mut line = line.to_owned();
        for (i, (hit, change)) in rules.iter().enumerate() {
            if hit(&line) {
                applied[i] += 1;
                line = change(&line);
            }
        }
        out.push(line);
    }
    // serve and user add both go through cargo run.
    assert_eq!(
        applied,
        [1, 2, 1, 1, 1, 1],
        "the quick start changed:\n{script}"
    );
    out.join("\n") + "\n"
}

#[test]
fn readme_quick_start_logs_in() {
    let euid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    assert_eq!(
        euid, 0,
        "the quick-start test needs root (private mount, network and pid namespaces)"
    );
    let unshare = require("unshare", "util-linux");
    require("nginx", "nginx-full");
    require("dovecot", "dovecot-imapd");
    require_file(
        "/usr/lib/dovecot/modules/auth/libdriver_sqlite.so",
        "dovecot-sqlite",
    );
    require("useradd", "passwd");
    require("python3", "python3");
    require("ip", "iproute2");
    // Mount points for the private copies (empty directories on the host).
    for dir in [
        "/var/lib/nginx-auth-fcgi",
        "/var/lib/nginx",
        "/var/log/nginx",
        "/var/vmail",
    ] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path().display().to_string();
    let steps = quick_start_script(daemon_bin());
    let script = format!(
        r#"set -eu
ip link set lo up
# A fresh machine: nothing of ours in /run or the state directories, and an
# /etc of its own (useradd, Dovecot's and nginx's configs write there).
mount -t tmpfs tmpfs /run
cp -a /etc {d}/etc
mkdir {d}/lib-naf {d}/lib-nginx {d}/log-nginx {d}/vmail
mount --bind {d}/etc /etc
mount --bind {d}/lib-naf /var/lib/nginx-auth-fcgi
mount --bind {d}/lib-nginx /var/lib/nginx
mount --bind {d}/log-nginx /var/log/nginx
mount --bind {d}/vmail /var/vmail
# What dovecot-core's postinst makes on a real install, and a machine with
# only dovecot-imapd (this one also has pop3d, whose port 110 nginx takes).
[ -e /etc/dovecot/private/dovecot.pem ] || {{
  cp /etc/ssl/certs/ssl-cert-snakeoil.pem /etc/dovecot/private/dovecot.pem
  cp /etc/ssl/private/ssl-cert-snakeoil.key /etc/dovecot/private/dovecot.key
}}
printf 'protocols = imap\nlog_path = {d}/dovecot.log\n' > /etc/dovecot/local.conf
userdel vmail 2>/dev/null || true
# ---- the README's quick start
{steps}# ---- checks
stat -c 'socket group: %G mode: %a' /run/nginx-auth-fcgi/auth.sock
"#
    );
    std::fs::write(t.path().join("quick-start.sh"), &script).unwrap();
    let out = Command::new(unshare)
        // A pid namespace too: when the script ends, however it ends, the
        // kernel stops every process it started.
        .args(["--mount", "--net", "--pid", "--fork", "--mount-proc"])
        .args(["--kill-child", "--propagation", "private"])
        .arg("sh")
        .arg(t.path().join("quick-start.sh"))
        .current_dir(repo_root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!(
        "script:\n{script}\nstdout:\n{stdout}\nstderr (the daemon's log):\n{stderr}\n\
         nginx error log:\n{}\ndovecot log:\n{}",
        read(&t.path().join("log-nginx/error.log")),
        read(&t.path().join("dovecot.log"))
    );
    assert!(out.status.success(), "{context}");
    assert!(stdout.contains("('OK', [b'"), "{context}");
    assert!(stdout.contains("Logged in"), "{context}");
    assert!(
        stdout.contains("socket group: www-data mode: 660"),
        "{context}"
    );
    for proto in ["imap", "pop3", "smtp"] {
        assert!(
            stderr.contains(&format!("WARN: no upstream for {proto}: using the default")),
            "{context}"
        );
    }
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("user=alice@example.org") && l.contains("result=ok")),
        "{context}"
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
