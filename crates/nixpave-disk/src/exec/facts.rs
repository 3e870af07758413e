//! What the machine's block devices, mounts and swaps look like right now.
//!
//! The tree comes from `lsblk` (the kernel's view through sysfs); signatures (filesystem type,
//! labels, partition names) come from `blkid -p`, which reads the devices themselves, because
//! `lsblk` only knows them from udev's database — absent or stale on installers and on hosts
//! without a udev daemon. Mounts and swaps are read from `/proc`. Parsers are pure functions.

use std::collections::BTreeMap;
use std::path::Path;

/// The one block-device type and lsblk parser live in nixpave-remote (host facts use them too).
pub use nixpave_remote::blockdev::{parse_lsblk, BlockDevice};
use nixpave_remote::blockdev::{LSBLK_COLUMNS, LSBLK_COLUMNS_OLD};
use nixpave_remote::Transport;
use serde::{Deserialize, Serialize};

use super::error::ApplyError;
use super::{probe_failed, run_probe};

/// Probes every device given as an argument, one blank line after each.
pub(crate) const BLKID_EACH: &str =
    r#"for d in "$@"; do blkid -p -o export -- "$d" 2>/dev/null; echo; done"#;

/// One mounted filesystem (a line of `/proc/self/mountinfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Mount source (`/dev/sda1`, `tmpfs`, `none`).
    pub source: String,
    /// Mount target (absolute path).
    pub target: String,
    /// Filesystem type.
    pub fstype: String,
    /// `major:minor` of the mounted device (anonymous for btrfs).
    pub majmin: String,
    /// Path inside the filesystem that is mounted (`/@nix` for a btrfs subvolume).
    pub root: String,
    /// Mount options: the mount's own, then the filesystem's (`rw`, `noatime`,
    /// `compress=zstd:3`, `subvol=/@nix`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// One active swap area (a line of `/proc/swaps`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swap {
    /// Device or file path.
    pub path: String,
    /// `partition` or `file`.
    pub kind: String,
}

/// Everything the executor knows about a machine's storage at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// Top-level block devices with their children.
    pub devices: Vec<BlockDevice>,
    /// Mounted filesystems, in mount order.
    pub mounts: Vec<Mount>,
    /// Active swap areas.
    pub swaps: Vec<Swap>,
    /// btrfs subvolumes (paths from the top level, without leading `/`) by device node, for
    /// the mounted btrfs filesystems [`probe_btrfs_subvolumes`] was asked about.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub btrfs_subvolumes: BTreeMap<String, Vec<String>>,
    /// Active LVM volume groups by name, when [`probe_lvm`] ran (and LVM is installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_groups: Option<BTreeMap<String, VolumeGroup>>,
    /// Files found by [`probe_paths`] (e.g. btrfs swap files that are not turned on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub existing_files: Vec<String>,
    /// Imported ZFS pools and their datasets, when [`probe_zfs`] ran (and ZFS is installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs: Option<ZfsFacts>,
}

/// Imported ZFS pools (`zpool list`) and their datasets and volumes (`zfs list`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZfsFacts {
    /// Names of the imported pools.
    pub pools: Vec<String>,
    /// Datasets and volumes by full name (`pool/a/b`), the pools' root datasets included.
    pub datasets: BTreeMap<String, ZfsDataset>,
}

/// One ZFS dataset or volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZfsDataset {
    /// `filesystem` or `volume`.
    pub kind: String,
    /// A volume's size in bytes.
    pub volsize: Option<u64>,
    /// The `mountpoint` property as listed (under the pool's altroot), `None` for a volume.
    pub mountpoint: Option<String>,
    /// Further properties asked for (those the layout sets), parsable values (`zfs list -p`).
    pub properties: BTreeMap<String, String>,
}

/// An LVM volume group (`vgs`) and its logical volumes (`lvs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeGroup {
    /// Free space in bytes.
    pub free: u64,
    /// Extent size in bytes.
    pub extent: u64,
    /// Logical volumes by name.
    pub lvs: BTreeMap<String, LogicalVolume>,
}

