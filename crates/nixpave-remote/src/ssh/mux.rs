//! What nixpave asks a ControlMaster over its control socket, in OpenSSH's multiplexing protocol (PROTOCOL.mux
//! in OpenSSH's sources), instead of through an `ssh` mux client: "are you alive", "please exit", and "run
//! this command on these pipes" (a passenger session). Each `ssh` client is a process with OpenSSL's
//! start-up, about 5 ms of CPU, and a deploy runs several commands on every host.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use crate::process::{Running, Started};

const MUX_MSG_HELLO: u32 = 0x0000_0001;
const MUX_C_NEW_SESSION: u32 = 0x1000_0002;
const MUX_C_ALIVE_CHECK: u32 = 0x1000_0004;
const MUX_C_TERMINATE: u32 = 0x1000_0005;
const MUX_S_OK: u32 = 0x8000_0001;
const MUX_S_PERMISSION_DENIED: u32 = 0x8000_0002;
const MUX_S_FAILURE: u32 = 0x8000_0003;
const MUX_S_EXIT_MESSAGE: u32 = 0x8000_0004;
const MUX_S_ALIVE: u32 = 0x8000_0005;
const MUX_S_SESSION_OPENED: u32 = 0x8000_0006;
/// No escape character (sessions without a tty have none anyway).
const NO_ESCAPE: u32 = 0xffff_ffff;
/// What `ssh` exits with when a shared session ends without an exit status (the master went away, or the
/// command was killed by a signal); the transport treats it as ssh's own failure unless the master is alive.
const NO_EXIT_STATUS: i32 = 255;
/// The protocol version both ends announce; a master speaking another one is not asked anything.
const VERSION: u32 = 4;
/// At most this much of the environment goes with a session request.
const MAX_ENV_BYTES: usize = 32 * 1024;
/// Larger packets than this are no answer of a master.
const MAX_PACKET: usize = 64 * 1024;

/// Asks the master listening on `socket` whether it is alive; its pid when it answers so.
pub(super) fn alive(socket: &Path, timeout: Duration) -> Option<u32> {
    let mut stream = hello(socket, timeout).ok()?;
    send(&mut stream, &[MUX_C_ALIVE_CHECK, 1]).ok()?;
    let reply = receive(&mut stream).ok()??;
    match words(&reply)[..] {
        [MUX_S_ALIVE, 1, pid, ..] => Some(pid),
        _ => None,
    }
}

/// Asks the master listening on `socket` to exit, and waits (at most `timeout`) until it has closed the
/// socket. False when it could not be asked or said no (then `ssh -O exit` is the fallback).
pub(super) fn terminate(socket: &Path, timeout: Duration) -> bool {
    let Ok(mut stream) = hello(socket, timeout) else {
        return false;
    };
    if send(&mut stream, &[MUX_C_TERMINATE, 1]).is_err() {
        return false;
    }
    // The master may exit before its answer is written: the end of the stream is a yes too.
    match receive(&mut stream) {
        Ok(None) => true,
        Ok(Some(reply)) if words(&reply).first() == Some(&MUX_S_OK) => {
            // Its connection to us closes when it exits.
            while let Ok(Some(_)) = receive(&mut stream) {}
            true
        }
        _ => false,
    }
}

/// Why a session was not opened: `Refused` when it certainly did not start (no master answered, or it said
/// no), so running the command another way is safe; `Unknown` when the request went out and then the
/// exchange broke, so the command may be running.
#[derive(Debug)]
pub(super) enum OpenError {
    Refused(io::Error),
    Unknown(io::Error),
}

