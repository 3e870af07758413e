//! Inventories (named hosts with their login settings) and resolving command-line target
//! words (`user@host:port`, `NAME`, `GROUP`, `GROUP:NAME`) into hosts. Where groups come from
//! (the labs' directory layout) is the caller's knowledge, behind [`HostGroups`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ssh::SshOptions;
use crate::target::{Target, TargetParseError};

/// A set of named hosts, as written by `nixpave lab up` (`inventory.json`).
///
/// Unknown fields are ignored, so writers may add their own (the lab adds netns and disks).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inventory {
    /// The hosts, in order.
    pub hosts: Vec<InventoryHost>,
}

/// One host of an inventory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InventoryHost {
    /// Short unique name (`host1`).
    pub name: String,
    /// Address or DNS name to connect to.
    pub host: String,
    /// SSH port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Login user.
    #[serde(default)]
    pub user: Option<String>,
    /// Private key to log in with.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// known_hosts file holding this host's key.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
}

/// Failures reading an inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read.
    #[error("cannot read inventory {path}: {source}")]
    Read {
        /// The inventory file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid inventory.
    #[error("invalid inventory {path}: {source}")]
    Parse {
        /// The inventory file.
        path: PathBuf,
        /// What serde said.
        source: serde_json::Error,
    },
}

impl Inventory {
    /// Reads an inventory JSON file.
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| InventoryError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The host called `name`.
    pub fn get(&self, name: &str) -> Option<&InventoryHost> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

impl InventoryHost {
    /// Where to connect.
    pub fn target(&self) -> Target {
        Target {
            user: self.user.clone(),
            host: self.host.clone(),
            port: self.port,
        }
    }
}

/// A host a target word resolved to: a name for messages, where to connect, and the login
/// settings its inventory brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedHost {
    /// Name for messages and output prefixes.
    pub name: String,
    /// Where to connect.
    pub target: Target,
    /// Key from the inventory, if any.
    pub identity_file: Option<PathBuf>,
    /// known_hosts from the inventory, if any.
    pub known_hosts: Option<PathBuf>,
}

impl ResolvedHost {
    /// `base` with this host's name and inventory settings filled in; settings already given
    /// in `base` (from the command line) win.
    pub fn ssh_options(&self, base: &SshOptions) -> SshOptions {
        let mut options = base.clone();
        options.name = Some(self.name.clone());
        if options.identity_file.is_none() {
            options.identity_file = self.identity_file.clone();
        }
        if options.known_hosts.is_none() {
            options.known_hosts = self.known_hosts.clone();
        }
        options
    }

    fn from_inventory(host: &InventoryHost) -> Self {
        ResolvedHost {
            name: host.name.clone(),
            target: host.target(),
            identity_file: host.identity_file.clone(),
            known_hosts: host.known_hosts.clone(),
        }
    }
}

/// Why a target word could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Not an inventory name and not a valid `user@host:port`.
    #[error(transparent)]
    Target(#[from] TargetParseError),
    /// An inventory could not be read.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// `LAB:NAME` or `NAME` names no host of the inventory.
    #[error("no host `{name}` in {inventory} (it has: {available})")]
    UnknownHost {
        /// The missing name.
        name: String,
        /// Which inventory was searched.
        inventory: String,
        /// The names it does have.
        available: String,
    },
    /// Nothing to act on.
    #[error("no targets given")]
    Empty,
}

/// Named groups of hosts a target word can name (`GROUP`, `GROUP:HOST`): the labs, provided by
/// nixpave-lab, which knows where they live.
pub trait HostGroups: std::fmt::Debug + Send + Sync {
    /// The inventory of the group called `name` and where it was read from (for messages);
    /// `Ok(None)` when no group has that name.
    fn group(&self, name: &str) -> Result<Option<(Inventory, String)>, InventoryError>;
}

/// Turns command-line target words into hosts.
///
/// A word is, in this order: `all` or a host name of the `--inventory` file; `GROUP` (every host)
/// or `GROUP:NAME` for a group of [`HostGroups`] (a lab); else `[user@]host[:port]`. Words may be
/// comma-separated lists.
#[derive(Debug, Clone, Default)]
pub struct TargetResolver {
    /// The inventory given with `--inventory`, if any.
    pub inventory: Option<Inventory>,
    /// Named groups of hosts (the labs), if any.
    pub groups: Option<Arc<dyn HostGroups>>,
}

impl TargetResolver {
    /// Resolves all `words`, keeping their order and dropping duplicates.
    pub fn resolve(&self, words: &[String]) -> Result<Vec<ResolvedHost>, ResolveError> {
        let mut hosts: Vec<ResolvedHost> = Vec::new();
        for word in words
            .iter()
            .flat_map(|w| w.split(','))
            .filter(|w| !w.is_empty())
        {
            for host in self.resolve_word(word)? {
                if !hosts
                    .iter()
                    .any(|h| h.name == host.name && h.target == host.target)
                {
                    hosts.push(host);
                }
            }
        }
        if hosts.is_empty() {
            return Err(ResolveError::Empty);
        }
        Ok(hosts)
    }

