//! `user app-password …` and `user require-app-password`: app passwords in
//! the embedded SQLite database (see
//! [`nginx_auth_fcgi::passdb::app_password`]).

use std::process::ExitCode;

use clap::Subcommand;

use nginx_auth_fcgi::net::Cidr;
use nginx_auth_fcgi::passdb::app_password::{self, sqlite as db, Scope, Services};
use nginx_auth_fcgi::passdb::sqlite::{Admin, SqliteError};
use nginx_auth_fcgi::scheme::{self, Scheme};

use super::CmdResult;

#[derive(Subcommand)]
pub enum AppPasswordCommand {
    /// Generate an app password, store its hash and print it (once).
    Add {
        /// Login.
        user: String,
        /// Its name, unique per user (e.g. phone).
        name: String,
        /// What it opens: imap, pop3, smtp, http, http:REALM (comma-separated).
        #[arg(long, required = true)]
        scope: String,
        /// Lifetime, e.g. 90d, 12h, 4w (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
        /// Client network it works from (CIDR), repeatable (default: any).
        #[arg(long)]
        network: Vec<String>,
    },
    /// List a user's app passwords (never the secret or its hash).
    List {
        /// Login.
        user: String,
    },
    /// Delete (revoke) one app password.
    Del {
        /// Login.
        user: String,
        /// Its name.
        name: String,
    },
}

fn err(e: impl std::fmt::Display) -> Vec<String> {
    vec![e.to_string()]
}

/// Runs one `user app-password` command on `admin`'s database.
pub fn run(admin: &Admin, command: AppPasswordCommand) -> CmdResult {
    let conn = admin.connection();
    match command {
        AppPasswordCommand::Add {
            user,
            name,
            scope,
            expires,
            network,
        } => {
            let scopes = Scope::parse_list(&scope).map_err(err)?;
            let networks = network
                .iter()
                .map(|n| n.parse::<Cidr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            let expires = expires
                .as_deref()
                .map(app_password::parse_duration)
                .transpose()
                .map_err(err)?
                .map(|secs| app_password::now() + secs);
            let secret = app_password::generate();
            // SHA256-CRYPT: fast, and enough at ~140 bits of entropy.
            let stored = scheme::hash(Scheme::Sha256Crypt, secret.as_bytes()).map_err(err)?;
            let new = db::NewAppPassword {
                name: &name,
                stored: &stored,
                scopes: &scopes,
                networks: &networks,
                expires,
            };
            db::add(conn, &user, &new).map_err(|e: SqliteError| err(e))?;
            println!("{secret}");
            eprintln!(
                "app password {name} of {user} added ({}); it is shown only this once",
                app_password::scopes_text(&scopes)
            );
        }
        AppPasswordCommand::List { user } => {
            let rows = db::list(conn, &user).map_err(err)?;
            println!("NAME\tSCOPES\tNETWORKS\tCREATED\tLAST USED\tLAST IP\tEXPIRES");
            for r in &rows {
                let (used, ip) = r
                    .last_used
                    .clone()
                    .unwrap_or_else(|| ("never".into(), "-".into()));
                println!(
                    "{}\t{}\t{}\t{}\t{used}\t{ip}\t{}",
                    r.name,
                    r.scopes,
                    if r.networks.is_empty() {
                        "any"
                    } else {
                        &r.networks
                    },
                    r.created,
                    r.expires.as_deref().unwrap_or("never"),
                );
            }
            eprintln!("{} app password(s)", rows.len());
        }
        AppPasswordCommand::Del { user, name } => {
            db::delete(conn, &user, &name).map_err(err)?;
            eprintln!("app password {name} of {user} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `user require-app-password USER PROTOCOLS`: the user's own list (empty
/// string or `none`: none of their own; the global one still applies).
pub fn require(admin: &Admin, user: &str, protocols: &str) -> CmdResult {
    let services = if protocols.eq_ignore_ascii_case("none") {
        Services::default()
    } else {
        Services::parse(&[protocols]).map_err(err)?
    };
    db::set_required(admin.connection(), user, services).map_err(err)?;
    eprintln!(
        "{user}: main password refused for {}",
        if services.is_empty() {
            "no protocol of their own".to_owned()
        } else {
            services.to_string()
        }
    );
    Ok(ExitCode::SUCCESS)
}
