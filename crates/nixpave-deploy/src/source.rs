//! Where a fleet's hosts come from: an inventory file (told apart by its shape) or the flakes, each narrowed
//! by its `#node.profile` fragment. The CLI only renders the errors.

use std::path::{Path, PathBuf};

use nixpave_nix::flake::FlakeTarget;
use nixpave_nix::invoke::NixOptions;
use nixpave_remote::InventoryHost;

use crate::inventory::{EvalProgress, Inventory, InventoryError};
use crate::select::{FragmentError, Selection};

/// What an inventory file holds.
#[derive(Debug)]
pub enum InventoryFile {
    /// deploy-rs-shaped (`{"nodes": …}`, store paths instead of derivations): replaces the flakes.
    Nodes(serde_json::Value),
    /// A nixpave host inventory (`{"hosts": […]}`): addresses, ports and keys of node hostnames.
    Hosts(Vec<InventoryHost>),
}

/// The fleet's hosts could not be found.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The inventory file cannot be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The inventory file is neither shape.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde found wrong.
        source: serde_json::Error,
    },
    /// A `FLAKE#fragment` cannot be read.
    #[error(transparent)]
    Fragment(#[from] FragmentError),
    /// The inventory or flake is invalid, or evaluating it failed.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// Nothing is selected.
    #[error("no host matches the selection (check --on and FLAKE#node)")]
    NoHost,
}

impl SourceError {
    /// Whether the user's input is wrong (everything but a failed evaluation).
    pub fn is_usage(&self) -> bool {
        !matches!(self, SourceError::Inventory(InventoryError::Eval { .. }))
    }
}

impl InventoryFile {
    /// Tells the shapes apart: an object with `nodes` is deploy-rs-shaped, anything else must be a host
    /// inventory.
    pub fn parse(value: serde_json::Value) -> Result<InventoryFile, serde_json::Error> {
        if value.get("nodes").is_some() {
            return Ok(InventoryFile::Nodes(value));
        }
        let inv: nixpave_remote::Inventory = serde_json::from_value(value)?;
        Ok(InventoryFile::Hosts(inv.hosts))
    }

    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<InventoryFile, SourceError> {
        let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parse = |source| SourceError::Parse {
            path: path.to_path_buf(),
            source,
        };
        InventoryFile::parse(serde_json::from_str(&text).map_err(parse)?).map_err(parse)
    }
}

/// The hosts `on` selects: from `nodes` (a deploy-rs-shaped inventory, read with the first flake's fragment)
/// if given, else from every flake (default `.`), merged. `checks` also evaluates the flakes' checks;
/// `limit` caps the nodes of one `nix eval` ([`eval_node_limit`]); `progress` hears how far a flake
/// evaluated in chunks is.
///
/// [`eval_node_limit`]: crate::inventory::eval_node_limit
pub fn load_selected(
    flakes: &[&str],
    on: &Selection,
    nodes: Option<serde_json::Value>,
    checks: bool,
    nix: &NixOptions,
    limit: Option<usize>,
    progress: EvalProgress<'_>,
) -> Result<Inventory, SourceError> {
    let flakes = if flakes.is_empty() {
        &["."][..]
    } else {
        flakes
    };
    let inventory = match nodes {
        Some(v) => {
            let target = FlakeTarget::parse(flakes[0]);
            Inventory::from_json(v, &selection_for(on, &target)?)?
        }
        None => {
            let mut all = Inventory::default();
            for flake in flakes {
                let target = FlakeTarget::parse(flake);
                let selection = selection_for(on, &target)?;
                all.merge(Inventory::load_flake_chunked(
                    &target.flake,
                    &selection,
                    checks,
                    crate::inventory::eval_node_limit(limit),
                    nix,
                    progress,
                )?)?;
            }
            all
        }
    };
    if inventory.hosts.is_empty() {
        return Err(SourceError::NoHost);
    }
    Ok(inventory)
}

/// What [`list_selected`] found: the hosts, or a large flake only listed.
#[derive(Debug)]
pub enum Selected {
    /// Every selected host, evaluated.
    Hosts(Inventory),
    /// One flake larger than one evaluation: listed, to be evaluated chunk by chunk as it deploys
    /// ([`crate::pipeline::deploy_listed`]).
    Listed(crate::inventory::Listed),
}

