//! `nginx-auth-fcgi`: command line. `serve` runs the FastCGI responder;
//! `check-config`, `hash`, `auth test` and `user …` are admin tools.

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use nginx_auth_fcgi::auth_http::{AuthMethod, MailAuthRequest, MailProtocol};
use nginx_auth_fcgi::authenticator::{Authenticator, Policy};
use nginx_auth_fcgi::cache::Cache;
use nginx_auth_fcgi::config::{
    self, Config, RawCache, RawConfig, RawExternal, RawExternalRule, RawMasterUser, RawThrottle,
    RawVerifier, RawWait,
};
use nginx_auth_fcgi::listen::{self, ListenSpec};
use nginx_auth_fcgi::mech::{apop, cram_md5, Mechanism};
use nginx_auth_fcgi::passdb::{
    ldap::redact_uri, sqlite::Admin, AnyPassdb, PassdbOptions, PasswdFile,
};
use nginx_auth_fcgi::reload::Reloadable;
use nginx_auth_fcgi::scheme::{self, Scheme};
use nginx_auth_fcgi::secret::Secret;
use nginx_auth_fcgi::service::Service;
use nginx_auth_fcgi::throttle::{Clock, Throttle};
use nginx_auth_fcgi::verifier::Verifier;
use nginx_auth_fcgi::{audit, server};

