//! deploy-rs's general settings and their precedence (profile > node > top; `sshOpts` concatenate, the
//! profile's first, as deploy-rs appends the outer levels' lists to the inner one's).

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
    /// Ask for the sudo password once and feed it to sudo on stdin.
    pub interactive_sudo: Option<bool>,
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
            // The inner level's options first: ssh keeps the first value of an option, so the most
            // specific level wins there too.
            ssh_opts: inner
                .ssh_opts
                .iter()
                .chain(&self.ssh_opts)
                .cloned()
                .collect(),
            sudo: pick(&self.sudo, &inner.sudo),
            interactive_sudo: pick(&self.interactive_sudo, &inner.interactive_sudo),
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
    /// User ssh logs in as, when the inventory names one. Unset means what it means in deploy-rs: the local
    /// user (see [`Settings::login_user`]), unless a host inventory (a lab's, say) knows the host's user.
    pub ssh_user: Option<String>,
    /// User the profile belongs to.
    pub user: String,
    /// Extra ssh options.
    pub ssh_opts: Vec<String>,
    /// Privilege escalation command when `user` differs from `ssh_user`.
    pub sudo: String,
    /// Ask for the sudo password (once for the whole run) instead of requiring password-less sudo.
    pub interactive_sudo: bool,
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
        Settings {
            user: g
                .user
                .clone()
                .or_else(|| g.ssh_user.clone())
                .unwrap_or_else(local_user),
            ssh_user: g.ssh_user.clone(),
            ssh_opts: g.ssh_opts.clone(),
            sudo: g.sudo.clone().unwrap_or_else(|| "sudo -u".into()),
            interactive_sudo: g.interactive_sudo.unwrap_or(false),
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

impl Settings {
    /// The user ssh logs in as: `sshUser`, else the host inventory's user, else the local user.
    pub fn login_user(&self, inventory_user: Option<&str>) -> String {
        self.ssh_user
            .clone()
            .or_else(|| inventory_user.map(str::to_string))
            .unwrap_or_else(local_user)
    }
}

/// The name of the user running nixpave (deploy-rs's default `sshUser`): `id -un`, asked once.
pub fn local_user() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::process::Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|n| !n.is_empty())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "root".into())
    })
    .clone()
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
        let profile = GeneralSettings {
            ssh_opts: vec!["-p".into(), "22".into()],
            ..profile
        };
        let s = Settings::resolve(&top.layer(&node).layer(&profile));
        assert_eq!(s.confirm_timeout, 5);
        // deploy-rs: profile ++ node ++ top; ssh takes the first `-p`, the profile's.
        assert_eq!(s.ssh_opts, ["-p", "22", "-p", "2222", "-A"]);
        assert!(!s.magic_rollback);
        assert!(s.auto_rollback);
        assert_eq!(s.activation_timeout, 240);
        assert_eq!(s.ssh_user, None);
        assert_eq!(s.user, local_user());
        assert_eq!(s.login_user(Some("admin")), "admin");
        let named = Settings::resolve(&GeneralSettings {
            ssh_user: Some("deploy".into()),
            ..Default::default()
        });
        assert_eq!(named.user, "deploy");
        assert_eq!(named.login_user(Some("admin")), "deploy");
    }
}
