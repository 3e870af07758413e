//! Making the kernel see a partition table that was just written.
//!
//! `partprobe` asks the kernel to re-read the table. That does nothing on loop devices of
//! kernels that do not scan them, and fails for a disk with a busy partition; `partx` then adds
//! and removes partitions one by one (BLKPG) from the on-disk table. We wait, bounded, until the
//! kernel's partitions are exactly the table's. No udev needed.

use std::time::{Duration, Instant};

use crate::plan::Operation;

use super::error::ApplyError;
use super::facts::Facts;
use super::session::Session;

/// One partition: number, start and length in 512-byte sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartEntry {
    /// 1-based partition number.
    pub number: u32,
    /// Start sector (512-byte units).
    pub start: u64,
    /// Length in 512-byte sectors.
    pub sectors: u64,
}

/// The whole device whose partition table `op` may have changed, if any.
///
/// Partition tools (`sgdisk`, `sfdisk`, `parted`, `partx`), `wipefs` on a whole device and
/// `mdadm --create` / `--assemble` change what the kernel should see.
pub fn changed_table(op: &Operation, resolved_device: &str, facts: &Facts) -> Option<String> {
    let program = op.argv.first()?.rsplit('/').next()?;
    let candidate = match program {
        "sgdisk" | "sfdisk" | "parted" | "wipefs" => resolved_device.to_string(),
        "mdadm"
            if op
                .argv
                .iter()
                .any(|a| matches!(a.as_str(), "--create" | "-C" | "--assemble" | "-A")) =>
        {
            resolved_device.to_string()
        }
        _ => return None,
    };
    match facts.find(&candidate) {
        Some(device) if device.is_whole() => Some(device.path.clone()),
        Some(_) => None,
        // A device that did not exist before the step (a new md array): check after it.
        None => candidate.starts_with("/dev/").then_some(candidate),
    }
}

/// Parses `partx -r -g -o NR,START,SECTORS`.
pub fn parse_partx(text: &str) -> Vec<PartEntry> {
    let mut entries: Vec<PartEntry> = text
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            Some(PartEntry {
                number: f.next()?.parse().ok()?,
                start: f.next()?.parse().ok()?,
                sectors: f.next()?.parse().ok()?,
            })
        })
        .collect();
    entries.sort();
    entries
}

/// The partitions in the on-disk table of `disk` (empty when there is no table).
pub fn on_disk(session: &Session<'_>, disk: &str) -> Result<Vec<PartEntry>, ApplyError> {
    let out = session.probe_cmd(&["partx", "-r", "-g", "-o", "NR,START,SECTORS", disk])?;
    Ok(match out {
        Some(out) if out.success() => parse_partx(&out.stdout_str()),
        // No partition table (or partx missing: the kernel's view is all we have).
        _ => Vec::new(),
    })
}

/// Partition numbers in the on-disk table of `disk`.
pub fn table_numbers(session: &Session<'_>, disk: &str) -> Result<Vec<u32>, ApplyError> {
    Ok(on_disk(session, disk)?
        .into_iter()
        .map(|e| e.number)
        .collect())
}

/// The partitions the kernel currently has for `disk`.
pub fn in_kernel(session: &mut Session<'_>, disk: &str) -> Result<Vec<PartEntry>, ApplyError> {
    session.invalidate();
    let facts = session.facts()?;
    let Some(device) = facts.find(disk) else {
        return Ok(Vec::new());
    };
    let parts: Vec<(Option<u32>, Option<u64>, u64, String)> = device
        .children
        .iter()
        .filter(|c| c.kind == "part")
        .map(|c| (c.partn, c.start, c.size, c.kname.clone()))
        .collect();
    let mut entries = Vec::new();
    for (partn, start, size, kname) in parts {
        // Old lsblk has no START column: sysfs has the same number.
        let start = match start {
            Some(s) => Some(s),
            None => session
                .transport
                .read_file(std::path::Path::new(&format!(
                    "/sys/class/block/{kname}/start"
                )))
                .ok()
                .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok()),
        };
        if let (Some(number), Some(start)) = (partn, start) {
            entries.push(PartEntry {
                number,
                start,
                sectors: size / 512,
            });
        }
    }
    entries.sort();
    Ok(entries)
}

