//! Evaluating a [`Guard`] by probing the machine right before its operation.

use crate::plan::Guard;

use super::error::ApplyError;
use super::facts::{normalize_path, parse_blkid_export};
use super::resolve::Resolution;
use super::session::Session;

/// The outcome of a guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The condition holds: run the operation.
    Run,
    /// The condition does not hold: skip, with the reason shown to the user.
    Skip(String),
    /// The guard names a device that does not exist (yet). In a real run that is an error;
    /// in a dry run an earlier step would have created it.
    Missing(String),
}

/// Evaluates `guard` on the machine (read-only).
pub fn evaluate(guard: &Guard, session: &mut Session<'_>) -> Result<Verdict, ApplyError> {
    match guard {
        Guard::DeviceBlank { device } => with_node(session, device, |s, node| {
            let sig = signatures(s, &node)?;
            Ok(if sig.is_empty() {
                Verdict::Run
            } else {
                Verdict::Skip(format!("{device} is not blank ({})", sig.join(", ")))
            })
        }),
        Guard::NoFilesystem { device } => with_node(session, device, |s, node| {
            let sig = signatures(s, &node)?;
            Ok(match sig.iter().find(|kv| kv.starts_with("TYPE=")) {
                None => Verdict::Run,
                Some(kv) => Verdict::Skip(format!("{device} already has a filesystem ({kv})")),
            })
        }),
        Guard::NotLuks { device } => with_node(session, device, |s, node| {
            let luks = match s.probe_cmd(&["cryptsetup", "isLuks", &node])? {
                Some(out) => out.success(),
                // Without cryptsetup, blkid's signature tells the same.
                None => signatures(s, &node)?
                    .iter()
                    .any(|kv| kv == "TYPE=crypto_LUKS"),
            };
            Ok(if luks {
                Verdict::Skip(format!("{device} is already a LUKS container"))
            } else {
                Verdict::Run
            })
        }),
        Guard::PartitionAbsent { disk, number } => with_node(session, disk, |s, node| {
            let numbers = super::rescan::table_numbers(s, &node)?;
            Ok(if numbers.contains(number) {
                Verdict::Skip(format!("partition {number} already exists on {disk}"))
            } else {
                Verdict::Run
            })
        }),
        // Opening with --test-passphrase only checks the key (no mapping is created).
        Guard::PartitionPresent { disk, number } => with_node(session, disk, |s, node| {
            let numbers = super::rescan::table_numbers(s, &node)?;
            Ok(if numbers.contains(number) {
                Verdict::Run
            } else {
                Verdict::Skip(format!("partition {number} does not exist on {disk} yet"))
            })
        }),
        Guard::PathAbsent { path } => Ok(if path_exists(session, path)? {
            Verdict::Skip(format!("{path} already exists"))
        } else {
            Verdict::Run
        }),
        Guard::PathExists { path } => Ok(if path_exists(session, path)? {
            Verdict::Run
        } else {
            Verdict::Skip(format!("{path} does not exist"))
        }),
        Guard::NotMounted { device, target } => {
            let target = normalize_path(target);
            let node = match session.resolve(device)? {
                Resolution::Node(n) => Some(n),
                _ => None,
            };
            let facts = session.facts()?;
            let here: Vec<_> = facts
                .mounts
                .iter()
                .filter(|m| normalize_path(&m.target) == target)
                .collect();
            let same = here.iter().any(|m| match &node {
                Some(node) => facts
                    .find(node)
                    .is_some_and(|d| facts.same_device(&m.source, d)),
                // Not a block device (tmpfs, none, a bind source): anything there counts.
                None => true,
            });
            Ok(if same {
                Verdict::Skip(format!("{device} is already mounted at {target}"))
            } else {
                Verdict::Run
            })
        }
        Guard::Mounted { target } => {
            let target = normalize_path(target);
            let mounted = session
                .facts()?
                .mounts
                .iter()
                .any(|m| normalize_path(&m.target) == target);
            Ok(if mounted {
                Verdict::Run
            } else {
                Verdict::Skip(format!("nothing is mounted at {target}"))
            })
        }
        Guard::SwapInactive { device } => Ok(if swap_active(session, device)? {
            Verdict::Skip(format!("swap on {device} is already active"))
        } else {
            Verdict::Run
        }),
        Guard::SwapActive { device } => Ok(if swap_active(session, device)? {
            Verdict::Run
        } else {
            Verdict::Skip(format!("swap on {device} is not active"))
        }),
        Guard::VgAbsent { vg } => Ok(absent_if_fails(
            session,
            &["vgs", "--noheadings", "-o", "vg_name", vg],
            format!("volume group {vg} already exists"),
        )?),
        Guard::LvAbsent { vg, lv } => Ok(absent_if_fails(
            session,
            &[
                "lvs",
                "--noheadings",
                "-o",
                "lv_name",
                &format!("{vg}/{lv}"),
            ],
            format!("logical volume {vg}/{lv} already exists"),
        )?),
        Guard::PoolAbsent { pool } => Ok(absent_if_fails(
            session,
            &["zpool", "list", "-H", "-o", "name", pool],
            format!("zpool {pool} is already imported"),
        )?),
        Guard::PoolPresent { pool } => Ok(
            match absent_if_fails(
                session,
                &["zpool", "list", "-H", "-o", "name", pool],
                String::new(),
            )? {
                Verdict::Run => Verdict::Skip(format!("zpool {pool} is not imported")),
                _ => Verdict::Run,
            },
        ),
        Guard::DatasetAbsent { dataset } => Ok(absent_if_fails(
            session,
            &["zfs", "list", "-H", "-o", "name", dataset],
            format!("dataset {dataset} already exists"),
        )?),
        Guard::SubvolumeAbsent { path } => Ok(absent_if_fails(
            session,
            &["btrfs", "subvolume", "show", path],
            format!("btrfs subvolume {path} already exists"),
        )?),
        Guard::KeyUnavailable { dataset } => Ok(if key_available(session, dataset)? {
            Verdict::Skip(format!("the key of {dataset} is already loaded"))
        } else {
            Verdict::Run
        }),
        Guard::KeyAvailable { dataset } => Ok(if key_available(session, dataset)? {
            Verdict::Run
        } else {
            Verdict::Skip(format!("the key of {dataset} is not loaded"))
        }),
        Guard::PoolImportable { pool } => {
            // `zpool import` without a pool name only lists what could be imported.
            let out = session.probe_cmd(&["zpool", "import"])?;
            let listed = out.is_some_and(|o| importable_pools(&o.stdout_str()).contains(pool));
            Ok(if listed {
                Verdict::Run
            } else {
                Verdict::Skip(format!("no importable zpool named {pool}"))
            })
        }
        // Opening with --test-passphrase only checks the key (no mapping is created).
        Guard::MdAssemblable { array, members } => {
            if path_exists(session, array)? {
                return Ok(Verdict::Skip(format!("{array} is already running")));
            }
            for member in members {
                let node = match session.resolve(member)? {
                    Resolution::Node(node) => node,
                    _ => return Ok(Verdict::Skip(format!("member {member} does not exist"))),
                };
                let sig = signatures(session, &node)?;
                if !sig.iter().any(|kv| kv == "TYPE=linux_raid_member") {
                    return Ok(Verdict::Skip(format!(
                        "member {member} carries no md superblock"
                    )));
                }
            }
            Ok(Verdict::Run)
        }
        Guard::LuksKeyMissing { device, key_file } => with_node(session, device, |s, node| {
            absent_if_fails(
                s,
                &[
                    "cryptsetup",
                    "open",
                    "--test-passphrase",
                    "--key-file",
                    key_file,
                    &node,
                ],
                format!("{key_file} already opens {device}"),
            )
        }),
    }
}

