//! Cleaning up: stopping interrupted commands on the host, closing the master, and private
//! control directories (including those of nixpave processes that died).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::escalation::Escalation;
use super::SshTransport;
use crate::process::{run_child, ChildRun};
use crate::transport::{shell_join, shell_quote};

impl SshTransport {
    /// Stops, on the host, every process of a command that was interrupted or timed out (ssh
    /// gives commands without a terminal no hangup signal). Best effort, bounded by 5 s.
    pub(super) fn kill_remote(&self, tag: &str, escalation: &Escalation) {
        if !self.control_path.exists() {
            return;
        }
        let script = format!(
            "for d in /proc/[0-9]*; do \
               if tr '\\0' '\\n' < \"$d/environ\" 2>/dev/null | grep -qx {tag}; then \
                 kill -TERM \"${{d#/proc/}}\" 2>/dev/null; fi; done; true",
            tag = shell_quote(tag)
        );
        let argv = ["sh".to_string(), "-c".into(), script];
        let mut cmd = Command::new("ssh");
        cmd.args(self.mux_args())
            .args(self.common_args())
            .arg("-T")
            .arg(&self.target.host)
            .arg(shell_join(&escalation.wrap(&argv)));
        let stdin = escalation.stdin(None);
        let result = run_child(
            cmd,
            ChildRun {
                host: &self.name,
                shown: "stop the interrupted command",
                stdin: stdin.as_deref(),
                timeout: Some(Duration::from_secs(5)),
                cancellable: false,
            },
            &mut |_, _| {},
        );
        if let Err(e) = result {
            tracing::warn!(host = %self.name, error = %e, "could not stop the interrupted command on the host");
        }
    }
}

impl Drop for SshTransport {
    fn drop(&mut self) {
        // A persistent master outlives this transport: ssh ends it after `ControlPersist` idle.
        if self.persistent() {
            return;
        }
        self.terminate_master();
        let _ = std::fs::remove_dir_all(&self.control_dir);
    }
}

impl SshTransport {
    /// Asks the master to exit over its control socket; `ssh -O exit` only when that did not work.
    pub(super) fn terminate_master(&self) {
        if self.control_path.exists()
            && !super::mux::terminate(&self.control_path, Duration::from_secs(5))
        {
            let mut cmd = Command::new("ssh");
            cmd.arg("-S")
                .arg(&self.control_path)
                .args(self.common_args())
                .args(["-O", "exit"])
                .arg(&self.target.host);
            let _ = run_child(
                cmd,
                ChildRun {
                    host: &self.name,
                    shown: "ssh -O exit",
                    stdin: None,
                    timeout: Some(Duration::from_secs(5)),
                    cancellable: false,
                },
                &mut |_, _| {},
            );
        }
    }
}

/// A fresh private directory for control sockets: short (socket paths are limited to 108
/// bytes) and free of spaces (NIX_SSHOPTS is split on whitespace).
pub(super) fn make_control_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if COUNTER.load(Ordering::Relaxed) == 0 {
        sweep_stale_control_dirs();
    }
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/nixpave-ssh-{}-{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The control socket of a persistent master (`key`: everything ssh is given for the host), in a directory
/// private to this user that later nixpave runs find again: `/tmp/nixpave-persist-UID/HASH`. Refuses a
/// directory that is not this user's own and private (another user could then reach the hosts through it).
pub(super) fn persistent_control_path(key: &str) -> std::io::Result<(PathBuf, PathBuf)> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    // /proc/self belongs to the process's effective uid.
    let uid = std::fs::metadata("/proc/self")?.uid();
    let dir = PathBuf::from(format!("/tmp/nixpave-persist-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory private to uid {uid} (owner {}, mode {:o}); remove it",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    let socket = dir.join(format!("{:016x}", hasher.finish()));
    Ok((dir, socket))
}

/// Removes control directories of nixpave processes that died without cleaning up (killed
/// hard); a directory whose master still listens is left alone (it exits by ControlPersist).
fn sweep_stale_control_dirs() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("nixpave-ssh-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let owner_alive = Path::new(&format!("/proc/{pid}")).exists();
        if pid != std::process::id() && !owner_alive && !dir.join("master").exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// `NIXPAVE_RUN=<pid>-<n>`: unique per command of this process, inherited by its children.
pub(super) fn run_tag() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "NIXPAVE_RUN={}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_dirs_are_unique_short_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let a = make_control_dir().expect("dir");
        let b = make_control_dir().expect("dir");
        assert_ne!(a, b);
        assert!(a.join("master").as_os_str().len() < 100);
        let mode = std::fs::metadata(&a).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let _ = std::fs::remove_dir(a);
        let _ = std::fs::remove_dir(b);
    }
}
