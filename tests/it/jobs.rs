//! Scheduled jobs: cron schedules, no overlap, timeouts that kill the process group, results kept
//! and persisted, the built-in kinds, `citrusctl jobs` / `job run`, events to a webhook.

use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, SystemTime};

use citrus::control::{AppState, JobOutcome, JobRun, JobTrigger, JobsReply};
use citrus::sys::procfs;

use crate::support::{wait_for, Daemon, Receiver, DEADLINE};

fn jobs(d: &Daemon) -> JobsReply {
    let r = d.ctl(&["--json", "jobs"]);
    r.code(0);
    serde_json::from_str(&r.stdout).expect("jobs json")
}

fn job_run(d: &Daemon, name: &str) -> (i32, JobRun) {
    let r = d.ctl(&["--json", "job", "run", name]);
    let run = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    (r.code, run)
}

/// Processes of job `name` still alive.
fn job_processes(d: &Daemon, name: &str) -> Vec<i32> {
    let wanted = [
        format!("CITRUS_SUPERVISOR={}", d.supervisor_id()),
        format!("CITRUS_JOB={name}"),
    ];
    procfs::all_pids()
        .into_iter()
        .filter(|p| procfs::stat(*p).is_some_and(|s| s.state != 'Z'))
        .filter(|p| procfs::environ_contains(*p, &wanted))
        .collect()
}

const IDLE_APP: &str = "[apps.idle]\ncommand = [\"sleep\", \"1000\"]\n";

#[test]
fn per_second_job_runs_on_schedule_and_is_listed() {
    let d = Daemon::start(&format!(
        "{IDLE_APP}[jobs.tick]\nschedule = \"* * * * * *\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo tick-output\"]\n"
    ));
    let reply = wait_for("three scheduled runs", DEADLINE, || {
        let j = jobs(&d);
        if j.jobs[0].runs.len() >= 3 {
            Ok(j)
        } else {
            Err(format!("{:?}", j.jobs[0].runs.len()))
        }
    });
    let job = &reply.jobs[0];
    assert_eq!(
        (
            job.kind.as_str(),
            job.schedule.as_str(),
            job.timezone.as_str()
        ),
        ("command", "* * * * * *", "local")
    );
    let last = job.last_run.as_ref().unwrap();
    assert_eq!(last.outcome, JobOutcome::Ok);
    assert_eq!(last.trigger, JobTrigger::Schedule);
    assert!(last.output.contains("tick-output"), "{last:?}");
    let scheduled = last.scheduled_ms.unwrap();
    assert!(
        last.started_ms >= scheduled && last.started_ms - scheduled < 1000,
        "{last:?}"
    );
    assert!(job.next_run_ms.unwrap() > last.started_ms);
    let table = d.ctl(&["jobs"]);
    table.code(0).stdout_has(&[
        "NAME", "SCHEDULE", "LAST RUN", "OUTCOME", "NEXT RUN", "tick", "ok",
    ]);
}

#[test]
fn a_job_never_overlaps_itself_and_manual_runs_are_refused_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let d = Daemon::start(&format!(
        "{IDLE_APP}[jobs.slow]\nschedule = \"* * * * * *\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo start >> {j}; sleep 2.2; echo end >> {j}\"]\n",
        j = journal.display()
    ));
    wait_for("a running job", DEADLINE, || {
        if jobs(&d).jobs[0].running_since_ms.is_some() {
            Ok(())
        } else {
            Err(String::new())
        }
    });
    d.ctl(&["job", "run", "slow"])
        .code(1)
        .stderr_has(&["already running"]);
    wait_for("two complete runs", Duration::from_secs(30), || {
        let j = fs::read_to_string(&journal).unwrap_or_default();
        if j.matches("end").count() >= 2 {
            Ok(())
        } else {
            Err(j)
        }
    });
    // Strictly alternating: every start is followed by its end before the next start.
    let j = fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = j.lines().collect();
    for pair in lines.chunks(2) {
        if pair.len() == 2 {
            assert_eq!(pair, ["start", "end"], "overlap in {lines:?}");
        }
    }
}

