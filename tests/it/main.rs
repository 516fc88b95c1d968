//! Integration tests: the real citrusd and citrusctl binaries, real processes, signals, sockets.

mod config_errors;
mod control;
mod logs;
mod persistence;
mod signals;
mod supervision;
mod support;
