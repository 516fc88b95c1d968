//! citrusctl: the operator's commands over the control socket. Each command is a small function
//! from parsed flags to output; [`CtlError::exit_code`] is the one place that maps failures to
//! SPEC's exit codes (0 ok, 1 failed, 2 usage or config, 3 daemon unreachable).

pub mod complete;
pub mod import_pm2;
mod table;
mod top;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::parse_duration;
use crate::control::client::{Client, ClientError};
use crate::control::{
    ActionReply, AddApp, DeployRequest, DeploymentReply, DeploymentsReply, Describe, ErrorCode,
    JobOutcome, JobRun, JobsReply, LogStream, LogsQuery, Ping, ReloadPlan, ReloadRequest,
    RollbackRequest, Status,
};
use crate::deploy::Phase;
// Path segments and query values are percent-encoded: app names are validated, but
// `citrusctl restart 'a b'` must reach the daemon to be answered "no app named".
use crate::sys::percent_encode as encode;

/// citrusctl's flags.
#[derive(Debug, Parser)]
#[command(
    name = "citrusctl",
    version,
    about = "Control citrusd: status, start/stop/restart, logs, config reload"
)]
pub struct Cli {
    /// The daemon's control socket (default: $CITRUS_SOCKET, /run/citrus/citrusd.sock for root,
    /// else $XDG_RUNTIME_DIR/citrus/citrusd.sock, else ~/.citrus/citrusd.sock).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// Print the daemon's JSON reply instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// citrusctl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show every app (or one): pid, state, uptime, restarts, memory, cpu.
    Status {
        #[arg(add = complete::apps())]
        app: Option<String>,
    },
    /// Start an app (or `all`), or add one at run time: `start --name NAME [--instances N] -- CMD ARGS…`.
    Start {
        #[arg(add = complete::apps_or_all())]
        app: Option<String>,
        /// Name of an app to add at run time.
        #[arg(long)]
        name: Option<String>,
        /// Instances of the added app.
        #[arg(long, requires = "name")]
        instances: Option<u32>,
        /// Working directory of the added app.
        #[arg(long, requires = "name")]
        cwd: Option<PathBuf>,
        /// The added app's command, after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Stop an app (or `all`) and everything it started.
    Stop {
        #[arg(add = complete::apps_or_all())]
        app: String,
    },
    /// Restart an app (or `all`).
    Restart {
        #[arg(add = complete::apps_or_all())]
        app: String,
    },
    /// Rolling restart: one instance at a time, each online before the next.
    Reload {
        #[arg(add = complete::apps_or_all())]
        app: String,
    },
    /// Stop and forget an app added at run time.
    Delete {
        #[arg(add = complete::apps())]
        app: String,
    },
    /// Print an app's log, and follow it with -f.
    Logs {
        #[arg(add = complete::apps())]
        app: String,
        /// Lines to print from the end of each log.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: usize,
        /// Keep printing as the app writes.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only stderr.
        #[arg(long, conflicts_with = "out")]
        err: bool,
        /// Only stdout.
        #[arg(long)]
        out: bool,
        /// Pass the apps' control characters (colours, terminal escapes) through as they are;
        /// by default they are shown as `^[` and the like, so an app's output cannot drive the
        /// terminal.
        #[arg(long)]
        raw: bool,
        /// Only lines stamped since then: a duration back from now (`10m`, `2h`, `1d`) or an
        /// RFC 3339 time (`2026-12-06T10:00:00Z`). Needs `log_timestamps` (lines without a
        /// stamp are left out).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only lines matching this regular expression (searched in citrusd, without the stamp).
        #[arg(long, value_name = "PATTERN")]
        grep: Option<String>,
    },
    /// The effective config of an app, its env names (values masked), log paths and last exits.
    Describe {
        #[arg(add = complete::apps())]
        app: String,
    },
    /// Re-read the config file: start new apps, stop removed ones, restart changed ones.
    ReloadConfig {
        /// Only print what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Convert a PM2 ecosystem.json or dump.pm2 into citrusd.toml (printed on stdout).
    ImportPm2 { file: PathBuf },
    /// List the scheduled jobs: schedule, last run, outcome, next run.
    Jobs,
    /// Act on one job.
    Job {
        #[command(subcommand)]
        action: JobAction,
    },
    /// Deploy an app (its `[deploy]` section): fetch, build, switch `current`, restart, health
    /// check. Exit 0 only when it completes.
    Deploy {
        #[arg(add = complete::apps())]
        app: String,
        /// Git ref to deploy (branch, tag or commit); the configured branch by default.
        #[arg(long = "ref")]
        git_ref: Option<String>,
        /// Print each phase as it happens.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// An app's deployments, newest first: id, ref, commit, phase, started, duration, error.
    Deployments {
        #[arg(add = complete::apps())]
        app: String,
    },
    /// Switch an app back to its previous completed release (or --to ID), then restart it.
    Rollback {
        #[arg(add = complete::apps())]
        app: String,
        /// A completed release id from `citrusctl deployments APP`.
        #[arg(long)]
        to: Option<String>,
    },
    /// The fleet agent: connection state, engine URL, agent id, connected since, last error, queued reports.
    Fleet,
    /// Write the daemon's state file now.
    Save,
    /// Check that the daemon answers.
    Ping,
    /// Print the shell's completion script (app and job names come from the running daemon):
    /// `source <(citrusctl completions bash)`.
    Completions { shell: complete::CompletionShell },
    /// Write the man pages and completion scripts of citrusd, citrusctl and citrus-engine below
    /// DIR (`DIR/man/`, `DIR/completions/{bash,zsh,fish}/`).
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
    /// A live full-screen view of every instance: state, pid, uptime, restarts, memory, cpu and
    /// their history; arrows select, `r` restarts (after a confirmation), `l` shows the log, `q` quits.
    Top {
        /// How often to refresh from the daemon: at least "1s" (each refresh costs citrusd
        /// about 3 ms with 100 apps).
        #[arg(long, default_value = "2s")]
        interval: String,
    },
}

/// `citrusctl job …`.
#[derive(Debug, Subcommand)]
pub enum JobAction {
    /// Run the job now and print its outcome (exit 1 unless it was ok).
    Run {
        #[arg(add = complete::jobs())]
        name: String,
    },
}

/// A failure of a citrusctl command.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    /// SPEC 2.3's exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => 2,
            CtlError::Client(ClientError::Unreachable { .. }) => 3,
            CtlError::Client(ClientError::Api(e)) => match e.code {
                ErrorCode::BadRequest | ErrorCode::InvalidConfig => 2,
                ErrorCode::UnknownApp
                | ErrorCode::UnknownJob
                | ErrorCode::Conflict
                | ErrorCode::Failed => 1,
            },
            CtlError::Client(ClientError::Protocol { .. }) | CtlError::Failed(_) => 1,
        }
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn app_path(app: &str, rest: &str) -> String {
    format!("/v1/apps/{}{rest}", encode(app))
}

/// Runs one citrusctl command.
pub async fn run(cli: Cli) -> Result<(), CtlError> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(crate::control::default_socket_path);
    let client = Client::new(socket);
    let json = cli.json;
    match cli.command {
        Command::Status { app } => status(&client, app.as_deref(), json).await,
        Command::Start {
            app,
            name,
            instances,
            cwd,
            command,
        } => match (app, name) {
            (Some(app), None) => start(&client, &app, &command, json).await,
            (None, Some(name)) => add(&client, name, instances, cwd, command, json).await,
            (Some(_), Some(_)) => Err(CtlError::Usage(
                "give either an APP to start or --name NAME -- CMD, not both".into(),
            )),
            (None, None) => Err(CtlError::Usage(
                "start what? `citrusctl start APP`, `citrusctl start all`, or `citrusctl start --name NAME -- CMD ARGS…`".into(),
            )),
        },
        Command::Stop { app } => action(&client, &app, "stop", json).await,
        Command::Restart { app } => action(&client, &app, "restart", json).await,
        Command::Reload { app } => action(&client, &app, "reload", json).await,
        Command::Delete { app } => delete(&client, &app, json).await,
        Command::Logs {
            app,
            lines,
            follow,
            err,
            out,
            raw,
            since,
            grep,
        } => {
            let query = LogsQuery {
                lines,
                follow,
                stream: log_stream(err, out),
                since: since.as_deref().map(since_time).transpose()?,
                grep,
                json,
            };
            logs(&client, &app, &query, raw).await
        }
        Command::Describe { app } => describe(&client, &app, json).await,
        Command::ReloadConfig { dry_run } => reload_config(&client, dry_run, json).await,
        Command::ImportPm2 { file } => import_pm2(&file),
        Command::Jobs => jobs(&client, json).await,
        Command::Job {
            action: JobAction::Run { name },
        } => run_job(&client, &name, json).await,
        Command::Deploy {
            app,
            git_ref,
            follow,
        } => deploy(&client, &app, git_ref, follow, json).await,
        Command::Deployments { app } => deployments(&client, &app, json).await,
        Command::Rollback { app, to } => rollback(&client, &app, to, json).await,
        Command::Fleet => fleet(&client, json).await,
        Command::Save => save(&client).await,
        Command::Ping => ping(&client, json).await,
        Command::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            complete::write_registration(shell, &mut out)
                .and_then(|()| out.flush())
                .map_err(|e| CtlError::Failed(format!("cannot write the completion script: {e}")))
        }
        Command::GenerateDocs { dir } => {
            let written = crate::cli::write_docs(&dir).map_err(|e| CtlError::Failed(e.to_string()))?;
            println!("wrote {} files below {}", written.len(), dir.display());
            Ok(())
        }
        Command::Top { interval } => top::run(&client, top::parse_interval(&interval)?).await,
    }
}

