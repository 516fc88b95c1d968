//! citrusd: parse flags, load the config, bind the socket, run the daemon until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use citrus::cli::citrusd::Args;
use citrus::config::Config;
use citrus::daemon;
use clap::Parser;

fn main() -> ExitCode {
    citrus::sys::memory::keep_big_allocations_mapped();
    citrus::sys::memory::release_relocation_table();
    let args = Args::parse();
    // One rustls crypto provider for every TLS client (the agent's wss, webhooks).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let path = args.config.unwrap_or_else(|| {
        if nix::unistd::Uid::effective().is_root() {
            PathBuf::from("/etc/citrus/citrusd.toml")
        } else {
            PathBuf::from("config/citrusd.toml")
        }
    });
    if args.check {
        citrus::sys::logging::init(args.verbose, false);
        return ExitCode::from(daemon::check::run(&path, args.env.as_deref(), args.socket));
    }
    let config = match Config::load(&path, args.env.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("citrusd: invalid config, nothing started:\n{e}");
            return ExitCode::from(2);
        }
    };
    // After the config, which chooses the format; until then errors go to stderr as text.
    let json = config.daemon.log_format == citrus::config::LogFormat::Json;
    citrus::sys::logging::init(args.verbose, json);
    let socket = daemon::socket::choose(args.socket, config.daemon.socket.as_deref());
    match run(config, args.env, socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("citrusd: {}", explain(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes, `: `-separated, leaving out a cause the text already says (the
/// library's errors name their source in their own message).
fn explain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

fn run(config: Config, env: Option<String>, socket: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Handlers first: a SIGTERM at any later instant is a graceful shutdown.
        let shutdown =
            daemon::termination().context("cannot install the SIGTERM/SIGINT handlers")?;
        let listener = daemon::socket::bind(&socket, config.daemon.socket_group.as_deref())?;
        daemon::run(config, env, listener, socket, shutdown).await?;
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
