//! Running the `nix` command line tools with common options and readable errors.

use std::process::{Command, Stdio};

/// Options shared by every nix invocation (extra arguments and environment).
#[derive(Debug, Clone, Default)]
pub struct NixOptions {
    /// Extra arguments appended to every `nix` call (e.g. `--option sandbox false`).
    pub extra_args: Vec<String>,
    /// Extra environment variables (e.g. `NIX_CONF_DIR`).
    pub env: Vec<(String, String)>,
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
    #[error("`{command}` failed (exit {status:?}):\n{stderr}")]
    Failed {
        /// The command line (never contains secrets: nixpave passes them on stdin).
        command: String,
        /// Exit status, `None` when killed by a signal.
        status: Option<i32>,
        /// The last lines of its standard error.
        stderr: String,
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

/// Output of a successful nix command.
#[derive(Debug, Clone)]
pub struct NixOutput {
    /// Standard output.
    pub stdout: String,
    /// Standard error (nix prints progress there).
    pub stderr: String,
}

/// Runs `program args…` with the options' environment; fails with the stderr tail on a non-zero exit.
pub fn run_nix(
    program: &str,
    args: &[String],
    opts: &NixOptions,
    env: &[(String, String)],
) -> Result<NixOutput, NixError> {
    let command = std::iter::once(program.to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(%command, "running nix");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in opts.env.iter().chain(env) {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|source| NixError::Spawn {
        command: command.clone(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(NixError::Failed {
            command,
            status: out.status.code(),
            stderr: tail(&stderr, 20),
        });
    }
    Ok(NixOutput { stdout, stderr })
}

/// The `nix` experimental features nixpave needs, as arguments.
pub fn experimental_args() -> Vec<String> {
    vec![
        "--extra-experimental-features".into(),
        "nix-command flakes".into(),
    ]
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
