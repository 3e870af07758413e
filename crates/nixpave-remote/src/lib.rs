//! How nixpave reaches a machine.
//!
//! Everything that touches a host (the local machine or a remote one over SSH) goes through
//! the [`Transport`] trait, so planners stay pure and executors do not care where they run.
//!
//! - [`LocalTransport`]: this machine.
//! - [`SshTransport`]: the system OpenSSH client with one ControlMaster connection per host
//!   (also used by `nix copy` through [`SshTransport::nix_sshopts`]).
//! - [`Connection`]: one open connection as deploy and install use it ([`SshConnection`],
//!   [`LocalConnection`]): a transport, fresh logins, where `nix copy` pushes, host keys.
//! - [`Facts`]: what a host is (OS, disks, kexec, nix), gathered in one round trip.
//! - [`parallel`]: run something on many hosts at once; [`cancel`]: Ctrl-C handling.
//! - [`Target`] and [`Inventory`]: where hosts are and how to log in.
//! - [`TARGET_PATH`]: the one `PATH` every command on a host runs with (NixOS and FHS hosts).
//!
//! ```no_run
//! use nixpave_remote::{gather_facts, SshOptions, SshTransport, Target, Transport};
//!
//! let target: Target = "root@10.0.0.2".parse()?;
//! let ssh = SshTransport::connect(&target, SshOptions::default())?; // one handshake
//! let out = ssh.run(&["uname".into(), "-r".into()], None)?;         // reuses it
//! let facts = gather_facts(&ssh)?;                                   // one round trip
//! // `nix copy` through the same connection:
//! let status = std::process::Command::new("nix")
//!     .args(["copy", "--to", &ssh.ssh_store_uri(), "/nix/store/…"])
//!     .envs(ssh.nix_env())
//!     .status()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod blockdev;
pub mod cancel;
mod connection;
mod facts;
mod inventory;
mod local;
pub mod parallel;
pub mod process;
mod ssh;
mod target;
mod target_env;
mod transport;

pub use blockdev::BlockDevice;
pub use connection::{
    known_hosts_pattern, root_target, with_remote_store, Connection, LocalConnection, SshConnection,
};
pub use facts::{
    gather_facts, parse_facts, Facts, FactsError, KexecFacts, OsInfo, PROBED_TOOLS,
    SHARED_KERNEL_EXIT, SHARED_KERNEL_GUARD,
};
pub use inventory::{
    HostGroups, Inventory, InventoryError, InventoryHost, ResolveError, ResolvedHost,
    TargetResolver,
};
pub use local::LocalTransport;
pub use ssh::{HostKeyPolicy, PasswordPrompt, Privilege, SshOptions, SshTransport};
pub use target::{Target, TargetParseError};
pub use target_env::{path_prelude, with_target_path, TARGET_PATH, TARGET_SHELL};
pub use transport::{
    argv, last_lines, shell_join, shell_quote, CommandOutput, OutputStream, Transport,
    TransportError, UploadSpec,
};