#[derive(Parser)]
#[command(
    name = "nginx-auth-fcgi",
    version,
    about = "FastCGI authentication responder for nginx mail auth_http"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the FastCGI responder.
    Serve(ServeArgs),
    /// Check the configuration and passdbs; print every problem found.
    CheckConfig(ServeArgs),
    /// Ask the running service for its metrics over its socket (same flags
    /// and config as serve: --listen and --require-header are used).
    Status(ServeArgs),
    /// Show or lift the brute-force throttle's state over the running
    /// service's socket (same flags and config as serve).
    Throttle {
        #[command(subcommand)]
        command: ThrottleCommand,
    },
    /// Print the manual page (roff) generated from this command line.
    Man,
    /// Hash a password like `doveadm pw` (reads it from the terminal or stdin).
    Hash {
        /// Scheme, Dovecot name (SHA512-CRYPT, BLF-CRYPT, ARGON2ID, PLAIN, …).
        #[arg(long, short = 's', default_value = "SHA512-CRYPT")]
        scheme: String,
    },
    /// Try a login the way nginx would ask, and show the headers nginx would get.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Manage users in the embedded SQLite database.
    User {
        /// Database path (or `sqlite:PATH`).
        #[arg(long, default_value = config::DEFAULT_PASSDB)]
        db: String,
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum AuthCommand {
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
enum ThrottleCommand {
    /// Counters, blocks and time left for an address and/or user, and what
    /// their next login would meet and why.
    Show(ThrottleArgs),
    /// Lift blocks (and forget their counts): --ip and --user for the pair,
    /// --ip alone for the network and its pairs, --user alone everywhere.
    Unblock(ThrottleArgs),
}

/// Whom a `throttle` command is about, and how it reaches the service.
#[derive(Args)]
struct ThrottleArgs {
    /// Client address.
    #[arg(long)]
    ip: Option<String>,
    /// User name.
    #[arg(long)]
    user: Option<String>,
    #[command(flatten)]
    conn: ConnArgs,
}

/// How an admin command reaches the running service.
#[derive(Args, Clone)]
struct ConnArgs {
    /// TOML configuration file (its listen and require_header are used).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// The service's socket: unix:PATH or tcp:HOST:PORT.
    #[arg(long)]
    listen: Vec<String>,
    /// NAME=VALUE shared secret the service requires (repeatable).
    #[arg(long)]
    require_header: Vec<String>,
}

impl ConnArgs {
    fn serve_args(self) -> ServeArgs {
        ServeArgs {
            config: self.config,
            listen: self.listen,
            require_header: self.require_header,
            ..ServeArgs::default()
        }
    }
}

#[derive(Subcommand)]
enum UserCommand {
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
}

/// Flags shared by `serve`, `check-config` and `auth test`; each has a TOML twin.
#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// unix:PATH, fd:N, tcp:HOST:PORT or systemd (repeatable). Default: an
    /// inherited socket (systemd, spawn-fcgi), else unix:/run/nginx-auth-fcgi/auth.sock.
    #[arg(long)]
    listen: Vec<String>,
    /// Mode of a socket file we create (octal).
    #[arg(long)]
    socket_mode: Option<String>,
    /// Owner of a socket file we create.
    #[arg(long)]
    socket_owner: Option<String>,
    /// Group of a socket file we create.
    #[arg(long)]
    socket_group: Option<String>,
    /// Run as this user once the sockets are bound (start as root).
    #[arg(long)]
    user: Option<String>,
    /// With --user: run with this group (default: the group named like the user).
    #[arg(long)]
    group: Option<String>,
    /// passwd-file:PATH, sqlite:PATH, postgres://… or mysql://… (repeatable;
    /// tried in order). SQL URIs also take pool_size=, connect_timeout= and
    /// query_timeout= (seconds).
    #[arg(long)]
    passdb: Vec<String>,
    /// Scheme for stored passwords without a {SCHEME} prefix.
    #[arg(long)]
    default_scheme: Option<String>,
    /// SQL passdbs' lookup: a query whose %u (user), %n (local part) and %d
    /// (domain) become bound parameters; returns a `password` column and
    /// optionally enabled, upstream_host, upstream_port, backend_user.
    #[arg(long)]
    password_query: Option<String>,
    /// Largest Argon2 memory cost a stored hash may ask for: 256M, 1G,
    /// 65536K (K/M/G = KiB/MiB/GiB; default 256M). Each Argon2 check
    /// allocates that much; hashes above it are refused at load.
    #[arg(long, value_name = "SIZE")]
    argon2_max_memory: Option<String>,
    /// Enabled mechanisms: plain, cram-md5, apop (repeatable; default all).
    #[arg(long = "mechanism")]
    mechanisms: Vec<String>,
    /// PROTOCOL=HOST:PORT[,HOST:PORT…]: the protocol's pool, e.g.
    /// imap=10.0.0.1:143,10.0.0.2:143,[2001:db8::5]:143 (repeatable; users
    /// stick to one member by hashing their name).
    #[arg(long)]
    upstream: Vec<String>,
    /// DOMAIN:PROTOCOL=HOST:PORT[,…]: users of DOMAIN go to this pool
    /// instead (repeatable).
    #[arg(long)]
    upstream_domain: Vec<String>,
    /// Health check interval of pool members in ms (default 5000; 0: off).
    #[arg(long)]
    upstream_check_ms: Option<u64>,
    /// Peer network (CIDR) whose PROXY protocol address (Proxy-Protocol-Addr)
    /// is taken as the client's for throttling and logs (repeatable).
    #[arg(long = "trusted-proxy")]
    trusted_proxies: Vec<String>,
    /// NAME=VALUE header nginx must send (auth_http_header), repeatable.
    #[arg(long)]
    require_header: Vec<String>,
    /// Domain we accept mail for without AUTH (smtp_auth none), repeatable.
    #[arg(long = "local-domain")]
    local_domains: Vec<String>,
    /// Send Auth-Pass on SMTP success (for nginx proxy_smtp_auth on).
    #[arg(long)]
    smtp_pass: bool,
    /// Refuse SMTP clients without a confirmed reverse-DNS name, like
    /// Postfix's reject_unknown_client_hostname: nginx's Client-Host
    /// [UNAVAILABLE] gets 550 5.7.25, [TEMPUNAVAIL] 450 4.7.25. Needs a
    /// resolver in nginx's mail {}.
    #[arg(long)]
    reject_unknown_client: bool,
    /// stderr, syslog or syslog:FACILITY (default syslog:mail).
    #[arg(long)]
    log: Option<String>,
    /// error, warn, info, debug.
    #[arg(long)]
    log_level: Option<String>,
    /// Longest a decision may take (ms) before it is a temporary failure.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Auth-Wait after the first failed attempt, doubling per attempt.
    #[arg(long)]
    auth_wait_base: Option<u32>,
    /// Cap of one Auth-Wait.
    #[arg(long)]
    auth_wait_max: Option<u32>,
    /// From this attempt on, answer without Auth-Wait so nginx closes the connection.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Where throttle state lives: memory (default) or redis://HOST[:PORT][/DB]
    /// to share one limit between instances.
    #[arg(long)]
    state: Option<String>,
    /// Network (CIDR) never throttled, e.g. a webmail host (repeatable;
    /// default loopback, 127.0.0.0/8 and ::1; `none`: nobody).
    #[arg(long = "trusted-network")]
    trusted_networks: Vec<String>,
    /// Turn brute-force throttling off.
    #[arg(long)]
    no_throttle: bool,
    /// Remember successful verifications of expensive schemes this long (0: off).
    #[arg(long)]
    cache_ttl_secs: Option<u64>,
    /// Expensive password checks (crypt, bcrypt, Argon2, PBKDF2) running at
    /// once (default: the number of CPUs).
    #[arg(long)]
    verify_concurrency: Option<usize>,
    /// Expensive checks waiting at most; past it a login is answered at once
    /// with a temporary failure (default: 64 per CPU).
    #[arg(long)]
    verify_queue: Option<usize>,
    /// Longest expected wait in the verifier's queue, in ms (default 1000);
    /// past it a login is answered at once with a temporary failure.
    #[arg(long)]
    verify_queue_ms: Option<u64>,
    /// Dovecot master user for logins verified without a plaintext
    /// ({CRAM-MD5} stored passwords, EXTERNAL): Auth-User USER*MASTER.
    #[arg(long)]
    master_user: Option<String>,
    /// File whose first line is the master user's password.
    #[arg(long)]
    master_password_file: Option<PathBuf>,
    /// Dovecot auth_master_user_separator (default *).
    #[arg(long)]
    master_separator: Option<String>,
    /// EXTERNAL: client certificate with this SHA-1 fingerprint is USER
    /// (HEX=USER, repeatable).
    #[arg(long)]
    external_fingerprint: Vec<String>,
    /// EXTERNAL: this subject attribute's value is the user (CN,
    /// emailAddress, …; repeatable).
    #[arg(long)]
    external_subject: Vec<String>,
    /// With --external-subject: only certificates issued by this DN (RFC 2253).
    #[arg(long)]
    external_issuer: Option<String>,
}

/// `--trusted-network`: none given keeps the file's (or the loopback
/// default); `none` alone clears the list.
fn trusted_networks(flags: &[String]) -> Result<Option<Vec<String>>, String> {
    match flags {
        [] => Ok(None),
        [only] if only == "none" => Ok(Some(Vec::new())),
        list if list.iter().any(|n| n == "none") => {
            Err("--trusted-network none cannot be combined with networks".into())
        }
        list => Ok(Some(list.to_vec())),
    }
}

impl ServeArgs {
    fn raw(&self) -> Result<RawConfig, String> {
        let file = match &self.config {
            Some(p) => RawConfig::load(p)?,
            None => RawConfig::default(),
        };
        let cli = RawConfig {
            listen: self.listen.clone(),
            socket_mode: self.socket_mode.clone(),
            socket_owner: self.socket_owner.clone(),
            socket_group: self.socket_group.clone(),
            user: self.user.clone(),
            group: self.group.clone(),
            passdb: self.passdb.clone(),
            default_scheme: self.default_scheme.clone(),
            password_query: self.password_query.clone(),
            argon2_max_memory: self.argon2_max_memory.clone(),
            mechanisms: self.mechanisms.clone(),
            upstream: self.upstream.clone(),
            upstream_domain: self.upstream_domain.clone(),
            upstream_domains: Default::default(),
            upstream_check_ms: self.upstream_check_ms,
            trusted_proxies: self.trusted_proxies.clone(),
            require_header: self.require_header.clone(),
            local_domains: self.local_domains.clone(),
            smtp_pass: self.smtp_pass.then_some(true),
            reject_unknown_client: self.reject_unknown_client.then_some(true),
            log: self.log.clone(),
            log_level: self.log_level.clone(),
            timeout_ms: self.timeout_ms,
            auth_wait: RawWait {
                base: self.auth_wait_base,
                max: self.auth_wait_max,
                max_attempts: self.max_attempts,
                temporary: None,
            },
            limits: Default::default(),
            state: self.state.clone(),
            throttle: RawThrottle {
                enabled: self.no_throttle.then_some(false),
                trusted_networks: trusted_networks(&self.trusted_networks)?,
                ..RawThrottle::default()
            },
            cache: RawCache {
                ttl_secs: self.cache_ttl_secs,
                ..RawCache::default()
            },
            verifier: RawVerifier {
                concurrency: self.verify_concurrency,
                queue: self.verify_queue,
                max_wait_ms: self.verify_queue_ms,
            },
            master_user: (self.master_user.is_some()
                || self.master_password_file.is_some()
                || self.master_separator.is_some())
            .then(|| RawMasterUser {
                user: self.master_user.clone(),
                password: None,
                password_file: self.master_password_file.clone(),
                separator: self.master_separator.clone(),
            }),
            external: RawExternal {
                rule: self.external_rules()?,
            },
        };
        Ok(file.overlay(cli))
    }

    fn external_rules(&self) -> Result<Vec<RawExternalRule>, String> {
        let mut rules = Vec::new();
        for f in &self.external_fingerprint {
            let (fp, user) = f
                .split_once('=')
                .ok_or_else(|| format!("--external-fingerprint `{f}`: expected HEX=USER"))?;
            rules.push(RawExternalRule {
                fingerprint: Some(fp.to_owned()),
                user: Some(user.to_owned()),
                ..RawExternalRule::default()
            });
        }
        for a in &self.external_subject {
            rules.push(RawExternalRule {
                subject_attribute: Some(a.clone()),
                issuer: self.external_issuer.clone(),
                ..RawExternalRule::default()
            });
        }
        if self.external_issuer.is_some() && self.external_subject.is_empty() {
            return Err("--external-issuer needs --external-subject".into());
        }
        Ok(rules)
    }

    /// Validates the config and opens the passdbs, collecting every problem.
    fn build(&self) -> Result<(Config, Service), Vec<String>> {
        let config = Config::validate(self.raw().map_err(|e| vec![e])?)?;
        // Stored hashes are checked against the Argon2 limit when they are
        // parsed (passwd-file at load, SQL/LDAP at lookup): set it before the
        // passdbs open. It is process-wide, so a rejected reload puts back the
        // limit of the configuration still serving.
        let previous = scheme::set_argon2_max_memory_kib(config.argon2_max_memory_kib);
        let built = Self::open_service(config);
        if built.is_err() {
            scheme::set_argon2_max_memory_kib(previous);
        }
        built
    }

    /// The passdbs and the service of a validated `config`.
    fn open_service(config: Config) -> Result<(Config, Service), Vec<String>> {
        let mut problems = Vec::new();
        let mut passdbs = Vec::new();
        for uri in &config.passdbs {
            if let Some(path) = uri.strip_prefix("passwd-file:") {
                match PasswdFile::check(path.as_ref(), config.default_scheme) {
                    Ok(p) => {
                        problems.extend(p.into_iter().map(|p| format!("passwd-file {path}: {p}")))
                    }
                    Err(e) => problems.push(e),
                }
            }
            let options = PassdbOptions {
                default_scheme: config.default_scheme,
                password_query: config.password_query.clone(),
            };
            match AnyPassdb::open_with(uri, &options) {
                Ok(p) => passdbs.push(p),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let throttle = match (&config.throttle, &config.state) {
            (None, _) => None,
            (Some(p), None) => Some(Arc::new(Throttle::in_memory(p.clone(), Clock::system()))),
            (Some(p), Some(url)) => match Throttle::with_redis(p.clone(), Clock::system(), url) {
                Ok(t) => Some(Arc::new(t)),
                Err(e) => {
                    problems.push(e);
                    None
                }
            },
        };
        let policy = Policy {
            mechanisms: config.mechanisms.clone(),
            local_domains: config.local_domains.clone(),
            upstreams: config.upstreams.clone(),
            wait: config.wait,
            smtp_pass: config.smtp_pass,
            timeout: config.timeout,
            throttle,
            cache: config.cache.map(|c| Arc::new(Cache::new(c))),
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let auth = Authenticator::new(policy, passdbs)?
            .with_trusted_proxies(config.trusted_proxies.clone())
            .with_verifier(Verifier::new(config.verifier))
            .with_master_user(config.master_user.clone())
            .with_reject_unknown_client(config.reject_unknown_client)
            .with_external(config.external.clone())
            .map_err(|e| vec![e.to_string()])?;
        let service = Service::new(auth, config.required.clone());
        Ok((config, service))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::CheckConfig(args) => check_config(args),
        Command::Status(args) => status(args),
        Command::Throttle { command } => throttle(command),
        Command::Man => man(),
        Command::Hash { scheme } => hash(&scheme),
        Command::Auth {
            command:
                AuthCommand::Test {
                    login,
                    protocol,
                    method,
                    client_ip,
                    serve,
                },
        } => auth_test(&login, &protocol, &method, &client_ip, serve),
        Command::User { db, command } => user(&db, command),
    };
    match result {
        Ok(code) => code,
        Err(problems) => {
            for p in problems {
                eprintln!("nginx-auth-fcgi: {p}");
            }
            ExitCode::from(2)
        }
    }
}

type CmdResult = Result<ExitCode, Vec<String>>;

/// Most threads on tokio's blocking pool (tokio's default is 512): 64, or
/// two per CPU on larger machines, so the verifier's default concurrency (one
/// per CPU) always fits beside SQLite queries and file reads.
fn blocking_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cpus).max(64)
}

fn runtime() -> Result<tokio::runtime::Runtime, Vec<String>> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Expensive hashes are bounded by the verifier; this caps the rest
        // of the blocking work (SQLite, file reads) as well.
        .max_blocking_threads(blocking_threads())
        .build()
        .map_err(|e| vec![format!("cannot start the async runtime: {e}")])
}

fn serve(args: ServeArgs) -> CmdResult {
    let rt = runtime()?;
    // Passdb set-up may touch the filesystem only; no runtime work yet, but
    // the sqlite pool and spawn_blocking need the runtime entered.
    let _guard = rt.enter();
    let (config, mut service) = args.build()?;
    audit::init(&config.log, config.log_level);
    service.start_upstream_checks(config.state.as_deref());
    let listeners = match listen::open(&config.listen, &config.socket) {
        Ok(l) => l,
        Err(e) if config.listen.is_empty() => {
            log::debug!(
                "no inherited listener ({e}); using {}",
                config::DEFAULT_LISTEN
            );
            let spec: ListenSpec = config::DEFAULT_LISTEN
                .parse()
                .map_err(|e| vec![format!("{e}")])?;
            listen::open(&[spec], &config.socket).map_err(|e| vec![e.to_string()])?
        }
        Err(e) => return Err(vec![e.to_string()]),
    };
    if let Some((user, group)) = &config.run_as {
        listen::drop_privileges(user, group.as_deref()).map_err(|e| vec![e.to_string()])?;
    }
    log::info!(
        "serving on {} listener(s); passdbs: {}",
        listeners.len(),
        passdb_list(&config)
    );
    if let Some(t) = &config.throttle {
        log::info!("throttle: {}", trusted_line(t));
    }
    log::info!(
        "throttle: {}; verification cache: {}",
        match (&config.throttle, &config.state) {
            (None, _) => "off",
            (Some(_), None) => "on, state in memory",
            (Some(_), Some(_)) => "on, state shared in Redis",
        },
        config
            .cache
            .map_or_else(|| "off".to_owned(), |c| format!("{} s", c.ttl.as_secs()))
    );
    let handler = Arc::new(Reloadable::new(service));
    // Registered before READY=1, so an early SIGHUP cannot kill us.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| vec![format!("cannot handle SIGHUP: {e}")])?;
    let reloader = rt.spawn(reload_on_sighup(hup, args, Arc::clone(&handler)));
    let result = rt.block_on(async move {
        listen::notify_ready();
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM: finishing in-flight requests"),
                _ = int.recv() => log::info!("SIGINT: finishing in-flight requests"),
            }
            listen::notify_stopping();
        };
        server::run(listeners, handler, config.limits.clone(), shutdown).await
    });
    reloader.abort();
    match result {
        Ok(()) => {
            log::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(vec![format!("server failed: {e}")]),
    }
}

