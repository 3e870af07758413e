//! The one way nixpave runs a local child process (ssh, nix, a local command) or a session on an ssh
//! master: streamed output, stdin written while the output is read (no pipe deadlock), a deadline and
//! cancellation through [`crate::cancel`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
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

/// Something started that runs on pipes of ours: a local process, or a session that an ssh master runs for
/// us (`ssh::mux`).
pub(crate) trait Running: Send {
    /// Its exit code once it has ended (`None` inside: ended by a signal); `None` while it runs.
    fn try_wait(&mut self) -> io::Result<Option<Option<i32>>>;
    /// Stops it; one that already ended is fine.
    fn kill(&mut self);
    /// Waits for its end; its exit code (`None`: ended by a signal).
    fn wait(&mut self) -> io::Result<Option<i32>>;
}

impl Running for std::process::Child {
    fn try_wait(&mut self) -> io::Result<Option<Option<i32>>> {
        Ok(std::process::Child::try_wait(self)?.map(|s| s.code()))
    }
    fn kill(&mut self) {
        let _ = std::process::Child::kill(self);
    }
    fn wait(&mut self) -> io::Result<Option<i32>> {
        Ok(std::process::Child::wait(self)?.code())
    }
}

/// A started child and our ends of its pipes (stdin only when it was given bytes).
pub(crate) struct Started {
    pub(crate) child: Box<dyn Running>,
    pub(crate) stdin: Option<Box<dyn Write + Send>>,
    pub(crate) stdout: Box<dyn Read + Send>,
    pub(crate) stderr: Box<dyn Read + Send>,
}

/// Spawns `cmd` and waits for it, streaming output lines (without their line ending) to
/// `on_line` and collecting them in the returned [`CommandOutput`].
///
/// Stdin, stdout and stderr are served by their own threads, so a command that reads and writes
/// a lot at once cannot deadlock on a full pipe. Past `run.timeout` the child is killed and
/// [`TransportError::Timeout`] returned; when `run.cancellable` and [`crate::cancel`] was
/// requested, it is killed and [`TransportError::Interrupted`] returned.
pub fn run_child(
    cmd: Command,
    run: ChildRun<'_>,
    on_line: &mut dyn FnMut(OutputStream, &str),
) -> Result<CommandOutput, TransportError> {
    run_started(|| spawn(cmd, &run), &run, on_line)
}

/// Spawns `cmd` with piped output (and stdin when `run` has bytes for it).
pub(crate) fn spawn(mut cmd: Command, run: &ChildRun<'_>) -> Result<Started, TransportError> {
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
    let stdin = child
        .stdin
        .take()
        .map(|p| Box::new(p) as Box<dyn Write + Send>);
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(TransportError::Io {
            host: run.host.into(),
            what: format!("starting `{}`", run.shown),
            source: io::Error::other("no output pipes"),
        });
    };
    Ok(Started {
        child: Box::new(child),
        stdin,
        stdout: Box::new(stdout),
        stderr: Box::new(stderr),
    })
}

/// Starts something with `start` (unless cancelled already) and then serves it as [`run_child`] serves a
/// process: stdin written, output streamed and collected, deadline and cancellation.
pub(crate) fn run_started(
    start: impl FnOnce() -> Result<Started, TransportError>,
    run: &ChildRun<'_>,
    on_line: &mut dyn FnMut(OutputStream, &str),
) -> Result<CommandOutput, TransportError> {
    if run.cancellable && cancel::is_cancelled() {
        return Err(TransportError::Interrupted {
            host: run.host.into(),
        });
    }
    let Started {
        mut child,
        stdin,
        stdout,
        stderr,
    } = start()?;
    let started = Instant::now();
    // Readers and the stdin writer are detached threads, not scoped ones: an ssh master holds the pipes
    // of its sessions, so after we stop one (or kill its mux client) they stay open until the master
    // lets go, and a stopped command must not wait for that.
    if let (Some(data), Some(mut pipe)) = (run.stdin, stdin) {
        let data = data.to_vec();
        std::thread::spawn(move || {
            // A command that exits without reading all its input is not an error of ours.
            let _ = pipe.write_all(&data);
        });
    }
    let (tx, rx) = std::sync::mpsc::channel::<(OutputStream, Vec<u8>)>();
    let pipes = [
        (OutputStream::Stdout, stdout),
        (OutputStream::Stderr, stderr),
    ];
    for (which, pipe) in pipes {
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
            child.kill();
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
    out.status = status;
    Ok(out)
}
