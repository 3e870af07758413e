//! An open connection to one host as deploy and install need it: a [`Transport`] plus what they
//! need beyond running commands (a brand-new login as a liveness proof, where `nix copy` pushes,
//! the host's address, host keys across kexec and reboot).
//!
//! [`SshConnection`] wraps [`SshTransport`]; `nix copy` shares its master connection through
//! `NIX_SSHOPTS`, and host-key checking stays on. [`LocalConnection`] is this machine, without ssh
//! (`deploy --local`, installing onto local disks, tests of whole pipelines).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::{
    CommandOutput, LocalTransport, Privilege, SshOptions, SshTransport, Target, Transport,
    TransportError,
};

/// An open connection to one host.
pub trait Connection: Send + Sync {
    /// Commands, uploads and reads (over the host's master connection).
    fn transport(&self) -> &dyn Transport;
    /// Runs `argv` over a brand-new login that does not reuse the master connection.
    fn run_fresh_login(&self, argv: &[String]) -> Result<CommandOutput, TransportError>;
    /// The nix store URI `nix copy --to` pushes to (the legacy `ssh://` store, which needs no
    /// signatures); `None` when the host shares this machine's store.
    fn store_uri(&self) -> Option<String>;
    /// The value of `NIX_SSHOPTS` under which `nix copy` to [`store_uri`](Self::store_uri) reuses
    /// the master connection (empty without ssh).
    fn nix_sshopts(&self) -> String;
    /// Address for deployer-side health checks.
    fn address(&self) -> &str;

    /// The store URL of the store rooted at `root` on the host (for `nix copy --to`).
    fn store_url(&self, root: &Path) -> String {
        match self.store_uri() {
            Some(uri) => with_remote_store(&uri, root),
            None if root == Path::new("/") => "auto".into(),
            None => root.display().to_string(),
        }
    }
    /// Environment for local `nix` commands that talk to the host (`NIX_SSHOPTS`).
    fn nix_env(&self) -> Vec<(String, String)> {
        match self.store_uri() {
            Some(_) => vec![("NIX_SSHOPTS".into(), self.nix_sshopts())],
            None => Vec::new(),
        }
    }
    /// One fresh login attempt; the typed error says why it failed (a changed or unknown host
    /// key is a refusal, [`TransportError::is_refusal`], not a reason to wait). The caller bounds
    /// the wait; `_timeout` is the budget of this one attempt.
    fn try_login(&self, _timeout: Duration) -> Result<(), TransportError> {
        fresh_login_answers(self)
    }
    /// Forgets cached connections (after kexec and reboot the old ones are dead; the ssh
    /// transport restarts its master by itself, so nothing to do by default).
    fn reset(&self) {}
    /// From now on, log in as root: called once kexec has replaced the old system, because the
    /// installer only restores root's authorized keys (the old system's login user is gone).
    fn use_root_login(&self) {}
    /// Records `keys` (`TYPE BASE64` lines) as the host's keys in the known_hosts file ssh checks,
    /// replacing the old entries; returns that file. For a new system that brings its own host keys.
    fn record_host_keys(&self, _keys: &[String]) -> Result<String, TransportError> {
        Ok("(none: local target)".into())
    }
    /// Before kexec: when the installer will be reached under another name or port, records the
    /// machine's host keys (read over the authenticated connection to the old system; the
    /// installer keeps them) for that name, so the login after kexec stays strictly checked.
    /// Returns the name it recorded them for, if any.
    fn prepare_post_kexec_login(
        &self,
        _host_keys: &[String],
    ) -> Result<Option<String>, TransportError> {
        Ok(None)
    }
}

/// Runs `true` over a brand-new login of `conn`: the liveness probe.
fn fresh_login_answers<C: Connection + ?Sized>(conn: &C) -> Result<(), TransportError> {
    let out = conn.run_fresh_login(&["true".to_string()])?;
    if out.success() {
        Ok(())
    } else {
        Err(TransportError::Command {
            host: conn.transport().host().to_string(),
            command: "true".into(),
            status: out.status,
            stderr: out.stderr_tail(3),
        })
    }
}

/// This machine as the host, without ssh.
#[derive(Debug, Default, Clone)]
pub struct LocalConnection {
    transport: LocalTransport,
}

