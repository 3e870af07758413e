//! Building derivations with one `nix build` call (nix schedules the builds in parallel).

use std::collections::BTreeMap;

use crate::invoke::{experimental_args, run_nix, NixError, NixOptions};

/// Builds every derivation in `drv_paths` with a single `nix build --json --no-link` and returns
/// `drvPath -> outPath` (the `out` output). Nix 2.8 has no `--print-out-paths`: the paths come from `--json`.
pub fn build_derivations(
    drv_paths: &[String],
    opts: &NixOptions,
) -> Result<BTreeMap<String, String>, NixError> {
    if drv_paths.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut args = experimental_args();
    args.extend(["build", "--json", "--no-link"].map(String::from));
    args.extend(opts.extra_args.iter().cloned());
    args.extend(drv_paths.iter().cloned());
    let out = run_nix("nix", &args, opts, &[])?;
    parse_build_json(&out.stdout)
}

#[derive(serde::Deserialize)]
struct BuildResult {
    #[serde(rename = "drvPath")]
    drv_path: String,
    outputs: BTreeMap<String, String>,
}

/// Parses `nix build --json` output into `drvPath -> out path`.
pub fn parse_build_json(stdout: &str) -> Result<BTreeMap<String, String>, NixError> {
    let bad = |message: String| NixError::BadOutput {
        command: "nix build --json".into(),
        message,
    };
    let results: Vec<BuildResult> = serde_json::from_str(stdout).map_err(|e| bad(e.to_string()))?;
    results
        .into_iter()
        .map(|r| {
            let out = r
                .outputs
                .get("out")
                .or_else(|| r.outputs.values().next())
                .cloned()
                .ok_or_else(|| bad(format!("{} has no outputs", r.drv_path)))?;
            Ok((r.drv_path, out))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nix_2_8_build_json() {
        let json = r#"[{"drvPath":"/nix/store/a.drv","outputs":{"out":"/nix/store/a"}}]"#;
        let map = parse_build_json(json).expect("valid");
        assert_eq!(map["/nix/store/a.drv"], "/nix/store/a");
    }
}
