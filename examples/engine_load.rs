//! Load generator for `citrus-engine`: simulated agents on loopback.
//!
//! ```text
//! cargo run --release --example engine_load -- enroll --url http://127.0.0.1:8080 --agents 1000 --out keys.txt
//! cargo run --release --example engine_load -- run --url http://127.0.0.1:8080 --keys keys.txt \
//!     --interval 1s --duration 30s --commands-per-sec 20
//! ```
//!
//! The admin token comes from `--token` or `CITRUS_ADMIN_TOKEN` (prefer the variable: a flag
//! shows in `ps`). `enroll` creates agents through the admin API and exchanges each enrolment
//! token for a key; `run` connects one WebSocket per key and prints one JSON object on stdout.
//!
//! Theory of operation of `run`. A run has a ramp (until all N agents are connected, at most
//! `--ramp-timeout`) and then a measured part of `--duration`: commands are sent and rates taken
//! in the measured part only, so a slow ramp does not dilute them. One task per agent owns its
//! WebSocket: it connects (the first time through a semaphore that bounds the ramp), sends
//! `agent_connected` and a `status_update` (as the real agent does), then `select!`s over
//! incoming commands, its status timer and the stop signal. Status timers sit on a per-agent
//! phase, `interval * i / N`, of a common grid, so the engine sees a smooth `N / interval`
//! updates per second whatever the connect order. A lost connection is retried after a
//! full-jitter backoff, `[0, min(cap, base * 2^attempt)]`, reset by a successful connect, like
//! citrusd's agent. Connect and disconnect events update one counter; a mass disconnect (≥ 90 %
//! of the agents lost within 10 s, i.e. an engine restart) starts the reconnect clock at its
//! first disconnect, the connect that brings all N back stops it. Beside the agents, a command
//! driver posts `create_site` commands to random connected agents at a fixed rate and
//! long-polls each operation until it is finished; the round trip is POST start → `completed`
//! seen. Per agent the state is one task (the handshake's state is boxed and freed), a socket
//! with 4 KiB buffers and a few words: 10,000 agents take about 95 MB.
//!
//! With `--live-streams N`, N panel streams (`GET /admin/live`, Server-Sent Events) are opened
//! when the measured part starts and read as fast as they come for all of it: the summary counts
//! their messages, bytes and `reload`s (a stream the engine found too slow).
//!
//! `run` exits 0 whenever it could print its summary, however many agents connected. Summary keys
//! beyond the usual figures: `reconnect_fraction` (share connected at the end after
//! a mass disconnect), `loadgen_lag_p99_ms` (how late this process wakes a 20 ms timer: when it
//! is high, the load generator was short of CPU and its round trips are inflated too).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use citrus::fleet::protocol::{
    parse_engine, AgentMessage, AppState, AppStatus, CpuStatus, DiskStatus, EngineMessage,
    HostStatus, MemoryStatus, OperationStatus, ProtocolError, SiteAction, CLIENT_TYPE_AGENT,
    HEADER_AGENT_ID, HEADER_AGENT_KEY, HEADER_CLIENT_TYPE, HEADER_PROTOCOL, MAX_FRAME,
    PROTOCOL_VERSION,
};

/// WebSocket read and write buffer per simulated agent (tungstenite's default is 128 KiB).
const WS_BUFFER: usize = 4096;
/// Longest wait for one connection attempt (TCP + upgrade).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A command not `completed` this long after its POST counts as failed.
const COMMAND_DEADLINE: Duration = Duration::from_secs(30);
/// Time left to in-flight commands once the run is over (their own deadline, plus one poll).
const DRAIN_COMMANDS: Duration = Duration::from_secs(36);
/// Disconnects this close together count as one burst (see [`Shared::on_disconnect`]).
const BURST_WINDOW: Duration = Duration::from_secs(10);
/// Interval of the progress lines on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Operation statuses that end a command round trip without success.
const FAILED_STATUSES: &[&str] = &[
    "failed",
    "error",
    "timeout",
    "timed_out",
    "cancelled",
    "canceled",
    "expired",
];

#[derive(Parser)]
#[command(about = "Simulated citrus agents against a running citrus-engine (loopback load test)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create N agents through the admin API and enrol each; writes `id key` lines to --out (0600).
    Enroll(EnrollArgs),
    /// Connect the agents of --keys, send status updates and commands, print a JSON summary.
    Run(RunArgs),
}

#[derive(Args)]
struct Engine {
    /// The engine's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// Admin token; default: $CITRUS_ADMIN_TOKEN (preferred: a flag is visible in `ps`).
    #[arg(long)]
    token: Option<String>,
}

impl Engine {
    fn base(&self) -> Result<String> {
        let url = self.url.trim_end_matches('/');
        ensure!(
            url.starts_with("http://"),
            "--url {url}: expected http://HOST:PORT (the load generator speaks plain HTTP/ws only)"
        );
        Ok(url.to_owned())
    }

