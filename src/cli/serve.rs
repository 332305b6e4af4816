//! `serve`: the flags it shares with `check-config`, `status` and `auth
//! test` ([`ServeArgs`], each a twin of a TOML key), and the daemon's life:
//! listeners, privilege drop, readiness, SIGHUP reloads, shutdown.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use nginx_auth_fcgi::config::{
    self, Config, ConfigError, RawCache, RawConfig, RawExternal, RawExternalRule, RawMasterUser,
    RawThrottle, RawVerifier, RawWait,
};
use nginx_auth_fcgi::listen::{self, ListenSpec};
use nginx_auth_fcgi::passdb::redact_uri;
use nginx_auth_fcgi::reload::Reloadable;
use nginx_auth_fcgi::service::Service;
use nginx_auth_fcgi::{app, audit, server};

use super::{runtime, CmdResult};

/// Flags shared by `serve`, `check-config` and `auth test`; each has a TOML twin.
#[derive(Args, Clone, Default)]
pub struct ServeArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// unix:PATH, fd:N, tcp:HOST:PORT or systemd (repeatable). Default: an
    /// inherited socket (systemd, spawn-fcgi), else unix:/run/nginx-auth-fcgi/auth.sock.
    #[arg(long)]
    pub listen: Vec<String>,
    /// Mode of a socket file we create (octal).
    #[arg(long)]
    pub socket_mode: Option<String>,
    /// Owner of a socket file we create.
    #[arg(long)]
    pub socket_owner: Option<String>,
    /// Group of a socket file we create.
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Run as this user once the sockets are bound (start as root).
    #[arg(long)]
    pub user: Option<String>,
    /// With --user: run with this group (default: the group named like the user).
    #[arg(long)]
    pub group: Option<String>,
    /// passwd-file:PATH, sqlite:PATH, postgres://… or mysql://… (repeatable;
    /// tried in order). SQL URIs also take pool_size=, connect_timeout= and
    /// query_timeout= (seconds).
    #[arg(long)]
    pub passdb: Vec<String>,
    /// Scheme for stored passwords without a {SCHEME} prefix.
    #[arg(long)]
    pub default_scheme: Option<String>,
    /// SQL passdbs' lookup: a query whose %u (user), %n (local part) and %d
    /// (domain) become bound parameters; returns a `password` column and
    /// optionally enabled, upstream_host, upstream_port, backend_user.
    #[arg(long)]
    pub password_query: Option<String>,
    /// SQL passdbs' app passwords: a query like --password-query returning
    /// one row per app password (name, password, scopes; optionally
    /// networks, expires_at in unix seconds).
    #[arg(long)]
    pub app_password_query: Option<String>,
    /// Largest Argon2 memory cost a stored hash may ask for: 256M, 1G,
    /// 65536K (K/M/G = KiB/MiB/GiB; default 256M). Each Argon2 check
    /// allocates that much; hashes above it are refused at load.
    #[arg(long, value_name = "SIZE")]
    pub argon2_max_memory: Option<String>,
    /// Rehash stored passwords after plaintext logins to ARGON2ID, BLF-CRYPT
    /// or SHA512-CRYPT, optionally with a cost: ARGON2ID:m=65536,t=3,p=1,
    /// BLF-CRYPT:cost=12, SHA512-CRYPT:rounds=500000 (default: off).
    #[arg(long, value_name = "SCHEME[:COST]")]
    pub upgrade_scheme: Option<String>,
    /// With --upgrade-scheme: also rewrite passwd-files (atomic rename).
    #[arg(long)]
    pub rehash_passwd_file: bool,
    /// With --upgrade-scheme: also upgrade {PLAIN}, {CLEAR} and {CRAM-MD5}
    /// (those users lose CRAM-MD5, APOP and HTTP Digest).
    #[arg(long)]
    pub rehash_plain: bool,
    /// With --upgrade-scheme: the SQL passdbs' write, like --password-query
    /// with %{hash} (the new hash) and %{old_hash} (required: compare-and-set)
    /// bound too. Default: the built-in schema's UPDATE users.
    #[arg(long)]
    pub update_query: Option<String>,
    /// Enabled mechanisms: plain, cram-md5, apop (repeatable; default all).
    #[arg(long = "mechanism")]
    pub mechanisms: Vec<String>,
    /// PROTOCOL=HOST:PORT[,HOST:PORT…]: the protocol's pool, e.g.
    /// imap=10.0.0.1:143,10.0.0.2:143,[2001:db8::5]:143 (repeatable; users
    /// stick to one member by hashing their name).
    #[arg(long)]
    pub upstream: Vec<String>,
    /// DOMAIN:PROTOCOL=HOST:PORT[,…]: users of DOMAIN go to this pool
    /// instead (repeatable).
    #[arg(long)]
    pub upstream_domain: Vec<String>,
    /// Health check interval of pool members in ms (default 5000; 0: off).
    #[arg(long)]
    pub upstream_check_ms: Option<u64>,
    /// Peer network (CIDR) whose PROXY protocol address (Proxy-Protocol-Addr)
    /// is taken as the client's for throttling and logs (repeatable).
    #[arg(long = "trusted-proxy")]
    pub trusted_proxies: Vec<String>,
    /// NAME=VALUE header nginx must send (auth_http_header), repeatable.
    #[arg(long)]
    pub require_header: Vec<String>,
    /// Refuse main passwords for these protocols (imap, pop3, smtp, http;
    /// repeatable or comma-separated): only app passwords log in.
    #[arg(long)]
    pub require_app_password: Vec<String>,
    /// Domain we accept mail for without AUTH (smtp_auth none), repeatable.
    #[arg(long = "local-domain")]
    pub local_domains: Vec<String>,
    /// Send Auth-Pass on SMTP success (for nginx proxy_smtp_auth on).
    #[arg(long)]
    pub smtp_pass: bool,
    /// Refuse SMTP clients without a confirmed reverse-DNS name, like
    /// Postfix's reject_unknown_client_hostname: nginx's Client-Host
    /// [UNAVAILABLE] gets 550 5.7.25, [TEMPUNAVAIL] 450 4.7.25. Needs a
    /// resolver in nginx's mail {}.
    #[arg(long)]
    pub reject_unknown_client: bool,
    /// stderr, syslog or syslog:FACILITY (default syslog:mail).
    #[arg(long)]
    pub log: Option<String>,
    /// error, warn, info, debug.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Longest a decision may take (ms) before it is a temporary failure.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Auth-Wait after the first failed attempt, doubling per attempt.
    #[arg(long)]
    pub auth_wait_base: Option<u32>,
    /// Cap of one Auth-Wait.
    #[arg(long)]
    pub auth_wait_max: Option<u32>,
    /// From this attempt on, answer without Auth-Wait so nginx closes the connection.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Where throttle state lives: memory (default) or redis://HOST[:PORT][/DB]
    /// to share one limit between instances (also rediss://…,
    /// redis+sentinel://HOST[:PORT],…/MASTER[/DB]).
    #[arg(long)]
    pub state: Option<String>,
    /// CA certificates (PEM) that a rediss:// state's server must chain to
    /// (default: the system's roots).
    #[arg(long)]
    pub state_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a rediss:// state (needs --state-key-file).
    #[arg(long)]
    pub state_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --state-cert-file.
    #[arg(long)]
    pub state_key_file: Option<PathBuf>,
    /// Network (CIDR) never throttled, e.g. a webmail host (repeatable;
    /// default loopback, 127.0.0.0/8 and ::1; `none`: nobody).
    #[arg(long = "trusted-network")]
    pub trusted_networks: Vec<String>,
    /// Turn brute-force throttling off.
    #[arg(long)]
    pub no_throttle: bool,
    /// Remember successful verifications of expensive schemes this long (0: off).
    #[arg(long)]
    pub cache_ttl_secs: Option<u64>,
    /// Expensive password checks (crypt, bcrypt, Argon2, PBKDF2) running at
    /// once (default: the number of CPUs).
    #[arg(long)]
    pub verify_concurrency: Option<usize>,
    /// Expensive checks waiting at most; past it a login is answered at once
    /// with a temporary failure (default: 64 per CPU).
    #[arg(long)]
    pub verify_queue: Option<usize>,
    /// Longest expected wait in the verifier's queue, in ms (default 1000);
    /// past it a login is answered at once with a temporary failure.
    #[arg(long)]
    pub verify_queue_ms: Option<u64>,
    /// Dovecot master user for logins verified without a plaintext
    /// ({CRAM-MD5} stored passwords, EXTERNAL): Auth-User USER*MASTER.
    #[arg(long)]
    pub master_user: Option<String>,
    /// File whose first line is the master user's password.
    #[arg(long)]
    pub master_password_file: Option<PathBuf>,
    /// Dovecot auth_master_user_separator (default *).
    #[arg(long)]
    pub master_separator: Option<String>,
    /// EXTERNAL: client certificate with this SHA-1 fingerprint is USER
    /// (HEX=USER, repeatable).
    #[arg(long)]
    pub external_fingerprint: Vec<String>,
    /// EXTERNAL: this subject attribute's value is the user (CN,
    /// emailAddress, …; repeatable).
    #[arg(long)]
    pub external_subject: Vec<String>,
    /// With --external-subject: only certificates issued by this DN (RFC 2253).
    #[arg(long)]
    pub external_issuer: Option<String>,
    /// Seconds a record a passdb returned (SQLite, PostgreSQL, MySQL, LDAP)
    /// answers without asking it again (default 60; 0: off). A password
    /// changed in the database directly takes effect within this time.
    #[arg(long, value_name = "SECS")]
    pub lookup_cache_ttl: Option<u64>,
    /// Seconds after it was fetched a cached record still answers while its
    /// passdb is down or times out (default 3600; 0: never).
    #[arg(long, value_name = "SECS")]
    pub lookup_cache_stale_ttl: Option<u64>,
    /// HTTP Digest nonce key shared by several instances: a 0600 file of at
    /// least 64 hex digits (`nonce-key init` makes one). Default: a random
    /// key per process.
    #[arg(long)]
    pub nonce_key_file: Option<PathBuf>,
}

