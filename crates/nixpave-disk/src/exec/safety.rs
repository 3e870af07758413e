//! Which disks a plan touches, what is on them, and whether touching them is safe (pure).

use serde::Serialize;

use crate::plan::{Guard, Plan};

use super::error::Refusal;
use super::facts::{normalize_path, path_is_under, BlockDevice, Facts};
use super::resolve::{resolve, Resolution};

/// Mounts below this directory are nixpave's own temporary mounts (btrfs subvolume creation).
pub const NIXPAVE_RUN_DIR: &str = "/run/nixpave";

/// A partition or stacked device, for the wipe summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartSummary {
    /// Device node.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// lsblk type.
    pub kind: String,
    /// Signature type, if any.
    pub fstype: Option<String>,
    /// Filesystem label, if any.
    pub label: Option<String>,
    /// GPT partition name, if any.
    pub partlabel: Option<String>,
    /// Where it is mounted.
    pub mountpoints: Vec<String>,
}

/// A disk the plan touches, as it is now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskSummary {
    /// Device node.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Model, if the kernel knows it.
    pub model: Option<String>,
    /// Serial, if the kernel knows it.
    pub serial: Option<String>,
    /// Partition table type, if any.
    pub pttype: Option<String>,
    /// Signature on the whole disk (a filesystem without partition table), if any.
    pub fstype: Option<String>,
    /// Everything stacked on the disk, depth first.
    pub contents: Vec<PartSummary>,
}

impl DiskSummary {
    /// Summarises `disk` from facts.
    pub fn of(disk: &BlockDevice) -> Self {
        DiskSummary {
            path: disk.path.clone(),
            size: disk.size,
            model: disk.model.clone(),
            serial: disk.serial.clone(),
            pttype: disk.pttype.clone(),
            fstype: disk.fstype.clone(),
            contents: disk
                .walk()
                .into_iter()
                .skip(1)
                .map(|d| PartSummary {
                    path: d.path.clone(),
                    size: d.size,
                    kind: d.kind.clone(),
                    fstype: d.fstype.clone(),
                    label: d.label.clone(),
                    partlabel: d.partlabel.clone(),
                    mountpoints: d.mountpoints.clone(),
                })
                .collect(),
        }
    }

    /// Human rendering: a header line and one indented line per partition/device.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}  {}  model: {}  serial: {}  table: {}",
            self.path,
            human_size(self.size),
            self.model.as_deref().unwrap_or("-"),
            self.serial.as_deref().unwrap_or("-"),
            self.pttype.as_deref().unwrap_or("none"),
        );
        if let Some(fs) = &self.fstype {
            out.push_str(&format!("  signature: {fs}"));
        }
        if self.contents.is_empty() && self.pttype.is_none() && self.fstype.is_none() {
            out.push_str("  (blank)");
        }
        for part in &self.contents {
            out.push_str(&format!(
                "\n  {}  {}  {}",
                part.path,
                human_size(part.size),
                part.fstype.as_deref().unwrap_or("no filesystem")
            ));
            if let Some(l) = &part.partlabel {
                out.push_str(&format!("  partlabel={l}"));
            }
            if let Some(l) = &part.label {
                out.push_str(&format!("  label={l}"));
            }
            if !part.mountpoints.is_empty() {
                out.push_str(&format!("  mounted at {}", part.mountpoints.join(", ")));
            }
        }
        out
    }
}

/// `1073741824` → `1.0 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Every path an operation mentions: its device and the `/dev/…` words of its argv.
fn mentioned_paths(plan: &Plan, destructive_only: bool) -> Vec<String> {
    let mut paths = Vec::new();
    for op in plan
        .operations
        .iter()
        .filter(|o| o.destructive || !destructive_only)
    {
        paths.push(op.device.clone());
        paths.extend(op.argv.iter().filter(|w| w.starts_with("/dev/")).cloned());
    }
    paths.sort();
    paths.dedup();
    paths
}

