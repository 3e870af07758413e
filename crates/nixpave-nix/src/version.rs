//! Which nix is on this machine: `nix --version`, asked once per `PATH` and remembered.
//!
//! nixpave supports Debian 12's nix 2.8 up to current Nix (2.26 and later). The command line
//! differences that matter here:
//!
//! - a store derivation installable `DRV^OUTPUTS` (e.g. `foo.drv^*`) exists since Nix 2.13; since
//!   2.15 a bare `foo.drv` means the `.drv` file itself, no longer its outputs (so nix 2.8 needs
//!   the bare path and current nix needs `^*`);
//! - `nix build --print-out-paths` exists since 2.9 (nixpave reads `--json`, which all versions have).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::invoke::{run_nix, NixError, NixOptions};

/// A nix version such as `2.26.3` (pre-release suffixes are dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NixVersion {
    /// Major version (2).
    pub major: u32,
    /// Minor version (8, 26, …).
    pub minor: u32,
    /// Patch level.
    pub patch: u32,
}

impl NixVersion {
    /// Builds a version from its numbers.
    pub const fn new(major: u32, minor: u32, patch: u32) -> NixVersion {
        NixVersion {
            major,
            minor,
            patch,
        }
    }

    /// The first version that understands `DRV^OUTPUTS` installables.
    pub const OUTPUT_SELECTION: NixVersion = NixVersion::new(2, 13, 0);

    /// Parses the output of `nix --version`, e.g. `nix (Nix) 2.26.3` or `nix (Nix) 2.18.1pre1234_abc`.
    /// The version is the last word that starts with digits and a dot (distributions put their own
    /// names and versions in the parentheses).
    pub fn parse(text: &str) -> Option<NixVersion> {
        let line = text.lines().next()?;
        line.split_whitespace().rev().find_map(|word| {
            let mut parts = word.split('.');
            let major = leading_number(parts.next()?)?;
            let minor = leading_number(parts.next()?)?;
            let patch = parts.next().and_then(leading_number).unwrap_or(0);
            Some(NixVersion::new(major, minor, patch))
        })
    }

    /// True when `nix build` takes `DRV^*` to build a store derivation's outputs (2.13 and later).
    pub fn has_output_selection(&self) -> bool {
        *self >= Self::OUTPUT_SELECTION
    }

    /// The installable that builds every output of the store derivation `drv` with this nix.
    pub fn drv_outputs_installable(&self, drv: &str) -> String {
        if self.has_output_selection() {
            format!("{drv}^*")
        } else {
            drv.to_string()
        }
    }
}

impl fmt::Display for NixVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The digits a word starts with, as a number (`"3pre2024"` → 3); `None` without a leading digit.
fn leading_number(word: &str) -> Option<u32> {
    let end = word
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(word.len());
    word[..end].parse().ok()
}

/// How long `nix --version` may take when [`NixOptions::timeout`] is not set.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(60);

/// The version of the `nix` that `opts` runs: `nix --version` the first time for a given `PATH`
/// (the options' own `PATH` if they set one), remembered for the rest of the process.
pub fn local_version(opts: &NixOptions) -> Result<NixVersion, NixError> {
    static CACHE: OnceLock<Mutex<HashMap<Option<OsString>, NixVersion>>> = OnceLock::new();
    let path = opts
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| OsString::from(v))
        .or_else(|| std::env::var_os("PATH"));
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().ok().and_then(|c| c.get(&path).copied()) {
        return Ok(v);
    }
    let opts = NixOptions {
        timeout: opts.timeout.or(Some(VERSION_TIMEOUT)),
        ..opts.clone()
    };
    let out = run_nix("nix", &["--version".to_string()], &opts, &[])?;
    let version = NixVersion::parse(&out.stdout).ok_or_else(|| NixError::BadOutput {
        command: "nix --version".into(),
        message: format!("no version number in {:?}", out.stdout.trim()),
    })?;
    tracing::debug!(%version, "local nix");
    if let Ok(mut c) = cache.lock() {
        c.insert(path, version);
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_lines() {
        assert_eq!(
            NixVersion::parse("nix (Nix) 2.8.0\n"),
            Some(NixVersion::new(2, 8, 0))
        );
        assert_eq!(
            NixVersion::parse("nix (Nix) 2.26.3"),
            Some(NixVersion::new(2, 26, 3))
        );
        assert_eq!(
            NixVersion::parse("nix (Nix) 2.18.1pre20231201_abcdef"),
            Some(NixVersion::new(2, 18, 1))
        );
        assert_eq!(
            NixVersion::parse("nix (Determinate Nix 3.1.0) 2.27.1"),
            Some(NixVersion::new(2, 27, 1))
        );
        assert_eq!(
            NixVersion::parse("nix (Nix) 2.24"),
            Some(NixVersion::new(2, 24, 0))
        );
        assert_eq!(NixVersion::parse("nix (Nix)"), None);
        assert_eq!(NixVersion::parse(""), None);
    }

    #[test]
    fn output_selection_from_2_13() {
        let drv = "/nix/store/a-x.drv";
        assert_eq!(
            NixVersion::new(2, 8, 0).drv_outputs_installable(drv),
            "/nix/store/a-x.drv"
        );
        assert_eq!(
            NixVersion::new(2, 12, 9).drv_outputs_installable(drv),
            "/nix/store/a-x.drv"
        );
        assert_eq!(
            NixVersion::new(2, 13, 0).drv_outputs_installable(drv),
            "/nix/store/a-x.drv^*"
        );
        assert_eq!(
            NixVersion::new(2, 26, 3).drv_outputs_installable(drv),
            "/nix/store/a-x.drv^*"
        );
        assert_eq!(NixVersion::new(2, 26, 3).to_string(), "2.26.3");
    }
}