    fn token(&self) -> Result<String> {
        match &self.token {
            Some(t) => Ok(t.clone()),
            None => std::env::var("CITRUS_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .context("no admin token: pass --token or set CITRUS_ADMIN_TOKEN"),
        }
    }
}

#[derive(Args)]
struct EnrollArgs {
    #[command(flatten)]
    engine: Engine,
    /// How many agents to create.
    #[arg(long)]
    agents: usize,
    /// Where to write `id key` lines (mode 0600).
    #[arg(long)]
    out: PathBuf,
    /// Agent names are PREFIX0, PREFIX1, …
    #[arg(long, default_value = "load-")]
    name_prefix: String,
    /// Create/enrol requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    engine: Engine,
    /// File of `id key` lines written by `enroll`.
    #[arg(long)]
    keys: PathBuf,
    /// Simulate only the first N agents of --keys (default: all).
    #[arg(long)]
    agents: Option<usize>,
    /// Status update interval per agent.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Length of the measured (steady) part of the run, which starts once all agents are
    /// connected or --ramp-timeout has passed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Longest wait for the initial connections before the measured part starts anyway.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    ramp_timeout: Duration,
    /// Admin commands per second, each to a random connected agent (0: none).
    #[arg(long, default_value_t = 20.0)]
    commands_per_sec: f64,
    /// Connection attempts in flight at once during the initial ramp.
    #[arg(long, default_value_t = 200)]
    ramp_concurrency: usize,
    /// Reconnect backoff base.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    backoff_base: Duration,
    /// Reconnect backoff cap.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    backoff_cap: Duration,
    /// End the run as soon as all agents are back after a mass disconnect (engine restart).
    #[arg(long)]
    exit_after_reconnect: bool,
    /// Create this file (empty) when the measured part starts, i.e. once all agents are
    /// connected: a bench script waits for it before restarting the engine.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// WebSocket URL (default: --url with ws:// and path /agent).
    #[arg(long)]
    ws_url: Option<String>,
    /// Panel live streams (`GET /admin/live`) to hold open and read during the measured part.
    #[arg(long, default_value_t = 0)]
    live_streams: usize,
}

/// `500ms`, `1s`, `1.5s`, `2m`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 1s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = citrus::sys::raise_fd_limit() {
        eprintln!("engine_load: cannot raise the open-files limit: {e}");
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Command::Enroll(args) => enroll(args).await,
                    Command::Run(args) => run(args).await,
                }
            })
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine_load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

// --- small helpers ------------------------------------------------------------------------------

/// A fast, non-cryptographic random u64 (splitmix64 on a per-thread state).
fn rand_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        // Seeded from the clock and this thread's stack address, so threads differ.
        static STATE: Cell<u64> = Cell::new({
            let local = 0u8;
            now_nanos() ^ (&local as *const u8 as u64).rotate_left(32)
        });
    }
    STATE.with(|s| {
        let mut z = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// Uniform in `[0, max]` (full jitter).
fn jitter(max: Duration) -> Duration {
    let ms = max.as_millis().max(1) as u64;
    Duration::from_millis(rand_u64() % (ms + 1))
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Rounded for the JSON summary.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The first 300 characters of a response body, for error messages.
async fn body_excerpt(resp: reqwest::Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    text.chars().take(300).collect()
}

fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(256)
        .build()
        .context("building the HTTP client")
}

/// This process's CPU seconds (user + system) and peak RSS in MB, from getrusage.
fn own_usage() -> (f64, f64) {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            (
                secs(u.user_time()) + secs(u.system_time()),
                u.max_rss() as f64 * 1024.0 / 1e6,
            )
        }
        Err(_) => (f64::NAN, f64::NAN),
    }
}

// --- enroll -------------------------------------------------------------------------------------

/// `POST /admin/agents` answer (the fields used here).
#[derive(Deserialize)]
struct CreatedAgent {
    agent: AgentRef,
    #[serde(rename = "enrollToken")]
    enroll_token: String,
}

#[derive(Deserialize)]
struct AgentRef {
    id: String,
}

/// `POST /agent/enroll` answer.
#[derive(Deserialize)]
struct Enrolled {
    key: String,
}

async fn enroll(args: EnrollArgs) -> Result<()> {
    let base = args.engine.base()?;
    let token = args.engine.token()?;
    ensure!(args.agents > 0, "--agents must be at least 1");
    let client = http_client()?;
    let started = Instant::now();
    let done = AtomicUsize::new(0);
    let progress = async {
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            eprintln!(
                "[engine_load] enrolled {}/{} after {:.0} s",
                done.load(Ordering::Relaxed),
                args.agents,
                started.elapsed().as_secs_f64()
            );
        }
    };
    let work = futures_util::stream::iter(0..args.agents)
        .map(|i| {
            let (client, base, token, done) = (&client, &base, &token, &done);
            let name = format!("{}{i}", args.name_prefix);
            async move {
                let pair = enroll_one(client, base, token, &name)
                    .await
                    .with_context(|| format!("enrolling agent {name}"))?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, anyhow::Error>((i, pair))
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect::<Vec<_>>();
    let results = tokio::select! {
        r = work => r,
        _ = progress => unreachable!("the progress loop never ends"),
    };
    let secs = started.elapsed().as_secs_f64();
    let mut pairs = Vec::with_capacity(results.len());
    for r in results {
        pairs.push(r?);
    }
    pairs.sort_by_key(|(i, _)| *i);
    let mut text = String::with_capacity(pairs.len() * 110);
    for (_, (id, key)) in &pairs {
        text.push_str(id);
        text.push(' ');
        text.push_str(key);
        text.push('\n');
    }
    write_private(&args.out, text.as_bytes())?;
    eprintln!(
        "[engine_load] enrolled {} agents in {secs:.2} s ({:.0}/s); keys in {}",
        pairs.len(),
        pairs.len() as f64 / secs,
        args.out.display()
    );
    println!(
        "{}",
        json!({"agents": pairs.len(), "enroll_secs": round3(secs), "per_sec": round3(pairs.len() as f64 / secs)})
    );
    Ok(())
}

/// Creates one agent and exchanges its enrolment token; returns `(id, key)`.
async fn enroll_one(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
) -> Result<(String, String)> {
    let resp = client
        .post(format!("{base}/admin/agents"))
        .bearer_auth(token)
        .json(&json!({ "name": name }))
        .send()
        .await
        .context("POST /admin/agents")?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "POST /admin/agents answered {status}: {}",
            body_excerpt(resp).await
        );
    }
    let created: CreatedAgent = resp
        .json()
        .await
        .context("POST /admin/agents: answer is not {agent: {id}, enrollToken}")?;
    let resp = client
        .post(format!("{base}/agent/enroll"))
        .json(&json!({ "agentId": created.agent.id, "token": created.enroll_token }))
        .send()
        .await
        .context("POST /agent/enroll")?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "POST /agent/enroll answered {status}: {}",
            body_excerpt(resp).await
        );
    }
    let enrolled: Enrolled = resp
        .json()
        .await
        .context("POST /agent/enroll: answer is not {key}")?;
    ensure!(
        !enrolled.key.is_empty() && !enrolled.key.contains(char::is_whitespace),
        "POST /agent/enroll answered an empty key or one with whitespace"
    );
    Ok((created.agent.id, enrolled.key))
}

