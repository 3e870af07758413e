//! The on-target activation agent (`agent.sh`) and the command lines that upload, start and query it.
//!
//! The agent is uploaded (not through the nix store) into a directory of the target's temp path that only root
//! can reach (`TEMPPATH/nixpave-agent`, mode 0700, checked to be root's own and not a symlink before anything is
//! written to it) and started detached from the ssh session: as a transient systemd unit when systemd is PID 1
//! in the same namespaces, else with `setsid … &` (the agent ignores hangups itself). Dropping the connection or killing the deployer cannot
//! stop it halfway. It sets its own `PATH` ([`nixpave_remote::TARGET_PATH`]), so it works on NixOS and under
//! systemd's minimal environment or an empty one.

use std::sync::LazyLock;

use nixpave_remote::{path_prelude, shell_quote, TARGET_SHELL};

use crate::inventory::Profile;

/// The agent's source as written in `agent.sh`, before [`AGENT_SCRIPT`] gives it its `PATH`.
const AGENT_TEMPLATE: &str = include_str!("agent.sh");

/// Placeholder line of `agent.sh` that becomes [`path_prelude`].
const PATH_PLACEHOLDER: &str = "# @NIXPAVE_PATH_PRELUDE@";

/// Placeholder line of `agent.sh` that becomes [`RESOLVE_FUNCTION`].
const RESOLVE_PLACEHOLDER: &str = "# @NIXPAVE_RESOLVE@";

/// `resolve PATH`, the shell function the agent and the deployer's probe share: `R` becomes what
/// `readlink -f PATH` prints, mostly without starting a process.
pub(crate) const RESOLVE_FUNCTION: &str = include_str!("resolve.sh");

/// The agent's source, as uploaded: `agent.sh` with its `PATH` line and `resolve` function filled in.
pub static AGENT_SCRIPT: LazyLock<String> = LazyLock::new(|| {
    AGENT_TEMPLATE
        .replacen(PATH_PLACEHOLDER, &path_prelude(), 1)
        .replacen(RESOLVE_PLACEHOLDER, RESOLVE_FUNCTION, 1)
});

/// Exit status of the launch script and the agent when another deploy of the profile is still running.
pub const EXIT_BUSY: i32 = 75;

/// Exit status of `agent.sh wait` when the agent is not running and never wrote this deploy's record.
pub const EXIT_AGENT_GONE: i32 = 4;

/// Exit status of the launch and rollback scripts when the agent could not be installed (its directory is not
/// root's own, or cannot be written): nothing was started or changed.
pub const EXIT_NOT_INSTALLED: i32 = 78;

/// What the deploy asks of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Goal {
    /// Make it the current and boot configuration.
    Switch,
    /// Make it the boot configuration only.
    Boot,
    /// Activate without making it the profile's generation.
    Test,
    /// Show what would change; the profile is left untouched.
    DryActivate,
}

impl Goal {
    /// The word `switch-to-configuration` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Goal::Switch => "switch",
            Goal::Boot => "boot",
            Goal::Test => "test",
            Goal::DryActivate => "dry-activate",
        }
    }
}

impl std::str::FromStr for Goal {
    type Err = String;
    fn from_str(s: &str) -> Result<Goal, String> {
        match s {
            "switch" => Ok(Goal::Switch),
            "boot" => Ok(Goal::Boot),
            "test" => Ok(Goal::Test),
            "dry-activate" => Ok(Goal::DryActivate),
            _ => Err(format!(
                "unknown goal {s:?} (switch, boot, test, dry-activate)"
            )),
        }
    }
}

