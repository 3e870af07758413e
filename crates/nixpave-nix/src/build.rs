//! Building derivations with one `nix build` call (nix schedules the builds in parallel).
//!
//! Works with nix 2.8 (a bare `.drv` argument builds its outputs) and current nix (which needs
//! `DRV^*`; a bare `.drv` would only "build" the `.drv` file itself): see [`crate::version`].

use std::collections::BTreeMap;

use crate::invoke::{experimental_args, run_nix, NixError, NixOptions};
use crate::version::{local_version, NixVersion};

/// Builds every derivation in `drv_paths` with a single `nix build --json --no-link` and returns
/// `drvPath -> outPath` (the `out` output, else the first one). The paths come from `--json`, which
/// every supported nix has (`--print-out-paths` only exists since 2.9).
pub fn build_derivations(
    drv_paths: &[String],
    opts: &NixOptions,
) -> Result<BTreeMap<String, String>, NixError> {
    build(drv_paths, opts, None)
}

/// [`build_derivations`], keeping every output alive as an indirect GC root `out_link`, `out_link-1`, …
/// (nix's `--out-link` naming) until those links are removed: a garbage collection on this machine
/// between the build and the push cannot take the outputs away.
pub fn build_derivations_rooted(
    drv_paths: &[String],
    opts: &NixOptions,
    out_link: &std::path::Path,
) -> Result<BTreeMap<String, String>, NixError> {
    build(drv_paths, opts, Some(out_link))
}

/// [`build_derivations_rooted`], telling `on_event` as it happens which derivation finished and how far the
/// builds are (nix's `--log-format internal-json`, see [`crate::progress`]): a caller can go on with one
/// derivation's output while others still build. A failure carries nix's error messages as text.
pub fn build_derivations_streaming(
    drv_paths: &[String],
    opts: &NixOptions,
    out_link: &std::path::Path,
    on_event: &mut dyn FnMut(crate::progress::LogEvent),
) -> Result<BTreeMap<String, String>, NixError> {
    build_with(drv_paths, opts, Some(out_link), Some(on_event))
}

/// Keeps store paths that are already valid alive as indirect GC roots `out_link`, `out_link-2`, … (until those
/// links are removed), with one `nix-store --realise --add-root`: no build, no evaluator start, no `nix
/// --version`. Fails when a path is not valid (anymore); the caller then builds.
pub fn root_valid_paths(
    paths: &[String],
    opts: &NixOptions,
    out_link: &std::path::Path,
) -> Result<(), NixError> {
    if paths.is_empty() {
        return Ok(());
    }
    let mut args = vec![
        "--realise".to_string(),
        "--add-root".into(),
        out_link.display().to_string(),
        "--indirect".into(),
        // Never substitute or build here: a path that is gone is the caller's to build.
        "--option".into(),
        "substitute".into(),
        "false".into(),
        "--max-jobs".into(),
        "0".into(),
    ];
    args.extend(paths.iter().cloned());
    run_nix("nix-store", &args, opts, &[]).map(|_| ())
}

fn build(
    drv_paths: &[String],
    opts: &NixOptions,
    out_link: Option<&std::path::Path>,
) -> Result<BTreeMap<String, String>, NixError> {
    build_with(drv_paths, opts, out_link, None)
}

fn build_with(
    drv_paths: &[String],
    opts: &NixOptions,
    out_link: Option<&std::path::Path>,
    on_event: Option<&mut dyn FnMut(crate::progress::LogEvent)>,
) -> Result<BTreeMap<String, String>, NixError> {
    if drv_paths.is_empty() {
        return Ok(BTreeMap::new());
    }
    let version = local_version(opts)?;
    let mut args = build_args(version, drv_paths, opts);
    if let Some(link) = out_link {
        if let Some(pos) = args.iter().position(|a| a == "--no-link") {
            args.splice(
                pos..=pos,
                ["--out-link".to_string(), link.display().to_string()],
            );
        }
    }
    // Always with nix's JSON log: a failure then names the derivations not built with their log tails.
    let out = crate::progress::run_with_log(&args, opts, &[], on_event.unwrap_or(&mut |_| {}))
        .map_err(|mut e| {
            if let NixError::Failed { builds, .. } = &mut e {
                *builds = not_built(std::mem::take(builds), opts);
            }
            e
        })?;
    let built = parse_build_json(&out.stdout)?;
    if let Some(missing) = drv_paths.iter().find(|d| !built.contains_key(*d)) {
        return Err(NixError::BadOutput {
            command: format!("nix build --json (nix {version})"),
            message: format!("no outputs reported for {missing}"),
        });
    }
    Ok(built)
}