impl LocalConnection {
    /// A connection to this machine.
    pub fn new() -> Self {
        LocalConnection::default()
    }
}

impl Connection for LocalConnection {
    fn transport(&self) -> &dyn Transport {
        &self.transport
    }
    fn run_fresh_login(&self, argv: &[String]) -> Result<CommandOutput, TransportError> {
        self.transport.run(argv, None)
    }
    fn store_uri(&self) -> Option<String> {
        None
    }
    fn nix_sshopts(&self) -> String {
        String::new()
    }
    fn address(&self) -> &str {
        "127.0.0.1"
    }
}

/// A host over [`SshTransport`] (one ControlMaster connection, restarted by the transport after
/// kexec and reboot; strict host keys).
///
/// For install, a non-root login (`user@host`, sudo with or without a password) is used until
/// kexec; from then on the connection logs in as root with the same key, host-key file and
/// options, as the installer only restores root's authorized keys (root's and the sudo user's
/// keys, merged).
#[derive(Debug)]
pub struct SshConnection {
    ssh: SshTransport,
    /// Where and how to log in as root after kexec (`None` when the login user is root already).
    root_login: Option<(Target, SshOptions)>,
    root: OnceLock<SshTransport>,
    as_root: AtomicBool,
    /// The known_hosts file ssh checks (`None`: `~/.ssh/known_hosts`).
    known_hosts: Option<PathBuf>,
    /// The address ssh resolves the host to (asked once, when first needed).
    address: OnceLock<String>,
    /// Counts fresh logins (deploy reports its ssh handshakes).
    logins: Option<Arc<AtomicUsize>>,
}

impl SshConnection {
    /// Wraps a connected transport.
    pub fn new(ssh: SshTransport) -> Self {
        SshConnection {
            known_hosts: ssh.known_hosts().map(Path::to_path_buf),
            ssh,
            root_login: None,
            root: OnceLock::new(),
            as_root: AtomicBool::new(false),
            address: OnceLock::new(),
            logins: None,
        }
    }

    /// Adds one to `counter` for every fresh login.
    pub fn counting_logins(mut self, counter: Arc<AtomicUsize>) -> Self {
        self.logins = Some(counter);
        self
    }

    /// Wraps a connected transport whose login user may not be root: after kexec the connection
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
        SshConnection {
            root_login,
            known_hosts,
            ..SshConnection::new(ssh)
        }
    }

    /// The transport commands go through now (the root login once
    /// [`Connection::use_root_login`] was called and it connected).
    pub fn ssh(&self) -> &SshTransport {
        if self.as_root.load(Ordering::SeqCst) {
            if let Some(root) = self.root.get() {
                return root;
            }
        }
        &self.ssh
    }

    fn known_hosts_file(&self) -> PathBuf {
        match &self.known_hosts {
            Some(f) => f.clone(),
            None => std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/root".into())
                .join(".ssh/known_hosts"),
        }
    }
}

impl Connection for SshConnection {
    fn transport(&self) -> &dyn Transport {
        self.ssh()
    }

    fn run_fresh_login(&self, argv: &[String]) -> Result<CommandOutput, TransportError> {
        if let Some(logins) = &self.logins {
            logins.fetch_add(1, Ordering::Relaxed);
        }
        self.ssh().run_fresh_login(argv)
    }

    fn store_uri(&self) -> Option<String> {
        Some(self.ssh().ssh_store_uri())
    }

    fn nix_sshopts(&self) -> String {
        self.ssh().nix_sshopts()
    }

    fn address(&self) -> &str {
        self.address.get_or_init(|| self.ssh().resolved_host())
    }

    fn try_login(&self, _timeout: Duration) -> Result<(), TransportError> {
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
        fresh_login_answers(self)
    }

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

/// Replaces the entries of `pattern` in the known_hosts `file` with `keys` (`TYPE BASE64`).
fn record_keys(file: &Path, pattern: &str, keys: &[String]) -> Result<(), TransportError> {
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
    fn store_urls() {
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
        let local = LocalConnection::new();
        assert_eq!(local.store_url(Path::new("/")), "auto");
        assert_eq!(local.store_url(Path::new("/mnt")), "/mnt");
        assert!(local.nix_env().is_empty());
    }
}
