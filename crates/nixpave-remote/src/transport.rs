//! The seam between executors and the machines they act on.

use std::path::PathBuf;

/// Which stream a line of streamed command output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
}

/// What a finished command left behind.
#[derive(Debug, Clone, Default)]
pub struct CommandOutput {
    /// Exit status; `None` when the command was killed by a signal.
    pub status: Option<i32>,
    /// Everything the command wrote to standard output.
    pub stdout: Vec<u8>,
    /// Everything the command wrote to standard error.
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// Standard output as (lossy) UTF-8.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The last `lines` non-blank lines of standard error, for error messages.
    pub fn stderr_tail(&self, lines: usize) -> String {
        last_lines(&String::from_utf8_lossy(&self.stderr), lines)
    }
}

/// Where and how an uploaded file lands.
#[derive(Debug, Clone)]
pub struct UploadSpec {
    /// Final absolute path on the host.
    pub dest: PathBuf,
    /// Permission bits, e.g. `0o600`.
    pub mode: u32,
    /// Owner as `user` or `user:group`; `None` keeps the transport user's default.
    pub owner: Option<String>,
}

/// Failures of the transport itself (not of the command it ran).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The program could not be started at all.
    #[error("{host}: cannot start `{program}`: {source}")]
    Spawn {
        /// Host name as shown to the user.
        host: String,
        /// The program that failed to start.
        program: String,
        /// The underlying OS error.
        source: std::io::Error,
    },
    /// Reading or writing a file on the host failed.
    #[error("{host}: {what}: {source}")]
    Io {
        /// Host name as shown to the user.
        host: String,
        /// What was being done.
        what: String,
        /// The underlying OS error.
        source: std::io::Error,
    },
    /// The host could not be reached or the connection broke.
    #[error("{host}: connection failed: {message}")]
    Connection {
        /// Host name as shown to the user.
        host: String,
        /// What ssh said.
        message: String,
    },
    /// A command needed for a transport operation (upload, read) failed.
    #[error("{host}: `{command}` failed (exit {status:?}): {stderr}")]
    Command {
        /// Host name as shown to the user.
        host: String,
        /// The command line that failed.
        command: String,
        /// Its exit status.
        status: Option<i32>,
        /// Tail of its standard error.
        stderr: String,
    },
    /// The operation did not finish in time.
    #[error("{host}: `{command}` timed out after {seconds} s")]
    Timeout {
        /// Host name as shown to the user.
        host: String,
        /// The command line that timed out.
        command: String,
        /// The limit that was exceeded.
        seconds: u64,
    },
    /// The user interrupted the operation.
    #[error("{host}: interrupted")]
    Interrupted {
        /// Host name as shown to the user.
        host: String,
    },
    /// The host offered a key that differs from the one recorded in known_hosts: refused.
    #[error(
        "{host}: refusing to connect: the host key changed (possible man-in-the-middle)\n  \
         expected: {expected}\n  offered:  {offered}\n  recorded in: {known_hosts}\n  \
         if the host was legitimately reinstalled, remove its old entry (ssh-keygen -R HOST -f {known_hosts}) and retry"
    )]
    HostKeyMismatch {
        /// Host name as shown to the user.
        host: String,
        /// Fingerprint(s) recorded in known_hosts for this host.
        expected: String,
        /// Fingerprint of the key the host offered.
        offered: String,
        /// The known_hosts file that holds the expected key.
        known_hosts: String,
    },
    /// The host's key is not known yet and strict checking is on: refused.
    #[error(
        "{host}: refusing to connect: its host key ({offered}) is not in {known_hosts}; \
         check it out of band, then retry with --accept-new-host-key to record it"
    )]
    HostKeyUnknown {
        /// Host name as shown to the user.
        host: String,
        /// Fingerprint of the key the host offered, when ssh printed it.
        offered: String,
        /// The known_hosts file(s) that were searched.
        known_hosts: String,
    },
}

impl TransportError {
    /// True when the failure is a refusal for safety (host key), not a broken connection.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            TransportError::HostKeyMismatch { .. } | TransportError::HostKeyUnknown { .. }
        )
    }
}

/// A machine that commands can be run on and files moved to and from.
///
/// Commands are always given as an argv (no shell); implementations that must pass through a
/// shell (ssh) quote every word. Commands run with root privileges: a transport that logs in
/// as another user wraps them in its privilege-escalation command.
pub trait Transport: Send + Sync {
    /// Name of the host for messages, e.g. `root@10.0.0.2` or `localhost`.
    fn host(&self) -> &str;

