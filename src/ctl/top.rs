//! `citrusctl top`: a live full-screen view of every app instance (state, pid, uptime, restarts,
//! memory, cpu, and sparklines of memory and cpu over the last minutes), refreshed from the
//! control API once per interval (default 2 s, 1 s at the fastest: with 100 apps a refresh
//! costs citrusd about 3 ms of CPU, so 1 s would cost it 0.3 % of a core, 2 s about 0.17 %). Arrows select an instance, `r`
//! restarts its app after a confirmation, `l` shows the app's log tail, `q` (or Ctrl-C, or
//! SIGTERM/SIGHUP) quits and restores the terminal. When the daemon goes away the screen says so
//! and keeps trying once per interval until it answers again.
//!
//! Bounded: [`HISTORY`] samples per instance, [`MAX_ROWS`] instances shown (the table scrolls),
//! [`LOG_LINES`] lines of log tail, every request under [`REQUEST_TIMEOUT`].

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;
use std::time::Duration;

use bytes::Bytes;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row, Table, TableState, Wrap};
use ratatui::{DefaultTerminal, Frame};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::{app_path, table, visible_controls, CtlError};
use crate::control::client::{Client, ClientError};
use crate::control::{ActionReply, AppStatus, Status};

/// Samples of memory and cpu kept per instance (10 minutes at the default interval).
pub const HISTORY: usize = 300;
/// Instances shown at most; the table scrolls within them.
pub const MAX_ROWS: usize = 4096;
/// Lines of an app's log shown by `l`.
pub const LOG_LINES: usize = 200;
/// The shortest refresh interval: the control API is never asked more often than this.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Every control request of `top` gives up after this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Bars of a sparkline, lowest to highest.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Checks the `--interval` of `top`: a duration of at least [`MIN_INTERVAL`].
pub fn parse_interval(text: &str) -> Result<Duration, CtlError> {
    let d = crate::config::parse_duration(text)
        .map_err(|e| CtlError::Usage(format!("--interval {text:?}: {e}")))?;
    if d < MIN_INTERVAL {
        return Err(CtlError::Usage(format!(
            "--interval {text:?} is too short: top refreshes at most once a second (give \"1s\" or more)"
        )));
    }
    Ok(d)
}

/// Runs `citrusctl top` until the operator quits.
pub async fn run(client: &Client, interval: Duration) -> Result<(), CtlError> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(CtlError::Usage(
            "top needs a terminal; in scripts use `citrusctl status` (or `citrusctl --json status`)"
                .into(),
        ));
    }
    let mut terminal = ratatui::try_init()
        .map_err(|e| CtlError::Failed(format!("cannot set up the terminal for top: {e}")))?;
    let result = event_loop(&mut terminal, client, interval).await;
    ratatui::restore();
    result
}

/// What a background request brought back.
enum Outcome {
    Status(Result<Status, ClientError>),
    Restarted(String, Result<ActionReply, ClientError>),
    Logs(String, Result<Bytes, ClientError>),
}