/// One logical volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalVolume {
    /// Size in bytes.
    pub size: u64,
    /// Segment type (`linear`, `striped`, `raid1`, `thin`, `thin-pool`, …).
    pub segtype: String,
}

impl Facts {
    /// Every block device (top-level and stacked), depth first. A device stacked on several
    /// parents (md, LVM over two PVs) appears once per parent.
    pub fn all(&self) -> Vec<&BlockDevice> {
        self.devices.iter().flat_map(|d| d.walk()).collect()
    }

    /// The device whose node is `path` (`/dev/sda1`, `/dev/mapper/x` or `/dev/dm-0`).
    pub fn find(&self, path: &str) -> Option<&BlockDevice> {
        self.all()
            .into_iter()
            .find(|d| d.path == path || format!("/dev/{}", d.kname) == path)
    }

    /// The top-level device that `path` is, or is stacked on (the first one for md/LVM that
    /// span several disks; see [`Facts::disks_under`] for all of them).
    pub fn top_level_of(&self, path: &str) -> Option<&BlockDevice> {
        self.disks_under(path).into_iter().next()
    }

    /// Every top-level device that `path` is, or is stacked on.
    pub fn disks_under(&self, path: &str) -> Vec<&BlockDevice> {
        let Some(target) = self.find(path) else {
            return Vec::new();
        };
        self.devices
            .iter()
            .filter(|top| top.walk().iter().any(|d| d.kname == target.kname))
            .collect()
    }

    /// Mounts whose source is `device` (compared through the kernel name, so `/dev/dm-0` and
    /// `/dev/mapper/x` are the same device).
    pub fn mounts_of(&self, device: &BlockDevice) -> Vec<&Mount> {
        self.mounts
            .iter()
            .filter(|m| self.same_device(&m.source, device))
            .collect()
    }

    /// True when `source` (a path) names `device`.
    pub fn same_device(&self, source: &str, device: &BlockDevice) -> bool {
        source == device.path
            || source == format!("/dev/{}", device.kname)
            || self.find(source).is_some_and(|d| d.kname == device.kname)
    }

    /// Active swap areas on `device` itself.
    pub fn swaps_of(&self, device: &BlockDevice) -> Vec<&Swap> {
        self.swaps
            .iter()
            .filter(|s| self.same_device(&s.path, device))
            .collect()
    }

    /// The mount that holds `path` (the longest mount target that is a prefix of it).
    pub fn mount_containing(&self, path: &str) -> Option<&Mount> {
        self.mounts
            .iter()
            .filter(|m| path_is_under(path, &m.target))
            .max_by_key(|m| m.target.len())
    }
}

/// Probes the machine: `lsblk`, `blkid -p` on every device, `/proc/self/mountinfo`, `/proc/swaps`.
/// Read-only.
pub fn probe(transport: &dyn Transport) -> Result<Facts, ApplyError> {
    probe_scoped(transport, &[])
}

