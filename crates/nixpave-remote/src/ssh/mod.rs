//! The OpenSSH transport: the system `ssh` binary with one ControlMaster connection per host.
//!
//! Because it is plain `ssh`, `~/.ssh/config`, the agent, ProxyJump, certificates and FIDO keys
//! work as they do on the command line. One master connection (authenticated once) carries every
//! command, upload and `nix copy` (through [`SshTransport::nix_sshopts`]). nixpave asks the master for a
//! command's session itself, over its control socket (`mux`), rather than starting an `ssh` client for
//! each; should the master not open one, an `ssh` client runs the command.
//!
//! Split along its seams: `options` (what a connection is opened with), `master` (the ControlMaster
//! and its sessions), `mux` (the protocol of its control socket), `escalation` (sudo/doas/run0),
//! `host_key` (diagnosing a failed connection) and `cleanup` (stopping commands, closing the master,
//! control dirs).

mod cleanup;
mod escalation;
mod host_key;
mod master;
mod mux;
mod options;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::process::{run_child, run_started, spawn, ChildRun, Started};
use crate::target::Target;
use crate::transport::{
    shell_join, shell_quote, CommandOutput, OutputStream, Transport, TransportError, UploadSpec,
};
use cleanup::{make_control_dir, persistent_control_path, run_tag};
use escalation::Escalation;
use host_key::Phase;
pub use options::{HostKeyPolicy, PasswordPrompt, Privilege, SshOptions};

/// A host reached through the system OpenSSH client and one shared master connection.
///
/// Dropping it closes the master connection (asked over its control socket; `ssh -O exit` when that
/// fails) and removes its control socket; a persistent master ([`SshOptions::persist`]) stays open for the
/// next run.
pub struct SshTransport {
    target: Target,
    options: SshOptions,
    name: String,
    control_dir: PathBuf,
    control_path: PathBuf,
    escalation: Escalation,
    /// Serialises restarting the master after it went away.
    master: Mutex<()>,
    /// Sessions open on the master right now (see `master::MAX_SESSIONS`).
    sessions: (Mutex<usize>, Condvar),
    /// This transport found a persistent master already open and did not log in itself.
    reused: bool,
}

impl std::fmt::Debug for SshTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTransport")
            .field("name", &self.name)
            .field("target", &self.target)
            .field("control_path", &self.control_path)
            .finish()
    }
}

