//! `nixpave exec`: one command on many hosts in parallel, output prefixed per host, a summary.
//!
//! Also home of [`HostArgs`]: resolving target words into hosts (`facts`, `exec`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nixpave_remote::{
    cancel, parallel, parallel::Slot, Inventory, OutputStream, ResolvedHost, SshOptions,
    TargetResolver, Transport, TransportError,
};

use super::connect::{AskPassword, ConnectArgs};

use crate::exit;

/// Which hosts: target words resolved against an inventory and the labs, and how to reach them
/// (shared by `exec` and `facts`).
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// Inventory JSON file; its host names (and `all`) become valid targets.
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl HostArgs {
    /// Turns target words into hosts (inventory names, labs, `user@host:port`).
    pub fn resolve(&self, words: &[String]) -> Result<Vec<ResolvedHost>, String> {
        let inventory = match &self.inventory {
            Some(path) => Some(Inventory::load(path).map_err(|e| e.to_string())?),
            None => None,
        };
        TargetResolver {
            inventory,
            groups: Some(std::sync::Arc::new(nixpave_lab::hosts::Labs {
                dir: self.connect.lab_dir.clone(),
            })),
        }
        .resolve(words)
        .map_err(|e| e.to_string())
    }

    /// ssh options from the flags; a sudo password is asked per host.
    pub fn ssh_options(&self) -> SshOptions {
        self.connect.ssh_options(AskPassword::PerHost)
    }
}

/// Arguments of `nixpave exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Hosts: `user@host[:port]`, inventory names, `all`, a lab name (`lab`) or `LAB:HOST`.
    #[arg(required = true, value_name = "TARGETS")]
    pub targets: Vec<String>,
    /// The command, after `--`. A single word containing spaces runs through `sh -c`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Hosts worked on at the same time (0 = all).
    #[arg(long, short = 'p', default_value_t = 16)]
    pub parallel: usize,
    /// Seconds a command may run on a host before it is stopped.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Print one JSON array at the end (host, result, exit, seconds, stdout, stderr, error)
    /// instead of prefixed lines and a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub hosts: HostArgs,
}

/// How one host's run ended.
enum HostResult {
    /// The command ran and exited with this status (`None`: killed by a signal).
    Ran(Option<i32>, nixpave_remote::CommandOutput),
    /// Connecting or running failed.
    Error(TransportError),
    /// nixpave's own worker for this host panicked (a bug): the message.
    Panicked(String),
}

/// Runs `nixpave exec`.
pub fn run(args: ExecArgs) -> miette::Result<ExitCode> {
    let hosts = match args.hosts.resolve(&args.targets) {
        Ok(hosts) => hosts,
        Err(e) => return Ok(usage_error(&e)),
    };
    if let Err(e) = cancel::install_signal_handlers() {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
    let argv = command_argv(&args.command);
    let mut base = args.hosts.ssh_options();
    base.command_timeout = args.timeout.map(Duration::from_secs);
    let width = hosts.iter().map(|h| h.name.len()).max().unwrap_or(0);
    let results = parallel::run(
        &hosts,
        args.parallel,
        || false,
        |host| {
            let started = Instant::now();
            let result = run_on_host(host, &base, &argv, (!args.json).then_some(width));
            (result, started.elapsed())
        },
    );
    let rows: Vec<(&ResolvedHost, HostResult, Duration)> = hosts
        .iter()
        .zip(results)
        .map(|(host, result)| match result {
            Slot::Done((r, t)) => (host, r, t),
            Slot::Panicked(message) => (host, HostResult::Panicked(message), Duration::ZERO),
            Slot::NotStarted => (
                host,
                HostResult::Error(TransportError::Interrupted {
                    host: host.name.clone(),
                }),
                Duration::ZERO,
            ),
        })
        .collect();
    if args.json {
        print_json(&rows);
    } else {
        print_summary(&rows);
    }
    Ok(exit::code(exit_status(&rows)))
}

fn run_on_host(
    host: &ResolvedHost,
    base: &SshOptions,
    argv: &[String],
    prefix_width: Option<usize>,
) -> HostResult {
    let ssh = match nixpave_remote::SshTransport::connect(&host.target, host.ssh_options(base)) {
        Ok(ssh) => ssh,
        Err(e) => return HostResult::Error(e),
    };
    let name = &host.name;
    let result = ssh.run_streaming(argv, None, &mut |stream, line| {
        let Some(width) = prefix_width else { return };
        match stream {
            OutputStream::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{name:<width$} | {line}");
            }
            OutputStream::Stderr => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{name:<width$} ! {line}");
            }
        }
    });
    match result {
        Ok(out) => HostResult::Ran(out.status, out),
        Err(e) => HostResult::Error(e),
    }
}

