//! A transport wrapper that only lets read-only probes through: what makes `--dry-run` and the
//! preflight unable to change anything, whatever the code above them does.

use std::path::Path;

use nixpave_remote::{CommandOutput, OutputStream, Transport, TransportError, UploadSpec};

use super::facts::BLKID_EACH;

/// Wraps a transport and refuses every command that is not a known read-only probe.
pub struct ReadOnly<'a> {
    inner: &'a dyn Transport,
}

impl<'a> ReadOnly<'a> {
    /// Wraps `inner`.
    pub fn new(inner: &'a dyn Transport) -> Self {
        ReadOnly { inner }
    }
}

/// True for the probes the executor uses to look at a machine (and nothing that writes).
pub fn is_read_only(argv: &[String]) -> bool {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    let program = words
        .first()
        .map(|p| p.rsplit('/').next().unwrap_or(p))
        .unwrap_or("");
    let args = words.get(1..).unwrap_or(&[]);
    match program {
        "lsblk" | "test" | "readlink" | "vgs" | "lvs" | "findmnt" => true,
        // Low-level probe only: `-p` without a write option.
        "blkid" => args.first() == Some(&"-p"),
        // Listing the on-disk table (`-g`/`-r`/`-o`, `--show`), never -a/-d/-u.
        "partx" => !args
            .iter()
            .any(|a| matches!(*a, "-a" | "-d" | "-u" | "--add" | "--delete" | "--update")),
        "cryptsetup" => {
            matches!(args.first(), Some(&"isLuks") | Some(&"status"))
                || (args.first() == Some(&"open") && args.contains(&"--test-passphrase"))
        }
        "zpool" => matches!(args, ["list", ..] | ["import"]),
        "zfs" => matches!(args.first(), Some(&"list") | Some(&"get")),
        "btrfs" => matches!(args, ["subvolume", "show" | "list", ..]),
        "sh" => args.get(1) == Some(&BLKID_EACH),
        _ => false,
    }
}

impl Transport for ReadOnly<'_> {
    fn host(&self) -> &str {
        self.inner.host()
    }

    fn run_streaming(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        on_line: &mut dyn FnMut(OutputStream, &str),
    ) -> Result<CommandOutput, TransportError> {
        if !is_read_only(argv) {
            // Not a Spawn error: callers treat those as "tool not installed".
            return Err(TransportError::Command {
                host: self.inner.host().to_string(),
                command: nixpave_remote::shell_join(argv),
                status: None,
                stderr: "refused: read-only mode (dry run / preflight) runs only probes".into(),
            });
        }
        self.inner.run_streaming(argv, stdin, on_line)
    }

    fn upload(&self, _contents: &[u8], spec: &UploadSpec) -> Result<(), TransportError> {
        Err(TransportError::Io {
            host: self.inner.host().to_string(),
            what: format!("uploading {}", spec.dest.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "read-only mode (dry run / preflight)",
            ),
        })
    }

    fn read_file(&self, path: &Path) -> Result<Vec<u8>, TransportError> {
        self.inner.read_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixpave_remote::argv;

    #[test]
    fn lets_only_probes_through() {
        for ok in [
            &["lsblk", "--json"][..],
            &["blkid", "-p", "-o", "export", "/dev/sda"],
            &["partx", "-r", "-g", "-o", "NR,START,SECTORS", "/dev/sda"],
            &["cryptsetup", "isLuks", "/dev/sda2"],
            &[
                "cryptsetup",
                "open",
                "--test-passphrase",
                "--key-file",
                "/tmp/k",
                "/dev/sda2",
            ],
            &["zpool", "list", "-H", "-o", "name", "tank"],
            &["zpool", "import"],
            &["btrfs", "subvolume", "show", "/mnt/@"],
            &["sh", "-c", BLKID_EACH, "sh", "/dev/sda"],
        ] {
            assert!(is_read_only(&argv(ok)), "{ok:?}");
        }
        for bad in [
            &["mkfs.ext4", "/dev/sda1"][..],
            &["partx", "-a", "/dev/sda"],
            &["partx", "-d", "--nr", "2", "/dev/sda"],
            &["zpool", "import", "-f", "tank"],
            &["cryptsetup", "open", "/dev/sda2", "x"],
            &["btrfs", "subvolume", "create", "/mnt/@"],
            &["sh", "-c", "rm -rf /"],
            &["blkid", "-o", "export"],
            &[],
        ] {
            assert!(!is_read_only(&argv(bad)), "{bad:?}");
        }
    }

    #[test]
    fn refuses_writes_through_a_real_transport() {
        let local = nixpave_remote::LocalTransport;
        let ro = ReadOnly::new(&local);
        let err = ro
            .run(&argv(&["touch", "/tmp/nixpave-readonly-test"]), None)
            .expect_err("refused");
        assert!(err.to_string().contains("read-only"), "{err}");
        assert!(!Path::new("/tmp/nixpave-readonly-test").exists());
        assert!(ro.run(&argv(&["test", "-e", "/"]), None).is_ok());
    }
}