/// Like [`probe`], but runs `blkid` only on the devices of the top-level disks named in `scope`
/// (kernel names; all devices when empty): opening other disks' devices is slow on big hosts
/// and briefly keeps their partitions busy for whoever is re-partitioning them.
pub fn probe_scoped(transport: &dyn Transport, scope: &[String]) -> Result<Facts, ApplyError> {
    let mut argv = ["lsblk", "--json", "--bytes", "--output", LSBLK_COLUMNS];
    let mut lsblk = run_probe(transport, &argv)?;
    if !lsblk.success() && lsblk.stderr_tail(5).contains("unknown column") {
        // util-linux before 2.37 (Debian 11, Ubuntu 20.04) has MOUNTPOINT only.
        argv[4] = LSBLK_COLUMNS_OLD;
        lsblk = run_probe(transport, &argv)?;
    }
    if !lsblk.success() {
        return Err(probe_failed(transport, &argv, &lsblk));
    }
    let mut devices = parse_lsblk(&lsblk.stdout_str()).map_err(|e| ApplyError::Probe {
        host: transport.host().to_string(),
        command: "lsblk --json".into(),
        status: lsblk.status,
        stderr: format!("unexpected output: {e}"),
    })?;
    let mut paths: Vec<String> = devices
        .iter()
        .filter(|d| scope.is_empty() || scope.contains(&d.kname))
        .flat_map(|d| d.walk())
        .filter(|d| d.kind != "rom")
        .map(|d| d.path.clone())
        .collect();
    paths.sort();
    paths.dedup();
    if !paths.is_empty() {
        // One blkid per device: blkid stops at the first device it cannot open (EPERM, EBUSY),
        // and exits 2 for a device without signature — neither is an error here.
        let mut argv = vec![
            "sh".to_string(),
            "-c".into(),
            BLKID_EACH.into(),
            "sh".into(),
        ];
        argv.extend(paths);
        let out = transport.run(&argv, None)?;
        let infos = parse_blkid_export(&out.stdout_str());
        for device in &mut devices {
            if scope.is_empty() || scope.contains(&device.kname) {
                merge_blkid(device, &infos);
            }
        }
    }
    let mountinfo = transport.read_file(Path::new("/proc/self/mountinfo"))?;
    let swaps = transport.read_file(Path::new("/proc/swaps"))?;
    let mounts = parse_mountinfo(&String::from_utf8_lossy(&mountinfo));
    for device in &mut devices {
        attach_mountpoints(device, &mounts);
    }
    Ok(Facts {
        devices,
        mounts,
        swaps: parse_swaps(&String::from_utf8_lossy(&swaps)),
        btrfs_subvolumes: BTreeMap::new(),
        volume_groups: None,
        existing_files: Vec::new(),
        zfs: None,
    })
}

/// Fills [`Facts::volume_groups`] from `vgs` and `lvs` (JSON reports, sizes in bytes).
/// Read-only. Without LVM tools on the machine it stays `None` (unknown, not empty).
pub fn probe_lvm(transport: &dyn Transport, facts: &mut Facts) -> Result<(), ApplyError> {
    // A JSON report with sizes in plain bytes.
    let report = |command, columns| {
        [
            command,
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            columns,
        ]
    };
    let vgs = report("vgs", "vg_name,vg_free,vg_extent_size");
    let lvs = report("lvs", "vg_name,lv_name,lv_size,segtype");
    let vg_out = match transport.run(&vgs.map(String::from), None) {
        Ok(out) if out.success() => out,
        // No LVM here (missing program, or no device-mapper): unknown.
        _ => return Ok(()),
    };
    let lv_out = run_probe(transport, &lvs)?;
    if !lv_out.success() {
        return Err(probe_failed(transport, &lvs, &lv_out));
    }
    facts.volume_groups = Some(parse_lvm_reports(
        &vg_out.stdout_str(),
        &lv_out.stdout_str(),
    ));
    Ok(())
}

/// Fills [`Facts::zfs`] from `zpool list` and `zfs list` (filesystems and volumes, with the
/// properties in `properties` as extra columns). Read-only. Without ZFS on the machine (no
/// program, no module) it stays `None` (unknown, not empty).
pub fn probe_zfs(
    transport: &dyn Transport,
    facts: &mut Facts,
    properties: &[String],
) -> Result<(), ApplyError> {
    let pools = match transport.run(&zpool_list_argv(), None) {
        Ok(out) if out.success() => out,
        _ => return Ok(()),
    };
    let argv = zfs_list_argv(properties);
    let out = transport.run(&argv, None)?;
    if !out.success() {
        return Err(ApplyError::Probe {
            host: transport.host().to_string(),
            command: argv.join(" "),
            status: out.status,
            stderr: out.stderr_tail(5),
        });
    }
    facts.zfs = Some(ZfsFacts {
        pools: pools
            .stdout_str()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        datasets: parse_zfs_list(&out.stdout_str(), properties),
    });
    Ok(())
}

fn zpool_list_argv() -> Vec<String> {
    ["zpool", "list", "-H", "-o", "name"]
        .map(String::from)
        .to_vec()
}

/// `zfs list -H -p` of filesystems and volumes: name, type, volsize, mountpoint, then `properties`.
pub fn zfs_list_argv(properties: &[String]) -> Vec<String> {
    let mut columns = vec!["name", "type", "volsize", "mountpoint"];
    columns.extend(properties.iter().map(String::as_str));
    ["zfs", "list", "-H", "-p", "-t", "filesystem,volume", "-o"]
        .map(String::from)
        .into_iter()
        .chain([columns.join(",")])
        .collect()
}

