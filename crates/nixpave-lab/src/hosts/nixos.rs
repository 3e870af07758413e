//! The NixOS-shaped lab host ([`Flavour::Nixos`]): the machine's own Debian tools, laid out the way
//! NixOS lays them out, so that whatever nixpave runs on such a host finds nothing at FHS paths.
//!
//! Inside the host's private mount namespace:
//!
//! - `/run` is the host's own (`ROOT/run`): `/run/current-system/sw/bin` holds links to every tool of
//!   the machine's `/usr/bin` and `/usr/sbin` except nix and sudo, `/run/wrappers/bin/sudo` the
//!   setuid sudo, `/run/sshd` sshd's privilege-separation directory;
//! - nix is reachable only as `/nix/var/nix/profiles/default/bin/nix*` (links, in the host's /nix);
//! - `/usr/bin` holds only `env`, `sh` and root's login shell, `/usr/sbin` nothing (so `/bin` and
//!   `/sbin`, links to them on a merged-/usr machine, too);
//! - sessions get NixOS's root `PATH` ([`SESSION_PATH`]) from sshd's `SetEnv`, and `/etc/profile`
//!   no longer resets it for login shells.
//!
//! The real `/usr/bin` and `/usr/sbin` stay reachable at [`HIDDEN_DIR`]`/bin` and `/sbin`, a place
//! on nobody's `PATH`, which every link points into (Debian's alternatives links are resolved
//! first, since `/etc/alternatives/*` points into the hidden `/usr/bin`). `/etc/os-release` still
//! says Debian: the host is NixOS-shaped, not NixOS, and `nixpave facts` reports it as it is.

use std::path::{Path, PathBuf};

use super::error::LabError;

/// What a lab host looks like inside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// The machine's Debian, FHS paths and all.
    #[default]
    Debian,
    /// Debian's tools laid out like NixOS: `/run/current-system/sw/bin`, nix in a profile, sudo in
    /// `/run/wrappers/bin`, nothing but `env`, `sh` and the login shell in `/usr/bin`.
    Nixos,
}

impl Flavour {
    /// `debian` or `nixos`.
    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::Debian => "debian",
            Flavour::Nixos => "nixos",
        }
    }
}

impl std::fmt::Display for Flavour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Flavour {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Flavour, LabError> {
        match s {
            "debian" => Ok(Flavour::Debian),
            "nixos" => Ok(Flavour::Nixos),
            _ => Err(LabError::Spec(format!(
                "unknown lab host flavour `{s}` (debian, nixos)"
            ))),
        }
    }
}

/// NixOS's `PATH` for root's sessions, which NixOS-shaped hosts give every ssh session.
pub const SESSION_PATH: &str = "/run/wrappers/bin:/root/.nix-profile/bin:/nix/profile/bin:\
/root/.local/state/nix/profile/bin:/etc/profiles/per-user/root/bin:\
/nix/var/nix/profiles/default/bin:/run/current-system/sw/bin";

/// Where the machine's real `/usr/bin` (`/bin`) and `/usr/sbin` (`/sbin`) stay reachable inside a
/// NixOS-shaped host.
pub const HIDDEN_DIR: &str = "/run/nixpave-lab-fhs";

/// The system profile's tools, as on NixOS.
pub const SW_BIN: &str = "/run/current-system/sw/bin";

/// The default nix profile, the only place nix is found.
pub const NIX_PROFILE_BIN: &str = "/nix/var/nix/profiles/default/bin";

/// Directories of the machine whose tools NixOS-shaped hosts get, each with its hidden place.
const TOOL_DIRS: &[(&str, &str)] = &[("/usr/bin", "bin"), ("/usr/sbin", "sbin")];

/// `path` (fully resolved on the machine) as seen inside a NixOS-shaped host: tools of the hidden
/// directories move to [`HIDDEN_DIR`], everything else (libraries, /usr/lib/…) stays.
pub fn inside_path(path: &Path) -> PathBuf {
    for (dir, hidden) in TOOL_DIRS {
        if let Ok(rest) = path.strip_prefix(dir) {
            return Path::new(HIDDEN_DIR).join(hidden).join(rest);
        }
    }
    path.to_path_buf()
}

