//! Exit codes of the `nixpave` binary (documented in README.md).

use std::process::ExitCode;

/// Everything asked for was done.
pub const OK: u8 = 0;
/// An operation failed (a command on a host, an evaluation, a build).
pub const FAILED: u8 = 1;
/// The input was wrong: bad arguments, an invalid layout or inventory. Nothing was changed.
pub const USAGE: u8 = 2;
/// nixpave refused to act for safety (disk in use, no confirmation, preflight failed). Nothing was changed.
pub const REFUSED: u8 = 3;
/// Some hosts succeeded and some failed (fleet commands).
pub const PARTIAL: u8 = 4;
/// Interrupted by the user (Ctrl-C).
pub const INTERRUPTED: u8 = 130;

/// Converts one of the constants above into a process exit code.
pub fn code(value: u8) -> ExitCode {
    ExitCode::from(value)
}