/// Parses `zfs list -H -p` output with the columns of [`zfs_list_argv`] (tab-separated, `-`
/// for none). Lines with too few columns are skipped.
pub fn parse_zfs_list(text: &str, properties: &[String]) -> BTreeMap<String, ZfsDataset> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 4 + properties.len() || cols[0].is_empty() {
            continue;
        }
        let some = |v: &str| (v != "-" && !v.is_empty()).then(|| v.to_string());
        out.insert(
            cols[0].to_string(),
            ZfsDataset {
                kind: cols[1].to_string(),
                volsize: cols[2].parse().ok(),
                mountpoint: if cols[1] == "volume" {
                    None
                } else {
                    some(cols[3])
                },
                properties: properties
                    .iter()
                    .zip(&cols[4..])
                    .filter_map(|(k, v)| some(v).map(|v| (k.clone(), v)))
                    .collect(),
            },
        );
    }
    out
}

/// Adds to [`Facts::existing_files`] those of `paths` that exist (`test -e`). Read-only.
pub fn probe_paths(
    transport: &dyn Transport,
    facts: &mut Facts,
    paths: &[String],
) -> Result<(), ApplyError> {
    for path in paths {
        if run_probe(transport, &["test", "-e", path])?.success()
            && !facts.existing_files.contains(path)
        {
            facts.existing_files.push(path.clone());
        }
    }
    Ok(())
}

/// Parses the JSON reports of `vgs` and `lvs` (see [`probe_lvm`]).
pub fn parse_lvm_reports(vgs: &str, lvs: &str) -> BTreeMap<String, VolumeGroup> {
    let rows = |text: &str, key: &str| -> Vec<BTreeMap<String, String>> {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v["report"][0][key].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|row| serde_json::from_value(row).ok())
            .collect()
    };
    let num = |row: &BTreeMap<String, String>, k: &str| {
        row.get(k)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut out = BTreeMap::new();
    for row in rows(vgs, "vg") {
        if let Some(name) = row.get("vg_name") {
            out.insert(
                name.clone(),
                VolumeGroup {
                    free: num(&row, "vg_free"),
                    extent: num(&row, "vg_extent_size"),
                    lvs: BTreeMap::new(),
                },
            );
        }
    }
    for row in rows(lvs, "lv") {
        let (Some(vg), Some(lv)) = (row.get("vg_name"), row.get("lv_name")) else {
            continue;
        };
        if let Some(group) = out.get_mut(vg) {
            group.lvs.insert(
                lv.clone(),
                LogicalVolume {
                    size: num(&row, "lv_size"),
                    segtype: row.get("segtype").cloned().unwrap_or_default(),
                },
            );
        }
    }
    out
}

/// Fills [`Facts::btrfs_subvolumes`] for the btrfs filesystems among `devices` (device nodes)
/// that are mounted somewhere: `btrfs subvolume list -a` on one of their mounts. Read-only.
/// An unmounted btrfs is left out (its subvolumes are then unknown, not absent).
pub fn probe_btrfs_subvolumes(
    transport: &dyn Transport,
    facts: &mut Facts,
    devices: &[String],
) -> Result<(), ApplyError> {
    for path in devices {
        let Some(device) = facts.find(path) else {
            continue;
        };
        if device.fstype.as_deref() != Some("btrfs") {
            continue;
        }
        let Some(mount) = facts.mounts_of(device).first().map(|m| m.target.clone()) else {
            continue;
        };
        let node = device.path.clone();
        let argv = ["btrfs", "subvolume", "list", "-a", &mount];
        let out = run_probe(transport, &argv)?;
        if !out.success() {
            return Err(probe_failed(transport, &argv, &out));
        }
        facts
            .btrfs_subvolumes
            .insert(node, parse_subvolume_list(&out.stdout_str()));
    }
    Ok(())
}

/// Parses `btrfs subvolume list -a`: `ID 256 gen 9 top level 5 path <FS_TREE>/@root` → `@root`.
pub fn parse_subvolume_list(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(" path ").map(|(_, p)| p))
        .map(|p| {
            p.trim_start_matches("<FS_TREE>/")
                .trim_matches('/')
                .to_string()
        })
        .filter(|p| !p.is_empty())
        .collect();
    out.sort();
    out
}

