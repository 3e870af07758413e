//! Process-wide cancellation: Ctrl-C (SIGINT) or SIGTERM stops every host cleanly.
//!
//! Long waits in this crate poll [`is_cancelled`]; a cancelled command has its local `ssh`
//! process killed and returns [`crate::TransportError::Interrupted`]. Master connections are
//! still closed by `Drop` afterwards, so nothing is left running.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// True once cancellation was requested (by a signal or [`request_cancel`]).
pub fn is_cancelled() -> bool {
    flag().load(Ordering::SeqCst)
}

/// Requests cancellation of everything running in this process.
pub fn request_cancel() {
    flag().store(true, Ordering::SeqCst);
}

/// Installs SIGINT and SIGTERM handlers that request cancellation instead of killing the
/// process outright, so hosts are stopped and connections closed in order. Call once, early,
/// from a binary; a second signal still works as a normal one would (exits at once).
pub fn install_signal_handlers() -> std::io::Result<()> {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The second signal terminates: a user pressing Ctrl-C twice wants out now.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(flag()))?;
        signal_hook::flag::register(signal, Arc::clone(flag()))?;
    }
    Ok(())
}
