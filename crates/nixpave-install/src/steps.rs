//! The commands of the disk, install and reboot phases, each a small function over a
//! [`Transport`]. Argument vectors only: nothing secret is ever put into an argv.

use std::path::{Path, PathBuf};
use std::process::Command;

use nixpave_remote::{
    shell_join, shell_quote, CommandOutput, Transport, TransportError, UploadSpec,
};

/// A step failed: what, the command, and why.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The transport could not run the command.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The command ran and failed.
    #[error("{what}: `{command}` exited with {status:?}: {stderr}")]
    Failed {
        /// What the step was doing.
        what: String,
        /// The command line (never contains secrets).
        command: String,
        /// Exit status.
        status: Option<i32>,
        /// Tail of stderr.
        stderr: String,
    },
    /// A local file could not be read.
    #[error("{what}: {source}")]
    Local {
        /// What was being read.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The command line for messages: inline scripts (`sh -c SCRIPT …`) are shown as `sh -c <script> …`.
pub fn shown(argv: &[String]) -> String {
    match argv {
        [sh, c, script, rest @ ..] if sh == "sh" && c == "-c" && script.contains('\n') => {
            let mut v = vec!["sh".to_string(), "-c".into(), "<script>".into()];
            v.extend(rest.iter().cloned());
            shell_join(&v)
        }
        _ => shell_join(argv),
    }
}

fn check(what: &str, argv: &[String], out: CommandOutput) -> Result<CommandOutput, StepError> {
    if out.success() {
        Ok(out)
    } else {
        Err(StepError::Failed {
            what: what.to_string(),
            command: shown(argv),
            status: out.status,
            stderr: out.stderr_tail(15),
        })
    }
}

/// Runs `argv` on the target and fails unless it exits 0.
pub fn run(
    t: &dyn Transport,
    what: &str,
    argv: Vec<String>,
    stdin: Option<&[u8]>,
) -> Result<CommandOutput, StepError> {
    let out = t.run(&argv, stdin)?;
    check(what, &argv, out)
}

fn sh(script: String, args: &[&str]) -> Vec<String> {
    let mut v = vec!["sh".to_string(), "-c".into(), script, "nixpave".into()];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// A disk-encryption key: where it must be on the installer, and the local file it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionKey {
    /// Absolute path on the installer (should be in RAM, e.g. under /tmp or /run).
    pub remote: PathBuf,
    /// The local file.
    pub local: PathBuf,
}

/// Writes the keys to the target with mode 0600 (owner root); the contents travel on stdin.
/// Returns the filesystem type each key landed on, so the caller can warn when it is not RAM.
pub fn upload_keys(
    t: &dyn Transport,
    keys: &[EncryptionKey],
) -> Result<Vec<(PathBuf, String)>, StepError> {
    let mut landed = Vec::new();
    for key in keys {
        let contents = std::fs::read(&key.local).map_err(|source| StepError::Local {
            what: format!("reading disk-encryption key {}", key.local.display()),
            source,
        })?;
        let parent = key
            .remote
            .parent()
            .unwrap_or(Path::new("/"))
            .display()
            .to_string();
        run(
            t,
            "creating the key's directory",
            vec![
                "mkdir".into(),
                "-p".into(),
                "-m".into(),
                "0700".into(),
                parent,
            ],
            None,
        )?;
        t.upload(
            &contents,
            &UploadSpec {
                dest: key.remote.clone(),
                mode: 0o600,
                owner: Some("0:0".into()),
            },
        )?;
        let fs = run(
            t,
            "checking where the key landed",
            vec![
                "stat".into(),
                "-f".into(),
                "-c".into(),
                "%T".into(),
                key.remote.display().to_string(),
            ],
            None,
        )?;
        landed.push((key.remote.clone(), fs.stdout_str().trim().to_string()));
    }
    Ok(landed)
}

/// True for filesystems that live in RAM (`stat -f -c %T` spelling).
pub fn is_ram_fs(fs: &str) -> bool {
    matches!(fs, "tmpfs" | "ramfs" | "rootfs")
}

/// True when something is mounted at `root` on the target.
pub fn is_mounted(t: &dyn Transport, root: &Path) -> Result<bool, StepError> {
    let out = t.run(
        &["mountpoint".into(), "-q".into(), root.display().to_string()],
        None,
    )?;
    Ok(out.success())
}

/// How the closure gets into the target's /mnt store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySpec {
    /// The store URL (from [`nixpave_remote::Connection::store_url`]).
    pub store_url: String,
    /// Environment for nix (`NIX_SSHOPTS`).
    pub env: Vec<(String, String)>,
    /// Let the target fetch what it can from its substituters.
    pub substitute_on_destination: bool,
    /// Extra `nix` options (e.g. `--option` pairs) in argv form.
    pub nix_args: Vec<String>,
}

