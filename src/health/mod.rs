//! Health: what replaces the crontab of scripts and the systemd unit around PM2. Scheduled jobs
//! (`jobs`), the built-in checks they run (`disk`, `cleanup`, the escalating app check in
//! `jobs`), readiness and liveness probes (`probe`), the sd_notify protocol towards apps and
//! towards systemd (`sdnotify`), and events with their webhook (`events`, `webhook`).

pub mod cleanup;
pub mod disk;
pub mod events;
pub mod jobs;
pub mod probe;
pub mod sdnotify;
pub mod webhook;