/// Parses `blkid -p -o export DEV…`: one block of `KEY=value` lines per device, blank-line
/// separated, values backslash-escaped. Returns `DEVNAME` → properties.
pub fn parse_blkid_export(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    let mut current: BTreeMap<String, String> = BTreeMap::new();
    let mut flush = |current: &mut BTreeMap<String, String>| {
        if let Some(dev) = current.get("DEVNAME").cloned() {
            all.insert(dev, std::mem::take(current));
        }
        current.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut current);
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            current.insert(key.to_string(), unescape_backslashes(value));
        }
    }
    flush(&mut current);
    all
}

/// Undoes blkid's shell-style escaping (`name\ with\ space`).
fn unescape_backslashes(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Fills signature fields from blkid's low-level probe; blkid wins over lsblk (udev's cache).
fn merge_blkid(device: &mut BlockDevice, infos: &BTreeMap<String, BTreeMap<String, String>>) {
    let info = infos
        .get(&device.path)
        .or_else(|| infos.get(&format!("/dev/{}", device.kname)));
    match info {
        Some(info) => {
            let get = |k: &str| info.get(k).cloned().filter(|v| !v.is_empty());
            device.fstype = get("TYPE");
            device.label = get("LABEL");
            device.uuid = get("UUID");
            device.pttype = get("PTTYPE");
            if device.kind == "part" {
                device.partlabel = get("PART_ENTRY_NAME");
                device.partuuid = get("PART_ENTRY_UUID").or(device.partuuid.take());
                device.parttype = get("PART_ENTRY_TYPE").or(device.parttype.take());
                if let Some(n) = get("PART_ENTRY_NUMBER").and_then(|n| n.parse().ok()) {
                    device.partn = Some(n);
                }
            }
        }
        None => {
            // blkid found no signature at all: the device is blank, whatever udev remembers.
            device.fstype = None;
            device.label = None;
            device.uuid = None;
            device.pttype = None;
        }
    }
    for child in &mut device.children {
        merge_blkid(child, infos);
    }
}

/// Sets `mountpoints` from the mount table (lsblk reads the same table, but may have run
/// a moment earlier).
fn attach_mountpoints(device: &mut BlockDevice, mounts: &[Mount]) {
    let mut targets: Vec<String> = mounts
        .iter()
        .filter(|m| m.source == device.path || m.source == format!("/dev/{}", device.kname))
        .map(|m| m.target.clone())
        .collect();
    if !targets.is_empty() {
        for mp in &device.mountpoints {
            if !targets.contains(mp) {
                targets.push(mp.clone());
            }
        }
        device.mountpoints = targets;
    }
    for child in &mut device.children {
        attach_mountpoints(child, mounts);
    }
}

/// Undoes the octal escapes of `/proc` tables (`\040` is a space).
pub fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let Some(digits) = escape {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            if left.len() < 5 || right.len() < 2 {
                return None;
            }
            Some(Mount {
                majmin: left[2].to_string(),
                root: unescape_octal(left[3]),
                target: unescape_octal(left[4]),
                fstype: right[0].to_string(),
                source: unescape_octal(right[1]),
                options: left
                    .get(5)
                    .into_iter()
                    .chain(right.get(2))
                    .flat_map(|o| o.split(','))
                    .filter(|o| !o.is_empty())
                    .map(unescape_octal)
                    .collect(),
            })
        })
        .collect()
}

/// Parses `/proc/swaps`.
pub fn parse_swaps(text: &str) -> Vec<Swap> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let path = unescape_octal(fields.next()?);
            let kind = fields.next().unwrap_or("").to_string();
            Some(Swap { path, kind })
        })
        .collect()
}

