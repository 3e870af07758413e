//! The installer tarball (nixos-images format: `kexec/run`, `kexec/bzImage`, `kexec/initrd`):
//! local cache for URLs, inspection, chunked upload with progress, and the detached run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use nixpave_remote::{shell_quote, Transport, TransportError};

/// Where the installer comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KexecSource {
    /// A tarball on this machine.
    File(PathBuf),
    /// A URL, downloaded once into the local cache.
    Url(String),
}

impl KexecSource {
    /// `http(s)://…` is a URL, anything else a path.
    pub fn parse(s: &str) -> Self {
        if s.starts_with("http://") || s.starts_with("https://") {
            KexecSource::Url(s.to_string())
        } else {
            KexecSource::File(PathBuf::from(s))
        }
    }
}

/// Problems with the tarball on this machine.
#[derive(Debug, thiserror::Error)]
pub enum TarballError {
    /// Download failed.
    #[error("downloading {url} failed: {message}")]
    Download {
        /// The URL.
        url: String,
        /// curl's error.
        message: String,
    },
    /// The file cannot be read or listed.
    #[error("cannot read installer tarball {path}: {message}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// Not in nixos-images format.
    #[error("{path} is not a kexec installer tarball: {missing} is missing (expected kexec/run, kexec/bzImage, kexec/initrd)")]
    NotInstaller {
        /// The file.
        path: String,
        /// The missing member.
        missing: String,
    },
}

/// What preflight needs to know about a tarball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarballInfo {
    /// The tarball on this machine.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Size of `kexec/initrd` in bytes.
    pub initrd_bytes: u64,
}

/// The cache file for a URL: `DIR/<hash>-<last path segment>`.
pub fn cache_path(cache_dir: &Path, url: &str) -> PathBuf {
    // FNV-1a: stable across runs and Rust versions (unlike DefaultHasher).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in url.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let name = url
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("installer.tar");
    let name = crate::state::safe_file_name(name);
    cache_dir.join(format!("{h:016x}-{name}"))
}

/// The default download cache: `$XDG_CACHE_HOME/nixpave/kexec` or `~/.cache/nixpave/kexec`
/// (`/var/cache/nixpave/kexec` without a home directory).
pub fn default_cache_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "nixpave")
        .map(|d| d.cache_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from("/var/cache/nixpave"))
        .join("kexec")
}

/// Returns a local file for the source, downloading a URL only when it is not cached yet.
pub fn fetch(source: &KexecSource, cache_dir: &Path) -> Result<PathBuf, TarballError> {
    let url = match source {
        KexecSource::File(p) => return Ok(p.clone()),
        KexecSource::Url(u) => u,
    };
    let dest = cache_path(cache_dir, url);
    if dest.is_file() {
        return Ok(dest);
    }
    let err = |message: String| TarballError::Download {
        url: url.clone(),
        message,
    };
    std::fs::create_dir_all(cache_dir).map_err(|e| err(e.to_string()))?;
    let part = dest.with_extension("part");
    let out = Command::new("curl")
        .args([
            "--fail",
            "--location",
            "--silent",
            "--show-error",
            "--retry",
            "3",
        ])
        .args(["--connect-timeout", "20", "--output"])
        .arg(&part)
        .arg(url)
        .output()
        .map_err(|e| err(format!("cannot run curl: {e}")))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&part);
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    std::fs::rename(&part, &dest).map_err(|e| err(e.to_string()))?;
    Ok(dest)
}

/// Parses `tar -tv` output into (member, size) pairs (pure).
pub fn parse_listing(listing: &str) -> Vec<(String, u64)> {
    listing
        .lines()
        .filter_map(|line| {
            // GNU tar: MODE OWNER SIZE DATE TIME NAME; busybox tar: MODE OWNER SIZE DATE TIME NAME too.
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 6 {
                return None;
            }
            let size = fields[2].parse().ok()?;
            let name = fields[5..].join(" ");
            let name = name.trim_start_matches("./").to_string();
            Some((name, size))
        })
        .collect()
}

