//! Disposable local hosts (network namespaces with their own sshd and /nix) and qemu VMs for trying and testing nixpave.
//!
//! - [`hosts`]: `nixpave lab up/down/status` — namespace hosts with sshd and a private nix store.
//! - `testing` (cargo feature `testing`, for test code only, so it stays out of the release
//!   binary): a guard for tests, `testing::Lab::up`, that tears the lab down on drop.
//! - [`vm`]: qemu VMs.
#![warn(missing_docs)]

pub mod hosts;
pub mod size;
#[cfg(feature = "testing")]
pub mod testing;
pub mod vm;