/// Normalises a mount path: no trailing slash, no doubled slashes (`/mnt//boot/` → `/mnt/boot`).
pub fn normalize_path(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// True when `path` is `base` or lies below it (component-wise, after normalising both).
pub fn path_is_under(path: &str, base: &str) -> bool {
    let path = normalize_path(path);
    let base = normalize_path(base);
    base == "/" || path == base || path.starts_with(&format!("{base}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LSBLK: &str = r#"{
   "blockdevices": [
      {"name": "vda", "kname": "vda", "path": "/dev/vda", "size": 21474836480, "type": "disk",
       "model": "QEMU HARDDISK   ", "serial": "abc123", "wwn": null, "tran": "virtio",
       "mountpoints": [null], "start": null, "pkname": null, "ro": false, "fstype": null,
       "label": null, "uuid": null, "partlabel": null, "partuuid": null, "parttype": null, "pttype": "gpt",
       "children": [
          {"name": "vda1", "kname": "vda1", "path": "/dev/vda1", "size": 536870912, "type": "part",
           "model": null, "serial": null, "wwn": null, "tran": null, "mountpoints": ["/boot"], "start": 2048,
           "pkname": "vda", "ro": false, "fstype": "vfat", "label": null, "uuid": "1234-ABCD",
           "partlabel": "disk-main-ESP", "partuuid": "a8dd98ec-f66e-4d76-8d73-b198cae749e2",
           "parttype": "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "pttype": "gpt"},
          {"name": "vda2", "kname": "vda2", "path": "/dev/vda2", "size": "20936916992", "type": "part",
           "mountpoints": [null], "start": 1050624, "pkname": "vda", "fstype": "crypto_LUKS",
           "children": [
              {"name": "crypted", "kname": "dm-0", "path": "/dev/mapper/crypted", "size": 20920139776,
               "type": "crypt", "mountpoints": ["/", "/nix"], "fstype": "btrfs"}
           ]}
       ]},
      {"name": "loop3", "kname": "loop3", "path": "/dev/loop3", "size": 1073741824, "type": "loop",
       "mountpoints": [null]}
   ]
}"#;

    #[test]
    fn parses_lsblk_tree() {
        let devices = parse_lsblk(LSBLK).expect("valid lsblk json");
        assert_eq!(devices.len(), 2);
        let vda = &devices[0];
        assert_eq!(vda.model.as_deref(), Some("QEMU HARDDISK"));
        assert_eq!(vda.size, 21474836480);
        assert_eq!(vda.children.len(), 2);
        assert_eq!(vda.children[0].partn, Some(1));
        assert_eq!(vda.children[0].mountpoints, vec!["/boot".to_string()]);
        assert_eq!(vda.children[1].size, 20936916992, "string sizes parse too");
        let crypt = &vda.children[1].children[0];
        assert_eq!(crypt.kname, "dm-0");
        assert_eq!(crypt.partn, None, "only partitions get numbers");
        let facts = Facts {
            devices,
            ..Facts::default()
        };
        assert_eq!(
            facts.find("/dev/dm-0").map(|d| d.path.as_str()),
            Some("/dev/mapper/crypted")
        );
        assert_eq!(
            facts
                .top_level_of("/dev/mapper/crypted")
                .map(|d| d.path.as_str()),
            Some("/dev/vda")
        );
        assert!(facts.top_level_of("/dev/nope").is_none());
    }

    #[test]
    fn blkid_export_unescapes_and_overrides_udev() {
        let text = "DEVNAME=/dev/vda2\nUUID=11\nTYPE=ext4\nPART_ENTRY_NAME=name\\ with\\ space\nPART_ENTRY_NUMBER=2\n\nDEVNAME=/dev/vda\nPTTYPE=gpt\n";
        let infos = parse_blkid_export(text);
        assert_eq!(infos["/dev/vda2"]["PART_ENTRY_NAME"], "name with space");
        let mut devices = parse_lsblk(LSBLK).expect("valid lsblk json");
        merge_blkid(&mut devices[0], &infos);
        let vda = &devices[0];
        assert_eq!(vda.pttype.as_deref(), Some("gpt"));
        // vda1 got no blkid block: blkid saw nothing, so udev's stale memory is dropped.
        assert_eq!(vda.children[0].fstype, None);
        assert_eq!(vda.children[1].fstype.as_deref(), Some("ext4"));
        assert_eq!(
            vda.children[1].partlabel.as_deref(),
            Some("name with space")
        );
    }

    #[test]
    fn parses_mountinfo_with_escapes() {
        let text = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    95 27 0:45 /@nix /mnt/my\\040dir rw,relatime shared:1 - btrfs /dev/loop3p2 rw,subvol=/@nix\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[1].target, "/mnt/my dir");
        assert_eq!(mounts[1].root, "/@nix");
        assert_eq!(mounts[1].source, "/dev/loop3p2");
        assert_eq!(mounts[1].fstype, "btrfs");
        assert_eq!(
            mounts[1].options,
            ["rw", "relatime", "rw", "subvol=/@nix"].map(String::from)
        );
    }

    #[test]
    fn parses_lvm_reports() {
        let vgs = r#"{"report": [{"vg": [{"vg_name":"pool", "vg_free":"1073741824", "vg_extent_size":"4194304"}]}]}"#;
        let lvs = r#"{"report": [{"lv": [{"vg_name":"pool", "lv_name":"root", "lv_size":"2147483648", "segtype":"linear"},
            {"vg_name":"other", "lv_name":"x", "lv_size":"1", "segtype":"linear"}]}]}"#;
        let groups = parse_lvm_reports(vgs, lvs);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups["pool"].free, 1 << 30);
        assert_eq!(groups["pool"].extent, 4 << 20);
        assert_eq!(groups["pool"].lvs["root"].size, 2 << 30);
    }

    #[test]
    fn parses_subvolume_lists() {
        let text = "ID 256 gen 9 top level 5 path <FS_TREE>/@root\nID 257 gen 10 top level 5 path <FS_TREE>/nested/@nix\n";
        assert_eq!(parse_subvolume_list(text), ["@root", "nested/@nix"]);
    }

    #[test]
    fn parses_swaps() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/loop3p3                            partition\t1048572\t\t0\t\t-2\n/mnt/swap\\040file file 1024 0 -3\n";
        let swaps = parse_swaps(text);
        assert_eq!(swaps.len(), 2);
        assert_eq!(swaps[0].path, "/dev/loop3p3");
        assert_eq!(swaps[0].kind, "partition");
        assert_eq!(swaps[1].path, "/mnt/swap file");
    }

    #[test]
    fn paths_compare_by_component() {
        assert!(path_is_under("/mnt/boot", "/mnt/"));
        assert!(path_is_under("/mnt", "/mnt"));
        assert!(!path_is_under("/mnt2", "/mnt"));
        assert!(path_is_under("/anything", "/"));
        assert_eq!(normalize_path("/mnt//boot/"), "/mnt/boot");
        assert_eq!(normalize_path("/"), "/");
    }

    #[test]
    fn zfs_list_output_parses_into_datasets_and_volumes() {
        let props = vec!["compression".to_string(), "encryption".to_string()];
        assert_eq!(
            zfs_list_argv(&props).join(" "),
            "zfs list -H -p -t filesystem,volume -o name,type,volsize,mountpoint,compression,encryption"
        );
        let text = "tank\tfilesystem\t-\t/mnt/tank\tzstd\toff\n\
                    tank/home\tfilesystem\t-\t/mnt/home\tzstd\taes-256-gcm\n\
                    tank/vm\tvolume\t10737418240\t-\tzstd\toff\n\
                    tank/legacy\tfilesystem\t-\tlegacy\t-\toff\n\
                    short\tline\n";
        let ds = parse_zfs_list(text, &props);
        assert_eq!(
            ds.keys().collect::<Vec<_>>(),
            ["tank", "tank/home", "tank/legacy", "tank/vm"]
        );
        let vm = &ds["tank/vm"];
        assert_eq!(vm.kind, "volume");
        assert_eq!(vm.volsize, Some(10 << 30));
        assert_eq!(vm.mountpoint, None);
        let home = &ds["tank/home"];
        assert_eq!(home.volsize, None);
        assert_eq!(home.mountpoint.as_deref(), Some("/mnt/home"));
        assert_eq!(home.properties["encryption"], "aes-256-gcm");
        assert_eq!(ds["tank/legacy"].mountpoint.as_deref(), Some("legacy"));
        assert!(!ds["tank/legacy"].properties.contains_key("compression"));
    }
}
