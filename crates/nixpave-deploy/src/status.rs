//! The status record the agent writes on the target, and [`read_state`]: one round trip that reads a host's state.

use serde::{Deserialize, Serialize};

use nixpave_remote::{shell_quote, Transport, TransportError};

use crate::inventory::Profile;

/// The agent's record of the last deploy of one profile (`STATEDIR/NAME.json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct StatusRecord {
    /// Deploy id.
    pub id: String,
    /// Profile name.
    pub name: String,
    /// Profile path.
    pub profile: String,
    /// Store path deployed.
    pub path: String,
    /// Goal.
    pub goal: String,
    /// Where the agent is (see [`AgentState`]).
    pub state: AgentState,
    /// Why it rolled back or failed (`no-confirmation`, `activation-failed`, `activation-timeout`,
    /// `health-check-failed`, `manual-rollback`, …).
    pub reason: String,
    /// What the profile pointed at before.
    pub previous_path: String,
    /// Generation before the deploy.
    pub previous_generation: Option<u64>,
    /// Generation the profile is on now.
    pub generation: Option<u64>,
    /// Generation that failed and was rolled back from (kept, never deleted).
    pub failed_generation: Option<u64>,
    /// Unix time the deploy started.
    pub started: u64,
    /// Unix time of the last update.
    pub updated: u64,
}

/// The states `agent.sh` records, in the order a deploy goes through them (the protocol between the agent
/// and the deployer; the agent writes them as the kebab-case words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    /// Setting the profile and running the activation.
    Activating,
    /// Activated; waiting for the deployer's confirmation (magic rollback) or health checks' verdict.
    WaitingConfirmation,
    /// Done: the new generation stays.
    Confirmed,
    /// Going back to the previous generation.
    RollingBack,
    /// Done: the previous generation is active again.
    RolledBack,
    /// Done: failed, nothing to roll back to (or auto rollback off).
    Failed,
    /// Done: the rollback itself failed; the host needs a look.
    RollbackFailed,
    /// Done: a dry activation ran; the profile is untouched.
    DryActivated,
}

impl AgentState {
    /// True for the states after which the agent does nothing more.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            AgentState::Activating | AgentState::WaitingConfirmation | AgentState::RollingBack
        )
    }

    /// The word the agent writes.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Activating => "activating",
            AgentState::WaitingConfirmation => "waiting-confirmation",
            AgentState::Confirmed => "confirmed",
            AgentState::RollingBack => "rolling-back",
            AgentState::RolledBack => "rolled-back",
            AgentState::Failed => "failed",
            AgentState::RollbackFailed => "rollback-failed",
            AgentState::DryActivated => "dry-activated",
        }
    }
}

impl std::fmt::Display for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StatusRecord {
    /// True when the record is final (the agent is done).
    pub fn is_final(&self) -> bool {
        self.state.is_final()
    }
}

/// What one round trip tells about one profile of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProfileState {
    /// Profile name.
    pub name: String,
    /// What the profile resolves to now (`None`: no profile yet).
    pub current: Option<String>,
    /// Generation the profile points at.
    pub generation: Option<u64>,
    /// Whether the wanted store path is already valid in the host's store.
    pub wanted_present: bool,
    /// The last status record, if any.
    pub last: Option<StatusRecord>,
    /// The generation of this profile that the host booted (`/run/booted-system`), if one is.
    pub booted_generation: Option<u64>,
    /// The NixOS system inside the wanted path (`bin/switch-to-configuration` resolved): the toplevel itself,
    /// or the one a deploy-rs `activate.nixos` wrapper links to.
    pub wanted_system: Option<String>,
}

/// What one round trip tells about a host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostState {
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// `/run/current-system`.
    pub current_system: Option<String>,
    /// `/run/booted-system`.
    pub booted_system: Option<String>,
    /// The system `/run/current-system` runs, as [`ProfileState::wanted_system`] names systems.
    pub current_switch: Option<String>,
    /// Per profile.
    pub profiles: Vec<ProfileState>,
    /// Per key asked about: `MODE USER GROUP SHA256` of the file on the host (see [`key_fingerprint`]).
    #[serde(skip)]
    pub keys: std::collections::BTreeMap<String, String>,
}

/// How a key file looks on the host, as the probe reports it: octal mode, owner, group and the SHA-256 of
/// the contents. Equal fingerprints mean the upload would change nothing.
pub fn key_fingerprint(mode: u32, user: &str, group: &str, contents: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(contents);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{mode:o} {user} {group} {hex}")
}

