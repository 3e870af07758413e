//! Flake references and evaluating flakes (also with Debian's nix 2.8, which needs `path:` refs).

use std::path::Path;

use crate::eval::nix_string;
use crate::invoke::{experimental_args, run_nix, NixError, NixOptions};

/// A flake reference split from its `#fragment`, e.g. `./infra#web1.system`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlakeTarget {
    /// The flake URL as nix understands it (`path:/abs/dir` for local directories).
    pub flake: String,
    /// The part after `#`, if any.
    pub fragment: Option<String>,
}

impl FlakeTarget {
    /// Parses `FLAKE[#FRAGMENT]`. A local directory is read as nix reads it: inside a git work tree as
    /// `git+file://TOPLEVEL?dir=SUBDIR` (tracked files only, so an untracked secret beside the flake never
    /// lands in the store), elsewhere as an absolute `path:` (nix 2.8 cannot lock a bare path outside git).
    /// References with a scheme (`path:`, `github:`, `git+ssh:` …) are taken as written.
    pub fn parse(text: &str) -> FlakeTarget {
        let (flake, fragment) = match text.split_once('#') {
            Some((f, frag)) => (f, Some(frag.to_string()).filter(|s| !s.is_empty())),
            None => (text, None),
        };
        let flake = if flake.is_empty() { "." } else { flake };
        FlakeTarget {
            flake: normalise_flake_ref(flake),
            fragment,
        }
    }
}

/// A flake reference (without fragment) as nix reads it from any working directory: a local
/// directory becomes [`local_flake_ref`] of its absolute path; a reference with a scheme is kept.
pub fn normalise_flake_ref(flake: &str) -> String {
    if flake.contains(':') {
        return flake.to_string();
    }
    let path = Path::new(flake);
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    local_flake_ref(&abs)
}

/// The flake reference nix itself makes of the local directory `dir` (absolute): `git+file` when a
/// `.git` stands in it or a parent, else `path:`.
pub fn local_flake_ref(dir: &Path) -> String {
    let Some(top) = dir.ancestors().find(|d| d.join(".git").exists()) else {
        return format!("path:{}", dir.display());
    };
    match dir.strip_prefix(top) {
        Ok(sub) if !sub.as_os_str().is_empty() => {
            format!("git+file://{}?dir={}", top.display(), sub.display())
        }
        _ => format!("git+file://{}", top.display()),
    }
}

/// Evaluates `(FUNCTION) flakeOutputs` to JSON in one `nix eval` call.
///
/// `function` is a nix lambda taking the flake's outputs. The flake is loaded with `builtins.getFlake`
/// under `--impure`, which works with nix 2.8 for `path:` flakes without a lock file.
pub fn eval_flake_json(
    flake: &str,
    function: &str,
    opts: &NixOptions,
) -> Result<serde_json::Value, NixError> {
    let expr = format!(
        "let flake = builtins.getFlake {}; in ({function}) flake",
        nix_string(flake)
    );
    let mut args = experimental_args();
    args.extend(["eval", "--impure", "--json", "--expr"].map(String::from));
    args.push(expr);
    args.extend(opts.extra_args.iter().cloned());
    let shown = format!("nix eval --impure --json (fleet of flake {flake})");
    // The generated expression is long and says nothing to the user: show a short command instead.
    let out = run_nix("nix", &args, opts, &[]).map_err(|e| match e {
        NixError::Failed {
            status,
            stderr,
            builds,
            ..
        } => NixError::Failed {
            command: shown.clone(),
            status,
            stderr,
            builds,
        },
        NixError::Spawn { source, .. } => NixError::Spawn {
            command: shown.clone(),
            source,
        },
        other => other,
    })?;
    serde_json::from_str(&out.stdout).map_err(|e| NixError::BadOutput {
        command: format!("nix eval --json (flake {flake})"),
        message: e.to_string(),
    })
}

/// The flake's `nixConfig` (the settings it asks nix to use, e.g. `extra-substituters`), as
/// `(name, value)` pairs with list values joined by spaces, in name order; empty when it has none.
/// Read from the flake's own `flake.nix` (in the `?dir=` subdirectory when the reference names one).
pub fn flake_nix_config(flake: &str, opts: &NixOptions) -> Result<Vec<(String, String)>, NixError> {
    let dir = flake
        .split_once('?')
        .and_then(|(_, query)| query.split('&').find_map(|kv| kv.strip_prefix("dir=")))
        .map(|d| format!("/{}", d.trim_matches('/')))
        .unwrap_or_default();
    // A `?dir=` flake's outPath is the source's root in nix 2.8 and the subdirectory in current nix.
    let function = format!(
        "f: let sub = f.outPath + {}; file = if builtins.pathExists sub then sub else f.outPath + \"/flake.nix\"; c = (import file).nixConfig or {{}}; in builtins.mapAttrs (n: v: if builtins.isList v then builtins.concatStringsSep \" \" (map toString v) else if builtins.isBool v then (if v then \"true\" else \"false\") else toString v) c",
        nix_string(&format!("{dir}/flake.nix"))
    );
    let value = eval_flake_json(flake, &function, opts)?;
    Ok(value
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_fragment_and_makes_paths_absolute() {
        let t = FlakeTarget::parse("github:me/infra#web.system");
        assert_eq!(t.flake, "github:me/infra");
        assert_eq!(t.fragment.as_deref(), Some("web.system"));
        let t = FlakeTarget::parse("/tmp#");
        assert_eq!(t.flake, "path:/tmp");
        assert_eq!(t.fragment, None);
        let t = FlakeTarget::parse("path:/srv/infra#web");
        assert_eq!(t.flake, "path:/srv/infra");
    }

    #[test]
    fn directories_in_git_work_trees_are_git_flakes() {
        let repo = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(repo.path().join(".git")).expect(".git");
        std::fs::create_dir_all(repo.path().join("infra/prod")).expect("dirs");
        let top = std::fs::canonicalize(repo.path()).expect("canonical");
        assert_eq!(
            local_flake_ref(&top),
            format!("git+file://{}", top.display())
        );
        assert_eq!(
            local_flake_ref(&top.join("infra/prod")),
            format!("git+file://{}?dir=infra/prod", top.display())
        );
    }
}
