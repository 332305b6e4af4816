//! The documentation's examples are files the suite runs.
//!
//! Every fenced block in `README.md` and `docs/*.md` preceded by
//! `<!-- example: PATH -->` must equal the file `PATH` (under
//! `docs/examples/`); every TOML, nginx, shell and Dovecot block must be such
//! a file. Then the files are run: each TOML config and each
//! `nginx-auth-fcgi serve` invocation of a shell example through
//! `check-config` (which connects to no SQL, LDAP or Redis server), with the
//! system paths they name moved into a temp dir; each nginx example through
//! `nginx -t`, fragments (first line `# context: …`) inside a small harness;
//! each Dovecot example through `doveconf -n`.
//! Relative links between the pages must resolve to a file and heading.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::e2e::{daemon_bin, free_ports, render_config, repo_root, require, require_file};

/// Languages of fenced blocks that must be example files.
const EXAMPLE_LANGS: [&str; 4] = ["toml", "nginx", "sh", "conf"];
const MARKER: &str = "<!-- example: ";

/// One page of the documentation.
struct Page {
    /// Relative to the repository root, for messages.
    name: String,
    path: PathBuf,
    text: String,
}

/// README.md and every page under docs/.
fn pages() -> Vec<Page> {
    let root = repo_root();
    let mut paths: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("read docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    paths.sort();
    paths.insert(0, root.join("README.md"));
    paths
        .into_iter()
        .map(|path| Page {
            name: path.strip_prefix(&root).unwrap().display().to_string(),
            text: fs::read_to_string(&path).expect("read page"),
            path,
        })
        .collect()
}

/// Every file under docs/examples/, relative to the repository root.
fn example_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("read examples dir") {
            let path = entry.expect("examples entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let root = repo_root();
    let mut files = Vec::new();
    walk(&root.join("docs/examples"), &mut files);
    let mut rel: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    rel.sort();
    rel
}

fn examples_in(sub: &str, ext: &str) -> Vec<PathBuf> {
    example_files()
        .into_iter()
        .filter(|f| f.starts_with(&format!("docs/examples/{sub}/")) && f.ends_with(ext))
        .map(|f| repo_root().join(f))
        .collect()
}

/// One fenced block of a page.
struct Block {
    line: usize,
    lang: String,
    marker: Option<String>,
    text: String,
}

/// The fenced blocks of `page`, each with the marker on the line before it.
/// A block indented under a list item loses that indentation.
fn blocks(page: &str) -> Vec<Block> {
    let lines: Vec<&str> = page.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if let Some(lang) = trimmed.strip_prefix("```") {
            let indent = lines[i].len() - trimmed.len();
            let marker = i
                .checked_sub(1)
                .and_then(|p| lines[p].trim().strip_prefix(MARKER))
                .and_then(|m| m.strip_suffix("-->"))
                .map(|m| m.trim().to_owned());
            let start = i;
            let mut text = String::new();
            i += 1;
            while i < lines.len() && lines[i].trim() != "```" {
                text.push_str(lines[i].get(indent..).unwrap_or(lines[i].trim_start()));
                text.push('\n');
                i += 1;
            }
            out.push(Block {
                line: start + 1,
                lang: lang.trim().to_owned(),
                marker,
                text,
            });
        }
        i += 1;
    }
    out
}

#[test]
fn marked_blocks_equal_their_files() {
    let mut shown = BTreeSet::new();
    let mut all_text = String::new();
    for page in pages() {
        let (name, text) = (&page.name, &page.text);
        for b in blocks(text) {
            let Some(path) = &b.marker else {
                assert!(
                    !EXAMPLE_LANGS.contains(&b.lang.as_str()),
                    "{name}:{}: a ```{} block without `{MARKER}docs/examples/… -->` before it: \
                     put it in a file under docs/examples/ so the suite runs it",
                    b.line,
                    b.lang
                );
                continue;
            };
            assert!(
                path.starts_with("docs/examples/"),
                "{name}:{}: example {path} is not under docs/examples/",
                b.line
            );
            let file = fs::read_to_string(repo_root().join(path))
                .unwrap_or_else(|e| panic!("{name}:{}: example {path}: {e}", b.line));
            assert_eq!(
                b.text, file,
                "{name}:{}: the block shown differs from {path}",
                b.line
            );
            shown.insert(path.clone());
        }
        all_text.push_str(text);
    }
    for f in example_files() {
        all_text.push_str(&fs::read_to_string(repo_root().join(&f)).expect("read example"));
    }
    for f in example_files() {
        assert!(
            shown.contains(&f) || all_text.contains(&f),
            "{f} is neither shown in a page nor named by one (or by another example)"
        );
    }
}

/// `text` with the system paths it names (`/etc/…`, `/var/…`, `/run/…`,
/// starting a string or following a `:`) moved under `root`.
fn reroot(text: &str, root: &Path) -> String {
    let mut out = text.to_owned();
    for prefix in ["/etc/", "/var/", "/run/"] {
        for lead in ["\"", ":"] {
            out = out.replace(
                &format!("{lead}{prefix}"),
                &format!("{lead}{}{prefix}", root.display()),
            );
        }
    }
    out
}

/// A temp dir holding, at their system paths, the files the examples name.
fn example_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let examples = repo_root().join("docs/examples");
    for (from, to) in [
        ("users.passwd", "etc/dovecot/users"),
        ("htpasswd", "etc/nginx/htpasswd"),
        ("htdigest", "etc/nginx/htdigest"),
    ] {
        let to = dir.path().join(to);
        fs::create_dir_all(to.parent().unwrap()).expect("mkdir");
        fs::copy(examples.join(from), to).expect("copy example file");
    }
    let secret = dir.path().join("etc/nginx-auth-fcgi/master.secret");
    fs::create_dir_all(secret.parent().unwrap()).expect("mkdir");
    fs::write(&secret, "a-long-random-master-secret\n").expect("write master.secret");
    fs::create_dir_all(dir.path().join("var/lib/nginx-auth-fcgi")).expect("mkdir");
    // The Digest nonce key of several-instances.toml, private as check-config wants.
    let key = dir.path().join("var/lib/nginx-auth-fcgi/nonce.key");
    let hex: String = (0u8..32)
        .map(|b| format!("{:02x}", b.wrapping_mul(37)))
        .collect();
    fs::write(&key, format!("{hex}\n")).expect("write nonce.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod nonce.key");
    dir
}