async fn event_loop(
    terminal: &mut DefaultTerminal,
    client: &Client,
    interval: Duration,
) -> Result<(), CtlError> {
    let (key_tx, mut keys) = mpsc::channel::<Event>(64);
    // crossterm's reader blocks; it lives on its own thread and ends with the process.
    std::thread::Builder::new()
        .name("top-keys".into())
        .spawn(move || {
            while let Ok(ev) = event::read() {
                if key_tx.blocking_send(ev).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| CtlError::Failed(format!("cannot start the key reader: {e}")))?;
    let quit_signal =
        |kind| signal(kind).map_err(|e| CtlError::Failed(format!("cannot handle signals: {e}")));
    let mut term = quit_signal(SignalKind::terminate())?;
    let mut hup = quit_signal(SignalKind::hangup())?;
    let mut int = quit_signal(SignalKind::interrupt())?;
    let (done_tx, mut done) = mpsc::channel::<Outcome>(16);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut top = Top::new(client.socket().display().to_string(), interval);
    let mut status_pending = false;
    let mut logs_pending = false;
    loop {
        terminal
            .draw(|f| top.draw(f))
            .map_err(|e| CtlError::Failed(format!("cannot draw: {e}")))?;
        tokio::select! {
            _ = tick.tick() => {
                if !status_pending {
                    status_pending = true;
                    spawn_status(client, &done_tx);
                }
                if let (Mode::Logs { app, .. }, false) = (&top.mode, logs_pending) {
                    logs_pending = true;
                    spawn_logs(client, app, &done_tx);
                }
            }
            ev = keys.recv() => match ev {
                None => break,
                Some(Event::Key(k)) if k.kind != KeyEventKind::Release => match top.key(k) {
                    Action::None => {}
                    Action::Quit => break,
                    Action::Restart(app) => spawn_restart(client, &app, &done_tx),
                    Action::Logs(app) => {
                        logs_pending = true;
                        spawn_logs(client, &app, &done_tx);
                    }
                },
                Some(_) => {} // resize and the rest: redrawn at the top of the loop
            },
            Some(out) = done.recv() => {
                match &out {
                    Outcome::Status(_) => status_pending = false,
                    Outcome::Logs(..) => logs_pending = false,
                    Outcome::Restarted(..) => {}
                }
                top.apply(out);
            }
            _ = term.recv() => break,
            _ = hup.recv() => break,
            _ = int.recv() => break,
        }
    }
    Ok(())
}

/// Runs `request` under [`REQUEST_TIMEOUT`], a timeout being a protocol failure.
async fn bounded<T>(
    what: &str,
    request: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Protocol {
                what: what.to_string(),
                detail: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
            })
        })
}

fn spawn_status(client: &Client, done: &mpsc::Sender<Outcome>) {
    let (client, done) = (client.clone(), done.clone());
    tokio::spawn(async move {
        let r = bounded("/v1/status", client.get::<Status>("/v1/status")).await;
        let _ = done.send(Outcome::Status(r)).await;
    });
}

fn spawn_restart(client: &Client, app: &str, done: &mpsc::Sender<Outcome>) {
    let (client, done, app) = (client.clone(), done.clone(), app.to_string());
    tokio::spawn(async move {
        let path = app_path(&app, "/restart");
        // A restart waits for the app to be back: allow it the stop and start timeouts.
        let r = tokio::time::timeout(
            Duration::from_secs(120),
            client.post::<_, ActionReply>(&path, &serde_json::json!({})),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Protocol {
                what: path.clone(),
                detail: "no answer within 120s".into(),
            })
        });
        let _ = done.send(Outcome::Restarted(app, r)).await;
    });
}

fn spawn_logs(client: &Client, app: &str, done: &mpsc::Sender<Outcome>) {
    let (client, done, app) = (client.clone(), done.clone(), app.to_string());
    tokio::spawn(async move {
        let path = app_path(&app, &format!("/logs?lines={LOG_LINES}&follow=false"));
        let r = bounded(&path, client.get_raw(&path)).await;
        let _ = done.send(Outcome::Logs(app, r)).await;
    });
}

/// What a key asks the event loop to do.
#[derive(Debug, PartialEq)]
enum Action {
    None,
    Quit,
    Restart(String),
    Logs(String),
}

/// What the screen shows.
#[derive(Debug)]
enum Mode {
    Table,
    /// Asking whether to restart this app.
    Confirm(String),
    /// The log tail of this app, scrolled `scroll` lines up from the end.
    Logs {
        app: String,
        lines: Vec<String>,
        scroll: usize,
    },
}

/// Whether the daemon answers.
#[derive(Debug)]
enum Link {
    Connecting,
    Up { pid: u32, version: String },
    Gone(String),
}

/// Memory and cpu samples of one instance, oldest first, at most [`HISTORY`] each.
#[derive(Debug, Default)]
struct History {
    memory: VecDeque<f64>,
    cpu: VecDeque<f64>,
}

impl History {
    fn push(&mut self, memory: f64, cpu: f64) {
        for (q, v) in [(&mut self.memory, memory), (&mut self.cpu, cpu)] {
            if q.len() == HISTORY {
                q.pop_front();
            }
            q.push_back(v);
        }
    }
}

/// The state of the view.
struct Top {
    socket: String,
    interval: Duration,
    link: Link,
    rows: Vec<AppStatus>,
    total: usize,
    history: HashMap<(String, u32), History>,
    table: TableState,
    /// The selected instance, kept across refreshes that reorder or remove rows.
    selected: Option<(String, u32)>,
    mode: Mode,
    message: String,
}

