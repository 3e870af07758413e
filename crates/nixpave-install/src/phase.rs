//! The phases of an install, in the order they run.

use serde::{Deserialize, Serialize};

/// One phase of `nixpave install`.
///
/// Preflight always runs (it writes nothing); the others can be selected with `--phases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Facts and refusals; no writes.
    Preflight,
    /// Boot the installer in RAM with kexec.
    Kexec,
    /// Upload disk-encryption keys, partition, format and mount.
    Disk,
    /// Copy the closure into /mnt, set the system profile, install the bootloader, extra files.
    Install,
    /// Unmount, export pools, reboot.
    Reboot,
    /// Wait for the installed system and check `/run/current-system`.
    Verify,
}

impl Phase {
    /// Every phase in execution order.
    pub const ALL: [Phase; 6] = [
        Phase::Preflight,
        Phase::Kexec,
        Phase::Disk,
        Phase::Install,
        Phase::Reboot,
        Phase::Verify,
    ];

    /// The phases `--phases` may name (all but preflight, which always runs).
    pub const SELECTABLE: [Phase; 5] = [
        Phase::Kexec,
        Phase::Disk,
        Phase::Install,
        Phase::Reboot,
        Phase::Verify,
    ];

    /// The spelling used on the command line and in the state file.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Kexec => "kexec",
            Phase::Disk => "disk",
            Phase::Install => "install",
            Phase::Reboot => "reboot",
            Phase::Verify => "verify",
        }
    }

    /// True when the phase changes the target irreversibly (its effect cannot be "re-done" by
    /// simply running it again from an earlier state).
    pub fn writes(self) -> bool {
        !matches!(self, Phase::Preflight | Phase::Verify)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown name in a `--phases` list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown phase `{0}` (expected a comma-separated list of: kexec, disk, install, reboot, verify)")]
pub struct UnknownPhase(pub String);

impl std::str::FromStr for Phase {
    type Err = UnknownPhase;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `disko` is accepted for people coming from nixos-anywhere.
        match s.trim() {
            "disko" => Ok(Phase::Disk),
            name => Phase::SELECTABLE
                .into_iter()
                .find(|p| p.as_str() == name)
                .ok_or_else(|| UnknownPhase(s.to_string())),
        }
    }
}

/// A set of selected phases, always kept in execution order and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseSet(Vec<Phase>);

impl PhaseSet {
    /// Every selectable phase.
    pub fn all() -> Self {
        PhaseSet(Phase::SELECTABLE.to_vec())
    }

    /// Builds a set from any phases (order and duplicates do not matter; preflight is ignored).
    pub fn from_phases(phases: impl IntoIterator<Item = Phase>) -> Self {
        let mut v: Vec<Phase> = phases
            .into_iter()
            .filter(|p| *p != Phase::Preflight)
            .collect();
        v.sort();
        v.dedup();
        PhaseSet(v)
    }

    /// Parses `kexec,disk,install` (whitespace around names is ignored; empty is an error).
    pub fn parse(list: &str) -> Result<Self, UnknownPhase> {
        let phases = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Phase>, _>>()?;
        if phases.is_empty() {
            return Err(UnknownPhase(list.to_string()));
        }
        Ok(Self::from_phases(phases))
    }

    /// True when `phase` is selected.
    pub fn contains(&self, phase: Phase) -> bool {
        self.0.contains(&phase)
    }

    /// The selected phases in execution order.
    pub fn phases(&self) -> &[Phase] {
        &self.0
    }
}

impl std::fmt::Display for PhaseSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|p| p.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_in_execution_order_without_duplicates() {
        let set = PhaseSet::parse("verify, install,disk,install").unwrap();
        assert_eq!(
            set.phases(),
            &[Phase::Disk, Phase::Install, Phase::Verify][..]
        );
        assert_eq!(set.to_string(), "disk,install,verify");
    }

    #[test]
    fn accepts_disko_alias_and_rejects_unknown_names() {
        assert!(PhaseSet::parse("disko").unwrap().contains(Phase::Disk));
        assert_eq!(
            PhaseSet::parse("kexec,format").unwrap_err(),
            UnknownPhase("format".into())
        );
        assert!(PhaseSet::parse(" , ").is_err());
        assert!(PhaseSet::parse("preflight").is_err());
    }
}