/// Kernel names of the top-level disks the plan names directly (e.g. `/dev/vdb` or a by-id
/// link), plus `extra` disks: the scope for resolving partition labels.
pub fn plan_scope(plan: &Plan, facts: &Facts, extra: &[String]) -> Vec<String> {
    let mut scope = Vec::new();
    for path in mentioned_paths(plan, false).iter().chain(extra) {
        if let Resolution::Node(node) = resolve(path, facts, &[]) {
            if let Some(device) = facts.find(&node) {
                if facts.devices.iter().any(|top| top.kname == device.kname) {
                    scope.push(device.kname.clone());
                }
            }
        }
    }
    scope.sort();
    scope.dedup();
    scope
}

/// The top-level disks that the plan's destructive operations act on (as they exist now),
/// plus `extra` disks.
pub fn touched_disks<'f>(
    plan: &Plan,
    facts: &'f Facts,
    scope: &[String],
    extra: &[String],
) -> Vec<&'f BlockDevice> {
    let mut disks: Vec<&BlockDevice> = Vec::new();
    for path in mentioned_paths(plan, true).iter().chain(extra) {
        if let Resolution::Node(node) = resolve(path, facts, scope) {
            for disk in facts.disks_under(&node) {
                if !disks.iter().any(|d| d.kname == disk.kname) {
                    disks.push(disk);
                }
            }
        }
    }
    disks
}

/// Devices the plan itself turns swap on or off for (its own swap may be active on a re-run).
fn plan_swaps(plan: &Plan, facts: &Facts, scope: &[String], extra: &[String]) -> Vec<String> {
    let mut swaps = extra.to_vec();
    for op in &plan.operations {
        let program = op.argv.first().map(|p| p.rsplit('/').next().unwrap_or(p));
        if matches!(program, Some("swapon" | "swapoff" | "mkswap")) {
            swaps.push(op.device.clone());
            swaps.extend(op.argv.iter().filter(|w| w.starts_with('/')).cloned());
        }
        if let Some(Guard::SwapActive { device } | Guard::SwapInactive { device }) = &op.guard {
            swaps.push(device.clone());
        }
    }
    swaps
        .iter()
        .filter_map(|p| match resolve(p, facts, scope) {
            Resolution::Node(n) => facts.find(&n).map(|d| d.kname.clone()),
            _ => None,
        })
        .collect()
}

