//! Finding the real device node behind a udev-style path, from the kernel's view.
//!
//! Plans name partitions like disko does (`/dev/disk/by-partlabel/disk-main-root`). Those links
//! only exist where a udev daemon made them, and may lag behind the partition table (disko
//! #739, #705). The executor resolves them from [`Facts`] (sysfs through lsblk, plus `blkid -p`)
//! instead, preferring the disks the plan is about when several devices match.

use std::collections::BTreeMap;

use super::facts::{BlockDevice, Facts};

/// What a path resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// A device node that exists now (possibly the path itself).
    Node(String),
    /// Not a udev-style path this module knows how to resolve: use it as it is.
    Verbatim,
    /// A udev-style path that matches no device right now.
    Missing {
        /// Why, for the error message.
        reason: String,
    },
    /// Several devices match and none of them is on the plan's disks.
    Ambiguous {
        /// The matching device nodes.
        candidates: Vec<String>,
    },
}

/// True for paths that name a device by a udev symlink (`/dev/disk/by-*/…`).
pub fn is_udev_path(path: &str) -> bool {
    path.starts_with("/dev/disk/by-")
}

/// Undoes udev's symlink escaping: `\xHH` → the byte (`name\x20x` → `name x`).
pub fn udev_unescape(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') {
            if let Some(value) = name
                .get(i + 2..i + 4)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `/dev/disk/by-id/` names udev would give a top-level disk (best effort: the common
/// `virtio-`, `ata-`, `nvme-`, `scsi-` and `wwn-` forms).
pub fn by_id_names(disk: &BlockDevice) -> Vec<String> {
    let clean = |s: &str| {
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join("_")
            .replace('/', "_")
    };
    let mut names = Vec::new();
    let model = disk.model.as_deref().map(clean);
    let serial = disk.serial.as_deref().map(clean);
    if let Some(serial) = &serial {
        names.push(format!("virtio-{serial}"));
        if let Some(model) = &model {
            for bus in ["ata", "nvme", "scsi-0ATA", "scsi-SATA", "usb"] {
                names.push(format!("{bus}-{model}_{serial}"));
            }
            names.push(format!("scsi-0QEMU_{model}_{serial}"));
        }
    }
    if let Some(wwn) = &disk.wwn {
        names.push(format!("wwn-{wwn}"));
    }
    names
}

/// Resolves `path` against `facts`. `scope` lists the kernel names of the plan's top-level disks:
/// when it is not empty, only devices on those disks match (another disk may carry the same
/// label, e.g. a disk laid out earlier with the same layout); when it is empty, the match must be
/// unique.
pub fn resolve(path: &str, facts: &Facts, scope: &[String]) -> Resolution {
    if let Some(device) = facts.find(path) {
        return Resolution::Node(device.path.clone());
    }
    let Some(rest) = path.strip_prefix("/dev/disk/") else {
        return Resolution::Verbatim;
    };
    let Some((kind, name)) = rest.split_once('/') else {
        return Resolution::Verbatim;
    };
    let name = udev_unescape(name);
    let matches: Vec<&BlockDevice> = match kind {
        "by-partlabel" => facts
            .all()
            .into_iter()
            .filter(|d| d.kind == "part" && d.partlabel.as_deref() == Some(name.as_str()))
            .collect(),
        "by-partuuid" => facts
            .all()
            .into_iter()
            .filter(|d| {
                d.partuuid
                    .as_deref()
                    .is_some_and(|u| u.eq_ignore_ascii_case(&name))
            })
            .collect(),
        "by-uuid" => facts
            .all()
            .into_iter()
            .filter(|d| {
                d.uuid
                    .as_deref()
                    .is_some_and(|u| u.eq_ignore_ascii_case(&name))
            })
            .collect(),
        "by-label" => facts
            .all()
            .into_iter()
            .filter(|d| d.label.as_deref() == Some(name.as_str()))
            .collect(),
        "by-id" => by_id_matches(facts, &name),
        _ => return Resolution::Verbatim,
    };
    let mut nodes: Vec<&BlockDevice> = Vec::new();
    for m in matches {
        if !nodes.iter().any(|n| n.kname == m.kname) {
            nodes.push(m);
        }
    }
    let in_scope: Vec<&BlockDevice> = nodes
        .iter()
        .copied()
        .filter(|d| {
            facts
                .disks_under(&d.path)
                .iter()
                .any(|top| scope.contains(&top.kname))
        })
        .collect();
    if !scope.is_empty() && in_scope.is_empty() && !nodes.is_empty() {
        // Never reach for a same-named device on a disk the plan is not about (a disk laid
        // out earlier with the same layout carries the same labels).
        return Resolution::Missing {
            reason: format!(
                "not on the plan's disks (only on {})",
                nodes
                    .iter()
                    .map(|d| d.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    let pick = if in_scope.is_empty() { nodes } else { in_scope };
    match pick.as_slice() {
        [one] => Resolution::Node(one.path.clone()),
        [] => Resolution::Missing {
            reason: format!(
                "no device has {} `{name}` (looked at the kernel's partitions and blkid's probe)",
                kind.trim_start_matches("by-")
            ),
        },
        many => Resolution::Ambiguous {
            candidates: many.iter().map(|d| d.path.clone()).collect(),
        },
    }
}

fn by_id_matches<'a>(facts: &'a Facts, name: &str) -> Vec<&'a BlockDevice> {
    let mut found = Vec::new();
    for disk in &facts.devices {
        for id in by_id_names(disk) {
            if id == name {
                found.push(disk);
            }
            for part in disk.walk().into_iter().filter(|d| d.kind == "part") {
                if let Some(n) = part.partn {
                    if format!("{id}-part{n}") == name {
                        found.push(part);
                    }
                }
            }
        }
    }
    found
}

/// The sizes of the layout's disks that exist on the machine, by the device path the layout gives
/// (for [`crate::PlanOptions::disk_sizes`]: the planner refuses partitions that cannot fit). A path
/// that does not resolve to one device is left out, so that disk is not checked.
pub fn disk_sizes(layout: &crate::Layout, facts: &Facts) -> BTreeMap<String, u64> {
    let mut sizes = BTreeMap::new();
    for disk in layout.disks() {
        if let Resolution::Node(node) = resolve(&disk.device, facts, &[]) {
            if let Some(device) = facts.find(&node) {
                sizes.insert(disk.device, device.size);
            }
        }
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(kname: &str, partn: u32, label: &str) -> BlockDevice {
        BlockDevice {
            name: kname.into(),
            kname: kname.into(),
            path: format!("/dev/{kname}"),
            kind: "part".into(),
            partn: Some(partn),
            partlabel: Some(label.into()),
            partuuid: Some(format!("0000000{partn}-aaaa-bbbb-cccc-{kname}")),
            ..BlockDevice::default()
        }
    }

    fn disk(kname: &str, children: Vec<BlockDevice>) -> BlockDevice {
        BlockDevice {
            name: kname.into(),
            kname: kname.into(),
            path: format!("/dev/{kname}"),
            kind: "disk".into(),
            model: Some("QEMU HARDDISK".into()),
            serial: Some("S1".into()),
            children,
            ..BlockDevice::default()
        }
    }

    fn facts() -> Facts {
        Facts {
            devices: vec![
                disk(
                    "vda",
                    vec![
                        part("vda1", 1, "disk-main-ESP"),
                        part("vda2", 2, "name with spaces"),
                    ],
                ),
                disk("loop7", vec![part("loop7p1", 1, "disk-main-ESP")]),
            ],
            ..Facts::default()
        }
    }

    #[test]
    fn unescapes_udev_names() {
        assert_eq!(udev_unescape(r"name\x20with\x20spaces"), "name with spaces");
        assert_eq!(udev_unescape(r"plain-name"), "plain-name");
        assert_eq!(udev_unescape(r"bad\xZZ"), r"bad\xZZ");
    }

    #[test]
    fn partlabel_prefers_the_plans_disks() {
        let f = facts();
        let path = "/dev/disk/by-partlabel/disk-main-ESP";
        assert_eq!(
            resolve(path, &f, &["loop7".into()]),
            Resolution::Node("/dev/loop7p1".into())
        );
        assert_eq!(
            resolve(path, &f, &["vda".into()]),
            Resolution::Node("/dev/vda1".into())
        );
        assert!(matches!(
            resolve(path, &f, &[]),
            Resolution::Ambiguous { candidates } if candidates.len() == 2
        ));
        assert!(matches!(
            resolve(path, &f, &["sdz".into()]),
            Resolution::Missing { reason } if reason.contains("/dev/vda1, /dev/loop7p1")
        ));
    }

    #[test]
    fn escaped_partlabel_and_other_kinds() {
        let f = facts();
        assert_eq!(
            resolve(r"/dev/disk/by-partlabel/name\x20with\x20spaces", &f, &[]),
            Resolution::Node("/dev/vda2".into())
        );
        assert_eq!(
            resolve(
                "/dev/disk/by-partuuid/00000002-AAAA-bbbb-cccc-vda2",
                &f,
                &[]
            ),
            Resolution::Node("/dev/vda2".into())
        );
        assert_eq!(
            resolve("/dev/disk/by-id/virtio-S1-part2", &f, &["vda".into()]),
            Resolution::Node("/dev/vda2".into())
        );
        assert_eq!(
            resolve("/dev/disk/by-id/ata-QEMU_HARDDISK_S1", &f, &["vda".into()]),
            Resolution::Node("/dev/vda".into())
        );
        assert!(matches!(
            resolve("/dev/disk/by-partlabel/nope", &f, &[]),
            Resolution::Missing { .. }
        ));
        assert_eq!(
            resolve("/dev/vda1", &f, &[]),
            Resolution::Node("/dev/vda1".into())
        );
        assert_eq!(resolve("/mnt/boot", &f, &[]), Resolution::Verbatim);
        assert_eq!(resolve("/dev/md/raid1", &f, &[]), Resolution::Verbatim);
    }

    #[test]
    fn disk_sizes_come_from_the_facts_and_leave_out_unknown_disks() {
        let mut f = facts();
        f.devices[0].size = 8 << 30;
        let layout = crate::Layout::from_json(&serde_json::json!({"disko": {"devices": {"disk": {
            "main": {"device": "/dev/vda", "content": {"type": "gpt", "partitions": {}}},
            "gone": {"device": "/dev/disk/by-id/nothing", "content": {"type": "gpt", "partitions": {}}},
        }}}}))
        .expect("valid layout");
        let sizes = disk_sizes(&layout, &f);
        assert_eq!(
            sizes.into_iter().collect::<Vec<_>>(),
            [("/dev/vda".to_string(), 8 << 30)]
        );
    }
}