impl Top {
    fn new(socket: String, interval: Duration) -> Top {
        Top {
            socket,
            interval,
            link: Link::Connecting,
            rows: Vec::new(),
            total: 0,
            history: HashMap::new(),
            table: TableState::default(),
            selected: None,
            mode: Mode::Table,
            message: String::new(),
        }
    }

    /// The app of the selected instance, while the daemon answers.
    fn selected_app(&self) -> Option<String> {
        if !matches!(self.link, Link::Up { .. }) {
            return None;
        }
        self.table
            .selected()
            .and_then(|i| self.rows.get(i))
            .map(|r| r.name.clone())
    }

    fn select(&mut self, index: usize) {
        if self.rows.is_empty() {
            self.table.select(None);
            self.selected = None;
            return;
        }
        let i = index.min(self.rows.len() - 1);
        self.table.select(Some(i));
        self.selected = Some((self.rows[i].name.clone(), self.rows[i].instance));
    }

    /// Handles one key press.
    fn key(&mut self, k: KeyEvent) -> Action {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        match &mut self.mode {
            Mode::Confirm(app) => match k.code {
                KeyCode::Char('y') | KeyCode::Char('Y') | KeyCode::Enter => {
                    let app = app.clone();
                    self.message = format!("restarting {app}…");
                    self.mode = Mode::Table;
                    Action::Restart(app)
                }
                KeyCode::Char('q') => Action::Quit,
                _ => {
                    self.mode = Mode::Table;
                    self.message = "restart cancelled".into();
                    Action::None
                }
            },
            Mode::Logs { scroll, lines, .. } => match k.code {
                KeyCode::Char('q') => Action::Quit,
                KeyCode::Esc | KeyCode::Char('l') | KeyCode::Backspace => {
                    self.mode = Mode::Table;
                    Action::None
                }
                KeyCode::Up => {
                    *scroll = (*scroll + 1).min(lines.len());
                    Action::None
                }
                KeyCode::Down => {
                    *scroll = scroll.saturating_sub(1);
                    Action::None
                }
                KeyCode::PageUp => {
                    *scroll = (*scroll + 10).min(lines.len());
                    Action::None
                }
                KeyCode::PageDown | KeyCode::End => {
                    *scroll = if k.code == KeyCode::End {
                        0
                    } else {
                        scroll.saturating_sub(10)
                    };
                    Action::None
                }
                _ => Action::None,
            },
            Mode::Table => {
                let at = self.table.selected().unwrap_or(0);
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
                    KeyCode::Down | KeyCode::Char('j') => self.select(at + 1),
                    KeyCode::Up | KeyCode::Char('k') => self.select(at.saturating_sub(1)),
                    KeyCode::PageDown => self.select(at + 10),
                    KeyCode::PageUp => self.select(at.saturating_sub(10)),
                    KeyCode::Home => self.select(0),
                    KeyCode::End => self.select(usize::MAX),
                    KeyCode::Char('r') => {
                        if let Some(app) = self.selected_app() {
                            self.mode = Mode::Confirm(app);
                        }
                    }
                    KeyCode::Char('l') => {
                        if let Some(app) = self.selected_app() {
                            self.mode = Mode::Logs {
                                app: app.clone(),
                                lines: Vec::new(),
                                scroll: 0,
                            };
                            return Action::Logs(app);
                        }
                    }
                    _ => {}
                }
                Action::None
            }
        }
    }

    /// Takes in what a request brought back.
    fn apply(&mut self, out: Outcome) {
        match out {
            Outcome::Status(Ok(status)) => {
                self.link = Link::Up {
                    pid: status.daemon.pid,
                    version: status.daemon.version,
                };
                self.set_rows(status.apps);
            }
            Outcome::Status(Err(e)) => {
                let first_line = e.to_string().lines().next().unwrap_or("").to_string();
                self.link = Link::Gone(first_line);
            }
            Outcome::Restarted(app, Ok(_)) => self.message = format!("restarted {app}"),
            Outcome::Restarted(app, Err(e)) => {
                self.message = format!(
                    "restart of {app} failed: {}",
                    e.to_string().lines().next().unwrap_or("")
                )
            }
            Outcome::Logs(app, result) => {
                let Mode::Logs {
                    app: shown, lines, ..
                } = &mut self.mode
                else {
                    return;
                };
                if *shown != app {
                    return;
                }
                *lines = match result {
                    Ok(bytes) => log_lines(&bytes),
                    Err(e) => vec![format!("cannot read the log of {app}: {e}")],
                };
            }
        }
    }

    /// Replaces the rows, records their samples, keeps the selection on the same instance.
    fn set_rows(&mut self, mut apps: Vec<AppStatus>) {
        self.total = apps.len();
        apps.truncate(MAX_ROWS);
        for a in &apps {
            self.history
                .entry((a.name.clone(), a.instance))
                .or_default()
                .push(a.memory_bytes as f64, a.cpu_percent);
        }
        self.history
            .retain(|k, _| apps.iter().any(|a| a.name == k.0 && a.instance == k.1));
        let keep = self.selected.as_ref().and_then(|(name, inst)| {
            apps.iter()
                .position(|a| &a.name == name && a.instance == *inst)
        });
        let fallback = self.table.selected().unwrap_or(0);
        self.rows = apps;
        self.select(keep.unwrap_or(fallback));
    }

    fn draw(&mut self, f: &mut Frame) {
        let [head, body, foot] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(f.area());
        let instances = match self.total {
            n if n > self.rows.len() => format!("{n} instances (first {} shown)", self.rows.len()),
            n => format!("{n} instances"),
        };
        let head_text = match &self.link {
            Link::Connecting => format!("citrusctl top — connecting to {}", self.socket),
            Link::Up { pid, version } => format!(
                "citrusd {version} (pid {pid}) — {instances} — every {}s",
                self.interval.as_secs()
            ),
            Link::Gone(_) => format!("citrusd on {} — not answering", self.socket),
        };
        f.render_widget(
            Paragraph::new(head_text).style(Style::new().add_modifier(Modifier::BOLD)),
            head,
        );
        let keys = match self.mode {
            Mode::Logs { .. } => "↑↓ PgUp PgDn scroll  Esc/l back  q quit",
            _ => "↑↓ select  r restart  l logs  q quit",
        };
        let foot_text = if self.message.is_empty() {
            keys.to_string()
        } else {
            format!("{keys}  │ {}", self.message)
        };
        f.render_widget(
            Paragraph::new(foot_text).style(Style::new().fg(Color::Black).bg(Color::Cyan)),
            foot,
        );
        if let Link::Gone(error) = &self.link {
            let text = format!(
                "citrusd went away: {error}\n\nwaiting for it to come back (retrying every {}s) — q quits",
                self.interval.as_secs()
            );
            f.render_widget(
                Paragraph::new(text)
                    .wrap(Wrap { trim: false })
                    .style(Style::new().fg(Color::Yellow))
                    .block(Block::new().borders(Borders::ALL).title(" daemon gone ")),
                body,
            );
            return;
        }
        match &self.mode {
            Mode::Logs { app, lines, scroll } => {
                let height = body.height.saturating_sub(2) as usize;
                let end = lines.len().saturating_sub(*scroll);
                let start = end.saturating_sub(height);
                let shown: Vec<Line> = lines[start..end]
                    .iter()
                    .map(|l| Line::raw(l.as_str()))
                    .collect();
                f.render_widget(
                    Paragraph::new(shown).block(
                        Block::new()
                            .borders(Borders::ALL)
                            .title(format!(" log of {app} (last {LOG_LINES} lines) ")),
                    ),
                    body,
                );
            }
            Mode::Table | Mode::Confirm(_) => self.draw_table(f, body),
        }
        if let Mode::Confirm(app) = &self.mode {
            let n = self.rows.iter().filter(|r| &r.name == app).count();
            let text = format!("Restart {app} ({n} instance(s))?\n\ny: restart   n/Esc: cancel");
            let area = centered(body, 50, 5);
            f.render_widget(Clear, area);
            f.render_widget(
                Paragraph::new(text).block(Block::new().borders(Borders::ALL).title(" confirm ")),
                area,
            );
        }
    }

    fn draw_table(&mut self, f: &mut Frame, area: Rect) {
        // Fixed text columns; the two sparklines share what is left.
        const FIXED: [u16; 8] = [16, 4, 9, 8, 8, 8, 8, 6];
        let used: u16 = FIXED.iter().sum::<u16>() + FIXED.len() as u16 + 1;
        let spark = (area.width.saturating_sub(used) / 2).clamp(4, HISTORY as u16) as usize;
        let header = Row::new([
            "APP",
            "INST",
            "STATE",
            "PID",
            "UPTIME",
            "RESTARTS",
            "MEMORY",
            "CPU",
            "MEMORY HISTORY",
            "CPU HISTORY",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
        let rows = self.rows.iter().map(|a| {
            let running = |text: String| if a.pid.is_some() { text } else { "-".into() };
            let (mem, cpu) = self
                .history
                .get(&(a.name.clone(), a.instance))
                .map(|h| {
                    (
                        sparkline(&h.memory, spark, None, 0.0),
                        sparkline(&h.cpu, spark, Some(0.0), 1.0),
                    )
                })
                .unwrap_or_default();
            Row::new([
                a.name.clone(),
                a.instance.to_string(),
                a.state.as_str().to_string(),
                a.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                table::uptime(a.uptime_ms),
                a.restarts.to_string(),
                running(table::size(a.memory_bytes)),
                running(format!("{:.1}%", a.cpu_percent)),
                mem,
                cpu,
            ])
        });
        let mut widths: Vec<Constraint> = FIXED.iter().map(|w| Constraint::Length(*w)).collect();
        widths.extend([Constraint::Length(spark as u16), Constraint::Fill(1)]);
        let table = Table::new(rows, widths)
            .header(header)
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
            .highlight_symbol("▶")
            .block(Block::new().borders(Borders::TOP));
        if self.rows.is_empty() {
            let text = match self.link {
                Link::Connecting => "waiting for citrusd…",
                _ => "no apps",
            };
            f.render_widget(
                Paragraph::new(text).block(Block::new().borders(Borders::TOP)),
                area,
            );
            return;
        }
        f.render_stateful_widget(table, area, &mut self.table);
    }
}

/// The last `width` of `values` as bars from `low` (the lowest bar) to their maximum, or to
/// `floor` when that is higher. `low: None` starts the bars at the window's minimum, so that a
/// memory line shows its changes rather than its size.
fn sparkline(values: &VecDeque<f64>, width: usize, low: Option<f64>, floor: f64) -> String {
    let window = || {
        values
            .iter()
            .skip(values.len().saturating_sub(width))
            .copied()
    };
    let low = low.unwrap_or_else(|| window().fold(f64::INFINITY, f64::min));
    let span = window().fold(floor, f64::max) - low;
    window()
        .map(|v| {
            if span <= 0.0 {
                BARS[0]
            } else {
                let level = ((v - low) / span * (BARS.len() - 1) as f64).round();
                BARS[(level.max(0.0) as usize).min(BARS.len() - 1)]
            }
        })
        .collect()
}

/// The log tail as lines: control characters made visible, tabs as spaces, the last
/// [`LOG_LINES`] kept.
fn log_lines(bytes: &[u8]) -> Vec<String> {
    let text = visible_controls(bytes);
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_LINES)..]
        .iter()
        .map(|l| l.replace('\t', "    "))
        .collect()
}