/// Writes `bytes` to `path`, created (or truncated) with mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // An existing file keeps its mode on open: tighten it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads `id key` lines; blank lines and `#` comments are skipped.
fn read_keys(path: &Path, limit: Option<usize>) -> Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(id), Some(key), None) => pairs.push((id.to_owned(), key.to_owned())),
            _ => bail!(
                "{}:{}: expected `AGENT_ID KEY` (as written by `engine_load enroll`)",
                path.display(),
                n + 1
            ),
        }
    }
    if let Some(limit) = limit {
        ensure!(
            pairs.len() >= limit,
            "--agents {limit} but {} holds only {} keys; enrol more first",
            path.display(),
            pairs.len()
        );
        pairs.truncate(limit);
    }
    ensure!(!pairs.is_empty(), "{} holds no keys", path.display());
    Ok(pairs)
}

// --- run: shared state --------------------------------------------------------------------------

/// Moments of the run, set by connect/disconnect events.
#[derive(Default)]
struct Milestones {
    /// All N connected for the first time.
    all_connected: Option<Instant>,
    /// Start of the mass disconnect (see [`Shared::on_disconnect`]).
    outage: Option<Instant>,
    /// First disconnect of the current burst, and disconnects in it.
    burst_start: Option<Instant>,
    burst_count: usize,
    /// All N connected again after `outage`.
    reconnected: Option<Instant>,
}

/// What the agent tasks and the command driver share.
struct Shared {
    ids: Vec<String>,
    online: Vec<AtomicBool>,
    connected: AtomicUsize,
    /// Outage detection starts once all N have been connected…
    armed: AtomicBool,
    /// …and stops when the run ends and the agents hang up.
    stopping: AtomicBool,
    status_sent: AtomicU64,
    connect_failures: AtomicU64,
    last_connect_error: Mutex<Option<String>>,
    disconnects: AtomicU64,
    replies_sent: AtomicU64,
    milestones: Mutex<Milestones>,
    /// Notified once all N are connected for the first time.
    all_connected: Notify,
    /// Notified once the post-outage reconnect is complete.
    reconnected: Notify,
    started: Instant,
    exit_after_reconnect: bool,
}

impl Shared {
    fn n(&self) -> usize {
        self.ids.len()
    }

    fn milestones(&self) -> std::sync::MutexGuard<'_, Milestones> {
        self.milestones.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn secs(&self, at: Instant) -> f64 {
        at.duration_since(self.started).as_secs_f64()
    }

    fn on_connect(&self, idx: usize) {
        self.online[idx].store(true, Ordering::Relaxed);
        let now_connected = self.connected.fetch_add(1, Ordering::SeqCst) + 1;
        if now_connected != self.n() {
            return;
        }
        let now = Instant::now();
        let mut m = self.milestones();
        if m.all_connected.is_none() {
            m.all_connected = Some(now);
            self.armed.store(true, Ordering::SeqCst);
            self.all_connected.notify_one();
            eprintln!(
                "[engine_load] all {} agents connected after {:.2} s",
                self.n(),
                self.secs(now)
            );
        }
        if let (Some(outage), None) = (m.outage, m.reconnected) {
            m.reconnected = Some(now);
            eprintln!(
                "[engine_load] all {} agents reconnected {:.2} s after the outage",
                self.n(),
                now.duration_since(outage).as_secs_f64()
            );
            self.reconnected.notify_one();
        }
    }

    /// A mass disconnect (an engine restart) is ≥ 90 % of the agents losing their connection
    /// within [`BURST_WINDOW`] of the burst's first disconnect, or ≥ 90 % disconnected at once;
    /// it starts at that first disconnect. Counting disconnects rather than waiting for the
    /// connected count to fall catches an engine that is back before the agents notice. Watched
    /// only once all N have been connected.
    fn on_disconnect(&self, idx: usize) {
        self.online[idx].store(false, Ordering::Relaxed);
        self.disconnects.fetch_add(1, Ordering::Relaxed);
        let now_connected = self.connected.fetch_sub(1, Ordering::SeqCst) - 1;
        if !self.armed.load(Ordering::SeqCst) || self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        let mut m = self.milestones();
        if m.outage.is_some() {
            return;
        }
        let start = match m.burst_start {
            Some(start) if now.duration_since(start) <= BURST_WINDOW => {
                m.burst_count += 1;
                start
            }
            _ => {
                m.burst_count = 1;
                *m.burst_start.insert(now)
            }
        };
        if m.burst_count * 10 >= self.n() * 9 || now_connected * 10 <= self.n() {
            m.outage = Some(start);
            eprintln!(
                "[engine_load] mass disconnect from {:.2} s ({} lost, {now_connected}/{} connected); timing the reconnect",
                self.secs(start),
                m.burst_count,
                self.n(),
            );
        }
    }

    fn on_connect_error(&self, error: String) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        *self
            .last_connect_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    /// A random connected agent, or None when a few draws find none.
    fn random_online(&self) -> Option<usize> {
        (0..16)
            .map(|_| (rand_u64() % self.n() as u64) as usize)
            .find(|&i| self.online[i].load(Ordering::Relaxed))
    }
}

// --- run: one simulated agent -------------------------------------------------------------------

