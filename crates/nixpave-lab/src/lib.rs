//! Disposable local hosts (network namespaces with their own sshd and /nix) and qemu VMs for trying and testing nixpave.
pub mod vm;
