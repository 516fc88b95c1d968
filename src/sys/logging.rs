//! The binaries' own diagnostics on stderr (citrusd, citrus-engine): `-v` raises the level,
//! `CITRUS_LOG` or `RUST_LOG` replace it with a list of directives.
//!
//! The filter is a static [`Targets`] list, not the regex-backed `EnvFilter`: Citrus opens no
//! spans, so the span and field directives that only `EnvFilter` understands could select nothing
//! here, and the binaries need not carry (or run) a directive parser with regexes.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

/// Sets up logging on stderr: `info`, `debug` with `-v`, `trace` with `-vv`; `CITRUS_LOG` (else
/// `RUST_LOG`) replaces the level with its directives (see [`filter`]). With `json`, each line is
/// one JSON object (`timestamp`, `level`, `fields` with `message`, …) instead of text.
pub fn init(verbosity: u8, json: bool) {
    let level = match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let spec = std::env::var("CITRUS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| level.to_string());
    let text = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let (text, json) = match json {
        false => (Some(text), None),
        true => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_target(false),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(text)
        .with(json)
        .with(filter(&spec))
        .init();
}

/// Parses a comma-separated list of `level`, `target=level` and `target` (all levels) directives,
/// the longest matching target winning, as `RUST_LOG` is read elsewhere. A directive that does not
/// parse is reported on stderr and left out; when none is left, errors are still shown.
pub fn filter(spec: &str) -> Targets {
    let valid: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter(|d| match d.parse::<Targets>() {
            Ok(_) => true,
            Err(e) => {
                eprintln!("ignoring `{d}`: {e}");
                false
            }
        })
        .collect();
    let errors_only = || Targets::new().with_default(LevelFilter::ERROR);
    if valid.is_empty() {
        return errors_only();
    }
    // Each directive parsed on its own above, so the list does too.
    valid.join(",").parse().unwrap_or_else(|_| errors_only())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn enabled(spec: &str, target: &str, level: Level) -> bool {
        filter(spec).would_enable(target, &level)
    }

    #[test]
    fn a_bare_level_applies_to_every_target() {
        assert!(enabled("info", "citrus::daemon", Level::INFO));
        assert!(!enabled("info", "citrus::daemon", Level::DEBUG));
        assert!(enabled("debug", "hyper::proto", Level::DEBUG));
        assert!(enabled("TRACE", "anything", Level::TRACE));
    }

    #[test]
    fn target_directives_select_by_prefix_and_the_longest_wins() {
        let spec = "warn,citrus=debug,citrus::supervisor::logs=error";
        assert!(enabled(spec, "citrus::daemon", Level::DEBUG));
        assert!(!enabled(spec, "citrus::daemon", Level::TRACE));
        assert!(!enabled(spec, "citrus::supervisor::logs", Level::WARN));
        assert!(enabled(spec, "hyper", Level::WARN));
        assert!(!enabled(spec, "hyper", Level::INFO));
    }

    #[test]
    fn only_named_targets_log_without_a_bare_level() {
        assert!(enabled("citrus=debug", "citrus::supervisor", Level::DEBUG));
        assert!(!enabled("citrus=debug", "hyper", Level::ERROR));
        // A bare target means every level of it.
        assert!(enabled("citrus", "citrus::daemon", Level::TRACE));
    }

    #[test]
    fn bad_directives_are_left_out_and_errors_stay_on() {
        assert!(enabled("citrus=loud, info", "citrus", Level::INFO));
        assert!(!enabled("citrus=loud, info", "citrus", Level::DEBUG));
        assert!(enabled("a=b=c", "citrus", Level::ERROR));
        assert!(!enabled("a=b=c", "citrus", Level::WARN));
        assert!(enabled("", "citrus", Level::ERROR));
        assert!(enabled(" , ", "citrus", Level::ERROR));
    }
}
