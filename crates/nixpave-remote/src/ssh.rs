//! The OpenSSH transport: the system `ssh` binary with one ControlMaster connection per host.
//!
//! Because it is plain `ssh`, `~/.ssh/config`, the agent, ProxyJump, certificates and FIDO keys
//! work as they do on the command line. One master connection (authenticated once) carries every
//! command, upload and `nix copy` (through [`SshTransport::nix_sshopts`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::process::{run_child, ChildRun};
use crate::target::Target;
use crate::transport::{
    shell_join, shell_quote, CommandOutput, OutputStream, Transport, TransportError, UploadSpec,
};

/// When a connection failure happened, for the "what state is left" part of its message.
#[derive(Clone, Copy)]
enum Phase<'a> {
    /// Opening a connection: nothing ran.
    Connect,
    /// Running this command.
    Command(&'a str),
}

/// How unknown host keys are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Only hosts whose key is already in known_hosts are accepted (the default).
    #[default]
    Strict,
    /// First contact: an unknown key is recorded; a changed key is still refused.
    AcceptNew,
}

/// How commands get root when the login user is not root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Privilege {
    /// `sudo` (a password, when needed, is asked once per host and fed on stdin).
    #[default]
    Sudo,
    /// `doas -n` (must not need a password).
    Doas,
    /// systemd's `run0`.
    Run0,
    /// Run commands as the login user, without escalation.
    None,
}

/// Asks for the sudo password of a host (called at most once per host, with its name).
pub type PasswordPrompt = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Connection settings; `Default` gives strict host-key checking, a 10 s connect timeout and
/// keepalives every 5 s (a dead connection is noticed after 15 s).
#[derive(Clone)]
pub struct SshOptions {
    /// Name shown in messages instead of `user@host:port` (an inventory name, say).
    pub name: Option<String>,
    /// Private key to log in with (`-i`, and only that key is offered).
    pub identity_file: Option<PathBuf>,
    /// known_hosts file to use instead of the user's and the global ones.
    pub known_hosts: Option<PathBuf>,
    /// What to do with unknown host keys.
    pub host_key_policy: HostKeyPolicy,
    /// ssh_config file to use instead of `~/.ssh/config` (`-F`).
    pub ssh_config: Option<PathBuf>,
    /// TCP connect and SSH handshake timeout.
    pub connect_timeout: Duration,
    /// Interval of keepalive probes on every connection.
    pub keepalive_interval: Duration,
    /// Unanswered keepalives after which a connection counts as dead.
    pub keepalive_count_max: u32,
    /// How commands become root when the login user is not root.
    pub privilege: Privilege,
    /// Asked once per host when sudo needs a password; without it such hosts fail to connect.
    pub sudo_password: Option<PasswordPrompt>,
    /// Limit for each command; `None` waits as long as the connection is alive.
    pub command_timeout: Option<Duration>,
    /// Further `-o Key=Value` options for every ssh invocation.
    pub extra_options: Vec<String>,
    /// ssh arguments given by the user (deploy-rs `sshOpts`, `--ssh-opts`), passed verbatim to every ssh
    /// nixpave starts for the host. They stand before nixpave's own options, so they win: ssh keeps the
    /// first value it sees. Only the connection-sharing options (`ControlMaster`, `ControlPath`) come first.
    pub user_args: Vec<String>,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            name: None,
            identity_file: None,
            known_hosts: None,
            host_key_policy: HostKeyPolicy::Strict,
            ssh_config: None,
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_count_max: 3,
            privilege: Privilege::Sudo,
            sudo_password: None,
            command_timeout: None,
            extra_options: Vec::new(),
            user_args: Vec::new(),
        }
    }
}

impl std::fmt::Debug for SshOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshOptions")
            .field("name", &self.name)
            .field("identity_file", &self.identity_file)
            .field("known_hosts", &self.known_hosts)
            .field("host_key_policy", &self.host_key_policy)
            .field("ssh_config", &self.ssh_config)
            .field("connect_timeout", &self.connect_timeout)
            .field("privilege", &self.privilege)
            .field(
                "sudo_password",
                &self.sudo_password.as_ref().map(|_| "<prompt>"),
            )
            .field("command_timeout", &self.command_timeout)
            .field("extra_options", &self.extra_options)
            .field("user_args", &self.user_args)
            .finish()
    }
}