/// Upload into a temp file next to the destination, then chown, chmod and rename (`$1` dest,
/// `$2` octal mode, `$3` owner or empty). mktemp creates the file 0600, so secrets never show.
const UPLOAD_SCRIPT: &str = r#"set -eu
dest=$1 mode=$2 owner=$3
dir=$(dirname -- "$dest")
mkdir -p -- "$dir"
tmp=$(mktemp -- "$dir/.nixpave-upload.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
if [ -n "$owner" ]; then chown -- "$owner" "$tmp"; fi
chmod -- "$mode" "$tmp"
mv -f -- "$tmp" "$dest"
trap - EXIT
"#;

impl SshTransport {
    /// Opens the master connection to `target` (authenticating once) and decides how root
    /// commands are run. Fails within about the connect timeout when the host is unreachable,
    /// and refuses unknown or changed host keys unless the options allow it.
    pub fn connect(target: &Target, options: SshOptions) -> Result<Self, TransportError> {
        let name = options.name.clone().unwrap_or_else(|| target.to_string());
        let mut transport = SshTransport {
            target: target.clone(),
            options,
            name,
            control_path: PathBuf::new(),
            control_dir: PathBuf::new(),
            escalation: Escalation::Direct,
            master: Mutex::new(()),
            sessions: (Mutex::new(0), Condvar::new()),
            reused: false,
        };
        if transport.persistent() {
            // Keyed by everything ssh is given for the host, so only an identical connection is reused.
            let key = format!(
                "{}\0{}",
                transport.target.host,
                transport.common_args().join("\0")
            );
            let (dir, socket) =
                persistent_control_path(&key).map_err(|source| TransportError::Io {
                    host: transport.name.clone(),
                    what: "preparing the persistent ssh control directory under /tmp".into(),
                    source,
                })?;
            transport.control_dir = dir;
            transport.control_path = socket;
            transport.reused = transport.open_shared_master()?;
        } else {
            let dir = make_control_dir().map_err(|source| TransportError::Io {
                host: transport.name.clone(),
                what: "creating the ssh control directory under /tmp".into(),
                source,
            })?;
            transport.control_path = dir.join("master");
            transport.control_dir = dir;
            transport.start_master()?;
        }
        transport.escalation = transport.decide_escalation()?;
        Ok(transport)
    }

    /// The target this transport connects to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The known_hosts file given in the options (`None`: ssh's defaults, `~/.ssh/known_hosts`).
    pub fn known_hosts(&self) -> Option<&Path> {
        self.options.known_hosts.as_deref()
    }

    /// The control socket of the master connection.
    pub fn control_path(&self) -> &Path {
        &self.control_path
    }

    /// The master is shared with later runs ([`SshOptions::persist`]): dropping the transport leaves it open.
    fn persistent(&self) -> bool {
        self.options.persist.is_some()
    }

    /// Whether this transport reused a persistent master that an earlier run left open (no handshake).
    pub fn reused_master(&self) -> bool {
        self.reused
    }

    /// ssh options that make any `ssh` invocation reuse the master connection, in the form
    /// `NIX_SSHOPTS` wants (space separated; nix does not honour quotes, so paths must be
    /// free of spaces, which the control path always is).
    pub fn nix_sshopts(&self) -> String {
        let mut opts = vec![
            "-o".to_string(),
            format!("ControlPath={}", self.control_path.display()),
            "-o".into(),
            "ControlMaster=no".into(),
        ];
        let common = self.common_args();
        // nix splits NIX_SSHOPTS at white space; a word with a space (`ProxyCommand=ssh -W …`) would fall apart.
        // Such words are only needed to open a connection, and this one goes through the open master.
        let (kept, dropped) = drop_spaced_words(&common);
        if !dropped.is_empty() {
            tracing::debug!(host = %self.name, ?dropped, "ssh options with spaces left out of NIX_SSHOPTS");
        }
        opts.extend(kept);
        opts.join(" ")
    }

    /// The nix store URI of the host (`ssh://user@host`), to use together with
    /// [`nix_sshopts`](Self::nix_sshopts) in `NIX_SSHOPTS`. For a non-root login with
    /// password-less sudo, the remote `nix-store` runs through `sudo`.
    pub fn ssh_store_uri(&self) -> String {
        let base = format!("ssh://{}", self.target.user_at_host());
        match self.escalation {
            Escalation::SudoNoPassword => format!("{base}?remote-program=sudo%20-n%20nix-store"),
            Escalation::Doas => format!("{base}?remote-program=doas%20-n%20nix-store"),
            _ => base,
        }
    }

    /// The environment (`NIX_SSHOPTS`) under which `nix copy --to` [`ssh_store_uri`] reuses
    /// the master connection.
    ///
    /// [`ssh_store_uri`]: Self::ssh_store_uri
    pub fn nix_env(&self) -> Vec<(String, String)> {
        vec![("NIX_SSHOPTS".into(), self.nix_sshopts())]
    }

    /// A full `ssh` argv (options and destination, no command) that reuses the master
    /// connection; append a remote command line to run one by hand.
    pub fn ssh_argv(&self) -> Vec<String> {
        let mut argv = vec!["ssh".to_string()];
        argv.extend(self.mux_args());
        argv.extend(self.common_args());
        argv.push(self.target.host.clone());
        argv
    }

    /// Runs `argv` (as root, like [`Transport::run`]) over a brand-new connection that does not
    /// use the master: proves that a fresh login works (the magic-rollback check).
    pub fn run_fresh_login(&self, argv: &[String]) -> Result<CommandOutput, TransportError> {
        let mut cmd = Command::new("ssh");
        let stdin = self.escalation.stdin(None);
        // First, so that neither the user's options nor their ssh_config can route the proof through a
        // connection that already exists.
        cmd.args(["-o", "ControlMaster=no", "-o", "ControlPath=none", "-T"])
            .args(self.common_args());
        if stdin.is_none() {
            // Nothing secret (no sudo password) goes over this login.
            cmd.args(fresh_login_kex());
        }
        cmd.arg(&self.target.host)
            .arg(shell_join(&self.escalation.wrap(argv)));
        let shown = shell_join(argv);
        let out = run_child(
            cmd,
            ChildRun {
                host: &self.name,
                shown: &shown,
                stdin: stdin.as_deref(),
                timeout: Some(
                    self.options.connect_timeout * 2
                        + self
                            .options
                            .command_timeout
                            .unwrap_or(Duration::from_secs(60)),
                ),
                cancellable: true,
            },
            &mut |_, _| {},
        )?;
        if out.status == Some(255) {
            return Err(
                self.classify_failure(&String::from_utf8_lossy(&out.stderr), Phase::Connect)
            );
        }
        Ok(out)
    }
}

/// For the fresh-login proof when it carries no secrets (no sudo password on its stdin): curve25519 key exchange first (the rest of the
/// default list behind it), after the user's own options so an explicit `-o KexAlgorithms` of theirs wins.
/// OpenSSH 9.0 made the post-quantum hybrid sntrup761x25519 the default; its handshake costs several
/// times the CPU on both ends, and a fleet deploy makes one such login per host. The master connection
/// (keys, sudo passwords) keeps ssh's defaults. Empty for older clients (curve25519 is already first there).
fn fresh_login_kex() -> &'static [&'static str] {
    static MODERN: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        Command::new("ssh")
            .arg("-V")
            .stdin(Stdio::null())
            .output()
            .ok()
            .and_then(|o| openssh_major(&String::from_utf8_lossy(&o.stderr)))
            .is_some_and(|major| major >= 9)
    });
    if *MODERN {
        &[
            "-o",
            "KexAlgorithms=^curve25519-sha256,curve25519-sha256@libssh.org",
        ]
    } else {
        &[]
    }
}

