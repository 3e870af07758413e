//! How the installer reaches its target: a [`Transport`] plus what an install needs beyond
//! running commands (a nix store URL for `nix copy`, liveness probes across kexec and reboot).
//!
//! [`RemoteSession`] wraps `nixpave_remote::SshTransport`; `nix copy` shares its master
//! connection through `NIX_SSHOPTS`, and host-key checking stays on (the installer keeps the
//! host keys across kexec).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use nixpave_remote::{
    LocalTransport, Privilege, SshOptions, SshTransport, Target, Transport, TransportError,
};

/// A target as the install phases need it.
pub trait Session: Send + Sync {
    /// Runs commands and moves files on the target.
    fn transport(&self) -> &dyn Transport;
    /// The nix store URL of the store rooted at `root` on the target (for `nix copy --to`).
    fn store_url(&self, root: &Path) -> String;
    /// Environment for local `nix` commands that talk to the target (e.g. `NIX_SSHOPTS`).
    fn nix_env(&self) -> Vec<(String, String)>;
    /// One fresh login attempt, bounded by `timeout`; the typed error says why it failed (a
    /// changed or unknown host key is a refusal, [`TransportError::is_refusal`], not a reason to wait).
    fn probe(&self, timeout: Duration) -> Result<(), TransportError>;
    /// Forgets cached connections (after kexec and reboot the old ones are dead).
    fn reset(&self);
    /// From now on, log in as root: called once kexec has replaced the old system, because the
    /// installer only restores root's authorized keys (the old system's login user is gone).
    fn use_root_login(&self) {}
    /// Records `keys` (`TYPE BASE64` lines) as the host's keys in the known_hosts file ssh checks,
    /// replacing the old entries; returns that file. For a new system that brings its own host keys.
    fn record_host_keys(&self, keys: &[String]) -> Result<String, TransportError>;
    /// Before kexec: when the installer will be reached under another name or port
    /// (`--post-kexec-host`, `--post-kexec-ssh-port`), records the machine's host keys (read over the
    /// authenticated connection to the old system; the installer keeps them) for that name, so the
    /// login after kexec stays strictly checked. Returns the name it recorded them for, if any.
    fn prepare_post_kexec_login(
        &self,
        _host_keys: &[String],
    ) -> Result<Option<String>, TransportError> {
        Ok(None)
    }
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
    fn probe(&self, _timeout: Duration) -> Result<(), TransportError> {
        Ok(())
    }
    fn reset(&self) {}
    fn record_host_keys(&self, _keys: &[String]) -> Result<String, TransportError> {
        Ok("(none: local target)".into())
    }
}

/// A remote target over [`SshTransport`] (one ControlMaster connection, restarted by the
/// transport after kexec and reboot; strict host keys: the installer keeps them).
///
/// A non-root login (`user@host`, sudo with or without a password) is used until kexec; from then
/// on the session logs in as root with the same key, host-key file and options, as the installer
/// only restores root's authorized keys (root's and the sudo user's keys, merged).
#[derive(Debug)]
pub struct RemoteSession {
    ssh: SshTransport,
    /// Where and how to log in as root after kexec (`None` when the login user is root already).
    root_login: Option<(Target, SshOptions)>,
    root: OnceLock<SshTransport>,
    as_root: AtomicBool,
    /// The known_hosts file ssh checks (`None`: `~/.ssh/known_hosts`).
    known_hosts: Option<std::path::PathBuf>,
}

impl RemoteSession {
    /// Wraps a connected transport.
    pub fn new(ssh: SshTransport) -> Self {
        RemoteSession {
            known_hosts: ssh.known_hosts().map(Path::to_path_buf),
            ssh,
            root_login: None,
            root: OnceLock::new(),
            as_root: AtomicBool::new(false),
        }
    }

    /// Wraps a connected transport whose login user may not be root: after kexec the session
    /// logs in as root to the same host with `options` (escalation off, no sudo prompt).
    pub fn with_root_after_kexec(ssh: SshTransport, options: SshOptions) -> Self {
        Self::with_login_after_kexec(ssh, options, None)
    }

    /// Like [`with_root_after_kexec`](Self::with_root_after_kexec), with the installer reached at
    /// `after` (another address or port, `--post-kexec-host`/`--post-kexec-ssh-port`; its user is
    /// always root). `None` means the same host and port.
    pub fn with_login_after_kexec(
        ssh: SshTransport,
        options: SshOptions,
        after: Option<Target>,
    ) -> Self {
        let target = ssh.target().clone();
        let after = root_target(after.as_ref().unwrap_or(&target));
        let root_login = (after != target || !target.is_root_user()).then(|| {
            (
                after,
                SshOptions {
                    privilege: Privilege::None,
                    sudo_password: None,
                    ..options.clone()
                },
            )
        });
        let known_hosts = options.known_hosts.clone();
        RemoteSession {
            root_login,
            known_hosts,
            ..RemoteSession::new(ssh)
        }
    }

    /// The transport commands go through now (the root login once [`Session::use_root_login`]
    /// was called and it connected).
    pub fn ssh(&self) -> &SshTransport {
        if self.as_root.load(Ordering::SeqCst) {
            if let Some(root) = self.root.get() {
                return root;
            }
        }
        &self.ssh
    }
}

