//! Deployments (SPEC 2.5): releases fetched and built beside the running one, a durable phase
//! journal, an atomic `current` switch, health rollback, crash resume and self-healing symlinks.
//! Above the supervisor (which it drives), below the daemon (which assembles it).

pub mod phase;
pub mod source;

pub use phase::Phase;
