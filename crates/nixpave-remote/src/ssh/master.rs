//! The ControlMaster connection: starting, checking and restarting it, and sharing its sessions.

use std::process::{Command, Stdio};
use std::sync::Condvar;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::host_key::Phase;
use super::SshTransport;
use crate::transport::TransportError;

/// Commands run at once over one master. sshd refuses more than `MaxSessions` (default 10)
/// sessions per connection, and ssh reports that as a failure indistinguishable from the
/// command's own exit 255, so extra commands wait for a free session instead.
pub(super) const MAX_SESSIONS: usize = 8;

/// A session slot on the master, released on drop.
pub(super) struct SessionSlot<'a>(&'a (Mutex<usize>, Condvar));

impl Drop for SessionSlot<'_> {
    fn drop(&mut self) {
        let (count, freed) = self.0;
        *count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        freed.notify_one();
    }
}

impl SshTransport {
    pub(super) fn mux_args(&self) -> Vec<String> {
        vec![
            "-o".into(),
            "ControlMaster=no".into(),
            "-S".into(),
            self.control_path.display().to_string(),
        ]
    }

    /// Starts the master (`ssh -M -N -f`, backgrounded by ssh itself once authenticated).
    pub(super) fn start_master(&self) -> Result<(), TransportError> {
        // Next to the socket: a persistent master shares its directory with other hosts' masters.
        let log = self.control_path.with_extension("log");
        let stderr = std::fs::File::create(&log).map_err(|source| TransportError::Io {
            host: self.name.clone(),
            what: format!("creating {}", log.display()),
            source,
        })?;
        // A persistent master idles that long for the next run; otherwise a safety net: a master orphaned
        // by a killed nixpave exits after being idle.
        let persist = self.options.persist.map_or(600, |d| d.as_secs().max(1));
        let mut cmd = Command::new("ssh");
        cmd.args(["-M", "-N", "-f", "-S"])
            .arg(&self.control_path)
            .args(["-o", &format!("ControlPersist={persist}")])
            .args(self.common_args())
            .arg(&self.target.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        tracing::debug!(host = %self.name, "opening ssh master connection");
        let mut child = cmd.spawn().map_err(|source| TransportError::Spawn {
            host: self.name.clone(),
            program: "ssh".into(),
            source,
        })?;
        let limit = self.connect_limit();
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(source) => {
                    return Err(TransportError::Io {
                        host: self.name.clone(),
                        what: "waiting for ssh".into(),
                        source,
                    })
                }
            }
            if crate::cancel::is_cancelled() || started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                if crate::cancel::is_cancelled() {
                    return Err(TransportError::Interrupted {
                        host: self.name.clone(),
                    });
                }
                return Err(TransportError::Connection {
                    host: self.name.clone(),
                    message: format!(
                        "no ssh session after {} s (the host accepted TCP but did not finish \
                         the handshake or authentication); nothing was changed",
                        limit.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        if status.success() && self.control_path.exists() {
            return Ok(());
        }
        Err(self.classify_failure(&stderr, Phase::Connect))
    }

    /// How long opening a master may take: ConnectTimeout covers TCP and the banner; authentication
    /// gets some more time.
    fn connect_limit(&self) -> Duration {
        self.options.connect_timeout * 2 + Duration::from_secs(10)
    }

    /// A persistent master: reuses the one that answers on the shared control socket, or starts it there.
    /// nixpave processes reaching the same host take turns through a lock file next to the socket, so two
    /// runs never start two masters on one socket (the second would stay behind as a plain connection).
    /// Returns whether an open master was reused.
    pub(super) fn open_shared_master(&self) -> Result<bool, TransportError> {
        let lock_path = self.control_path.with_extension("lock");
        let io = |what: &str| {
            let what = format!("{what} {}", lock_path.display());
            let host = self.name.clone();
            move |source| TransportError::Io { host, what, source }
        };
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("opening"))?;
        let limit = self.connect_limit();
        let started = Instant::now();
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(io("locking")(e)),
            }
            if crate::cancel::is_cancelled() {
                return Err(TransportError::Interrupted {
                    host: self.name.clone(),
                });
            }
            if started.elapsed() > limit {
                return Err(TransportError::Connection {
                    host: self.name.clone(),
                    message: format!(
                        "another nixpave has been opening the shared ssh connection for {} s \
                         ({} is locked); nothing was changed",
                        limit.as_secs(),
                        lock_path.display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if super::mux::alive(&self.control_path, Duration::from_secs(5)).is_some() {
            tracing::debug!(host = %self.name, "reusing the persistent ssh master connection");
            return Ok(true);
        }
        // A master that died without cleaning up leaves its socket; ssh would not listen over it.
        let _ = std::fs::remove_file(&self.control_path);
        self.start_master().map(|()| false)
    }

    /// Restarts the master when its socket vanished (it was killed, or idled out).
    pub(super) fn ensure_master(&self) -> Result<(), TransportError> {
        let _guard = self.master.lock().unwrap_or_else(|p| p.into_inner());
        if self.control_path.exists() {
            return Ok(());
        }
        tracing::info!(host = %self.name, "ssh master connection is gone; reconnecting");
        if self.persistent() {
            self.open_shared_master().map(|_| ())
        } else {
            self.start_master()
        }
    }

    pub(super) fn master_alive(&self) -> bool {
        self.master_pid().is_some()
    }

    /// The pid of this host's master connection, asked over its control socket; `None` when no master
    /// answers there.
    pub fn master_pid(&self) -> Option<u32> {
        super::mux::alive(&self.control_path, Duration::from_secs(5))
    }

    /// Waits for a free session on the master (cancellable).
    pub(super) fn session_slot(&self) -> Result<SessionSlot<'_>, TransportError> {
        let (count, freed) = &self.sessions;
        let mut open = count.lock().unwrap_or_else(|p| p.into_inner());
        while *open >= MAX_SESSIONS {
            if crate::cancel::is_cancelled() {
                return Err(TransportError::Interrupted {
                    host: self.name.clone(),
                });
            }
            open = freed
                .wait_timeout(open, Duration::from_millis(50))
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        *open += 1;
        Ok(SessionSlot(&self.sessions))
    }
}