/// One activation the agent performs.
#[derive(Debug, Clone)]
pub struct Activation {
    /// Profile name (names the status record).
    pub name: String,
    /// The nix profile, e.g. `/nix/var/nix/profiles/system`.
    pub profile_path: String,
    /// The store path to activate.
    pub store_path: String,
    /// What to do.
    pub goal: Goal,
    /// Seconds to wait for confirmation.
    pub confirm_timeout: u64,
    /// Seconds activation may take.
    pub activation_timeout: u64,
    /// Wait for confirmation, roll back without it.
    pub magic_rollback: bool,
    /// Roll back when activation fails.
    pub auto_rollback: bool,
    /// Directory of the status records.
    pub state_dir: String,
    /// Directory the agent is uploaded to.
    pub temp_path: String,
    /// Unique id of this deploy (alphanumeric).
    pub id: String,
    /// User the activation runs as (deploy-rs `user`).
    pub user: String,
    /// The deployer runs health checks before confirming: the agent waits for their verdict even without
    /// magic rollback.
    pub health_checks: bool,
}

impl Activation {
    /// The activation of `profile` to `goal` under deploy id `id`.
    pub fn for_profile(profile: &Profile, goal: Goal, id: &str) -> Activation {
        let s = &profile.settings;
        Activation {
            name: profile.name.clone(),
            profile_path: profile.profile_path.clone(),
            store_path: profile.path.out_path().to_string(),
            goal,
            confirm_timeout: s.confirm_timeout.max(1),
            activation_timeout: s.activation_timeout.max(1),
            magic_rollback: s.magic_rollback,
            auto_rollback: s.auto_rollback,
            state_dir: s.state_dir.clone(),
            temp_path: s.temp_path.clone(),
            id: id.to_string(),
            user: s.user.clone(),
            health_checks: false,
        }
    }

    /// The agent's private directory on the target: `TEMPPATH/nixpave-agent`, mode 0700, root's own.
    pub fn agent_dir(&self) -> String {
        format!("{}/nixpave-agent", self.temp_path.trim_end_matches('/'))
    }

    /// Where the agent script lives on the target (in [`agent_dir`](Self::agent_dir), named by its content so
    /// deployers of different versions never overwrite each other's running agent).
    pub fn agent_path(&self) -> String {
        format!(
            "{}/agent-{:016x}.sh",
            self.agent_dir(),
            fnv1a(AGENT_SCRIPT.as_bytes())
        )
    }

    /// Shell lines (run as root with `umask 077`, the agent's source on stdin) that create the state directory
    /// and the agent's private directory, refuse a directory that is a symlink or not root's own (someone could
    /// have created it in a world-writable temp path), and write the agent atomically under an unpredictable
    /// temporary name. Exits [`EXIT_NOT_INSTALLED`] on any failure.
    fn install_lines(&self) -> String {
        format!(
            "np_state={state} np_temp={temp} np_dir={dir} np_agent={agent}\n\
             not_installed() {{ echo \"cannot install the deploy agent: $*\" >&2; exit {code}; }}\n\
             {{ [ -d \"$np_state\" ] && [ -d \"$np_temp\" ]; }} || mkdir -p \"$np_state\" \"$np_temp\" \\\n\
               || not_installed \"cannot create $np_state and $np_temp\"\n\
             [ -d \"$np_dir\" ] || mkdir \"$np_dir\" 2>/dev/null || true\n\
             if [ -h \"$np_dir\" ] || [ ! -d \"$np_dir\" ] || [ ! -O \"$np_dir\" ]; then\n\
               not_installed \"$np_dir is not a directory of $(id -un) (remove it, or set tempPath elsewhere)\"\n\
             fi\n\
             chmod 0700 \"$np_dir\" || not_installed \"cannot make $np_dir private\"\n\
             # Named by its content in a private directory: an agent already there is this one.\n\
             if [ ! -f \"$np_agent\" ] || [ -h \"$np_agent\" ] || [ ! -O \"$np_agent\" ]; then\n\
               np_tmp=$(mktemp \"$np_dir/.agent.XXXXXX\") || not_installed \"cannot create a file in $np_dir\"\n\
               if ! cat > \"$np_tmp\" || ! mv -f \"$np_tmp\" \"$np_agent\"; then\n\
                 rm -f \"$np_tmp\"; not_installed \"cannot write $np_agent\"\n\
               fi\n\
             fi\n",
            code = EXIT_NOT_INSTALLED,
            state = shell_quote(&self.state_dir),
            temp = shell_quote(&self.temp_path),
            dir = shell_quote(&self.agent_dir()),
            agent = shell_quote(&self.agent_path()),
        )
    }

