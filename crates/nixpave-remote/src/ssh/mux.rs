//! The two questions nixpave asks a ControlMaster without opening a session, "are you alive" and "please
//! exit", put over its control socket directly in OpenSSH's multiplexing protocol (PROTOCOL.mux in OpenSSH's
//! sources) instead of through `ssh -O check|exit`: that is one ssh process, with OpenSSL's start-up, per
//! host and question, and every deploy closes the master of every host.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const MUX_MSG_HELLO: u32 = 0x0000_0001;
const MUX_C_ALIVE_CHECK: u32 = 0x1000_0004;
const MUX_C_TERMINATE: u32 = 0x1000_0005;
const MUX_S_OK: u32 = 0x8000_0001;
const MUX_S_ALIVE: u32 = 0x8000_0005;
/// The protocol version both ends announce; a master speaking another one is not asked anything.
const VERSION: u32 = 4;
/// Larger packets than this are not what either question is answered with.
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

/// One packet: its length, then the words, all big-endian.
fn send(stream: &mut UnixStream, packet: &[u32]) -> io::Result<()> {
    let len = u32::try_from(packet.len() * 4).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut bytes = len.to_be_bytes().to_vec();
    for word in packet {
        bytes.extend_from_slice(&word.to_be_bytes());
    }
    stream.write_all(&bytes)
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