/// A `width`×`height` rectangle in the middle of `area`.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::AppState;

    fn row(name: &str, instance: u32, memory: u64) -> AppStatus {
        AppStatus {
            name: name.into(),
            instance,
            pid: Some(100 + instance),
            state: AppState::Online,
            restarts: 0,
            unstable_restarts: 0,
            memory_restarts: 0,
            uptime_ms: 1000,
            memory_bytes: memory,
            cpu_percent: 0.5,
            last_exit: None,
            release: None,
        }
    }

    fn up() -> Top {
        let mut top = Top::new("s".into(), MIN_INTERVAL);
        top.link = Link::Up {
            pid: 1,
            version: "test".into(),
        };
        top
    }

    fn press(top: &mut Top, code: KeyCode) -> Action {
        top.key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn sparkline_scales_to_the_window() {
        let v: VecDeque<f64> = [0.0, 1.0, 2.0, 4.0].into_iter().collect();
        assert_eq!(sparkline(&v, 10, Some(0.0), 0.0), "▁▃▅█");
        assert_eq!(sparkline(&v, 2, Some(0.0), 0.0), "▅█");
        assert_eq!(sparkline(&v, 2, Some(0.0), 8.0), "▃▅");
        let idle: VecDeque<f64> = [0.0, 0.0].into_iter().collect();
        assert_eq!(sparkline(&idle, 4, Some(0.0), 1.0), "▁▁");
        // Memory: from the window's minimum, and flat when it does not change.
        let memory: VecDeque<f64> = [100.0, 107.0, 114.0].into_iter().collect();
        assert_eq!(sparkline(&memory, 10, None, 0.0), "▁▅█");
        let flat: VecDeque<f64> = [5e6, 5e6].into_iter().collect();
        assert_eq!(sparkline(&flat, 10, None, 0.0), "▁▁");
    }

    #[test]
    fn history_is_capped_and_forgets_gone_instances() {
        let mut top = Top::new("s".into(), MIN_INTERVAL);
        for i in 0..HISTORY + 50 {
            top.set_rows(vec![row("a", 0, i as u64), row("b", 0, 1)]);
        }
        let h = &top.history[&("a".to_string(), 0)];
        assert_eq!(h.memory.len(), HISTORY);
        assert_eq!(h.memory.back().copied(), Some((HISTORY + 49) as f64));
        top.set_rows(vec![row("a", 0, 1)]);
        assert!(!top.history.contains_key(&("b".to_string(), 0)));
    }

    #[test]
    fn selection_follows_its_instance_and_rows_are_capped() {
        let mut top = up();
        top.set_rows(vec![row("a", 0, 1), row("b", 0, 1), row("b", 1, 1)]);
        assert_eq!(press(&mut top, KeyCode::Down), Action::None);
        assert_eq!(top.selected_app().as_deref(), Some("b"));
        // "a" goes away: the selection stays on b/0, now the first row.
        top.set_rows(vec![row("b", 0, 1), row("b", 1, 1)]);
        assert_eq!(top.table.selected(), Some(0));
        press(&mut top, KeyCode::End);
        assert_eq!(top.selected, Some(("b".to_string(), 1)));
        let many: Vec<AppStatus> = (0..MAX_ROWS as u32 + 10).map(|i| row("m", i, 1)).collect();
        top.set_rows(many);
        assert_eq!(top.rows.len(), MAX_ROWS);
        assert_eq!(top.total, MAX_ROWS + 10);
    }

    #[test]
    fn restart_needs_a_confirmation() {
        let mut top = up();
        top.set_rows(vec![row("a", 0, 1), row("b", 0, 1)]);
        press(&mut top, KeyCode::Down);
        assert_eq!(press(&mut top, KeyCode::Char('r')), Action::None);
        assert_eq!(press(&mut top, KeyCode::Char('n')), Action::None);
        assert!(matches!(top.mode, Mode::Table));
        press(&mut top, KeyCode::Char('r'));
        assert_eq!(
            press(&mut top, KeyCode::Char('y')),
            Action::Restart("b".into())
        );
        // With the daemon gone there is nothing to restart or read.
        top.link = Link::Gone("gone".into());
        assert_eq!(press(&mut top, KeyCode::Char('r')), Action::None);
        assert_eq!(press(&mut top, KeyCode::Char('l')), Action::None);
        assert!(matches!(top.mode, Mode::Table));
        assert_eq!(
            top.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
    }

    #[test]
    fn log_tail_is_bounded_and_defanged() {
        let mut text = String::new();
        for i in 0..LOG_LINES + 5 {
            text.push_str(&format!("line {i}\n"));
        }
        text.push_str("\x1b[31mred\tend\n");
        let lines = log_lines(text.as_bytes());
        assert_eq!(lines.len(), LOG_LINES);
        assert_eq!(lines.last().map(String::as_str), Some("^[[31mred    end"));
    }

    #[test]
    fn interval_is_at_least_a_second() {
        assert_eq!(parse_interval("2s").ok(), Some(Duration::from_secs(2)));
        let e = parse_interval("500ms").err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("at most once a second")));
        assert!(parse_interval("soon").is_err());
    }
}
