//! Reaching hosts over OpenSSH ([`nixpave_remote::SshTransport`]): one master connection per host, `nix copy`
//! through it, and a fresh non-multiplexed login as the magic-rollback proof. `sshOpts` go to every ssh
//! verbatim. Node `hostname`s that name a host of a nixpave inventory (e.g. the lab's) take that host's
//! address, port, key and known_hosts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nixpave_remote::{
    InventoryHost, PasswordPrompt, Privilege, SshConnection, SshOptions, SshTransport, Target,
    TransportError,
};

use crate::connection::{Connection, Connector};
use crate::inventory::Host;

/// Connects to hosts with the system ssh client.
pub struct SshConnector {
    base: SshOptions,
    known: BTreeMap<String, InventoryHost>,
    handshakes: Arc<AtomicUsize>,
    sudo_prompt: Option<PasswordPrompt>,
    privilege: Option<Privilege>,
}

impl SshConnector {
    /// A connector with base options and the hosts of a nixpave inventory (may be empty).
    pub fn new(base: SshOptions, inventory_hosts: Vec<InventoryHost>) -> SshConnector {
        SshConnector {
            base,
            known: inventory_hosts
                .into_iter()
                .map(|h| (h.name.clone(), h))
                .collect(),
            handshakes: Arc::new(AtomicUsize::new(0)),
            sudo_prompt: None,
            privilege: None,
        }
    }

    /// Where the sudo password of hosts with `interactiveSudo` comes from (the CLI asks once on the terminal).
    pub fn with_sudo_prompt(mut self, prompt: PasswordPrompt) -> SshConnector {
        self.sudo_prompt = Some(prompt);
        self
    }

    /// How every host's login becomes root, whatever its `sudo` setting says (`--become`).
    pub fn with_privilege(mut self, privilege: Privilege) -> SshConnector {
        self.privilege = Some(privilege);
        self
    }

    /// The ssh target and options for `host`.
    ///
    /// deploy-rs passes `sshOpts` to ssh verbatim and so does nixpave: they stand before nixpave's own options
    /// (ssh keeps the first value it sees), so `-F`, `-J`, `-p`, `-i`, `-o …` and every other option mean what
    /// they mean on the command line. A `hostname` that names a host of a nixpave inventory (a lab's) takes
    /// that host's address, port, key and known_hosts; a key or known_hosts file given in the base options
    /// (the command line) beats the inventory's.
    pub fn target_for(&self, host: &Host) -> (Target, SshOptions) {
        let mut opts = self.base.clone();
        opts.name = Some(host.name.clone());
        let mut target = Target::new(host.hostname.clone());
        let known = self.known.get(&host.hostname);
        if let Some(known) = known {
            target.host = known.host.clone();
            target.port = known.port;
            if opts.identity_file.is_none() {
                opts.identity_file = known.identity_file.clone();
            }
            if opts.known_hosts.is_none() {
                opts.known_hosts = known.known_hosts.clone();
            }
        }
        target.user = Some(
            host.settings
                .login_user(known.and_then(|k| k.user.as_deref())),
        );
        opts.user_args = host.settings.ssh_opts.clone();
        opts.privilege = self
            .privilege
            .unwrap_or_else(|| privilege_of(&host.settings.sudo));
        if host.settings.interactive_sudo {
            opts.sudo_password = self.sudo_prompt.clone().or(opts.sudo_password);
        }
        (target, opts)
    }
}

/// How a non-root login becomes root, from deploy-rs's `sudo` setting (`sudo -u`, `doas -u`, `run0 --user`).
pub fn privilege_of(sudo: &str) -> Privilege {
    match sudo
        .split_whitespace()
        .next()
        .map(|w| w.rsplit('/').next().unwrap_or(w))
    {
        Some("doas") => Privilege::Doas,
        Some("run0") => Privilege::Run0,
        _ => Privilege::Sudo,
    }
}

impl Connector for SshConnector {
    fn connect(&self, host: &Host) -> Result<Box<dyn Connection>, TransportError> {
        let (target, opts) = self.target_for(host);
        let transport = SshTransport::connect(&target, opts);
        // A persistent master that an earlier run left open costs no handshake; a failed attempt does.
        if !transport.as_ref().is_ok_and(SshTransport::reused_master) {
            self.handshakes.fetch_add(1, Ordering::Relaxed);
        }
        let transport = transport?;
        Ok(Box::new(
            SshConnection::new(transport).counting_logins(Arc::clone(&self.handshakes)),
        ))
    }
    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{GeneralSettings, Settings};
    use std::path::Path;

    fn host() -> Host {
        Host {
            name: "web1".into(),
            hostname: "host1".into(),
            tags: Vec::new(),
            profiles: Vec::new(),
            settings: Settings::resolve(&GeneralSettings {
                sudo: Some("doas -u".into()),
                ..Default::default()
            }),
            health_checks: Vec::new(),
            keys: Vec::new(),
        }
    }

    fn lab_host() -> InventoryHost {
        InventoryHost {
            name: "host1".into(),
            host: "10.77.1.11".into(),
            port: Some(22),
            user: Some("root".into()),
            identity_file: Some("/lab/id".into()),
            known_hosts: Some("/lab/known_hosts".into()),
        }
    }

    #[test]
    fn the_inventory_fills_in_what_no_flag_gave() {
        let (target, opts) =
            SshConnector::new(SshOptions::default(), vec![lab_host()]).target_for(&host());
        assert_eq!(target.host, "10.77.1.11");
        assert_eq!(opts.identity_file.as_deref(), Some(Path::new("/lab/id")));
        assert_eq!(
            opts.known_hosts.as_deref(),
            Some(Path::new("/lab/known_hosts"))
        );
        assert_eq!(opts.privilege, Privilege::Doas);
    }

    #[test]
    fn a_flag_beats_the_inventory() {
        let base = SshOptions {
            identity_file: Some("/cli/key".into()),
            known_hosts: Some("/cli/known".into()),
            ..SshOptions::default()
        };
        let (_, opts) = SshConnector::new(base, vec![lab_host()])
            .with_privilege(Privilege::Run0)
            .target_for(&host());
        assert_eq!(opts.identity_file.as_deref(), Some(Path::new("/cli/key")));
        assert_eq!(opts.known_hosts.as_deref(), Some(Path::new("/cli/known")));
        assert_eq!(opts.privilege, Privilege::Run0);
    }
}
