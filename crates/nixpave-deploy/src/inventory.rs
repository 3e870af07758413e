//! The fleet description: deploy-rs's `deploy` schema (plus nixpave's `tags`, `healthChecks`, `keys` and
//! `rollout`), read from one flake evaluation or from a plain JSON file, resolved into [`Host`]s.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::health::HealthCheck;
use crate::keys::KeySpec;
use crate::rollout::RolloutSettings;
use crate::select::Selection;
use crate::settings::{GeneralSettings, Settings};

/// The inventory could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The JSON does not follow the schema.
    #[error("invalid inventory: {0}")]
    Schema(String),
    /// A node or profile is missing something it needs.
    #[error("node `{node}`: {message}")]
    Node {
        /// The node's name.
        node: String,
        /// What is wrong.
        message: String,
    },
    /// Evaluating the flake failed.
    #[error("evaluating the fleet in {flake} failed")]
    Eval {
        /// The flake reference.
        flake: String,
        /// The nix error.
        #[source]
        source: nixpave_nix::invoke::NixError,
    },
    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A profile's store path: built from a derivation or given directly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum ProfilePath {
    /// A derivation evaluated from a flake (`drvPath` to build, `outPath` it produces).
    Derivation {
        /// The `.drv` to build.
        #[serde(rename = "drv", alias = "drvPath")]
        drv_path: String,
        /// The store path the build produces.
        #[serde(rename = "out")]
        out_path: String,
    },
    /// An existing store path (plain JSON inventories).
    Store(String),
}

impl ProfilePath {
    /// The store path the profile will point at.
    pub fn out_path(&self) -> &str {
        match self {
            ProfilePath::Derivation { out_path, .. } => out_path,
            ProfilePath::Store(p) => p,
        }
    }

