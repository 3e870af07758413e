//! The one way nixpave runs a local child process (ssh, nix, a local command): streamed
//! output, stdin written while the output is read (no pipe deadlock), a deadline and
//! cancellation through [`crate::cancel`].

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cancel;
use crate::transport::{CommandOutput, OutputStream, TransportError};

/// How often a waiting child is checked for exit, deadline and cancellation.
const POLL: Duration = Duration::from_millis(20);

/// What is needed to run one child.
pub struct ChildRun<'a> {
    /// Host name for errors.
    pub host: &'a str,
    /// The command as shown in errors.
    pub shown: &'a str,
    /// Bytes for the child's stdin; `None` gives it /dev/null.
    pub stdin: Option<&'a [u8]>,
    /// Kill the child after this long.
    pub timeout: Option<Duration>,
    /// Whether a cancellation request stops this child (not for cleanup commands).
    pub cancellable: bool,
}

/// Spawns `cmd` and waits for it, streaming output lines (without their line ending) to
/// `on_line` and collecting them in the returned [`CommandOutput`].
///
/// Stdin, stdout and stderr are served by their own threads, so a command that reads and writes
/// a lot at once cannot deadlock on a full pipe. Past `run.timeout` the child is killed and
/// [`TransportError::Timeout`] returned; when `run.cancellable` and [`crate::cancel`] was
/// requested, it is killed and [`TransportError::Interrupted`] returned.
pub fn run_child(
    mut cmd: Command,
    run: ChildRun<'_>,
    on_line: &mut dyn FnMut(OutputStream, &str),
) -> Result<CommandOutput, TransportError> {
    if run.cancellable && cancel::is_cancelled() {
        return Err(TransportError::Interrupted {
            host: run.host.into(),
        });
    }
    cmd.stdin(if run.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd.spawn().map_err(|source| TransportError::Spawn {
        host: run.host.into(),
        program,
        source,
    })?;
    let started = Instant::now();
    // Readers and the stdin writer are detached threads, not scoped ones: an ssh mux client
    // hands its pipes to the master, so after we kill the client they stay open until the
    // master lets go, and a stopped command must not wait for that.
    if let (Some(data), Some(mut pipe)) = (run.stdin, child.stdin.take()) {
        let data = data.to_vec();
        std::thread::spawn(move || {
            // A command that exits without reading all its input is not an error of ours.
            let _ = pipe.write_all(&data);
        });
    }
    let (tx, rx) = std::sync::mpsc::channel::<(OutputStream, Vec<u8>)>();
    let pipes: [(OutputStream, Option<Box<dyn Read + Send>>); 2] = [
        (
            OutputStream::Stdout,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            OutputStream::Stderr,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ];
    for (which, pipe) in pipes {
        let Some(pipe) = pipe else { continue };
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                if tx.send((which, std::mem::take(&mut line))).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut out = CommandOutput::default();
    let mut stopped: Option<TransportError> = None;
    loop {
        match rx.recv_timeout(POLL) {
            Ok((which, line)) => {
                let text = String::from_utf8_lossy(&line);
                on_line(which, text.trim_end_matches(['\n', '\r']));
                match which {
                    OutputStream::Stdout => out.stdout.extend_from_slice(&line),
                    OutputStream::Stderr => out.stderr.extend_from_slice(&line),
                }
            }
            // Both pipes closed: the child (and anything holding its pipes) is done.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if stopped.is_some() {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            continue;
        }
        if run.cancellable && cancel::is_cancelled() {
            stopped = Some(TransportError::Interrupted {
                host: run.host.into(),
            });
        } else if run.timeout.is_some_and(|t| started.elapsed() > t) {
            stopped = Some(TransportError::Timeout {
                host: run.host.into(),
                command: run.shown.into(),
                seconds: run.timeout.map_or(0, |t| t.as_secs()),
            });
        }
        if stopped.is_some() {
            kill(&mut child);
        }
    }
    let status = child.wait().map_err(|source| TransportError::Io {
        host: run.host.into(),
        what: format!("waiting for `{}`", run.shown),
        source,
    })?;
    if let Some(err) = stopped {
        return Err(err);
    }
    out.status = status.code();
    Ok(out)
}

/// Kills a child; an already exited one is fine.
fn kill(child: &mut Child) {
    let _ = child.kill();
}