    /// Arguments of `agent.sh run`.
    pub fn run_args(&self) -> Vec<String> {
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        [
            "run",
            "-n",
            &self.name,
            "-p",
            &self.profile_path,
            "-s",
            &self.store_path,
            "-g",
            self.goal.as_str(),
            "-c",
            &self.confirm_timeout.to_string(),
            "-a",
            &self.activation_timeout.to_string(),
            "-m",
            &flag(self.magic_rollback),
            "-r",
            &flag(self.auto_rollback),
            "-d",
            &self.state_dir,
            "-i",
            &self.id,
            "-u",
            &self.user,
            "-k",
            &flag(self.health_checks),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The transient systemd unit name.
    pub fn unit_name(&self) -> String {
        format!("nixpave-deploy-{}-{}", self.name, self.id)
    }

    /// The argv that starts the agent as a transient systemd unit (survives the ssh session).
    pub fn systemd_run_argv(&self) -> Vec<String> {
        let mut argv: Vec<String> = [
            "systemd-run",
            "--unit",
            &self.unit_name(),
            "--collect",
            "--quiet",
            "--description",
            "nixpave deploy activation",
            TARGET_SHELL,
            &self.agent_path(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(self.run_args());
        argv
    }

    /// The argv that starts the agent in a new session, immune to the ssh session's hangup.
    pub fn setsid_argv(&self) -> Vec<String> {
        let mut argv = vec![
            "setsid".to_string(),
            TARGET_SHELL.to_string(),
            self.agent_path(),
        ];
        argv.extend(self.run_args());
        argv
    }

    fn wait_argv(&self, stage: &str, timeout: u64) -> Vec<String> {
        [
            TARGET_SHELL,
            &self.agent_path(),
            "wait",
            "-n",
            &self.name,
            "-d",
            &self.state_dir,
            "-i",
            &self.id,
            "-w",
            stage,
            "-t",
            &timeout.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Seconds the agent needs at most before the record reaches "waiting-confirmation" or a final state.
    pub fn ready_timeout(&self) -> u64 {
        // Activation, plus a possible rollback (another activation), plus slack.
        2 * self.activation_timeout + 10
    }

    /// Seconds until the record is final at the latest.
    pub fn final_timeout(&self) -> u64 {
        self.ready_timeout() + self.confirm_timeout
    }

    /// One shell script (run with the agent's source on stdin) that installs the agent, starts it detached
    /// and waits until it asks for confirmation or finished: one round trip.
    pub fn launch_script(&self) -> String {
        let q = |argv: Vec<String>| {
            argv.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "set -e\numask 077\n{install}\
             holder=; if [ -h {lock} ]; then holder=$(readlink {lock} 2>/dev/null || true); fi\n\
             if [ -n \"$holder\" ] && kill -0 \"$holder\" 2>/dev/null; then\n\
               echo \"another deploy of profile {name_text} is still running on this host (agent pid $holder)\" >&2\n\
               exit {busy}\n\
             fi\n\
             # The transport tags a command's processes to stop them on Ctrl-C: the agent must outlive that.\n\
             unset NIXPAVE_RUN\n\
             # systemd-run only when systemd is PID 1 in our own mount and network namespaces (`-ef`: the\n\
             # same namespace is the same file; the shell's `test` compares them without a process).\n\
             if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1 \\\n\
                && [ /proc/1/ns/mnt -ef /proc/self/ns/mnt ] && [ /proc/1/ns/net -ef /proc/self/ns/net ]; then\n\
               {systemd} -C \"${{SSH_CONNECTION:-}}\"\n\
             else\n\
               {setsid} -C \"${{SSH_CONNECTION:-}}\" </dev/null >/dev/null 2>&1 &\n\
             fi\n\
             exec {wait} -l 1\n",
            install = self.install_lines(),
            lock = shell_quote(&format!("{}/{}.lock", self.state_dir, self.name)),
            name_text = self.name,
            busy = EXIT_BUSY,
            systemd = q(self.systemd_run_argv()),
            setsid = q(self.setsid_argv()),
            wait = q(self.wait_argv("ready", self.ready_timeout())),
        )
    }

    /// Waits on the target until the record of this deploy is final, then prints it.
    pub fn wait_final_argv(&self) -> Vec<String> {
        self.wait_argv("final", self.final_timeout())
    }

    /// Writes this deploy's id into the agent's `.confirm`/`.reject` file, then wakes the waiting agent through
    /// its FIFO (see agent.sh, "Waiting without polling"); no agent waiting, no wake-up, and still success.
    fn marker_script(&self, suffix: &str) -> String {
        let fifo = shell_quote(&format!("{}/{}.agent.fifo", self.state_dir, self.name));
        format!(
            "printf %s {} > {} && {{ {{ [ ! -p {fifo} ] || echo c 1<>{fifo}; }} 2>/dev/null || true; }}",
            shell_quote(&self.id),
            shell_quote(&format!("{}/{}.{suffix}", self.state_dir, self.name))
        )
    }

    fn marker_argv(&self, suffix: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), self.marker_script(suffix)]
    }

    /// Creates the confirmation file (run over a NEW ssh connection: that it works is the proof).
    pub fn confirm_argv(&self) -> Vec<String> {
        self.marker_argv("confirm")
    }

    /// Creates the confirmation file, then waits at most `seconds` for this deploy's final record and prints it:
    /// the proof login and the final wait in one round trip. Exits 3 when the record is not final in time.
    pub fn confirm_and_wait_argv(&self, seconds: u64) -> Vec<String> {
        let marker = self.marker_script("confirm");
        let wait = self
            .wait_argv("final", seconds)
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ");
        vec!["sh".into(), "-c".into(), format!("{marker} && exec {wait}")]
    }

    /// Tells the agent to roll back now (a health check failed).
    pub fn reject_argv(&self) -> Vec<String> {
        self.marker_argv("reject")
    }
}

/// Script for `nixpave rollback`: installs the agent and runs its manual rollback (synchronously).
///
/// The rollback runs detached from the ssh session, like a deploy's activation: a lost connection or Ctrl-C on
/// the deployer stops only the waiting, never the rollback half way. The script then waits for its final record
/// and prints it.
pub fn manual_rollback_script(a: &Activation) -> String {
    format!(
        "set -e\numask 077\n{install}\
         holder=; if [ -h {lock} ]; then holder=$(readlink {lock} 2>/dev/null || true); fi\n\
         if [ -n \"$holder\" ] && kill -0 \"$holder\" 2>/dev/null; then\n\
           echo \"a deploy of profile {name_text} is running on this host (agent pid $holder); try again later\" >&2\n\
           exit {busy}\n\
         fi\n\
         unset NIXPAVE_RUN\n\
         setsid {shell} {agent} rollback -n {name} -p {profile} -g {goal} -a {act} -d {state} -i {id} -u {user} \
           </dev/null >/dev/null 2>&1 &\n\
         exec {wait}\n",
        install = a.install_lines(),
        lock = shell_quote(&format!("{}/{}.lock", a.state_dir, a.name)),
        name_text = a.name,
        busy = EXIT_BUSY,
        shell = TARGET_SHELL,
        agent = shell_quote(&a.agent_path()),
        name = shell_quote(&a.name),
        profile = shell_quote(&a.profile_path),
        goal = a.goal.as_str(),
        act = a.activation_timeout,
        state = shell_quote(&a.state_dir),
        id = shell_quote(&a.id),
        user = shell_quote(&a.user),
        wait = a
            .wait_argv("final", a.activation_timeout + 30)
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// 64-bit FNV-1a: a stable, dependency-free content hash for the agent's file name.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// A fresh deploy id: time and process based, alphanumeric; `index` (host index × 16 + profile)
/// tells apart ids made in the same instant.
pub fn new_deploy_id(index: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}{index:x}", nanos, std::process::id())
}

/// The text of shell function `name` in the agent, for tests that run one function on its own.
#[cfg(test)]
pub(crate) fn agent_function(name: &str) -> &'static str {
    let agent = AGENT_SCRIPT.as_str();
    let start = agent
        .find(&format!("\n{name}() {{\n"))
        .unwrap_or_else(|| panic!("{name}() in agent.sh"));
    let len = agent[start..]
        .find("\n}\n")
        .unwrap_or_else(|| panic!("the end of {name}()"));
    &agent[start..start + len + 3]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waiting for a wake-up in dash (a ticker process counts the seconds) and in bash, NixOS's sh (`read -t`
    /// and the kernel's uptime, no ticker): a wake-up line ends the wait at once, and without one the
    /// seconds still pass.
    #[test]
    fn waiters_wake_at_once_and_count_seconds_with_and_without_a_ticker() {
        let functions: String = [
            "remove",
            "open_wakeups",
            "uptime_cs",
            "wake",
            "close_wakeups",
        ]
        .iter()
        .map(|f| agent_function(f))
        .collect();
        for (shell, clock) in [("dash", false), ("bash", true)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let fifo = dir.path().join("w.fifo");
            let script = format!(
                "set -u\nWAKE= TICKER= T0=\n{functions}\nsecs=0\nopen_wakeups '{fifo}'\n\
                 echo \"ticker=${{TICKER:+yes}} clock=${{T0:+yes}}\"\n\
                 wake\necho \"woken by $w\"\n\
                 secs=0; T0=${{T0:+$CS}}\nwhile [ \"$secs\" -lt 2 ]; do wake; done\nclose_wakeups\necho done",
                fifo = fifo.display()
            );
            let started = std::time::Instant::now();
            let child = std::process::Command::new("timeout")
                .args(["10", shell, "-c", &script])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("shell");
            // The waiter makes the FIFO; a wake-up line once it is there.
            while !fifo.exists() {
                assert!(started.elapsed() < std::time::Duration::from_secs(5));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            let woken_at = started.elapsed();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"s\n"))
                .expect("wake-up line");
            let out = child.wait_with_output().expect("waits");
            let elapsed = started.elapsed();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{shell}: {out:?}");
            let (ticker, uptime) = if clock { ("", "yes") } else { ("yes", "") };
            assert_eq!(
                text,
                format!("ticker={ticker} clock={uptime}\nwoken by s\ndone\n"),
                "{shell}"
            );
            // Two seconds waited after the wake-up, give or take one.
            assert!(
                elapsed >= woken_at + std::time::Duration::from_secs(1)
                    && elapsed < woken_at + std::time::Duration::from_secs(4),
                "{shell}: {elapsed:?}"
            );
        }
    }

    /// The lockout check with this machine's tools, through `ss` and, without it, /proc/net/tcp: a port
    /// something listens on, one nothing listens on, one something listens on at another address than the
    /// deployer's, and an address that is not this machine's.
    #[test]
    fn lockout_finds_a_stopped_listener_and_a_lost_address_with_or_without_ss() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let open = listener.local_addr().expect("addr").port();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
            l.local_addr().expect("addr").port()
        };
        // Something listens on the port, but at another address than the deployer came in on.
        let elsewhere = std::net::TcpListener::bind("127.0.0.2:0").expect("listen on 127.0.0.2");
        let other = elsewhere.local_addr().expect("addr").port();
        let functions = format!(
            "NL='\n'\n{}{}",
            agent_function("lockout"),
            agent_function("route_dev")
        );
        let tool = |name: &str| {
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .map(|d| std::path::Path::new(d).join(name))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("{name} on this machine"))
        };
        // A PATH of ip and awk only: no ss.
        let without_ss = tempfile::tempdir().expect("tempdir");
        for name in ["ip", "awk"] {
            std::os::unix::fs::symlink(tool(name), without_ss.path().join(name)).expect("link");
        }
        let system_path = std::env::var("PATH").unwrap_or_default();
        let check = |path: &str, conn: &str| {
            let script = format!(
                "{functions}\nCONN='{conn}'\nif lockout; then echo \"$LOCKOUT\"; else echo none; fi"
            );
            let out = std::process::Command::new("/bin/sh")
                .args(["-c", &script])
                .env("PATH", path)
                .output()
                .expect("sh");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        for path in [
            system_path.as_str(),
            &without_ss.path().display().to_string(),
        ] {
            assert_eq!(
                check(path, &format!("127.0.0.1 40000 127.0.0.1 {open}")),
                "none",
                "{path}"
            );
            assert_eq!(
                check(path, &format!("127.0.0.1 40000 127.0.0.1 {closed}")),
                format!("sshd: nothing listens on port {closed} any more"),
                "{path}"
            );
            assert_eq!(
                check(path, &format!("127.0.0.1 40000 127.0.0.1 {other}")),
                format!("sshd: nothing listens on port {other} any more"),
                "{path}"
            );
            assert_eq!(
                check(path, &format!("127.0.0.1 40000 127.0.0.2 {other}")),
                "none",
                "{path}"
            );
            assert_eq!(
                check(path, &format!("127.0.0.1 40000 192.0.2.77 {open}")),
                "address: 192.0.2.77, the address the deployer came in on, is gone",
                "{path}"
            );
        }
        drop((listener, elsewhere));
    }

    fn activation() -> Activation {
        Activation {
            name: "system".into(),
            profile_path: "/nix/var/nix/profiles/system".into(),
            store_path: "/nix/store/abc-sys".into(),
            goal: Goal::Switch,
            confirm_timeout: 30,
            activation_timeout: 240,
            magic_rollback: true,
            auto_rollback: true,
            state_dir: "/var/lib/nixpave/deploy".into(),
            temp_path: "/tmp".into(),
            id: "42".into(),
            user: "root".into(),
            health_checks: false,
        }
    }

    #[test]
    fn systemd_run_command_is_a_collected_transient_unit() {
        let argv = activation().systemd_run_argv();
        let agent = activation().agent_path();
        let mut expected: Vec<String> = [
            "systemd-run",
            "--unit",
            "nixpave-deploy-system-42",
            "--collect",
            "--quiet",
            "--description",
            "nixpave deploy activation",
            "/bin/sh",
            &agent,
            "run",
            "-n",
            "system",
            "-p",
            "/nix/var/nix/profiles/system",
            "-s",
            "/nix/store/abc-sys",
            "-g",
            "switch",
            "-c",
            "30",
            "-a",
            "240",
            "-m",
            "1",
            "-r",
            "1",
            "-d",
            "/var/lib/nixpave/deploy",
            "-i",
            "42",
            "-u",
            "root",
            "-k",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(argv, expected);
        expected.drain(..9);
        assert_eq!(activation().run_args(), expected);
        assert!(agent.starts_with("/tmp/nixpave-agent/agent-") && agent.ends_with(".sh"));
    }

    #[test]
    fn launch_script_detaches_and_waits() {
        let script = activation().launch_script();
        assert!(script.contains("systemd-run --unit nixpave-deploy-system-42 --collect"));
        assert!(script.contains("setsid /bin/sh /tmp/nixpave-agent/agent-"));
        assert!(script.contains("</dev/null >/dev/null 2>&1 &"));
        assert!(script.contains(" wait -n system -d /var/lib/nixpave/deploy -i 42 -w ready -t 490"));
    }

    #[test]
    fn agent_sets_the_target_path_itself() {
        let prelude = nixpave_remote::path_prelude();
        assert_eq!(AGENT_SCRIPT.matches(&prelude).count(), 1);
        assert!(!AGENT_SCRIPT.contains(PATH_PLACEHOLDER));
        assert_eq!(AGENT_SCRIPT.matches(RESOLVE_FUNCTION).count(), 1);
        assert!(!AGENT_SCRIPT.contains(RESOLVE_PLACEHOLDER));
        // Before the first command the agent runs.
        let at = AGENT_SCRIPT.find(&prelude).unwrap_or(usize::MAX);
        assert!(
            at < AGENT_SCRIPT.find("MODE=").unwrap_or(0),
            "PATH is set too late"
        );
        // No tool by an absolute FHS path: only /bin/sh, which NixOS has too.
        for line in AGENT_SCRIPT
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
        {
            for word in line.split(|c: char| c.is_whitespace() || c == '"' || c == '(') {
                if word.starts_with("/usr/")
                    || word.starts_with("/bin/")
                    || word.starts_with("/sbin/")
                {
                    assert_eq!(word, "/bin/sh", "hard-coded path in: {line}");
                }
            }
        }
    }

    /// Runs the install part of the agent scripts (as in `nixpave rollback`) with temp path `temp`.
    fn install_into(temp: &std::path::Path) -> (std::process::Output, Activation) {
        let mut a = activation();
        a.temp_path = temp.display().to_string();
        a.state_dir = temp.join("state").display().to_string();
        let script = format!("set -e\numask 077\n{}", a.install_lines());
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        // An agent already installed is not read again: the script may be gone before this is written.
        let _ = stdin.write_all(AGENT_SCRIPT.as_bytes());
        drop(stdin);
        (child.wait_with_output().expect("sh runs"), a)
    }

    #[test]
    fn agent_goes_to_a_private_directory_never_a_shared_one() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        // A world-writable sticky temp directory, like /tmp.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        let (out, a) = install_into(tmp.path());
        assert!(out.status.success(), "{out:?}");
        let dir = std::fs::symlink_metadata(a.agent_dir()).expect("agent dir");
        assert!(dir.is_dir());
        assert_eq!(dir.permissions().mode() & 0o7777, 0o700);
        assert_eq!(
            std::fs::read_to_string(a.agent_path()).expect("agent"),
            *AGENT_SCRIPT
        );
        let names: Vec<String> = std::fs::read_dir(a.agent_dir())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "temp files left: {names:?}");
        // Again: an existing private directory is fine.
        assert!(install_into(tmp.path()).0.status.success());

        // Someone else's directory (or a symlink) at that name: refused, nothing written through it.
        let tmp = tempfile::tempdir().expect("tempdir");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("dir");
        std::os::unix::fs::symlink(&elsewhere, tmp.path().join("nixpave-agent")).expect("symlink");
        let (out, _) = install_into(tmp.path());
        assert_eq!(out.status.code(), Some(EXIT_NOT_INSTALLED), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory of"));
        assert_eq!(std::fs::read_dir(&elsewhere).expect("list").count(), 0);
    }

    #[test]
    fn agent_directory_of_another_user_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let foreign = tmp.path().join("nixpave-agent");
        std::fs::create_dir(&foreign).expect("dir");
        // Handing a directory to another user needs root, like the lab tests (run the suite as root).
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534))
            .expect("chown to nobody: this test needs root");
        let (out, _) = install_into(tmp.path());
        assert_eq!(out.status.code(), Some(EXIT_NOT_INSTALLED), "{out:?}");
        assert_eq!(std::fs::read_dir(&foreign).expect("list").count(), 0);
    }

    #[test]
    fn goals_round_trip() {
        for g in ["switch", "boot", "test", "dry-activate"] {
            assert_eq!(g.parse::<Goal>().expect("goal").as_str(), g);
        }
        assert!("reboot".parse::<Goal>().is_err());
    }
}