/// Prints `value` as the daemon's JSON, or as the table `table` makes of it.
fn show<T: serde::Serialize>(value: &T, json: bool, table: impl FnOnce(&T) -> String) {
    if json {
        print_json(value);
    } else {
        print!("{}", table(value));
    }
}

/// `citrusctl status [APP]`.
async fn status(client: &Client, app: Option<&str>, json: bool) -> Result<(), CtlError> {
    let path = match app {
        Some(a) => format!("/v1/status?app={}", encode(a)),
        None => "/v1/status".to_string(),
    };
    let status: Status = client.get(&path).await?;
    show(&status, json, |s| table::status(&s.apps));
    Ok(())
}

/// `citrusctl start APP` (or `all`): nothing may follow `--`.
async fn start(client: &Client, app: &str, command: &[String], json: bool) -> Result<(), CtlError> {
    if !command.is_empty() {
        return Err(CtlError::Usage(
            "a command after `--` needs --name NAME".into(),
        ));
    }
    let reply: ActionReply = client
        .post(&app_path(app, "/start"), &serde_json::json!({}))
        .await?;
    show_reply(&reply, json);
    Ok(())
}

/// `citrusctl start --name NAME [--instances N] [--cwd DIR] -- CMD ARGS…`: adds an app at run
/// time.
async fn add(
    client: &Client,
    name: String,
    instances: Option<u32>,
    cwd: Option<PathBuf>,
    command: Vec<String>,
    json: bool,
) -> Result<(), CtlError> {
    if command.is_empty() {
        return Err(CtlError::Usage(
            "--name needs the command after `--`: citrusctl start --name NAME -- CMD ARGS…".into(),
        ));
    }
    // Like PM2: a run-time app runs where it was started from unless told otherwise.
    let cwd = cwd
        .or_else(|| std::env::current_dir().ok())
        .map(|c| std::path::absolute(&c).unwrap_or(c));
    let req = AddApp {
        name,
        command,
        instances: instances.unwrap_or(1),
        cwd,
    };
    let reply: ActionReply = client.post("/v1/apps", &req).await?;
    show_reply(&reply, json);
    Ok(())
}

