//! The three binaries' command lines in one place, so that one generator renders their man pages
//! (clap_mangen) and shell completions (clap_complete) from the definitions they parse with:
//! citrusd's flags ([`citrusd::Args`]), citrus-engine's ([`engine::Args`]), citrusctl's
//! ([`crate::ctl::Cli`], whose completion script asks the running daemon for names).

pub mod citrusd;
pub mod engine;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::aot;

use crate::ctl::complete::{write_registration, CompletionShell};

/// The three binaries' `clap::Command`s: citrusd, citrusctl, citrus-engine.
pub fn commands() -> [clap::Command; 3] {
    [
        citrusd::Args::command(),
        crate::ctl::Cli::command(),
        engine::Args::command(),
    ]
}

/// Writing the man pages or completion scripts failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct DocsError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> DocsError + '_ {
    move |source| DocsError {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes, below `dir`: `man/` — a section-1 page per binary and one per citrusctl subcommand
/// (`citrusctl-logs.1`, …); `completions/bash/NAME`, `completions/zsh/_NAME` and
/// `completions/fish/NAME.fish` for each binary, under the names the shells' completion loaders
/// look for. citrusctl's scripts are `citrusctl completions SHELL`'s (they ask the daemon for app
/// and job names); citrusd's and citrus-engine's are static. Returns the files written.
pub fn write_docs(dir: &Path) -> Result<Vec<PathBuf>, DocsError> {
    let man = dir.join("man");
    fs::create_dir_all(&man).map_err(at(&man))?;
    for cmd in commands() {
        clap_mangen::generate_to(cmd, &man).map_err(at(&man))?;
    }
    let mut written = list(&man)?;
    for shell in [
        CompletionShell::Bash,
        CompletionShell::Zsh,
        CompletionShell::Fish,
    ] {
        let sub = dir.join("completions").join(shell.name());
        fs::create_dir_all(&sub).map_err(at(&sub))?;
        for mut cmd in commands() {
            let name = cmd.get_name().to_string();
            let path = sub.join(shell.file_name(&name));
            let mut script = Vec::new();
            if name == "citrusctl" {
                write_registration(shell, &mut script).map_err(at(&path))?;
            } else {
                aot::generate(shell.aot(), &mut cmd, name, &mut script);
            }
            fs::write(&path, script).map_err(at(&path))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// The files in `dir`, sorted.
fn list(dir: &Path) -> Result<Vec<PathBuf>, DocsError> {
    let mut files = fs::read_dir(dir)
        .map_err(at(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(at(dir))?;
    files.sort();
    Ok(files)
}