/// Runs `cmd`, which must succeed; `what` and its output name a failure.
fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {} failed ({}):\n{stdout}{}",
        cmd.get_program().to_string_lossy(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `check-config` with `args`; a run without a passdb gets a temp
/// SQLite one, so the system's default database is never touched.
fn check_config(args: &[String], root: &Path, what: &str) -> String {
    let mut cmd = Command::new(daemon_bin());
    cmd.arg("check-config").args(args);
    let has_passdb = args.iter().any(|a| a == "--passdb")
        || args.iter().any(|a| a == "--config") && {
            let file = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
            let table: toml::Table = fs::read_to_string(file)
                .expect("read config")
                .parse()
                .unwrap_or_else(|e| panic!("{what}: not TOML: {e}"));
            table.contains_key("passdb")
        };
    if !has_passdb {
        cmd.arg("--passdb").arg(format!(
            "sqlite:{}/var/lib/nginx-auth-fcgi/users.db",
            root.display()
        ));
    }
    let stdout = run_ok(&mut cmd, what);
    assert!(
        stdout.starts_with("configuration OK"),
        "{what}: check-config said:\n{stdout}"
    );
    stdout
}

#[test]
fn toml_examples_pass_check_config() {
    let root = example_root();
    let configs = examples_in("config", ".toml");
    assert!(!configs.is_empty(), "no TOML examples found");
    for config in configs {
        let what = config.display().to_string();
        let text = fs::read_to_string(&config).expect("read example");
        let moved = root.path().join(config.file_name().unwrap());
        fs::write(&moved, reroot(&text, root.path())).expect("write config");
        let args = ["--config".to_owned(), moved.display().to_string()];
        check_config(&args, root.path(), &what);
    }
}

/// The shell example's commands: `\`-continued lines joined, comments gone.
fn shell_commands(text: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let code = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        match code.trim_end().strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(code);
                commands.push(current.split_whitespace().map(str::to_owned).collect());
                current.clear();
            }
        }
    }
    commands
}