    /// The derivation to build, if any.
    pub fn drv_path(&self) -> Option<&str> {
        match self {
            ProfilePath::Derivation { drv_path, .. } => Some(drv_path),
            ProfilePath::Store(_) => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProfile {
    path: Option<ProfilePath>,
    profile_path: Option<String>,
    #[serde(flatten)]
    general: GeneralSettings,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNode {
    hostname: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, RawProfile>,
    #[serde(default)]
    profiles_order: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    health_checks: Vec<HealthCheck>,
    #[serde(default)]
    keys: BTreeMap<String, KeySpec>,
    #[serde(flatten)]
    general: GeneralSettings,
}

#[derive(Debug, Deserialize)]
struct RawDeploy {
    #[serde(default)]
    nodes: BTreeMap<String, RawNode>,
    #[serde(default)]
    rollout: RolloutSettings,
    /// Derivations of the flake's `checks.<system>` (filled in by [`eval_apply_function`] when asked).
    #[serde(default, rename = "_nixpaveChecks")]
    checks: BTreeMap<String, String>,
    #[serde(flatten)]
    general: GeneralSettings,
}

/// One profile of one host, with its settings resolved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Profile {
    /// The profile's name (`system` for NixOS systems).
    pub name: String,
    /// What it should point at.
    pub path: ProfilePath,
    /// The nix profile on the target, e.g. `/nix/var/nix/profiles/system`.
    pub profile_path: String,
    /// Its resolved settings.
    pub settings: Settings,
}

/// One host of the fleet.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Host {
    /// The node's name in the inventory.
    pub name: String,
    /// Where ssh connects to.
    pub hostname: String,
    /// Tags for `@tag` selection.
    pub tags: Vec<String>,
    /// Profiles in activation order (`profilesOrder` first).
    pub profiles: Vec<Profile>,
    /// Node-level settings (ssh user and options).
    pub settings: Settings,
    /// Checks that must pass before the deploy is confirmed.
    pub health_checks: Vec<HealthCheck>,
    /// Secrets uploaded beside the deploy.
    #[serde(skip)]
    pub keys: Vec<(String, KeySpec)>,
}

/// A resolved fleet.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// The hosts, sorted by name.
    pub hosts: Vec<Host>,
    /// Rollout settings from the inventory (the command line overrides them).
    pub rollout: RolloutSettings,
    /// The flakes' checks to build before deploying (`checks.<system>`: name → `.drv`), as deploy-rs runs
    /// `nix flake check` unless told to skip.
    pub checks: BTreeMap<String, String>,
}

/// Default nix profile path of a profile, as deploy-rs computes it.
pub fn default_profile_path(profile: &str, user: &str) -> String {
    match (profile, user) {
        ("system", "root") => "/nix/var/nix/profiles/system".into(),
        (name, user) => format!("/nix/var/nix/profiles/per-user/{user}/{name}"),
    }
}

/// Characters the activation agent's status record and shell quoting can carry verbatim.
fn safe_word(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./+@:=".contains(&b))
}

impl Inventory {
    /// Resolves a `deploy`-shaped JSON value (as produced by [`eval_apply_function`] or written by hand),
    /// keeping only the selected nodes and profiles.
    pub fn from_json(
        value: serde_json::Value,
        selection: &Selection,
    ) -> Result<Inventory, InventoryError> {
        let raw: RawDeploy =
            serde_json::from_value(value).map_err(|e| InventoryError::Schema(e.to_string()))?;
        let mut hosts = Vec::new();
        for (name, node) in raw.nodes {
            if !selection.matches(&name, &node.tags) {
                continue;
            }
            let node_err = |message: String| InventoryError::Node {
                node: name.clone(),
                message,
            };
            let hostname = node
                .hostname
                .clone()
                .ok_or_else(|| node_err("has no `hostname`".into()))?;
            let node_general = raw.general.layer(&node.general);
            let mut order: Vec<String> = node.profiles_order.clone();
            for p in node.profiles.keys() {
                if !order.contains(p) {
                    order.push(p.clone());
                }
            }
            let mut profiles = Vec::new();
            for pname in order {
                if selection
                    .profile
                    .as_ref()
                    .is_some_and(|only| *only != pname)
                {
                    continue;
                }
                let raw_profile = node.profiles.get(&pname).ok_or_else(|| {
                    node_err(format!("`profilesOrder` names unknown profile `{pname}`"))
                })?;
                let settings = Settings::resolve(&node_general.layer(&raw_profile.general));
                let path = raw_profile
                    .path
                    .clone()
                    .ok_or_else(|| node_err(format!("profile `{pname}` has no `path`")))?;
                let profile_path = raw_profile
                    .profile_path
                    .clone()
                    .unwrap_or_else(|| default_profile_path(&pname, &settings.user));
                let out_path = path.out_path().to_string();
                for (what, word) in [
                    ("profile name", &pname),
                    ("profilePath", &profile_path),
                    ("path", &out_path),
                    ("user", &settings.user),
                    ("stateDir", &settings.state_dir),
                    ("tempPath", &settings.temp_path),
                ] {
                    if !safe_word(word) {
                        return Err(node_err(format!(
                            "{what} `{word}` has unsupported characters"
                        )));
                    }
                }
                profiles.push(Profile {
                    name: pname,
                    path,
                    profile_path,
                    settings,
                });
            }
            if profiles.is_empty() {
                if let Some(only) = &selection.profile {
                    return Err(node_err(format!("has no profile `{only}`")));
                }
                return Err(node_err("has no profiles".into()));
            }
            // One connection per host: it logs in as the profiles say (deploy-rs allows `sshUser`, `sshOpts`,
            // `sudo` and `interactiveSudo` per profile). Profiles that would log in differently are refused
            // rather than silently reached as another one's user.
            let login = |s: &Settings| {
                (
                    s.ssh_user.clone(),
                    s.ssh_opts.clone(),
                    s.sudo.clone(),
                    s.interactive_sudo,
                )
            };
            if let Some(other) = profiles
                .iter()
                .find(|p| login(&p.settings) != login(&profiles[0].settings))
            {
                return Err(node_err(format!(
                    "profiles `{}` and `{}` log in differently (sshUser, sshOpts, sudo or interactiveSudo); \
                     nixpave reaches a host through one connection: set these at the node level",
                    profiles[0].name, other.name
                )));
            }
            hosts.push(Host {
                // The connection and push settings of the host are its (first) profile's: node and top
                // levels, overridden where that profile says so.
                settings: profiles[0].settings.clone(),
                name,
                hostname,
                tags: node.tags,
                profiles,
                health_checks: node.health_checks,
                keys: node.keys.into_iter().collect(),
            });
        }
        Ok(Inventory {
            hosts,
            rollout: raw.rollout,
            checks: raw.checks,
        })
    }

