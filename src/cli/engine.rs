//! citrus-engine's flags: parsed by `src/bin/citrus-engine.rs`, rendered into its man page and
//! completions (also without the `engine` feature, so that the docs never depend on it).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The Citrus fleet hub: agents' WebSocket, enrolment, admin API, DigitalOcean provisioning.
#[derive(Debug, Parser)]
#[command(name = "citrus-engine", version)]
pub struct Args {
    /// Config file.
    #[arg(long, default_value = "config/engine.toml", value_hint = clap::ValueHint::FilePath)]
    pub config: PathBuf,
    /// Listen address, overriding `listen` in the config.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// More logging (-v debug, -vv trace); CITRUS_LOG / RUST_LOG override.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}