/// On every SIGHUP, re-reads the config file and reopens the passdbs exactly
/// like start-up, and swaps the new service in if that succeeds; otherwise
/// logs why and keeps the old one. Requests are served throughout. The
/// listeners, socket settings, `user`/`group`, `[limits]` and the log target
/// and level are fixed at start-up (a change to them needs a restart).
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    args: ServeArgs,
    handler: Arc<Reloadable>,
) {
    while hup.recv().await.is_some() {
        listen::notify_reloading();
        log::info!("SIGHUP: reloading the configuration");
        let args = args.clone();
        // build() reads files and may connect to SQL/LDAP servers: keep it
        // off the request workers.
        match tokio::task::spawn_blocking(move || args.build()).await {
            Ok(Ok((config, mut service))) => {
                service.start_upstream_checks(config.state.as_deref());
                handler.replace(service);
                log::info!(
                    "configuration reloaded; passdbs: {} (listeners, user, limits and log \
                     settings need a restart)",
                    passdb_list(&config)
                );
            }
            Ok(Err(problems)) => {
                for p in &problems {
                    log::error!("reload: {p}");
                }
                log::error!(
                    "reload rejected ({} problem(s)); still serving the previous configuration",
                    problems.len()
                );
            }
            Err(e) => {
                log::error!("reload rejected ({e}); still serving the previous configuration")
            }
        }
        listen::notify_ready();
    }
}

