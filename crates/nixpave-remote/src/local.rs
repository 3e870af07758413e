//! Running on the machine nixpave itself runs on.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::transport::{
    shell_join, CommandOutput, OutputStream, Transport, TransportError, UploadSpec,
};

/// The local machine. Commands run directly (nixpave is expected to run as root for disk work).
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

    fn spawn_error(argv: &[String], source: std::io::Error) -> TransportError {
        TransportError::Spawn {
            host: HOST.into(),
            program: argv.first().cloned().unwrap_or_default(),
            source,
        }
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
        tracing::debug!(command = %shell_join(argv), "run locally");
        let mut cmd = Self::command(argv)?;
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| Self::spawn_error(argv, e))?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A command that exits without reading its input is not an error of ours.
            let _ = pipe.write_all(data);
        }
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (tx, rx) = std::sync::mpsc::channel::<(OutputStream, Vec<u8>)>();
        let readers: Vec<_> = [
            (
                OutputStream::Stdout,
                stdout.map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            ),
            (
                OutputStream::Stderr,
                stderr.map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            ),
        ]
        .into_iter()
        .filter_map(|(which, pipe)| pipe.map(|p| (which, p)))
        .map(|(which, pipe)| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = Vec::new();
                while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                    if tx.send((which, std::mem::take(&mut line))).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
        drop(tx);
        let mut out = CommandOutput::default();
        for (which, line) in rx {
            let text = String::from_utf8_lossy(&line);
            on_line(which, text.trim_end_matches('\n'));
            match which {
                OutputStream::Stdout => out.stdout.extend_from_slice(&line),
                OutputStream::Stderr => out.stderr.extend_from_slice(&line),
            }
        }
        for reader in readers {
            let _ = reader.join();
        }
        let status = child.wait().map_err(|e| Self::spawn_error(argv, e))?;
        out.status = status.code();
        Ok(out)
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

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

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