/// `--trusted-network`: none given keeps the file's (or the loopback
/// default); `none` alone clears the list.
fn trusted_networks(flags: &[String]) -> Result<Option<Vec<String>>, ConfigError> {
    match flags {
        [] => Ok(None),
        [only] if only == "none" => Ok(Some(Vec::new())),
        list if list.iter().any(|n| n == "none") => Err(ConfigError::Invalid(
            "--trusted-network none cannot be combined with networks".into(),
        )),
        list => Ok(Some(list.to_vec())),
    }
}

impl ServeArgs {
    fn raw(&self) -> Result<RawConfig, ConfigError> {
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
            app_password_query: self.app_password_query.clone(),
            argon2_max_memory: self.argon2_max_memory.clone(),
            upgrade_scheme: self.upgrade_scheme.clone(),
            rehash_passwd_file: self.rehash_passwd_file.then_some(true),
            rehash_plain: self.rehash_plain.then_some(true),
            update_query: self.update_query.clone(),
            mechanisms: self.mechanisms.clone(),
            upstream: self.upstream.clone(),
            upstream_domain: self.upstream_domain.clone(),
            upstream_domains: Default::default(),
            upstream_check_ms: self.upstream_check_ms,
            trusted_proxies: self.trusted_proxies.clone(),
            require_header: self.require_header.clone(),
            local_domains: self.local_domains.clone(),
            require_app_password: self.require_app_password.clone(),
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
            state_ca_file: self.state_ca_file.clone(),
            state_cert_file: self.state_cert_file.clone(),
            state_key_file: self.state_key_file.clone(),
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
            lookup_cache_ttl: self.lookup_cache_ttl,
            lookup_cache_stale_ttl: self.lookup_cache_stale_ttl,
            nonce_key_file: self.nonce_key_file.clone(),
        };
        Ok(file.overlay(cli))
    }

    fn external_rules(&self) -> Result<Vec<RawExternalRule>, ConfigError> {
        let mut rules = Vec::new();
        for f in &self.external_fingerprint {
            let (fp, user) = f.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!("--external-fingerprint `{f}`: expected HEX=USER"))
            })?;
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
            return Err(ConfigError::Invalid(
                "--external-issuer needs --external-subject".into(),
            ));
        }
        Ok(rules)
    }

    /// The validated configuration these flags (over their file) make.
    pub fn config(&self) -> Result<Config, Vec<String>> {
        let raw = self.raw().map_err(|e| vec![e.to_string()])?;
        Config::validate(raw).map_err(|p| p.iter().map(ToString::to_string).collect())
    }

    /// Validates the config and opens the passdbs, collecting every problem.
    pub fn build(&self) -> Result<(Config, Service), Vec<String>> {
        let config = self.config()?;
        let service = app::build(&config)?;
        Ok((config, service))
    }
}

