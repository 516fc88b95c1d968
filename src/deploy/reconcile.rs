//! Self-healing (the `deploy-reconcile` job): for every app with `[deploy]`, `current` must point
//! at the release of the newest completed deployment (or rollback), and that release's `shared`
//! paths must be links into `shared/`. A missing, dangling or wrong `current` is switched back
//! atomically; broken shared links are made again.

use super::journal::Journal;
use super::{release, Phase};
use crate::config::DeployConfig;

/// What one pass found over all apps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub checked: u32,
    pub fixed: u32,
    pub errors: u32,
    /// Unfinished deployments whose task had died, taken up again.
    pub resumed: usize,
    /// A line per app that needed attention.
    pub lines: Vec<String>,
}

/// What the check of one app found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppCheck {
    Fine,
    /// Repaired; `restart` when the app cannot have been running from `current`.
    Fixed {
        message: String,
        restart: bool,
    },
    Error(String),
}

/// Checks (and repairs) `current` and the shared links of one app.
pub fn check_app(app: &str, deploy: &DeployConfig, journal: &Journal) -> AppCheck {
    let wanted = journal
        .list(app)
        .into_iter()
        .filter(|d| d.phase == Phase::Completed)
        .map(|d| d.release)
        .find(|r| release::dir(deploy, r).is_dir());
    let Some(wanted) = wanted else {
        return AppCheck::Fine;
    };
    let current = match release::current(deploy) {
        Ok(c) => c,
        Err(e) => return AppCheck::Error(e.to_string()),
    };
    let mut fixed = Vec::new();
    let mut restart = false;
    let problem = match current.as_deref() {
        None => Some("was missing".to_owned()),
        Some("") => Some("pointed outside releases/".to_owned()),
        Some(id) if !release::dir(deploy, id).is_dir() => {
            Some(format!("was dangling (releases/{id} is gone)"))
        }
        Some(id) if id != wanted => {
            Some(format!("pointed at {id}, not the newest completed release"))
        }
        Some(_) => None,
    };
    if let Some(problem) = problem {
        restart = !matches!(current.as_deref(), Some(id) if !id.is_empty() && release::dir(deploy, id).is_dir());
        if let Err(e) = release::switch(deploy, &wanted) {
            return AppCheck::Error(format!("current {problem}; cannot repair it: {e}"));
        }
        fixed.push(format!("current {problem}: now -> releases/{wanted}"));
    }
    let dir = release::dir(deploy, &wanted);
    let broken = release::broken_shared(deploy, &dir);
    if !broken.is_empty() {
        if let Err(e) = release::link_shared(deploy, &dir) {
            return AppCheck::Error(format!("cannot repair the shared links of {wanted}: {e}"));
        }
        let names: Vec<String> = broken.iter().map(|p| p.display().to_string()).collect();
        fixed.push(format!(
            "shared links repaired in {wanted}: {}",
            names.join(", ")
        ));
    }
    match fixed.is_empty() {
        true => AppCheck::Fine,
        false => AppCheck::Fixed {
            message: fixed.join("; "),
            restart,
        },
    }
}