    /// Adds the hosts and checks of another flake's inventory (several flakes in one run). A node name that
    /// both define is an error: which one to deploy would be a guess.
    pub fn merge(&mut self, other: Inventory) -> Result<(), InventoryError> {
        for host in other.hosts {
            if self.hosts.iter().any(|h| h.name == host.name) {
                return Err(InventoryError::Node {
                    node: host.name,
                    message: "is defined by more than one of the flakes given".into(),
                });
            }
            self.hosts.push(host);
        }
        self.checks.extend(other.checks);
        self.rollout = self.rollout.overridden_by(&other.rollout);
        Ok(())
    }

    /// Reads a plain JSON inventory file (same schema, profile paths are store paths).
    pub fn from_file(
        path: &std::path::Path,
        selection: &Selection,
    ) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let value = serde_json::from_str(&text)
            .map_err(|e| InventoryError::Schema(format!("{}: {e}", path.display())))?;
        Self::from_json(value, selection)
    }

    /// Evaluates the selected nodes of a flake in ONE `nix eval` and resolves them.
    pub fn from_flake(
        flake: &str,
        selection: &Selection,
        opts: &nixpave_nix::invoke::NixOptions,
    ) -> Result<Inventory, InventoryError> {
        Self::load_flake(flake, selection, false, opts, &|_, _| {})
    }

    /// [`from_flake`](Self::from_flake), also collecting the derivations of the flake's
    /// `checks.<current system>` in the same evaluation when `checks` is true. At most
    /// [`eval_node_limit`] nodes are evaluated by one nix process; `progress` hears how far a chunked
    /// evaluation is ([`EvalProgress`]).
    pub fn load_flake(
        flake: &str,
        selection: &Selection,
        checks: bool,
        opts: &nixpave_nix::invoke::NixOptions,
        progress: EvalProgress<'_>,
    ) -> Result<Inventory, InventoryError> {
        Self::load_flake_chunked(
            flake,
            selection,
            checks,
            eval_node_limit(None),
            opts,
            progress,
        )
    }

    /// [`load_flake`](Self::load_flake) with at most `limit` nodes per `nix eval` (colmena's
    /// `--eval-node-limit`): a fleet up to `limit` nodes is one evaluation; a larger one is first listed
    /// (names only: no system is evaluated), then evaluated `limit` nodes at a time, one process after the
    /// other, so the evaluator's memory stays that of `limit` systems whatever the fleet's size.
    /// `progress` hears (nodes evaluated, nodes listed) once the nodes are listed and after every chunk; a
    /// fleet evaluated in one go reports nothing.
    pub fn load_flake_chunked(
        flake: &str,
        selection: &Selection,
        checks: bool,
        limit: usize,
        opts: &nixpave_nix::invoke::NixOptions,
        progress: EvalProgress<'_>,
    ) -> Result<Inventory, InventoryError> {
        let listed = match Self::list_flake(flake, selection, checks, limit, opts)? {
            Listing::Evaluated(inventory) => return Ok(inventory),
            Listing::Listed(listed) => listed,
        };
        progress(0, listed.names.len());
        let mut all = listed.top.clone();
        for chunk in listed.chunks() {
            all.hosts.extend(listed.eval_chunk(chunk, opts)?.hosts);
            progress(all.hosts.len(), listed.names.len());
        }
        Ok(all)
    }