/// `citrusctl delete APP`.
async fn delete(client: &Client, app: &str, json: bool) -> Result<(), CtlError> {
    let reply: ActionReply = client.delete(&app_path(app, "")).await?;
    if json {
        print_json(&reply);
    } else {
        println!("deleted {app}");
    }
    Ok(())
}

/// The stream `logs --err` / `--out` chose (both by default).
fn log_stream(err: bool, out: bool) -> LogStream {
    match (err, out) {
        (true, _) => LogStream::Err,
        (_, true) => LogStream::Out,
        _ => LogStream::All,
    }
}

/// `logs --since WHEN` as the RFC 3339 time the daemon filters by: a duration back from now,
/// or an RFC 3339 time as it is.
fn since_time(when: &str) -> Result<String, CtlError> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(when) {
        return Ok(crate::sys::time::rfc3339(time.into()));
    }
    let ago = parse_duration(when).map_err(|_| {
        CtlError::Usage(format!(
            "--since {when:?}: expected a duration back from now (10m, 2h, 1d) or an RFC 3339 time (2026-12-06T10:00:00Z)"
        ))
    })?;
    let now = std::time::SystemTime::now();
    Ok(crate::sys::time::rfc3339(
        now.checked_sub(ago).unwrap_or(std::time::UNIX_EPOCH),
    ))
}