/// Probe lines for keys: `key<TAB>NAME<TAB>MODE USER GROUP SHA256` for each key file that exists.
fn key_state_script(keys: &[(&str, &std::path::Path)]) -> String {
    let mut s = String::new();
    for (name, dest) in keys {
        let d = shell_quote(&dest.display().to_string());
        s.push_str(&format!(
            "if [ -f {d} ]; then printf 'key\\t%s\\t%s %s\\n' {n} \"$(stat -c '%a %U %G' {d})\" \
             \"$(sha256sum < {d} | cut -c1-64)\"; fi\n",
            n = shell_quote(name)
        ));
    }
    s
}

/// The shell script of [`read_state`]: one line per fact, `KEY<TAB>PROFILE<TAB>VALUE`.
pub fn state_script(profiles: &[(&str, &str, Option<&str>, &str)]) -> String {
    // A system is named by its resolved `bin/switch-to-configuration`, so that a deploy-rs `activate.nixos`
    // wrapper (a profile linking to the toplevel's files) and the toplevel it wraps compare equal.
    // Few processes per probe (it runs on every host of every deploy, and looks at every generation of a
    // NixOS host): the agent's `resolve` sets R to what `readlink -f` prints, mostly without a process;
    // files are read with the shell's `read`.
    let mut s = String::from(crate::agent::RESOLVE_FUNCTION);
    s.push_str(
        "resolve /run/booted-system/bin/switch-to-configuration; booted_sys=$R\n\
         boot=; { read -r boot </proc/sys/kernel/random/boot_id; } 2>/dev/null\n\
         printf 'boot\\t-\\t%s\\n' \"$boot\"\n\
         resolve /run/current-system; printf 'current\\t-\\t%s\\n' \"$R\"\n\
         resolve /run/current-system/bin/switch-to-configuration; printf 'currentsys\\t-\\t%s\\n' \"$R\"\n\
         resolve /run/booted-system; printf 'booted\\t-\\t%s\\n' \"$R\"\n",
    );
    for (name, profile_path, wanted, state_dir) in profiles {
        let n = shell_quote(name);
        let p = shell_quote(profile_path);
        s.push_str(&format!(
            "resolve {p}; cur=$R; printf 'profile\\t%s\\t%s\\n' {n} \"$cur\"\n\
             link=; if [ -h {p} ]; then link=$(readlink {p} 2>/dev/null) || link=; fi\n\
             printf 'link\\t%s\\t%s\\n' {n} \"$link\"\n\
             rec=; {{ IFS= read -r rec <{rec}; }} 2>/dev/null\n\
             printf 'record\\t%s\\t%s\\n' {n} \"$rec\"\n\
             if [ -n \"$booted_sys\" ]; then for g in {p}-*-link; do \
               resolve \"$g/bin/switch-to-configuration\"; \
               if [ \"$R\" = \"$booted_sys\" ]; then printf 'bootedgen\\t%s\\t%s\\n' {n} \"${{g##*/}}\"; fi; \
             done; fi\n",
            rec = shell_quote(&format!("{state_dir}/{name}.json")),
        ));
        if let Some(w) = wanted {
            // A profile already on the wanted path (a no-op) proves it valid: a generation is a GC root, and
            // nix only links valid paths. Only otherwise is a nix process started to ask the store.
            s.push_str(&format!(
                "if [ -e {w} ] && {{ [ \"$cur\" = {w} ] || nix-store --check-validity {w} >/dev/null 2>&1; }}; then \
                 printf 'present\\t%s\\tyes\\n' {n}; resolve {w}/bin/switch-to-configuration; \
                 printf 'wantedsys\\t%s\\t%s\\n' {n} \"$R\"; fi\n",
                w = shell_quote(w)
            ));
        }
    }
    s
}

