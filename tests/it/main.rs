//! Integration tests: the real citrusd and citrusctl binaries, real processes, signals, sockets.

mod app_validation;
mod cgroups;
mod config_errors;
mod connections;
mod control;
mod deploy;
mod digitalocean;
mod engine;
mod error_shapes;
mod fleet;
mod fuzz;
mod git_https;
mod https_server;
mod hub;
mod hub_deploy;
mod hub_support;
mod jobs;
mod listen;
mod live;
mod logs;
mod persistence;
mod probes;
mod provision;
mod signals;
mod supervision;
mod support;
