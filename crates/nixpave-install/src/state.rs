//! The local record of an install, one JSON file per node, and the resume logic.
//!
//! The file is rewritten atomically (temp file + rename) at the start and end of every phase, so
//! a killed nixpave leaves a file that says which phases finished and which one was running.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::phase::{Phase, PhaseSet};

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// How a phase ended (or that it has not ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseStatus {
    /// Started and not finished: nixpave died or was interrupted during it.
    Running,
    /// Finished successfully.
    Done,
    /// Failed with an error.
    Failed,
}

/// What happened in one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "PhaseRecordFile")]
pub struct PhaseRecord {
    /// The phase.
    pub phase: Phase,
    /// How it ended.
    pub status: PhaseStatus,
    /// Wall-clock milliseconds it took (so far), as the JSON envelope carries times.
    pub duration_ms: u64,
    /// The error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A phase record as files hold it: files written before times were integer milliseconds carry
/// float `seconds` instead of `duration_ms`; both are read so a resume works across the upgrade.
#[derive(Deserialize)]
struct PhaseRecordFile {
    phase: Phase,
    status: PhaseStatus,
    #[serde(default)]
    duration_ms: Option<u64>,
    #[serde(default)]
    seconds: Option<f64>,
    #[serde(default)]
    error: Option<String>,
}

impl From<PhaseRecordFile> for PhaseRecord {
    fn from(f: PhaseRecordFile) -> Self {
        let legacy = f
            .seconds
            .map_or(0, |s| (s.max(0.0) * 1000.0).round() as u64);
        PhaseRecord {
            phase: f.phase,
            status: f.status,
            duration_ms: f.duration_ms.unwrap_or(legacy),
            error: f.error,
        }
    }
}

/// Everything nixpave remembers about one node's install.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Node name (the flake's `nixosConfigurations` attribute).
    pub node: String,
    /// Where it is installed, e.g. `root@203.0.113.7`.
    pub target: String,
    /// The system closure being installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toplevel: Option<String>,
    /// The disk plan that the disk phase applies (kept so that a resume shows what was done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_plan: Option<serde_json::Value>,
    /// The host keys the new system brought itself (public, `TYPE BASE64`), read from the installed
    /// root; recorded as the host's keys once the installer is gone, before verify.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_host_keys: Vec<String>,
    /// One record per phase that has started, in execution order.
    pub phases: Vec<PhaseRecord>,
}

impl NodeState {
    /// A fresh state for a node.
    pub fn new(node: &str, target: &str) -> Self {
        NodeState {
            version: STATE_VERSION,
            node: node.to_string(),
            target: target.to_string(),
            toplevel: None,
            disk_plan: None,
            new_host_keys: Vec::new(),
            phases: Vec::new(),
        }
    }

    /// The record of `phase`, if it has started.
    pub fn record(&self, phase: Phase) -> Option<&PhaseRecord> {
        self.phases.iter().find(|r| r.phase == phase)
    }

    /// True when `phase` finished successfully.
    pub fn is_done(&self, phase: Phase) -> bool {
        self.record(phase).map(|r| r.status) == Some(PhaseStatus::Done)
    }

    /// Records that `phase` is running (replacing an older record of it).
    pub fn start(&mut self, phase: Phase) {
        self.set(PhaseRecord {
            phase,
            status: PhaseStatus::Running,
            duration_ms: 0,
            error: None,
        });
    }

    /// Records that `phase` finished successfully after `duration_ms`.
    pub fn finish(&mut self, phase: Phase, duration_ms: u64) {
        self.set(PhaseRecord {
            phase,
            status: PhaseStatus::Done,
            duration_ms,
            error: None,
        });
    }

    /// Records that `phase` failed after `duration_ms`.
    pub fn fail(&mut self, phase: Phase, duration_ms: u64, error: &str) {
        self.set(PhaseRecord {
            phase,
            status: PhaseStatus::Failed,
            duration_ms,
            error: Some(error.to_string()),
        });
    }

    fn set(&mut self, record: PhaseRecord) {
        self.phases.retain(|r| r.phase != record.phase);
        self.phases.push(record);
        self.phases.sort_by_key(|r| r.phase);
    }

