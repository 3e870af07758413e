//! Contents of the files a lab writes (pure functions of the lab state).

use std::fmt::Write as _;

use nixpave_remote::{Inventory, InventoryHost};

use super::state::{HostState, LabState};

/// `sshd_config` of a lab host: root login by key only, verbose log (so tests can count
/// handshakes), plus the key exchange each handshake negotiated (`LogVerbose` of the one debug line that
/// names it, in OpenSSH 8.5 and later); sessions per connection stay at sshd's default (10), like real servers.
pub fn sshd_config(host: &HostState) -> String {
    // NixOS-shaped hosts: NixOS's session PATH for every session, as NixOS gives root.
    let path = match host.flavour {
        super::Flavour::Nixos => format!(" PATH={}", super::SESSION_PATH),
        super::Flavour::Debian => String::new(),
    };
    format!(
        "# nixpave lab host {name}\n\
         Port {port}\n\
         ListenAddress {address}\n\
         HostKey /etc/ssh/ssh_host_ed25519_key\n\
         AuthorizedKeysFile /etc/ssh/authorized_keys/%u\n\
         PermitRootLogin prohibit-password\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         StrictModes no\n\
         LogLevel VERBOSE\n\
         LogVerbose {kex_line}\n\
         MaxStartups 100:30:200\n\
         PidFile {pid}\n\
         SetEnv NIX_CONF_DIR={root}/etc-nix{path}\n\
         Subsystem sftp internal-sftp\n",
        name = host.name,
        port = host.port,
        address = host.address,
        pid = host.pid_file().display(),
        root = host.root.display(),
        kex_line = KEX_LOG_PATTERN,
    )
}

/// What `LogVerbose` matches: OpenSSH's `kex: algorithm: NAME` line (file, function, any line number).
const KEX_LOG_PATTERN: &str = "kex.c:choose_kex():*";

/// The key exchange algorithms an sshd log of a lab host shows, one per handshake, in order.
pub fn key_exchanges(sshd_log: &str) -> Vec<String> {
    sshd_log
        .lines()
        .filter_map(|l| {
            l.split_once("kex: algorithm: ")?
                .1
                .split_whitespace()
                .next()
        })
        .map(str::to_string)
        .collect()
}

/// `config` (an sshd_config) naming the helper programs an sshd that is not this machine's runs:
/// OpenSSH 9.8 and later start `sshd-session` (10.0 also `sshd-auth`) by a path compiled in, unless
/// `SshdSessionPath` (`SshdAuthPath`) names another. `helpers` pairs each option with its program.
pub fn sshd_config_with_helpers(config: &str, helpers: &[(&str, std::path::PathBuf)]) -> String {
    let mut out = config.to_string();
    for (option, path) in helpers {
        let _ = writeln!(out, "{option} {}", path.display());
    }
    out
}

/// `config` (an sshd_config) with `dirs` first on the `PATH` of every session, so the host runs those
/// programs (a chosen nix, a chosen sshd for `sshd -t`): `SetEnv` overrides sshd's default `PATH`, but
/// sshd only honours the first `SetEnv` line, and the first value of a variable in it, so the directories
/// go in front of that line's `PATH` (or a `PATH` joins that line, or a new line, with root's default).
pub fn sshd_config_with_path_first(config: &str, dirs: &[&std::path::Path]) -> String {
    let first: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let first = first.join(":");
    let mut done = false;
    let mut out = String::with_capacity(config.len() + first.len() + 64);
    for line in config.lines() {
        if !done && line.split_whitespace().next() == Some("SetEnv") {
            done = true;
            if let Some((before, rest)) = line.split_once(" PATH=") {
                let _ = writeln!(out, "{before} PATH={first}:{rest}");
                continue;
            }
            let _ = writeln!(out, "{line} PATH={first}:{ROOT_PATH}");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !done {
        let _ = writeln!(out, "SetEnv PATH={first}:{ROOT_PATH}");
    }
    out
}

/// sshd's default `PATH` for root on Debian.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Lines appended to the host's private copies of `/etc/passwd`, `/etc/group`, `/etc/shadow`
/// and its sudoers file, for `users` (uids from 2001). `password_hashes` pairs with `users`
/// (`None`: no password, sudo without one).
pub fn user_lines(users: &[super::LabUser], password_hashes: &[Option<String>]) -> UserLines {
    let mut lines = UserLines::default();
    for (i, (user, hash)) in users.iter().zip(password_hashes).enumerate() {
        let id = 2001 + i;
        let name = &user.name;
        let _ = writeln!(
            lines.passwd,
            "{name}:x:{id}:{id}:nixpave lab user:/home/{name}:/bin/sh"
        );
        let _ = writeln!(lines.group, "{name}:x:{id}:");
        let _ = writeln!(
            lines.shadow,
            "{name}:{}:19000:0:99999:7:::",
            hash.as_deref().unwrap_or("*")
        );
        let rule = if hash.is_some() {
            "ALL"
        } else {
            "NOPASSWD: ALL"
        };
        let _ = writeln!(lines.sudoers, "{name} ALL=(ALL:ALL) {rule}");
    }
    lines
}

/// See [`user_lines`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UserLines {
    /// For /etc/passwd.
    pub passwd: String,
    /// For /etc/group.
    pub group: String,
    /// For /etc/shadow.
    pub shadow: String,
    /// A sudoers.d file.
    pub sudoers: String,
}

/// `nix.conf` without a build-users group, binary cache or sandbox; nix 2.8 and current Nix (2.26)
/// both read it.
pub fn nix_conf() -> &'static str {
    "build-users-group =\n\
     substituters =\n\
     sandbox = false\n\
     experimental-features = nix-command flakes\n"
}