/// What the installer's nix substitutes from, besides its own defaults: the flake's `nixConfig` and the
/// user's `--option` substituters and the keys that sign them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubstituterSettings {
    /// Binary cache URLs.
    pub substituters: Vec<String>,
    /// `NAME:BASE64` public keys.
    pub trusted_public_keys: Vec<String>,
}

impl SubstituterSettings {
    /// Collects the substituter settings from nix settings pairs (`nixConfig` entries first, then
    /// `--option NAME VALUE`): `substituters`, `trusted-public-keys` and their `extra-` forms, values
    /// split at white space, each URL or key once, in order. Other settings are not the installer's.
    pub fn from_settings<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut s = SubstituterSettings::default();
        for (name, value) in pairs {
            let list = match name.trim_start_matches("extra-") {
                "substituters" => &mut s.substituters,
                "trusted-public-keys" => &mut s.trusted_public_keys,
                _ => continue,
            };
            for word in value.split_whitespace() {
                if !list.iter().any(|w| w == word) {
                    list.push(word.to_string());
                }
            }
        }
        s
    }

    /// Nothing to add.
    pub fn is_empty(&self) -> bool {
        self.substituters.is_empty() && self.trusted_public_keys.is_empty()
    }

    /// The `nix.conf` lines (pure): added to the installer's own settings (`extra-`), so its default
    /// cache stays.
    pub fn nix_conf(&self) -> String {
        let mut text =
            String::from("# written by nixpave install: the flake's and --option substituters\n");
        if !self.substituters.is_empty() {
            text.push_str(&format!(
                "extra-substituters = {}\n",
                self.substituters.join(" ")
            ));
        }
        if !self.trusted_public_keys.is_empty() {
            text.push_str(&format!(
                "extra-trusted-public-keys = {}\n",
                self.trusted_public_keys.join(" ")
            ));
        }
        text
    }
}

/// Writes `settings` as the installing user's own nix configuration on the target
/// (`${XDG_CONFIG_HOME:-$HOME/.config}/nix/nix.conf`, in the installer's RAM): read by the nix that
/// `nix copy --substitute-on-destination` starts there and by `nixos-install`'s nix, also on a real NixOS
/// installer whose `/etc/nix/nix.conf` is a read-only store path. Returns the file's path.
pub fn write_substituters(
    t: &dyn Transport,
    settings: &SubstituterSettings,
) -> Result<String, StepError> {
    let out = run(
        t,
        "writing the installer's nix substituters",
        sh(
            "set -e; d=${XDG_CONFIG_HOME:-$HOME/.config}/nix; mkdir -p \"$d\"; cat > \"$d/nix.conf\"; echo \"$d/nix.conf\"".into(),
            &[],
        ),
        Some(settings.nix_conf().as_bytes()),
    )?;
    Ok(out.stdout_str().trim().to_string())
}

/// The local `nix copy` argv (pure).
pub fn copy_argv(spec: &CopySpec, path: &str) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "nix".into(),
        "--extra-experimental-features".into(),
        "nix-command".into(),
        "copy".into(),
        "--no-check-sigs".into(),
        "--to".into(),
        spec.store_url.clone(),
    ];
    if spec.substitute_on_destination {
        v.push("--substitute-on-destination".into());
    }
    v.extend(spec.nix_args.iter().cloned());
    v.push(path.into());
    v
}

/// Copies a closure from this machine's store to the target (runs `nix copy` locally).
pub fn copy_closure(spec: &CopySpec, path: &str) -> Result<(), StepError> {
    let argv = copy_argv(spec, path);
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .output()
        .map_err(|source| StepError::Local {
            what: "running nix copy".into(),
            source,
        })?;
    check(
        "copying the system closure",
        &argv,
        CommandOutput {
            status: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        },
    )
    .map(|_| ())
}

/// The system profile path inside `root`.
pub fn profile_path(root: &Path) -> PathBuf {
    root.join("nix/var/nix/profiles/system")
}