/// The builds of `logs` whose outputs are not all valid in the store: the failed ones (and those nix stopped
/// when one failed), not those that succeeded (nix logs no end of a build; nix 2.8 and 2.26 end a build's
/// activity only when the whole `nix build` ends). One `nix-store` call; should it fail, all are kept.
fn not_built(
    logs: Vec<crate::progress::BuildLog>,
    opts: &NixOptions,
) -> Vec<crate::progress::BuildLog> {
    let outputs: Vec<Option<Vec<String>>> = logs
        .iter()
        .map(|l| {
            std::fs::read_to_string(&l.drv)
                .ok()
                .and_then(|text| drv_output_paths(&text))
        })
        .collect();
    let mut args = vec![
        "--check-validity".to_string(),
        "--print-invalid".to_string(),
    ];
    args.extend(outputs.iter().flatten().flatten().cloned());
    if args.len() == 2 {
        return logs;
    }
    let Ok(out) = run_nix("nix-store", &args, opts, &[]) else {
        return logs;
    };
    let invalid: std::collections::HashSet<&str> = out.stdout.lines().map(str::trim).collect();
    logs.into_iter()
        .zip(outputs)
        .filter(|(_, outs)| match outs {
            Some(outs) => outs.iter().any(|o| invalid.contains(o.as_str())),
            // Outputs unknown (not a plain .drv, or content-addressed): cannot tell, keep it.
            None => true,
        })
        .map(|(log, _)| log)
        .collect()
}

/// The output paths a `.drv` file (nix's ATerm `Derive([("out","/nix/store/…","",""),…],…)`) names, `None`
/// when it is not of that form or an output has no path yet (content-addressed). Pure.
pub fn drv_output_paths(drv: &str) -> Option<Vec<String>> {
    let list = drv.strip_prefix("Derive([")?;
    // Output names, paths and hashes hold no `]`: the list ends at the first one.
    let list = &list[..list.find(']')?];
    // Each output is four strings (name, path, hash algorithm, hash); quotes are the only delimiters.
    let strings: Vec<&str> = list.split('"').skip(1).step_by(2).collect();
    if strings.is_empty() || !strings.len().is_multiple_of(4) {
        return None;
    }
    strings
        .chunks(4)
        .map(|o| (o[1].starts_with('/')).then(|| o[1].to_string()))
        .collect()
}

/// The `nix` arguments that build all outputs of `drv_paths` with nix `version` (pure).
pub fn build_args(version: NixVersion, drv_paths: &[String], opts: &NixOptions) -> Vec<String> {
    let mut args = experimental_args();
    args.extend(["build", "--json", "--no-link"].map(String::from));
    args.extend(opts.extra_args.iter().cloned());
    args.extend(drv_paths.iter().map(|d| version.drv_outputs_installable(d)));
    args
}

/// One element of `nix build --json`'s array.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum BuildResult {
    /// A built derivation: nix 2.8 (`drvPath`, `outputs`), current nix adds fields such as
    /// `startTime`/`stopTime` (ignored).
    Built {
        #[serde(rename = "drvPath")]
        drv_path: String,
        /// Output name → store path (`null` for outputs nix did not know, as some versions print).
        outputs: BTreeMap<String, Option<String>>,
    },
    /// A plain store path: what current nix reports for a bare `.drv` (the file, not its outputs),
    /// or for an opaque path.
    Opaque(String),
}