/// The arguments after `serve` of an `nginx-auth-fcgi serve …` or
/// `cargo run … -- serve …` command, up to a shell operator.
fn serve_args(words: &[String]) -> Option<Vec<String>> {
    let at = words.iter().enumerate().position(|(i, w)| {
        w == "serve"
            && i > 0
            && (words[i - 1].ends_with("nginx-auth-fcgi")
                || words[i - 1] == "--" && words.first().is_some_and(|c| c == "cargo"))
    })?;
    Some(
        words[at + 1..]
            .iter()
            .take_while(|w| !["&", "&&", "|", ";"].contains(&w.as_str()))
            .cloned()
            .collect(),
    )
}

#[test]
fn shell_serve_invocations_pass_check_config() {
    let root = example_root();
    let mut checked = 0;
    for script in examples_in("shell", ".sh") {
        let text = fs::read_to_string(&script).expect("read example");
        let what = script.display().to_string();
        run_ok(Command::new("bash").arg("-n").arg(&script), &what);
        // A bare system path as an argument goes under the root too.
        let reroot_arg =
            |a: &String| match ["/etc/", "/var/", "/run/"].iter().any(|p| a.starts_with(p)) {
                true => format!("{}{a}", root.path().display()),
                false => reroot(a, root.path()),
            };
        for words in shell_commands(&text) {
            // `nonce-key init PATH` makes the key a later `serve` names.
            if words
                .first()
                .is_some_and(|w| w.ends_with("nginx-auth-fcgi"))
                && words.get(1).is_some_and(|w| w == "nonce-key")
            {
                let args: Vec<String> = words[1..].iter().map(reroot_arg).collect();
                run_ok(Command::new(daemon_bin()).args(&args), &what);
            }
            if let Some(args) = serve_args(&words) {
                let args: Vec<String> = args.iter().map(reroot_arg).collect();
                let what = format!("{}: serve {}", script.display(), args.join(" "));
                check_config(&args, root.path(), &what);
                checked += 1;
            }
        }
    }
    // first-commands.sh, nonce-key.sh, quickstart.sh, spawn-fcgi.sh,
    // upstream-pools.sh.
    assert!(checked >= 5, "only {checked} serve invocations found");
}

/// Where a fragment goes in the harness, from its `# context: …` line.
enum Context {
    Main,
    Mail,
    Http,
    Server,
    Location,
}

fn context(text: &str) -> Context {
    let first = text.lines().next().unwrap_or_default();
    match first.strip_prefix("# context: ") {
        None => Context::Main,
        Some(c) if c.starts_with("mail") => Context::Mail,
        Some("http") => Context::Http,
        Some(c) if c.starts_with("http server") => Context::Server,
        Some(c) if c.contains("location") => Context::Location,
        Some(c) => panic!("unknown context `{c}` (mail, http, http server, … location)"),
    }
}

/// A complete config holding `fragment` where its context says.
fn harness(fragment: &str, context: Context) -> String {
    let (mail, http, server, location) = match context {
        Context::Main => return fragment.to_owned(),
        Context::Mail => (fragment, "", "", ""),
        Context::Http => ("", fragment, "", ""),
        Context::Server => ("", "", fragment, ""),
        Context::Location => ("", "", "", fragment),
    };
    format!(
        "load_module /usr/lib/nginx/modules/ngx_mail_module.so;\n\
         events {{}}\n\
         mail {{\n\
         auth_http 127.0.0.1:9189/mailauth;\n\
         ssl_certificate /etc/ssl/certs/ssl-cert-snakeoil.pem;\n\
         ssl_certificate_key /etc/ssl/private/ssl-cert-snakeoil.key;\n\
         {mail}\n\
         }}\n\
         http {{\n\
         upstream nginx_auth_fcgi {{ server unix:/run/nginx-auth-fcgi/auth.sock; }}\n\
         {http}\n\
         server {{\n\
         listen 127.0.0.1:9189;\n\
         {server}\n\
         location = /harness {{\n\
         {location}\n\
         }}\n\
         }}\n\
         }}\n"
    )
}

