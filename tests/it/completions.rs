//! `citrusctl completions SHELL` loaded into a real bash, completing against a real citrusd, and
//! `citrusctl generate-docs DIR`: the man pages and scripts of the three binaries.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::CommandFactory;

use crate::support::{succeeded, Daemon, Run, CITRUSCTL};

const APPS_AND_A_JOB: &str = "[apps.alpha]\ncommand = [\"sleep\", \"1000\"]\ninstances = 2\n\
[apps.beta]\ncommand = [\"sleep\", \"1000\"]\n\
[jobs.nightly]\nschedule = \"0 3 * * *\"\nkind = \"command\"\ncommand = [\"true\"]\n";

/// Loads `citrusctl completions bash` into `bash --norc`, checks it registered `complete -F`
/// for citrusctl, then presses Tab after `words` (the last one is the word being completed) and
/// returns the candidates, sorted. citrusctl is found on PATH, as the script expects.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let program = r#"
set -u
source "$1"; shift
complete -p citrusctl >/dev/null || { echo "no completion registered for citrusctl" >&2; exit 9; }
COMP_WORDS=("$@")
COMP_CWORD=$(( $# - 1 ))
COMP_LINE="$*"
COMP_POINT=${#COMP_LINE}
COMP_TYPE=9
_clap_complete_citrusctl citrusctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let bin_dir = Path::new(CITRUSCTL).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", program, "bash"])
        .arg(script)
        .arg("citrusctl")
        .args(words)
        .env("PATH", path)
        .env_remove("CITRUS_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let mut got: Vec<String> = succeeded(out, "bash completion failed")
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    got.sort();
    got
}

/// The candidates that are not flags (an empty word is offered the flags too).
fn values(candidates: Vec<String>) -> Vec<String> {
    candidates
        .into_iter()
        .filter(|c| !c.starts_with('-'))
        .collect()
}

fn bash_script(dir: &Path) -> std::path::PathBuf {
    let run = Run::from_command(Command::new(CITRUSCTL).args(["completions", "bash"]));
    run.code(0);
    let path = dir.join("citrusctl.bash");
    fs::write(&path, &run.stdout).unwrap();
    path
}

#[test]
fn bash_completes_apps_and_jobs_from_the_running_daemon() {
    let d = Daemon::start(APPS_AND_A_JOB);
    let script = bash_script(d.dir.path());
    let sock = d.socket.to_str().unwrap();

    // App names from the daemon (one per app, not per instance), `all` where it is accepted.
    assert_eq!(
        values(bash_complete(&script, &["--socket", sock, "restart", ""])),
        ["all", "alpha", "beta"]
    );
    assert_eq!(
        bash_complete(&script, &["--socket", sock, "logs", "a"]),
        ["alpha"]
    );
    let with_equals = format!("--socket={sock}");
    assert_eq!(
        bash_complete(&script, &[&with_equals, "describe", "b"]),
        ["beta"]
    );
    // Job names.
    assert_eq!(
        values(bash_complete(
            &script,
            &["--socket", sock, "job", "run", ""]
        )),
        ["nightly"]
    );
    // Commands and flags come from the clap definitions.
    assert_eq!(
        bash_complete(&script, &["--socket", sock, "st"]),
        ["start", "status", "stop"]
    );
    let flags = bash_complete(&script, &["logs", "alpha", "--f"]);
    assert_eq!(flags, ["--follow"]);
    // A daemon added at run time is seen at the next Tab.
    d.ctl(&["start", "--name", "gamma", "--", "sleep", "1000"])
        .code(0);
    assert_eq!(
        bash_complete(&script, &["--socket", sock, "stop", "g"]),
        ["gamma"]
    );
}

#[test]
fn bash_completion_without_a_daemon_offers_no_names_and_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let script = bash_script(dir.path());
    let missing = dir.path().join("nobody-listens.sock");
    let started = Instant::now();
    assert_eq!(
        values(bash_complete(
            &script,
            &["--socket", missing.to_str().unwrap(), "stop", ""]
        )),
        ["all"]
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn completions_for_an_unknown_shell_is_a_usage_error() {
    Run::from_command(Command::new(CITRUSCTL).args(["completions", "tcsh"]))
        .code(2)
        .stderr_has(&["invalid value 'tcsh'", "bash", "zsh", "fish"]);
}

#[test]
fn generate_docs_writes_a_man_page_per_binary_and_subcommand_and_the_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("docs");
    Run::from_command(Command::new(CITRUSCTL).arg("generate-docs").arg(&out))
        .code(0)
        .stdout_has(&["wrote"]);
    let man = out.join("man");
    let page =
        |name: &str| fs::read_to_string(man.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    // Every (visible) citrusctl subcommand: listed on citrusctl(1), and a page of its own.
    let ctl = page("citrusctl.1");
    let mut subcommands = 0;
    for sub in citrus::ctl::Cli::command().get_subcommands() {
        if sub.is_hide_set() {
            assert!(
                !ctl.contains(sub.get_name()),
                "hidden {} listed",
                sub.get_name()
            );
            continue;
        }
        let roff_name = format!("citrusctl\\-{}(1)", sub.get_name().replace('-', "\\-"));
        assert!(ctl.contains(&roff_name), "citrusctl.1 lacks {roff_name}");
        let own = page(&format!("citrusctl-{}.1", sub.get_name()));
        assert!(own.contains(".SH SYNOPSIS"), "{}", sub.get_name());
        subcommands += 1;
    }
    assert!(subcommands >= 19, "only {subcommands} subcommands");
    assert!(page("citrusctl-logs.1").contains("\\-\\-follow"));
    let citrusd = page("citrusd.1");
    for flag in ["\\-\\-config", "\\-\\-env", "\\-\\-socket", "\\-\\-verbose"] {
        assert!(citrusd.contains(flag), "citrusd.1 lacks {flag}");
    }
    assert!(page("citrus-engine.1").contains("\\-\\-listen"));

    // man renders them, where it is installed.
    if Path::new("/usr/bin/man").exists() {
        let rendered = Run::from_command(
            Command::new("man")
                .arg("-l")
                .arg(man.join("citrusctl.1"))
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "100"),
        );
        rendered
            .code(0)
            .stdout_has(&["SUBCOMMANDS", "citrusctl-restart(1)"]);
    }

    // The completion scripts, under the names the shells' loaders look for.
    let script = |p: &str| fs::read_to_string(out.join("completions").join(p)).unwrap();
    assert!(script("bash/citrusctl").contains("complete -o nospace"));
    assert!(script("bash/citrusctl").contains("CITRUSCTL_COMPLETE=\"bash\""));
    assert!(script("zsh/_citrusctl").starts_with("#compdef citrusctl"));
    assert!(script("fish/citrusctl.fish").contains("--command citrusctl"));
    assert!(script("bash/citrusd").contains("--config"));
    assert!(script("zsh/_citrus-engine").starts_with("#compdef citrus-engine"));
    assert!(script("fish/citrusd.fish").contains("-c citrusd"));
}

#[test]
fn generate_docs_into_a_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    fs::write(&file, "x").unwrap();
    Run::from_command(Command::new(CITRUSCTL).arg("generate-docs").arg(&file))
        .code(1)
        .stderr_has(&["cannot write", "plain-file"]);
}
