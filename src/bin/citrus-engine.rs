//! citrus-engine: the fleet hub. Parse flags, load `engine.toml`, serve until SIGTERM/SIGINT.

use std::process::ExitCode;

use citrus::cli::engine::Args;
use citrus::config::EngineConfig;
use clap::Parser;

fn main() -> ExitCode {
    let args = Args::parse();
    citrus::sys::logging::init(args.verbose, false);
    // One rustls crypto provider for every TLS client (DigitalOcean, PostgreSQL).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = match EngineConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("citrus-engine: invalid config, not started:\n{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let _ = citrus::sys::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("citrus-engine: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let bound = match citrus::engine::bind(config).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("citrus-engine: {e}");
                return ExitCode::FAILURE;
            }
        };
        match bound.serve(shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("citrus-engine stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("citrus-engine: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
