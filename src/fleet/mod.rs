//! The fleet agent inside citrusd: a WebSocket to the engine, the wire types both sides share
//! (`protocol`), the persisted queue of reports (`outbox`) and the host figures of
//! `status_update` (`system`).

pub mod agent;
pub mod outbox;
pub mod protocol;
pub mod system;
pub mod update;
