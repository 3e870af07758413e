//! Evaluating, building and copying with the real nix CLI (nix-instantiate, nix eval, nix build, nix copy).

pub mod build;
pub mod copy;
pub mod eval;
pub mod flake;
pub mod invoke;

pub use eval::{eval_file, eval_flake_attr, EvalError, NixArg};