    /// The last phase that finished successfully, in execution order.
    pub fn last_good(&self) -> Option<Phase> {
        self.phases
            .iter()
            .filter(|r| r.status == PhaseStatus::Done)
            .map(|r| r.phase)
            .max()
    }
}

/// Why the phases to run could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// `--resume` without a state file.
    #[error(
        "nothing to resume for {node}: no state file at {path}; run without --resume to start"
    )]
    NothingToResume {
        /// Node name.
        node: String,
        /// Where the state file was looked for.
        path: String,
    },
    /// `--resume` with a different system closure than the one partly installed.
    #[error(
        "cannot resume {node}: its install phase already put {recorded} on the disk, but the system is now {current}; \
         run the install phase again with `--phases install,reboot,verify` (no --resume) to install the new one"
    )]
    ClosureChanged {
        /// Node name.
        node: String,
        /// The closure recorded in the state file.
        recorded: String,
        /// The closure asked for now.
        current: String,
    },
    /// `--resume` on a node whose install already finished.
    #[error("{node} is already installed and verified (state file {path}); nothing to resume")]
    AlreadyFinished {
        /// Node name.
        node: String,
        /// The state file.
        path: String,
    },
}

/// Decides which of the `requested` phases run, in order (pure).
///
/// Without `resume` every requested phase runs. With `resume`, the phases that finished
/// successfully in `state` are skipped, so a resume continues after the last good phase and
/// never redoes kexec or disk once they are done. A phase that was running or failed runs again:
/// every phase is safe to re-run from its own start.
pub fn schedule(
    requested: &PhaseSet,
    state: Option<&NodeState>,
    resume: bool,
    node: &str,
    toplevel: Option<&str>,
    state_path: &Path,
) -> Result<Vec<Phase>, ScheduleError> {
    if !resume {
        return Ok(requested.phases().to_vec());
    }
    let state = state.ok_or_else(|| ScheduleError::NothingToResume {
        node: node.to_string(),
        path: state_path.display().to_string(),
    })?;
    if let (Some(recorded), Some(current)) = (state.toplevel.as_deref(), toplevel) {
        if recorded != current && state.is_done(Phase::Install) {
            return Err(ScheduleError::ClosureChanged {
                node: node.to_string(),
                recorded: recorded.to_string(),
                current: current.to_string(),
            });
        }
    }
    let remaining: Vec<Phase> = requested
        .phases()
        .iter()
        .copied()
        .filter(|p| !state.is_done(*p))
        .collect();
    if remaining.is_empty() {
        return Err(ScheduleError::AlreadyFinished {
            node: node.to_string(),
            path: state_path.display().to_string(),
        });
    }
    Ok(remaining)
}