/// How root commands are wrapped on this host, decided once at connect time.
#[derive(Clone, Default)]
enum Escalation {
    /// The login user is root (or escalation is off).
    #[default]
    Direct,
    /// `sudo -n`.
    SudoNoPassword,
    /// `sudo -S -k` with this password prepended to stdin.
    SudoPassword(String),
    /// `doas -n`.
    Doas,
    /// `run0`.
    Run0,
}

impl Escalation {
    /// The command line for `argv`: escalated, and under [`TARGET_PATH`](crate::TARGET_PATH)
    /// both before escalation (finding `sudo` on NixOS) and after it (sudo may reset `PATH`).
    fn wrap(&self, argv: &[String]) -> Vec<String> {
        let argv = crate::with_target_path(argv);
        let prefix: &[&str] = match self {
            Escalation::Direct => &[],
            Escalation::SudoNoPassword => &["sudo", "-n", "--"],
            Escalation::SudoPassword(_) => &["sudo", "-S", "-k", "-p", "", "--"],
            Escalation::Doas => &["doas", "-n", "--"],
            Escalation::Run0 => &["run0", "--"],
        };
        if prefix.is_empty() {
            return argv;
        }
        let escalated: Vec<String> = prefix.iter().map(|s| s.to_string()).chain(argv).collect();
        crate::with_target_path(&escalated)
    }

    fn stdin<'a>(&self, stdin: Option<&'a [u8]>) -> Option<std::borrow::Cow<'a, [u8]>> {
        match self {
            Escalation::SudoPassword(pw) => {
                let mut data = Vec::with_capacity(pw.len() + 1 + stdin.map_or(0, <[u8]>::len));
                data.extend_from_slice(pw.as_bytes());
                data.push(b'\n');
                data.extend_from_slice(stdin.unwrap_or_default());
                Some(std::borrow::Cow::Owned(data))
            }
            _ => stdin.map(std::borrow::Cow::Borrowed),
        }
    }
}

/// A host reached through the system OpenSSH client and one shared master connection.
///
/// Dropping it closes the master connection (`ssh -O exit`) and removes its control socket.
pub struct SshTransport {
    target: Target,
    options: SshOptions,
    name: String,
    control_dir: PathBuf,
    control_path: PathBuf,
    escalation: Escalation,
    /// Serialises restarting the master after it went away.
    master: Mutex<()>,
    /// Sessions open on the master right now (see [`MAX_SESSIONS`]).
    sessions: (Mutex<usize>, Condvar),
}

/// Commands run at once over one master. sshd refuses more than `MaxSessions` (default 10)
/// sessions per connection, and ssh reports that as a failure indistinguishable from the
/// command's own exit 255, so extra commands wait for a free session instead.
const MAX_SESSIONS: usize = 8;

/// A session slot on the master, released on drop.
struct SessionSlot<'a>(&'a (Mutex<usize>, Condvar));