/// Asks the master on `socket` to run `command` (a remote command line, as `ssh host COMMAND` sends it) in a
/// new session without a tty, on pipes of ours: what `ssh -T -S socket host COMMAND` does, without the
/// process. `with_stdin` gives it a pipe for stdin (else /dev/null). `timeout` bounds the answer to the
/// request (the server opening the channel), not the command.
///
/// The session asks for agent and X11 forwarding, and passes this process's environment: the master applies
/// its own ForwardAgent, ForwardX11 and SendEnv to them, read from the same options and ssh_config an `ssh`
/// client would have read, so a session gets what it would get through `ssh`.
pub(super) fn open_session(
    socket: &Path,
    command: &str,
    with_stdin: bool,
    timeout: Duration,
) -> Result<Started, OpenError> {
    let mut stream = hello(socket, timeout).map_err(OpenError::Refused)?;
    let refused = OpenError::Refused;
    let (stdin_ours, stdin_theirs): (Option<io::PipeWriter>, OwnedFd) = if with_stdin {
        let (r, w) = io::pipe().map_err(refused)?;
        (Some(w), r.into())
    } else {
        (
            None,
            std::fs::File::open("/dev/null").map_err(refused)?.into(),
        )
    };
    let (stdout_ours, stdout_theirs) = io::pipe().map_err(refused)?;
    let (stderr_ours, stderr_theirs) = io::pipe().map_err(refused)?;
    let term = std::env::var_os("TERM").unwrap_or_default();
    let mut request = Packet::default();
    request
        .word(MUX_C_NEW_SESSION)
        .word(1)
        .string(b"")
        .map_err(refused)?
        // tty, X11 forwarding, agent forwarding (the master's options decide these two), subsystem
        .word(0)
        .word(1)
        .word(1)
        .word(0)
        .word(NO_ESCAPE)
        .string(term.as_bytes())
        .map_err(refused)?
        .string(command.as_bytes())
        .map_err(refused)?;
    // The master takes what its SendEnv names. Far below what it accepts in one packet: an environment
    // larger than that is not passed on (no SendEnv variable is that large in practice).
    let mut env_bytes = 0;
    for (key, value) in std::env::vars_os() {
        let mut pair = key.as_bytes().to_vec();
        pair.push(b'=');
        pair.extend_from_slice(value.as_bytes());
        env_bytes += pair.len() + 4;
        if env_bytes > MAX_ENV_BYTES {
            break;
        }
        request.string(&pair).map_err(refused)?;
    }
    request.send(&mut stream).map_err(refused)?;
    // From here on the master may run the command.
    let unknown = OpenError::Unknown;
    for fd in [
        stdin_theirs.as_fd(),
        stdout_theirs.as_fd(),
        stderr_theirs.as_fd(),
    ] {
        send_fd(&stream, fd).map_err(unknown)?;
    }
    // The master holds its own copies now; the command's end of output is the master closing them.
    drop((stdin_theirs, stdout_theirs, stderr_theirs));
    let reply = receive(&mut stream)
        .map_err(unknown)?
        .ok_or_else(|| unknown(io::ErrorKind::UnexpectedEof.into()))?;
    match words(&reply)[..] {
        [MUX_S_SESSION_OPENED, 1, ..] => {}
        [MUX_S_PERMISSION_DENIED | MUX_S_FAILURE, 1, ..] => {
            let why = String::from_utf8_lossy(reply.get(12..).unwrap_or_default()).into_owned();
            return Err(refused(io::Error::other(format!(
                "the ssh master refused the session: {why}"
            ))));
        }
        _ => {
            return Err(unknown(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected answer from the ssh master",
            )))
        }
    }
    // The command may run as long as it likes; the master's answers are read by a thread of the session.
    stream.set_read_timeout(None).map_err(unknown)?;
    let control = stream.try_clone().map_err(unknown)?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut exit = None;
        while let Ok(Some(packet)) = receive(&mut stream) {
            if let [MUX_S_EXIT_MESSAGE, _, value, ..] = words(&packet)[..] {
                exit = Some(value as i32);
            }
        }
        let _ = tx.send(exit.unwrap_or(NO_EXIT_STATUS));
    });
    Ok(Started {
        child: Box::new(Session {
            control,
            ended: rx,
            status: None,
        }),
        stdin: stdin_ours.map(|w| Box::new(w) as Box<dyn Write + Send>),
        stdout: Box::new(stdout_ours),
        stderr: Box::new(stderr_ours),
    })
}

/// Passes one file descriptor over the control socket, with the one byte of data the master expects.
fn send_fd(stream: &UnixStream, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let fds = [fd];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for a file descriptor"));
    }
    let sent = sendmsg(
        stream,
        &[io::IoSlice::new(&[0])],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent == 1 {
        Ok(())
    } else {
        Err(io::ErrorKind::WriteZero.into())
    }
}

/// A session on the master: it ends when the master closes our control connection, after telling its exit
/// status; closing the connection ourselves makes the master close the session.
struct Session {
    control: UnixStream,
    ended: mpsc::Receiver<i32>,
    status: Option<i32>,
}

