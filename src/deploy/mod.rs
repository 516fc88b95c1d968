//! Deployments (SPEC 2.5): releases fetched and built beside the running one, a durable phase
//! journal, an atomic `current` switch, health rollback, crash resume and self-healing symlinks.
//! Above the supervisor (which it drives, and which knows nothing of it), below the daemon (which
//! assembles it); it reports through the supervisor's event path.

pub mod deployer;
pub mod journal;
pub mod phase;
pub mod reconcile;
pub mod release;
pub mod source;

pub use deployer::{DeployError, Deployments};
pub use journal::Deployment;
pub use phase::Phase;
