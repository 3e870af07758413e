//! How the installer reaches its target: a [`Transport`] plus what an install needs beyond
//! running commands (a nix store URL for `nix copy`, liveness probes across kexec and reboot).
//!
//! [`SshSession`] is a small OpenSSH client kept here until `nixpave_remote::SshTransport` is
//! wired in; it uses a ControlMaster socket that `nix copy` shares via `NIX_SSHOPTS`, and never
//! turns host-key checking off (the installer keeps the host keys across kexec).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nixpave_remote::{
    shell_join, shell_quote, CommandOutput, LocalTransport, OutputStream, Transport,
    TransportError, UploadSpec,
};

/// A target as the install phases need it.
pub trait Session: Send + Sync {
    /// Runs commands and moves files on the target.
    fn transport(&self) -> &dyn Transport;
    /// The nix store URL of the store rooted at `root` on the target (for `nix copy --to`).
    fn store_url(&self, root: &Path) -> String;
    /// Environment for local `nix` commands that talk to the target (e.g. `NIX_SSHOPTS`).
    fn nix_env(&self) -> Vec<(String, String)>;
    /// One fresh login attempt, bounded by `timeout`; `Err` says why it failed.
    fn probe(&self, timeout: Duration) -> Result<(), String>;
    /// Forgets cached connections (after kexec and reboot the old ones are dead).
    fn reset(&self);
}

/// The local machine as a target (tests, and installing onto disks attached to this machine).
#[derive(Debug, Default, Clone)]
pub struct LocalSession {
    transport: LocalTransport,
}

impl LocalSession {
    /// A session on this machine.
    pub fn new() -> Self {
        LocalSession::default()
    }
}

impl Session for LocalSession {
    fn transport(&self) -> &dyn Transport {
        &self.transport
    }
    fn store_url(&self, root: &Path) -> String {
        if root == Path::new("/") {
            "auto".into()
        } else {
            root.display().to_string()
        }
    }
    fn nix_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    fn probe(&self, _timeout: Duration) -> Result<(), String> {
        Ok(())
    }
    fn reset(&self) {}
}

/// How to reach a host over OpenSSH.
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// `user@host` or `host` (the user defaults to root).
    pub destination: String,
    /// TCP port.
    pub port: Option<u16>,
    /// Private key file (`-i`).
    pub identity: Option<PathBuf>,
    /// Extra `-o key=value` options (e.g. `UserKnownHostsFile=…`).
    pub options: Vec<String>,
    /// Directory for the ControlMaster socket.
    pub control_dir: PathBuf,
}

/// An OpenSSH session with a ControlMaster connection shared with `nix copy`.
#[derive(Debug)]
pub struct SshSession {
    config: SshConfig,
    host: String,
}

impl SshSession {
    /// A session; no connection is made until the first command.
    pub fn new(mut config: SshConfig) -> Self {
        if !config.destination.contains('@') {
            config.destination = format!("root@{}", config.destination);
        }
        let host = config.destination.clone();
        SshSession { config, host }
    }

    /// The options every ssh call gets (also exported as `NIX_SSHOPTS`; no spaces inside words).
    pub fn ssh_options(&self, master: bool) -> Vec<String> {
        let mut o: Vec<String> = Vec::new();
        if let Some(p) = self.config.port {
            o.extend(["-p".into(), p.to_string()]);
        }
        if let Some(i) = &self.config.identity {
            o.extend([
                "-i".into(),
                i.display().to_string(),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
            ]);
        }
        for opt in [
            "BatchMode=yes",
            "ConnectTimeout=10",
            "ServerAliveInterval=5",
            "ServerAliveCountMax=3",
            "LogLevel=ERROR",
        ] {
            o.extend(["-o".into(), opt.into()]);
        }
        if master {
            o.extend([
                "-o".into(),
                "ControlMaster=auto".into(),
                "-o".into(),
                format!("ControlPath={}/%C", self.config.control_dir.display()),
                "-o".into(),
                "ControlPersist=120".into(),
            ]);
        } else {
            o.extend(["-o".into(), "ControlPath=none".into()]);
        }
        for opt in &self.config.options {
            o.extend(["-o".into(), opt.clone()]);
        }
        o
    }

    fn ssh_command(&self, remote: &str, master: bool) -> Command {
        let _ = std::fs::create_dir_all(&self.config.control_dir);
        let mut cmd = Command::new("ssh");
        cmd.args(self.ssh_options(master))
            .arg(&self.config.destination)
            .arg("--")
            .arg(remote);
        cmd
    }

