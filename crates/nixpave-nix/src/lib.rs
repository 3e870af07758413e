//! Evaluating, building and copying with the real nix CLI (nix-instantiate, nix eval, nix build, nix copy).