/// Parses the output of [`state_script`].
pub fn parse_state(stdout: &str, names: &[&str]) -> HostState {
    let mut state = HostState {
        profiles: names
            .iter()
            .map(|n| ProfileState {
                name: n.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let some = |v: &str| Some(v.to_string()).filter(|v| !v.is_empty());
    for line in stdout.lines() {
        let mut parts = line.splitn(3, '\t');
        let (Some(key), Some(name), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        match key {
            "boot" => state.boot_id = value.to_string(),
            "current" => state.current_system = some(value),
            "booted" => state.booted_system = some(value),
            "currentsys" => state.current_switch = some(value),
            "key" => {
                state.keys.insert(name.to_string(), value.to_string());
            }
            _ => {
                let Some(p) = state.profiles.iter_mut().find(|p| p.name == name) else {
                    continue;
                };
                match key {
                    "profile" => p.current = some(value),
                    "link" => p.generation = generation_of_link(value),
                    "record" => p.last = serde_json::from_str(value).ok(),
                    "present" => p.wanted_present = true,
                    "wantedsys" => p.wanted_system = some(value),
                    // The newest matching generation, if several hold the booted system.
                    "bootedgen" => {
                        p.booted_generation = generation_of_link(value).max(p.booted_generation)
                    }
                    _ => {}
                }
            }
        }
    }
    state
}

impl HostState {
    /// True when the host runs the system that `profile`'s wanted path holds (the path itself, or the
    /// toplevel inside a deploy-rs `activate.nixos` wrapper). Needs a probe made with the wanted paths.
    pub fn runs_wanted_system(&self, profile: usize, wanted: &str) -> bool {
        if self.current_system.as_deref() == Some(wanted) {
            return true;
        }
        let wanted_system = self
            .profiles
            .get(profile)
            .and_then(|p| p.wanted_system.as_deref());
        wanted_system.is_some() && wanted_system == self.current_switch.as_deref()
    }
}

/// `system-12-link` → 12.
pub fn generation_of_link(link: &str) -> Option<u64> {
    link.strip_suffix("-link")?.rsplit('-').next()?.parse().ok()
}

/// Reads a host's state in one round trip. `wanted` gives per profile the store path about to be deployed.
pub fn read_state(
    transport: &dyn Transport,
    profiles: &[Profile],
    with_wanted: bool,
) -> Result<HostState, TransportError> {
    read_state_with_keys(transport, profiles, with_wanted, &[])
}

/// [`read_state`], also fingerprinting the key files `keys` (name, destination) in the same round trip.
pub fn read_state_with_keys(
    transport: &dyn Transport,
    profiles: &[Profile],
    with_wanted: bool,
    keys: &[(&str, &std::path::Path)],
) -> Result<HostState, TransportError> {
    let rows: Vec<(&str, &str, Option<&str>, &str)> = profiles
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.profile_path.as_str(),
                with_wanted.then(|| p.path.out_path()),
                p.settings.state_dir.as_str(),
            )
        })
        .collect();
    let script = state_script(&rows) + &key_state_script(keys);
    let out = transport.run(&["sh".into(), "-c".into(), script], None)?;
    if !out.success() {
        return Err(TransportError::Command {
            host: transport.host().to_string(),
            command: "probe (readlink, nix-store --check-validity, cat status)".into(),
            status: out.status,
            stderr: out.stderr_tail(5),
        });
    }
    let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
    Ok(parse_state(&out.stdout_str(), &names))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `resolve` the agent and the probe share prints what `readlink -f` prints, in dash and bash (NixOS's
    /// `sh`): directories, files, symlinks to either (chains, relative ones, through a linked directory),
    /// `/`, and paths that do not exist; and leaves the working directory at `/`.
    #[test]
    fn resolve_agrees_with_readlink_f() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let run = |shell: &str, script: &str| {
            let out = std::process::Command::new(shell)
                .args(["-c", script])
                .output()
                .expect("sh");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let sh = |script: &str| run("sh", script);
        sh(&format!(
            "set -e; cd {d}; mkdir -p store/sys/bin real; echo x > store/sys/bin/stc; echo y > real/file; \
             ln -s store/sys gen-1-link; ln -s gen-1-link profile; ln -s ../../../real/file store/sys/bin/link; \
             ln -s real linked-dir; ln -s missing dangling",
            d = d.display()
        ));
        let paths = [
            "profile",
            "profile/bin/stc",
            "gen-1-link/bin/link",
            "store/sys/bin/stc",
            "linked-dir/file",
            "linked-dir",
            "dangling",
            "nothing/here",
            "profile/bin/nothing",
        ]
        .map(|p| d.join(p).display().to_string());
        let mut all = paths.to_vec();
        all.push("/".into());
        let mut resolved = 0;
        for path in &all {
            let q = shell_quote(path);
            let expected = sh(&format!(
                "R=; [ ! -e {q} ] || R=$(readlink -f {q}); echo \"$R\""
            ));
            for shell in ["sh", "bash"] {
                let resolved_here = run(
                    shell,
                    &format!(
                        "{}\ncd {}; resolve {q}; echo \"$R\"; pwd",
                        crate::agent::RESOLVE_FUNCTION,
                        shell_quote(&d.display().to_string())
                    ),
                );
                assert_eq!(
                    resolved_here,
                    format!("{expected}/\n"),
                    "{shell}: resolve {path}"
                );
            }
            resolved += usize::from(expected != "\n");
        }
        assert_eq!(resolved, 7, "paths that exist");
    }

    #[test]
    fn parses_probe_output() {
        let out = "boot\t-\tb-1\ncurrent\t-\t/nix/store/x\nbooted\t-\t\n\
                   profile\tsystem\t/nix/store/x\nlink\tsystem\tsystem-3-link\n\
                   record\tsystem\t{\"id\":\"a\",\"name\":\"system\",\"profile\":\"/p\",\"path\":\"/nix/store/x\",\"goal\":\"switch\",\"state\":\"confirmed\",\"reason\":\"\",\"previous_path\":\"\",\"previous_generation\":null,\"generation\":3,\"failed_generation\":null,\"started\":1,\"updated\":2}\n\
                   present\tsystem\tyes\n";
        let st = parse_state(out, &["system"]);
        assert_eq!(st.boot_id, "b-1");
        assert_eq!(st.booted_system, None);
        let p = &st.profiles[0];
        assert_eq!(p.generation, Some(3));
        assert!(p.wanted_present);
        assert_eq!(
            p.last.as_ref().map(|r| r.state),
            Some(AgentState::Confirmed)
        );
    }

    #[test]
    fn a_deploy_rs_wrapper_counts_as_the_system_it_wraps() {
        let out = "boot\t-\tb\ncurrent\t-\t/nix/store/top\ncurrentsys\t-\t/nix/store/top/bin/switch-to-configuration\n\
                   booted\t-\t/nix/store/top\npresent\tsystem\tyes\n\
                   wantedsys\tsystem\t/nix/store/top/bin/switch-to-configuration\n\
                   bootedgen\tsystem\tsystem-2-link\nbootedgen\tsystem\tsystem-4-link\n";
        let st = parse_state(out, &["system"]);
        assert!(st.runs_wanted_system(0, "/nix/store/top"));
        assert!(st.runs_wanted_system(0, "/nix/store/wrapper"));
        assert_eq!(st.profiles[0].booted_generation, Some(4));
        let other = parse_state(
            "current\t-\t/nix/store/old\ncurrentsys\t-\t/nix/store/old/bin/switch-to-configuration\n\
             wantedsys\tsystem\t/nix/store/top/bin/switch-to-configuration\n",
            &["system"],
        );
        assert!(!other.runs_wanted_system(0, "/nix/store/wrapper"));
        let unknown = parse_state("current\t-\t/nix/store/old\n", &["system"]);
        assert!(!unknown.runs_wanted_system(0, "/nix/store/wrapper"));
    }

    #[test]
    fn generation_numbers() {
        assert_eq!(generation_of_link("system-12-link"), Some(12));
        assert_eq!(generation_of_link("/nix/store/x"), None);
    }
}

/// One row of `nixpave status`.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    /// Node name.
    pub host: String,
    /// Why the host could not be read (`None`: reachable).
    pub error: Option<String>,
    /// Boot id and running/booted systems.
    pub state: Option<HostState>,
    /// Per profile: current path, generation, last deploy record, and the path the inventory wants.
    pub profiles: Vec<ProfileStatus>,
}

/// One profile in `nixpave status`.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileStatus {
    /// Profile name.
    pub name: String,
    /// What the profile points at.
    pub current: Option<String>,
    /// Its generation.
    pub generation: Option<u64>,
    /// The generation the host booted, when it is one of this profile's.
    pub booted_generation: Option<u64>,
    /// What the inventory wants it to point at.
    pub wanted: String,
    /// The last deploy's record.
    pub last: Option<StatusRecord>,
}

/// Reads the state of `host` in one round trip (after connecting).
pub fn host_status(host: &crate::inventory::Host, connector: &dyn crate::Connector) -> HostStatus {
    let read = || -> Result<HostState, TransportError> {
        let conn = connector.connect(host)?;
        read_state(conn.transport(), &host.profiles, false)
    };
    match read() {
        Ok(state) => HostStatus {
            host: host.name.clone(),
            error: None,
            profiles: host
                .profiles
                .iter()
                .zip(&state.profiles)
                .map(|(p, s)| ProfileStatus {
                    name: p.name.clone(),
                    current: s.current.clone(),
                    generation: s.generation,
                    booted_generation: s.booted_generation,
                    wanted: p.path.out_path().to_string(),
                    last: s.last.clone(),
                })
                .collect(),
            state: Some(state),
        },
        Err(e) => HostStatus {
            host: host.name.clone(),
            error: Some(e.to_string()),
            state: None,
            profiles: Vec::new(),
        },
    }
}
