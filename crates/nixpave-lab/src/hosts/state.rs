//! The lab's record of what it created (`state.json`), written as resources appear so that
//! `lab down` can remove a half-built lab too.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::error::LabError;

/// Everything one lab created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// Lab name.
    pub name: String,
    /// State directory.
    pub dir: PathBuf,
    /// Third octet of the lab's subnet `10.77.N.0/24`.
    pub subnet: u8,
    /// The bridge in the root namespace (`None` until created).
    pub bridge: Option<String>,
    /// Private key that logs in to every host as root.
    pub identity_file: PathBuf,
    /// known_hosts with every host's key.
    pub known_hosts: PathBuf,
    /// The hosts, in order.
    pub hosts: Vec<HostState>,
}

/// Everything one lab host consists of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// Host name, e.g. `host1`.
    pub name: String,
    /// Network namespace name.
    pub netns: String,
    /// Root-namespace end of the veth pair (on the bridge).
    pub veth: String,
    /// The host's address.
    pub address: String,
    /// sshd port.
    pub port: u16,
    /// Directory holding its private /nix, /etc/ssh, /root, /tmp and logs.
    pub root: PathBuf,
    /// sshd's pid once running.
    pub sshd_pid: Option<i32>,
    /// Loop devices attached for it, with their backing files.
    pub disks: Vec<LoopDisk>,
    /// What it looks like inside (labs from before flavours are Debian).
    #[serde(default)]
    pub flavour: super::Flavour,
}

/// One loop-device disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopDisk {
    /// `/dev/loopN`.
    pub device: String,
    /// The image file behind it.
    pub file: PathBuf,
    /// Size in bytes.
    pub size: u64,
}

impl HostState {
    /// The sshd log file.
    pub fn sshd_log(&self) -> PathBuf {
        self.root.join("sshd.log")
    }

    /// sshd's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("sshd.pid")
    }
}

impl LabState {
    /// The state file of a lab directory.
    pub fn file(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Reads the state of the lab in `dir`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<LabState>, LabError> {
        let path = Self::file(dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| LabError::State {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LabError::io("reading", path)(e)),
        }
    }

    /// Writes the state atomically.
    pub fn save(&self) -> Result<(), LabError> {
        let path = Self::file(&self.dir);
        let tmp = self.dir.join(".state.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(LabError::io("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(LabError::io("renaming into place", &path))
    }
}

/// A [`LabState`] shared by the threads bringing hosts up; every change is saved at once.
pub(crate) struct SharedState(Mutex<LabState>);

impl SharedState {
    pub(crate) fn new(state: LabState) -> Self {
        SharedState(Mutex::new(state))
    }

    /// Applies `change` and saves.
    pub(crate) fn update(&self, change: impl FnOnce(&mut LabState)) -> Result<(), LabError> {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut state);
        state.save()
    }

    pub(crate) fn snapshot(&self) -> LabState {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