/// Reading or writing a state file failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file or its directory could not be read or written.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a state file of this version.
    #[error("state file {path} is unreadable ({source}); move it away to start over")]
    Corrupt {
        /// The file.
        path: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// Where the state files live: one `NODE.json` per node.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// A store in `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateStore { dir: dir.into() }
    }

    /// The default directory: `$NIXPAVE_STATE_DIR`, else `$XDG_STATE_HOME/nixpave/install`, else
    /// `~/.local/state/nixpave/install`.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("NIXPAVE_STATE_DIR") {
            return PathBuf::from(dir);
        }
        // `state_dir` is `$XDG_STATE_HOME/nixpave` or `~/.local/state/nixpave` on Linux.
        directories::ProjectDirs::from("", "", "nixpave")
            .and_then(|d| d.state_dir().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/lib/nixpave"))
            .join("install")
    }

    /// The file of `node`.
    pub fn path(&self, node: &str) -> PathBuf {
        // Node names are attribute names; keep anything path-like out of the file name.
        self.dir.join(format!("{}.json", safe_file_name(node)))
    }

    /// Loads the state of `node`; `None` when there is none.
    pub fn load(&self, node: &str) -> Result<Option<NodeState>, StateError> {
        let path = self.path(node);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StateError::Corrupt {
                        path: path.display().to_string(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Saves the state of its node atomically.
    pub fn save(&self, state: &NodeState) -> Result<(), StateError> {
        let path = self.path(&state.node);
        let io = |source| StateError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
        let json = serde_json::to_vec_pretty(state).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(&tmp, json).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

/// `name` with everything but ASCII letters, digits and `-_.` replaced by `_` (pure).
pub(crate) fn safe_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(done: &[Phase], running: Option<Phase>) -> NodeState {
        let mut s = NodeState::new("web1", "root@h");
        s.toplevel = Some("/nix/store/aaa-system".into());
        for p in done {
            s.finish(*p, 1000);
        }
        if let Some(p) = running {
            s.start(p);
        }
        s
    }

    fn sched(state: Option<&NodeState>, resume: bool) -> Result<Vec<Phase>, ScheduleError> {
        schedule(
            &PhaseSet::all(),
            state,
            resume,
            "web1",
            Some("/nix/store/aaa-system"),
            Path::new("/s/web1.json"),
        )
    }

    #[test]
    fn resume_after_kill_in_install_skips_kexec_and_disk() {
        let s = state_with(&[Phase::Kexec, Phase::Disk], Some(Phase::Install));
        assert_eq!(
            sched(Some(&s), true).unwrap(),
            vec![Phase::Install, Phase::Reboot, Phase::Verify]
        );
        assert_eq!(s.last_good(), Some(Phase::Disk));
    }

    #[test]
    fn resume_reruns_a_failed_phase() {
        let mut s = state_with(
            &[Phase::Kexec, Phase::Disk, Phase::Install, Phase::Reboot],
            None,
        );
        s.fail(Phase::Verify, 600_000, "timeout");
        assert_eq!(sched(Some(&s), true).unwrap(), vec![Phase::Verify]);
    }

    #[test]
    fn without_resume_everything_requested_runs() {
        let s = state_with(&[Phase::Kexec, Phase::Disk], None);
        assert_eq!(sched(Some(&s), false).unwrap(), Phase::SELECTABLE.to_vec());
    }

    #[test]
    fn resume_refusals() {
        assert!(matches!(
            sched(None, true),
            Err(ScheduleError::NothingToResume { .. })
        ));
        let all = state_with(&Phase::SELECTABLE, None);
        assert!(matches!(
            sched(Some(&all), true),
            Err(ScheduleError::AlreadyFinished { .. })
        ));
        let mut changed = state_with(&[Phase::Kexec, Phase::Disk, Phase::Install], None);
        changed.toplevel = Some("/nix/store/bbb-system".into());
        assert!(matches!(
            sched(Some(&changed), true),
            Err(ScheduleError::ClosureChanged { .. })
        ));
        // A changed closure before the install phase finished is fine: nothing of it is on disk.
        let mut early = state_with(&[Phase::Kexec], None);
        early.toplevel = Some("/nix/store/bbb-system".into());
        assert!(sched(Some(&early), true).is_ok());
    }

    #[test]
    fn store_round_trips_and_replaces_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("st"));
        assert!(store.load("web/1").unwrap().is_none());
        let mut s = NodeState::new("web/1", "root@h");
        s.start(Phase::Kexec);
        s.finish(Phase::Kexec, 2500);
        s.start(Phase::Disk);
        store.save(&s).unwrap();
        assert!(store.path("web/1").ends_with("web_1.json"));
        let back = store.load("web/1").unwrap().unwrap();
        assert_eq!(back, s);
        assert_eq!(back.phases.len(), 2);
        assert_eq!(
            back.record(Phase::Disk).unwrap().status,
            PhaseStatus::Running
        );
    }

    #[test]
    fn files_with_float_seconds_are_read_as_milliseconds() {
        let old = r#"{"version":1,"node":"web","target":"root@h","phases":[
            {"phase":"kexec","status":"done","seconds":2.5},
            {"phase":"disk","status":"failed","seconds":0.0004,"error":"boom"}]}"#;
        let s: NodeState = serde_json::from_str(old).unwrap();
        assert_eq!(s.record(Phase::Kexec).unwrap().duration_ms, 2500);
        assert_eq!(s.record(Phase::Disk).unwrap().duration_ms, 0);
        let new = serde_json::to_value(&s).unwrap();
        assert_eq!(new["phases"][0]["duration_ms"], 2500);
        assert!(new["phases"][0].get("seconds").is_none());
    }

    #[test]
    fn corrupt_state_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        std::fs::write(store.path("n"), b"{not json").unwrap();
        let err = store.load("n").unwrap_err().to_string();
        assert!(
            err.contains("n.json") && err.contains("move it away"),
            "{err}"
        );
    }
}
