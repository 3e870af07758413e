//! Running on the machine nixpave itself runs on.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::process::{run_child, ChildRun};
use crate::transport::{
    shell_join, CommandOutput, OutputStream, Transport, TransportError, UploadSpec,
};

/// The local machine. Commands run directly (nixpave is expected to run as root for disk work).
///
/// Through the [`Transport`] trait a command runs to its end: no deadline, and a cancellation
/// request does not cut it in half (a local disk step stops between steps; a terminal's Ctrl-C
/// reaches the child directly, as it shares nixpave's process group).
/// [`LocalTransport::run_within`] adds a deadline and cancellation.
#[derive(Debug, Clone, Default)]
pub struct LocalTransport;

const HOST: &str = "localhost";

impl LocalTransport {
    fn command(argv: &[String]) -> Result<Command, TransportError> {
        let (program, args) = argv.split_first().ok_or_else(|| TransportError::Spawn {
            host: HOST.into(),
            program: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
        })?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        Ok(cmd)
    }

    /// Runs `argv` like [`Transport::run_streaming`], but kills it after `timeout` (when given)
    /// and when cancellation is requested ([`crate::cancel`]): the result is then
    /// [`TransportError::Timeout`] or [`TransportError::Interrupted`].
    pub fn run_within(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        timeout: Option<Duration>,
        on_line: &mut dyn FnMut(OutputStream, &str),
    ) -> Result<CommandOutput, TransportError> {
        self.spawn_run(argv, stdin, timeout, true, on_line)
    }

    fn spawn_run(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        timeout: Option<Duration>,
        cancellable: bool,
        on_line: &mut dyn FnMut(OutputStream, &str),
    ) -> Result<CommandOutput, TransportError> {
        let shown = shell_join(argv);
        tracing::debug!(command = %shown, "run locally");
        let run = ChildRun {
            host: HOST,
            shown: &shown,
            stdin,
            timeout,
            cancellable,
        };
        run_child(Self::command(argv)?, run, on_line)
    }
}

impl Transport for LocalTransport {
    fn host(&self) -> &str {
        HOST
    }

    fn run_streaming(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        on_line: &mut dyn FnMut(OutputStream, &str),
    ) -> Result<CommandOutput, TransportError> {
        self.spawn_run(argv, stdin, None, false, on_line)
    }

    fn upload(&self, contents: &[u8], spec: &UploadSpec) -> Result<(), TransportError> {
        let io = |what: &str, source| TransportError::Io {
            host: HOST.into(),
            what: format!("{what} {}", spec.dest.display()),
            source,
        };
        let dir = spec.dest.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
        let name = spec
            .dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.nixpave-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            // Restrict before writing so secrets are never readable by others, even briefly.
            file.set_permissions(std::fs::Permissions::from_mode(spec.mode))?;
            file.write_all(contents)?;
            file.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("writing", e));
        }
        if let Some(owner) = &spec.owner {
            let tmp_str = tmp.to_string_lossy().into_owned();
            let out = self.run(&["chown".into(), owner.clone(), tmp_str.clone()], None)?;
            if !out.success() {
                let _ = std::fs::remove_file(&tmp);
                return Err(TransportError::Command {
                    host: HOST.into(),
                    command: format!("chown {owner} {tmp_str}"),
                    status: out.status,
                    stderr: out.stderr_tail(5),
                });
            }
        }
        std::fs::rename(&tmp, &spec.dest).map_err(|e| io("renaming into place", e))
    }

    fn read_file(&self, path: &Path) -> Result<Vec<u8>, TransportError> {
        std::fs::read(path).map_err(|source| TransportError::Io {
            host: HOST.into(),
            what: format!("reading {}", path.display()),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::argv;

    #[test]
    fn runs_and_streams_lines() {
        let mut lines = Vec::new();
        let out = LocalTransport
            .run_streaming(
                &argv(&["sh", "-c", "echo one; echo two >&2; echo three; exit 3"]),
                None,
                &mut |s, l| lines.push((s, l.to_string())),
            )
            .expect("sh runs");
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stdout_str(), "one\nthree\n");
        assert!(lines.contains(&(OutputStream::Stderr, "two".to_string())));
    }

    #[test]
    fn feeds_stdin() {
        let out = LocalTransport
            .run(&argv(&["cat"]), Some(b"secret"))
            .expect("cat runs");
        assert_eq!(out.stdout, b"secret");
    }

    #[test]
    fn large_stdin_and_stdout_at_once_do_not_deadlock() {
        // 8 MiB through `cat`: far more than a pipe holds, so stdin must be written while
        // stdout is read. A runner that writes all of stdin first never returns; the thread and
        // the deadline turn that into a failure instead of a hung test.
        let data: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(LocalTransport.run(&argv(&["cat"]), Some(&data)));
        });
        let out = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("cat of 8 MiB finishes (no pipe deadlock)")
            .expect("cat runs");
        assert!(out.success());
        assert_eq!(out.stdout.len(), expected.len());
        assert!(out.stdout == expected, "the bytes come back unchanged");
    }

    #[test]
    fn run_within_kills_at_the_deadline() {
        let started = std::time::Instant::now();
        let err = LocalTransport
            .run_within(
                &argv(&["sleep", "30"]),
                None,
                Some(Duration::from_millis(300)),
                &mut |_, _| {},
            )
            .unwrap_err();
        assert!(
            matches!(&err, TransportError::Timeout { command, .. } if command == "sleep 30"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        // Within the deadline it is an ordinary run.
        let out = LocalTransport
            .run_within(
                &argv(&["echo", "ok"]),
                None,
                Some(Duration::from_secs(30)),
                &mut |_, _| {},
            )
            .expect("echo runs");
        assert_eq!(out.stdout_str(), "ok\n");
    }

    #[test]
    fn uploads_atomically_with_mode() {
        let dir = std::env::temp_dir().join(format!("nixpave-upload-{}", std::process::id()));
        let dest = dir.join("sub/key");
        LocalTransport
            .upload(
                b"hello",
                &UploadSpec {
                    dest: dest.clone(),
                    mode: 0o600,
                    owner: None,
                },
            )
            .expect("upload works");
        assert_eq!(std::fs::read(&dest).expect("file exists"), b"hello");
        let mode = std::fs::metadata(&dest).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = LocalTransport
            .run(&argv(&["/nonexistent/prog"]), None)
            .unwrap_err();
        assert!(matches!(err, TransportError::Spawn { .. }));
    }
}