    /// The first step of [`load_flake_chunked`](Self::load_flake_chunked): a fleet up to `limit` nodes is
    /// evaluated whole; a larger one is only listed (its node names, top-level settings and checks), for
    /// evaluating it chunk by chunk ([`Listed::eval_chunk`]), e.g. while the chunks before are deployed.
    pub fn list_flake(
        flake: &str,
        selection: &Selection,
        checks: bool,
        limit: usize,
        opts: &nixpave_nix::invoke::NixOptions,
    ) -> Result<Listing, InventoryError> {
        let limit = limit.max(1);
        let mut first = eval_flake(
            flake,
            &eval_chunk_function(selection, checks, None, limit),
            opts,
        )?;
        let Some(names) = first
            .as_object_mut()
            .and_then(|o| o.remove("_nixpaveNames"))
            .and_then(|n| n.as_array().cloned())
        else {
            return Ok(Listing::Evaluated(Self::from_json(first, selection)?));
        };
        let names = names
            .iter()
            .filter_map(|n| n.as_str().map(String::from))
            .collect();
        Ok(Listing::Listed(Listed {
            flake: flake.to_string(),
            selection: selection.clone(),
            names,
            limit,
            top: Self::from_json(first, selection)?,
        }))
    }
}

/// What [`Inventory::list_flake`] found.
#[derive(Debug)]
pub enum Listing {
    /// The fleet was small enough to evaluate in one go.
    Evaluated(Inventory),
    /// The fleet is larger than one evaluation may be: only listed.
    Listed(Listed),
}

/// A flake's fleet, listed but not evaluated: what its chunks are and what applies to all of them.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The flake.
    pub flake: String,
    /// Which nodes and profiles are selected.
    pub selection: Selection,
    /// The selected nodes, in inventory order.
    pub names: Vec<String>,
    /// Nodes per evaluation.
    pub limit: usize,
    /// The top-level settings: rollout and checks, no hosts.
    pub top: Inventory,
}

impl Listed {
    /// The node names of each evaluation, in order.
    pub fn chunks(&self) -> std::slice::Chunks<'_, String> {
        self.names.chunks(self.limit.max(1))
    }

    /// Evaluates the nodes `chunk` (one of [`chunks`](Self::chunks)) in one `nix eval`.
    pub fn eval_chunk(
        &self,
        chunk: &[String],
        opts: &nixpave_nix::invoke::NixOptions,
    ) -> Result<Inventory, InventoryError> {
        let function = eval_chunk_function(&self.selection, false, Some(chunk), self.limit);
        Inventory::from_json(eval_flake(&self.flake, &function, opts)?, &self.selection)
    }
}

fn eval_flake(
    flake: &str,
    function: &str,
    opts: &nixpave_nix::invoke::NixOptions,
) -> Result<serde_json::Value, InventoryError> {
    crate::timing::timed("-", "eval", || {
        nixpave_nix::flake::eval_flake_json(flake, function, opts)
    })
    .map_err(|source| InventoryError::Eval {
        flake: flake.to_string(),
        source,
    })
}

/// Hears how far a chunked evaluation is: (nodes evaluated, nodes listed), e.g. to show "evaluating 100/200
/// nodes".
pub type EvalProgress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// The nix function (flake outputs → JSON) that extracts the selected nodes with their profiles' drvPath and
/// outPath. Nodes without `profiles` get `nixosConfigurations.<n>.config.system.build.toplevel`; a flake without
/// `deploy` deploys every `nixosConfigurations` entry to the host of the same name, as root (colmena's default
/// `targetUser`). Key files become plain
/// strings (`toString`) so their contents are never copied into the store.
///
/// With `checks`, the result also has `_nixpaveChecks`: the drvPath of every `checks.<currentSystem>` entry.
pub fn eval_apply_function(selection: &Selection, checks: bool) -> String {
    eval_chunk_function(selection, checks, None, usize::MAX)
}