/// Points the system profile in `root` at `toplevel` (a new generation; re-running is harmless).
pub fn set_profile(t: &dyn Transport, root: &Path, toplevel: &str) -> Result<(), StepError> {
    let argv = vec![
        "nix-env".into(),
        "--store".into(),
        root.display().to_string(),
        "-p".into(),
        profile_path(root).display().to_string(),
        "--set".into(),
        toplevel.into(),
    ];
    run(t, "setting the system profile", argv, None).map(|_| ())
}

/// What nixos-install and nixos-enter do, for installers without them (run in a private mount
/// namespace by [`install_system_own`], so every mount below disappears with it):
/// `/mnt/etc/NIXOS` (switch-to-configuration refuses a root without it), `/etc/mtab` → `/proc/mounts`
/// (GRUB needs it), /dev, /proc, /sys and a fresh /run in the root, the installer's resolv.conf
/// bound over the new system's for the chroot only (the file is left as it was), the system's
/// `activate` in the chroot (`IN_NIXOS_ENTER=1`, failures tolerated as nixos-enter does), the root
/// rbound onto its own `/mnt` (for `boot.initrd.secrets`), then `switch-to-configuration boot` with
/// `NIXOS_INSTALL_BOOTLOADER=1`.
pub const INSTALL_SCRIPT: &str = r#"
set -eu
root=$1
sys=/nix/var/nix/profiles/system
# The profile's links are absolute inside the new root: follow them there, not in the installer.
link=$(readlink "$root$sys") || { echo "$root$sys does not exist: the system profile was not set" >&2; exit 2; }
case "$link" in /*) ;; *) link=$(dirname "$sys")/$link ;; esac
top=$(readlink "$root$link" || echo "$link")
[ -x "$root$top/bin/switch-to-configuration" ] || { echo "$top/bin/switch-to-configuration is missing or not executable in $root: the system closure does not look like a NixOS system" >&2; exit 2; }
mount --make-rprivate /
mkdir -p -m 0755 "$root/etc" "$root/dev" "$root/proc" "$root/sys" "$root/run" "$root/mnt"
mkdir -p -m 1777 "$root/tmp"
touch "$root/etc/NIXOS"
ln -sfn /proc/mounts "$root/etc/mtab"
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
ln -sfn "$top" "$root/run/current-system"
created=
if [ -e /etc/resolv.conf ]; then
  rc=$root/etc/resolv.conf
  if [ -L "$rc" ]; then l=$(readlink "$rc"); case "$l" in /*) rc=$root$l ;; *) rc=$root/etc/$l ;; esac; fi
  if [ ! -e "$rc" ]; then mkdir -p "$(dirname "$rc")"; : > "$rc"; created=$rc; fi
  mount --bind /etc/resolv.conf "$rc" || echo "could not set up resolv.conf in the chroot" >&2
fi
if [ -x "$root$top/activate" ]; then
  IN_NIXOS_ENTER=1 chroot "$root" "$top/activate" >&2 || echo "the activation script reported errors (ignored, as nixos-enter does)" >&2
fi
mount --rbind "$root" "$root/mnt"
mount --make-rslave "$root/mnt"
rc_status=0
NIXOS_INSTALL_BOOTLOADER=1 chroot "$root" "$top/bin/switch-to-configuration" boot || rc_status=$?
umount -R "$root/mnt" 2>/dev/null || umount -Rl "$root/mnt" 2>/dev/null || true
if [ -n "$created" ]; then umount "$created" 2>/dev/null || true; rm -f "$created"; fi
exit $rc_status
"#;

/// How the system gets installed into the mounted root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallMethod {
    /// The installer's own `nixos-install` (every real NixOS installer has it).
    NixosInstall,
    /// nixpave's own steps ([`INSTALL_SCRIPT`]), for installers without `nixos-install`.
    Own,
}

/// Which method the target supports (`nixos-install` on its `PATH`).
pub fn install_method(t: &dyn Transport) -> Result<InstallMethod, StepError> {
    let out = t.run(&sh("command -v nixos-install >/dev/null".into(), &[]), None)?;
    Ok(if out.success() {
        InstallMethod::NixosInstall
    } else {
        InstallMethod::Own
    })
}

/// The `nixos-install` argv for a closure already in `root`'s store (pure), as nixos-anywhere runs it.
pub fn nixos_install_argv(root: &Path, toplevel: &str) -> Vec<String> {
    vec![
        "nixos-install".into(),
        "--system".into(),
        toplevel.into(),
        "--no-root-passwd".into(),
        "--no-channel-copy".into(),
        "--root".into(),
        root.display().to_string(),
    ]
}

/// Installs with the installer's `nixos-install` (sets the profile, activates, installs the bootloader).
pub fn install_system_nixos_install(
    t: &dyn Transport,
    root: &Path,
    toplevel: &str,
) -> Result<String, StepError> {
    let out = run(
        t,
        "installing the system with nixos-install",
        nixos_install_argv(root, toplevel),
        None,
    )?;
    Ok(format!(
        "{}{}",
        out.stdout_str(),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Installs the system the way nixos-install does, by itself ([`INSTALL_SCRIPT`] in a private
/// mount namespace); the system profile must be set already.
pub fn install_system_own(t: &dyn Transport, root: &Path) -> Result<String, StepError> {
    let mut argv: Vec<String> = vec![
        "unshare".into(),
        "--mount".into(),
        "--fork".into(),
        "--".into(),
    ];
    argv.extend(sh(INSTALL_SCRIPT.into(), &[&root.display().to_string()]));
    let out = run(
        t,
        "installing the system (activate, then switch-to-configuration boot, in a chroot)",
        argv,
        None,
    )?;
    Ok(out.stdout_str())
}

/// The top-level entries of an extra-files directory, sorted (so `.` itself is never in the
/// archive and the mode of the target's root stays as it is).
pub fn extra_entries(dir: &Path) -> Result<Vec<String>, StepError> {
    let rd = std::fs::read_dir(dir).map_err(|source| StepError::Local {
        what: format!("reading --extra-files directory {}", dir.display()),
        source,
    })?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|source| StepError::Local {
            what: format!("reading --extra-files directory {}", dir.display()),
            source,
        })?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Copies the contents of `dir` into `root` keeping modes; everything is owned by root
/// (`--no-same-owner`) until [`chown`] says otherwise.
pub fn copy_extra_files(t: &dyn Transport, dir: &Path, root: &Path) -> Result<usize, StepError> {
    let entries = extra_entries(dir)?;
    if entries.is_empty() {
        return Ok(0);
    }
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(dir)
        .args(["--numeric-owner", "-cpf", "-", "--"])
        .args(&entries);
    let out = tar.output().map_err(|source| StepError::Local {
        what: "running tar for --extra-files".into(),
        source,
    })?;
    if !out.status.success() {
        return Err(StepError::Failed {
            what: format!("packing --extra-files {}", dir.display()),
            command: "tar -cpf - …".into(),
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let root_s = root.display().to_string();
    run(
        t,
        "unpacking --extra-files",
        vec![
            "tar".into(),
            "-C".into(),
            root_s,
            "-xpf".into(),
            "-".into(),
            "--no-same-owner".into(),
        ],
        Some(&out.stdout),
    )?;
    Ok(entries.len())
}

/// A `--chown PATH UID:GID` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chown {
    /// Absolute path in the installed system.
    pub path: String,
    /// `UID:GID` (numeric or names known to the installer).
    pub owner: String,
}

/// Applies the `--chown` pairs (recursively) inside `root`.
pub fn chown(t: &dyn Transport, root: &Path, pairs: &[Chown]) -> Result<(), StepError> {
    for c in pairs {
        let target = root.join(c.path.trim_start_matches('/'));
        run(
            t,
            &format!("--chown {} {}", c.path, c.owner),
            vec![
                "chown".into(),
                "-R".into(),
                c.owner.clone(),
                target.display().to_string(),
            ],
            None,
        )?;
    }
    Ok(())
}

/// The host keys the new system brings itself (from `--extra-files` or the flake), as
/// `known_hosts`-style public keys (`TYPE BASE64`), read from `root/etc/ssh/ssh_host_*_key.pub`.
pub fn own_host_keys(t: &dyn Transport, root: &Path) -> Result<Vec<String>, StepError> {
    let out = run(
        t,
        "looking for the new system's own host keys",
        sh(
            "for k in \"$1\"/etc/ssh/ssh_host_*_key; do [ -f \"$k\" ] || continue; if [ -f \"$k.pub\" ]; then cut -d' ' -f1,2 \"$k.pub\"; else ssh-keygen -y -f \"$k\" | cut -d' ' -f1,2; fi; done".into(),
            &[&root.display().to_string()],
        ),
        None,
    )?;
    Ok(out
        .stdout_str()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Copies the installer's ssh host keys into `root` so the installed system keeps them.
pub fn copy_host_keys(t: &dyn Transport, root: &Path) -> Result<(), StepError> {
    let script = "set -e; mkdir -p -m 0755 \"$1/etc/ssh\"; for k in /etc/ssh/ssh_host_*; do [ -e \"$k\" ] && cp -p \"$k\" \"$1/etc/ssh/\"; done; chmod 600 \"$1\"/etc/ssh/ssh_host_*_key";
    run(
        t,
        "copying the ssh host keys",
        sh(script.into(), &[&root.display().to_string()]),
        None,
    )
    .map(|_| ())
}

/// The reboot script: unmount `root`, turn swap off, export ZFS pools, then reboot detached.
pub const REBOOT_SCRIPT: &str = r#"
set -eu
root=$1
sync
if mountpoint -q "$root"; then umount -R "$root"; fi
swapoff -a 2>/dev/null || true
if command -v zpool >/dev/null 2>&1 && [ -n "$(zpool list -H -o name 2>/dev/null)" ]; then zpool export -a; fi
# Detached, so this ssh session ends cleanly first; fall back to a forced reboot where there is no init.
setsid nohup sh -c 'sleep 1; reboot || reboot -f || busybox reboot -f || echo b > /proc/sysrq-trigger' > /dev/null 2>&1 < /dev/null &
"#;

/// Unmounts everything, exports pools and starts a detached reboot (under nixpave's target `PATH`, which has
/// the sbin directories and NixOS's, whatever transport runs it). The shared-kernel guard comes first: a
/// host sharing this machine's kernel is never rebooted (exit 3, nothing unmounted).
pub fn start_reboot(t: &dyn Transport, root: &Path) -> Result<(), StepError> {
    let script = format!(
        "{}\n{}\n{REBOOT_SCRIPT}",
        nixpave_remote::path_prelude(),
        nixpave_remote::SHARED_KERNEL_GUARD
    );
    run(
        t,
        "unmounting and rebooting",
        sh(script, &[&root.display().to_string()]),
        None,
    )
    .map(|_| ())
}

/// Reads where `/run/current-system` points.
pub fn current_system(t: &dyn Transport) -> Result<String, StepError> {
    let out = run(
        t,
        "reading /run/current-system",
        vec!["readlink".into(), "-f".into(), "/run/current-system".into()],
        None,
    )?;
    Ok(out.stdout_str().trim().to_string())
}

/// Quotes for messages.
pub fn quoted(p: &Path) -> String {
    shell_quote(&p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_argv_shapes() {
        let spec = CopySpec {
            store_url: "ssh://root@h?remote-store=/mnt".into(),
            env: vec![],
            substitute_on_destination: true,
            nix_args: vec![],
        };
        assert_eq!(
            shell_join(&copy_argv(&spec, "/nix/store/x-sys")),
            "nix --extra-experimental-features nix-command copy --no-check-sigs --to 'ssh://root@h?remote-store=/mnt' --substitute-on-destination /nix/store/x-sys"
        );
    }

    #[test]
    fn nixos_install_argv_is_nixos_anywhere_s() {
        assert_eq!(
            shell_join(&nixos_install_argv(Path::new("/mnt"), "/nix/store/x-sys")),
            "nixos-install --system /nix/store/x-sys --no-root-passwd --no-channel-copy --root /mnt"
        );
    }

    #[test]
    fn substituter_settings_from_nix_config_and_options() {
        let s = SubstituterSettings::from_settings([
            ("extra-substituters", "https://a.example  file:///srv/c"),
            ("accept-flake-config", "true"),
            ("extra-trusted-public-keys", "a-1:AAA="),
            ("substituters", "https://a.example https://b.example"),
            ("trusted-public-keys", "b-1:BBB= a-1:AAA="),
        ]);
        assert_eq!(
            s.substituters,
            ["https://a.example", "file:///srv/c", "https://b.example"]
        );
        assert_eq!(s.trusted_public_keys, ["a-1:AAA=", "b-1:BBB="]);
        assert_eq!(
            s.nix_conf(),
            "# written by nixpave install: the flake's and --option substituters\n\
             extra-substituters = https://a.example file:///srv/c https://b.example\n\
             extra-trusted-public-keys = a-1:AAA= b-1:BBB=\n"
        );
        assert!(SubstituterSettings::from_settings([("cores", "2")]).is_empty());
    }

    #[test]
    fn ram_filesystems() {
        assert!(is_ram_fs("tmpfs") && is_ram_fs("rootfs"));
        assert!(!is_ram_fs("ext2/ext3") && !is_ram_fs("xfs"));
    }
}
