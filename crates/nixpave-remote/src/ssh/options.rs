//! What a connection is opened with: [`SshOptions`] and the ssh arguments made from them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::SshTransport;

/// How unknown host keys are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Only hosts whose key is already in known_hosts are accepted (the default).
    #[default]
    Strict,
    /// First contact: an unknown key is recorded; a changed key is still refused.
    AcceptNew,
}

/// How commands get root when the login user is not root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Privilege {
    /// `sudo` (a password, when needed, is asked once per host and fed on stdin).
    #[default]
    Sudo,
    /// `doas -n` (must not need a password).
    Doas,
    /// systemd's `run0`.
    Run0,
    /// Run commands as the login user, without escalation.
    None,
}

/// Asks for the sudo password of a host (called at most once per host, with its name).
pub type PasswordPrompt = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Connection settings; `Default` gives strict host-key checking, a 10 s connect timeout and
/// keepalives every 5 s (a dead connection is noticed after 15 s).
#[derive(Clone)]
pub struct SshOptions {
    /// Name shown in messages instead of `user@host:port` (an inventory name, say).
    pub name: Option<String>,
    /// Private key to log in with (`-i`, and only that key is offered).
    pub identity_file: Option<PathBuf>,
    /// known_hosts file to use instead of the user's and the global ones.
    pub known_hosts: Option<PathBuf>,
    /// What to do with unknown host keys.
    pub host_key_policy: HostKeyPolicy,
    /// ssh_config file to use instead of `~/.ssh/config` (`-F`).
    pub ssh_config: Option<PathBuf>,
    /// TCP connect and SSH handshake timeout.
    pub connect_timeout: Duration,
    /// Interval of keepalive probes on every connection.
    pub keepalive_interval: Duration,
    /// Unanswered keepalives after which a connection counts as dead.
    pub keepalive_count_max: u32,
    /// How commands become root when the login user is not root.
    pub privilege: Privilege,
    /// Asked once per host when sudo needs a password; without it such hosts fail to connect.
    pub sudo_password: Option<PasswordPrompt>,
    /// Limit for each command; `None` waits as long as the connection is alive.
    pub command_timeout: Option<Duration>,
    /// Further `-o Key=Value` options for every ssh invocation.
    pub extra_options: Vec<String>,
    /// ssh arguments given by the user (deploy-rs `sshOpts`, `--ssh-opts`), passed verbatim to every ssh
    /// nixpave starts for the host. They stand before nixpave's own options, so they win: ssh keeps the
    /// first value it sees. Only the connection-sharing options (`ControlMaster`, `ControlPath`) come first.
    pub user_args: Vec<String>,
    /// Keep the host's master connection open this long after the last use, for later runs with the same
    /// target and options to reuse without a new handshake (ssh's `ControlPersist`). `None`: the master is
    /// this transport's own and closes with it.
    pub persist: Option<Duration>,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            name: None,
            identity_file: None,
            known_hosts: None,
            host_key_policy: HostKeyPolicy::Strict,
            ssh_config: None,
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_count_max: 3,
            privilege: Privilege::Sudo,
            sudo_password: None,
            command_timeout: None,
            extra_options: Vec::new(),
            user_args: Vec::new(),
            persist: None,
        }
    }
}

impl std::fmt::Debug for SshOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshOptions")
            .field("name", &self.name)
            .field("identity_file", &self.identity_file)
            .field("known_hosts", &self.known_hosts)
            .field("host_key_policy", &self.host_key_policy)
            .field("ssh_config", &self.ssh_config)
            .field("connect_timeout", &self.connect_timeout)
            .field("privilege", &self.privilege)
            .field(
                "sudo_password",
                &self.sudo_password.as_ref().map(|_| "<prompt>"),
            )
            .field("command_timeout", &self.command_timeout)
            .field("extra_options", &self.extra_options)
            .field("user_args", &self.user_args)
            .field("persist", &self.persist)
            .finish()
    }
}

impl SshTransport {
    /// Options shared by every ssh invocation (master, clients, nix): the user's verbatim arguments first
    /// (ssh keeps the first value of an option, so they win), then nixpave's defaults.
    pub(super) fn common_args(&self) -> Vec<String> {
        let o = &self.options;
        let mut args: Vec<String> = o.user_args.clone();
        let mut opt = |kv: String| {
            args.push("-o".into());
            args.push(kv);
        };
        opt("BatchMode=yes".into());
        opt(format!(
            "ConnectTimeout={}",
            o.connect_timeout.as_secs().max(1)
        ));
        opt(format!(
            "ServerAliveInterval={}",
            o.keepalive_interval.as_secs().max(1)
        ));
        opt(format!(
            "ServerAliveCountMax={}",
            o.keepalive_count_max.max(1)
        ));
        opt(format!(
            "StrictHostKeyChecking={}",
            match o.host_key_policy {
                HostKeyPolicy::Strict => "yes",
                HostKeyPolicy::AcceptNew => "accept-new",
            }
        ));
        if let Some(known) = &o.known_hosts {
            opt(format!("UserKnownHostsFile={}", known.display()));
            opt("GlobalKnownHostsFile=/dev/null".into());
        }
        if let Some(key) = &o.identity_file {
            opt(format!("IdentityFile={}", key.display()));
            opt("IdentitiesOnly=yes".into());
        }
        opt("LogLevel=ERROR".into());
        for extra in &o.extra_options {
            opt(extra.clone());
        }
        if let Some(port) = self.target.port {
            args.push("-p".into());
            args.push(port.to_string());
        }
        if let Some(user) = &self.target.user {
            args.push("-l".into());
            args.push(user.clone());
        }
        // ssh reads only the last `-F`: a config file among the user's arguments beats this one.
        if let Some(config) = &o.ssh_config {
            args.insert(0, config.display().to_string());
            args.insert(0, "-F".into());
        }
        args
    }
}
