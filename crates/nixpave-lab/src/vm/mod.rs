//! qemu VMs for the lab: a small Debian "any Linux" guest booted from its own disk (BIOS, GRUB), blank virtio disks,
//! ssh forwarded to a loopback port, and a test kexec installer tarball in nixos-images format.
//!
//! Tests use [`Vm::start`], which returns a guard that stops the VM (and removes its state) on drop:
//!
//! ```no_run
//! use nixpave_lab::vm::{Vm, VmSpec};
//! let vm = Vm::start(&VmSpec::new("t1").disks(2)).unwrap();
//! let out = vm.ssh("lsblk -dno NAME", None).unwrap();
//! assert!(String::from_utf8_lossy(&out.stdout).contains("vdb"));
//! ```
//!
//! The images are built from Debian packages by the scripts in `crates/nixpave-lab/images/` (embedded in the
//! binary) and cached by a hash of their inputs in [`cache_dir`] (`NIXPAVE_LAB_CACHE`, default
//! `/var/cache/nixpave/lab`). VM state lives in [`state_root`] (`NIXPAVE_LAB_VM_DIR`, default
//! `/var/lib/nixpave/lab-vms`), one directory per VM.

mod error;
mod images;
mod keys;
mod machine;
mod qemu;
mod registry;

pub use error::VmError;
pub use images::{cache_dir, Images};
pub use machine::{SshOutput, Vm, VmSpec};
pub use qemu::{Accel, QemuLayout};
pub use registry::{list, state_root, VmStatus};
