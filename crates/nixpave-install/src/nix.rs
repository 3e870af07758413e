//! Building a node's system with nixpave-nix: one `nix eval` for the toplevel's derivation and
//! system type, then one `nix build` of that derivation (nix 2.8 and current nix alike).

use nixpave_nix::eval::nix_string;
use nixpave_nix::flake::eval_flake_json;
use nixpave_nix::invoke::{NixError, NixOptions};

/// A built system closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltSystem {
    /// The toplevel store path.
    pub toplevel: String,
    /// Its derivation.
    pub drv: String,
    /// The nix system it is built for, e.g. `x86_64-linux`.
    pub system: String,
}

/// Why a node's system could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// nix failed (evaluation or build).
    #[error(transparent)]
    Nix(#[from] NixError),
    /// The evaluation did not give a derivation and a system.
    #[error("nixosConfigurations.{node}: the toplevel evaluated to {value}, not a derivation with a system")]
    NotASystem {
        /// The node.
        node: String,
        /// What came back.
        value: String,
    },
}

/// The nix function that reads a node's toplevel derivation, output path and system from the
/// flake's outputs (pure).
pub fn toplevel_function(node: &str) -> String {
    format!(
        "f: let t = f.nixosConfigurations.${{{}}}.config.system.build.toplevel; in {{ drv = t.drvPath; out = t.outPath; system = t.system; }}",
        nix_string(node)
    )
}

/// The nix function that reads `deploy.nodes.NODE.hostname` from the flake's outputs (pure).
pub fn hostname_function(node: &str) -> String {
    format!("f: f.deploy.nodes.${{{}}}.hostname", nix_string(node))
}

/// Reads `deploy.nodes.NODE.hostname` of `flake` (one `nix eval`), where `nixpave install` goes
/// without `--target`.
pub fn eval_hostname(flake: &str, node: &str) -> Result<String, BuildError> {
    let flake = nixpave_nix::flake::FlakeTarget::parse(flake).flake;
    let v = eval_flake_json(&flake, &hostname_function(node), &options(&[]))?;
    match v.as_str() {
        Some(host) => Ok(host.trim().to_string()),
        None => Err(BuildError::NotASystem {
            node: node.to_string(),
            value: v.to_string(),
        }),
    }
}

/// A node's toplevel, evaluated but not built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluatedSystem {
    /// The node.
    pub node: String,
    /// The derivation.
    pub drv: String,
    /// Its output path (what the build, here or on the target, produces).
    pub out: String,
    /// The nix system it is built for.
    pub system: String,
}

fn options(nix_args: &[String]) -> NixOptions {
    NixOptions {
        extra_args: nix_args.to_vec(),
        ..NixOptions::default()
    }
}

/// Evaluates `nixosConfigurations.NODE.config.system.build.toplevel` of `flake` (one `nix eval`).
pub fn eval_toplevel(
    flake: &str,
    node: &str,
    nix_args: &[String],
) -> Result<EvaluatedSystem, BuildError> {
    let flake = nixpave_nix::flake::FlakeTarget::parse(flake).flake;
    let v = eval_flake_json(&flake, &toplevel_function(node), &options(nix_args))?;
    match (v["drv"].as_str(), v["out"].as_str(), v["system"].as_str()) {
        (Some(drv), Some(out), Some(system)) => Ok(EvaluatedSystem {
            node: node.to_string(),
            drv: drv.into(),
            out: out.into(),
            system: system.into(),
        }),
        _ => Err(BuildError::NotASystem {
            node: node.to_string(),
            value: v.to_string(),
        }),
    }
}

/// Builds an evaluated toplevel on this machine (one `nix build`).
pub fn build_evaluated(
    eval: &EvaluatedSystem,
    nix_args: &[String],
) -> Result<BuiltSystem, BuildError> {
    let built =
        nixpave_nix::build::build_derivations(std::slice::from_ref(&eval.drv), &options(nix_args))?;
    let toplevel = built
        .get(&eval.drv)
        .cloned()
        .ok_or_else(|| BuildError::NotASystem {
            node: eval.node.clone(),
            value: format!("{} built without an output", eval.drv),
        })?;
    Ok(BuiltSystem {
        toplevel,
        drv: eval.drv.clone(),
        system: eval.system.clone(),
    })
}

/// Builds `nixosConfigurations.NODE.config.system.build.toplevel` of `flake` locally.
pub fn build_toplevel(flake: &str, node: &str) -> Result<BuiltSystem, BuildError> {
    build_evaluated(&eval_toplevel(flake, node, &[])?, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hostname_function_quotes_the_node() {
        assert_eq!(
            hostname_function("web-1"),
            "f: f.deploy.nodes.${\"web-1\"}.hostname"
        );
    }

    #[test]
    fn the_toplevel_function_quotes_the_node() {
        assert_eq!(
            toplevel_function("web-1"),
            "f: let t = f.nixosConfigurations.${\"web-1\"}.config.system.build.toplevel; in { drv = t.drvPath; out = t.outPath; system = t.system; }"
        );
    }

    /// A real flake with a NixOS-shaped node (a plain derivation with a `system` attribute), built with
    /// this machine's nix.
    #[test]
    fn builds_a_flake_node() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("flake.nix"),
            r#"{ outputs = { self }: { nixosConfigurations."web-1".config.system.build.toplevel =
                 builtins.derivation { name = "sys"; system = "x86_64-linux"; builder = "/bin/sh";
                   args = [ "-c" "echo hi > $out" ]; };
               deploy.nodes."web-1".hostname = "10.0.0.7"; }; }"#,
        )
        .unwrap();
        let conf = tempfile::tempdir().unwrap();
        std::fs::write(
            conf.path().join("nix.conf"),
            "build-users-group =\nsandbox = false\nsubstituters =\nexperimental-features = nix-command flakes\n",
        )
        .unwrap();
        std::env::set_var("NIX_CONF_DIR", conf.path());
        let eval = eval_toplevel(&dir.path().display().to_string(), "web-1", &[]).unwrap();
        assert!(!std::path::Path::new(&eval.out).exists() || eval.out.ends_with("-sys"));
        let built = build_toplevel(&dir.path().display().to_string(), "web-1").unwrap();
        assert_eq!(built.toplevel, eval.out);
        assert_eq!(built.system, "x86_64-linux");
        assert!(built.drv.ends_with("-sys.drv"), "{built:?}");
        assert_eq!(std::fs::read_to_string(&built.toplevel).unwrap(), "hi\n");
        let err = build_toplevel(&dir.path().display().to_string(), "nope").unwrap_err();
        assert!(matches!(err, BuildError::Nix(_)), "{err}");
        let flake = dir.path().display().to_string();
        assert_eq!(eval_hostname(&flake, "web-1").unwrap(), "10.0.0.7");
        let err = eval_hostname(&flake, "nope").unwrap_err();
        assert!(
            matches!(err, BuildError::Nix(NixError::Failed { .. })),
            "{err}"
        );
    }
}