/// `citrusctl logs APP`: the last `lines` of the app's log (those `since` and `grep` keep),
/// then (`follow`) what it writes, as text or JSON lines, its control characters made visible
/// unless `raw`.
async fn logs(client: &Client, app: &str, query: &LogsQuery, raw: bool) -> Result<(), CtlError> {
    let stream = serde_json::to_value(query.stream)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut rest = format!(
        "/logs?lines={}&follow={}&stream={stream}&json={}",
        query.lines, query.follow, query.json
    );
    if let Some(since) = &query.since {
        rest.push_str(&format!("&since={}", encode(since)));
    }
    if let Some(grep) = &query.grep {
        rest.push_str(&format!("&grep={}", encode(grep)));
    }
    let path = app_path(app, &rest);
    let mut stdout = std::io::stdout().lock();
    let mut broken = false;
    client
        .stream(&path, |chunk| {
            let shown = match raw {
                true => std::borrow::Cow::Borrowed(chunk),
                false => visible_controls(chunk),
            };
            if !broken && (stdout.write_all(&shown).is_err() || stdout.flush().is_err()) {
                broken = true;
            }
        })
        .await?;
    Ok(())
}

/// `citrusctl describe APP`.
async fn describe(client: &Client, app: &str, json: bool) -> Result<(), CtlError> {
    let d: Describe = client.get(&app_path(app, "")).await?;
    show(&d, json, table::describe);
    Ok(())
}

/// `citrusctl reload-config [--dry-run]`.
async fn reload_config(client: &Client, dry_run: bool, json: bool) -> Result<(), CtlError> {
    let plan: ReloadPlan = client
        .post("/v1/reload-config", &ReloadRequest { dry_run })
        .await?;
    show(&plan, json, table::plan);
    Ok(())
}

/// `citrusctl import-pm2 FILE`: the converted config on stdout, the warnings on stderr.
fn import_pm2(file: &Path) -> Result<(), CtlError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CtlError::Failed(format!("cannot read {}: {e}", file.display())))?;
    let name = file.display().to_string();
    let conv = import_pm2::convert(&text, &name).map_err(|e| CtlError::Failed(e.to_string()))?;
    for w in &conv.warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", conv.toml);
    Ok(())
}

/// `citrusctl jobs`.
async fn jobs(client: &Client, json: bool) -> Result<(), CtlError> {
    let reply: JobsReply = client.get("/v1/jobs").await?;
    show(&reply, json, |r| table::jobs(&r.jobs));
    Ok(())
}

/// `citrusctl job run NAME`: fails unless the run was ok.
async fn run_job(client: &Client, name: &str, json: bool) -> Result<(), CtlError> {
    let path = format!("/v1/jobs/{}/run", encode(name));
    let run: JobRun = client.post(&path, &serde_json::json!({})).await?;
    show(&run, json, |run| table::job_run(name, run));
    if run.outcome != JobOutcome::Ok {
        return Err(CtlError::Failed(format!(
            "job {name} {}: {}",
            run.outcome.as_str(),
            run.summary
        )));
    }
    Ok(())
}

/// `citrusctl deployments APP`.
async fn deployments(client: &Client, app: &str, json: bool) -> Result<(), CtlError> {
    let reply: DeploymentsReply = client.get(&app_path(app, "/deployments")).await?;
    show(&reply, json, |r| table::deployments(&r.deployments));
    Ok(())
}

/// `citrusctl rollback APP [--to ID]`: fails unless the rollback completed.
async fn rollback(
    client: &Client,
    app: &str,
    to: Option<String>,
    json: bool,
) -> Result<(), CtlError> {
    let reply: DeploymentReply = client
        .post(&app_path(app, "/rollback"), &RollbackRequest { to })
        .await?;
    let d = &reply.deployment;
    if json {
        print_json(&reply);
    } else {
        println!("{app}: current -> {} ({})", d.release, d.phase);
    }
    if d.phase != Phase::Completed {
        return Err(CtlError::Failed(format!(
            "rollback of {app} {}: {}",
            d.phase,
            d.error.as_deref().unwrap_or("")
        )));
    }
    Ok(())
}

/// `citrusctl fleet`.
async fn fleet(client: &Client, json: bool) -> Result<(), CtlError> {
    let f: crate::control::FleetStatus = client.get("/v1/fleet").await?;
    show(&f, json, table::fleet);
    Ok(())
}

/// `citrusctl save`.
async fn save(client: &Client) -> Result<(), CtlError> {
    let _: serde_json::Value = client.post("/v1/save", &serde_json::json!({})).await?;
    println!("state saved");
    Ok(())
}

/// `citrusctl ping`.
async fn ping(client: &Client, json: bool) -> Result<(), CtlError> {
    let p: Ping = client.get("/v1/ping").await?;
    if json {
        print_json(&p);
    } else {
        println!(
            "citrusd {} (pid {}, protocol {}) up {}",
            p.version,
            p.pid,
            p.protocol,
            table::uptime(p.uptime_ms)
        );
    }
    Ok(())
}