/// The links of one NixOS-shaped host, computed from the machine's tool directories.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// `run/current-system/sw/bin/NAME` → target.
    pub sw_bin: Vec<(String, PathBuf)>,
    /// `nix/var/nix/profiles/default/bin/NAME` → target.
    pub nix_bin: Vec<(String, PathBuf)>,
    /// `run/wrappers/bin/NAME` → target.
    pub wrappers: Vec<(String, PathBuf)>,
    /// What stays in `/usr/bin`: `env`, `sh`, the login shell.
    pub usr_bin: Vec<(String, PathBuf)>,
    /// nix's helpers (`/usr/libexec/nix/build-remote` is a link to `/usr/bin/nix`), resolved, when the
    /// machine has that directory.
    pub libexec_nix: Option<Vec<(String, PathBuf)>>,
}

/// nix's helper directory on Debian, whose links point into `/usr/bin`.
const LIBEXEC_NIX: &str = "/usr/libexec/nix";

/// Reads the machine's tool directories and sorts every tool into its NixOS place; `login_shell`
/// is root's shell (its base name stays in `/usr/bin`).
pub fn layout(login_shell: &str) -> Result<Layout, LabError> {
    // The machine's own nix in /usr/bin, whatever nix comes first on this process's PATH (the second
    // test pass puts a newer one there).
    let nix = std::fs::canonicalize("/usr/bin/nix-store").ok();
    let mut layout = Layout::default();
    let mut seen = std::collections::BTreeSet::new();
    for (dir, _) in TOOL_DIRS {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(LabError::io("listing", dir))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            // Resolve every link now (alternatives included): inside, /usr/bin is gone.
            let Ok(real) = std::fs::canonicalize(Path::new(dir).join(&name)) else {
                continue;
            };
            if !seen.insert(name.clone()) {
                continue;
            }
            let target = inside_path(&real);
            if nix.as_deref() == Some(real.as_path()) {
                layout.nix_bin.push((name, target));
            } else if name == "sudo" {
                layout.wrappers.push((name, target));
            } else {
                if ["env", "sh", login_shell].contains(&name.as_str()) {
                    layout.usr_bin.push((name.clone(), target.clone()));
                }
                layout.sw_bin.push((name, target));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(LIBEXEC_NIX) {
        let mut links = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            if let Ok(real) = std::fs::canonicalize(entry.path()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                links.push((name, inside_path(&real)));
            }
        }
        links.sort();
        layout.libexec_nix = Some(links);
    }
    // NixOS's `sh` is bash (`environment.binsh`, and `sh` in the system's `sw/bin`): scripts run by `sh`
    // there run in bash's POSIX mode, so they do here too.
    if let Some((_, bash)) = layout.sw_bin.iter().find(|(n, _)| n == "bash").cloned() {
        for (name, target) in layout.usr_bin.iter_mut().chain(layout.sw_bin.iter_mut()) {
            if name == "sh" {
                *target = bash.clone();
            }
        }
    }
    for needed in ["env", "sh"] {
        if !layout.usr_bin.iter().any(|(n, _)| n == needed) {
            return Err(LabError::Spec(format!(
                "NixOS-shaped lab hosts need /usr/bin/{needed} on this machine"
            )));
        }
    }
    if layout.nix_bin.is_empty() {
        return Err(LabError::MissingTool {
            tool: "nix".into(),
            package: "nix-bin".into(),
        });
    }
    Ok(layout)
}

/// Root's login shell in `passwd` text (base name), `sh` when there is none.
pub fn root_shell(passwd: &str) -> String {
    passwd
        .lines()
        .find_map(|l| l.strip_prefix("root:"))
        .and_then(|rest| rest.rsplit(':').next())
        .and_then(|shell| shell.rsplit('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("sh")
        .to_string()
}

/// Creates the host's NixOS-shaped directories under `root` (its `run`, `usr-bin`, `usr-sbin`,
/// `etc/profile` and the nix profile in its `nix`), to be mounted by [`mount_lines`].
pub fn prepare(root: &Path, layout: &Layout) -> Result<(), LabError> {
    let run = root.join("run");
    let dirs = [
        run.join("sshd"),
        run.join("nixpave-lab-fhs/bin"),
        run.join("nixpave-lab-fhs/sbin"),
        run.join("current-system/sw/bin"),
        run.join("wrappers/bin"),
        root.join("usr-bin"),
        root.join("usr-sbin"),
        root.join("libexec-nix"),
        root.join("nix/var/nix/profiles/default/bin"),
    ];
    for dir in &dirs {
        std::fs::create_dir_all(dir).map_err(LabError::io("creating", dir))?;
        super::up::set_mode(dir, 0o755)?;
    }
    for p in [
        &run,
        &run.join("current-system"),
        &run.join("current-system/sw"),
        &run.join("wrappers"),
        &run.join("nixpave-lab-fhs"),
    ] {
        super::up::set_mode(p, 0o755)?;
    }
    for parent in [
        "nix/var",
        "nix/var/nix",
        "nix/var/nix/profiles",
        "nix/var/nix/profiles/default",
    ] {
        super::up::set_mode(&root.join(parent), 0o755)?;
    }
    let none = Vec::new();
    let groups = [
        (run.join("current-system/sw/bin"), &layout.sw_bin),
        (
            root.join("nix/var/nix/profiles/default/bin"),
            &layout.nix_bin,
        ),
        (run.join("wrappers/bin"), &layout.wrappers),
        (root.join("usr-bin"), &layout.usr_bin),
        (
            root.join("libexec-nix"),
            layout.libexec_nix.as_ref().unwrap_or(&none),
        ),
    ];
    for (dir, links) in groups {
        for (name, target) in links {
            let link = dir.join(name);
            std::os::unix::fs::symlink(target, &link).map_err(LabError::io("linking", &link))?;
        }
    }
    super::up::write(
        &root.join("etc/profile"),
        "# nixpave lab host, NixOS-shaped: the session PATH comes from sshd (SetEnv), as NixOS sets\n\
         # it; nothing here resets it to FHS directories.\n\
         if [ \"${PS1-}\" ] && [ \"${BASH-}\" ] && [ \"$BASH\" != /bin/sh ] && [ -f /etc/bash.bashrc ]; then\n\
         \x20 . /etc/bash.bashrc\n\
         fi\n",
        0o644,
    )
}

/// Shell lines (run in the host's fresh mount namespace, after its other private mounts) that put
/// the NixOS shape in place, hiding `/usr/bin` and `/usr/sbin` last. `root` is the host's directory;
/// every command after the hiding runs by its hidden path.
pub fn mount_lines(root: &str, layout: &Layout) -> String {
    let q = |sub: &str| nixpave_remote::shell_quote(&format!("{root}/{sub}"));
    let hidden_mount = hidden_tool("mount");
    // nix's build hook must still resolve once /usr/bin is hidden.
    let libexec = match layout.libexec_nix {
        Some(_) => format!("mount --bind {} {LIBEXEC_NIX}\n", q("libexec-nix")),
        None => String::new(),
    };
    format!(
        "{libexec}\
         mount --bind {run} /run\n\
         mount --bind /usr/bin {hidden}/bin\n\
         mount --bind /usr/sbin {hidden}/sbin\n\
         mount --bind {profile} /etc/profile\n\
         {mount} --bind {usr_sbin} /usr/sbin\n\
         {mount} --bind {usr_bin} /usr/bin\n",
        run = q("run"),
        hidden = HIDDEN_DIR,
        profile = q("etc/profile"),
        usr_sbin = q("usr-sbin"),
        usr_bin = q("usr-bin"),
        mount = nixpave_remote::shell_quote(&hidden_mount.to_string_lossy()),
    )
}

/// Where the machine's `tool` is found inside a NixOS-shaped host (by its hidden path).
pub fn hidden_tool(tool: &str) -> PathBuf {
    let path = super::sys::tool(tool);
    inside_path(&std::fs::canonicalize(&path).unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavours_parse_and_print() {
        assert_eq!("nixos".parse::<Flavour>().ok(), Some(Flavour::Nixos));
        assert_eq!("debian".parse::<Flavour>().ok(), Some(Flavour::Debian));
        assert!("arch".parse::<Flavour>().is_err());
        assert_eq!(Flavour::Nixos.to_string(), "nixos");
        assert_eq!(
            serde_json::to_string(&Flavour::Nixos).ok().as_deref(),
            Some("\"nixos\"")
        );
    }

    #[test]
    fn tools_move_to_the_hidden_directory_libraries_stay() {
        assert_eq!(
            inside_path(Path::new("/usr/bin/mawk")),
            Path::new("/run/nixpave-lab-fhs/bin/mawk")
        );
        assert_eq!(
            inside_path(Path::new("/usr/sbin/sshd")),
            Path::new("/run/nixpave-lab-fhs/sbin/sshd")
        );
        assert_eq!(
            inside_path(Path::new("/usr/lib/jvm/bin/java")),
            Path::new("/usr/lib/jvm/bin/java")
        );
        assert_eq!(
            inside_path(Path::new("/usr/binx/y")),
            Path::new("/usr/binx/y")
        );
    }

    #[test]
    fn root_shell_from_passwd() {
        assert_eq!(root_shell("root:x:0:0:root:/root:/bin/bash\n"), "bash");
        assert_eq!(root_shell("daemon:x:1:1::/:/usr/sbin/nologin\n"), "sh");
    }

    #[test]
    fn layout_of_this_machine_resolves_alternatives_and_separates_nix_and_sudo() {
        let layout = layout("bash").expect("layout");
        let find = |links: &[(String, PathBuf)], name: &str| {
            links
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
        };
        // Every target is resolved: none points into a directory that is hidden inside.
        for (name, target) in layout
            .sw_bin
            .iter()
            .chain(&layout.nix_bin)
            .chain(&layout.usr_bin)
        {
            assert!(target.is_absolute(), "{name}");
            for hidden in [
                "/usr/bin/",
                "/usr/sbin/",
                "/bin/",
                "/sbin/",
                "/etc/alternatives/",
            ] {
                assert!(
                    !target.starts_with(hidden),
                    "{name} -> {}",
                    target.display()
                );
            }
        }
        assert!(find(&layout.sw_bin, "ln").is_some());
        assert!(find(&layout.sw_bin, "nix-store").is_none());
        assert!(find(&layout.sw_bin, "sudo").is_none());
        assert!(find(&layout.nix_bin, "nix-store").is_some());
        assert!(find(&layout.nix_bin, "nix-env").is_some());
        let mut kept: Vec<&str> = layout.usr_bin.iter().map(|(n, _)| n.as_str()).collect();
        kept.sort();
        assert_eq!(kept, ["bash", "env", "sh"]);
        // `sh` is bash, as on NixOS.
        assert_eq!(find(&layout.usr_bin, "sh"), find(&layout.usr_bin, "bash"));
        assert_eq!(find(&layout.sw_bin, "sh"), find(&layout.sw_bin, "bash"));
        if let Some(helpers) = &layout.libexec_nix {
            for (name, target) in helpers {
                assert!(
                    !target.starts_with("/usr/bin/"),
                    "{name} -> {}",
                    target.display()
                );
            }
        }
        // Debian's awk is an alternatives link (/etc/alternatives/awk): resolved to the real program.
        if let Some(awk) = find(&layout.sw_bin, "awk") {
            assert!(awk.starts_with(HIDDEN_DIR), "{}", awk.display());
        }
    }
}
