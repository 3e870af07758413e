//! Building a node's system with nixpave-nix: one `nix eval` for the toplevel's derivation and
//! system type, then one `nix build` of that derivation (nix 2.8 and current nix alike).

use nixpave_nix::flake::{eval_flake_json, nix_string};
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

/// The nix function that reads a node's toplevel derivation and system from the flake's outputs (pure).
pub fn toplevel_function(node: &str) -> String {
    format!(
        "f: let t = f.nixosConfigurations.${{{}}}.config.system.build.toplevel; in {{ drv = t.drvPath; system = t.system; }}",
        nix_string(node)
    )
}

/// Builds `nixosConfigurations.NODE.config.system.build.toplevel` of `flake` locally.
pub fn build_toplevel(flake: &str, node: &str) -> Result<BuiltSystem, BuildError> {
    let opts = NixOptions::default();
    let flake = nixpave_nix::flake::FlakeTarget::parse(flake).flake;
    let v = eval_flake_json(&flake, &toplevel_function(node), &opts)?;
    let (Some(drv), Some(system)) = (v["drv"].as_str(), v["system"].as_str()) else {
        return Err(BuildError::NotASystem {
            node: node.to_string(),
            value: v.to_string(),
        });
    };
    let built = nixpave_nix::build::build_derivations(&[drv.to_string()], &opts)?;
    let toplevel = built
        .get(drv)
        .cloned()
        .ok_or_else(|| BuildError::NotASystem {
            node: node.to_string(),
            value: format!("{drv} built without an output"),
        })?;
    Ok(BuiltSystem {
        toplevel,
        drv: drv.to_string(),
        system: system.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_toplevel_function_quotes_the_node() {
        assert_eq!(
            toplevel_function("web-1"),
            "f: let t = f.nixosConfigurations.${\"web-1\"}.config.system.build.toplevel; in { drv = t.drvPath; system = t.system; }"
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
                   args = [ "-c" "echo hi > $out" ]; }; }; }"#,
        )
        .unwrap();
        let conf = tempfile::tempdir().unwrap();
        std::fs::write(
            conf.path().join("nix.conf"),
            "build-users-group =\nsandbox = false\nsubstituters =\nexperimental-features = nix-command flakes\n",
        )
        .unwrap();
        std::env::set_var("NIX_CONF_DIR", conf.path());
        let built = build_toplevel(&dir.path().display().to_string(), "web-1").unwrap();
        assert_eq!(built.system, "x86_64-linux");
        assert!(built.drv.ends_with("-sys.drv"), "{built:?}");
        assert_eq!(std::fs::read_to_string(&built.toplevel).unwrap(), "hi\n");
        let err = build_toplevel(&dir.path().display().to_string(), "nope").unwrap_err();
        assert!(matches!(err, BuildError::Nix(_)), "{err}");
    }
}
