//! Running the system tools the lab is made of (ip, losetup, ssh-keygen, …).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::error::LabError;

/// Every lab tool, with the Debian package that provides it.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("sshd", "openssh-server"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("nix-store", "nix-bin"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
    ("setsid", "util-linux"),
    ("losetup", "mount"),
    ("mount", "mount"),
    ("truncate", "coreutils"),
];

/// Fails unless running as root.
pub(crate) fn require_root() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// Finds `tool` on PATH or in the sbin directories (which a non-login root PATH may lack).
pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Fails with the package to install when any lab tool is missing.
pub(crate) fn require_tools() -> Result<(), LabError> {
    for (tool, package) in TOOLS {
        if which(tool).is_none() {
            return Err(LabError::MissingTool {
                tool: tool.to_string(),
                package: package.to_string(),
            });
        }
    }
    Ok(())
}

/// Path of a tool checked by [`require_tools`] (falls back to the bare name).
pub(crate) fn tool(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `program args…`, failing with `what` and its stderr unless it exits 0 within 60 s.
pub(crate) fn run(what: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
    run_with_stdin(what, program, args, None)
}

/// Like [`run`], feeding `stdin`.
pub(crate) fn run_with_stdin(
    what: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<String, LabError> {
    let shown = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let fail = |status: Option<i32>, stderr: String| LabError::Command {
        what: what.to_string(),
        command: shown.clone(),
        status,
        stderr,
    };
    let mut child = Command::new(tool(program))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(None, e.to_string()))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        let _ = pipe.write_all(data);
    }
    // These tools finish in milliseconds; the limit only guards against a wedged kernel call.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(None, "timed out after 60 s".into()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(fail(None, e.to_string())),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(None, e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(fail(
            out.status.code(),
            nixpave_remote::last_lines(&String::from_utf8_lossy(&out.stderr), 5),
        ))
    }
}

/// Sends `signal` to `pid`; a process that is already gone is fine.
pub(crate) fn signal(pid: i32, signal: i32) {
    if pid > 1 {
        // SAFETY: kill has no memory-safety preconditions; pid > 1 never targets init or a group.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// True while `pid` exists (and is not a zombie).
pub(crate) fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            // The state is the field after the parenthesised command name.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// SIGTERM, then SIGKILL for whatever survives `grace`.
pub(crate) fn terminate(pids: &[i32], grace: Duration) {
    for &pid in pids {
        signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in pids.iter().filter(|&&p| alive(p)) {
        signal(pid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_name_their_debian_package() {
        let package = |tool: &str| TOOLS.iter().find(|(t, _)| *t == tool).map(|(_, p)| *p);
        assert_eq!(package("sshd"), Some("openssh-server"));
        assert_eq!(package("nix-store"), Some("nix-bin"));
        assert_eq!(package("ip"), Some("iproute2"));
        assert!(which("definitely-not-a-tool-xyz").is_none());
        assert!(which("sh").is_some());
        let err = LabError::MissingTool {
            tool: "sshd".into(),
            package: "openssh-server".into(),
        };
        assert!(
            err.to_string().contains("apt-get install openssh-server"),
            "{err}"
        );
    }

    #[test]
    fn failing_command_reports_stderr() {
        let err = run("testing", "sh", &["-c", "echo boom >&2; exit 3"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("boom") && text.contains("Some(3)"), "{text}");
    }
}
