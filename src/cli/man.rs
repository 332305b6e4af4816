//! `man`: the manual page.

use std::io::Write;
use std::process::ExitCode;

use super::CmdResult;

/// `man`: roff for `man 1 nginx-auth-fcgi`, with every subcommand's flags, so
/// the page can never drift from the CLI.
pub fn man() -> CmdResult {
    use clap::CommandFactory;
    let cmd = crate::Cli::command();
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
