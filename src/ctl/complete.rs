//! Shell completion for citrusctl (clap_complete's dynamic engine): `citrusctl completions SHELL`
//! prints a script that calls citrusctl back (`CITRUSCTL_COMPLETE=SHELL citrusctl -- WORDS…`) on
//! each Tab; [`complete_env`] answers those calls, with app and job names from the running daemon.

use std::ffi::OsString;
use std::io;
use std::time::Duration;

use clap::{CommandFactory, ValueEnum};
use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};
use clap_complete::env::{Bash, CompleteEnv, EnvCompleter, Fish, Zsh};

use crate::control::client::Client;
use crate::control::{JobsReply, Status};

/// The environment variable that turns a citrusctl run into a completion request.
const VAR: &str = "CITRUSCTL_COMPLETE";

/// How long a Tab waits for the daemon's names before offering none.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(1);

/// The shells `citrusctl completions` writes a script for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl CompletionShell {
    /// The directory name below `completions/`.
    pub fn name(self) -> &'static str {
        match self {
            CompletionShell::Bash => "bash",
            CompletionShell::Zsh => "zsh",
            CompletionShell::Fish => "fish",
        }
    }

    /// The file name the shell's completion loader looks for, for the command `bin`.
    pub fn file_name(self, bin: &str) -> String {
        match self {
            CompletionShell::Bash => bin.to_string(),
            CompletionShell::Zsh => format!("_{bin}"),
            CompletionShell::Fish => format!("{bin}.fish"),
        }
    }

    /// clap_complete's static generator for this shell (citrusd's and citrus-engine's scripts).
    pub fn aot(self) -> clap_complete::aot::Shell {
        match self {
            CompletionShell::Bash => clap_complete::aot::Shell::Bash,
            CompletionShell::Zsh => clap_complete::aot::Shell::Zsh,
            CompletionShell::Fish => clap_complete::aot::Shell::Fish,
        }
    }
}

/// Answers a completion request (when [`VAR`] is set) and exits; otherwise returns at once.
/// Call it first thing in `main`, before anything is printed.
pub fn complete_env() {
    CompleteEnv::with_factory(super::Cli::command)
        .var(VAR)
        .complete();
}

/// Writes the script that registers citrusctl's completion with `shell`.
pub fn write_registration(shell: CompletionShell, out: &mut dyn io::Write) -> io::Result<()> {
    let adapter: &dyn EnvCompleter = match shell {
        CompletionShell::Bash => &Bash,
        CompletionShell::Zsh => &Zsh,
        CompletionShell::Fish => &Fish,
    };
    adapter.write_registration(VAR, "citrusctl", "citrusctl", "citrusctl", out)
}

/// Completes an app name from the daemon.
pub(super) fn apps() -> ArgValueCandidates {
    ArgValueCandidates::new(|| app_names(false))
}

/// Completes an app name from the daemon, or `all`.
pub(super) fn apps_or_all() -> ArgValueCandidates {
    ArgValueCandidates::new(|| app_names(true))
}

/// Completes a job name from the daemon.
pub(super) fn jobs() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        ask(|client| async move {
            let reply: JobsReply = client.get("/v1/jobs").await.ok()?;
            Some(reply.jobs.into_iter().map(|j| j.name).collect())
        })
        .into_iter()
        .map(CompletionCandidate::new)
        .collect()
    })
}

fn app_names(all: bool) -> Vec<CompletionCandidate> {
    let mut names: Vec<String> = ask(|client| async move {
        let status: Status = client.get("/v1/status").await.ok()?;
        Some(status.apps.into_iter().map(|a| a.name).collect())
    });
    // One row per instance: each name once.
    names.sort();
    names.dedup();
    if all {
        names.push("all".into());
    }
    names.into_iter().map(CompletionCandidate::new).collect()
}

/// Runs `query` against the daemon the command line names (`--socket`, else the default rule),
/// giving up after [`DAEMON_TIMEOUT`]: no daemon, no names.
fn ask<F, Fut>(query: F) -> Vec<String>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Option<Vec<String>>>,
{
    let socket =
        socket_flag(std::env::args_os()).unwrap_or_else(crate::control::default_socket_path);
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    runtime
        .block_on(async { tokio::time::timeout(DAEMON_TIMEOUT, query(Client::new(socket))).await })
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The `--socket PATH` (or `--socket=PATH`) among the words being completed: the completion
/// request is `citrusctl -- citrusctl WORDS…`.
fn socket_flag(args: impl Iterator<Item = OsString>) -> Option<std::path::PathBuf> {
    let mut words = args.skip_while(|a| a != "--").skip(1);
    while let Some(word) = words.next() {
        if word == "--socket" {
            return words.next().filter(|w| !w.is_empty()).map(Into::into);
        }
        if let Some(path) = word.to_str().and_then(|w| w.strip_prefix("--socket=")) {
            return Some(path.into());
        }
    }
    None
}
