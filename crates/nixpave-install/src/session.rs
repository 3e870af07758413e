//! How the installer reaches its target: a [`Transport`] plus what an install needs beyond
//! running commands (a nix store URL for `nix copy`, liveness probes across kexec and reboot).
//!
//! [`RemoteSession`] wraps `nixpave_remote::SshTransport`; `nix copy` shares its master
//! connection through `NIX_SSHOPTS`, and host-key checking stays on (the installer keeps the
//! host keys across kexec).

use std::path::Path;
use std::time::Duration;

use nixpave_remote::{LocalTransport, SshTransport, Transport};

/// A target as the install phases need it.
pub trait Session: Send + Sync {
    /// Runs commands and moves files on the target.
    fn transport(&self) -> &dyn Transport;
    /// The nix store URL of the store rooted at `root` on the target (for `nix copy --to`).
    fn store_url(&self, root: &Path) -> String;
    /// Environment for local `nix` commands that talk to the target (e.g. `NIX_SSHOPTS`).
    fn nix_env(&self) -> Vec<(String, String)>;
    /// One fresh login attempt, bounded by `timeout`; `Err` says why it failed.
    fn probe(&self, timeout: Duration) -> Result<(), String>;
    /// Forgets cached connections (after kexec and reboot the old ones are dead).
    fn reset(&self);
}

/// The local machine as a target (tests, and installing onto disks attached to this machine).
#[derive(Debug, Default, Clone)]
pub struct LocalSession {
    transport: LocalTransport,
}

impl LocalSession {
    /// A session on this machine.
    pub fn new() -> Self {
        LocalSession::default()
    }
}

impl Session for LocalSession {
    fn transport(&self) -> &dyn Transport {
        &self.transport
    }
    fn store_url(&self, root: &Path) -> String {
        if root == Path::new("/") {
            "auto".into()
        } else {
            root.display().to_string()
        }
    }
    fn nix_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    fn probe(&self, _timeout: Duration) -> Result<(), String> {
        Ok(())
    }
    fn reset(&self) {}
}

/// A remote target over [`SshTransport`] (one ControlMaster connection, restarted by the
/// transport after kexec and reboot; strict host keys: the installer keeps them).
#[derive(Debug)]
pub struct RemoteSession {
    ssh: SshTransport,
}

impl RemoteSession {
    /// Wraps a connected transport.
    pub fn new(ssh: SshTransport) -> Self {
        RemoteSession { ssh }
    }

    /// The underlying transport.
    pub fn ssh(&self) -> &SshTransport {
        &self.ssh
    }
}

/// Adds `remote-store=ROOT` to a nix store URI that may already carry query parameters (pure).
pub fn with_remote_store(uri: &str, root: &Path) -> String {
    if root == Path::new("/") {
        return uri.to_string();
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}remote-store={}", root.display())
}

impl Session for RemoteSession {
    fn transport(&self) -> &dyn Transport {
        &self.ssh
    }

    fn store_url(&self, root: &Path) -> String {
        // The legacy ssh:// store (nix-store --serve) needs no signatures and accepts a chroot store.
        with_remote_store(&self.ssh.ssh_store_uri(), root)
    }

    fn nix_env(&self) -> Vec<(String, String)> {
        self.ssh.nix_env()
    }

    fn probe(&self, _timeout: Duration) -> Result<(), String> {
        // A brand-new login (not the master), so a dead master cannot fake liveness.
        match self.ssh.run_fresh_login(&["true".to_string()]) {
            Ok(out) if out.success() => Ok(()),
            Ok(out) => Err(format!(
                "`true` exited with {:?}: {}",
                out.status,
                out.stderr_tail(3)
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    fn reset(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_store_parameter_is_appended() {
        assert_eq!(
            with_remote_store("ssh://root@h", Path::new("/mnt")),
            "ssh://root@h?remote-store=/mnt"
        );
        assert_eq!(
            with_remote_store(
                "ssh://u@h?remote-program=sudo%20-n%20nix-store",
                Path::new("/mnt")
            ),
            "ssh://u@h?remote-program=sudo%20-n%20nix-store&remote-store=/mnt"
        );
        assert_eq!(with_remote_store("ssh://h", Path::new("/")), "ssh://h");
    }
}