#[test]
fn nginx_examples_pass_nginx_t() {
    let nginx = require("nginx", "nginx-full");
    let openssl = require("openssl", "openssl");
    let params = require_file("/etc/nginx/fastcgi_params", "nginx-common");
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display().to_string();
    run_ok(
        Command::new(&openssl)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem")),
        "a throw-away certificate",
    );
    // `include fastcgi_params;` is relative to the config file's directory.
    fs::copy(params, dir.path().join("fastcgi_params")).expect("copy fastcgi_params");
    let confs = examples_in("nginx", ".conf");
    assert!(!confs.is_empty(), "no nginx examples found");
    for conf in confs {
        let text = fs::read_to_string(&conf).expect("read example");
        let full = harness(&text, context(&text));
        // Every listen on a free loopback port, every system path in the
        // temp dir; render_config insists that nothing else is left.
        let mut subs: Vec<(String, String)> = Vec::new();
        for line in full.lines() {
            for part in line.split(';') {
                let part = part.split('{').next_back().unwrap_or(part).trim();
                if let Some(rest) = part.strip_prefix("listen ") {
                    let from = format!("listen {rest};");
                    if !subs.iter().any(|(f, _)| *f == from) {
                        let [port] = free_ports::<1>();
                        let flags = rest.split_once(' ').map(|(_, f)| f).unwrap_or("");
                        let to = format!("listen 127.0.0.1:{port} {flags}");
                        subs.push((from, format!("{};", to.trim_end())));
                    }
                }
            }
        }
        for (from, to) in [
            ("server unix:/run/nginx-auth-fcgi/auth.sock;", "auth.sock;"),
            ("server unix:/run/nginx-auth-fcgi/a.sock;", "a.sock;"),
            ("server unix:/run/nginx-auth-fcgi/b.sock;", "b.sock;"),
            ("/etc/ssl/certs/ssl-cert-snakeoil.pem;", "cert.pem;"),
            ("/etc/ssl/private/ssl-cert-snakeoil.key;", "key.pem;"),
            ("/etc/nginx/mail-client-ca.pem;", "cert.pem;"),
        ] {
            if full.contains(from) {
                let prefix = if from.starts_with("server ") {
                    "server unix:"
                } else {
                    ""
                };
                subs.push((from.to_owned(), format!("{prefix}{d}/{to}")));
            }
        }
        let rendered = render_config(&full, &subs, &d);
        // Temp paths of nginx's http module, inside the temp dir too.
        let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|t| format!("{t}_temp_path {d}/{t};\n"))
            .collect();
        let rendered = rendered.replacen("http {\n", &format!("http {{\n{temp_paths}"), 1);
        fs::write(dir.path().join("nginx.conf"), &rendered).expect("write nginx.conf");
        run_ok(
            Command::new(&nginx)
                .args([
                    "-t",
                    "-p",
                    &format!("{d}/"),
                    "-e",
                    &format!("{d}/error.log"),
                ])
                .args([
                    "-g",
                    &format!("pid {d}/nginx.pid;"),
                    "-c",
                    &format!("{d}/nginx.conf"),
                ]),
            &format!("{} as tested:\n{rendered}\n", conf.display()),
        );
    }
}

#[test]
fn dovecot_examples_pass_doveconf() {
    let doveconf = require("doveconf", "dovecot-core");
    let dir = tempfile::tempdir().expect("temp dir");
    let confs = examples_in("dovecot", ".conf");
    assert!(!confs.is_empty(), "no Dovecot examples found");
    for conf in confs {
        // doveconf knows every setting name and section; the paths the
        // example names are only read by the running server.
        let harness = dir.path().join("dovecot.conf");
        let text = format!("protocols = imap\nssl = no\n!include {}\n", conf.display());
        fs::write(&harness, text).expect("write dovecot.conf");
        run_ok(
            Command::new(&doveconf).arg("-n").arg("-c").arg(&harness),
            &conf.display().to_string(),
        );
    }
}

/// GitHub's anchor of a heading: lower case, punctuation other than `-`
/// and `_` dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of `page`'s headings (outside fenced blocks).
fn anchors(page: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn relative_links_resolve() {
    let mut checked = 0;
    for page in pages() {
        let (name, text) = (&page.name, &page.text);
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let target = &rest[..rest.find(')').expect("closing )")];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, frag) = target.split_once('#').unwrap_or((target, ""));
            let linked = if file.is_empty() {
                page.path.clone()
            } else {
                page.path.parent().unwrap().join(file)
            };
            assert!(linked.exists(), "{name}: link `{target}`: no such file");
            if !frag.is_empty() {
                let target_text = fs::read_to_string(&linked).expect("read linked page");
                assert!(
                    anchors(&target_text).contains(frag),
                    "{name}: link `{target}`: no heading with that anchor"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} links found");
}
