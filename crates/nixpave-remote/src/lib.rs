//! How nixpave reaches a machine.
//!
//! Everything that touches a host (the local machine or a remote one over SSH) goes through
//! the [`Transport`] trait, so planners stay pure and executors do not care where they run.

mod local;
mod transport;

pub use local::LocalTransport;
pub use transport::{
    shell_join, shell_quote, CommandOutput, OutputStream, Transport, TransportError, UploadSpec,
};