/// `-- 'a | b'` (one word with shell syntax) runs through `sh -c`; anything else is an argv.
fn command_argv(command: &[String]) -> Vec<String> {
    match command {
        [line] if line.contains(|c: char| c.is_whitespace() || "|&;<>()$`*?".contains(c)) => {
            vec!["sh".into(), "-c".into(), line.clone()]
        }
        _ => command.to_vec(),
    }
}

fn print_summary(rows: &[(&ResolvedHost, HostResult, Duration)]) {
    let mut err = std::io::stderr().lock();
    let mut table = super::table::new(&["HOST", "RESULT", "EXIT", "TIME", ""]);
    for (host, result, time) in rows {
        let (label, code, detail) = match result {
            HostResult::Ran(Some(0), _) => ("ok", "0".to_string(), String::new()),
            HostResult::Ran(Some(c), _) => ("failed", c.to_string(), String::new()),
            HostResult::Ran(None, _) => ("killed", "-".into(), "killed by a signal".into()),
            HostResult::Error(TransportError::Interrupted { .. }) => {
                ("interrupted", "-".into(), String::new())
            }
            HostResult::Error(e) if e.is_refusal() => ("refused", "-".into(), e.to_string()),
            HostResult::Error(e) => ("error", "-".into(), e.to_string()),
            HostResult::Panicked(m) => ("error", "-".into(), format!("internal error: {m}")),
        };
        table.add_row(vec![
            host.name.clone(),
            crate::ui::status_stderr(label),
            code,
            format!("{:.2}s", time.as_secs_f64()),
            detail,
        ]);
    }
    let _ = writeln!(err, "\n{}", super::table::render(table, &[2, 3]));
    let ok = rows
        .iter()
        .filter(|(_, r, _)| matches!(r, HostResult::Ran(Some(0), _)))
        .count();
    let _ = writeln!(err, "{ok}/{} hosts succeeded", rows.len());
}

fn print_json(rows: &[(&ResolvedHost, HostResult, Duration)]) {
    let value: Vec<serde_json::Value> = rows
        .iter()
        .map(|(host, result, time)| {
            let (label, exit, out, error) = match result {
                HostResult::Ran(Some(0), out) => ("ok", Some(0), Some(out), None),
                HostResult::Ran(code, out) => ("failed", *code, Some(out), None),
                HostResult::Error(TransportError::Interrupted { .. }) => {
                    ("interrupted", None, None, None)
                }
                HostResult::Error(e) if e.is_refusal() => {
                    ("refused", None, None, Some(e.to_string()))
                }
                HostResult::Error(e) => ("error", None, None, Some(e.to_string())),
                HostResult::Panicked(m) => {
                    ("error", None, None, Some(format!("internal error: {m}")))
                }
            };
            serde_json::json!({
                "host": host.name,
                "target": host.target.to_string(),
                "result": label,
                "exit": exit,
                "duration_ms": u64::try_from(time.as_millis()).unwrap_or(u64::MAX),
                "stdout": out.map(|o| o.stdout_str()),
                "stderr": out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()),
                "error": error,
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
}

fn exit_status(rows: &[(&ResolvedHost, HostResult, Duration)]) -> u8 {
    if cancel::is_cancelled() {
        return exit::INTERRUPTED;
    }
    exit::aggregate(rows.iter().map(|(_, r, _)| match r {
        HostResult::Ran(Some(0), _) => exit::OK,
        HostResult::Error(e) => super::connect::connect_exit_code(e),
        _ => exit::FAILED,
    }))
}

/// Prints a bad-input error and returns exit status 2.
pub(crate) fn usage_error(message: &str) -> ExitCode {
    exit::CliError::usage(message).exit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_and_facts_arguments_are_consistent_and_parse() {
        use clap::{Args, FromArgMatches};
        let exec = ExecArgs::augment_args(clap::Command::new("exec"));
        exec.clone().debug_assert();
        super::super::facts::FactsArgs::augment_args(clap::Command::new("facts")).debug_assert();
        let matches = exec
            .try_get_matches_from([
                "exec",
                "lab",
                "root@h:2222",
                "-p",
                "3",
                "--known-hosts",
                "/k",
                "--",
                "uname",
                "-a",
            ])
            .expect("parses");
        let args = ExecArgs::from_arg_matches(&matches).expect("args");
        assert_eq!(args.targets, ["lab", "root@h:2222"]);
        assert_eq!(args.command, ["uname", "-a"]);
        assert_eq!(args.parallel, 3);
        assert_eq!(
            args.hosts.connect.known_hosts.as_deref(),
            Some(std::path::Path::new("/k"))
        );
    }

    #[test]
    fn one_word_with_shell_syntax_goes_through_sh() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command_argv(&words(&["uname", "-a"])),
            words(&["uname", "-a"])
        );
        assert_eq!(command_argv(&words(&["uptime"])), words(&["uptime"]));
        assert_eq!(
            command_argv(&words(&["ls / | wc -l"])),
            words(&["sh", "-c", "ls / | wc -l"])
        );
    }
}