/// Settings every agent task reads.
struct AgentSettings {
    ws_url: String,
    interval: Duration,
    backoff_base: Duration,
    backoff_cap: Duration,
    ws_config: WebSocketConfig,
}

/// Why a session ended.
enum SessionEnd {
    /// The run is over.
    Stopped,
    /// A key rotation was acknowledged: reconnect at once with the new key.
    Rotated,
    /// The engine closed the connection or it broke.
    Lost,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One simulated agent: connect, run a session, back off, again, until `stop`.
async fn agent_task(
    shared: Arc<Shared>,
    settings: Arc<AgentSettings>,
    idx: usize,
    mut key: String,
    ramp: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut attempt: u32 = 0;
    let mut first = true;
    loop {
        if *stop.borrow() {
            return;
        }
        let permit = if first {
            ramp.acquire().await.ok()
        } else {
            None
        };
        // Boxed: the handshake's state is large and short-lived; the task keeps only the session's.
        let result = tokio::select! {
            r = Box::pin(connect(&settings, &shared.ids[idx], &key)) => r,
            _ = stop.changed() => return,
        };
        drop(permit);
        first = false;
        match result {
            Ok(ws) => {
                attempt = 0;
                shared.on_connect(idx);
                let end = session(ws, &shared, &settings, idx, &mut key, &mut stop).await;
                shared.on_disconnect(idx);
                match end {
                    SessionEnd::Stopped => return,
                    SessionEnd::Rotated => continue,
                    SessionEnd::Lost => {}
                }
            }
            Err(e) => shared.on_connect_error(e),
        }
        let cap = settings
            .backoff_base
            .saturating_mul(1u32 << attempt.min(20))
            .min(settings.backoff_cap);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(jitter(cap)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One connection attempt with the agent headers.
async fn connect(settings: &AgentSettings, id: &str, key: &str) -> Result<Ws, String> {
    let mut req = settings
        .ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad WebSocket URL {}: {e}", settings.ws_url))?;
    let h = req.headers_mut();
    let value = |v: &str| HeaderValue::from_str(v).map_err(|e| format!("bad header value: {e}"));
    h.insert(HEADER_CLIENT_TYPE, value(CLIENT_TYPE_AGENT)?);
    h.insert(HEADER_AGENT_ID, value(id)?);
    h.insert(HEADER_AGENT_KEY, value(key)?);
    h.insert(HEADER_PROTOCOL, value(&PROTOCOL_VERSION.to_string())?);
    let attempt = tokio_tungstenite::connect_async_with_config(req, Some(settings.ws_config), true);
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Err(_) => Err(format!("connect timed out after {CONNECT_TIMEOUT:?}")),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            Err(format!("upgrade refused with HTTP {}", resp.status()))
        }
        Ok(Err(e)) => Err(format!("connect failed: {e}")),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// A connected agent's life: hello, status updates on its phase, answers to commands.
async fn session(
    mut ws: Ws,
    shared: &Shared,
    settings: &AgentSettings,
    idx: usize,
    key: &mut String,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let connected_at = now_ms();
    let hello = AgentMessage::AgentConnected {
        agent_id: shared.ids[idx].clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        git_version: Some(GIT_VERSION.to_owned()),
        binary_sha256: None,
    };
    if send(&mut ws, &hello).await.is_err()
        || send(&mut ws, &status_update(idx, connected_at))
            .await
            .is_err()
    {
        return SessionEnd::Lost;
    }
    shared.status_sent.fetch_add(1, Ordering::Relaxed);

    // The next point of this agent's grid: started + phase + k * interval.
    let interval = settings.interval;
    let phase = interval.mul_f64(idx as f64 / shared.n() as f64);
    let grid0 = shared.started + phase;
    let now = Instant::now();
    let first = if now < grid0 {
        grid0
    } else {
        let k = now.duration_since(grid0).as_nanos() / interval.as_nanos().max(1) + 1;
        grid0 + interval * u32::try_from(k).unwrap_or(u32::MAX)
    };
    let mut ticker = tokio::time::interval_at(first.into(), interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);

    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let (replies, rotated) = answer(text.as_str(), key);
                    for reply in &replies {
                        if send(&mut ws, reply).await.is_err() {
                            return SessionEnd::Lost;
                        }
                        shared.replies_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    if rotated {
                        let _ = ws.close(None).await;
                        return SessionEnd::Rotated;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    if send(&mut ws, &ProtocolError::NotText.reply()).await.is_err() {
                        return SessionEnd::Lost;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return SessionEnd::Lost,
                Some(Ok(_)) => {}
            },
            _ = ticker.tick() => {
                if send(&mut ws, &status_update(idx, connected_at)).await.is_err() {
                    return SessionEnd::Lost;
                }
                shared.status_sent.fetch_add(1, Ordering::Relaxed);
            }
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return SessionEnd::Stopped;
            }
        }
    }
}

async fn send(ws: &mut Ws, message: &AgentMessage) -> Result<(), tungstenite::Error> {
    ws.send(Message::text(message.to_text())).await
}

/// The git version the simulated agents report.
const GIT_VERSION: &str = "0123456789ab";

/// A realistic host snapshot for agent `idx`: 2 disks, 3 apps, slightly varying figures.
fn status_update(idx: usize, connected_at: u64) -> AgentMessage {
    const GB: u64 = 1_000_000_000;
    let now = now_ms();
    let wobble = rand_u64() % 1000;
    let used = 1_200_000_000 + wobble * 1_000_000;
    let app = |name: &str, instance: u32, pid: u32, memory_mb: u64| AppStatus {
        name: name.to_owned(),
        instance,
        pid: Some(pid),
        state: AppState::Online,
        restarts: 0,
        unstable_restarts: 0,
        memory_restarts: 0,
        uptime_ms: now.saturating_sub(connected_at) + 3_600_000,
        memory_bytes: memory_mb * 1_000_000 + wobble * 1000,
        cpu_percent: (wobble % 200) as f64 / 10.0,
        last_exit: None,
        release: None,
    };
    AgentMessage::StatusUpdate {
        status: HostStatus {
            hostname: format!("load-{idx}"),
            uptime: 86_400 + now / 1000 % 86_400,
            git_version: Some(GIT_VERSION.to_owned()),
            binary_sha256: None,
            cpu: CpuStatus {
                load: (wobble % 1000) as f64 / 10.0,
                cores: 2,
            },
            memory: MemoryStatus {
                total: 4 * GB,
                used,
                free: 4 * GB - used,
            },
            disk: vec![
                DiskStatus {
                    fs: "/".into(),
                    size: 80 * GB,
                    used: 21 * GB + wobble * 1_000_000,
                    available: 59 * GB - wobble * 1_000_000,
                },
                DiskStatus {
                    fs: "/var/lib/citrus".into(),
                    size: 100 * GB,
                    used: 40 * GB,
                    available: 60 * GB,
                },
            ],
            apps: vec![
                app("web", 0, 2101, 180),
                app("api", 0, 2102, 240),
                app("worker", 0, 2103, 95),
            ],
            timestamp: now,
        },
    }
}

/// The replies to one engine frame, and whether it rotated the key (`key` is then the new one).
fn answer(text: &str, key: &mut String) -> (Vec<AgentMessage>, bool) {
    let message = match parse_engine(text) {
        Ok(m) => m,
        Err(e) => return (vec![e.reply()], false),
    };
    let done = OperationStatus::Completed;
    let replies = match message {
        EngineMessage::CreateSite { id, domain, .. } => site(id, SiteAction::Create, domain),
        EngineMessage::DeleteSite { id, domain } => site(id, SiteAction::Delete, domain),
        EngineMessage::RotateKey { id, new_key } => {
            *key = new_key;
            let reply = AgentMessage::KeyRotation {
                id,
                status: done,
                error: None,
            };
            return (vec![reply], true);
        }
        EngineMessage::UpdateAgent { id, .. } => vec![AgentMessage::UpdateOperation {
            id,
            status: done,
            git_version: Some(GIT_VERSION.to_owned()),
            output: Some("already up to date".into()),
            error: None,
        }],
        EngineMessage::RollbackAgent { id, commit_id } => vec![AgentMessage::RollbackOperation {
            id,
            status: done,
            git_version: commit_id.as_ref().map(|c| c.chars().take(12).collect()),
            commit_id: commit_id.unwrap_or_default(),
            output: Some("rolled back (simulated)".into()),
            error: None,
        }],
        EngineMessage::AppControl { id, app, action } => vec![AgentMessage::AppOperation {
            id,
            app,
            action,
            status: done,
            output: Some("done (simulated)".into()),
            error: None,
        }],
        EngineMessage::DeployApp { id, app, .. } => vec![AgentMessage::DeployOperation {
            id,
            app,
            phase: citrus::deploy::Phase::Completed,
            status: done,
            release_id: None,
            commit: None,
            output: Some("deployed (simulated)".into()),
            error: None,
        }],
    };
    (replies, false)
}

/// `starting` then `completed` for a site command.
fn site(id: String, operation: SiteAction, domain: String) -> Vec<AgentMessage> {
    let report = |status, output: Option<String>| AgentMessage::SiteOperation {
        id: id.clone(),
        operation,
        status,
        domain: domain.clone(),
        output,
        error: None,
    };
    let verb = match operation {
        SiteAction::Create => "created",
        SiteAction::Delete => "deleted",
    };
    vec![
        report(OperationStatus::Starting, None),
        report(
            OperationStatus::Completed,
            Some(format!("{verb} site {domain} (simulated)\n")),
        ),
    ]
}

// --- run: commands ------------------------------------------------------------------------------

/// How one command ended.
enum Outcome {
    Completed(Duration),
    Failed(String),
}

/// One command round trip: POST, then long-poll until the operation is finished.
async fn command_round_trip(
    client: reqwest::Client,
    base: Arc<str>,
    token: Arc<str>,
    agent_id: String,
    seq: u64,
) -> Outcome {
    let started = Instant::now();
    match command_inner(&client, &base, &token, &agent_id, seq, started).await {
        Ok(()) => Outcome::Completed(started.elapsed()),
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

async fn command_inner(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    agent_id: &str,
    seq: u64,
    started: Instant,
) -> Result<()> {
    let resp = client
        .post(format!("{base}/admin/agents/{agent_id}/commands"))
        .bearer_auth(token)
        .json(&json!({"type": "create_site", "domain": format!("s{seq}.example.com")}))
        .send()
        .await
        .context("POST /admin/agents/{id}/commands")?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "POST /admin/agents/{{id}}/commands answered {status}: {}",
            body_excerpt(resp).await
        );
    }
    let body: Value = resp
        .json()
        .await
        .context("POST /admin/agents/{id}/commands: answer is not JSON")?;
    let op_id = match &body["operation"]["id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => bail!("POST /admin/agents/{{id}}/commands: no operation.id in {body}"),
    };
    loop {
        let asked = Instant::now();
        let resp = client
            .get(format!("{base}/admin/operations/{op_id}?wait=5s"))
            .bearer_auth(token)
            .send()
            .await
            .context("GET /admin/operations/{id}")?;
        let status = resp.status();
        if !status.is_success() {
            bail!(
                "GET /admin/operations/{{id}} answered {status}: {}",
                body_excerpt(resp).await
            );
        }
        let body: Value = resp
            .json()
            .await
            .context("GET /admin/operations/{id}: answer is not JSON")?;
        let op_status = body["operation"]["status"].as_str().unwrap_or("");
        if op_status == "completed" {
            return Ok(());
        }
        if FAILED_STATUSES.contains(&op_status) {
            bail!(
                "operation {op_id} {op_status}: {}",
                body["operation"]["error"]
            );
        }
        if started.elapsed() > COMMAND_DEADLINE {
            bail!("operation {op_id} still {op_status:?} after {COMMAND_DEADLINE:?}");
        }
        // Guard against an engine that answers at once instead of long-polling.
        if asked.elapsed() < Duration::from_millis(50) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Round-trip results of the command driver.
#[derive(Default)]
struct CommandStats {
    rtts_ms: Vec<f64>,
    failures: u64,
    /// Ticks with no connected agent to send to.
    skipped: u64,
    failure_samples: Vec<String>,
}

impl CommandStats {
    fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Completed(rtt) => self.rtts_ms.push(rtt.as_secs_f64() * 1000.0),
            Outcome::Failed(why) => {
                self.failures += 1;
                if self.failure_samples.len() < 5 {
                    eprintln!("[engine_load] command failed: {why}");
                    self.failure_samples.push(why);
                }
            }
        }
    }
}

/// Sends `rate` commands per second until `end`, then lets in-flight ones finish (bounded).
async fn command_driver(
    shared: Arc<Shared>,
    base: String,
    token: String,
    rate: f64,
    end: Arc<Notify>,
    stats: Arc<Mutex<CommandStats>>,
) -> Result<()> {
    let client = http_client()?;
    let (base, token): (Arc<str>, Arc<str>) = (base.into(), token.into());
    let mut inflight = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    let ended = end.notified();
    tokio::pin!(ended);
    loop {
        tokio::select! {
            _ = &mut ended => break,
            _ = tick.tick() => {
                let Some(idx) = shared.random_online() else {
                    lock(&stats).skipped += 1;
                    continue;
                };
                seq += 1;
                inflight.spawn(command_round_trip(
                    client.clone(),
                    base.clone(),
                    token.clone(),
                    shared.ids[idx].clone(),
                    seq,
                ));
            }
            Some(done) = inflight.join_next() => {
                if let Ok(outcome) = done {
                    lock(&stats).record(outcome);
                }
            }
        }
    }
    let drain = async {
        while let Some(done) = inflight.join_next().await {
            if let Ok(outcome) = done {
                lock(&stats).record(outcome);
            }
        }
    };
    if tokio::time::timeout(DRAIN_COMMANDS, drain).await.is_err() {
        let left = inflight.len() as u64;
        let mut s = lock(&stats);
        s.failures += left;
        eprintln!("[engine_load] {left} command(s) still in flight at the end: counted as failed");
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// --- run: panel live streams --------------------------------------------------------------------

/// What the live streams read.
#[derive(Default)]
struct LiveStats {
    /// Streams the engine answered 200.
    open: AtomicUsize,
    refused: AtomicUsize,
    messages: AtomicU64,
    bytes: AtomicU64,
    reloads: AtomicU64,
}

/// Occurrences of `needle` in `text`, given the last `needle.len() - 1` bytes of the previous
/// chunk in `carry` (updated), so a name split across chunks counts once.
fn count_split(carry: &mut Vec<u8>, text: &[u8], needle: &[u8]) -> u64 {
    carry.extend_from_slice(text);
    let n = carry.windows(needle.len()).filter(|w| *w == needle).count() as u64;
    let keep = carry.len().min(needle.len() - 1);
    carry.drain(..carry.len() - keep);
    n
}

/// One `GET /admin/live`, read until `stop`.
async fn live_stream(
    base: Arc<str>,
    token: Arc<str>,
    stats: Arc<LiveStats>,
    mut stop: watch::Receiver<bool>,
) {
    // No total timeout: the stream lasts the run.
    let client = reqwest::Client::new();
    let request = client
        .get(format!("{base}/admin/live"))
        .bearer_auth(&*token);
    let mut resp = match request.send().await {
        Ok(resp) if resp.status().is_success() => resp,
        Ok(resp) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "[engine_load] GET /admin/live answered {}: {}",
                resp.status(),
                body_excerpt(resp).await
            );
            return;
        }
        Err(e) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            eprintln!("[engine_load] GET /admin/live: {e}");
            return;
        }
    };
    stats.open.fetch_add(1, Ordering::Relaxed);
    let (mut events, mut reloads) = (Vec::new(), Vec::new());
    loop {
        let chunk = tokio::select! {
            chunk = resp.chunk() => chunk,
            _ = stop.changed() => return,
        };
        let Ok(Some(chunk)) = chunk else {
            eprintln!("[engine_load] a live stream ended before the run");
            return;
        };
        stats.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let n = count_split(&mut events, &chunk, b"\nevent: ");
        stats.messages.fetch_add(n, Ordering::Relaxed);
        let n = count_split(&mut reloads, &chunk, b"event: reload");
        stats.reloads.fetch_add(n, Ordering::Relaxed);
    }
}

// --- run ----------------------------------------------------------------------------------------

async fn run(args: RunArgs) -> Result<()> {
    let base = args.engine.base()?;
    let token = args.engine.token()?;
    ensure!(!args.interval.is_zero(), "--interval must be above zero");
    ensure!(
        args.commands_per_sec >= 0.0 && args.commands_per_sec.is_finite(),
        "--commands-per-sec must be a number ≥ 0"
    );
    let pairs = read_keys(&args.keys, args.agents)?;
    let n = pairs.len();
    check_fd_limit(n)?;
    let ws_url = match &args.ws_url {
        Some(u) => u.clone(),
        None => format!("ws://{}/agent", base.trim_start_matches("http://")),
    };
    let started = Instant::now();
    let shared = Arc::new(Shared {
        ids: pairs.iter().map(|(id, _)| id.clone()).collect(),
        online: (0..n).map(|_| AtomicBool::new(false)).collect(),
        connected: AtomicUsize::new(0),
        armed: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        status_sent: AtomicU64::new(0),
        connect_failures: AtomicU64::new(0),
        last_connect_error: Mutex::new(None),
        disconnects: AtomicU64::new(0),
        replies_sent: AtomicU64::new(0),
        milestones: Mutex::new(Milestones::default()),
        all_connected: Notify::new(),
        reconnected: Notify::new(),
        started,
        exit_after_reconnect: args.exit_after_reconnect,
    });
    let settings = Arc::new(AgentSettings {
        ws_url: ws_url.clone(),
        interval: args.interval,
        backoff_base: args.backoff_base,
        backoff_cap: args.backoff_cap,
        ws_config: WebSocketConfig::default()
            .read_buffer_size(WS_BUFFER)
            .write_buffer_size(WS_BUFFER)
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME)),
    });
    eprintln!(
        "[engine_load] {n} agents → {ws_url}, status every {:?}, {} commands/s, {:?} once connected",
        args.interval, args.commands_per_sec, args.duration
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let ramp = Arc::new(Semaphore::new(args.ramp_concurrency.max(1)));
    let mut agents = JoinSet::new();
    for (idx, (_, key)) in pairs.into_iter().enumerate() {
        agents.spawn(agent_task(
            shared.clone(),
            settings.clone(),
            idx,
            key,
            ramp.clone(),
            stop_rx.clone(),
        ));
    }
    drop(stop_rx);
    let stats = Arc::new(Mutex::new(CommandStats::default()));
    let progress = tokio::spawn(progress(shared.clone(), stats.clone()));
    let lag = Arc::new(Mutex::new(Vec::new()));
    let lag_probe = tokio::spawn(lag_probe(lag.clone()));

    // Ramp: the measured part starts once all are connected (or the ramp took too long).
    if tokio::time::timeout(args.ramp_timeout, shared.all_connected.notified())
        .await
        .is_err()
    {
        eprintln!(
            "[engine_load] only {}/{n} agents connected after {:?}: measuring anyway",
            shared.connected.load(Ordering::SeqCst),
            args.ramp_timeout
        );
    }
    let steady_from = Instant::now();
    let status_at_steady = shared.status_sent.load(Ordering::Relaxed);
    if let Some(path) = &args.ready_file {
        std::fs::write(path, b"").with_context(|| format!("creating {}", path.display()))?;
    }

    let live = Arc::new(LiveStats::default());
    let (live_stop, live_stop_rx) = watch::channel(false);
    let mut streams = JoinSet::new();
    let (live_base, live_token): (Arc<str>, Arc<str>) = (base.clone().into(), token.clone().into());
    for _ in 0..args.live_streams {
        streams.spawn(live_stream(
            live_base.clone(),
            live_token.clone(),
            live.clone(),
            live_stop_rx.clone(),
        ));
    }
    drop(live_stop_rx);

    let commands_end = Arc::new(Notify::new());
    let driver = (args.commands_per_sec > 0.0).then(|| {
        tokio::spawn(command_driver(
            shared.clone(),
            base.clone(),
            token.clone(),
            args.commands_per_sec,
            commands_end.clone(),
            stats.clone(),
        ))
    });

    let early_end = async {
        if shared.exit_after_reconnect {
            shared.reconnected.notified().await;
            // Let the returning agents send a round of status updates.
            tokio::time::sleep(args.interval).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(args.duration) => {}
        _ = early_end => eprintln!("[engine_load] reconnected: ending the run early"),
    }
    let ended = Instant::now();
    let _ = live_stop.send(true);
    while streams.join_next().await.is_some() {}
    lag_probe.abort();
    progress.abort();
    let connected_at_end = shared.connected.load(Ordering::SeqCst);
    let status_at_end = shared.status_sent.load(Ordering::Relaxed);
    commands_end.notify_one();
    if let Some(driver) = driver {
        driver.await.context("command driver panicked")??;
    }

    // Close the sockets politely (bounded), then report; these disconnects are no outage.
    shared.stopping.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while agents.join_next().await.is_some() {}
    })
    .await;