#[test]
fn a_job_past_its_timeout_has_its_process_group_killed_even_when_ignoring_sigterm() {
    let d = Daemon::start(&format!(
        "{IDLE_APP}[jobs.stuck]\nschedule = \"0 0 1 1 *\"\nkind = \"command\"\ntimeout = \"500ms\"\n\
         command = [\"sh\", \"-c\", \"trap '' TERM; sh -c 'trap \\\"\\\" TERM; sleep 1000' & echo child-started; sleep 1000\"]\n"
    ));
    let started = SystemTime::now();
    let (code, run) = job_run(&d, "stuck");
    assert_eq!(code, 1);
    assert_eq!(run.outcome, JobOutcome::TimedOut, "{run:?}");
    assert!(
        run.summary.contains("killed after timeout 500ms"),
        "{run:?}"
    );
    assert!(run.output.contains("child-started"), "{run:?}");
    // 500ms timeout + 5s between SIGTERM and SIGKILL, and nothing of it left.
    assert!(started.elapsed().unwrap() < Duration::from_secs(15));
    assert!(
        job_processes(&d, "stuck").is_empty(),
        "{:?}",
        job_processes(&d, "stuck")
    );
}

#[test]
fn job_run_prints_the_outcome_and_exit_code_follows_it() {
    let d = Daemon::prepare(
        &format!(
            "{IDLE_APP}[jobs.good]\nschedule = \"0 0 1 1 *\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo all fine $GREETING; pwd\"]\nenv = {{ GREETING = \"hi\" }}\ncwd = \"work\"\n\
             [jobs.bad]\nschedule = \"0 0 1 1 *\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo oops >&2; exit 3\"]\n\
             [jobs.ghost]\nschedule = \"0 0 1 1 *\"\nkind = \"command\"\ncommand = [\"/nonexistent/backup.sh\"]\n\
             [jobs.save]\nschedule = \"0 * * * *\"\nkind = \"save\"\n"
        ),
        &[],
    );
    fs::create_dir(d.dir.path().join("work")).unwrap();
    let d = d.launch();
    let good = d.ctl(&["job", "run", "good"]);
    good.code(0)
        .stdout_has(&["good: ok", "all fine hi", "/work\n"]);
    d.ctl(&["job", "run", "bad"])
        .code(1)
        .stdout_has(&["bad: failed", "oops"])
        .stderr_has(&["code 3"]);
    d.ctl(&["job", "run", "ghost"]).code(1).stdout_has(&[
        "cannot start",
        "/nonexistent/backup.sh",
        "No such file",
    ]);
    d.ctl(&["job", "run", "save"])
        .code(0)
        .stdout_has(&["state saved"]);
    d.ctl(&["job", "run", "nosuch"])
        .code(1)
        .stderr_has(&["nosuch", "good", "bad"]);
}

#[test]
fn results_survive_a_restart_of_citrusd() {
    let mut d = Daemon::start(&format!(
        "{IDLE_APP}[jobs.once]\nschedule = \"0 0 1 1 *\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo remembered\"]\n"
    ));
    d.ctl(&["job", "run", "once"]).code(0);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    d.spawn();
    d.wait_ready();
    let j = jobs(&d);
    let last = j.jobs[0].last_run.as_ref().expect("persisted run");
    assert_eq!(last.trigger, JobTrigger::Manual);
    assert!(last.output.contains("remembered"));
}

