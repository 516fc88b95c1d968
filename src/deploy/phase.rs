//! The phases of a deployment, in order, and how each one ends.

use serde::{Deserialize, Serialize};

/// Where a deployment is, or how it ended. The order of the variants is the order of the phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Accepted, not started yet.
    Queued,
    /// Fetching the source into the new release directory.
    PullingSource,
    /// Running `build` in the release directory.
    Building,
    /// Linking the `shared` paths into the release.
    CopyingFiles,
    /// Swapping `current` to the new release.
    CreatingSymlinks,
    /// Restarting the app on the new release.
    Restarting,
    /// Waiting for the app's probe to pass on the new release.
    HealthCheck,
    /// Done: the app runs the new release.
    Completed,
    /// Stopped before the switch (or unable to resume); `current` was left as it was.
    Failed,
    /// The new release failed its health check; `current` points at the previous one again.
    RolledBack,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 10] = [
        Phase::Queued,
        Phase::PullingSource,
        Phase::Building,
        Phase::CopyingFiles,
        Phase::CreatingSymlinks,
        Phase::Restarting,
        Phase::HealthCheck,
        Phase::Completed,
        Phase::Failed,
        Phase::RolledBack,
    ];

    /// The phase as written in journals, on the wire and by `citrusctl`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::PullingSource => "pulling_source",
            Phase::Building => "building",
            Phase::CopyingFiles => "copying_files",
            Phase::CreatingSymlinks => "creating_symlinks",
            Phase::Restarting => "restarting",
            Phase::HealthCheck => "health_check",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::RolledBack => "rolled_back",
        }
    }

    /// Whether the deployment has ended in this phase.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::RolledBack)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order() {
        for phase in Phase::ALL {
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{}\"", phase.as_str()));
            assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), phase);
        }
        assert!(Phase::Queued < Phase::Building && Phase::Restarting < Phase::HealthCheck);
        assert!(Phase::ALL.iter().filter(|p| p.is_final()).count() == 3);
    }
}