/// The major version of `ssh -V`'s `OpenSSH_9.2p1 …`.
fn openssh_major(version: &str) -> Option<u32> {
    version
        .trim()
        .strip_prefix("OpenSSH_")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

impl SshTransport {
    /// The host name ssh really connects to, after ssh_config and the user's options (`ssh -G`): an alias
    /// such as `web1` from a `-F` file becomes its `HostName`. Falls back to the target's host.
    pub fn resolved_host(&self) -> String {
        let out = Command::new("ssh")
            .args(self.common_args())
            .arg("-G")
            .arg(&self.target.host)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        out.ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find_map(|l| l.strip_prefix("hostname ").map(str::to_string))
            })
            .unwrap_or_else(|| self.target.host.clone())
    }

    /// Closes the master connection now (also done on drop), unless it is persistent.
    pub fn close(self) {}

    /// Closes the master connection now, persistent or not (a persistent one's control socket goes with it).
    pub fn close_master(self) {
        self.terminate_master();
    }

    /// Runs `argv` through the master with the given escalation.
    fn run_raw(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        escalation: &Escalation,
    ) -> Result<CommandOutput, TransportError> {
        self.run_raw_streaming(argv, stdin, escalation, &mut |_, _| {})
    }

    fn run_raw_streaming(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        escalation: &Escalation,
        on_line: &mut dyn FnMut(OutputStream, &str),
    ) -> Result<CommandOutput, TransportError> {
        if argv.is_empty() {
            return Err(TransportError::Spawn {
                host: self.name.clone(),
                program: String::new(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
            });
        }
        let _slot = self.session_slot()?;
        self.ensure_master()?;
        let shown = shell_join(argv);
        tracing::debug!(host = %self.name, command = %shown, "run over ssh");
        // The tag lets a stopped command's whole process tree be found and killed on the host.
        let tag = run_tag();
        let command = shell_join(&escalation.wrap_with_env(argv, &[&tag]));
        let stdin = escalation.stdin(stdin);
        let run = ChildRun {
            host: &self.name,
            shown: &shown,
            stdin: stdin.as_deref(),
            timeout: self.options.command_timeout,
            cancellable: true,
        };
        let result = run_started(|| self.open_session(&command, &run), &run, on_line);
        if let Err(TransportError::Interrupted { .. } | TransportError::Timeout { .. }) = &result {
            self.kill_remote(&tag, escalation);
        }
        let out = result?;
        // 255 is ssh's own failure, unless the master is fine and the command itself said 255.
        if out.status == Some(255) && !self.master_alive() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(self.classify_failure(&stderr, Phase::Command(&shown)));
        }
        Ok(out)
    }

    /// Starts `command` (a remote command line) as a session the master opens for us; when the master
    /// refuses before anything ran, through an `ssh` mux client instead (which also reports what is wrong).
    fn open_session(&self, command: &str, run: &ChildRun<'_>) -> Result<Started, TransportError> {
        let timeout = self.options.connect_timeout * 2;
        match mux::open_session(&self.control_path, command, run.stdin.is_some(), timeout) {
            Ok(session) => Ok(session),
            Err(mux::OpenError::Refused(e)) => {
                tracing::debug!(host = %self.name, error = %e, "no session from the master; using ssh");
                let mut cmd = Command::new("ssh");
                cmd.args(self.mux_args())
                    .args(self.common_args())
                    .arg("-T")
                    .arg(&self.target.host)
                    .arg(command);
                spawn(cmd, run)
            }
            Err(mux::OpenError::Unknown(source)) => Err(TransportError::Io {
                host: self.name.clone(),
                what: format!(
                    "opening a session on the ssh master for `{}` (the command may have started)",
                    run.shown
                ),
                source,
            }),
        }
    }

    fn failed(&self, command: String, out: &CommandOutput) -> TransportError {
        TransportError::Command {
            host: self.name.clone(),
            command,
            status: out.status,
            stderr: out.stderr_tail(5),
        }
    }
}

