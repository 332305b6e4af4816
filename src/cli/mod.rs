//! The command line's subcommands, one file per kind.

pub mod admin;
pub mod app_password;
pub mod man;
pub mod nonce_key;
pub mod serve;
pub mod status;

use std::process::ExitCode;

/// A subcommand's exit code, or the problems to print (exit code 2).
pub type CmdResult = Result<ExitCode, Vec<String>>;

/// The daemon's runtime ([`nginx_auth_fcgi::app::runtime`]).
pub fn runtime() -> Result<tokio::runtime::Runtime, Vec<String>> {
    nginx_auth_fcgi::app::runtime()
        .map_err(|e| vec![format!("cannot start the async runtime: {e}")])
}