    let mut summary = summary(
        &shared,
        &lock(&stats),
        &lock(&lag),
        Steady {
            from: steady_from,
            to: ended,
            status_sent: status_at_end - status_at_steady,
        },
        connected_at_end,
        status_at_end,
    );
    if args.live_streams > 0 {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        summary["live_streams"] = json!(args.live_streams);
        summary["live_open"] = json!(live.open.load(Ordering::Relaxed));
        summary["live_refused"] = json!(live.refused.load(Ordering::Relaxed));
        summary["live_messages"] = json!(load(&live.messages));
        summary["live_mb"] = json!(round3(load(&live.bytes) as f64 / 1e6));
        summary["live_reloads"] = json!(load(&live.reloads));
    }
    println!("{summary}");
    Ok(())
}

/// Fails early when the open-files limit cannot hold one socket per agent.
fn check_fd_limit(n: usize) -> Result<()> {
    use nix::sys::resource::{getrlimit, Resource};
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    let need = n as u64 + 300;
    ensure!(
        soft >= need,
        "{n} agents need about {need} open files but the limit is {soft}: raise the hard limit \
         (ulimit -Hn, LimitNOFILE) or simulate fewer agents"
    );
    Ok(())
}

/// How late this process's runtime wakes a 20 ms timer, in ms: when the load generator itself is
/// short of CPU, its round trips grow too and this says so.
async fn lag_probe(lag_ms: Arc<Mutex<Vec<f64>>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let due = tick.tick().await;
        let late = due.elapsed().as_secs_f64() * 1000.0;
        lock(&lag_ms).push(late);
    }
}

