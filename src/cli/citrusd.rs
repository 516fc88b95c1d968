//! citrusd's flags: parsed by `src/bin/citrusd.rs`, rendered into its man page and completions.

use std::path::PathBuf;

use clap::Parser;

/// The Citrus per-host daemon: supervises apps, serves citrusctl on a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "citrusd", version)]
pub struct Args {
    /// Config file (default: /etc/citrus/citrusd.toml as root, else config/citrusd.toml).
    #[arg(long, value_hint = clap::ValueHint::FilePath)]
    pub config: Option<PathBuf>,
    /// Apply each app's `env_NAME` table.
    #[arg(long)]
    pub env: Option<String>,
    /// Control socket (default: $CITRUS_SOCKET, the config's `socket`, then the per-user rule).
    #[arg(long, value_hint = clap::ValueHint::FilePath)]
    pub socket: Option<PathBuf>,
    /// More logging (-v debug, -vv trace); CITRUS_LOG / RUST_LOG override.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Check the config and this host (users, directories, programs on PATH, schedules), print
    /// the plan and exit: 0 when all is well, 2 on any problem. Starts nothing.
    #[arg(long)]
    pub check: bool,
}
