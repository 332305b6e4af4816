//! Commands that ask the running service over its socket: `status` (the
//! metrics), `throttle show|unblock` and `cache flush`, and the note the
//! `user` commands send it after a change.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use nginx_auth_fcgi::config;
use nginx_auth_fcgi::listen::ListenSpec;

use super::serve::ServeArgs;
use super::CmdResult;

#[derive(Subcommand)]
pub enum ThrottleCommand {
    /// Counters, blocks and time left for an address and/or user, and what
    /// their next login would meet and why.
    Show(ThrottleArgs),
    /// Lift blocks (and forget their counts): --ip and --user for the pair,
    /// --ip alone for the network and its pairs, --user alone everywhere.
    Unblock(ThrottleArgs),
}

/// Whom a `throttle` command is about, and how it reaches the service.
#[derive(Args)]
pub struct ThrottleArgs {
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
pub struct ConnArgs {
    /// TOML configuration file (its listen and require_header are used).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// The service's socket: unix:PATH or tcp:HOST:PORT.
    #[arg(long, global = true)]
    listen: Vec<String>,
    /// NAME=VALUE shared secret the service requires (repeatable).
    #[arg(long, global = true)]
    require_header: Vec<String>,
}

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Forget cached passdb records (the credential lookup cache) of one
    /// user (--user), or every record and verification.
    Flush {
        /// Only this user's records (every passdb; ASCII case ignored).
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// `cache flush [--user U]` over the socket.
pub fn cache(command: CacheCommand) -> CmdResult {
    let CacheCommand::Flush { user, conn } = command;
    // An empty name would mean "everything" on the wire: say so instead.
    if user.as_deref().is_some_and(|u| u.trim().is_empty()) {
        return Err(vec![
            "cache flush --user: the user name is empty (leave --user out to forget everything)"
                .to_owned(),
        ]);
    }
    let user = user.unwrap_or_default();
    let answers = flush(&conn.serve_args(), &user)?;
    let several = answers.len() > 1;
    let mut failed = Vec::new();
    for (spec, answer) in answers {
        match answer {
            Ok(text) if several => print!("{spec}: {text}"),
            Ok(text) => print!("{text}"),
            Err(problems) => failed.extend(problems),
        }
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(failed)
    }
}

/// A service's answer: the body of its 200, or what went wrong.
type Answer = Result<String, Vec<String>>;

/// `cache flush` sent to every listener of the configuration (several
/// `--listen` for several instances on one host: each is told), each
/// answer with the listener it came from.
fn flush(args: &ServeArgs, user: &str) -> Result<Vec<(ListenSpec, Answer)>, Vec<String>> {
    let config = args.config()?;
    let params: [(&[u8], &[u8]); 2] = [
        (b"AUTH_CACHE", b"flush"),
        (b"AUTH_CACHE_USER", user.as_bytes()),
    ];
    Ok(listeners(&config)?
        .into_iter()
        .map(|spec| {
            let answer = ask(&config, &spec, &params);
            (spec, answer)
        })
        .collect())
}

/// After a `user` command changed `user` in the SQLite database: tells the
/// running service (reached as `conn` says, by default its default socket)
/// to forget its cached record, so the change takes effect at once. Best
/// effort: a service that cannot be reached is named, with what to do.
pub fn user_changed(conn: &ConnArgs, user: &str) {
    let args = conn.clone().serve_args();
    let answers = match flush(&args, user) {
        Ok(answers) => answers,
        Err(problems) => return note_not_told(user, &problems),
    };
    for (spec, answer) in answers {
        match answer {
            Ok(_) => eprintln!("the running service forgot its cached record of {user} ({spec})"),
            Err(problems) => note_not_told(user, &problems),
        }
    }
}

/// What a `user` command says when a service could not be told.
fn note_not_told(user: &str, problems: &[String]) {
    eprintln!(
        "note: could not tell the running service to forget its cached record of {user} \
         ({}). If a service serves this database, the change takes effect within its \
         lookup_cache_ttl (default 60 s), or at once with `nginx-auth-fcgi cache flush \
         --user {user}` (with the service's --config or --listen) or a SIGHUP.",
        problems.join("; ")
    );
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

/// `status`: one FastCGI request with `AUTH_METRICS=on` to the configured
/// socket; prints the Prometheus text.
pub fn status(args: ServeArgs) -> CmdResult {
    print!("{}", ask_service(&args, &[(b"AUTH_METRICS", b"on")])?);
    Ok(ExitCode::SUCCESS)
}

/// `throttle show|unblock`: the throttle's admin view over the socket.
pub fn throttle(command: ThrottleCommand) -> CmdResult {
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
/// running service's first listener that can be dialled; the body of its
/// 200 answer.
fn ask_service(args: &ServeArgs, params: &[(&[u8], &[u8])]) -> Result<String, Vec<String>> {
    let config = args.config()?;
    let first = listeners(&config)?.swap_remove(0);
    ask(&config, &first, params)
}

/// The configured listeners that can be dialled (inherited sockets, `fd:N`
/// and `systemd`, cannot; when nothing else is configured they are kept, so
/// the error names them), or the default socket.
fn listeners(config: &config::Config) -> Result<Vec<ListenSpec>, Vec<String>> {
    if !config.listen.is_empty() {
        let dialled: Vec<ListenSpec> = config
            .listen
            .iter()
            .filter(|s| matches!(s, ListenSpec::Unix(_) | ListenSpec::Tcp(_)))
            .cloned()
            .collect();
        return Ok(match dialled.is_empty() {
            true => config.listen.clone(),
            false => dialled,
        });
    }
    let default = config::DEFAULT_LISTEN
        .parse::<ListenSpec>()
        .map_err(|e| vec![e.to_string()])?;
    Ok(vec![default])
}

/// One request with `params` (and the configured shared secret) to the
/// service at `spec`; the body of its 200 answer.
fn ask(
    config: &config::Config,
    spec: &ListenSpec,
    params: &[(&[u8], &[u8])],
) -> Result<String, Vec<String>> {
    use nginx_auth_fcgi::fastcgi::record::{self, RecordType, Role};
    use std::io::Read;
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
    match spec {
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
