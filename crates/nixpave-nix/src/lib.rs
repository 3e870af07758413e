//! Evaluating, building and copying with the real nix CLI (nix-instantiate, nix eval, nix build, nix copy).
//!
//! Supports Debian 12's nix 2.8 up to current Nix; [`version`] holds what differs between them.

#![warn(missing_docs)]

pub mod build;
pub mod copy;
pub mod eval;
pub mod flake;
pub mod invoke;
pub mod progress;
pub mod version;

pub use eval::{eval_file, eval_flake_attr, EvalError, NixArg};
pub use version::{local_version, NixVersion};
