//! Citrus: a per-host process supervisor (`citrusd`), its operator CLI (`citrusctl`), and the
//! fleet engine (`citrus-engine`, behind the default `engine` feature). The library does the
//! work; `src/bin/` only assembles it.

pub mod cli;
pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod deploy;
#[cfg(feature = "engine")]
pub mod engine;
pub mod fleet;
pub mod health;
pub mod state;
pub mod supervisor;
pub mod sys;