/// The inventory other nixpave commands read.
pub fn inventory(state: &LabState) -> Inventory {
    Inventory {
        hosts: state
            .hosts
            .iter()
            .map(|h| InventoryHost {
                name: h.name.clone(),
                host: h.address.clone(),
                port: Some(h.port),
                user: Some("root".into()),
                identity_file: Some(state.identity_file.clone()),
                known_hosts: Some(state.known_hosts.clone()),
            })
            .collect(),
    }
}

/// The inventory as JSON, with the lab's extra fields (netns, disks) next to the standard ones.
pub fn inventory_json(state: &LabState) -> serde_json::Value {
    let hosts: Vec<serde_json::Value> = inventory(state)
        .hosts
        .into_iter()
        .zip(&state.hosts)
        .map(|(entry, host)| {
            let mut value = serde_json::to_value(entry).unwrap_or_default();
            if let Some(map) = value.as_object_mut() {
                map.insert("netns".into(), host.netns.clone().into());
                map.insert(
                    "disks".into(),
                    host.disks.iter().map(|d| d.device.clone()).collect(),
                );
            }
            value
        })
        .collect();
    serde_json::json!({ "lab": state.name, "hosts": hosts })
}

/// An ssh_config snippet (`ssh -F FILE host1`, or `Include FILE` from ~/.ssh/config).
pub fn ssh_config(state: &LabState) -> String {
    let mut out = format!("# nixpave lab {}\n", state.name);
    for h in &state.hosts {
        let _ = write!(
            out,
            "Host {name} {lab}-{name}\n  HostName {addr}\n  Port {port}\n  User root\n  \
             IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  \
             StrictHostKeyChecking yes\n",
            name = h.name,
            lab = state.name,
            addr = h.address,
            port = h.port,
            key = state.identity_file.display(),
            known = state.known_hosts.display(),
        );
    }
    out
}

