//! Command-line overrides of deploy-rs's general settings (they beat every inventory level).

use crate::inventory::Host;
use crate::settings::{GeneralSettings, DEFAULT_STATE_DIR};

/// Applies every setting `over` has to all hosts and profiles. Non-empty `sshOpts` replace the inventory's, as
/// deploy-rs's `--ssh-opts` does.
pub fn apply_overrides(hosts: &mut [Host], over: &GeneralSettings) {
    for host in hosts {
        apply(&mut host.settings, over);
        for p in &mut host.profiles {
            apply(&mut p.settings, over);
        }
    }
}

/// Lab hosts share the deployer's /var: keep their status records in their private /nix instead, unless the
/// inventory chose a directory.
pub fn use_private_state_dir(hosts: &mut [Host], dir: &str) {
    for host in hosts {
        for s in std::iter::once(&mut host.settings)
            .chain(host.profiles.iter_mut().map(|p| &mut p.settings))
        {
            if s.state_dir == DEFAULT_STATE_DIR {
                s.state_dir = dir.to_string();
            }
        }
    }
}

fn apply(s: &mut crate::settings::Settings, o: &GeneralSettings) {
    if let Some(v) = &o.ssh_user {
        s.ssh_user = Some(v.clone());
    }
    if let Some(v) = &o.user {
        s.user = v.clone();
    }
    if !o.ssh_opts.is_empty() {
        s.ssh_opts = o.ssh_opts.clone();
    }
    if let Some(v) = &o.sudo {
        s.sudo = v.clone();
    }
    if let Some(v) = o.interactive_sudo {
        s.interactive_sudo = v;
    }
    if let Some(v) = o.confirm_timeout {
        s.confirm_timeout = v;
    }
    if let Some(v) = o.activation_timeout {
        s.activation_timeout = v;
    }
    if let Some(v) = o.auto_rollback {
        s.auto_rollback = v;
    }
    if let Some(v) = o.magic_rollback {
        s.magic_rollback = v;
    }
    if let Some(v) = o.remote_build {
        s.remote_build = v;
    }
    if let Some(v) = o.fast_connection {
        s.fast_connection = v;
    }
    if let Some(v) = &o.temp_path {
        s.temp_path = v.clone();
    }
    if let Some(v) = &o.state_dir {
        s.state_dir = v.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Inventory, Selection};

    #[test]
    fn overrides_beat_profile_settings() {
        let mut inv = Inventory::from_json(
            serde_json::json!({"nodes": {"a": {"hostname": "h", "confirmTimeout": 9,
                "profiles": {"system": {"path": "/nix/store/x", "confirmTimeout": 7}}}}}),
            &Selection::default(),
        )
        .expect("valid");
        apply_overrides(
            &mut inv.hosts,
            &GeneralSettings {
                confirm_timeout: Some(3),
                ..Default::default()
            },
        );
        assert_eq!(inv.hosts[0].profiles[0].settings.confirm_timeout, 3);
        use_private_state_dir(&mut inv.hosts, "/nix/var/nixpave/deploy");
        assert_eq!(
            inv.hosts[0].profiles[0].settings.state_dir,
            "/nix/var/nixpave/deploy"
        );
    }
}
