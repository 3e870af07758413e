//! The lab's images (guest disk, test kexec installer, kernel), built from Debian packages and cached.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::VmError;
use nixpave_remote::last_lines;

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
    (
        "nixos-install.sh",
        include_str!("../../images/nixos-install.sh"),
    ),
    (
        "nixos-enter.sh",
        include_str!("../../images/nixos-enter.sh"),
    ),
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
        // One directory per script version: a running build never sees its script replaced by another version's.
        let src = cache.join(format!("src-{:016x}", scripts_hash()));
        write_scripts(&src)?;
        let log_path = cache.join("build.log");
        let mut log = std::fs::File::create(&log_path)
            .map_err(|e| VmError::io("creating the build log", &log_path, e))?;
        let mut child = Command::new("bash")
            .arg(src.join("build-images.sh"))
            .arg(&src)
            .arg(cache)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| VmError::Spawn {
                program: "bash".into(),
                source,
            })?;
        // stdout carries only the result (the images directory, last line); stderr the progress, shown live.
        let stdout = child.stdout.take();
        let result = std::thread::spawn(move || {
            stdout
                .map(|out| {
                    BufReader::new(out)
                        .lines()
                        .map_while(Result::ok)
                        .last()
                        .unwrap_or_default()
                })
                .unwrap_or_default()
        });
        let mut log_text = String::new();
        if let Some(err) = child.stderr.take() {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if line.starts_with("[images") {
                    progress(&line);
                }
                log_text.push_str(&line);
                log_text.push('\n');
            }
        }
        let last = result.join().unwrap_or_default();
        let status = child.wait().map_err(|source| VmError::Spawn {
            program: "bash".into(),
            source,
        })?;
        if !status.success() || last.is_empty() {
            return Err(VmError::ImageBuild {
                log: log_path,
                tail: last_lines(&log_text, 15),
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

/// FNV-1a over the embedded scripts: names the directory they are written to (stable across runs and builds).
fn scripts_hash() -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, text) in SCRIPTS {
        for byte in name.bytes().chain([0]).chain(text.bytes()).chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Writes the embedded scripts to `dir` unless already there (each via a temporary file and a rename, so a
/// concurrent caller never reads a half-written script).
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

    #[test]
    fn every_script_parses() {
        let dir =
            std::env::temp_dir().join(format!("nixpave-images-syntax-{}", std::process::id()));
        write_scripts(&dir).unwrap();
        for (name, _) in SCRIPTS {
            // Scripts with a bash shebang run under bash; the rest under the guest's or the old system's /bin/sh.
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            let shell =
                if text.starts_with("#!/usr/bin/env bash") || text.starts_with("#!/bin/bash") {
                    "bash"
                } else {
                    "sh"
                };
            let out = Command::new(shell)
                .arg("-n")
                .arg(dir.join(name))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
