//! deploy-rs's general settings and their precedence (profile > node > top; `sshOpts` concatenate).

use serde::{Deserialize, Serialize};

/// Settings that may stand at the top, node and profile level of a deploy-rs `deploy` output.
/// Every field is optional; [`GeneralSettings::layer`] combines levels and [`Settings::resolve`] applies defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GeneralSettings {
    /// User ssh logs in as.
    pub ssh_user: Option<String>,
    /// User the profile belongs to (commands run through `sudo` when it differs from `ssh_user`).
    pub user: Option<String>,
    /// Extra ssh options; concatenated across levels instead of overridden.
    #[serde(default)]
    pub ssh_opts: Vec<String>,
    /// Privilege escalation command (deploy-rs default `sudo -u`).
    pub sudo: Option<String>,
    /// Seconds the target waits for the deployer's confirmation.
    pub confirm_timeout: Option<u64>,
    /// Seconds an activation may take.
    pub activation_timeout: Option<u64>,
    /// Roll back when activation fails.
    pub auto_rollback: Option<bool>,
    /// Roll back unless the deployer confirms through a new connection.
    pub magic_rollback: Option<bool>,
    /// Build on the target instead of locally.
    pub remote_build: Option<bool>,
    /// Skip `--substitute-on-destination` (the link to the host is fast).
    pub fast_connection: Option<bool>,
    /// Directory for the activation agent on the target.
    pub temp_path: Option<String>,
    /// nixpave: directory of the status records on the target.
    pub state_dir: Option<String>,
}

impl GeneralSettings {
    /// `self` overridden by the more specific `inner` level.
    pub fn layer(&self, inner: &GeneralSettings) -> GeneralSettings {
        fn pick<T: Clone>(outer: &Option<T>, inner: &Option<T>) -> Option<T> {
            inner.clone().or_else(|| outer.clone())
        }
        GeneralSettings {
            ssh_user: pick(&self.ssh_user, &inner.ssh_user),
            user: pick(&self.user, &inner.user),
            ssh_opts: self
                .ssh_opts
                .iter()
                .chain(&inner.ssh_opts)
                .cloned()
                .collect(),
            sudo: pick(&self.sudo, &inner.sudo),
            confirm_timeout: pick(&self.confirm_timeout, &inner.confirm_timeout),
            activation_timeout: pick(&self.activation_timeout, &inner.activation_timeout),
            auto_rollback: pick(&self.auto_rollback, &inner.auto_rollback),
            magic_rollback: pick(&self.magic_rollback, &inner.magic_rollback),
            remote_build: pick(&self.remote_build, &inner.remote_build),
            fast_connection: pick(&self.fast_connection, &inner.fast_connection),
            temp_path: pick(&self.temp_path, &inner.temp_path),
            state_dir: pick(&self.state_dir, &inner.state_dir),
        }
    }
}

/// Fully resolved settings of one profile on one host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// User ssh logs in as (default: the local user; nixpave uses `root`).
    pub ssh_user: String,
    /// User the profile belongs to.
    pub user: String,
    /// Extra ssh options.
    pub ssh_opts: Vec<String>,
    /// Privilege escalation command when `user` differs from `ssh_user`.
    pub sudo: String,
    /// Seconds the target waits for confirmation.
    pub confirm_timeout: u64,
    /// Seconds an activation may take.
    pub activation_timeout: u64,
    /// Roll back on failed activation.
    pub auto_rollback: bool,
    /// Roll back without confirmation through a new connection.
    pub magic_rollback: bool,
    /// Build on the target.
    pub remote_build: bool,
    /// No `--substitute-on-destination`.
    pub fast_connection: bool,
    /// Directory for the agent on the target.
    pub temp_path: String,
    /// Directory for status records on the target.
    pub state_dir: String,
}

/// Default directory of status records on targets.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/nixpave/deploy";

impl Settings {
    /// Applies deploy-rs's defaults to whatever the levels left unset.
    pub fn resolve(g: &GeneralSettings) -> Settings {
        let ssh_user = g.ssh_user.clone().unwrap_or_else(|| "root".into());
        Settings {
            user: g.user.clone().unwrap_or_else(|| ssh_user.clone()),
            ssh_user,
            ssh_opts: g.ssh_opts.clone(),
            sudo: g.sudo.clone().unwrap_or_else(|| "sudo -u".into()),
            confirm_timeout: g.confirm_timeout.unwrap_or(30),
            activation_timeout: g.activation_timeout.unwrap_or(240),
            auto_rollback: g.auto_rollback.unwrap_or(true),
            magic_rollback: g.magic_rollback.unwrap_or(true),
            remote_build: g.remote_build.unwrap_or(false),
            fast_connection: g.fast_connection.unwrap_or(false),
            temp_path: g.temp_path.clone().unwrap_or_else(|| "/tmp".into()),
            state_dir: g
                .state_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_level_wins_and_ssh_opts_concatenate() {
        let top = GeneralSettings {
            confirm_timeout: Some(30),
            ssh_opts: vec!["-A".into()],
            magic_rollback: Some(false),
            ..Default::default()
        };
        let node = GeneralSettings {
            confirm_timeout: Some(10),
            ssh_opts: vec!["-p".into(), "2222".into()],
            ..Default::default()
        };
        let profile = GeneralSettings {
            confirm_timeout: Some(5),
            ..Default::default()
        };
        let s = Settings::resolve(&top.layer(&node).layer(&profile));
        assert_eq!(s.confirm_timeout, 5);
        assert_eq!(s.ssh_opts, ["-A", "-p", "2222"]);
        assert!(!s.magic_rollback);
        assert!(s.auto_rollback);
        assert_eq!(s.activation_timeout, 240);
        assert_eq!(s.user, "root");
    }
}
