//! The few local nix calls the install needs (to be replaced by `nixpave_nix` once it lands):
//! build a node's toplevel and read its system type and disk layout from a flake.

use std::process::Command;

/// A nix call failed.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {stderr}")]
pub struct NixError {
    /// The command line.
    pub command: String,
    /// Tail of its stderr.
    pub stderr: String,
}

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

fn nix(args: &[String]) -> Result<String, NixError> {
    let command = format!("nix {}", args.join(" "));
    let out = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes"])
        .args(args)
        .output()
        .map_err(|e| NixError {
            command: command.clone(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        return Err(NixError {
            command,
            stderr: lines[lines.len().saturating_sub(15)..].join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The flake attribute of a node's configuration.
pub fn config_attr(flake: &str, node: &str) -> String {
    format!("{flake}#nixosConfigurations.\"{node}\".config")
}

/// Builds `nixosConfigurations.NODE.config.system.build.toplevel` locally.
pub fn build_toplevel(flake: &str, node: &str) -> Result<BuiltSystem, NixError> {
    let attr = format!("{}.system.build.toplevel", config_attr(flake, node));
    let json = nix(&[
        "build".into(),
        "--json".into(),
        "--no-link".into(),
        attr.clone(),
    ])?;
    let parsed = parse_build_json(&json).ok_or_else(|| NixError {
        command: format!("nix build --json {attr}"),
        stderr: format!("unexpected output: {json}"),
    })?;
    let system = nix(&["eval".into(), "--raw".into(), format!("{attr}.system")])?;
    Ok(BuiltSystem {
        toplevel: parsed.1,
        drv: parsed.0,
        system,
    })
}

/// Reads `config.disko.devices` as JSON (`None` when the node has no disko config).
pub fn disko_devices(flake: &str, node: &str) -> Result<Option<serde_json::Value>, NixError> {
    let attr = format!("{}.disko.devices", config_attr(flake, node));
    match nix(&["eval".into(), "--json".into(), attr]) {
        Ok(json) => Ok(serde_json::from_str(&json).ok()),
        Err(e)
            if e.stderr.contains("does not provide attribute")
                || e.stderr.contains("attribute 'disko' missing") =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Parses `nix build --json` output into (drvPath, out path) (pure).
pub fn parse_build_json(json: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let first = v.as_array()?.first()?;
    Some((
        first.get("drvPath")?.as_str()?.to_string(),
        first.get("outputs")?.get("out")?.as_str()?.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_build_json() {
        let j = r#"[{"drvPath":"/nix/store/a.drv","outputs":{"out":"/nix/store/b-sys"}}]"#;
        assert_eq!(
            parse_build_json(j),
            Some(("/nix/store/a.drv".into(), "/nix/store/b-sys".into()))
        );
        // nix 2.26 adds build times (captured shape).
        let j = r#"[{"drvPath":"/nix/store/a.drv","outputs":{"out":"/nix/store/b-sys"},"startTime":1795983893,"stopTime":1795983894}]"#;
        assert_eq!(
            parse_build_json(j),
            Some(("/nix/store/a.drv".into(), "/nix/store/b-sys".into()))
        );
        assert_eq!(parse_build_json("[]"), None);
        assert_eq!(
            config_attr("path:/f", "web"),
            "path:/f#nixosConfigurations.\"web\".config"
        );
    }
}