/// Why touching `disks` would be unsafe: a filesystem mounted outside `root_mountpoint` (or
/// the running root `/`), or swap that neither the plan nor `own_swaps` manages.
pub fn refusals(
    disks: &[&BlockDevice],
    facts: &Facts,
    plan: &Plan,
    scope: &[String],
    root_mountpoint: &str,
    own_swaps: &[String],
) -> Vec<Refusal> {
    let root = normalize_path(root_mountpoint);
    let ours = plan_swaps(plan, facts, scope, own_swaps);
    let mut out = Vec::new();
    for disk in disks {
        for device in disk.walk() {
            for mount in facts.mounts_of(device) {
                let target = normalize_path(&mount.target);
                let reason = if target == "/" {
                    Some(format!(
                        "{} holds the running system's root filesystem (mounted at /)",
                        device.path
                    ))
                } else if root == "/" || !path_is_under(&target, &root) {
                    (!path_is_under(&target, NIXPAVE_RUN_DIR)).then(|| {
                        format!(
                            "{} is mounted at {target}, outside the root mountpoint {root}",
                            device.path
                        )
                    })
                } else {
                    None
                };
                if let Some(reason) = reason {
                    out.push(Refusal {
                        disk: disk.path.clone(),
                        reason,
                    });
                }
            }
            if !facts.swaps_of(device).is_empty() && !ours.contains(&device.kname) {
                out.push(Refusal {
                    disk: disk.path.clone(),
                    reason: format!(
                        "{} is active swap of the running system (swapoff {} first if it is not needed)",
                        device.path, device.path
                    ),
                });
            }
        }
    }
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::facts::{parse_lsblk, Mount, Swap};
    use crate::plan::{Mode, Operation};

    fn op(argv: &[&str], device: &str, destructive: bool) -> Operation {
        Operation {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            device: device.into(),
            destructive,
            description: argv.join(" "),
            guard: None,
            stdin: None,
        }
    }

    fn facts(mounted_at: &str) -> Facts {
        let devices = parse_lsblk(
            r#"{"blockdevices":[
              {"name":"vda","path":"/dev/vda","type":"disk","size":100,"children":[
                {"name":"vda1","path":"/dev/vda1","type":"part","size":50}]},
              {"name":"vdb","path":"/dev/vdb","type":"disk","size":100,"model":"M","children":[
                {"name":"vdb1","path":"/dev/vdb1","type":"part","size":50,"partlabel":"disk-main-root","fstype":"ext4"},
                {"name":"vdb2","path":"/dev/vdb2","type":"part","size":50,"partlabel":"disk-main-swap","fstype":"swap"}]}]}"#,
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
                    source: "/dev/vda1".into(),
                    target: "/".into(),
                    fstype: "ext4".into(),
                    majmin: "254:1".into(),
                    root: "/".into(),
                    options: Vec::new(),
                },
                Mount {
                    source: "/dev/vdb1".into(),
                    target: mounted_at.into(),
                    fstype: "ext4".into(),
                    majmin: "254:17".into(),
                    root: "/".into(),
                    options: Vec::new(),
                },
            ],
            swaps: vec![Swap {
                path: "/dev/vdb2".into(),
                kind: "partition".into(),
            }],
        }
    }

    fn plan(ops: Vec<Operation>) -> Plan {
        Plan {
            mode: Mode::Format,
            operations: ops,
        }
    }

    #[test]
    fn finds_disks_through_partlabels() {
        let f = facts("/mnt");
        let p = plan(vec![
            op(&["sgdisk", "--clear", "/dev/vdb"], "/dev/vdb", true),
            op(
                &["mkfs.ext4", "/dev/disk/by-partlabel/disk-main-root"],
                "/dev/disk/by-partlabel/disk-main-root",
                true,
            ),
        ]);
        let scope = plan_scope(&p, &f, &[]);
        assert_eq!(scope, vec!["vdb".to_string()]);
        let disks = touched_disks(&p, &f, &scope, &[]);
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].path, "/dev/vdb");
    }

    #[test]
    fn refuses_mounts_outside_root_and_foreign_swap() {
        let f = facts("/home");
        let p = plan(vec![op(
            &["sgdisk", "--clear", "/dev/vdb"],
            "/dev/vdb",
            true,
        )]);
        let scope = plan_scope(&p, &f, &[]);
        let disks = touched_disks(&p, &f, &scope, &[]);
        let reasons = refusals(&disks, &f, &p, &scope, "/mnt", &[]);
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0]
            .reason
            .contains("mounted at /home, outside the root mountpoint /mnt"));
        assert!(reasons[1].reason.contains("active swap"));
    }

    #[test]
    fn allows_own_mounts_and_swap() {
        let f = facts("/mnt/data");
        let p = plan(vec![
            op(&["sgdisk", "--clear", "/dev/vdb"], "/dev/vdb", true),
            op(
                &["swapon", "/dev/disk/by-partlabel/disk-main-swap"],
                "/dev/disk/by-partlabel/disk-main-swap",
                false,
            ),
        ]);
        let scope = plan_scope(&p, &f, &[]);
        let disks = touched_disks(&p, &f, &scope, &[]);
        assert!(refusals(&disks, &f, &p, &scope, "/mnt/", &[]).is_empty());
        // With "/" as root mountpoint every mount is the running system's.
        assert_eq!(refusals(&disks, &f, &p, &scope, "/", &[]).len(), 1);
    }

    #[test]
    fn refuses_the_running_root() {
        let f = facts("/mnt");
        let p = plan(vec![op(
            &["sgdisk", "--clear", "/dev/vda"],
            "/dev/vda",
            true,
        )]);
        let scope = plan_scope(&p, &f, &[]);
        let disks = touched_disks(&p, &f, &scope, &[]);
        let reasons = refusals(&disks, &f, &p, &scope, "/", &[]);
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].reason.contains("running system's root"));
    }

    #[test]
    fn renders_summary() {
        let f = facts("/mnt");
        let text = DiskSummary::of(&f.devices[1]).render();
        assert!(text.starts_with("/dev/vdb  100 B  model: M"), "{text}");
        assert!(
            text.contains("/dev/vdb1  50 B  ext4  partlabel=disk-main-root"),
            "{text}"
        );
        assert_eq!(human_size(1536 * 1024 * 1024), "1.5 GiB");
    }
}
