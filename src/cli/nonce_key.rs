//! `nonce-key init [PATH]`: makes the HTTP Digest nonce key file several
//! instances share (`nonce_key_file`), `0600` from its creation; an existing
//! file is left alone.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use nginx_auth_fcgi::config::Config;
use nginx_auth_fcgi::http_auth::nonce_key::{self, Init};

use super::CmdResult;

/// `nonce-key …`.
#[derive(Subcommand)]
pub enum NonceKeyCommand {
    /// Create the key file (64 random hex digits, mode 0600) when it is
    /// missing; an existing file is left as it is. Copy the same file to
    /// every instance and point nonce_key_file (--nonce-key-file) at it.
    Init {
        /// The file to create.
        #[arg(default_value = nonce_key::DEFAULT_PATH)]
        path: PathBuf,
    },
}

/// Runs a `nonce-key` command.
pub fn nonce_key(command: NonceKeyCommand) -> CmdResult {
    match command {
        NonceKeyCommand::Init { path } => match nonce_key::init(&path) {
            Ok(Init::Created) => {
                println!(
                    "created {} (mode 0600); give every instance the same file \
                     (nonce_key_file = \"{}\")",
                    path.display(),
                    path.display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Ok(Init::Exists) => {
                println!(
                    "{} exists; left as it is (not read, not changed)",
                    path.display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(vec![format!("cannot create {}: {e}", path.display())]),
        },
    }
}

/// Where Digest nonces come from and where their counts live, for
/// `check-config` and the start-up log.
pub fn describe(config: &Config) -> String {
    let key = match &config.nonce_key_file {
        Some(p) => format!("key from {}", p.display()),
        None => "random key per process".to_owned(),
    };
    let counts = match config.state {
        Some(_) => "highest nc in this process and in Redis",
        None => "highest nc in this process",
    };
    format!("digest nonces: {key}; {counts}")
}
