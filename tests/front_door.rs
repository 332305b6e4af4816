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

use common::e2e::{daemon_bin, repo_root, require};

/// The README's quick start: the fenced block below `## Quick start`.
fn quick_start_block() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let (_, rest) = readme
        .split_once("## Quick start")
        .expect("README.md has a `## Quick start` section");
    let (_, block) = rest.split_once("```").expect("a fenced block in the quick start");
    let (block, _) = block.split_once("\n```").expect("the fenced block ends");
    block.to_owned()
}

#[test]
fn user_db_flag_goes_before_or_after_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let db = db.to_str().unwrap();
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(daemon_bin())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
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
    assert!(list.contains("alice@example.org") && list.contains("bob@example.org"), "{list}");
}

#[test]
fn readme_quick_start_logs_in() {
    let euid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    assert_eq!(
        euid, 0,
        "the quick-start test needs root (private mount and network namespaces)"
    );
    let unshare = require("unshare", "util-linux");
    require("nginx", "nginx-full");
    require("dovecot", "dovecot-imapd");
    require("python3", "python3");
    require("ip", "iproute2");
    let block = quick_start_block();
    // The steps below are the README's; fail when the README changes them.
    for step in [
        "cargo run --release -- serve --log stderr",
        "cargo run --release -- user add alice@example.org",
        "port = 10143",
        "nginx-conf/nginx.conf /etc/nginx/nginx.conf",
        "imaplib",
    ] {
        assert!(
            block.contains(step),
            "README quick start lacks `{step}`:\n{block}"
        );
    }
    for dir in ["/var/lib/nginx-auth-fcgi", "/var/lib/nginx", "/var/log/nginx"] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for sub in ["run", "lib-naf", "lib-nginx", "log-nginx", "etc-nginx", "mail"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::os::unix::fs::chown(d.join("mail"), Some(65534), Some(65534)).unwrap();
    // The README's Dovecot line, in a config of its own: Dovecot itself is
    // not what this test is about, so it takes any password.
    std::fs::write(
        d.join("dovecot.conf"),
        format!(
            "base_dir = /run/dovecot\nstate_dir = {d}/dovecot-state\nlog_path = {d}/dovecot.log\n\
             protocols = imap\nlisten = 127.0.0.1\nssl = no\ndisable_plaintext_auth = no\n\
             default_login_user = dovenull\ndefault_internal_user = dovecot\n\
             first_valid_uid = 1\nmail_location = maildir:~/Maildir\n\
             passdb {{\n  driver = static\n  args = nopassword=y\n}}\n\
             userdb {{\n  driver = static\n  args = uid=65534 gid=65534 home={d}/mail/%u\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    \
             port = 10143\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n",
            d = d.display()
        ),
    )
    .unwrap();
    let script = format!(
        r#"set -eu
ip link set lo up
# A fresh machine: nothing of ours in /run or the state directories.
mount -t tmpfs tmpfs /run
mount --bind {d}/lib-naf /var/lib/nginx-auth-fcgi
mount --bind {d}/lib-nginx /var/lib/nginx
mount --bind {d}/log-nginx /var/log/nginx
mount --bind {d}/etc-nginx /etc/nginx
# README step 1 (the binary cargo run would build).
{bin} serve --log stderr > {d}/daemon.log 2>&1 &
# README step 2.
echo 'alice-secret' | {bin} user add alice@example.org
# README step 3: Dovecot on 127.0.0.1:10143.
dovecot -c {d}/dovecot.conf
# README step 4: the shipped nginx config.
cp {repo}/nginx-conf/nginx.conf /etc/nginx/nginx.conf
nginx -t
nginx
for i in $(seq 1 100); do
  [ -S /run/nginx-auth-fcgi/auth.sock ] && break
  sleep 0.1
done
stat -c 'socket group: %G mode: %a' /run/nginx-auth-fcgi/auth.sock
stat -c 'db mode: %a' /var/lib/nginx-auth-fcgi/users.db
# README step 5: a real login through nginx.
python3 - <<'EOF'
import imaplib, time
for i in range(100):
    try:
        m = imaplib.IMAP4("127.0.0.1", 143)
        break
    except OSError:
        time.sleep(0.1)
typ, data = m.login("alice@example.org", "alice-secret")
print("LOGIN", typ, data)
m.logout()
EOF
kill %1
wait %1 || true
"#,
        d = d.display(),
        bin = daemon_bin(),
        repo = repo_root().display(),
    );
    std::fs::write(d.join("quick-start.sh"), &script).unwrap();
    let out = Command::new(unshare)
        // A pid namespace too: when the script ends, however it ends, the
        // kernel stops every process it started.
        .args(["--mount", "--net", "--pid", "--fork", "--mount-proc"])
        .args(["--kill-child", "--propagation", "private"])
        .arg("sh")
        .arg(d.join("quick-start.sh"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = read(&d.join("daemon.log"));
    let context = format!(
        "stdout:\n{stdout}\nstderr:\n{}\ndaemon log:\n{log}\nnginx error log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        read(&d.join("log-nginx/error.log"))
    );
    assert!(out.status.success(), "{context}");
    assert!(stdout.contains("LOGIN OK"), "{context}");
    assert!(
        stdout.contains("socket group: www-data mode: 660"),
        "{context}"
    );
    for proto in ["imap", "pop3", "smtp"] {
        assert!(
            log.contains(&format!("no upstream for {proto}: using the default")),
            "{context}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("alice@example.org") && l.contains("result=ok")),
        "{context}"
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
