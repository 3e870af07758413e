//! Loading a layout: a `.nix` file (evaluated with the real nix CLI), a `.json` file, or a
//! flake attribute; then `--disk NAME=DEVICE` overrides; then parsing and validation.

use std::path::{Path, PathBuf};

use nixpave_nix::{EvalError, NixArg};

use crate::model::{Layout, LayoutError};

/// Where a layout comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutSource {
    /// A `.nix` file (plain attrset or function) or a `.json` file.
    File(PathBuf),
    /// `--flake REF#NAME`: `diskoConfigurations.NAME`, else
    /// `nixosConfigurations.NAME.config.disko.devices`.
    Flake {
        /// Flake reference (path or URL).
        flake_ref: String,
        /// Configuration name.
        name: String,
    },
}

impl LayoutSource {
    /// Parses `REF#NAME` for `--flake`.
    pub fn flake(spec: &str) -> Result<LayoutSource, String> {
        match spec.rsplit_once('#') {
            Some((r, n)) if !r.is_empty() && !n.is_empty() => Ok(LayoutSource::Flake {
                flake_ref: r.to_string(),
                name: n.to_string(),
            }),
            _ => Err(format!("`{spec}` is not REF#NAME (e.g. .#myhost)")),
        }
    }
}

/// Parses one `--disk NAME=DEVICE` override (the device an absolute path); usable as a clap
/// `value_parser`.
pub fn parse_disk_override(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, device)) if !name.is_empty() && device.starts_with('/') => {
            Ok((name.to_string(), device.to_string()))
        }
        _ => Err(format!("`{text}`: expected NAME=/dev/DEVICE")),
    }
}

/// Options of [`load_layout`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// `--arg`/`--argstr` values for function-valued files.
    pub args: Vec<NixArg>,
    /// `--disk NAME=DEVICE` overrides (disk attribute name → device path).
    pub disk_overrides: Vec<(String, String)>,
}

/// Why a layout could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Evaluating the Nix file or flake failed (nix's message included).
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A `.json` layout is not valid JSON.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// File path.
        path: PathBuf,
        /// Parse error.
        source: serde_json::Error,
    },
    /// The file is neither `.nix` nor `.json`.
    #[error("{0}: unknown layout file type (expected .nix or .json)")]
    FileType(PathBuf),
    /// `--disk NAME=…` names a disk the layout does not have.
    #[error("--disk {name}=…: the layout has no disk `{name}` (disks: {known})")]
    UnknownDisk {
        /// The name given.
        name: String,
        /// The layout's disk names.
        known: String,
    },
    /// The layout itself is invalid.
    #[error("{}{error}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
    Layout {
        /// What is wrong (with the attribute path).
        error: LayoutError,
        /// `file:line` where the attribute is written, when it could be found.
        location: Option<String>,
    },
}