/// Parses `nix build --json` output (of any supported nix) into `drvPath -> out path`.
pub fn parse_build_json(stdout: &str) -> Result<BTreeMap<String, String>, NixError> {
    let bad = |message: String| NixError::BadOutput {
        command: "nix build --json".into(),
        message,
    };
    let results: Vec<BuildResult> = serde_json::from_str(stdout.trim()).map_err(|e| {
        bad(format!(
            "{e} in {}",
            crate::invoke::tail(stdout, 3)
                .chars()
                .take(400)
                .collect::<String>()
        ))
    })?;
    let mut map = BTreeMap::new();
    for r in results {
        match r {
            BuildResult::Built { drv_path, outputs } => {
                let out = outputs
                    .get("out")
                    .cloned()
                    .flatten()
                    .or_else(|| outputs.values().flatten().next().cloned())
                    .ok_or_else(|| bad(format!("{drv_path} has no built outputs")))?;
                map.insert(drv_path, out);
            }
            BuildResult::Opaque(path) if path.ends_with(".drv") => {
                return Err(bad(format!(
                    "nix reported the derivation file {path} itself, not its outputs \
                     (a bare .drv installable on nix 2.15 or later; it needs DRV^*)"
                )));
            }
            // A plain store path was asked for and is valid: nothing to map.
            BuildResult::Opaque(_) => {}
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nix build --json --no-link DRV` with Debian 12's nix 2.8.0 (captured).
    const NIX_2_8: &str = r#"[{"drvPath":"/nix/store/q5n37b1kcl5xlli18rpn3dqpabz910r5-t-a.drv","outputs":{"out":"/nix/store/pwgsk3sszg8rwgqh9qs1w5z3hqaybpd8-t-a"}}]"#;
    /// The same with nix 2.8.0 and a derivation with outputs `out` and `dev` (captured).
    const NIX_2_8_MULTI: &str = r#"[{"drvPath":"/nix/store/xr9icvz3zzn9rpnrybinfmj13rywh5y2-m.drv","outputs":{"dev":"/nix/store/gf343rkdnlbz0qyyd9y3g0bfj67blp1m-m-dev","out":"/nix/store/r4wbbmzlq67y5dnhv5y0dn3vvdh6qdb9-m"}}]"#;
    /// `nix build --json --no-link 'DRV^*'` with nix 2.26.3 when it built the derivation (captured).
    const NIX_2_26_BUILT: &str = r#"[{"drvPath":"/nix/store/q5n37b1kcl5xlli18rpn3dqpabz910r5-t-a.drv","outputs":{"out":"/nix/store/pwgsk3sszg8rwgqh9qs1w5z3hqaybpd8-t-a"},"startTime":1795983893,"stopTime":1795983893}]"#;
    /// The same when the outputs were already valid (no times; captured).
    const NIX_2_26_VALID: &str = r#"[{"drvPath":"/nix/store/q5n37b1kcl5xlli18rpn3dqpabz910r5-t-a.drv","outputs":{"out":"/nix/store/pwgsk3sszg8rwgqh9qs1w5z3hqaybpd8-t-a"}}]"#;
    /// nix 2.26.3 given a bare `.drv` (the failure nixpave used to hit; captured).
    const NIX_2_26_BARE_DRV: &str = r#"["/nix/store/q5n37b1kcl5xlli18rpn3dqpabz910r5-t-a.drv"]"#;

    #[test]
    fn parses_nix_2_8_build_json() {
        let map = parse_build_json(NIX_2_8).expect("valid");
        assert_eq!(
            map["/nix/store/q5n37b1kcl5xlli18rpn3dqpabz910r5-t-a.drv"],
            "/nix/store/pwgsk3sszg8rwgqh9qs1w5z3hqaybpd8-t-a"
        );
        let map = parse_build_json(NIX_2_8_MULTI).expect("valid");
        assert_eq!(
            map["/nix/store/xr9icvz3zzn9rpnrybinfmj13rywh5y2-m.drv"],
            "/nix/store/r4wbbmzlq67y5dnhv5y0dn3vvdh6qdb9-m"
        );
    }

    #[test]
    fn parses_nix_2_26_build_json() {
        for json in [NIX_2_26_BUILT, NIX_2_26_VALID] {
            let map = parse_build_json(json).expect("valid");
            assert_eq!(map.len(), 1);
            assert_eq!(
                map["/nix/store/q5n37b1kcl5xlli18rpn3dqpabz910r5-t-a.drv"],
                "/nix/store/pwgsk3sszg8rwgqh9qs1w5z3hqaybpd8-t-a"
            );
        }
    }

    #[test]
    fn a_bare_drv_result_is_a_clear_error() {
        let err = parse_build_json(NIX_2_26_BARE_DRV).unwrap_err().to_string();
        assert!(
            err.contains("derivation file") && err.contains("DRV^*"),
            "{err}"
        );
        let err = parse_build_json("not json").unwrap_err().to_string();
        assert!(err.contains("not json"), "{err}");
        let err = parse_build_json(r#"[{"drvPath":"/nix/store/a.drv","outputs":{}}]"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no built outputs"), "{err}");
    }

    #[test]
    fn other_outputs_and_null_outputs() {
        let json = r#"[{"drvPath":"/nix/store/a.drv","outputs":{"bin":"/nix/store/a-bin","lib":null}},"/nix/store/b-src"]"#;
        let map = parse_build_json(json).expect("valid");
        assert_eq!(map.len(), 1);
        assert_eq!(map["/nix/store/a.drv"], "/nix/store/a-bin");
    }

    #[test]
    fn reads_output_paths_of_a_drv() {
        // A .drv written by nix 2.8 (shortened after the outputs).
        let drv = r#"Derive([("dev","/nix/store/gf343rkdnlbz0qyyd9y3g0bfj67blp1m-m-dev","",""),("out","/nix/store/r4wbbmzlq67y5dnhv5y0dn3vvdh6qdb9-m","","")],[],[],"x86_64-linux","/bin/sh",["-c","exit 1"],[("name","m")])"#;
        assert_eq!(
            drv_output_paths(drv),
            Some(vec![
                "/nix/store/gf343rkdnlbz0qyyd9y3g0bfj67blp1m-m-dev".to_string(),
                "/nix/store/r4wbbmzlq67y5dnhv5y0dn3vvdh6qdb9-m".into()
            ])
        );
        // Content-addressed (no path yet) and not a derivation: unknown.
        assert_eq!(
            drv_output_paths(r#"Derive([("out","","r:sha256","")],[])"#),
            None
        );
        assert_eq!(drv_output_paths("DrvWithVersion(\"xp-dyn-drv\",[])"), None);
        assert_eq!(drv_output_paths(""), None);
    }

    #[test]
    fn arguments_follow_the_version() {
        let drvs = vec!["/nix/store/a.drv".to_string()];
        let opts = NixOptions::default();
        let old = build_args(NixVersion::new(2, 8, 0), &drvs, &opts);
        assert_eq!(old.last().map(String::as_str), Some("/nix/store/a.drv"));
        let new = build_args(NixVersion::new(2, 26, 3), &drvs, &opts);
        assert_eq!(new.last().map(String::as_str), Some("/nix/store/a.drv^*"));
        assert!(!new.iter().any(|a| a == "--print-out-paths"));
    }
}
