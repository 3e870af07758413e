//! The lab's images (guest disk, test kexec installer, kernel), built from Debian packages and cached.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::error::tail;
use super::VmError;

/// The build scripts, embedded so an installed `nixpave` can build the images without the source tree.
const SCRIPTS: &[(&str, &str)] = &[
    (
        "build-images.sh",
        include_str!("../../images/build-images.sh"),
    ),
    ("guest-init.sh", include_str!("../../images/guest-init.sh")),
    (
        "stage1-init.sh",
        include_str!("../../images/stage1-init.sh"),
    ),
    (
        "installer-init.sh",
        include_str!("../../images/installer-init.sh"),
    ),
    ("kexec-run.sh", include_str!("../../images/kexec-run.sh")),
    ("power.sh", include_str!("../../images/power.sh")),
];

/// Where built images are cached: `NIXPAVE_LAB_CACHE`, default `/var/cache/nixpave/lab`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("NIXPAVE_LAB_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/nixpave/lab"))
}

/// A set of built images. All files are read-only inputs: VMs use copy-on-write overlays of the guest disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// The directory holding them (named after the hash of the build inputs).
    pub dir: PathBuf,
}

impl Images {
    /// The BIOS-bootable guest disk (qcow2): Debian with sshd, disk tools, nix, kexec-tools and GRUB.
    pub fn guest_disk(&self) -> PathBuf {
        self.dir.join("guest.qcow2")
    }

    /// The test installer tarball in nixos-images format (`kexec/run`, `kexec/bzImage`, `kexec/initrd`).
    pub fn installer_tarball(&self) -> PathBuf {
        self.dir.join("kexec-installer.tar.gz")
    }

    /// The kernel used by the guest and the installer.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// Builds the images into `cache` unless a build with the same inputs is already there (then this takes
    /// milliseconds). `progress` receives the build's progress lines. Builds are serialised by a lock in `cache`.
    pub fn ensure(cache: &Path, progress: &mut dyn FnMut(&str)) -> Result<Images, VmError> {
        let src = cache.join("src");
        write_scripts(&src)?;
        let log_path = cache.join("build.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| VmError::io("creating the build log", &log_path, e))?;
        let mut child = Command::new("bash")
            .arg(src.join("build-images.sh"))
            .arg(&src)
            .arg(cache)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|source| VmError::Spawn {
                program: "bash".into(),
                source,
            })?;
        let mut last = String::new();
        if let Some(out) = child.stdout.take() {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                last = line;
            }
        }
        let status = child.wait().map_err(|source| VmError::Spawn {
            program: "bash".into(),
            source,
        })?;
        let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
        for line in log_text.lines() {
            progress(line);
        }
        if !status.success() || last.is_empty() {
            return Err(VmError::ImageBuild {
                log: log_path,
                tail: tail(&log_text, 15),
            });
        }
        let images = Images {
            dir: PathBuf::from(last.trim()),
        };
        for file in [
            images.guest_disk(),
            images.installer_tarball(),
            images.kernel(),
        ] {
            if !file.is_file() {
                return Err(VmError::ImageBuild {
                    log: log_path,
                    tail: format!(
                        "the build reported success but {} is missing",
                        file.display()
                    ),
                });
            }
        }
        Ok(images)
    }
}

/// Writes the embedded scripts to `dir` (only the ones that changed, so concurrent callers do not race on them).
fn write_scripts(dir: &Path) -> Result<(), VmError> {
    std::fs::create_dir_all(dir).map_err(|e| VmError::io("creating", dir, e))?;
    for (name, text) in SCRIPTS {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(*text) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(|e| VmError::io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| VmError::io("renaming into place", &path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_companion_script_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("images");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sh"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = SCRIPTS.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }
}