impl Transport for SshTransport {
    fn host(&self) -> &str {
        &self.name
    }

    fn run(&self, argv: &[String], stdin: Option<&[u8]>) -> Result<CommandOutput, TransportError> {
        self.run_raw(argv, stdin, &self.escalation)
    }

    fn run_streaming(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        on_line: &mut dyn FnMut(OutputStream, &str),
    ) -> Result<CommandOutput, TransportError> {
        self.run_raw_streaming(argv, stdin, &self.escalation, on_line)
    }

    fn upload(&self, contents: &[u8], spec: &UploadSpec) -> Result<(), TransportError> {
        let dest = spec.dest.to_string_lossy().into_owned();
        let args = [
            dest.clone(),
            format!("{:o}", spec.mode),
            spec.owner.clone().unwrap_or_default(),
        ];
        let out = self.run_script(UPLOAD_SCRIPT, &args, Some(contents))?;
        if out.success() {
            Ok(())
        } else {
            Err(self.failed(format!("upload to {}", shell_quote(&dest)), &out))
        }
    }

    fn read_file(&self, path: &Path) -> Result<Vec<u8>, TransportError> {
        let path = path.to_string_lossy().into_owned();
        let out = self.run(&["cat".into(), "--".into(), path.clone()], None)?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(self.failed(format!("cat -- {}", shell_quote(&path)), &out))
        }
    }
}

/// Splits ssh arguments into those that survive nix's white-space splitting of `NIX_SSHOPTS` and those that
/// do not (a word with white space, together with the `-o`/`-J`-style flag in front of it).
fn drop_spaced_words(args: &[String]) -> (Vec<String>, Vec<String>) {
    let mut kept: Vec<String> = Vec::new();
    let mut dropped = Vec::new();
    for word in args {
        if word.chars().any(char::is_whitespace) {
            // A value whose flag stands alone before it (`-o`, `-J`, …) goes with its flag.
            if kept.last().is_some_and(|prev| is_flag_with_value(prev)) {
                dropped.extend(kept.pop());
            }
            dropped.push(word.clone());
        } else {
            kept.push(word.clone());
        }
    }
    (kept, dropped)
}

/// ssh flags that take their value as the next word (from ssh(1)'s synopsis).
fn is_flag_with_value(word: &str) -> bool {
    matches!(
        word,
        "-B" | "-b"
            | "-c"
            | "-D"
            | "-E"
            | "-e"
            | "-F"
            | "-I"
            | "-i"
            | "-J"
            | "-L"
            | "-l"
            | "-m"
            | "-O"
            | "-o"
            | "-p"
            | "-Q"
            | "-R"
            | "-S"
            | "-W"
            | "-w"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssh_versions_are_read_from_ssh_v() {
        assert_eq!(
            openssh_major("OpenSSH_9.2p1 Debian-2+deb12u10, OpenSSL 3.0.19 27 Jan 2026\n"),
            Some(9)
        );
        assert_eq!(openssh_major("OpenSSH_8.4p1 Debian-5+deb11u3"), Some(8));
        assert_eq!(openssh_major("Sun_SSH_1.1"), None);
    }

    #[test]
    fn nix_sshopts_leave_out_words_with_spaces_and_their_flags() {
        let args: Vec<String> = [
            "-F",
            "/etc/fleet ssh",
            "-o",
            "ProxyCommand=ssh -W %h:%p j",
            "-A",
            "-p",
            "22",
        ]
        .map(String::from)
        .to_vec();
        let (kept, dropped) = drop_spaced_words(&args);
        assert_eq!(kept, ["-A", "-p", "22"]);
        assert_eq!(
            dropped,
            ["-F", "/etc/fleet ssh", "-o", "ProxyCommand=ssh -W %h:%p j"]
        );
    }
}