impl Running for Session {
    fn try_wait(&mut self) -> io::Result<Option<Option<i32>>> {
        if self.status.is_none() {
            match self.ended.try_recv() {
                Ok(status) => self.status = Some(status),
                Err(mpsc::TryRecvError::Empty) => return Ok(None),
                Err(mpsc::TryRecvError::Disconnected) => self.status = Some(NO_EXIT_STATUS),
            }
        }
        Ok(self.status.map(Some))
    }

    fn kill(&mut self) {
        let _ = self.control.shutdown(std::net::Shutdown::Both);
    }

    fn wait(&mut self) -> io::Result<Option<i32>> {
        if self.status.is_none() {
            self.status = Some(self.ended.recv().unwrap_or(NO_EXIT_STATUS));
        }
        Ok(self.status)
    }
}

/// Connects and exchanges hellos (each end sends its own first).
fn hello(socket: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    send(&mut stream, &[MUX_MSG_HELLO, VERSION])?;
    let theirs = receive(&mut stream)?.ok_or(io::ErrorKind::UnexpectedEof)?;
    // Extensions may follow the version; nixpave uses none.
    match words(&theirs)[..] {
        [MUX_MSG_HELLO, VERSION, ..] => Ok(stream),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a version 4 ssh multiplexing master",
        )),
    }
}

/// One packet of words only.
fn send(stream: &mut UnixStream, packet: &[u32]) -> io::Result<()> {
    let mut p = Packet::default();
    for word in packet {
        p.word(*word);
    }
    p.send(stream)
}

/// A packet being built: big-endian words and length-prefixed strings, as ssh's wire format has them.
#[derive(Default)]
struct Packet(Vec<u8>);

impl Packet {
    fn word(&mut self, word: u32) -> &mut Self {
        self.0.extend_from_slice(&word.to_be_bytes());
        self
    }

    fn string(&mut self, bytes: &[u8]) -> io::Result<&mut Self> {
        let len = u32::try_from(bytes.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        self.word(len);
        self.0.extend_from_slice(bytes);
        Ok(self)
    }

    /// Sends it, its length first.
    fn send(&self, stream: &mut UnixStream) -> io::Result<()> {
        let len = u32::try_from(self.0.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&self.0);
        stream.write_all(&bytes)
    }
}

/// The next packet's body; `None` at the end of the stream.
fn receive(stream: &mut UnixStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_PACKET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "ssh multiplexing packet too large",
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(Some(body))
}

/// The leading big-endian words of a packet body.
fn words(body: &[u8]) -> Vec<u32> {
    body.chunks_exact(4)
        .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A stand-in master speaking the protocol's framing, for what a real one cannot be made to do here:
    /// announce another version, refuse, or exit before answering. The real master is asked in the lab
    /// tests of the ssh transport.
    fn master(
        answer: impl FnOnce(&mut UnixStream) + Send + 'static,
        hello: &[u32],
    ) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = UnixListener::bind(dir.path().join("s")).expect("bind");
        let hello = hello.to_vec();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let _ = send(&mut s, &hello);
                let _ = receive(&mut s);
                let _ = receive(&mut s);
                answer(&mut s);
            }
        });
        dir
    }

    #[test]
    fn answers_and_refusals_of_a_master() {
        let t = Duration::from_secs(5);
        let d = master(
            |s| drop(send(s, &[MUX_S_ALIVE, 1, 4242])),
            &[MUX_MSG_HELLO, 4],
        );
        assert_eq!(alive(&d.path().join("s"), t), Some(4242));
        // Exits before answering: still a yes.
        let d = master(|_| {}, &[MUX_MSG_HELLO, 4]);
        assert!(terminate(&d.path().join("s"), t));
        // Says no.
        let d = master(|s| drop(send(s, &[0x8000_0002, 1])), &[MUX_MSG_HELLO, 4]);
        assert!(!terminate(&d.path().join("s"), t));
        // Another protocol version: not asked at all.
        let d = master(|s| drop(send(s, &[MUX_S_ALIVE, 1, 1])), &[MUX_MSG_HELLO, 3]);
        assert_eq!(alive(&d.path().join("s"), t), None);
        // No master.
        assert!(!terminate(&d.path().join("missing"), t));
    }
}