impl Drop for SessionSlot<'_> {
    fn drop(&mut self) {
        let (count, freed) = self.0;
        *count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        freed.notify_one();
    }
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
        let control_dir = make_control_dir().map_err(|source| TransportError::Io {
            host: name.clone(),
            what: "creating the ssh control directory under /tmp".into(),
            source,
        })?;
        let mut transport = SshTransport {
            target: target.clone(),
            options,
            name,
            control_path: control_dir.join("master"),
            control_dir,
            escalation: Escalation::Direct,
            master: Mutex::new(()),
            sessions: (Mutex::new(0), Condvar::new()),
        };
        transport.start_master()?;
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
        // First, so that neither the user's options nor their ssh_config can route the proof through a
        // connection that already exists.
        cmd.args(["-o", "ControlMaster=no", "-o", "ControlPath=none", "-T"])
            .args(self.common_args())
            .arg(&self.target.host)
            .arg(shell_join(&self.escalation.wrap(argv)));
        let shown = shell_join(argv);
        let stdin = self.escalation.stdin(None);
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

    /// Closes the master connection now (also done on drop).
    pub fn close(self) {}

    /// Options shared by every ssh invocation (master, clients, nix): the user's verbatim arguments first
    /// (ssh keeps the first value of an option, so they win), then nixpave's defaults.
    fn common_args(&self) -> Vec<String> {
        let o = &self.options;
        let mut args: Vec<String> = o.user_args.clone();
        let mut opt = |kv: String| {
            args.push("-o".into());
            args.push(kv);
        };
        opt("BatchMode=yes".into());
        opt(format!(
            "ConnectTimeout={}",
            o.connect_timeout.as_secs().max(1)
        ));
        opt(format!(
            "ServerAliveInterval={}",
            o.keepalive_interval.as_secs().max(1)
        ));
        opt(format!(
            "ServerAliveCountMax={}",
            o.keepalive_count_max.max(1)
        ));
        opt(format!(
            "StrictHostKeyChecking={}",
            match o.host_key_policy {
                HostKeyPolicy::Strict => "yes",
                HostKeyPolicy::AcceptNew => "accept-new",
            }
        ));
        if let Some(known) = &o.known_hosts {
            opt(format!("UserKnownHostsFile={}", known.display()));
            opt("GlobalKnownHostsFile=/dev/null".into());
        }
        if let Some(key) = &o.identity_file {
            opt(format!("IdentityFile={}", key.display()));
            opt("IdentitiesOnly=yes".into());
        }
        opt("LogLevel=ERROR".into());
        for extra in &o.extra_options {
            opt(extra.clone());
        }
        if let Some(port) = self.target.port {
            args.push("-p".into());
            args.push(port.to_string());
        }
        if let Some(user) = &self.target.user {
            args.push("-l".into());
            args.push(user.clone());
        }
        // ssh reads only the last `-F`: a config file among the user's arguments beats this one.
        if let Some(config) = &o.ssh_config {
            args.insert(0, config.display().to_string());
            args.insert(0, "-F".into());
        }
        args
    }

    fn mux_args(&self) -> Vec<String> {
        vec![
            "-o".into(),
            "ControlMaster=no".into(),
            "-S".into(),
            self.control_path.display().to_string(),
        ]
    }

    /// Starts the master (`ssh -M -N -f`, backgrounded by ssh itself once authenticated).
    fn start_master(&self) -> Result<(), TransportError> {
        let log = self.control_dir.join("master.log");
        let stderr = std::fs::File::create(&log).map_err(|source| TransportError::Io {
            host: self.name.clone(),
            what: format!("creating {}", log.display()),
            source,
        })?;
        let mut cmd = Command::new("ssh");
        cmd.args(["-M", "-N", "-f", "-S"])
            .arg(&self.control_path)
            // A safety net: a master orphaned by a killed nixpave exits after being idle.
            .args(["-o", "ControlPersist=600"])
            .args(self.common_args())
            .arg(&self.target.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        tracing::debug!(host = %self.name, "opening ssh master connection");
        let mut child = cmd.spawn().map_err(|source| TransportError::Spawn {
            host: self.name.clone(),
            program: "ssh".into(),
            source,
        })?;
        // ConnectTimeout covers TCP and the banner; authentication gets some more time.
        let limit = self.options.connect_timeout * 2 + Duration::from_secs(10);
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(source) => {
                    return Err(TransportError::Io {
                        host: self.name.clone(),
                        what: "waiting for ssh".into(),
                        source,
                    })
                }
            }
            if crate::cancel::is_cancelled() || started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                if crate::cancel::is_cancelled() {
                    return Err(TransportError::Interrupted {
                        host: self.name.clone(),
                    });
                }
                return Err(TransportError::Connection {
                    host: self.name.clone(),
                    message: format!(
                        "no ssh session after {} s (the host accepted TCP but did not finish \
                         the handshake or authentication); nothing was changed",
                        limit.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        if status.success() && self.control_path.exists() {
            return Ok(());
        }
        Err(self.classify_failure(&stderr, Phase::Connect))
    }

    /// Turns what ssh printed on a failed connection into a precise error.
    fn classify_failure(&self, stderr: &str, phase: Phase) -> TransportError {
        let host = self.name.clone();
        if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
            let offered = fingerprints(stderr).into_iter().next().unwrap_or_default();
            let known_hosts = offending_file(stderr)
                .or_else(|| self.options.known_hosts.clone())
                .unwrap_or_else(|| PathBuf::from("~/.ssh/known_hosts"));
            let expected = self.recorded_fingerprints(&known_hosts);
            return TransportError::HostKeyMismatch {
                host,
                expected: if expected.is_empty() {
                    "(see known_hosts)".into()
                } else {
                    expected.join(", ")
                },
                offered: if offered.is_empty() {
                    "(not shown by ssh)".into()
                } else {
                    offered
                },
                known_hosts: known_hosts.display().to_string(),
            };
        }
        if stderr.contains("Host key verification failed")
            || stderr.contains("host key is known for")
        {
            return TransportError::HostKeyUnknown {
                host,
                offered: self
                    .scan_fingerprint()
                    .unwrap_or_else(|| "fingerprint unavailable".into()),
                known_hosts: self
                    .options
                    .known_hosts
                    .as_ref()
                    .map_or_else(|| "~/.ssh/known_hosts".into(), |p| p.display().to_string()),
            };
        }
        let tail = last_lines(stderr, 5);
        let hint = if tail.contains("timed out") {
            " — the host did not answer within the connect timeout: is it up, and is the address right?"
        } else if tail.contains("Connection refused") {
            " — nothing listens on the ssh port: is sshd running?"
        } else if tail.contains("Permission denied") {
            " — authentication failed: check the user, the key (--identity) or the agent"
        } else {
            ""
        };
        let state = match phase {
            Phase::Connect => "nothing was changed on the host".to_string(),
            Phase::Command(command) => format!(
                "the connection broke while running `{command}`: it may have partly run; \
                 check the host before retrying"
            ),
        };
        TransportError::Connection {
            host,
            message: format!(
                "{}{hint}; {state}",
                if tail.is_empty() {
                    "ssh exited without a message"
                } else {
                    tail.as_str()
                }
            ),
        }
    }

    /// Fingerprints recorded for this host in `known_hosts` (`ssh-keygen -l -F`).
    fn recorded_fingerprints(&self, known_hosts: &Path) -> Vec<String> {
        let pattern = match self.target.port {
            Some(port) if port != 22 => format!("[{}]:{port}", self.target.host),
            _ => self.target.host.clone(),
        };
        Command::new("ssh-keygen")
            .args(["-l", "-F", &pattern, "-f"])
            .arg(known_hosts)
            .stdin(Stdio::null())
            .output()
            .map(|out| fingerprints(&String::from_utf8_lossy(&out.stdout)))
            .unwrap_or_default()
    }

    /// Fingerprint of the key the host offers now (best effort, for the unknown-key message).
    fn scan_fingerprint(&self) -> Option<String> {
        let timeout = self.options.connect_timeout.as_secs().max(1).to_string();
        let mut scan = Command::new("ssh-keyscan");
        scan.args(["-T", &timeout, "-t", "ed25519,ecdsa,rsa"]);
        if let Some(port) = self.target.port {
            scan.args(["-p", &port.to_string()]);
        }
        let keys = scan
            .arg(&self.target.host)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let mut keygen = Command::new("ssh-keygen")
            .args(["-l", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        if let Some(mut stdin) = keygen.stdin.take() {
            use std::io::Write;
            let _ = stdin.write_all(&keys.stdout);
        }
        let out = keygen.wait_with_output().ok()?;
        fingerprints(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .next()
    }

    /// Decides once how root commands run: directly when logged in as root, else through the
    /// configured escalation (asking for the sudo password at most once).
    fn decide_escalation(&self) -> Result<Escalation, TransportError> {
        if self.target.is_root_user() || self.options.privilege == Privilege::None {
            return Ok(Escalation::Direct);
        }
        let uid = self.run_raw(&["id".into(), "-u".into()], None, &Escalation::Direct)?;
        if uid.stdout_str().trim() == "0" {
            return Ok(Escalation::Direct);
        }
        let check = |esc: &Escalation, input: Option<&[u8]>| -> Result<bool, TransportError> {
            Ok(self.run_raw(&["true".into()], input, esc)?.success())
        };
        match self.options.privilege {
            Privilege::None => Ok(Escalation::Direct),
            Privilege::Doas => Ok(Escalation::Doas),
            Privilege::Run0 => Ok(Escalation::Run0),
            Privilege::Sudo => {
                if check(&Escalation::SudoNoPassword, None)? {
                    return Ok(Escalation::SudoNoPassword);
                }
                let Some(prompt) = &self.options.sudo_password else {
                    return Err(TransportError::Connection {
                        host: self.name.clone(),
                        message: "logged in as a non-root user and `sudo -n true` failed: sudo \
                                  needs a password (ask for it with --ask-sudo-password) or is \
                                  not allowed for this user"
                            .into(),
                    });
                };
                let password = prompt(&self.name).ok_or_else(|| TransportError::Interrupted {
                    host: self.name.clone(),
                })?;
                let esc = Escalation::SudoPassword(password);
                if check(&esc, None)? {
                    Ok(esc)
                } else {
                    Err(TransportError::Connection {
                        host: self.name.clone(),
                        message: "sudo refused the password (or the user may not use sudo)".into(),
                    })
                }
            }
        }
    }

    /// Restarts the master when its socket vanished (it was killed, or idled out).
    fn ensure_master(&self) -> Result<(), TransportError> {
        let _guard = self.master.lock().unwrap_or_else(|p| p.into_inner());
        if self.control_path.exists() {
            return Ok(());
        }
        tracing::info!(host = %self.name, "ssh master connection is gone; reconnecting");
        self.start_master()
    }

    fn master_alive(&self) -> bool {
        Command::new("ssh")
            .arg("-S")
            .arg(&self.control_path)
            .args(self.common_args())
            .args(["-O", "check"])
            .arg(&self.target.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
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
        let mut tagged = vec!["env".to_string(), tag.clone()];
        tagged.extend(argv.iter().cloned());
        let mut cmd = Command::new("ssh");
        cmd.args(self.mux_args())
            .args(self.common_args())
            .arg("-T")
            .arg(&self.target.host)
            .arg(shell_join(&escalation.wrap(&tagged)));
        let stdin = escalation.stdin(stdin);
        let result = run_child(
            cmd,
            ChildRun {
                host: &self.name,
                shown: &shown,
                stdin: stdin.as_deref(),
                timeout: self.options.command_timeout,
                cancellable: true,
            },
            on_line,
        );
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

    /// Waits for a free session on the master (cancellable).
    fn session_slot(&self) -> Result<SessionSlot<'_>, TransportError> {
        let (count, freed) = &self.sessions;
        let mut open = count.lock().unwrap_or_else(|p| p.into_inner());
        while *open >= MAX_SESSIONS {
            if crate::cancel::is_cancelled() {
                return Err(TransportError::Interrupted {
                    host: self.name.clone(),
                });
            }
            open = freed
                .wait_timeout(open, Duration::from_millis(50))
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        *open += 1;
        Ok(SessionSlot(&self.sessions))
    }

    /// Stops, on the host, every process of a command that was interrupted or timed out (ssh
    /// gives commands without a terminal no hangup signal). Best effort, bounded by 5 s.
    fn kill_remote(&self, tag: &str, escalation: &Escalation) {
        if !self.control_path.exists() {
            return;
        }
        let script = format!(
            "for d in /proc/[0-9]*; do \
               if tr '\\0' '\\n' < \"$d/environ\" 2>/dev/null | grep -qx {tag}; then \
                 kill -TERM \"${{d#/proc/}}\" 2>/dev/null; fi; done; true",
            tag = shell_quote(tag)
        );
        let argv = ["sh".to_string(), "-c".into(), script];
        let mut cmd = Command::new("ssh");
        cmd.args(self.mux_args())
            .args(self.common_args())
            .arg("-T")
            .arg(&self.target.host)
            .arg(shell_join(&escalation.wrap(&argv)));
        let stdin = escalation.stdin(None);
        let result = run_child(
            cmd,
            ChildRun {
                host: &self.name,
                shown: "stop the interrupted command",
                stdin: stdin.as_deref(),
                timeout: Some(Duration::from_secs(5)),
                cancellable: false,
            },
            &mut |_, _| {},
        );
        if let Err(e) = result {
            tracing::warn!(host = %self.name, error = %e, "could not stop the interrupted command on the host");
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

impl Drop for SshTransport {
    fn drop(&mut self) {
        if self.control_path.exists() {
            let mut cmd = Command::new("ssh");
            cmd.arg("-S")
                .arg(&self.control_path)
                .args(self.common_args())
                .args(["-O", "exit"])
                .arg(&self.target.host);
            let _ = run_child(
                cmd,
                ChildRun {
                    host: &self.name,
                    shown: "ssh -O exit",
                    stdin: None,
                    timeout: Some(Duration::from_secs(5)),
                    cancellable: false,
                },
                &mut |_, _| {},
            );
        }
        let _ = std::fs::remove_dir_all(&self.control_dir);
    }
}

/// A fresh private directory for control sockets: short (socket paths are limited to 108
/// bytes) and free of spaces (NIX_SSHOPTS is split on whitespace).
fn make_control_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if COUNTER.load(Ordering::Relaxed) == 0 {
        sweep_stale_control_dirs();
    }
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/nixpave-ssh-{}-{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Removes control directories of nixpave processes that died without cleaning up (killed
/// hard); a directory whose master still listens is left alone (it exits by ControlPersist).
fn sweep_stale_control_dirs() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("nixpave-ssh-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let owner_alive = Path::new(&format!("/proc/{pid}")).exists();
        if pid != std::process::id() && !owner_alive && !dir.join("master").exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// `NIXPAVE_RUN=<pid>-<n>`: unique per command of this process, inherited by its children.
fn run_tag() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "NIXPAVE_RUN={}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Every `SHA256:…` fingerprint in `text`, in order.
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

fn fingerprints(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter(|word| word.starts_with("SHA256:"))
        .map(|word| word.trim_end_matches(['.', ',']).to_string())
        .collect()
}

/// The file named in ssh's "Offending … key in FILE:LINE".
fn offending_file(stderr: &str) -> Option<PathBuf> {
    stderr.lines().find_map(|line| {
        let rest = line.split_once("Offending ")?.1;
        let location = rest.split_once(" key in ")?.1.trim();
        let (file, _line) = location.rsplit_once(':')?;
        Some(PathBuf::from(file))
    })
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MISMATCH: &str = "\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
The fingerprint for the ED25519 key sent by the remote host is
SHA256:abcDEF123+/xyz.
Offending ED25519 key in /tmp/lab/known_hosts:3
Host key verification failed.
";

    #[test]
    fn finds_fingerprints_and_offending_file() {
        assert_eq!(fingerprints(MISMATCH), vec!["SHA256:abcDEF123+/xyz"]);
        assert_eq!(
            offending_file(MISMATCH),
            Some(PathBuf::from("/tmp/lab/known_hosts"))
        );
        let keygen = "# Host h found: line 1 \n256 SHA256:QQQ h (ED25519)\n";
        assert_eq!(fingerprints(keygen), vec!["SHA256:QQQ"]);
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

    #[test]
    fn sudo_password_goes_to_stdin_never_argv() {
        let esc = Escalation::SudoPassword("s3cret".into());
        let argv = esc.wrap(&["cat".into()]);
        assert!(!argv.iter().any(|a| a.contains("s3cret")));
        assert_eq!(argv[4..6], ["sudo".to_string(), "-S".to_string()]);
        let stdin = esc.stdin(Some(b"data")).expect("stdin");
        assert_eq!(&*stdin, b"s3cret\ndata");
    }

    #[test]
    fn control_dirs_are_unique_short_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let a = make_control_dir().expect("dir");
        let b = make_control_dir().expect("dir");
        assert_ne!(a, b);
        assert!(a.join("master").as_os_str().len() < 100);
        let mode = std::fs::metadata(&a).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let _ = std::fs::remove_dir(a);
        let _ = std::fs::remove_dir(b);
    }
}
