//! The fleet agent inside citrusd: a WebSocket to the engine, the wire types both sides share
//! (`protocol`), the persisted queue of reports (`outbox`), the host figures of
//! `status_update` (`system`), self-update through git2 (`update`, over https with
//! `git_https`), and the TLS trust of all of it (`tls`).

pub mod agent;
pub mod git_https;
pub mod outbox;
pub mod protocol;
pub mod system;
pub mod tls;
pub mod update;