    fn connection_or_output(&self, out: CommandOutput) -> Result<CommandOutput, TransportError> {
        // ssh itself exits 255 when it cannot connect or the connection breaks.
        if out.status == Some(255) {
            return Err(TransportError::Connection {
                host: self.host.clone(),
                message: out.stderr_tail(5),
            });
        }
        Ok(out)
    }
}

impl Transport for SshSession {
    fn host(&self) -> &str {
        &self.host
    }

    fn run(&self, argv: &[String], stdin: Option<&[u8]>) -> Result<CommandOutput, TransportError> {
        self.run_streaming(argv, stdin, &mut |_, _| {})
    }

    fn run_streaming(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        on_line: &mut dyn FnMut(OutputStream, &str),
    ) -> Result<CommandOutput, TransportError> {
        let remote = shell_join(argv);
        tracing::debug!(host = %self.host, command = %remote, "ssh");
        let mut cmd = self.ssh_command(&remote, true);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| TransportError::Spawn {
            host: self.host.clone(),
            program: "ssh".into(),
            source,
        })?;
        let writer = match (stdin, child.stdin.take()) {
            (Some(data), Some(mut pipe)) => {
                let data = data.to_vec();
                Some(std::thread::spawn(move || {
                    let _ = pipe.write_all(&data);
                }))
            }
            _ => None,
        };
        let out = child
            .wait_with_output()
            .map_err(|source| TransportError::Io {
                host: self.host.clone(),
                what: "waiting for ssh".into(),
                source,
            })?;
        if let Some(w) = writer {
            let _ = w.join();
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            on_line(OutputStream::Stdout, line);
        }
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            on_line(OutputStream::Stderr, line);
        }
        self.connection_or_output(CommandOutput {
            status: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    fn upload(&self, contents: &[u8], spec: &UploadSpec) -> Result<(), TransportError> {
        let dest = spec.dest.display().to_string();
        let owner = spec.owner.clone().unwrap_or_else(|| "0:0".into());
        let script = format!(
            "set -e; umask 077; d={}; mkdir -p \"$(dirname \"$d\")\"; t=\"$d.nixpave-tmp.$$\"; cat > \"$t\"; \
             chown {} \"$t\"; chmod {:o} \"$t\"; mv -f \"$t\" \"$d\"",
            shell_quote(&dest),
            shell_quote(&owner),
            spec.mode
        );
        let argv = vec!["sh".to_string(), "-c".into(), script];
        let out = self.run(&argv, Some(contents))?;
        if !out.success() {
            return Err(TransportError::Command {
                host: self.host.clone(),
                command: format!("upload to {dest}"),
                status: out.status,
                stderr: out.stderr_tail(5),
            });
        }
        Ok(())
    }

    fn read_file(&self, path: &Path) -> Result<Vec<u8>, TransportError> {
        let argv = vec!["cat".to_string(), path.display().to_string()];
        let out = self.run(&argv, None)?;
        if !out.success() {
            return Err(TransportError::Command {
                host: self.host.clone(),
                command: shell_join(&argv),
                status: out.status,
                stderr: out.stderr_tail(5),
            });
        }
        Ok(out.stdout)
    }
}

impl Session for SshSession {
    fn transport(&self) -> &dyn Transport {
        self
    }

    fn store_url(&self, root: &Path) -> String {
        // The legacy ssh:// store (nix-store --serve) needs no signatures and accepts a chroot store.
        if root == Path::new("/") {
            format!("ssh://{}", self.config.destination)
        } else {
            format!(
                "ssh://{}?remote-store={}",
                self.config.destination,
                root.display()
            )
        }
    }

    fn nix_env(&self) -> Vec<(String, String)> {
        vec![("NIX_SSHOPTS".into(), self.ssh_options(true).join(" "))]
    }

    fn probe(&self, timeout: Duration) -> Result<(), String> {
        let secs = timeout.as_secs().max(1);
        let mut cmd = Command::new("timeout");
        cmd.arg(format!("{secs}s"))
            .arg("ssh")
            .args(self.ssh_options(false))
            .args(["-o".to_string(), format!("ConnectTimeout={secs}")])
            .arg(&self.config.destination)
            .arg("--")
            .arg("true")
            .stdin(Stdio::null());
        match cmd.output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
                Err(if err.is_empty() {
                    format!("ssh exited with {:?}", o.status.code())
                } else {
                    err
                })
            }
            Err(e) => Err(format!("cannot run ssh: {e}")),
        }
    }

    fn reset(&self) {
        let _ = Command::new("ssh")
            .args(self.ssh_options(true))
            .args(["-O", "exit"])
            .arg(&self.config.destination)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for SshSession {
    fn drop(&mut self) {
        self.reset();
    }
}