/// The same host and port as `target`, as root (pure).
pub fn root_target(target: &Target) -> Target {
    Target {
        user: Some("root".into()),
        ..target.clone()
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
        self.ssh()
    }

    fn store_url(&self, root: &Path) -> String {
        // The legacy ssh:// store (nix-store --serve) needs no signatures and accepts a chroot store.
        with_remote_store(&self.ssh().ssh_store_uri(), root)
    }

    fn nix_env(&self) -> Vec<(String, String)> {
        self.ssh().nix_env()
    }

    fn probe(&self, _timeout: Duration) -> Result<(), TransportError> {
        if let (true, Some((target, options)), None) = (
            self.as_root.load(Ordering::SeqCst),
            &self.root_login,
            self.root.get(),
        ) {
            // The first root login after kexec: connecting is the probe, and the connection is kept.
            let root = SshTransport::connect(target, options.clone())?;
            let _ = self.root.set(root);
            return Ok(());
        }
        // A brand-new login (not the master), so a dead master cannot fake liveness.
        let out = self.ssh().run_fresh_login(&["true".to_string()])?;
        if out.success() {
            Ok(())
        } else {
            Err(TransportError::Command {
                host: self.ssh().host().to_string(),
                command: "true".into(),
                status: out.status,
                stderr: out.stderr_tail(3),
            })
        }
    }

    fn reset(&self) {}

    fn use_root_login(&self) {
        self.as_root.store(true, Ordering::SeqCst);
    }

    fn record_host_keys(&self, keys: &[String]) -> Result<String, TransportError> {
        let target = self.ssh().target();
        let file = self.known_hosts_file();
        record_keys(&file, &known_hosts_pattern(&target.host, target.port), keys)?;
        Ok(file.display().to_string())
    }

    fn prepare_post_kexec_login(
        &self,
        host_keys: &[String],
    ) -> Result<Option<String>, TransportError> {
        let Some((after, _)) = &self.root_login else {
            return Ok(None);
        };
        let before = self.ssh.target();
        let pattern = known_hosts_pattern(&after.host, after.port);
        if pattern == known_hosts_pattern(&before.host, before.port) || host_keys.is_empty() {
            return Ok(None);
        }
        record_keys(&self.known_hosts_file(), &pattern, host_keys)?;
        Ok(Some(pattern))
    }
}

impl RemoteSession {
    fn known_hosts_file(&self) -> std::path::PathBuf {
        match &self.known_hosts {
            Some(f) => f.clone(),
            None => std::env::var_os("HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| "/root".into())
                .join(".ssh/known_hosts"),
        }
    }
}

/// Replaces the entries of `pattern` in the known_hosts `file` with `keys` (`TYPE BASE64`).
fn record_keys(
    file: &std::path::Path,
    pattern: &str,
    keys: &[String],
) -> Result<(), TransportError> {
    // Old entries go first (hashed ones too), then the new keys.
    let _ = std::process::Command::new("ssh-keygen")
        .args(["-R", pattern, "-f"])
        .arg(file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_file(file.with_extension("old"));
    let mut text = std::fs::read_to_string(file).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for key in keys {
        text.push_str(&format!("{pattern} {key}\n"));
    }
    std::fs::write(file, text).map_err(|source| TransportError::Io {
        host: "localhost".into(),
        what: format!("writing {}", file.display()),
        source,
    })
}

/// How known_hosts names a host (`host`, or `[host]:port` for another port than 22) (pure).
pub fn known_hosts_pattern(host: &str, port: Option<u16>) -> String {
    match port {
        Some(p) if p != 22 => format!("[{host}]:{p}"),
        _ => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_recorded_replacing_old_entries_of_the_name_only() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("known_hosts");
        std::fs::write(
            &file,
            "[h]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLD\nother ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKEEPKEEPKEEPKEEPKEEPKEEPKEEPKEEPKEEPKEEPKEEP",
        )
        .unwrap();
        record_keys(
            &file,
            "[h]:2222",
            &["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINEWNEWNEWNEWNEWNEWNEWNEWNEWNEWNEWNEWNEWNEWNEW".into()],
        )
        .unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("OLDOLD"), "{text}");
        assert!(
            text.contains("other ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKEEP"),
            "{text}"
        );
        assert!(
            text.contains("[h]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINEW"),
            "{text}"
        );
    }

    #[test]
    fn known_hosts_patterns() {
        assert_eq!(
            known_hosts_pattern("10.0.0.5", Some(2222)),
            "[10.0.0.5]:2222"
        );
        assert_eq!(known_hosts_pattern("h", Some(22)), "h");
        assert_eq!(known_hosts_pattern("h", None), "h");
    }

    #[test]
    fn root_target_keeps_host_and_port() {
        let t: Target = "alice@10.0.0.5:2222".parse().unwrap();
        let r = root_target(&t);
        assert_eq!(r.user.as_deref(), Some("root"));
        assert_eq!((r.host.as_str(), r.port), ("10.0.0.5", Some(2222)));
    }

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
