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

/// A command that ended in error: the exit code it maps to and a miette report that keeps the
/// error's sources (printed as its chain of causes), so no command builds its own chain by hand.
#[derive(Debug)]
pub struct CliError {
    code: u8,
    report: miette::Report,
}

impl CliError {
    /// An error with a plain message.
    pub fn msg(code: u8, message: impl std::fmt::Display) -> Self {
        CliError {
            code,
            report: miette::miette!("{message}"),
        }
    }

    /// Bad input (exit 2): nothing was changed.
    pub fn usage(message: impl std::fmt::Display) -> Self {
        Self::msg(USAGE, message)
    }

    /// A typed error, its sources kept for the report.
    pub fn from_error<E: std::error::Error + Send + Sync + 'static>(code: u8, error: E) -> Self {
        CliError {
            code,
            report: miette::Report::from_err(error),
        }
    }

    /// A miette report as it is (its help and code kept).
    pub fn report(code: u8, report: miette::Report) -> Self {
        CliError { code, report }
    }

    /// Says what was being done when the error happened (the error becomes its source).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn context(self, what: impl std::fmt::Display + Send + Sync + 'static) -> Self {
        CliError {
            code: self.code,
            report: self.report.wrap_err(what),
        }
    }

    /// The exit code.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn code(&self) -> u8 {
        self.code
    }

    /// Prints the report on stderr and returns the exit code.
    pub fn exit(self) -> ExitCode {
        eprintln!("{:?}", self.report);
        code(self.code)
    }
}

/// The one exit code of a command over several hosts or nodes, from each one's own code: [`OK`]
/// when all succeeded, [`PARTIAL`] when some did, their common code when all failed alike (all
/// refused: [`REFUSED`]), else [`FAILED`].
pub fn aggregate(codes: impl IntoIterator<Item = u8>) -> u8 {
    let codes: Vec<u8> = codes.into_iter().collect();
    let failed: Vec<u8> = codes.iter().copied().filter(|&c| c != OK).collect();
    match failed.first() {
        None => OK,
        Some(_) if failed.len() < codes.len() => PARTIAL,
        Some(&first) if failed.iter().all(|&c| c == first) => first,
        Some(_) => FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_aggregation() {
        assert_eq!(aggregate([]), OK);
        assert_eq!(aggregate([OK, OK]), OK);
        assert_eq!(aggregate([OK, FAILED]), PARTIAL);
        assert_eq!(aggregate([OK, REFUSED]), PARTIAL);
        assert_eq!(aggregate([REFUSED, REFUSED]), REFUSED);
        assert_eq!(aggregate([REFUSED, FAILED]), FAILED);
        assert_eq!(aggregate([INTERRUPTED]), INTERRUPTED);
    }

    #[test]
    fn reports_keep_sources() {
        let io = std::io::Error::other("disk on fire");
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("writing the state")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = CliError::from_error(FAILED, Outer(io)).context("node web1");
        let shown = format!("{:?}", e.report);
        assert!(shown.contains("node web1"), "{shown}");
        assert!(shown.contains("writing the state"), "{shown}");
        assert!(shown.contains("disk on fire"), "{shown}");
        assert_eq!(e.code(), FAILED);
    }
}