    /// Runs `argv`, feeding `stdin` (if any), and collects its output.
    fn run(&self, argv: &[String], stdin: Option<&[u8]>) -> Result<CommandOutput, TransportError> {
        self.run_streaming(argv, stdin, &mut |_, _| {})
    }

    /// Runs `argv` and calls `on_line` for every line of output as it arrives.
    /// Returns the collected output as well.
    fn run_streaming(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        on_line: &mut dyn FnMut(OutputStream, &str),
    ) -> Result<CommandOutput, TransportError>;

    /// Writes `contents` atomically to `spec.dest` (temp file, chown, chmod, rename).
    fn upload(&self, contents: &[u8], spec: &UploadSpec) -> Result<(), TransportError>;

    /// Reads a whole file from the host.
    fn read_file(&self, path: &std::path::Path) -> Result<Vec<u8>, TransportError>;

    /// Runs a POSIX `sh` script (passed as `sh -c SCRIPT sh ARGS...`), feeding `stdin` (if any).
    fn run_script(
        &self,
        script: &str,
        args: &[String],
        stdin: Option<&[u8]>,
    ) -> Result<CommandOutput, TransportError> {
        let mut argv = vec!["sh".to_string(), "-c".into(), script.into(), "sh".into()];
        argv.extend(args.iter().cloned());
        self.run(&argv, stdin)
    }

    /// Copies the local directory `source` to `spec.dest` on the host: the tree is unpacked next
    /// to the destination, owned and moded (`spec.mode` applies to the top directory), then
    /// renamed into place; an existing destination is replaced. Needs `tar` on both sides.
    fn upload_dir(
        &self,
        source: &std::path::Path,
        spec: &UploadSpec,
    ) -> Result<(), TransportError> {
        let tar = std::process::Command::new("tar")
            .arg("-C")
            .arg(source)
            .args(["--numeric-owner", "-cf", "-", "."])
            .output()
            .map_err(|source| TransportError::Spawn {
                host: "localhost".into(),
                program: "tar".into(),
                source,
            })?;
        if !tar.status.success() {
            return Err(TransportError::Command {
                host: "localhost".into(),
                command: format!("tar -C {} -cf - .", source.display()),
                status: tar.status.code(),
                stderr: String::from_utf8_lossy(&tar.stderr).into_owned(),
            });
        }
        let args = vec![
            spec.dest.to_string_lossy().into_owned(),
            format!("{:o}", spec.mode),
            spec.owner.clone().unwrap_or_default(),
        ];
        let out = self.run_script(UPLOAD_DIR_SCRIPT, &args, Some(&tar.stdout))?;
        if out.success() {
            Ok(())
        } else {
            Err(TransportError::Command {
                host: self.host().to_string(),
                command: format!("unpack into {}", spec.dest.display()),
                status: out.status,
                stderr: out.stderr_tail(5),
            })
        }
    }
}

/// Unpacks a tar stream from stdin next to `$1`, then swaps it into place (mode `$2`, owner `$3`).
const UPLOAD_DIR_SCRIPT: &str = r#"set -eu
dest=$1 mode=$2 owner=$3
parent=$(dirname -- "$dest")
mkdir -p -- "$parent"
tmp=$(mktemp -d -- "$parent/.nixpave-upload.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
tar -C "$tmp" --no-same-owner -xf -
if [ -n "$owner" ]; then chown -R -- "$owner" "$tmp"; fi
chmod -- "$mode" "$tmp"
if [ -e "$dest" ]; then rm -rf -- "$dest.nixpave-old"; mv -- "$dest" "$dest.nixpave-old"; fi
mv -- "$tmp" "$dest"
trap - EXIT
rm -rf -- "$dest.nixpave-old"
"#;

/// The last `n` non-blank lines of `text`: the one "tail" of the workspace, for error messages
/// (blank lines say nothing there and would crowd out lines that do).
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// An owned argv (what [`Transport::run`] takes) from string slices.
pub fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Renders an argv as a shell-safe command line (for messages and for `ssh`).
pub fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes one word for a POSIX shell; words made only of safe characters stay bare.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(shell_quote("/dev/sda1"), "/dev/sda1");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn last_lines_keeps_the_last_non_blank_ones() {
        assert_eq!(last_lines("a\nb\n\n  \nc\n\n", 2), "b\nc");
        assert_eq!(last_lines("only\n", 5), "only");
        assert_eq!(last_lines("", 3), "");
        let out = CommandOutput {
            status: Some(1),
            stdout: Vec::new(),
            stderr: b"one\ntwo\nthree\n".to_vec(),
        };
        assert_eq!(out.stderr_tail(2), "two\nthree");
    }
}