/// Lists the tarball and checks it has the three kexec members.
pub fn inspect(path: &Path) -> Result<TarballInfo, TarballError> {
    let unreadable = |message: String| TarballError::Unreadable {
        path: path.display().to_string(),
        message,
    };
    let size_bytes = std::fs::metadata(path)
        .map_err(|e| unreadable(e.to_string()))?
        .len();
    let out = Command::new("tar")
        .arg("-tvf")
        .arg(path)
        .output()
        .map_err(|e| unreadable(format!("cannot run tar: {e}")))?;
    if !out.status.success() {
        return Err(unreadable(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let members = parse_listing(&String::from_utf8_lossy(&out.stdout));
    let find = |name: &str| members.iter().find(|(n, _)| n == name).map(|(_, s)| *s);
    for needed in ["kexec/run", "kexec/bzImage"] {
        if find(needed).is_none() {
            return Err(TarballError::NotInstaller {
                path: path.display().to_string(),
                missing: needed.into(),
            });
        }
    }
    let initrd_bytes = find("kexec/initrd").ok_or_else(|| TarballError::NotInstaller {
        path: path.display().to_string(),
        missing: "kexec/initrd".into(),
    })?;
    Ok(TarballInfo {
        path: path.to_path_buf(),
        size_bytes,
        initrd_bytes,
    })
}

/// Size of each upload chunk: small enough for steady progress, large enough to keep the
/// per-command overhead of the shared ssh connection negligible.
pub const CHUNK_BYTES: usize = 8 << 20;

/// A local `sha256sum` of a file.
pub fn local_sha256(path: &Path) -> Result<String, TarballError> {
    let out =
        Command::new("sha256sum")
            .arg(path)
            .output()
            .map_err(|e| TarballError::Unreadable {
                path: path.display().to_string(),
                message: format!("cannot run sha256sum: {e}"),
            })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn command_error(
    t: &dyn Transport,
    what: &str,
    out: &nixpave_remote::CommandOutput,
) -> TransportError {
    TransportError::Command {
        host: t.host().to_string(),
        command: what.to_string(),
        status: out.status,
        stderr: out.stderr_tail(10),
    }
}

/// Uploads `local` to `remote` in chunks, calling `progress(done, total)` after each one.
/// Skips the upload when the target already has the same file (same sha256), so re-runs and
/// resumes do not send the installer again.
pub fn upload(
    t: &dyn Transport,
    local: &Path,
    remote: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<bool, TransportError> {
    let io = |e: std::io::Error| TransportError::Io {
        host: "localhost".into(),
        what: format!("reading {}", local.display()),
        source: e,
    };
    let total = std::fs::metadata(local).map_err(io)?.len();
    let want = local_sha256(local).unwrap_or_default();
    let have = t.run(
        &[
            "sh".into(),
            "-c".into(),
            format!("sha256sum {} 2>/dev/null || true", shell_quote(remote)),
        ],
        None,
    )?;
    if !want.is_empty() && have.stdout_str().split_whitespace().next() == Some(want.as_str()) {
        progress(total, total);
        return Ok(false);
    }
    let part = format!("{remote}.part");
    let start = t.run(
        &[
            "sh".into(),
            "-c".into(),
            format!(
                "mkdir -p \"$(dirname {p})\" && rm -f {p} && : > {p}",
                p = shell_quote(&part)
            ),
        ],
        None,
    )?;
    if !start.success() {
        return Err(command_error(t, &format!("create {part}"), &start));
    }
    let mut file = std::fs::File::open(local).map_err(io)?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut done: u64 = 0;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..]).map_err(io)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        let out = t.run(
            &[
                "sh".into(),
                "-c".into(),
                format!("cat >> {}", shell_quote(&part)),
            ],
            Some(&buf[..filled]),
        )?;
        if !out.success() {
            return Err(command_error(t, &format!("append to {part}"), &out));
        }
        done += filled as u64;
        progress(done, total);
    }
    let fin = t.run(
        &[
            "sh".into(),
            "-c".into(),
            format!(
                "test \"$(wc -c < {p})\" -eq {total} && mv -f {p} {r}",
                p = shell_quote(&part),
                r = shell_quote(remote)
            ),
        ],
        None,
    )?;
    if !fin.success() {
        return Err(command_error(
            t,
            &format!("check size of {part} ({total} bytes expected)"),
            &fin,
        ));
    }
    Ok(true)
}

/// The script that unpacks the tarball in `dir` and starts `kexec/run` detached, so that the
/// ssh session survives long enough to return. `run.rc` and `run.log` record the outcome.
/// It starts with the shared-kernel guard (exit 3): a host sharing this machine's kernel is never
/// kexec'd, whatever preflight concluded.
pub fn launch_script(dir: &str, tarball: &str, extra_flags: Option<&str>) -> String {
    let d = shell_quote(dir);
    let args = extra_flags
        .map(|f| format!(" --kexec-extra-flags {}", shell_quote(f)))
        .unwrap_or_default();
    format!(
        "{guard}; set -e; cd {d}; rm -rf kexec run.rc run.log; tar -xf {t}; \
         setsid nohup sh -c './kexec/run \"$@\" > run.log 2>&1; echo $? > run.rc' kexec-run{args} > /dev/null 2>&1 < /dev/null &",
        t = shell_quote(tarball),
        guard = nixpave_remote::SHARED_KERNEL_GUARD
    )
}

/// The script that reports the detached run's outcome: `rc=N` when finished, then the log tail
/// and the kernel log tail.
pub fn status_script(dir: &str) -> String {
    let d = shell_quote(dir);
    format!(
        "cd {d} || exit 0; if [ -f run.rc ]; then echo \"rc=$(cat run.rc)\"; fi; \
         echo '--- kexec/run log:'; tail -n 30 run.log 2>/dev/null; \
         echo '--- dmesg:'; dmesg 2>/dev/null | tail -n 30; true"
    )
}

/// Parses `rc=N` from [`status_script`] output (pure).
pub fn parse_status(output: &str) -> Option<i32> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("rc=").and_then(|v| v.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_of_gnu_tar() {
        let l = "drwxr-xr-x root/root         0 2026-11-25 10:00 kexec/\n\
                 -rwxr-xr-x root/root      2100 2026-11-25 10:00 kexec/run\n\
                 -rw-r--r-- root/root 197132288 2026-11-25 10:00 ./kexec/initrd\n";
        let m = parse_listing(l);
        assert_eq!(m[1], ("kexec/run".to_string(), 2100));
        assert_eq!(m[2], ("kexec/initrd".to_string(), 197132288));
    }

    #[test]
    fn cache_path_is_stable_and_safe() {
        let a = cache_path(
            Path::new("/c"),
            "https://x.org/a/nixos-kexec-installer-x86_64-linux.tar.gz",
        );
        let b = cache_path(
            Path::new("/c"),
            "https://x.org/a/nixos-kexec-installer-x86_64-linux.tar.gz",
        );
        assert_eq!(a, b);
        assert!(a
            .to_string_lossy()
            .ends_with("-nixos-kexec-installer-x86_64-linux.tar.gz"));
        assert_ne!(
            a,
            cache_path(
                Path::new("/c"),
                "https://y.org/a/nixos-kexec-installer-x86_64-linux.tar.gz"
            )
        );
        assert!(cache_path(Path::new("/c"), "https://x.org/").ends_with(
            cache_path(Path::new("/"), "https://x.org/")
                .file_name()
                .unwrap()
        ));
    }

    #[test]
    fn status_parsing() {
        assert_eq!(parse_status("rc=1\n--- kexec/run log:\nboom"), Some(1));
        assert_eq!(parse_status("--- kexec/run log:\n"), None);
        assert_eq!(
            KexecSource::parse("https://a/b.tar.gz"),
            KexecSource::Url("https://a/b.tar.gz".into())
        );
        assert_eq!(
            KexecSource::parse("./b.tar"),
            KexecSource::File("./b.tar".into())
        );
    }

    fn make_tarball(dir: &Path, with_initrd: bool) -> PathBuf {
        let src = dir.join(if with_initrd { "full" } else { "partial" });
        let k = src.join("kexec");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("run"), "#!/bin/sh\n").unwrap();
        std::fs::write(k.join("bzImage"), vec![1u8; 1000]).unwrap();
        if with_initrd {
            std::fs::write(k.join("initrd"), vec![2u8; 12345]).unwrap();
        }
        let tar = dir.join(if with_initrd {
            "i.tar.gz"
        } else {
            "bad.tar.gz"
        });
        let ok = Command::new("tar")
            .arg("-czf")
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg("kexec")
            .status()
            .unwrap();
        assert!(ok.success());
        tar
    }

    #[test]
    fn inspects_a_real_tarball() {
        let d = tempfile::tempdir().unwrap();
        let info = inspect(&make_tarball(d.path(), true)).unwrap();
        assert_eq!(info.initrd_bytes, 12345);
        let err = inspect(&make_tarball(d.path(), false))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kexec/initrd is missing"), "{err}");
    }

    #[test]
    fn chunked_upload_lands_whole_and_is_skipped_when_present() {
        let d = tempfile::tempdir().unwrap();
        let local = d.path().join("blob");
        let data: Vec<u8> = (0..(CHUNK_BYTES * 2 + 77))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&local, &data).unwrap();
        let remote = d.path().join("remote/dir/blob").display().to_string();
        let t = nixpave_remote::LocalTransport;
        let mut seen = Vec::new();
        assert!(upload(&t, &local, &remote, &mut |done, total| seen
            .push((done, total)))
        .unwrap());
        assert_eq!(std::fs::read(&remote).unwrap(), data);
        assert_eq!(seen.len(), 3);
        assert_eq!(seen.last(), Some(&(data.len() as u64, data.len() as u64)));
        let mut again = 0;
        assert!(!upload(&t, &local, &remote, &mut |_, _| again += 1).unwrap());
        assert_eq!(again, 1);
    }

    #[test]
    fn failing_run_is_reported_with_its_log() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("src/kexec");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(
            k.join("run"),
            "#!/bin/sh\necho \"args: $*\"\necho 'kexec_load failed: Operation not permitted'\nexit 3\n",
        )
        .unwrap();
        Command::new("chmod")
            .arg("+x")
            .arg(k.join("run"))
            .status()
            .unwrap();
        let tar = d.path().join("t.tar");
        Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(d.path().join("src"))
            .arg("kexec")
            .status()
            .unwrap();
        let work = d.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let t = nixpave_remote::LocalTransport;
        let dir = work.display().to_string();
        // The guard comes first: in another mount namespace than PID 1's it refuses before unpacking.
        let script = launch_script(&dir, &tar.display().to_string(), Some("--mem-min=1 -x"));
        let guarded = std::process::Command::new("unshare")
            .args(["--mount", "sh", "-c", &script])
            .output()
            .unwrap();
        assert_eq!(guarded.status.code(), Some(3));
        assert!(
            !work.join("kexec").exists(),
            "the guard ran after unpacking"
        );
        // The rest of it, without the guard (this test machine may itself be a container, where the
        // guard rightly refuses; the VM tests run it whole).
        let unguarded = script
            .strip_prefix(nixpave_remote::SHARED_KERNEL_GUARD)
            .and_then(|rest| rest.strip_prefix(";"))
            .expect("the script starts with the guard")
            .to_string();
        let out = t.run(&["sh".into(), "-c".into(), unguarded], None).unwrap();
        assert!(out.success(), "{}", out.stderr_tail(5));
        let mut status = None;
        for _ in 0..50 {
            let s = t
                .run(&["sh".into(), "-c".into(), status_script(&dir)], None)
                .unwrap();
            if let Some(rc) = parse_status(&s.stdout_str()) {
                status = Some((rc, s.stdout_str()));
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let (rc, text) = status.expect("run.rc appears");
        assert_eq!(rc, 3);
        assert!(text.contains("Operation not permitted"), "{text}");
        assert!(
            text.contains("args: --kexec-extra-flags --mem-min=1 -x"),
            "{text}"
        );
    }
}