#[test]
fn disk_job_warns_above_threshold_and_notifies() {
    let hook = Receiver::start();
    let d = Daemon::start(&format!(
        "{IDLE_APP}[jobs.disk-low]\nschedule = \"0 0 1 1 *\"\nkind = \"disk\"\npaths = [\"/\"]\nthreshold = 100\n\
         [jobs.disk-high]\nschedule = \"0 0 1 1 *\"\nkind = \"disk\"\npaths = [\"/\", \".\"]\nthreshold = 1\n\
         [notify]\nwebhook = \"{}\"\n",
        hook.url
    ));
    let (code, run) = job_run(&d, "disk-low");
    assert_eq!((code, run.outcome), (0, JobOutcome::Ok), "{run:?}");
    assert!(
        run.output.contains("/: ") && run.output.contains("% used"),
        "{run:?}"
    );
    let (code, run) = job_run(&d, "disk-high");
    assert_eq!((code, run.outcome), (1, JobOutcome::Warning), "{run:?}");
    assert!(run.summary.contains("above 1%"), "{run:?}");
    let event = hook.wait_event("disk");
    assert!(
        event["message"].as_str().unwrap().contains("above 1%"),
        "{event}"
    );
    assert!(event["host"].as_str().is_some_and(|h| !h.is_empty()));
    assert!(event["text"].as_str().unwrap().contains("disk"));
}

#[test]
fn log_cleanup_deletes_old_matches_only_inside_its_dirs_and_refuses_symlinked_dirs() {
    let d = Daemon::prepare(
        &format!(
            "{IDLE_APP}[jobs.clean]\nschedule = \"0 2 * * *\"\nkind = \"log-cleanup\"\ndirs = [\"applogs\"]\npattern = \"*.log\"\nmax_age = \"7d\"\n\
             [jobs.evil]\nschedule = \"0 2 * * *\"\nkind = \"log-cleanup\"\ndirs = [\"tricky\"]\npattern = \"*.log\"\nmax_age = \"7d\"\n"
        ),
        &[],
    );
    let root = d.dir.path().to_path_buf();
    let old = SystemTime::now() - Duration::from_secs(10 * 86_400);
    let make = |path: std::path::PathBuf, aged: bool| {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"0123456789").unwrap();
        if aged {
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        path
    };
    let old_log = make(root.join("applogs/old.log"), true);
    let nested = make(root.join("applogs/sub/older.log"), true);
    let fresh = make(root.join("applogs/new.log"), false);
    let other = make(root.join("applogs/old.txt"), true);
    // Outside the dirs, reachable only through symlinks.
    let outside = make(root.join("outside/victim.log"), true);
    symlink(root.join("outside"), root.join("applogs/link-dir")).unwrap();
    symlink(&outside, root.join("applogs/link.log")).unwrap();
    // A dirs entry that is itself a symlink (think: a symlink to /).
    symlink(root.join("outside"), root.join("tricky")).unwrap();
    let d = d.launch();

    let (code, run) = job_run(&d, "clean");
    assert_eq!((code, run.outcome), (0, JobOutcome::Ok), "{run:?}");
    assert!(
        run.summary.contains("deleted 2 file(s), freed 20"),
        "{run:?}"
    );
    assert!(!old_log.exists() && !nested.exists());
    assert!(fresh.exists() && other.exists() && outside.exists());
    assert!(
        root.join("applogs/link.log").symlink_metadata().is_ok(),
        "the symlink itself is not deleted"
    );

    let (code, run) = job_run(&d, "evil");
    assert_eq!((code, run.outcome), (1, JobOutcome::Failed), "{run:?}");
    assert!(run.summary.contains("symlink"), "{run:?}");
    assert!(outside.exists());
}

