//! Running the `nix` command line tools with common options and readable errors.
//!
//! Every call goes through nixpave-remote's process runner ([`nixpave_remote::process`]): a
//! deadline ([`NixOptions::timeout`]) and cancellation ([`nixpave_remote::cancel`], Ctrl-C) stop
//! a hung nix instead of holding its caller forever.

use std::process::Command;
use std::time::Duration;

use nixpave_remote::process::{run_child, ChildRun};
use nixpave_remote::TransportError;

/// Options shared by every nix invocation (extra arguments, environment and deadline).
#[derive(Debug, Clone, Default)]
pub struct NixOptions {
    /// Extra arguments appended to every `nix` call (e.g. `--option sandbox false`).
    pub extra_args: Vec<String>,
    /// Extra environment variables (e.g. `NIX_CONF_DIR`).
    pub env: Vec<(String, String)>,
    /// The longest one nix call may run before it is killed. `None` is the call's own default:
    /// no limit for evaluations of fleets and builds (a build may take hours),
    /// [`crate::copy::COPY_TIMEOUT`] for copies, [`crate::version::VERSION_TIMEOUT`] for
    /// `nix --version`. Cancellation stops every call, whatever the limit.
    pub timeout: Option<Duration>,
}

/// A nix command that could not be run or failed.
#[derive(Debug, thiserror::Error)]
pub enum NixError {
    /// The program could not be started.
    #[error("cannot run `{command}`: {source} (is nix installed and on PATH?)")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The command exited with a failure.
    #[error("{}{}", failed_head(command, *status, stderr), shown_builds(.builds))]
    Failed {
        /// The command line (never contains secrets: nixpave passes them on stdin).
        command: String,
        /// Exit status, `None` when killed by a signal.
        status: Option<i32>,
        /// The last lines of its standard error (of a `nix build`: nix's error messages).
        stderr: String,
        /// Of a failed `nix build`: the log tails of the derivations it did not build (the failed one, and
        /// those it stopped when that one failed), in the order they started. Empty for other commands.
        builds: Vec<crate::progress::BuildLog>,
    },
    /// The command did not finish within [`NixOptions::timeout`] and was killed.
    #[error("`{command}` did not finish within {seconds} s and was stopped")]
    Timeout {
        /// The command line.
        command: String,
        /// The limit that was exceeded.
        seconds: u64,
    },
    /// Cancellation was requested (Ctrl-C) and the command was stopped.
    #[error("`{command}` was interrupted")]
    Interrupted {
        /// The command line.
        command: String,
    },
    /// The command's output was not what was expected.
    #[error("`{command}` printed unexpected output: {message}")]
    BadOutput {
        /// The command line.
        command: String,
        /// What was wrong.
        message: String,
    },
}

impl NixError {
    /// Of a failed `nix build`: the log tails of the derivations it did not build (see
    /// [`NixError::Failed::builds`]); empty otherwise.
    pub fn build_logs(&self) -> &[crate::progress::BuildLog] {
        match self {
            NixError::Failed { builds, .. } => builds,
            _ => &[],
        }
    }

    /// The error's message without the build logs, for a place that shows only some of them.
    pub fn without_build_logs(&self) -> String {
        match self {
            NixError::Failed {
                command,
                status,
                stderr,
                ..
            } => failed_head(command, *status, stderr),
            other => other.to_string(),
        }
    }
}

/// The message of [`NixError::Failed`] before its build logs.
fn failed_head(command: &str, status: Option<i32>, stderr: &str) -> String {
    format!("`{command}` failed (exit {status:?}):\n{stderr}")
}

/// How many builds' logs an error shows (all are in [`NixError::Failed::builds`]).
const SHOWN_BUILDS: usize = 3;

/// The `builds` of [`NixError::Failed`] as the error shows them: each log tail on lines of its own.
fn shown_builds(builds: &[crate::progress::BuildLog]) -> String {
    let mut text: String = builds
        .iter()
        .take(SHOWN_BUILDS)
        .map(|b| format!("\n{b}"))
        .collect();
    if builds.len() > SHOWN_BUILDS {
        text.push_str(&format!(
            "\n(and {} more unfinished builds)",
            builds.len() - SHOWN_BUILDS
        ));
    }
    text
}

/// Output of a successful nix command.
#[derive(Debug, Clone)]
pub struct NixOutput {
    /// Standard output.
    pub stdout: String,
    /// Standard error (nix prints progress there).
    pub stderr: String,
}

/// Runs `program args…` with the options' environment; fails with the stderr tail on a non-zero
/// exit, and stops the command past `opts.timeout` or on cancellation.
pub fn run_nix(
    program: &str,
    args: &[String],
    opts: &NixOptions,
    env: &[(String, String)],
) -> Result<NixOutput, NixError> {
    run_nix_streaming(program, args, opts, env, &mut |_, _| {})
}