impl LoadError {
    /// The layout error, when the problem is in the layout itself.
    pub fn layout_error(&self) -> Option<&LayoutError> {
        match self {
            LoadError::Layout { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Reads, evaluates, overrides and validates a layout.
pub fn load_layout(source: &LayoutSource, options: &LoadOptions) -> Result<Layout, LoadError> {
    let (mut json, file) = match source {
        LayoutSource::File(path) => (read_file(path, &options.args)?, Some(path.clone())),
        LayoutSource::Flake { flake_ref, name } => (read_flake(flake_ref, name)?, None),
    };
    apply_overrides(&mut json, &options.disk_overrides)?;
    Layout::from_json(&json).map_err(|error| LoadError::Layout {
        location: file.as_deref().and_then(|f| locate(f, error.path())),
        error,
    })
}

fn read_file(path: &Path, args: &[NixArg]) -> Result<serde_json::Value, LoadError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => {
            let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            serde_json::from_str(&text).map_err(|source| LoadError::Json {
                path: path.to_path_buf(),
                source,
            })
        }
        Some("nix") => {
            if !path.exists() {
                return Err(LoadError::Read {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
            Ok(nixpave_nix::eval_file(path, args)?)
        }
        _ => Err(LoadError::FileType(path.to_path_buf())),
    }
}

/// Drops disko's internal `_`-prefixed attributes at every level.
fn drop_internal(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('_'));
            m.values_mut().for_each(drop_internal);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_internal),
        _ => {}
    }
}

/// True when the flake carries a layout for `name`: `diskoConfigurations.NAME`, or
/// `nixosConfigurations.NAME` with `config.disko.devices` (the two places [`load_layout`] reads a
/// flake layout from). A flake without such a configuration has no layout for it.
pub fn flake_has_layout(flake_ref: &str, name: &str) -> Result<bool, LoadError> {
    if nixpave_nix::eval::flake_has_attr(flake_ref, "diskoConfigurations", name)? {
        return Ok(true);
    }
    if !nixpave_nix::eval::flake_has_attr(flake_ref, "nixosConfigurations", name)? {
        return Ok(false);
    }
    let has = nixpave_nix::eval_flake_attr(
        flake_ref,
        &format!("nixosConfigurations.\"{name}\".config"),
        Some("c: c ? disko && c.disko ? devices"),
    )?;
    Ok(has.as_bool().unwrap_or(false))
}

fn read_flake(flake_ref: &str, name: &str) -> Result<serde_json::Value, LoadError> {
    let mut v = if nixpave_nix::eval::flake_has_attr(flake_ref, "diskoConfigurations", name)? {
        nixpave_nix::eval_flake_attr(flake_ref, &format!("diskoConfigurations.\"{name}\""), None)?
    } else {
        // only plain data is needed: functions and derivations are left out before JSON
        let filter = "let b = builtins; clean = v: if b.isAttrs v then b.listToAttrs (b.map (n: { name = n; value = clean v.${n}; }) (b.filter (n: b.substring 0 1 n != \"_\") (b.attrNames v))) else if b.isList v then b.map clean v else if b.isFunction v then null else v; in clean";
        nixpave_nix::eval_flake_attr(
            flake_ref,
            &format!("nixosConfigurations.\"{name}\".config.disko.devices"),
            Some(filter),
        )?
    };
    drop_internal(&mut v);
    Ok(v)
}

/// Applies `--disk NAME=DEVICE`: the disk's device and any content `device` that pointed at the
/// old path (as disko-install does).
pub fn apply_overrides(
    json: &mut serde_json::Value,
    overrides: &[(String, String)],
) -> Result<(), LoadError> {
    if overrides.is_empty() {
        return Ok(());
    }
    let devices = if json.get("disko").is_some() {
        json.get_mut("disko").and_then(|d| d.get_mut("devices"))
    } else {
        Some(json)
    };
    let disks = devices
        .and_then(|d| d.get_mut("disk"))
        .and_then(|d| d.as_object_mut());
    let Some(disks) = disks else {
        return Err(LoadError::UnknownDisk {
            name: overrides[0].0.clone(),
            known: String::new(),
        });
    };
    let known: Vec<String> = disks.keys().cloned().collect();
    for (name, device) in overrides {
        let Some(disk) = disks.get_mut(name).and_then(|d| d.as_object_mut()) else {
            return Err(LoadError::UnknownDisk {
                name: name.clone(),
                known: known.join(", "),
            });
        };
        let old = disk
            .get("device")
            .and_then(|d| d.as_str())
            .map(str::to_string);
        disk.insert("device".into(), serde_json::Value::String(device.clone()));
        if let (Some(old), Some(content)) = (old, disk.get_mut("content")) {
            if content.get("device").and_then(|d| d.as_str()) == Some(old.as_str()) {
                content["device"] = serde_json::Value::String(device.clone());
            }
        }
    }
    Ok(())
}

/// Best effort `file:line` where the attribute `path` (or its closest written parent) is.
fn locate(file: &Path, path: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    if file.extension().and_then(|e| e.to_str()) != Some("nix") {
        return None;
    }
    let line = crate::locate::line_of(&text, &split_path(path))?;
    Some(format!("{}:{line}", file.display()))
}

fn split_path(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in path.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flake_spec() {
        assert_eq!(
            LayoutSource::flake(".#web").unwrap(),
            LayoutSource::Flake {
                flake_ref: ".".into(),
                name: "web".into()
            }
        );
        assert!(LayoutSource::flake("nohash").is_err());
    }

    #[test]
    fn overrides_replace_disk_and_content_device() {
        let mut j = serde_json::json!({"disko": {"devices": {"disk": {"main": {
            "device": "/dev/vda", "content": {"type": "gpt", "device": "/dev/vda"}}}}}});
        apply_overrides(&mut j, &[("main".into(), "/dev/loop7".into())]).unwrap();
        assert_eq!(
            j["disko"]["devices"]["disk"]["main"]["device"],
            "/dev/loop7"
        );
        assert_eq!(
            j["disko"]["devices"]["disk"]["main"]["content"]["device"],
            "/dev/loop7"
        );
        let err = apply_overrides(&mut j, &[("nope".into(), "/dev/x".into())]).unwrap_err();
        assert!(err.to_string().contains("no disk `nope`"));
    }

    #[test]
    fn path_segments() {
        assert_eq!(
            split_path("nodev.\"/a.b\".fsType"),
            vec!["nodev", "/a.b", "fsType"]
        );
    }
}