    fn resolve_word(&self, word: &str) -> Result<Vec<ResolvedHost>, ResolveError> {
        if let Some(inventory) = &self.inventory {
            if word == "all" {
                return Ok(inventory
                    .hosts
                    .iter()
                    .map(ResolvedHost::from_inventory)
                    .collect());
            }
            if let Some(host) = inventory.get(word) {
                return Ok(vec![ResolvedHost::from_inventory(host)]);
            }
        }
        if let Some(found) = self.resolve_group_word(word)? {
            return Ok(found);
        }
        let target: Target = word.parse()?;
        Ok(vec![ResolvedHost {
            name: target.to_string(),
            target,
            identity_file: None,
            known_hosts: None,
        }])
    }

    fn resolve_group_word(&self, word: &str) -> Result<Option<Vec<ResolvedHost>>, ResolveError> {
        let Some(groups) = &self.groups else {
            return Ok(None);
        };
        let (group, host) = match word.split_once(':') {
            // `host:22` is a port, not a group's host.
            Some((_, rest)) if rest.parse::<u16>().is_ok() => return Ok(None),
            Some((group, host)) => (group, Some(host)),
            None => (word, None),
        };
        let Some((inventory, path)) = groups.group(group)? else {
            return Ok(None);
        };
        match host {
            None => Ok(Some(
                inventory
                    .hosts
                    .iter()
                    .map(ResolvedHost::from_inventory)
                    .collect(),
            )),
            Some(name) => match inventory.get(name) {
                Some(h) => Ok(Some(vec![ResolvedHost::from_inventory(h)])),
                None => Err(ResolveError::UnknownHost {
                    name: name.to_string(),
                    inventory: path,
                    available: inventory
                        .hosts
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, addr: &str) -> InventoryHost {
        InventoryHost {
            name: name.into(),
            host: addr.into(),
            port: Some(22),
            user: Some("root".into()),
            identity_file: Some("/lab/id".into()),
            known_hosts: Some("/lab/known_hosts".into()),
        }
    }

    /// One group, `lab`, held in memory (the real labs are nixpave-lab's `Labs`).
    #[derive(Debug)]
    struct OneLab;
    impl HostGroups for OneLab {
        fn group(&self, name: &str) -> Result<Option<(Inventory, String)>, InventoryError> {
            Ok((name == "lab").then(|| {
                let hosts = vec![host("host1", "10.77.5.10"), host("host2", "10.77.5.11")];
                (Inventory { hosts }, "lab/inventory.json".to_string())
            }))
        }
    }

    fn labs() -> Option<Arc<dyn HostGroups>> {
        Some(Arc::new(OneLab))
    }

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn resolves_labs_hosts_and_plain_targets() {
        let r = TargetResolver {
            inventory: None,
            groups: labs(),
        };
        let all = r.resolve(&words(&["lab"])).expect("lab");
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].target.host, "10.77.5.11");
        assert_eq!(
            all[0].known_hosts.as_deref(),
            Some(Path::new("/lab/known_hosts"))
        );
        let one = r.resolve(&words(&["lab:host2"])).expect("lab:host2");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].name, "host2");
        let plain = r
            .resolve(&words(&["alice@example.org:2222"]))
            .expect("plain");
        assert_eq!(plain[0].target.port, Some(2222));
        assert_eq!(plain[0].name, "alice@example.org:2222");
        // host:port is never taken for a lab host.
        let port = r.resolve(&words(&["lab:22"])).expect("port");
        assert_eq!(port[0].target.host, "lab");
        // Lists and duplicates.
        let list = r
            .resolve(&words(&["lab:host1,lab", "lab:host2"]))
            .expect("list");
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn unknown_lab_host_names_the_available_ones() {
        let r = TargetResolver {
            inventory: None,
            groups: labs(),
        };
        let err = r.resolve(&words(&["lab:host9"])).unwrap_err().to_string();
        assert!(
            err.contains("host9") && err.contains("host1, host2"),
            "{err}"
        );
        assert!(matches!(r.resolve(&[]), Err(ResolveError::Empty)));
    }

    #[test]
    fn explicit_inventory_names_and_all() {
        let r = TargetResolver {
            inventory: Some(Inventory {
                hosts: vec![host("web", "10.0.0.1"), host("db", "10.0.0.2")],
            }),
            groups: None,
        };
        assert_eq!(r.resolve(&words(&["all"])).expect("all").len(), 2);
        assert_eq!(
            r.resolve(&words(&["db"])).expect("db")[0].target.host,
            "10.0.0.2"
        );
    }

    #[test]
    fn inventory_settings_do_not_override_the_command_line() {
        let resolved = ResolvedHost::from_inventory(&host("h", "10.0.0.1"));
        let cli = SshOptions {
            known_hosts: Some("/cli/known".into()),
            ..SshOptions::default()
        };
        let opts = resolved.ssh_options(&cli);
        assert_eq!(opts.known_hosts.as_deref(), Some(Path::new("/cli/known")));
        assert_eq!(opts.identity_file.as_deref(), Some(Path::new("/lab/id")));
        assert_eq!(opts.name.as_deref(), Some("h"));
    }
}