/// `serve`: runs the responder until SIGTERM/SIGINT, reloading on SIGHUP.
pub fn serve(args: ServeArgs) -> CmdResult {
    let rt = runtime()?;
    // Passdb set-up may touch the filesystem only; no runtime work yet, but
    // the sqlite pool and spawn_blocking need the runtime entered.
    let _guard = rt.enter();
    let (config, mut service) = args.build()?;
    audit::init(&config.log, config.log_level);
    for w in &config.warnings {
        log::warn!("{w}");
    }
    service.start_upstream_checks(config.state.as_ref());
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
    log::info!("{}", super::nonce_key::describe(&config));
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
    log::info!(
        "{}",
        nginx_auth_fcgi::lookup_cache::LookupPolicy::describe(config.lookup_cache.as_ref())
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
/// like start-up, and swaps the new service in if that succeeds (with an
/// empty credential lookup cache); otherwise logs why and keeps the old one,
/// its lookup cache emptied. Requests are served throughout. The
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
                service.start_upstream_checks(config.state.as_ref());
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
                forget_records(&handler);
            }
            Err(e) => {
                log::error!("reload rejected ({e}); still serving the previous configuration");
                forget_records(&handler);
            }
        }
        listen::notify_ready();
    }
}

/// A SIGHUP forgets the cached passdb records even when the reload is
/// rejected (the new configuration would have started with none).
fn forget_records(handler: &Reloadable) {
    if let Some(c) = handler.current().authenticator().lookup_cache() {
        c.flush(None);
    }
}

/// What the throttle never counts, for start-up and check-config.
pub fn trusted_line(t: &nginx_auth_fcgi::throttle::ThrottlePolicy) -> String {
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
pub fn passdb_list(config: &Config) -> String {
    let uris: Vec<String> = config.passdbs.iter().map(|u| redact_uri(u)).collect();
    uris.join(", ")
}
