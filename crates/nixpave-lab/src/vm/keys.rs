//! SSH keys of a VM: the client key the lab logs in with and the VM's own host key, both made on the host so that
//! known_hosts is exact from the first connection (strict host-key checking stays on).

use std::path::Path;
use std::process::Command;

use super::VmError;
use nixpave_remote::last_lines;

/// Creates an ed25519 key pair at `path` (and `path.pub`) without a passphrase, unless it exists.
pub(crate) fn ensure_keypair(path: &Path, comment: &str) -> Result<(), VmError> {
    if path.exists() {
        return Ok(());
    }
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .map_err(|source| VmError::Spawn {
            program: "ssh-keygen".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(VmError::Command {
            command: format!("ssh-keygen -t ed25519 -f {}", path.display()),
            status: out.status.to_string(),
            stderr_tail: last_lines(&String::from_utf8_lossy(&out.stderr), 5),
        });
    }
    Ok(())
}

/// The known_hosts line for a host key served on `127.0.0.1:port`.
pub(crate) fn known_hosts_line(port: u16, public_key: &str) -> String {
    let mut fields = public_key.split_whitespace();
    let kind = fields.next().unwrap_or_default();
    let key = fields.next().unwrap_or_default();
    format!("[127.0.0.1]:{port} {kind} {key}\n")
}

#[cfg(test)]
mod tests {
    use super::known_hosts_line;

    #[test]
    fn known_hosts_line_drops_the_comment_and_brackets_the_port() {
        assert_eq!(
            known_hosts_line(2222, "ssh-ed25519 AAAAC3Nza vm-host-key\n"),
            "[127.0.0.1]:2222 ssh-ed25519 AAAAC3Nza\n"
        );
    }
}
