//! Tearing down what lives on a disk before it is wiped, computed from live facts (pure).
//!
//! Like disko's `disk-deactivate`: stop swap, unmount, then from the leaves up close LUKS,
//! deactivate LVM, stop md arrays, destroy ZFS pools and wipe partition signatures. The disk
//! itself is wiped by the plan's own destroy operations.

use crate::plan::{Guard, Operation};

use super::facts::{path_is_under, BlockDevice, Facts};

fn op(argv: &[&str], device: &str, description: String, guard: Option<Guard>) -> Operation {
    Operation {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        device: device.to_string(),
        destructive: true,
        description,
        guard,
        stdin: None,
    }
}

/// Splits a device-mapper LVM name into volume group and logical volume (`vg--a-lv` →
/// (`vg-a`, `lv`)): LVM doubles dashes inside names and joins the two with a single dash.
pub fn split_lvm_name(dm_name: &str) -> Option<(String, String)> {
    let chars: Vec<char> = dm_name.chars().collect();
    let mut vg = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '-' {
            if chars.get(i + 1) == Some(&'-') {
                vg.push('-');
                i += 2;
                continue;
            }
            let lv: String = chars[i + 1..].iter().collect();
            return Some((vg, lv.replace("--", "-")));
        }
        vg.push(chars[i]);
        i += 1;
    }
    None
}

/// The operations that release everything on `disk` so it can be wiped.
pub fn deactivation_ops(disk: &BlockDevice, facts: &Facts) -> Vec<Operation> {
    let mut ops = Vec::new();
    let subtree = disk.walk();
    // 1. Swap: partitions/volumes of the disk, and swap files on its filesystems.
    for device in &subtree {
        for swap in facts.swaps_of(device) {
            ops.push(op(
                &["swapoff", &swap.path],
                &swap.path,
                format!("stop swap on {}", swap.path),
                None,
            ));
        }
    }
    for swap in facts.swaps.iter().filter(|s| s.kind == "file") {
        if let Some(mount) = facts.mount_containing(&swap.path) {
            if subtree.iter().any(|d| facts.same_device(&mount.source, d)) {
                ops.push(op(
                    &["swapoff", &swap.path],
                    &swap.path,
                    format!("stop swap file {}", swap.path),
                    None,
                ));
            }
        }
    }
    // 2. Mounts: the outermost mount targets of the disk's filesystems, recursively.
    let mut targets: Vec<String> = subtree
        .iter()
        .flat_map(|d| facts.mounts_of(d))
        .map(|m| m.target.clone())
        .collect();
    targets.sort();
    targets.dedup();
    let outermost: Vec<&String> = targets
        .iter()
        .filter(|t| !targets.iter().any(|o| o != *t && path_is_under(t, o)))
        .collect();
    for target in outermost {
        ops.push(op(
            &["umount", "-R", target],
            target,
            format!("unmount {target} (and everything below it)"),
            Some(Guard::Mounted {
                target: target.clone(),
            }),
        ));
    }
    // 3. Stacked devices, leaves first.
    teardown(disk, true, &mut ops);
    let mut seen = std::collections::HashSet::new();
    ops.retain(|o| seen.insert(o.argv.clone()));
    ops
}