/// A stderr line every few seconds: connected agents, status and command rates.
async fn progress(shared: Arc<Shared>, stats: Arc<Mutex<CommandStats>>) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let mut last_status = 0;
    let mut last_at = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        let sent = shared.status_sent.load(Ordering::Relaxed);
        let rate = (sent - last_status) as f64 / now.duration_since(last_at).as_secs_f64();
        (last_status, last_at) = (sent, now);
        let (done, failed) = {
            let s = lock(&stats);
            (s.rtts_ms.len(), s.failures)
        };
        let error = lock(&shared.last_connect_error).clone();
        eprintln!(
            "[engine_load] t={:.0}s connected {}/{} status/s {rate:.0} commands ok {done} failed {failed} connect errors {}{}",
            shared.secs(now),
            shared.connected.load(Ordering::SeqCst),
            shared.n(),
            shared.connect_failures.load(Ordering::Relaxed),
            error.map(|e| format!(" (last: {e})")).unwrap_or_default(),
        );
    }
}

/// The measured part of a run.
struct Steady {
    from: Instant,
    to: Instant,
    /// Status updates sent in it.
    status_sent: u64,
}

/// The JSON object printed at the end of `run`.
fn summary(
    shared: &Shared,
    stats: &CommandStats,
    lag_ms: &[f64],
    steady: Steady,
    connected: usize,
    status_sent: u64,
) -> Value {
    let n = shared.n();
    let m = shared.milestones();
    let steady_secs = steady.to.duration_since(steady.from).as_secs_f64();
    let status_per_sec = steady.status_sent as f64 / steady_secs.max(1e-9);
    let (reconnect_secs, reconnect_fraction) = match (m.outage, m.reconnected) {
        (Some(o), Some(r)) => (Some(round3(r.duration_since(o).as_secs_f64())), Some(1.0)),
        (Some(_), None) => (None, Some(round3(connected as f64 / n as f64))),
        _ => (None, None),
    };
    let mut rtts = stats.rtts_ms.clone();
    rtts.sort_by(f64::total_cmp);
    let pct = |p| percentile(&rtts, p).map(round3);
    let (cpu_secs, rss_peak_mb) = own_usage();
    let mut lag_ms = lag_ms.to_vec();
    lag_ms.sort_by(f64::total_cmp);
    json!({
        "agents": n,
        "connected": connected,
        "connect_secs": m.all_connected.map(|t| round3(shared.secs(t))),
        "status_sent": status_sent,
        "status_per_sec": round3(status_per_sec),
        "commands": rtts.len() as u64 + stats.failures,
        "command_failures": stats.failures,
        "rtt_p50_ms": pct(50.0),
        "rtt_p99_ms": pct(99.0),
        "rtt_max_ms": rtts.last().copied().map(round3),
        "reconnect_secs": reconnect_secs,
        "reconnect_fraction": reconnect_fraction,
        "outage_at_secs": m.outage.map(|t| round3(shared.secs(t))),
        "run_secs": round3(shared.secs(steady.to)),
        "steady_from_secs": round3(shared.secs(steady.from)),
        "steady_secs": round3(steady_secs),
        "commands_skipped": stats.skipped,
        "replies_sent": shared.replies_sent.load(Ordering::Relaxed),
        "disconnects": shared.disconnects.load(Ordering::Relaxed),
        "connect_failures": shared.connect_failures.load(Ordering::Relaxed),
        "loadgen_cpu_secs": round3(cpu_secs),
        "loadgen_rss_peak_mb": round3(rss_peak_mb),
        "loadgen_lag_p99_ms": percentile(&lag_ms, 99.0).map(round3),
        "loadgen_lag_max_ms": lag_ms.last().copied().map(round3),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn split_names_count_once() {
        let mut carry = Vec::new();
        let needle = b"\nevent: ";
        assert_eq!(
            count_split(&mut carry, b"retry: 3000\n\nevent: agent\nda", needle),
            1
        );
        assert_eq!(count_split(&mut carry, b"ta: {}\n\nev", needle), 0);
        assert_eq!(
            count_split(&mut carry, b"ent: reload\ndata: {}\n\n", needle),
            1
        );
        assert_eq!(count_split(&mut carry, b"", needle), 0);
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn site_command_answers_starting_then_completed() {
        let mut key = "k".to_owned();
        let (replies, rotated) = answer(
            r#"{"type":"create_site","id":"c1","domain":"s1.example.com"}"#,
            &mut key,
        );
        assert!(!rotated);
        let v: Vec<Value> = replies
            .iter()
            .map(|r| serde_json::from_str(&r.to_text()).unwrap())
            .collect();
        assert_eq!(v[0]["type"], "site_operation");
        assert_eq!(v[0]["status"], "starting");
        assert_eq!(v[1]["status"], "completed");
        assert_eq!(v[1]["id"], "c1");
        assert_eq!(v[1]["operation"], "create");
        assert!(v[1]["output"].as_str().unwrap().contains("s1.example.com"));
    }

    #[test]
    fn rotate_key_switches_key() {
        let mut key = "old".to_owned();
        let (replies, rotated) =
            answer(r#"{"type":"rotate_key","id":"k","newKey":"new"}"#, &mut key);
        assert!(rotated);
        assert_eq!(key, "new");
        assert_eq!(
            serde_json::to_value(&replies[0]).unwrap(),
            json!({"type": "key_rotation", "id": "k", "status": "completed"})
        );
    }

    #[test]
    fn unknown_command_gets_error_with_id() {
        let mut key = "k".to_owned();
        let (replies, _) = answer(r#"{"type":"reboot","id":"x9"}"#, &mut key);
        let v = serde_json::to_value(&replies[0]).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["id"], "x9");
    }

    #[test]
    fn status_update_shape() {
        let v: Value = serde_json::from_str(&status_update(17, now_ms()).to_text()).unwrap();
        assert_eq!(v["type"], "status_update");
        assert_eq!(v["status"]["hostname"], "load-17");
        assert_eq!(v["status"]["disk"].as_array().unwrap().len(), 2);
        assert_eq!(v["status"]["apps"].as_array().unwrap().len(), 3);
        assert_eq!(v["status"]["apps"][0]["state"], "online");
    }
}