/// One known_hosts line (`address key-type key`) for a host's public key file contents.
pub fn known_hosts_line(host: &HostState, public_key: &str) -> String {
    let mut words = public_key.split_whitespace();
    let kind = words.next().unwrap_or_default();
    let key = words.next().unwrap_or_default();
    let pattern = if host.port == 22 {
        host.address.clone()
    } else {
        format!("[{}]:{}", host.address, host.port)
    };
    format!("{pattern} {kind} {key}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::state::LoopDisk;

    fn state() -> LabState {
        LabState {
            name: "demo".into(),
            dir: "/var/lib/nixpave/lab/demo".into(),
            subnet: 42,
            bridge: Some("nplab42br".into()),
            identity_file: "/var/lib/nixpave/lab/demo/id_ed25519".into(),
            known_hosts: "/var/lib/nixpave/lab/demo/known_hosts".into(),
            hosts: vec![HostState {
                name: "host1".into(),
                netns: "nplab42-host1".into(),
                veth: "nplab42v1".into(),
                address: "10.77.42.11".into(),
                port: 22,
                root: "/var/lib/nixpave/lab/demo/hosts/host1".into(),
                sshd_pid: Some(1234),
                flavour: super::super::Flavour::Debian,
                disks: vec![LoopDisk {
                    device: "/dev/loop9".into(),
                    file: "/var/lib/nixpave/lab/demo/hosts/host1/disk1.img".into(),
                    size: 1 << 30,
                }],
            }],
        }
    }

    #[test]
    fn sshd_config_is_key_only_and_verbose() {
        let text = sshd_config(&state().hosts[0]);
        for line in [
            "ListenAddress 10.77.42.11",
            "PasswordAuthentication no",
            "LogLevel VERBOSE",
            "PidFile /var/lib/nixpave/lab/demo/hosts/host1/sshd.pid",
            "SetEnv NIX_CONF_DIR=/var/lib/nixpave/lab/demo/hosts/host1/etc-nix",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }

    #[test]
    fn nix_bin_joins_the_first_setenv_line() {
        let bin = std::path::Path::new("/opt/nix/bin");
        let text = sshd_config_with_path_first(&sshd_config(&state().hosts[0]), &[bin]);
        let setenv: Vec<&str> = text.lines().filter(|l| l.starts_with("SetEnv")).collect();
        assert_eq!(
            setenv,
            [
                "SetEnv NIX_CONF_DIR=/var/lib/nixpave/lab/demo/hosts/host1/etc-nix \
              PATH=/opt/nix/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            ]
        );
        assert_eq!(
            sshd_config_with_path_first("Port 22\n", &[bin]),
            "Port 22\nSetEnv PATH=/opt/nix/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        );
        // A PATH already on the line (NixOS-shaped hosts) gets the directories in front.
        let sbin = std::path::Path::new("/opt/ssh/sbin");
        assert_eq!(
            sshd_config_with_path_first("SetEnv A=1 PATH=/run/x/bin B=2\n", &[bin, sbin]),
            "SetEnv A=1 PATH=/opt/nix/bin:/opt/ssh/sbin:/run/x/bin B=2\n"
        );
    }

    #[test]
    fn another_sshd_gets_its_helpers_and_logs_its_key_exchanges() {
        let sbin = std::path::Path::new("/opt/ssh/sbin");
        let text = sshd_config_with_helpers(
            &sshd_config(&state().hosts[0]),
            &[
                ("SshdSessionPath", sbin.join("sshd-session")),
                ("SshdAuthPath", sbin.join("sshd-auth")),
            ],
        );
        assert!(
            text.ends_with(
                "SshdSessionPath /opt/ssh/sbin/sshd-session\nSshdAuthPath /opt/ssh/sbin/sshd-auth\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\nLogVerbose kex.c:choose_kex():*\n"),
            "{text}"
        );
        // As OpenSSH 10.0 (sshd-auth) and 9.2 log them.
        let log = "Server listening on 10.77.42.11 port 22.\n\
            debug1: kex.c:choose_kex():867 (bin=sshd-auth, pid=25001): kex: algorithm: mlkem768x25519-sha256 [preauth]\n\
            Accepted publickey for root from 10.77.42.1 port 4242 ssh2: ED25519 SHA256:x\n\
            debug1: kex.c:choose_kex():929 (pid=25590): kex: algorithm: sntrup761x25519-sha512 [preauth]\n";
        assert_eq!(
            key_exchanges(log),
            ["mlkem768x25519-sha256", "sntrup761x25519-sha512"]
        );
    }

    #[test]
    fn inventory_has_lab_extras_and_parses_as_an_inventory() {
        let json = inventory_json(&state());
        assert_eq!(json["hosts"][0]["disks"][0], "/dev/loop9");
        let parsed: Inventory = serde_json::from_value(json).expect("standard inventory");
        assert_eq!(parsed, inventory(&state()));
        assert_eq!(parsed.hosts[0].host, "10.77.42.11");
    }

    #[test]
    fn users_get_passwd_shadow_and_sudo_lines() {
        let users = [
            crate::hosts::LabUser {
                name: "alice".into(),
                sudo_password: None,
            },
            crate::hosts::LabUser {
                name: "bob".into(),
                sudo_password: Some("pw".into()),
            },
        ];
        let lines = user_lines(&users, &[None, Some("$6$salt$hash".into())]);
        assert_eq!(
            lines.passwd,
            "alice:x:2001:2001:nixpave lab user:/home/alice:/bin/sh\n\
             bob:x:2002:2002:nixpave lab user:/home/bob:/bin/sh\n"
        );
        assert!(lines.shadow.contains("alice:*:") && lines.shadow.contains("bob:$6$salt$hash:"));
        assert_eq!(
            lines.sudoers,
            "alice ALL=(ALL:ALL) NOPASSWD: ALL\nbob ALL=(ALL:ALL) ALL\n"
        );
    }

    #[test]
    fn ssh_config_and_known_hosts() {
        let cfg = ssh_config(&state());
        assert!(
            cfg.contains("Host host1 demo-host1\n  HostName 10.77.42.11\n"),
            "{cfg}"
        );
        let mut host = state().hosts[0].clone();
        assert_eq!(
            known_hosts_line(&host, "ssh-ed25519 AAAAC3 root@x\n"),
            "10.77.42.11 ssh-ed25519 AAAAC3\n"
        );
        host.port = 2222;
        assert!(known_hosts_line(&host, "ssh-ed25519 K").starts_with("[10.77.42.11]:2222 "));
    }
}