fn teardown(device: &BlockDevice, top: bool, ops: &mut Vec<Operation>) {
    for child in &device.children {
        teardown(child, false, ops);
    }
    let path = device.path.as_str();
    match device.fstype.as_deref() {
        Some("LVM2_member") => {
            let vgs: Vec<String> = device
                .children
                .iter()
                .filter(|c| c.kind == "lvm")
                .filter_map(|c| split_lvm_name(&c.name).map(|(vg, _)| vg))
                .collect();
            for vg in vgs {
                ops.push(op(
                    &["vgchange", "-a", "n", &vg],
                    &vg,
                    format!("deactivate volume group {vg}"),
                    Some(Guard::PathExists {
                        path: format!("/dev/{vg}"),
                    }),
                ));
                ops.push(op(
                    &["vgremove", "-f", "-f", "-y", &vg],
                    &vg,
                    format!("remove volume group {vg}"),
                    None,
                ));
            }
        }
        Some("zfs_member") => {
            if let Some(pool) = &device.label {
                ops.push(op(
                    &["zpool", "destroy", "-f", pool],
                    pool,
                    format!("destroy zpool {pool}"),
                    Some(Guard::PoolPresent { pool: pool.clone() }),
                ));
            }
            ops.push(op(
                &["zpool", "labelclear", "-f", path],
                path,
                format!("clear the ZFS label on {path}"),
                None,
            ));
        }
        _ => {}
    }
    let kind = device.kind.as_str();
    if kind == "crypt" {
        ops.push(op(
            &["cryptsetup", "close", &device.name],
            path,
            format!("close LUKS device {}", device.name),
            None,
        ));
    } else if kind.starts_with("raid") || kind == "md" {
        ops.push(op(
            &["mdadm", "--stop", path],
            path,
            format!("stop md array {path}"),
            Some(Guard::PathExists {
                path: path.to_string(),
            }),
        ));
    } else if kind == "part" && !top {
        ops.push(op(
            &["wipefs", "--all", "-f", path],
            path,
            format!("wipe signatures on {path}"),
            None,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::facts::{parse_lsblk, Mount, Swap};

    fn facts() -> Facts {
        let devices = parse_lsblk(
            r#"{"blockdevices":[
              {"name":"vdb","path":"/dev/vdb","type":"disk","size":10,"children":[
                {"name":"vdb1","path":"/dev/vdb1","type":"part","size":1},
                {"name":"vdb2","path":"/dev/vdb2","type":"part","size":1,"fstype":"swap"},
                {"name":"vdb3","path":"/dev/vdb3","type":"part","size":1,"fstype":"crypto_LUKS","children":[
                  {"name":"crypted","kname":"dm-0","path":"/dev/mapper/crypted","type":"crypt","size":1,"fstype":"LVM2_member","children":[
                    {"name":"pool--a-root","kname":"dm-1","path":"/dev/mapper/pool--a-root","type":"lvm","size":1,"fstype":"btrfs"}
                  ]}
                ]},
                {"name":"vdb4","path":"/dev/vdb4","type":"part","size":1,"fstype":"linux_raid_member","children":[
                  {"name":"md127","path":"/dev/md127","type":"raid1","size":1,"fstype":"zfs_member","label":"tank"}
                ]}
              ]}]}"#,
        )
        .expect("valid json");
        Facts {
            btrfs_subvolumes: Default::default(),
            volume_groups: None,
            zfs: None,
            existing_files: Vec::new(),
            devices,
            mounts: vec![
                Mount {
                    source: "/dev/mapper/pool--a-root".into(),
                    target: "/mnt".into(),
                    fstype: "btrfs".into(),
                    majmin: "0:40".into(),
                    root: "/@".into(),
                    options: Vec::new(),
                },
                Mount {
                    source: "/dev/dm-1".into(),
                    target: "/mnt/nix".into(),
                    fstype: "btrfs".into(),
                    majmin: "0:40".into(),
                    root: "/@nix".into(),
                    options: Vec::new(),
                },
            ],
            swaps: vec![
                Swap {
                    path: "/dev/vdb2".into(),
                    kind: "partition".into(),
                },
                Swap {
                    path: "/mnt/.swap/swapfile".into(),
                    kind: "file".into(),
                },
            ],
        }
    }

    #[test]
    fn splits_lvm_names() {
        assert_eq!(
            split_lvm_name("pool--a-root--fs"),
            Some(("pool-a".into(), "root-fs".into()))
        );
        assert_eq!(split_lvm_name("vg-lv"), Some(("vg".into(), "lv".into())));
        assert_eq!(split_lvm_name("nodash"), None);
    }

    #[test]
    fn tears_down_leaves_first() {
        let f = facts();
        let ops = deactivation_ops(&f.devices[0], &f);
        let lines: Vec<String> = ops.iter().map(|o| o.argv.join(" ")).collect();
        assert_eq!(
            lines,
            vec![
                "swapoff /dev/vdb2",
                "swapoff /mnt/.swap/swapfile",
                "umount -R /mnt",
                "wipefs --all -f /dev/vdb1",
                "wipefs --all -f /dev/vdb2",
                "vgchange -a n pool-a",
                "vgremove -f -f -y pool-a",
                "cryptsetup close crypted",
                "wipefs --all -f /dev/vdb3",
                "zpool destroy -f tank",
                "zpool labelclear -f /dev/md127",
                "mdadm --stop /dev/md127",
                "wipefs --all -f /dev/vdb4",
            ]
        );
        assert!(ops.iter().all(|o| o.destructive));
    }

    #[test]
    fn blank_disk_needs_nothing() {
        let devices = parse_lsblk(
            r#"{"blockdevices":[{"name":"loop9","path":"/dev/loop9","type":"loop","size":1}]}"#,
        )
        .expect("valid json");
        let f = Facts {
            devices,
            ..Facts::default()
        };
        assert!(deactivation_ops(&f.devices[0], &f).is_empty());
    }
}
