//! Health: what replaces the crontab of scripts and the systemd unit around PM2. Scheduled jobs
//! (`jobs`), the built-in checks they run (`disk`, `cleanup`, the escalating app check in
//! `jobs`), and events with their webhook (`events`, `webhook`). It sits above the supervisor:
//! the jobs drive it, and the notifier is the [`EventSink`](crate::supervisor::EventSink) its
//! instances report to. The probes and sd_notify belong to running an instance and live in
//! `supervisor`.

pub mod cleanup;
pub mod disk;
pub mod events;
pub mod jobs;
pub mod webhook;
