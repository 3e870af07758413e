//! How the deployer reaches a host: the transport (master connection), a fresh login for the magic-rollback
//! proof, and where `nix copy` pushes. [`LocalConnector`] serves tests of the whole pipeline on this machine.

use std::sync::atomic::{AtomicUsize, Ordering};

use nixpave_nix::copy::CopyTo;
use nixpave_remote::{CommandOutput, LocalTransport, Transport, TransportError};

use crate::inventory::Host;

/// An open connection to one host.
pub trait Connection: Send + Sync {
    /// Commands, uploads and reads (over the host's master connection).
    fn transport(&self) -> &dyn Transport;
    /// Runs `argv` over a brand-new login that does not reuse the master connection.
    fn run_fresh_login(&self, argv: &[String]) -> Result<CommandOutput, TransportError>;
    /// Where `nix copy` pushes closures; `None` when the host shares the deployer's store.
    fn copy_to(&self) -> Option<CopyTo>;
    /// Address for deployer-side health checks.
    fn address(&self) -> &str;
}

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

struct LocalConnection;

impl Connection for LocalConnection {
    fn transport(&self) -> &dyn Transport {
        &LocalTransport
    }
    fn run_fresh_login(&self, argv: &[String]) -> Result<CommandOutput, TransportError> {
        LocalTransport.run(argv, None)
    }
    fn copy_to(&self) -> Option<CopyTo> {
        None
    }
    fn address(&self) -> &str {
        "127.0.0.1"
    }
}

impl Connector for LocalConnector {
    fn connect(&self, _host: &Host) -> Result<Box<dyn Connection>, TransportError> {
        self.logins.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(LocalConnection))
    }
    fn handshakes(&self) -> usize {
        self.logins.load(Ordering::Relaxed)
    }
}