/// `bytes` with every control character but newline and tab shown in caret notation (`ESC` as
/// `^[`, DEL as `^?`), and the C1 controls (UTF-8 `C2 80`–`C2 9F`, which some terminals obey like
/// `ESC [`) as `^[` plus their letter.
fn visible_controls(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let control = |b: u8| (b < 0x20 && b != b'\n' && b != b'\t') || b == 0x7f || b == 0xc2;
    if !bytes.iter().any(|&b| control(b)) {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            0xc2 if matches!(bytes.get(i + 1), Some(0x80..=0x9f)) => {
                out.extend_from_slice(&[b'^', b'[', bytes[i + 1] - 0x40]);
                i += 1;
            }
            0x7f => out.extend_from_slice(b"^?"),
            b if b < 0x20 && b != b'\n' && b != b'\t' => out.extend_from_slice(&[b'^', b + 0x40]),
            b => out.push(b),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// `citrusctl deploy`: starts the deployment, then follows it to its end.
async fn deploy(
    client: &Client,
    app: &str,
    git_ref: Option<String>,
    follow: bool,
    json: bool,
) -> Result<(), CtlError> {
    let started: DeploymentReply = client
        .post(&app_path(app, "/deploy"), &DeployRequest { git_ref })
        .await?;
    let id = started.deployment.id.clone();
    if follow && !json {
        println!("{app}: deployment {id} queued");
    }
    let path = app_path(app, &format!("/deployments/{}?follow=true", encode(&id)));
    let mut last = started.deployment;
    let mut pending = Vec::new();
    let mut printed = 1;
    client
        .stream(&path, |chunk| {
            pending.extend_from_slice(chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let Ok(reply) = serde_json::from_slice::<DeploymentReply>(&line) else {
                    continue;
                };
                let d = reply.deployment;
                if follow && !json {
                    print_phases(&d, &mut printed);
                }
                last = d;
            }
        })
        .await?;
    if json {
        print_json(&DeploymentReply {
            deployment: last.clone(),
        });
    }
    let took = last.duration_ms();
    let commit = last.short_commit().map(|c| format!(" at {c}"));
    match last.phase {
        Phase::Completed => {
            if !json {
                println!(
                    "{app}: deployment {id} completed in {:.1}s{}: current -> releases/{}",
                    took as f64 / 1000.0,
                    commit.unwrap_or_default(),
                    last.release
                );
            }
            Ok(())
        }
        phase => {
            if !json && !last.output.is_empty() {
                eprintln!("--- output (last part) ---\n{}", last.output.trim_end());
            }
            Err(CtlError::Failed(format!(
                "deployment {id} of {app} {}: {}",
                if phase.is_final() {
                    phase.as_str()
                } else {
                    "did not end (the daemon stopped answering)"
                },
                last.error.as_deref().unwrap_or("")
            )))
        }
    }
}

/// A line for each phase `d` reached since the `printed` first ones: the phase before it and
/// how long that took.
fn print_phases(d: &crate::deploy::Deployment, printed: &mut usize) {
    for pair in d.phases.windows(2).skip(printed.saturating_sub(1)) {
        let took = pair[1].at_ms.saturating_sub(pair[0].at_ms);
        println!(
            "{:>8.1}s  {:<17} -> {}",
            took as f64 / 1000.0,
            pair[0].phase.as_str(),
            pair[1].phase.as_str()
        );
    }
    *printed = (*printed).max(d.phases.len());
}

/// `citrusctl stop|restart|reload APP`.
async fn action(client: &Client, app: &str, verb: &str, json: bool) -> Result<(), CtlError> {
    let reply: ActionReply = client
        .post(&app_path(app, &format!("/{verb}")), &serde_json::json!({}))
        .await?;
    show_reply(&reply, json);
    Ok(())
}

/// An action's reply: the apps it touched, as `status` shows them.
fn show_reply(reply: &ActionReply, json: bool) {
    show(reply, json, |r| table::status(&r.apps));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_made_visible() {
        let plain = b"line one\n\tindented \xc3\xa9\n";
        assert!(matches!(
            visible_controls(plain),
            std::borrow::Cow::Borrowed(_)
        ));
        let hostile = b"\x1b]0;pwned\x07\x1b[31mred\r\x7f\xc2\x9b2J\n";
        assert_eq!(
            visible_controls(hostile).as_ref(),
            b"^[]0;pwned^G^[[31mred^M^?^[[2J\n"
        );
    }
}
