//! A connection to one machine plus what we currently know about its disks.

use nixpave_remote::{CommandOutput, Transport, TransportError};

use super::error::ApplyError;
use super::facts::{self, Facts};
use super::resolve::{self, Resolution};

/// The transport, a cache of [`Facts`] (dropped after every step that ran) and the kernel
/// names of the plan's disks (the scope in which udev-style paths are resolved first).
pub struct Session<'a> {
    /// Where commands run.
    pub transport: &'a dyn Transport,
    /// Kernel names of the plan's top-level disks.
    pub scope: Vec<String>,
    facts: Option<Facts>,
}

impl<'a> Session<'a> {
    /// A session with nothing probed yet.
    pub fn new(transport: &'a dyn Transport) -> Self {
        Session {
            transport,
            scope: Vec::new(),
            facts: None,
        }
    }

    /// Host name for messages.
    pub fn host(&self) -> String {
        self.transport.host().to_string()
    }

    /// Current facts, probing when the cache is empty.
    pub fn facts(&mut self) -> Result<&Facts, ApplyError> {
        if self.facts.is_none() {
            self.facts = Some(facts::probe_scoped(self.transport, &self.scope)?);
        }
        // The cache was filled just above.
        self.facts.as_ref().ok_or_else(|| ApplyError::Probe {
            host: self.transport.host().to_string(),
            command: "lsblk".into(),
            status: None,
            stderr: "no facts".into(),
        })
    }

    /// Forgets the cached facts (after anything changed on the machine).
    pub fn invalidate(&mut self) {
        self.facts = None;
    }

    /// Resolves a path against current facts within the plan's scope.
    ///
    /// When the kernel's view has no answer (a `by-path` link, a `by-id` form we do not derive,
    /// `/dev/md/NAME`, `/dev/VG/LV`) but the path is a symlink to a device, its target is used.
    pub fn resolve(&mut self, path: &str) -> Result<Resolution, ApplyError> {
        let scope = self.scope.clone();
        let resolution = resolve::resolve(path, self.facts()?, &scope);
        if matches!(
            resolution,
            Resolution::Node(_) | Resolution::Ambiguous { .. }
        ) || !path.starts_with("/dev/")
        {
            return Ok(resolution);
        }
        if let Some(out) = self.probe_cmd(&["readlink", "-e", path])? {
            let target = out.stdout_str().trim().to_string();
            if out.success() {
                let scope = self.scope.clone();
                let facts = self.facts()?;
                if let Some(device) = facts.find(&target) {
                    let in_scope = scope.is_empty()
                        || facts
                            .disks_under(&device.path)
                            .iter()
                            .any(|top| scope.contains(&top.kname));
                    if in_scope {
                        return Ok(Resolution::Node(device.path.clone()));
                    }
                }
            }
        }
        Ok(resolution)
    }

    /// Runs a read-only probe command; a program that is not installed gives `Ok(None)`.
    pub fn probe_cmd(&self, argv: &[&str]) -> Result<Option<CommandOutput>, ApplyError> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        match self.transport.run(&argv, None) {
            // Over ssh a missing program is the shell's exit 127.
            Ok(out) if out.status == Some(127) => Ok(None),
            Ok(out) => Ok(Some(out)),
            Err(TransportError::Spawn { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
