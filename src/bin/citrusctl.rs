//! citrusctl: parse flags, run one command, exit with SPEC's code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A Tab in a shell with `citrusctl completions` loaded: answer it and exit.
    citrus::ctl::complete::complete_env();
    let cli = citrus::ctl::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("citrusctl: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(citrus::ctl::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("citrusctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
