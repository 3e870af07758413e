//! The seam to the disk engine: the install applies a [`Plan`] through a [`DiskEngine`].
//!
//! The real engine is `nixpave_disk::exec` (guards, probes, safety checks); the CLI wires it in.
//! [`SequentialEngine`] runs a plan's operations in order and serves until then and in tests.

use std::collections::BTreeMap;

use nixpave_disk::{Plan, StdinSource};
use nixpave_remote::{shell_join, Transport};

/// The passphrases a plan asks for (`askPassword` LUKS devices), in plan order, each once, with
/// whether it must be typed twice (creating a device) (pure).
pub fn prompts(plan: &Plan) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    for op in &plan.operations {
        if let Some(StdinSource::Prompt { name, confirm }) = &op.stdin {
            match out.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 |= *confirm,
                None => out.push((name.clone(), *confirm)),
            }
        }
    }
    out
}

/// Passphrases asked before the install started (the terminal may be gone by the disk phase),
/// handed to the disk engine by name; they travel on the installer's stdin, never in an argv.
#[derive(Clone, Default)]
pub struct Secrets(BTreeMap<String, Vec<u8>>);

impl Secrets {
    /// Secrets by name.
    pub fn new(secrets: BTreeMap<String, Vec<u8>>) -> Self {
        Secrets(secrets)
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.keys().map(|k| format!("{k}: <hidden>")))
            .finish()
    }
}

impl nixpave_disk::exec::SecretPrompt for Secrets {
    fn secret(&mut self, name: &str, _confirm: bool) -> Result<Vec<u8>, String> {
        self.0.get(name).cloned().ok_or_else(|| {
            format!("the layout asks for a passphrase for `{name}`, and none was given before the install started")
        })
    }
}

/// Applies disk plans on a target.
pub trait DiskEngine: Send + Sync {
    /// Applies `plan` through `t`, reporting each operation's description to `progress`.
    /// Returns an error message naming the failing operation and its stderr tail.
    fn apply(
        &self,
        t: &dyn Transport,
        plan: &Plan,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), String>;
}

/// Runs every operation of a plan in order, without evaluating guards (fit for a plan made for
/// blank disks: destroy, format, mount). Secrets are read on the target and fed on stdin.
#[derive(Debug, Default, Clone, Copy)]
pub struct SequentialEngine;

impl DiskEngine for SequentialEngine {
    fn apply(
        &self,
        t: &dyn Transport,
        plan: &Plan,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), String> {
        for (i, op) in plan.operations.iter().enumerate() {
            progress(&format!(
                "({}/{}) {}",
                i + 1,
                plan.operations.len(),
                op.description
            ));
            let stdin: Option<Vec<u8>> = match &op.stdin {
                None => None,
                Some(StdinSource::Text { text }) => Some(text.clone().into_bytes()),
                Some(StdinSource::File { path }) => Some(
                    t.read_file(std::path::Path::new(path))
                        .map_err(|e| format!("{}: reading key file {path}: {e}", op.description))?,
                ),
                Some(StdinSource::Prompt { name, .. }) => {
                    return Err(format!(
                        "{}: needs the password `{name}` typed in; pass a key file with --disk-encryption-keys instead",
                        op.description
                    ))
                }
            };
            let out = t
                .run(&op.argv, stdin.as_deref())
                .map_err(|e| format!("{}: {e}", op.description))?;
            if !out.success() {
                return Err(format!(
                    "{} failed: `{}` exited with {:?}: {}",
                    op.description,
                    shell_join(&op.argv),
                    out.status,
                    out.stderr_tail(10)
                ));
            }
        }
        Ok(())
    }
}

/// The disk engine of `nixpave_disk`: probes, safety refusals, guards (idempotent re-runs),
/// partition rescans. The install's own preflight has already asked for the wipe confirmation,
/// so the plan runs confirmed.
#[derive(Debug, Clone, Default)]
pub struct ExecEngine {
    /// Where the layout mounts (`/mnt`).
    pub root_mountpoint: String,
    /// Passphrases for `askPassword` devices (see [`prompts`]).
    pub secrets: Secrets,
}

impl DiskEngine for ExecEngine {
    fn apply(
        &self,
        t: &dyn Transport,
        plan: &Plan,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), String> {
        use nixpave_disk::exec;
        let options = exec::ApplyOptions::new(&self.root_mountpoint);
        let pre = exec::preflight(t, plan, &options).map_err(|e| e.to_string())?;
        let mut on_progress = |p: &exec::Progress| {
            if !matches!(p.state, exec::StepState::Running) {
                progress(&p.render());
            }
        };
        let mut secrets = self.secrets.clone();
        exec::execute_with_prompt(
            t,
            plan,
            &pre,
            &options,
            true,
            &mut secrets,
            &mut on_progress,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}
