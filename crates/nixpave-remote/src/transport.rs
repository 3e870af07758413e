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

    /// The last `lines` lines of standard error, for error messages.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
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
    fn run(&self, argv: &[String], stdin: Option<&[u8]>) -> Result<CommandOutput, TransportError>;

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
}
