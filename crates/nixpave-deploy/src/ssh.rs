//! Reaching hosts over OpenSSH ([`nixpave_remote::SshTransport`]): one master connection per host, `nix copy`
//! through it, and a fresh non-multiplexed login as the magic-rollback proof. Node `hostname`s that name a
//! host of a nixpave inventory (e.g. the lab's) take that host's address, port, key and known_hosts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nixpave_nix::copy::CopyTo;
use nixpave_remote::{
    CommandOutput, InventoryHost, SshOptions, SshTransport, Target, Transport, TransportError,
};

use crate::connection::{Connection, Connector};
use crate::inventory::Host;

/// Connects to hosts with the system ssh client.
pub struct SshConnector {
    base: SshOptions,
    known: BTreeMap<String, InventoryHost>,
    handshakes: Arc<AtomicUsize>,
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
        }
    }

    /// The ssh target and options for `host`.
    pub fn target_for(&self, host: &Host) -> (Target, SshOptions) {
        let mut opts = self.base.clone();
        opts.name = Some(host.name.clone());
        let mut target = Target::new(host.hostname.clone());
        target.user = Some(host.settings.ssh_user.clone());
        if let Some(known) = self.known.get(&host.hostname) {
            target.host = known.host.clone();
            target.port = known.port;
            if let Some(u) = &known.user {
                target.user = Some(u.clone());
            }
            if known.identity_file.is_some() {
                opts.identity_file = known.identity_file.clone();
            }
            if known.known_hosts.is_some() {
                opts.known_hosts = known.known_hosts.clone();
            }
        }
        apply_ssh_opts(&host.settings.ssh_opts, &mut target, &mut opts);
        (target, opts)
    }
}

/// Folds deploy-rs `sshOpts` (`-p PORT`, `-i KEY`, `-o K=V`, `-oK=V`) into the target and options.
pub fn apply_ssh_opts(words: &[String], target: &mut Target, opts: &mut SshOptions) {
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match w.as_str() {
            "-p" => {
                if let Some(p) = it.next().and_then(|p| p.parse().ok()) {
                    target.port = Some(p);
                }
            }
            "-i" => opts.identity_file = it.next().map(Into::into),
            "-l" => target.user = it.next().cloned(),
            "-o" => opts.extra_options.extend(it.next().cloned()),
            other => {
                if let Some(kv) = other.strip_prefix("-o") {
                    opts.extra_options.push(kv.to_string());
                } else {
                    tracing::warn!(option = other, "ignoring unsupported ssh option");
                }
            }
        }
    }
}

struct SshConnection {
    transport: SshTransport,
    address: String,
    handshakes: Arc<AtomicUsize>,
}

impl Connection for SshConnection {
    fn transport(&self) -> &dyn Transport {
        &self.transport
    }
    fn run_fresh_login(&self, argv: &[String]) -> Result<CommandOutput, TransportError> {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        self.transport.run_fresh_login(argv)
    }
    fn copy_to(&self) -> Option<CopyTo> {
        Some(CopyTo {
            store_uri: self.transport.ssh_store_uri(),
            ssh_opts: self.transport.nix_sshopts(),
            substitute_on_destination: false,
        })
    }
    fn address(&self) -> &str {
        &self.address
    }
}

impl Connector for SshConnector {
    fn connect(&self, host: &Host) -> Result<Box<dyn Connection>, TransportError> {
        let (target, opts) = self.target_for(host);
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        let transport = SshTransport::connect(&target, opts)?;
        Ok(Box::new(SshConnection {
            address: target.host.clone(),
            transport,
            handshakes: Arc::clone(&self.handshakes),
        }))
    }
    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }
}