/// What the throttle never counts, for start-up and check-config.
fn trusted_line(t: &nginx_auth_fcgi::throttle::ThrottlePolicy) -> String {
    if t.trusted.is_empty() {
        "no trusted networks (loopback is counted too)".to_owned()
    } else {
        let nets: Vec<String> = t.trusted.iter().map(|c| c.to_string()).collect();
        format!(
            "trusted networks, never counted, delayed or blocked: {} (clear with \
             trusted_networks = [] or --trusted-network none)",
            nets.join(", ")
        )
    }
}

/// The passdb URIs for logs, database passwords masked.
fn passdb_list(config: &Config) -> String {
    let uris: Vec<String> = config.passdbs.iter().map(|u| redact_uri(u)).collect();
    uris.join(", ")
}

fn check_config(args: ServeArgs) -> CmdResult {
    let rt = runtime()?;
    let _guard = rt.enter();
    let (config, _service) = args.build()?;
    println!("configuration OK");
    println!("  passdbs: {}", passdb_list(&config));
    println!(
        "  argon2 max memory: {} per verification",
        config::format_size_kib(scheme::argon2_max_memory_kib())
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
    for w in challenge_warnings(&config) {
        println!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
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

fn hash(scheme: &str) -> CmdResult {
    let scheme: Scheme = scheme.parse().map_err(|e| vec![format!("{e}")])?;
    let pw = read_password(true, false)?;
    if pw.is_empty() {
        return Err(vec!["empty password".into()]);
    }
    let h = scheme::hash(scheme, pw.expose()).map_err(|e| vec![e.to_string()])?;
    println!("{h}");
    Ok(ExitCode::SUCCESS)
}

fn auth_test(
    user: &str,
    protocol: &str,
    method: &str,
    client_ip: &str,
    args: ServeArgs,
) -> CmdResult {
    let protocol = protocol
        .parse::<MailProtocol>()
        .map_err(|e| vec![e.to_string()])?;
    let method = match method.to_ascii_lowercase().as_str() {
        "plain" | "login" => AuthMethod::Plain,
        "cram-md5" => AuthMethod::CramMd5,
        "apop" => AuthMethod::Apop,
        m => {
            return Err(vec![format!(
                "unknown method `{m}` (plain, cram-md5, apop)"
            )])
        }
    };
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

fn user(db: &str, command: UserCommand) -> CmdResult {
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

/// `status`: one FastCGI request with `AUTH_METRICS=on` to the configured
/// socket; prints the Prometheus text.
fn status(args: ServeArgs) -> CmdResult {
    print!("{}", ask_service(&args, &[(b"AUTH_METRICS", b"on")])?);
    Ok(ExitCode::SUCCESS)
}

fn throttle(command: ThrottleCommand) -> CmdResult {
    let (action, who): (&[u8], _) = match command {
        ThrottleCommand::Show(who) => (b"show", who),
        ThrottleCommand::Unblock(who) => (b"unblock", who),
    };
    let args = who.conn.serve_args();
    let ip = who.ip.unwrap_or_default();
    let login = who.user.unwrap_or_default();
    print!(
        "{}",
        ask_service(
            &args,
            &[
                (b"AUTH_THROTTLE", action),
                (b"AUTH_THROTTLE_IP", ip.as_bytes()),
                (b"AUTH_THROTTLE_USER", login.as_bytes()),
            ],
        )?
    );
    Ok(ExitCode::SUCCESS)
}

/// Sends one FastCGI request with `params` (and the shared secret) to the
/// running service's first listener; the body of its 200 answer.
fn ask_service(args: &ServeArgs, params: &[(&[u8], &[u8])]) -> Result<String, Vec<String>> {
    use nginx_auth_fcgi::fastcgi::record::{self, RecordType, Role};
    use std::io::Read;
    let config = Config::validate(args.raw().map_err(|e| vec![e])?)?;
    let spec = match config.listen.first() {
        Some(s) => s.clone(),
        None => config::DEFAULT_LISTEN
            .parse::<ListenSpec>()
            .map_err(|e| vec![e.to_string()])?,
    };
    let mut pairs = Vec::new();
    let mut put =
        |k: &[u8], v: &[u8]| record::encode_pair(&mut pairs, k, v).map_err(|e| vec![e.to_string()]);
    for (k, v) in params {
        put(k, v)?;
    }
    for r in &config.required {
        put(r.param.as_bytes(), r.value.expose())?;
    }
    let mut out = Vec::new();
    record::encode_begin_request(&mut out, 1, Role::Responder, 0);
    record::encode_stream(&mut out, RecordType::Params, 1, &pairs);
    record::encode_stream_end(&mut out, RecordType::Params, 1);
    record::encode_stream_end(&mut out, RecordType::Stdin, 1);
    let mut reply = Vec::new();
    let io = |e: std::io::Error| vec![format!("{spec}: {e}")];
    match &spec {
        ListenSpec::Unix(path) => {
            let mut s = std::os::unix::net::UnixStream::connect(path).map_err(io)?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .map_err(io)?;
            s.write_all(&out).map_err(io)?;
            s.read_to_end(&mut reply).map_err(io)?;
        }
        ListenSpec::Tcp(addr) => {
            let mut s = std::net::TcpStream::connect(addr).map_err(io)?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .map_err(io)?;
            s.write_all(&out).map_err(io)?;
            s.read_to_end(&mut reply).map_err(io)?;
        }
        other => {
            return Err(vec![format!(
                "the service is reached with --listen unix:PATH or tcp:HOST:PORT, not {other}"
            )])
        }
    }
    let mut stdout = Vec::new();
    let mut buf = &reply[..];
    while let Ok(Some((rec, used))) = record::decode(buf) {
        if rec.record_type == RecordType::Stdout {
            stdout.extend_from_slice(rec.content);
        }
        buf = &buf[used..];
    }
    let text = String::from_utf8_lossy(&stdout);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("Status: 200") {
        return Err(vec![format!(
            "the service answered: {} {}",
            head.lines().next().unwrap_or("nothing"),
            body.trim()
        )]);
    }
    Ok(body.to_owned())
}

/// `man`: roff for `man 1 nginx-auth-fcgi`, with every subcommand's flags, so
/// the page can never drift from the CLI.
fn man() -> CmdResult {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let mut out = Vec::new();
    let io = |e: std::io::Error| vec![format!("rendering the manual: {e}")];
    clap_mangen::Man::new(cmd.clone())
        .render(&mut out)
        .map_err(io)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let title = format!("nginx-auth-fcgi {}", sub.get_name());
        out.extend_from_slice(format!(".SH \"{}\"\n", title.to_uppercase()).as_bytes());
        if let Some(about) = sub.get_about() {
            out.extend_from_slice(format!("{about}\n").as_bytes());
        }
        let page = clap_mangen::Man::new(sub.clone());
        page.render_options_section(&mut out).map_err(io)?;
    }
    std::io::stdout().write_all(&out).map_err(io)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// clap checks argument names per subcommand only when that subcommand
    /// is built; this checks all of them (a flattened `--user` once clashed
    /// with `auth test USER`).
    #[test]
    fn every_subcommand_is_consistent() {
        Cli::command().debug_assert();
    }
}
