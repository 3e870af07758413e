//! How the deployer opens connections ([`nixpave_remote::Connection`]: the transport, a fresh login for the
//! magic-rollback proof, where `nix copy` pushes). [`LocalConnector`] serves tests of the whole pipeline on this machine.

use std::sync::atomic::{AtomicUsize, Ordering};

pub use nixpave_remote::Connection;
use nixpave_remote::{LocalConnection, TransportError};

use crate::inventory::Host;

/// Opens connections to hosts.
pub trait Connector: Send + Sync {
    /// Connects to `host` (one authenticated master connection).
    fn connect(&self, host: &Host) -> Result<Box<dyn Connection>, TransportError>;
    /// How many ssh handshakes this connector made so far (masters and fresh logins).
    fn handshakes(&self) -> usize {
        0
    }
}

/// This machine as the target, without ssh: `nixpave deploy --local`, and tests of the pipeline.
#[derive(Debug, Default)]
pub struct LocalConnector {
    logins: AtomicUsize,
}

impl Connector for LocalConnector {
    fn connect(&self, _host: &Host) -> Result<Box<dyn Connection>, TransportError> {
        self.logins.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(LocalConnection::new()))
    }
    fn handshakes(&self) -> usize {
        self.logins.load(Ordering::Relaxed)
    }
}
