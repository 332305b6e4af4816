//! `nginx-auth-fcgi`: command line. `serve` runs the FastCGI responder;
//! `check-config`, `hash`, `auth test`, `user …`, `status`, `throttle …`,
//! `cache flush` and `nonce-key init` are admin tools. Each subcommand lives
//! in [`cli`]; the service itself is built by the library ([`nginx_auth_fcgi::app`]).

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::admin::{self, AuthCommand, UserCommand};
use cli::man;
use cli::nonce_key::{self, NonceKeyCommand};
use cli::serve::{self, ServeArgs};
use cli::status::{self, CacheCommand, ConnArgs, ThrottleCommand};
use nginx_auth_fcgi::config;

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
    /// Manage users in the embedded SQLite database. After a change the
    /// running service is told to forget its cached record of the user
    /// (over the socket of --config/--listen, by default its default one).
    User {
        /// Database path (or `sqlite:PATH`); before or after the subcommand.
        #[arg(long, global = true, default_value = config::DEFAULT_PASSDB)]
        db: String,
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Forget the running service's cached passdb records over its socket
    /// (same flags and config as serve).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// The HTTP Digest nonce key file several instances share.
    NonceKey {
        #[command(subcommand)]
        command: NonceKeyCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::CheckConfig(args) => admin::check_config(args),
        Command::Status(args) => status::status(args),
        Command::Throttle { command } => status::throttle(command),
        Command::Man => man::man(),
        Command::Hash { scheme } => admin::hash(&scheme),
        Command::Auth {
            command:
                AuthCommand::Test {
                    login,
                    protocol,
                    method,
                    client_ip,
                    serve,
                },
        } => admin::auth_test(&login, &protocol, &method, &client_ip, serve),
        Command::User { db, conn, command } => admin::user(&db, &conn, command),
        Command::Cache { command } => status::cache(command),
        Command::NonceKey { command } => nonce_key::nonce_key(command),
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