/// [`run_nix`] with `stdin` as the command's input (secrets go there, never in argv).
pub fn run_nix_with_stdin(
    program: &str,
    args: &[String],
    opts: &NixOptions,
    stdin: &[u8],
) -> Result<NixOutput, NixError> {
    run_nix_inner(program, args, opts, &[], Some(stdin), &mut |_, _| {})
}

/// [`run_nix`], handing every output line to `on_line` as it comes (for progress).
pub fn run_nix_streaming(
    program: &str,
    args: &[String],
    opts: &NixOptions,
    env: &[(String, String)],
    on_line: &mut dyn FnMut(nixpave_remote::OutputStream, &str),
) -> Result<NixOutput, NixError> {
    run_nix_inner(program, args, opts, env, None, on_line)
}

fn run_nix_inner(
    program: &str,
    args: &[String],
    opts: &NixOptions,
    env: &[(String, String)],
    stdin: Option<&[u8]>,
    on_line: &mut dyn FnMut(nixpave_remote::OutputStream, &str),
) -> Result<NixOutput, NixError> {
    let command = std::iter::once(program.to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(%command, "running nix");
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in opts.env.iter().chain(env) {
        cmd.env(k, v);
    }
    let out = run_local_streaming(cmd, &command, opts.timeout, stdin, on_line)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.success() {
        return Err(NixError::Failed {
            command,
            status: out.status,
            stderr: tail(&stderr, 20),
            builds: Vec::new(),
        });
    }
    Ok(NixOutput { stdout, stderr })
}

/// Runs `cmd` (shown as `command`) through the process runner, cancellable and with `timeout`,
/// turning the runner's failures into [`NixError`]s.
pub(crate) fn run_local(
    cmd: Command,
    command: &str,
    timeout: Option<Duration>,
) -> Result<nixpave_remote::CommandOutput, NixError> {
    run_local_streaming(cmd, command, timeout, None, &mut |_, _| {})
}

fn run_local_streaming(
    cmd: Command,
    command: &str,
    timeout: Option<Duration>,
    stdin: Option<&[u8]>,
    on_line: &mut dyn FnMut(nixpave_remote::OutputStream, &str),
) -> Result<nixpave_remote::CommandOutput, NixError> {
    let run = ChildRun {
        host: "localhost",
        shown: command,
        stdin,
        timeout,
        cancellable: true,
    };
    run_child(cmd, run, on_line).map_err(|e| match e {
        TransportError::Timeout { seconds, .. } => NixError::Timeout {
            command: command.to_string(),
            seconds,
        },
        TransportError::Interrupted { .. } => NixError::Interrupted {
            command: command.to_string(),
        },
        TransportError::Spawn { source, .. } | TransportError::Io { source, .. } => {
            NixError::Spawn {
                command: command.to_string(),
                source,
            }
        }
        // The runner reports nothing else for a local child; keep the message if it ever does.
        other => NixError::Spawn {
            command: command.to_string(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

/// The `nix` experimental features nixpave needs, as arguments.
pub fn experimental_args() -> Vec<String> {
    vec![
        "--extra-experimental-features".into(),
        "nix-command flakes".into(),
    ]
}

/// The last `n` non-blank lines of `text` (nixpave-remote's [`nixpave_remote::last_lines`],
/// under the name this crate has used).
pub use nixpave_remote::last_lines as tail;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_hung_command_is_stopped_at_the_deadline() {
        // Any program goes through the same runner; `sleep` stands in for a hung `nix copy`.
        let opts = NixOptions {
            timeout: Some(Duration::from_millis(300)),
            ..NixOptions::default()
        };
        let started = Instant::now();
        let err = run_nix("sleep", &["30".into()], &opts, &[]).unwrap_err();
        assert!(
            matches!(&err, NixError::Timeout { command, .. } if command == "sleep 30"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_failure_keeps_status_and_stderr_tail() {
        let args = ["-c".to_string(), "echo out; echo why >&2; exit 3".into()];
        let err = run_nix("sh", &args, &NixOptions::default(), &[]).unwrap_err();
        match err {
            NixError::Failed { status, stderr, .. } => {
                assert_eq!(status, Some(3));
                assert_eq!(stderr, "why");
            }
            other => panic!("expected Failed, got {other}"),
        }
        let out = run_nix(
            "sh",
            &["-c".into(), "echo \"$X\"".into()],
            &NixOptions::default(),
            &[("X".into(), "from env".into())],
        )
        .expect("sh runs");
        assert_eq!(out.stdout, "from env\n");
    }
}
