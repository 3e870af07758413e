//! Host-key diagnosis: turning what ssh printed on a failed connection into a precise error
//! (changed key, unknown key, unreachable host, refused login).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::SshTransport;
use crate::transport::TransportError;

/// When a connection failure happened, for the "what state is left" part of its message.
#[derive(Clone, Copy)]
pub(super) enum Phase<'a> {
    /// Opening a connection: nothing ran.
    Connect,
    /// Running this command.
    Command(&'a str),
}

impl SshTransport {
    /// Turns what ssh printed on a failed connection into a precise error.
    pub(super) fn classify_failure(&self, stderr: &str, phase: Phase) -> TransportError {
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
        let tail = crate::last_lines(stderr, 5);
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
    pub(super) fn recorded_fingerprints(&self, known_hosts: &Path) -> Vec<String> {
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
    pub(super) fn scan_fingerprint(&self) -> Option<String> {
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
}

/// Every `SHA256:…` fingerprint in `text`, in order.
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
}