/// [`load_selected`], except that ONE flake (no inventory file) larger than [`eval_node_limit`] nodes is only
/// listed. Several flakes and inventory files are evaluated whole.
///
/// [`eval_node_limit`]: crate::inventory::eval_node_limit
pub fn list_selected(
    flakes: &[&str],
    on: &Selection,
    nodes: Option<serde_json::Value>,
    checks: bool,
    nix: &NixOptions,
    limit: Option<usize>,
    progress: EvalProgress<'_>,
) -> Result<Selected, SourceError> {
    if nodes.is_some() || flakes.len() > 1 {
        return load_selected(flakes, on, nodes, checks, nix, limit, progress).map(Selected::Hosts);
    }
    let target = FlakeTarget::parse(flakes.first().copied().unwrap_or("."));
    let selection = selection_for(on, &target)?;
    let limit = crate::inventory::eval_node_limit(limit);
    match Inventory::list_flake(&target.flake, &selection, checks, limit, nix)? {
        crate::inventory::Listing::Listed(listed) => Ok(Selected::Listed(listed)),
        crate::inventory::Listing::Evaluated(inventory) if inventory.hosts.is_empty() => {
            Err(SourceError::NoHost)
        }
        crate::inventory::Listing::Evaluated(inventory) => Ok(Selected::Hosts(inventory)),
    }
}

/// The hosts a flake argument selects: `on` plus its `#node.profile` fragment.
pub fn selection_for(on: &Selection, target: &FlakeTarget) -> Result<Selection, FragmentError> {
    match &target.fragment {
        Some(fragment) => on.clone().with_fragment(fragment),
        None => Ok(on.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> serde_json::Value {
        let nodes: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .map(|n| {
                let node = serde_json::json!({"hostname": n, "profiles": {"system": {"path": "/nix/store/x"}}});
                (n.to_string(), node)
            })
            .collect();
        serde_json::json!({ "nodes": nodes })
    }

    #[test]
    fn an_object_with_nodes_is_deploy_rs_shaped() {
        assert!(matches!(
            InventoryFile::parse(nodes(&["a"])),
            Ok(InventoryFile::Nodes(_))
        ));
    }

    #[test]
    fn an_object_with_hosts_is_a_host_inventory() {
        let file =
            InventoryFile::parse(serde_json::json!({"hosts": [{"name": "a", "host": "10.0.0.1"}]}));
        match file {
            Ok(InventoryFile::Hosts(hosts)) => assert_eq!(hosts.len(), 1),
            other => panic!("expected a host inventory, got {other:?}"),
        }
    }

    #[test]
    fn anything_else_is_a_parse_error() {
        assert!(InventoryFile::parse(serde_json::json!({"hosts": 3})).is_err());
    }

    #[test]
    fn reading_a_missing_file_says_which() {
        let err = InventoryFile::read(Path::new("/nonexistent/inv.json")).unwrap_err();
        assert!(matches!(err, SourceError::Read { .. }));
        assert!(err.is_usage());
    }

    #[test]
    fn the_requested_eval_node_limit_wins_and_is_at_least_one() {
        assert_eq!(crate::inventory::eval_node_limit(Some(7)), 7);
        assert_eq!(crate::inventory::eval_node_limit(Some(0)), 1);
        assert!(crate::inventory::eval_node_limit(None) >= 1);
    }

    #[test]
    fn nodes_are_selected_by_on_or_the_first_flakes_fragment() {
        let on = Selection::parse_on(&["b*".to_string()]);
        let inv = load_selected(
            &[],
            &on,
            Some(nodes(&["a", "b1", "b2"])),
            false,
            &NixOptions::default(),
            None,
            &|_, _| {},
        )
        .expect("valid");
        let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["b1", "b2"]);
        // A fragment adds its node to the selectors (they are alternatives).
        let inv = load_selected(
            &[".#b2"],
            &Selection::default(),
            Some(nodes(&["a", "b1", "b2"])),
            false,
            &NixOptions::default(),
            None,
            &|_, _| {},
        )
        .expect("valid");
        assert_eq!(inv.hosts.len(), 1);
        assert_eq!(inv.hosts[0].name, "b2");
    }

    #[test]
    fn an_empty_selection_and_a_bad_fragment_are_usage_errors() {
        let on = Selection::parse_on(&["zzz".to_string()]);
        let err = load_selected(
            &[],
            &on,
            Some(nodes(&["a"])),
            false,
            &NixOptions::default(),
            None,
            &|_, _| {},
        )
        .unwrap_err();
        assert!(matches!(err, SourceError::NoHost) && err.is_usage());
        let err = load_selected(
            &[".#\"a"],
            &Selection::default(),
            Some(nodes(&["a"])),
            false,
            &NixOptions::default(),
            None,
            &|_, _| {},
        )
        .unwrap_err();
        assert!(matches!(err, SourceError::Fragment(_)) && err.is_usage());
    }
}