#[test]
fn health_job_escalates_and_reports_the_level_reached() {
    let hook = Receiver::start();
    let dead_port = crate::support::free_port();
    let d = Daemon::start(&format!(
        "[apps.fine]\ncommand = [\"sleep\", \"1000\"]\n\
         [apps.fragile]\ncommand = [\"sleep\", \"1000\"]\n\
         [apps.broken]\ncommand = [\"sleep\", \"1000\"]\nhealth = {{ tcp = \"127.0.0.1:{dead_port}\", interval = \"1h\", timeout = \"200ms\" }}\n\
         [jobs.health-check]\nschedule = \"*/5 * * * *\"\nkind = \"health\"\n\
         [jobs.health-fine]\nschedule = \"*/5 * * * *\"\nkind = \"health\"\napps = [\"fine\"]\n\
         [notify]\nwebhook = \"{}\"\nevents = [\"health_failed\"]\n",
        hook.url
    ));
    d.wait_state("fragile", AppState::Online);
    let (code, run) = job_run(&d, "health-fine");
    assert_eq!(
        (code, run.outcome, run.level),
        (0, JobOutcome::Ok, Some(0)),
        "{run:?}"
    );

    let pid = d.app("fragile")[0].pid.unwrap();
    let (code, run) = job_run(&d, "health-check");
    assert_eq!(code, 1);
    assert_eq!(run.outcome, JobOutcome::Failed, "{run:?}");
    assert_eq!(run.level, Some(3), "{run:?}");
    assert!(run.output.contains("fine: healthy"), "{}", run.output);
    assert!(run.output.contains("fragile: healthy"), "{}", run.output);
    assert!(
        run.output
            .contains("broken: instance 0: probe tcp 127.0.0.1"),
        "{}",
        run.output
    );
    assert!(
        run.output.contains("(level 1)")
            && run.output.contains("(level 2)")
            && run.output.contains("(level 3)")
    );
    assert_eq!(
        d.app("fragile")[0].pid.unwrap(),
        pid,
        "a healthy app is left alone"
    );
    let event = hook.wait_event("health_failed");
    assert_eq!(event["app"], "broken");
}

#[test]
fn a_stopped_instance_is_restarted_by_the_health_job_at_level_1() {
    let d = Daemon::start(
        "[apps.once]\ncommand = [\"sh\", \"-c\", \"exec sleep 1000\"]\nrestart = \"never\"\n\
         [jobs.health-check]\nschedule = \"*/5 * * * *\"\nkind = \"health\"\n",
    );
    let pid = d.wait_state("once", AppState::Online)[0].pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    d.wait_state("once", AppState::Stopped);
    let (code, run) = job_run(&d, "health-check");
    assert_eq!(
        (code, run.outcome, run.level),
        (1, JobOutcome::Warning, Some(1)),
        "{run:?}"
    );
    assert!(
        run.output.contains("healthy again after level 1"),
        "{}",
        run.output
    );
    assert_eq!(d.app("once")[0].state, AppState::Online);
}

#[test]
fn events_reach_the_webhook_and_a_dead_or_hanging_webhook_costs_nothing_else() {
    let hook = Receiver::start();
    let d = Daemon::start(&format!(
        "[apps.crash]\ncommand = [\"false\"]\nmax_restarts = 1\nmin_uptime = \"5s\"\n[notify]\nwebhook = \"{}\"\n",
        hook.url
    ));
    d.wait_state("crash", AppState::Errored);
    let event = hook.wait_event("errored");
    assert_eq!(event["app"], "crash");
    assert!(event["message"].as_str().unwrap().contains("max_restarts"));

    // A webhook that refuses connections, and one that accepts and never answers.
    let dead = crate::support::free_port();
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for url in [
        format!("http://127.0.0.1:{dead}/hook-secret-path"),
        format!("http://{}/hook-secret-path", hang.local_addr().unwrap()),
    ] {
        let d = Daemon::start(&format!(
            "[apps.crash]\ncommand = [\"false\"]\nmax_restarts = 2\nmin_uptime = \"5s\"\n[apps.ok]\ncommand = [\"sleep\", \"1000\"]\n[notify]\nwebhook = \"{url}\"\n"
        ));
        // Supervision carries on at full speed: the crash loop reaches errored, the rest runs.
        let errored = d.wait_state("crash", AppState::Errored);
        assert_eq!(errored[0].unstable_restarts, 3);
        d.wait_state("ok", AppState::Online);
        d.ctl(&["restart", "ok"]).code(0);
        assert!(
            !d.stderr().contains("hook-secret-path"),
            "the webhook URL must never be logged"
        );
    }
}