/// Resolves `device` to a node and calls `f`, or reports it missing.
fn with_node(
    session: &mut Session<'_>,
    device: &str,
    f: impl FnOnce(&mut Session<'_>, String) -> Result<Verdict, ApplyError>,
) -> Result<Verdict, ApplyError> {
    match session.resolve(device)? {
        Resolution::Node(node) => f(session, node),
        Resolution::Verbatim => {
            if path_exists(session, device)? {
                f(session, device.to_string())
            } else {
                Ok(Verdict::Missing(format!("{device} does not exist")))
            }
        }
        Resolution::Missing { reason } => Ok(Verdict::Missing(reason)),
        Resolution::Ambiguous { candidates } => Ok(Verdict::Missing(format!(
            "{device} is ambiguous: {} all match and none is on the plan's disks",
            candidates.join(", ")
        ))),
    }
}

/// The signatures `blkid -p` finds on a device itself (`TYPE=ext4`, `PTTYPE=gpt`, …), leaving
/// out what describes its entry in the parent's partition table.
fn signatures(session: &mut Session<'_>, node: &str) -> Result<Vec<String>, ApplyError> {
    let Some(out) = session.probe_cmd(&["blkid", "-p", "-o", "export", node])? else {
        return Err(ApplyError::Probe {
            host: session.host(),
            command: format!("blkid -p -o export {node}"),
            status: None,
            stderr: "blkid is not installed".into(),
        });
    };
    // Exit 2: nothing found; exit 8: ambivalent signatures (treated as no filesystem, like disko).
    if !matches!(out.status, Some(0 | 2 | 8)) {
        return Err(ApplyError::Probe {
            host: session.host(),
            command: format!("blkid -p -o export {node}"),
            status: out.status,
            stderr: out.stderr_tail(5),
        });
    }
    let infos = parse_blkid_export(&out.stdout_str());
    Ok(infos
        .values()
        .flat_map(|props| props.iter())
        .filter(|(k, _)| matches!(k.as_str(), "TYPE" | "PTTYPE" | "UUID" | "LABEL"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect())
}

/// True when something exists at `path` (a device found by the kernel's view, or any file).
fn path_exists(session: &mut Session<'_>, path: &str) -> Result<bool, ApplyError> {
    match session.resolve(path)? {
        Resolution::Node(_) => Ok(true),
        Resolution::Missing { .. } | Resolution::Ambiguous { .. } | Resolution::Verbatim => {
            let out = session.probe_cmd(&["test", "-e", path])?;
            Ok(out.is_some_and(|o| o.success()))
        }
    }
}

/// True when `device` (a device or a swap file) is an active swap area.
fn swap_active(session: &mut Session<'_>, device: &str) -> Result<bool, ApplyError> {
    let node = match session.resolve(device)? {
        Resolution::Node(n) => Some(n),
        _ => None,
    };
    let facts = session.facts()?;
    Ok(facts.swaps.iter().any(|s| match &node {
        Some(node) => facts
            .find(node)
            .is_some_and(|d| facts.same_device(&s.path, d)),
        None => normalize_path(&s.path) == normalize_path(device),
    }))
}

/// Runs a probe that succeeds when the thing exists: success → skip, failure or missing
/// program → run.
fn absent_if_fails(
    session: &mut Session<'_>,
    argv: &[&str],
    exists: String,
) -> Result<Verdict, ApplyError> {
    Ok(match session.probe_cmd(argv)? {
        Some(out) if out.success() => Verdict::Skip(exists),
        _ => Verdict::Run,
    })
}

/// True when `zfs get keystatus` says the dataset's key is loaded.
fn key_available(session: &mut Session<'_>, dataset: &str) -> Result<bool, ApplyError> {
    let out = session.probe_cmd(&["zfs", "get", "-H", "-o", "value", "keystatus", dataset])?;
    Ok(out.is_some_and(|o| o.success() && o.stdout_str().trim() == "available"))
}

/// Pool names in the listing of `zpool import` (lines `   pool: NAME`).
pub fn importable_pools(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pool:"))
        .map(|name| name.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_importable_pools() {
        let listing = "   pool: zroot\n     id: 123\n  state: ONLINE\n action: The pool can be imported.\n\n   pool: tank\n";
        assert_eq!(importable_pools(listing), vec!["zroot", "tank"]);
        assert!(importable_pools("no pools available to import\n").is_empty());
    }
}