fn describe(entries: &[PartEntry]) -> String {
    if entries.is_empty() {
        return "no partitions".into();
    }
    entries
        .iter()
        .map(|e| format!("#{} at {}+{}", e.number, e.start, e.sectors))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Makes the kernel's partitions of `disk` match its on-disk table, waiting at most `timeout`.
pub fn reread(session: &mut Session<'_>, disk: &str, timeout: Duration) -> Result<(), ApplyError> {
    let started = Instant::now();
    // `/dev/md/NAME` and other symlinks: the kernel's view knows the real node only.
    let real = session
        .probe_cmd(&["readlink", "-e", disk])?
        .filter(|o| o.success())
        .map(|o| o.stdout_str().trim().to_string())
        .filter(|p| !p.is_empty());
    let disk = real.as_deref().unwrap_or(disk);
    // partprobe fails on busy disks and does nothing on unscanned loop devices: partx follows.
    let _ = session.probe_cmd(&["partprobe", disk])?;
    let mut last_fix: Option<Instant> = None;
    loop {
        let expected = on_disk(session, disk)?;
        let kernel = in_kernel(session, disk)?;
        if expected == kernel {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(ApplyError::Rescan {
                host: session.host(),
                disk: disk.to_string(),
                expected: describe(&expected),
                kernel: describe(&kernel),
                seconds: timeout.as_secs(),
            });
        }
        let due = match last_fix {
            None => true,
            Some(t) => t.elapsed() >= Duration::from_secs(1),
        };
        if due {
            last_fix = Some(Instant::now());
            let renumbered = |n: u32, list: &[PartEntry]| list.iter().any(|e| e.number == n);
            for stale in kernel.iter().filter(|k| !expected.contains(k)) {
                let nr = stale.number.to_string();
                // Same number, other extent: a grown partition, maybe mounted. `partx -u`
                // resizes it in place (BLKPG), where delete + add fails on a busy one.
                let action = if renumbered(stale.number, &expected) {
                    "-u"
                } else {
                    "-d"
                };
                let _ = session.probe_cmd(&["partx", action, "--nr", &nr, disk])?;
            }
            for missing in expected
                .iter()
                .filter(|e| !kernel.contains(e) && !renumbered(e.number, &kernel))
            {
                let nr = missing.number.to_string();
                let _ = session.probe_cmd(&["partx", "-a", "--nr", &nr, disk])?;
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_partx_output_sorted() {
        let entries = parse_partx("2 206848 102400\n1 2048 204800\n");
        assert_eq!(
            entries,
            vec![
                PartEntry {
                    number: 1,
                    start: 2048,
                    sectors: 204800
                },
                PartEntry {
                    number: 2,
                    start: 206848,
                    sectors: 102400
                }
            ]
        );
        assert!(parse_partx("").is_empty());
    }

    #[test]
    fn only_table_tools_on_whole_devices_trigger_a_rescan() {
        let facts = Facts {
            devices: super::super::facts::parse_lsblk(
                r#"{"blockdevices":[{"name":"loop5","path":"/dev/loop5","type":"loop","size":1,
                   "children":[{"name":"loop5p1","path":"/dev/loop5p1","type":"part","size":1}]}]}"#,
            )
            .expect("valid json"),
            ..Facts::default()
        };
        let op = |argv: &[&str], device: &str| Operation {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            device: device.into(),
            destructive: true,
            description: String::new(),
            guard: None,
            stdin: None,
        };
        let sg = op(&["sgdisk", "--clear", "/dev/loop5"], "/dev/loop5");
        assert_eq!(
            changed_table(&sg, "/dev/loop5", &facts).as_deref(),
            Some("/dev/loop5")
        );
        let wipe_part = op(&["wipefs", "-a", "/dev/loop5p1"], "/dev/loop5p1");
        assert_eq!(changed_table(&wipe_part, "/dev/loop5p1", &facts), None);
        let mkfs = op(&["mkfs.ext4", "/dev/loop5"], "/dev/loop5");
        assert_eq!(changed_table(&mkfs, "/dev/loop5", &facts), None);
        let md = op(
            &["mdadm", "--create", "/dev/md/r", "--level=1"],
            "/dev/md/r",
        );
        assert_eq!(
            changed_table(&md, "/dev/md/r", &facts).as_deref(),
            Some("/dev/md/r")
        );
    }
}
