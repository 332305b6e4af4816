//! Admin commands that work without a running service: `check-config`,
//! `hash`, `auth test` and `user …` (the embedded SQLite database).

#[cfg(feature = "sqlite")]
use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
#[cfg(feature = "sqlite")]
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use nginx_auth_fcgi::audit;
use nginx_auth_fcgi::auth_http::{AuthMethod, MailAuthRequest, MailProtocol};
use nginx_auth_fcgi::config::{self, Config};
use nginx_auth_fcgi::mech::{apop, cram_md5, Mechanism};
#[cfg(feature = "sqlite")]
use nginx_auth_fcgi::passdb::sqlite::Admin;
use nginx_auth_fcgi::scheme::{self, Scheme};
use nginx_auth_fcgi::secret::Secret;

use super::serve::{passdb_list, trusted_line, ServeArgs};
use super::{runtime, CmdResult};

#[derive(Subcommand)]
pub enum AuthCommand {
    /// Prompt for the password, run the decision, print the reply headers.
    Test {
        /// User name. (Field named `login`: `--user` is the privilege-drop flag.)
        #[arg(value_name = "USER")]
        login: String,
        /// imap, pop3 or smtp.
        #[arg(long, default_value = "imap")]
        protocol: String,
        /// plain, cram-md5 or apop (the client side is computed here).
        #[arg(long, default_value = "plain")]
        method: String,
        /// Client address to report.
        #[arg(long, default_value = "127.0.0.1")]
        client_ip: String,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user (password from the terminal, or stdin with --password-stdin).
    Add {
        /// Login, e.g. alice@example.org.
        user: String,
        /// Password scheme.
        #[arg(long, short = 's', default_value = "SHA512-CRYPT")]
        scheme: String,
        /// Read the password from stdin (first line) instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// Per-user upstream HOST:PORT.
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Change a user's password.
    Passwd {
        /// Login.
        user: String,
        /// Password scheme.
        #[arg(long, short = 's', default_value = "SHA512-CRYPT")]
        scheme: String,
        /// Read the password from stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user.
    Del {
        /// Login.
        user: String,
    },
    /// List users (never prints hashes).
    List,
    /// Disable a user (logins refused, record kept).
    Disable {
        /// Login.
        user: String,
    },
    /// Enable a disabled user.
    Enable {
        /// Login.
        user: String,
    },
    /// A user's app passwords: per-device, scoped, revocable.
    AppPassword {
        #[command(subcommand)]
        command: super::app_password::AppPasswordCommand,
    },
    /// Refuse a user's main password for these protocols (imap,pop3,smtp,http;
    /// `none` clears): only their app passwords log in there.
    RequireAppPassword {
        /// Login.
        user: String,
        /// Comma-separated protocols, or none.
        protocols: String,
    },
}

/// `check-config`: builds the service like `serve` and prints what it would do.
pub fn check_config(args: ServeArgs) -> CmdResult {
    let rt = runtime()?;
    let _guard = rt.enter();
    let (config, _service) = args.build()?;
    let file_warnings = file_warnings(&args, &config);
    println!("configuration OK");
    println!("  passdbs: {}", passdb_list(&config));
    println!(
        "  argon2 max memory: {} per verification",
        config::format_size_kib(scheme::argon2_max_memory_kib())
    );
    match &config.rehash {
        None => println!("  rehash: off (upgrade_scheme not set)"),
        Some(r) => r
            .explain(&config.passdbs, config.password_query.as_deref())
            .iter()
            .for_each(|l| println!("  {l}")),
    }
    println!(
        "  {}",
        nginx_auth_fcgi::lookup_cache::LookupPolicy::describe(config.lookup_cache.as_ref())
    );
    let mut mechs: Vec<_> = config.mechanisms.iter().map(|m| m.as_str()).collect();
    mechs.sort_unstable();
    println!("  mechanisms: {}", mechs.join(", "));
    if config.local_domains.is_empty() {
        println!("  smtp_auth none: every recipient refused (no local domains)");
    } else {
        println!(
            "  smtp_auth none: mail accepted for {}",
            config.local_domains.join(", ")
        );
    }
    println!(
        "  reject_unknown_client: {}",
        if config.reject_unknown_client {
            "on (SMTP clients without a confirmed reverse-DNS name are refused; \
             needs a resolver in nginx's mail {})"
        } else {
            "off"
        }
    );
    let v = &config.verifier;
    println!(
        "  verifier: {} expensive checks at once, {} waiting at most, {} ms expected wait at most",
        v.concurrency,
        v.queue,
        v.max_wait.as_millis()
    );
    // Only running checks hold hash memory; waiting ones hold none. Two
    // lanes: known or trusted networks have their own.
    let slots = 2 * v.concurrency as u64;
    let worst =
        (slots * u64::from(scheme::argon2_max_memory_kib())).min(u64::from(u32::MAX)) as u32;
    println!(
        "  verifier worst-case memory: {} ({slots} x argon2 max memory: {} for unknown \
         networks, {} for known or trusted ones)",
        config::format_size_kib(worst),
        v.concurrency,
        v.concurrency
    );
    for line in config.upstreams.describe() {
        println!("  {line}");
    }
    println!("  {}", super::nonce_key::describe(&config));
    if !config.require_app_password.is_empty() {
        println!(
            "  require_app_password: {} (main passwords refused there; app passwords only)",
            config.require_app_password
        );
    }
    match &config.throttle {
        Some(t) => println!(
            "  throttle: blocks a network at {} failures (+{} per doubling of its users who \
             logged in, at most {}), a user from a network at {}; {}",
            t.block_ip,
            t.success_bonus,
            t.block_ip_max,
            t.block_ip_user,
            trusted_line(t)
        ),
        None => println!("  throttle: off"),
    }
    match &config.master_user {
        // Never the secret.
        Some(m) => println!(
            "  master user: {} (Auth-User LOGIN{}{})",
            m.user(),
            m.separator(),
            m.user()
        ),
        None => println!("  master user: (none)"),
    }
    for r in &config.external.0 {
        println!("  external rule: {r:?}");
    }
    for w in config
        .warnings
        .iter()
        .cloned()
        .chain(challenge_warnings(&config))
        .chain(file_warnings)
    {
        println!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Passdb files, and files that hold secrets, that every local user can
/// read: the config file when it holds a master password, a required
/// header's value or a password in a URI, the master password file, and
/// each passdb file (passwd-file, htpasswd, htdigest, sqlite).
fn file_warnings(args: &ServeArgs, config: &Config) -> Vec<String> {
    use nginx_auth_fcgi::passdb::{private_file, redact_uri};
    let mut w = Vec::new();
    if let Some(path) = &args.config {
        let raw = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| config::RawConfig::parse(&t).ok());
        if let Some(raw) = raw {
            let secret_uri = raw
                .passdb
                .iter()
                .chain(&raw.state)
                .any(|u| redact_uri(u) != *u);
            let master = raw.master_user.as_ref();
            if secret_uri
                || !raw.require_header.is_empty()
                || master.is_some_and(|m| m.password.is_some())
            {
                w.extend(private_file::readable_by_others(
                    path,
                    "config file (it holds secrets)",
                ));
            }
            if let Some(f) = master.and_then(|m| m.password_file.as_deref()) {
                w.extend(private_file::readable_by_others(f, "master password file"));
            }
        }
    }
    if let Some(f) = &args.master_password_file {
        w.extend(private_file::readable_by_others(f, "master password file"));
    }
    if let Some(f) = config
        .state
        .as_ref()
        .and_then(|s| s.tls.key_file.as_deref())
    {
        w.extend(private_file::readable_by_others(f, "state key file"));
    }
    for uri in &config.passdbs {
        if let Some(f) = private_file::passdb_file(uri) {
            w.extend(private_file::readable_by_others(f, "passdb file"));
        }
    }
    // The master password file may be named by the file and the flag.
    w.dedup();
    w
}

/// What cannot work for lack of a master user.
fn challenge_warnings(config: &Config) -> Vec<String> {
    let mut w = Vec::new();
    if config.master_user.is_some() {
        return w;
    }
    if config.mechanisms.contains(&Mechanism::CramMd5) {
        w.push(
            "cram-md5 is enabled but no [master_user] is set: users stored as {CRAM-MD5} \
             (or any non-plaintext scheme) are refused CRAM-MD5 for IMAP/POP3, because \
             nginx needs a password to log in upstream"
                .into(),
        );
    }
    if !config.external.is_empty() {
        w.push(
            "external rules are set but no [master_user]: EXTERNAL logins of users without \
             a {PLAIN} password are refused for IMAP/POP3"
                .into(),
        );
    }
    w
}

fn read_password(confirm: bool, from_stdin: bool) -> Result<Secret, Vec<String>> {
    let stdin = std::io::stdin();
    if from_stdin || !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| vec![format!("reading password: {e}")])?;
        let pw = line.strip_suffix('\n').unwrap_or(&line);
        let pw = pw.strip_suffix('\r').unwrap_or(pw);
        let s = Secret::from(pw);
        zeroize_string(line);
        return Ok(s);
    }
    let first = rpassword::prompt_password("Password: ").map_err(|e| vec![e.to_string()])?;
    if confirm {
        let again =
            rpassword::prompt_password("Retype password: ").map_err(|e| vec![e.to_string()])?;
        if again != first {
            return Err(vec!["passwords do not match".into()]);
        }
        zeroize_string(again);
    }
    let s = Secret::from(first.as_str());
    zeroize_string(first);
    Ok(s)
}

fn zeroize_string(s: String) {
    let mut bytes = s.into_bytes();
    zeroize::Zeroize::zeroize(&mut bytes);
}

/// `hash`: a stored-password line like `doveadm pw`.
pub fn hash(scheme: &str) -> CmdResult {
    let scheme: Scheme = scheme.parse().map_err(|e| vec![format!("{e}")])?;
    let pw = read_password(true, false)?;
    if pw.is_empty() {
        return Err(vec!["empty password".into()]);
    }
    let h = scheme::hash(scheme, pw.expose()).map_err(|e| vec![e.to_string()])?;
    println!("{h}");
    Ok(ExitCode::SUCCESS)
}

/// `auth test`: one decision as nginx would ask for it, reply headers printed.
pub fn auth_test(
    user: &str,
    protocol: &str,
    method: &str,
    client_ip: &str,
    args: ServeArgs,
) -> CmdResult {
    let protocol: MailProtocol = protocol.parse().map_err(|e| vec![format!("{e}")])?;
    // The client's side is computed here only for these three.
    let method = AuthMethod::parse(method.to_ascii_lowercase().as_bytes())
        .filter(|m| {
            matches!(
                m,
                AuthMethod::Plain | AuthMethod::CramMd5 | AuthMethod::Apop
            )
        })
        .ok_or_else(|| vec![format!("unknown method `{method}` (plain, cram-md5, apop)")])?;
    let client_ip = client_ip
        .parse()
        .map_err(|e| vec![format!("client ip: {e}")])?;
    let rt = runtime()?;
    let _guard = rt.enter();
    let (config, service) = args.build()?;
    audit::init(&audit::LogTarget::Stderr, config.log_level);
    let password = read_password(false, false)?;
    // Play the client's part of the challenge mechanisms, as nginx would relay it.
    let salt = format!("<{}.{}@auth-test>", std::process::id(), unix_time());
    let pass = match method {
        AuthMethod::CramMd5 => Secret::new(
            hex::encode(cram_md5::digest(password.expose(), salt.as_bytes())).into_bytes(),
        ),
        AuthMethod::Apop => {
            Secret::new(hex::encode(apop::digest(password.expose(), salt.as_bytes())).into_bytes())
        }
        _ => password,
    };
    let req = MailAuthRequest {
        method,
        protocol,
        user: user.as_bytes().to_vec(),
        pass,
        salt: matches!(method, AuthMethod::CramMd5 | AuthMethod::Apop).then(|| salt.into_bytes()),
        attempt: 1,
        client_ip: Some(client_ip),
        client_host: None,
        ssl: None,
        proxy: None,
        smtp: None,
        duplicates: Vec::new(),
    };
    let decision = rt.block_on(service.authenticator().authenticate(&req));
    eprintln!("{}", decision.audit);
    let rendered = decision
        .response
        .render()
        .map_err(|e| vec![e.to_string()])?;
    // The headers nginx would get, with the password masked.
    for line in String::from_utf8_lossy(&rendered).lines() {
        if line.starts_with("Auth-Pass:") {
            println!("Auth-Pass: <hidden>");
        } else if !line.is_empty() {
            println!("{line}");
        }
    }
    std::io::stdout().flush().ok();
    Ok(if matches!(decision.audit.outcome, audit::Outcome::Ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `user …`: the embedded SQLite database's users.
#[cfg(feature = "sqlite")]
pub fn user(db: &str, conn: &super::status::ConnArgs, command: UserCommand) -> CmdResult {
    let changed = command.changes().map(str::to_owned);
    let done = user_command(db, command)?;
    if let Some(user) = changed {
        super::status::user_changed(conn, &user);
    }
    Ok(done)
}

#[cfg(feature = "sqlite")]
impl UserCommand {
    /// The user whose cached record this command makes wrong (`None`: it
    /// only reads, or adds a user, whom the cache never holds as unknown).
    fn changes(&self) -> Option<&str> {
        use super::app_password::AppPasswordCommand as App;
        match self {
            UserCommand::Passwd { user, .. }
            | UserCommand::Del { user }
            | UserCommand::Disable { user }
            | UserCommand::Enable { user }
            | UserCommand::RequireAppPassword { user, .. }
            | UserCommand::AppPassword {
                command: App::Add { user, .. } | App::Del { user, .. },
            } => Some(user),
            UserCommand::Add { .. }
            | UserCommand::List
            | UserCommand::AppPassword {
                command: App::List { .. },
            } => None,
        }
    }
}

#[cfg(feature = "sqlite")]
fn user_command(db: &str, command: UserCommand) -> CmdResult {
    let path = config::sqlite_path(db).unwrap_or_else(|| PathBuf::from(db));
    let admin = Admin::open(&path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    let err = |e: nginx_auth_fcgi::passdb::sqlite::SqliteError| vec![e.to_string()];
    let hashed = |scheme: &str, stdin: bool| -> Result<String, Vec<String>> {
        let scheme: Scheme = scheme.parse().map_err(|e| vec![format!("{e}")])?;
        let pw = read_password(!stdin, stdin)?;
        if pw.is_empty() {
            return Err(vec!["empty password".into()]);
        }
        scheme::hash(scheme, pw.expose()).map_err(|e| vec![e.to_string()])
    };
    match command {
        UserCommand::Add {
            user,
            scheme,
            password_stdin,
            upstream,
        } => {
            let upstream = match &upstream {
                None => None,
                Some(u) => {
                    let (h, p) = u
                        .rsplit_once(':')
                        .ok_or_else(|| vec![format!("upstream `{u}`: expected HOST:PORT")])?;
                    let p: u16 = p
                        .parse()
                        .map_err(|_| vec![format!("upstream `{u}`: bad port")])?;
                    Some((
                        h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                        p,
                    ))
                }
            };
            admin
                .add(&user, &hashed(&scheme, password_stdin)?)
                .map_err(err)?;
            if let Some((h, p)) = &upstream {
                admin.set_upstream(&user, Some((h, *p))).map_err(err)?;
            }
            eprintln!("user {user} added");
        }
        UserCommand::Passwd {
            user,
            scheme,
            password_stdin,
        } => {
            admin
                .passwd(&user, &hashed(&scheme, password_stdin)?)
                .map_err(err)?;
            eprintln!("password of {user} changed");
        }
        UserCommand::Del { user } => {
            admin.delete(&user).map_err(err)?;
            eprintln!("user {user} deleted");
        }
        UserCommand::Disable { user } => {
            admin.set_enabled(&user, false).map_err(err)?;
            eprintln!("user {user} disabled");
        }
        UserCommand::Enable { user } => {
            admin.set_enabled(&user, true).map_err(err)?;
            eprintln!("user {user} enabled");
        }
        UserCommand::AppPassword { command } => {
            return super::app_password::run(&admin, command);
        }
        UserCommand::RequireAppPassword { user, protocols } => {
            return super::app_password::require(&admin, &user, &protocols);
        }
        UserCommand::List => {
            let rows = admin.list().map_err(err)?;
            let mut seen = HashSet::new();
            for r in rows {
                seen.insert(r.username.clone());
                println!(
                    "{}\t{}\t{}\t{}",
                    r.username,
                    r.scheme,
                    if r.enabled { "enabled" } else { "disabled" },
                    r.upstream.unwrap_or_else(|| "-".into())
                );
            }
            eprintln!("{} user(s)", seen.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `user …` in a binary built without SQLite: refused, naming the feature.
#[cfg(not(feature = "sqlite"))]
pub fn user(_: &str, _: &super::status::ConnArgs, _: UserCommand) -> CmdResult {
    Err(vec![
        "the `user` commands manage the SQLite passdb and need the `sqlite` feature; \
         this binary was built without it"
            .into(),
    ])
}