/// Nodes one `nix eval` evaluates at most: `requested` (`--eval-node-limit`, as colmena's), else
/// `NIXPAVE_EVAL_NODE_LIMIT`, else colmena's heuristic: the memory available now, less 1 GiB for the
/// system, at 512 MiB per node (at least one node).
pub fn eval_node_limit(requested: Option<usize>) -> usize {
    if let Some(limit) = requested.or_else(|| {
        std::env::var("NIXPAVE_EVAL_NODE_LIMIT")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
    }) {
        return limit.max(1);
    }
    let available_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    (available_kib.saturating_sub(1024 * 1024) / (512 * 1024)).max(1) as usize
}

/// [`eval_apply_function`] for the nodes `only` (all selected ones when `None`); when more than `limit` nodes
/// are selected and `only` is `None`, the function returns the top-level settings, the checks and
/// `_nixpaveNames = [ … ]` but no node (no system is forced), for evaluating them in chunks.
pub fn eval_chunk_function(
    selection: &Selection,
    checks: bool,
    only: Option<&[String]>,
    limit: usize,
) -> String {
    let selectors = nixpave_nix::eval::nix_string(&selection.to_nix_json().to_string());
    let checks = if checks { "true" } else { "false" };
    let only = match only {
        Some(names) => {
            nixpave_nix::eval::nix_string(&serde_json::Value::from(names.to_vec()).to_string())
        }
        None => "\"null\"".to_string(),
    };
    let limit = limit.min(1 << 30);
    format!(
        r#"flake:
let
  sel = builtins.fromJSON {selectors};
  confs = flake.nixosConfigurations or {{ }};
  deploy = flake.deploy or {{ nodes = builtins.mapAttrs (n: _: {{ hostname = n; sshUser = "root"; }}) confs; }};
  selected = name: node: sel == [ ] || builtins.any (s:
    (s.node == null || builtins.match s.node name != null)
    && (s.tag == null || builtins.any (t: builtins.match s.tag t != null) (node.tags or [ ]))) sel;
  # toJSON turns any set with an outPath into that string: use other names.
  pathInfo = p: if builtins.isAttrs p then {{ drv = p.drvPath; out = p.outPath; }} else toString p;
  keyInfo = k: k // (if k ? keyFile then {{ keyFile = toString k.keyFile; }} else {{ }});
  toplevel = name: (confs.${{name}} or (throw "node ${{name}} has no profiles and there is no nixosConfigurations.${{name}}")).config.system.build.toplevel;
  nodeInfo = name: node: node // {{
    profiles = if node ? profiles
      then builtins.mapAttrs (_: p: p // {{ path = pathInfo p.path; }}) node.profiles
      else {{ system = {{ path = pathInfo (toplevel name); }}; }};
  }} // (if node ? keys then {{ keys = builtins.mapAttrs (_: keyInfo) node.keys; }} else {{ }});
  only = builtins.fromJSON {only};
  allNames = builtins.filter (n: selected n deploy.nodes.${{n}}) (builtins.attrNames deploy.nodes);
  names = if only == null then allNames else builtins.filter (n: builtins.elem n only) allNames;
  checks = if {checks}
    then builtins.mapAttrs (_: c: c.drvPath) (flake.checks.${{builtins.currentSystem}} or {{ }})
    else {{ }};
  top = (builtins.removeAttrs deploy [ "nodes" ]) // {{ _nixpaveChecks = checks; }};
in if only == null && builtins.length names > {limit} then top // {{ _nixpaveNames = names; }}
else top // {{
  nodes = builtins.listToAttrs (map (n: {{ name = n; value = nodeInfo n deploy.nodes.${{n}}; }}) names);
}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> serde_json::Value {
        serde_json::json!({
            "sshUser": "deploy",
            "confirmTimeout": 20,
            "sshOpts": ["-o", "ConnectTimeout=5"],
            "rollout": { "batch": "50%", "maxFailures": 1 },
            "nodes": {
                "web1": {
                    "hostname": "10.0.0.1",
                    "tags": ["web"],
                    "sshOpts": ["-p", "2222"],
                    "profilesOrder": ["system"],
                    "profiles": {
                        "app": { "path": "/nix/store/aaa-app", "user": "app", "magicRollback": false },
                        "system": { "path": { "drv": "/nix/store/sss.drv", "out": "/nix/store/sss-system" },
                                    "confirmTimeout": 5 }
                    },
                    "healthChecks": [ { "type": "http", "url": "http://10.0.0.1/health", "body": "ok" } ],
                    "keys": { "token": { "text": "never-in-a-snapshot", "permissions": "0640" } }
                },
                "db1": { "hostname": "db1.example", "tags": ["db"],
                         "profiles": { "system": { "path": "/nix/store/ddd-db", "profilePath": "/nix/var/nix/profiles/custom" } } }
            }
        })
    }

    #[test]
    fn resolves_the_deploy_rs_schema() {
        let inv = Inventory::from_json(fleet(), &Selection::default()).expect("valid");
        insta::assert_json_snapshot!(inv.hosts);
        assert_eq!(inv.rollout.max_failures, Some(1));
    }

    #[test]
    fn profile_level_login_settings_reach_the_connection() {
        let inv = Inventory::from_json(
            serde_json::json!({"sshOpts": ["-A"], "nodes": {"a": {"hostname": "h", "sshUser": "node",
                "profiles": {"system": {"path": "/nix/store/x", "sshUser": "prof",
                                        "sshOpts": ["-p", "2222"], "fastConnection": true}}}}}),
            &Selection::default(),
        )
        .expect("valid");
        let host = &inv.hosts[0];
        assert_eq!(host.settings.ssh_user.as_deref(), Some("prof"));
        assert_eq!(host.settings.ssh_opts, ["-p", "2222", "-A"]);
        assert!(host.settings.fast_connection);
        let split = serde_json::json!({"nodes": {"a": {"hostname": "h", "profiles": {
            "system": {"path": "/nix/store/x", "sshUser": "root"},
            "app": {"path": "/nix/store/y", "sshUser": "app"}}}}});
        let e = Inventory::from_json(split, &Selection::default()).unwrap_err();
        assert!(e.to_string().contains("log in differently"), "{e}");
    }

    #[test]
    fn rejects_what_deploy_rs_would_reject() {
        let no_host =
            serde_json::json!({"nodes": {"a": {"profiles": {"system": {"path": "/nix/store/x"}}}}});
        let e = Inventory::from_json(no_host, &Selection::default()).unwrap_err();
        assert_eq!(e.to_string(), "node `a`: has no `hostname`");
        let bad_order = serde_json::json!({"nodes": {"a": {"hostname": "h", "profilesOrder": ["nope"],
            "profiles": {"system": {"path": "/nix/store/x"}}}}});
        let e = Inventory::from_json(bad_order, &Selection::default()).unwrap_err();
        assert!(e.to_string().contains("unknown profile `nope`"), "{e}");
        let quote = serde_json::json!({"nodes": {"a": {"hostname": "h",
            "profiles": {"system": {"path": "/nix/store/x", "profilePath": "/a\"b"}}}}});
        assert!(Inventory::from_json(quote, &Selection::default()).is_err());
        let spaced_user = serde_json::json!({"nodes": {"a": {"hostname": "h", "user": "a b",
            "profiles": {"system": {"path": "/nix/store/x"}}}}});
        let e = Inventory::from_json(spaced_user, &Selection::default()).unwrap_err();
        assert!(e.to_string().contains("unsupported characters"), "{e}");
    }
}
