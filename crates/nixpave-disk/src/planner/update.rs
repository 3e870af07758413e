//! `update` mode: a changed layout compared with the live disks, without wiping anything.
//!
//! [`update`] is pure: layout + [`Facts`] (lsblk, blkid, mounts, swaps, btrfs subvolume lists)
//! → every difference in one [`Class`]: already there, additive, growable or destructive.
//! Additive and growable differences carry the operations that make them; destructive ones
//! carry a sentence saying why they cannot be done in place, and no operations.
//!
//! Rules:
//! - GPT partitions are matched by their GPT name (`disk-<disk>-<name>` or the layout's
//!   `label`), never by number. A new partition takes the lowest unused number and goes into
//!   free space (the first gap that fits; "rest of the disk" takes the largest); nothing that
//!   exists is renumbered or moved.
//! - Only the partition with nothing after it can grow, into the free space that follows it
//!   (a disk that got bigger); ext4, xfs and btrfs are grown with it, online when mounted.
//! - Every operation acts on something new (guarded like `format`: a filesystem is only made
//!   on a device without one) or grows something; none is marked destructive.
//! - LVM logical volumes are compared from `vgs`/`lvs`: a new one is made in the group's free
//!   extents, a plain (linear) one grows into them with its filesystem.
//! - ZFS pools are compared from `zpool list`/`zfs list`: a new dataset or volume is created
//!   in the imported pool, a volume grows (`volsize`), a property that ZFS can change is set;
//!   a missing pool, a removed dataset, a shrunk volume or a creation-only property is
//!   destructive.
//! - mdadm and bcachefs aggregates, and what lies inside a closed LUKS container, are not
//!   compared yet: they are listed in [`UpdatePlan::not_compared`].

use std::collections::BTreeMap;

use serde::Serialize;

use super::create;
use super::mount::{self, Dir};
use super::ops::{argv, op, target, OpExt};
use super::{Ctx, PlanError, PlanOptions};
use crate::exec::facts::{normalize_path, BlockDevice, Facts};
use crate::exec::resolve::{resolve, Resolution};
use crate::model::size::{parse_position, Position, SECTOR};
use crate::model::{
    Btrfs, Content, Dataset, Disk, Gpt, GptPartition, Layout, LvmVg, Subvolume, Zpool,
};
use crate::plan::{Mode, Operation, Plan, StdinSource};

/// How a difference between the layout and the disks can be brought about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// The disks already are as the layout says.
    AlreadyThere,
    /// Something new, made without touching what exists.
    Additive,
    /// Something that exists grows into free space, keeping its data.
    Growable,
    /// Cannot be done in place: the data on it would be lost or moved.
    Destructive,
}

impl Class {
    /// The heading of the class in the human output.
    pub fn heading(self) -> &'static str {
        match self {
            Class::AlreadyThere => "already there",
            Class::Additive => "additive",
            Class::Growable => "growable",
            Class::Destructive => "destructive (not done in place)",
        }
    }
}

/// What a difference is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A disk of the layout.
    Disk,
    /// A blank disk that gets the layout's whole content.
    BlankDisk,
    /// A partition table (GPT or legacy).
    PartitionTable,
    /// A GPT partition.
    Partition,
    /// A GPT partition that is not there yet.
    PartitionAdded,
    /// The last partition (and its filesystem) grown into space after it.
    PartitionGrown,
    /// A partition that would have to shrink.
    PartitionShrunk,
    /// A partition that would have to start elsewhere.
    PartitionMoved,
    /// A partition on the disk that the layout no longer has.
    PartitionRemoved,
    /// A partition whose type code differs.
    PartitionType,
    /// A filesystem, swap area or container signature on a device.
    Content,
    /// Content made on a device that has none yet.
    ContentAdded,
    /// A device that holds another kind of content than the layout says.
    ContentChanged,
    /// A btrfs subvolume.
    Subvolume,
    /// A btrfs subvolume that is not there yet.
    SubvolumeAdded,
    /// A btrfs swap file (created when absent).
    SwapFile,
    /// A mounted filesystem.
    Mount,
    /// A filesystem that is not mounted yet.
    MountAdded,
    /// A mounted filesystem that lacks some of the layout's mount options.
    MountOptions,
    /// Something else is mounted where the layout wants a filesystem.
    MountTaken,
    /// A swap area that is not active.
    SwapEnabled,
    /// An LVM logical volume.
    Lv,
    /// An LVM logical volume that is not there yet.
    LvAdded,
    /// An LVM logical volume grown into the group's free extents.
    LvGrown,
    /// An LVM logical volume that would have to shrink.
    LvShrunk,
    /// An LVM logical volume the layout no longer has.
    LvRemoved,
    /// A ZFS pool.
    Pool,
    /// A ZFS dataset or volume.
    Dataset,
    /// A ZFS dataset or volume that is not there yet.
    DatasetAdded,
    /// A ZFS dataset or volume on the pool that the layout no longer has.
    DatasetRemoved,
    /// A ZFS property that differs from the layout's.
    DatasetProperty,
    /// A ZFS volume grown (`volsize`).
    ZvolGrown,
    /// A ZFS volume that would have to shrink.
    ZvolShrunk,
}

/// One difference (or sameness) between the layout and the disks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// Its class.
    pub class: Class,
    /// What it is about.
    pub kind: Kind,
    /// One line for humans.
    pub description: String,
    /// Destructive only: why it cannot be done in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// What makes it (additive and growable only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<Operation>,
    /// When its operations run: partition tables, then content, then mounts, then swap.
    #[serde(skip)]
    phase: (u8, String),
}

/// Where the layout's btrfs swap files would be on this machine, below every mounted btrfs
/// subvolume of the same name: the paths to probe ([`crate::exec::facts::probe_paths`]) so that
/// a swap file that exists but is off counts as already there.
pub fn swap_file_candidates(layout: &Layout, facts: &Facts) -> Vec<String> {
    let mut out = Vec::new();
    for (_, _, c) in crate::model::validate::contents(layout) {
        let Content::Btrfs(b) = c else { continue };
        let files = b.swap.values().map(|f| ("", f)).chain(
            b.subvolumes
                .values()
                .flat_map(|s| s.swap.values().map(move |f| (s.name.as_str(), f))),
        );
        for (subvol, f) in files {
            let fs_root = format!("/{}", subvol.trim_matches('/'));
            for m in facts.mounts.iter().filter(|m| {
                m.fstype == "btrfs" && normalize_path(&m.root) == normalize_path(&fs_root)
            }) {
                out.push(normalize_path(&format!(
                    "{}/{}",
                    m.target,
                    f.path.trim_start_matches('/')
                )));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The ZFS properties the layout sets on pools' root datasets, datasets and volumes (besides
/// `mountpoint`): the extra columns [`crate::exec::facts::probe_zfs`] asks `zfs list` for.
pub fn zfs_properties(layout: &Layout) -> Vec<String> {
    let mut out: Vec<String> = layout
        .zpool
        .values()
        .flat_map(|p| {
            p.root_fs_options
                .keys()
                .chain(p.datasets.values().flat_map(|d| match d {
                    Dataset::Fs(f) => f.options.keys(),
                    Dataset::Volume(v) => v.options.keys(),
                }))
        })
        .filter(|k| k.as_str() != "mountpoint")
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The result of [`update`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdatePlan {
    /// Where the layout's filesystems are mounted (`/` on a running system).
    pub root_mountpoint: String,
    /// Every difference, in layout order.
    pub differences: Vec<Difference>,
    /// Parts of the layout that were not compared (and are left alone).
    pub not_compared: Vec<String>,
}

impl UpdatePlan {
    /// The differences of one class.
    pub fn of(&self, class: Class) -> impl Iterator<Item = &Difference> {
        self.differences.iter().filter(move |d| d.class == class)
    }

    /// True when some difference cannot be done in place.
    pub fn has_destructive(&self) -> bool {
        self.of(Class::Destructive).next().is_some()
    }

    /// The plan that applies the additive and growable differences (destructive ones are
    /// never in it), in a safe order: partition tables, content, mounts (parents first), swap.
    pub fn plan(&self) -> Plan {
        let mut todo: Vec<&Difference> = self
            .differences
            .iter()
            .filter(|d| matches!(d.class, Class::Additive | Class::Growable))
            .collect();
        todo.sort_by(|a, b| a.phase.cmp(&b.phase));
        Plan {
            mode: Mode::Update,
            operations: todo
                .into_iter()
                .flat_map(|d| d.operations.iter().cloned())
                .collect(),
        }
    }
}

const PHASE_TABLE: u8 = 0;
const PHASE_CONTENT: u8 = 1;
const PHASE_MOUNT: u8 = 2;
const PHASE_SWAP: u8 = 3;

/// 1 MiB in sectors: sgdisk's alignment, and the slack below which sizes count as equal.
const ALIGN: u64 = 2048;
/// Size difference below which a ZFS volume counts as unchanged (volsize is rounded to the
/// volume's block size, at most 128 KiB).
const ZVOL_SLACK: u64 = 128 << 10;
/// Sectors the backup GPT takes at the end of the disk.
const BACKUP_GPT: u64 = 33;

/// Compares `layout` with the live disks in `facts` and classifies every difference.
pub fn update(
    layout: &Layout,
    facts: &Facts,
    options: &PlanOptions,
) -> Result<UpdatePlan, PlanError> {
    if !options.root_mountpoint.starts_with('/') {
        return Err(PlanError::RootMountpoint(options.root_mountpoint.clone()));
    }
    crate::model::validate::device_order(layout)?;
    let mut w = Walker {
        facts,
        ctx: Ctx {
            root: options.root_mountpoint.clone(),
        },
        out: Vec::new(),
        not_compared: Vec::new(),
    };
    for (key, disk) in &layout.disk {
        w.disk(key, disk);
    }
    for (name, n) in &layout.nodev {
        let steps = mount::nodev(n, &w.ctx, Dir::Mount);
        let t = target(&w.ctx.root, &n.mountpoint);
        let mounted = w
            .facts
            .mounts
            .iter()
            .rev()
            .find(|m| normalize_path(&m.target) == normalize_path(&t));
        match mounted {
            Some(m) if m.fstype == n.fs_type => {
                let missing = missing_options(&n.mount_options, &m.options);
                w.mount_options_diff(&format!("{} at {t}", n.fs_type), &t, &missing);
            }
            Some(m) => w.push_destructive(
                Kind::MountTaken,
                format!("nodev `{name}` ({}) at {t}", n.fs_type),
                format!(
                    "{t} has {} ({}) mounted; mounting {} over it would hide it: unmount it \
                     first or change the mountpoint",
                    m.source, m.fstype, n.fs_type
                ),
            ),
            None => {
                for ops in steps.fs.into_values() {
                    w.push(
                        Class::Additive,
                        Kind::MountAdded,
                        format!("mount {} at {t}", n.fs_type),
                        ops,
                        (PHASE_MOUNT, t.clone()),
                    );
                }
            }
        }
    }
    for vg in layout.lvm_vg.values() {
        w.lvm_vg(vg);
    }
    for name in layout.mdadm.keys() {
        w.not_compared
            .push(format!("mdadm array `{name}` (left untouched)"));
    }
    for pool in layout.zpool.values() {
        w.zpool(pool);
    }
    for name in layout.bcachefs_filesystems.keys() {
        w.not_compared
            .push(format!("bcachefs filesystem `{name}` (not compared yet)"));
    }
    Ok(UpdatePlan {
        root_mountpoint: options.root_mountpoint.clone(),
        differences: w.out,
        not_compared: w.not_compared,
    })
}

struct Walker<'f> {
    facts: &'f Facts,
    ctx: Ctx,
    out: Vec<Difference>,
    not_compared: Vec<String>,
}

/// Update operations act on new things only: the `destructive` flag of the format planner's
/// operations (which may meet old data on a re-run) does not apply.
fn gentle(ops: Vec<Operation>) -> Vec<Operation> {
    ops.into_iter()
        .map(|mut o| {
            o.destructive = false;
            o
        })
        .collect()
}

impl Walker<'_> {
    fn push(
        &mut self,
        class: Class,
        kind: Kind,
        description: String,
        operations: Vec<Operation>,
        phase: (u8, String),
    ) {
        self.out.push(Difference {
            class,
            kind,
            description,
            why: None,
            operations: gentle(operations),
            phase,
        });
    }

    fn same(&mut self, kind: Kind, description: String) {
        self.push(
            Class::AlreadyThere,
            kind,
            description,
            Vec::new(),
            (0, String::new()),
        );
    }

    fn push_destructive(&mut self, kind: Kind, description: String, why: String) {
        self.out.push(Difference {
            class: Class::Destructive,
            kind,
            description,
            why: Some(why),
            operations: Vec::new(),
            phase: (0, String::new()),
        });
    }

    fn disk(&mut self, key: &str, disk: &Disk) {
        let facts = self.facts;
        let found = match resolve(&disk.device, facts, &[]) {
            Resolution::Node(node) => facts.find(&node),
            _ => None,
        };
        let Some(dev) = found else {
            self.push_destructive(
                Kind::Disk,
                format!("disk `{key}` ({})", disk.device),
                format!(
                    "{} is not a block device on this machine; nixpave only changes disks it \
                     finds (name the disk with --disk {key}=/dev/…)",
                    disk.device
                ),
            );
            return;
        };
        let Some(content) = &disk.content else {
            self.same(
                Kind::Disk,
                format!("disk `{key}` ({}): no content in the layout", dev.path),
            );
            return;
        };
        let blank = dev.pttype.is_none() && dev.fstype.is_none() && dev.children.is_empty();
        if blank {
            let mut ctx = Ctx {
                root: self.ctx.root.clone(),
            };
            let ops = create::content(content, &mut ctx);
            self.push(
                Class::Additive,
                Kind::BlankDisk,
                format!(
                    "blank disk `{key}` ({}, {}) gets its whole {} layout",
                    dev.path,
                    mib(dev.size),
                    content.type_name()
                ),
                ops,
                (PHASE_CONTENT, disk.device.clone()),
            );
            self.new_mounts(content);
            return;
        }
        match content {
            Content::Gpt(g) if dev.pttype.as_deref() == Some("gpt") => self.gpt(g, dev),
            Content::Gpt(_) | Content::Table(_) => {
                let want = match content {
                    Content::Table(t) if t.format == "msdos" => "dos",
                    Content::Table(t) => t.format.as_str(),
                    _ => "gpt",
                };
                let have = dev.pttype.as_deref().or(dev.fstype.as_deref());
                if have == Some(want) {
                    self.same(
                        Kind::PartitionTable,
                        format!("disk `{key}` ({}): {want} partition table", dev.path),
                    );
                    self.not_compared.push(format!(
                        "the partitions of legacy table on disk `{key}` (matched by number only \
                         in disko; not compared)"
                    ));
                } else {
                    self.push_destructive(
                        Kind::PartitionTable,
                        format!(
                            "disk `{key}` ({}): {} → {want} partition table",
                            dev.path,
                            have.unwrap_or("unknown content")
                        ),
                        format!(
                            "{} holds {}; a new partition table replaces everything on the disk",
                            dev.path,
                            have.unwrap_or("data nixpave does not recognise")
                        ),
                    );
                }
            }
            c => self.existing_content(&format!("disk `{key}`"), c, dev),
        }
    }

    fn gpt(&mut self, g: &Gpt, dev: &BlockDevice) {
        let parts: Vec<&BlockDevice> = dev.children.iter().filter(|c| c.kind == "part").collect();
        let last_usable = (dev.size / SECTOR).saturating_sub(BACKUP_GPT + 1);
        let mut used: Vec<(u64, u64)> = parts
            .iter()
            .filter_map(|p| {
                let start = p.start?;
                Some((start, start + (p.size / SECTOR).max(1) - 1))
            })
            .collect();
        let mut numbers: Vec<u32> = parts.iter().filter_map(|p| p.partn).collect();
        let find = |label: &str| {
            parts
                .iter()
                .copied()
                .find(|c| c.partlabel.as_deref() == Some(label))
        };
        // Removed: on the disk, not in the layout.
        for c in &parts {
            if !g
                .partitions
                .iter()
                .any(|p| c.partlabel.as_deref() == Some(&p.label))
            {
                let label = c.partlabel.as_deref().unwrap_or("(no name)");
                self.push_destructive(
                    Kind::PartitionRemoved,
                    format!(
                        "partition {} `{label}` on {} ({}{}) is not in the layout",
                        c.partn.unwrap_or(0),
                        dev.path,
                        mib(c.size),
                        c.fstype
                            .as_deref()
                            .map(|f| format!(", {f}"))
                            .unwrap_or_default()
                    ),
                    if c.partlabel.is_none() {
                        "it has no GPT name, and partitions are matched by name: if the layout \
                         means it, name it (sgdisk --change-name) as the layout's `label`; \
                         removing it would destroy its data, which nixpave never does"
                            .to_string()
                    } else {
                        "removing a partition destroys its data; nixpave never deletes one \
                         (delete it yourself, or keep it in the layout)"
                            .to_string()
                    },
                );
            }
        }
        // New partitions first: they take free space before the last partition may grow into it.
        for p in g.partitions.iter().filter(|p| find(&p.label).is_none()) {
            self.new_partition(g, p, dev, &mut used, &mut numbers, last_usable);
        }
        for p in &g.partitions {
            if let Some(c) = find(&p.label) {
                self.existing_partition(p, c, dev, &used, last_usable);
            }
        }
    }

    fn new_partition(
        &mut self,
        g: &Gpt,
        p: &GptPartition,
        dev: &BlockDevice,
        used: &mut Vec<(u64, u64)>,
        numbers: &mut Vec<u32>,
        last_usable: u64,
    ) {
        let want = match parse_position(&p.end) {
            Ok(Position::AfterStart(b)) => {
                Want::Sectors(b.div_ceil(SECTOR).div_ceil(ALIGN) * ALIGN)
            }
            Ok(Position::BeforeEnd(b)) => Want::Rest(b / SECTOR),
            _ => Want::Rest(0),
        };
        let regions = free_regions(used, last_usable);
        let place = match want {
            Want::Sectors(n) => regions
                .iter()
                .find(|(s, e)| e + 1 - s >= n)
                .map(|(s, _)| (*s, s + n - 1)),
            Want::Rest(keep) => regions
                .iter()
                .max_by_key(|(s, e)| e - s)
                .map(|(s, e)| (*s, ((e + 1).saturating_sub(keep) / ALIGN) * ALIGN - 1))
                .filter(|(s, e)| e > s),
        };
        let what = match want {
            Want::Sectors(n) => mib(n * SECTOR),
            Want::Rest(_) => "the rest of the disk".to_string(),
        };
        let Some((start, end)) = place else {
            let largest = regions.iter().map(|(s, e)| e + 1 - s).max().unwrap_or(0);
            self.push_destructive(
                Kind::PartitionAdded,
                format!("new partition `{}` ({what}) on {}", p.label, dev.path),
                format!(
                    "there is no free space for it on {} (largest free gap: {}); making room \
                     means shrinking or moving a partition, which nixpave does not do",
                    dev.path,
                    mib(largest * SECTOR)
                ),
            );
            return;
        };
        let n = (1..).find(|n| !numbers.contains(n)).unwrap_or(1);
        numbers.push(n);
        used.push((start, end));
        let mut a = argv![
            "sgdisk",
            format!("--new={n}:{start}:{end}"),
            format!("--partition-guid={n}:{}", p.uuid.as_deref().unwrap_or("R")),
            format!("--change-name={n}:{}", p.label),
            format!("--typecode={n}:{}", p.type_code),
            format!("--attributes={n}:=:0"),
        ];
        for bit in &p.attributes {
            a.push(format!("--attributes={n}:set:{bit}"));
        }
        a.push(g.device.clone());
        let create = op(
            &g.device,
            format!(
                "create partition {n} `{}` ({}, type {}) in free space on {}",
                p.label,
                mib((end + 1 - start) * SECTOR),
                p.type_code,
                g.device
            ),
            a,
        )
        .guard(crate::plan::Guard::PartitionAbsent {
            disk: g.device.clone(),
            number: n,
        });
        self.push(
            Class::Additive,
            Kind::PartitionAdded,
            format!(
                "new partition {n} `{}` ({}, sectors {start}..{end}) in free space on {}",
                p.label,
                mib((end + 1 - start) * SECTOR),
                dev.path
            ),
            vec![create],
            (PHASE_TABLE, format!("{}:{n}", dev.path)),
        );
        if let Some(
            c @ (Content::LvmPv(_) | Content::Mdraid(_) | Content::Zfs(_) | Content::Bcachefs(_)),
        ) = &p.content
        {
            // Joining a live VG, array or pool is not done yet: the partition is made, its
            // content is left to the user.
            self.not_compared.push(format!(
                "new partition `{}` is to become {}: joining it is not done yet (the partition                  is created empty)",
                p.label,
                describe(c)
            ));
        } else if let Some(c) = &p.content {
            let mut ctx = Ctx {
                root: self.ctx.root.clone(),
            };
            let ops = create::content(c, &mut ctx);
            if !ops.is_empty() {
                self.push(
                    Class::Additive,
                    Kind::ContentAdded,
                    format!("{} on new partition `{}`", describe(c), p.label),
                    ops,
                    (PHASE_CONTENT, p.device.clone()),
                );
            }
            self.new_mounts(c);
        }
    }

    fn existing_partition(
        &mut self,
        p: &GptPartition,
        c: &BlockDevice,
        dev: &BlockDevice,
        used: &[(u64, u64)],
        last_usable: u64,
    ) {
        let n = c.partn.unwrap_or(0);
        let subject = format!("partition {n} `{}` on {}", p.label, dev.path);
        let Some(start) = c.start else {
            self.same(
                Kind::Partition,
                format!("{subject} ({}; position unknown)", mib(c.size)),
            );
            return;
        };
        let end = start + (c.size / SECTOR).max(1) - 1;
        // What follows the partition: the next partition's start, or the end of the disk.
        let limit = used
            .iter()
            .filter(|(s, _)| *s > start)
            .map(|(s, _)| s - 1)
            .min()
            .unwrap_or(last_usable);
        if let Ok(Position::Absolute(b)) = parse_position(&p.start) {
            let want = (b / SECTOR).div_ceil(ALIGN) * ALIGN;
            if want != start {
                self.push_destructive(
                    Kind::PartitionMoved,
                    format!("{subject}: start sector {start} → {want}"),
                    "moving a partition means copying all of its data to another place on the \
                     disk while nothing uses it; nixpave does not move partitions"
                        .to_string(),
                );
            }
        }
        if let Some(guid) = type_guid(&p.type_code) {
            let have = c.parttype.as_deref().unwrap_or("").to_ascii_lowercase();
            if !have.is_empty() && have != guid {
                self.push_destructive(
                    Kind::PartitionType,
                    format!("{subject}: type {have} → {} ({guid})", p.type_code),
                    "the type tells boot loaders and systemd what the partition holds, and its \
                     content was made for the old one; retype it yourself (sgdisk --typecode) \
                     if that is really meant"
                        .to_string(),
                );
            }
        }
        let desired = match parse_position(&p.end) {
            Ok(Position::AfterStart(b)) => start + b.div_ceil(SECTOR) - 1,
            Ok(Position::Absolute(b)) => b / SECTOR - 1,
            Ok(Position::BeforeEnd(b)) => {
                ((last_usable + 1).saturating_sub(b / SECTOR) / ALIGN) * ALIGN - 1
            }
            _ => ((last_usable + 1) / ALIGN) * ALIGN - 1,
        };
        let to_end = matches!(
            parse_position(&p.end),
            Ok(Position::Default | Position::BeforeEnd(_))
        );
        // A partition that runs to the end only grows when at least 1 MiB was added.
        let grows = desired > end && desired - end >= ALIGN && desired <= limit;
        // Only called on a shrink or a blocked grow, where `desired` lies past `start`.
        let resize = || {
            format!(
                "{subject}: {} → {}",
                mib(c.size),
                mib((desired + 1 - start) * SECTOR)
            )
        };
        if desired + ALIGN <= end && !to_end {
            self.push_destructive(
                Kind::PartitionShrunk,
                resize(),
                format!(
                    "shrinking cuts off the end of what it holds ({}): xfs cannot shrink at \
                     all and ext4 or btrfs only after moving their data; nixpave does not shrink",
                    c.fstype.as_deref().unwrap_or("unknown content")
                ),
            );
        } else if !to_end && desired > end && desired - end >= ALIGN && desired > limit {
            self.push_destructive(
                Kind::PartitionShrunk,
                resize(),
                format!(
                    "only {} are free right after it; growing it further means moving the \
                     partition that follows",
                    mib((limit - end) * SECTOR)
                ),
            );
        } else if grows {
            self.grow(p, c, dev, start, desired);
            return;
        }
        self.same(Kind::Partition, format!("{subject} ({})", mib(c.size)));
        if let Some(content) = &p.content {
            self.existing_content(&subject, content, c);
        }
    }

    /// The last partition and its filesystem grown to end at sector `desired`.
    fn grow(
        &mut self,
        p: &GptPartition,
        c: &BlockDevice,
        dev: &BlockDevice,
        start: u64,
        desired: u64,
    ) {
        let n = c.partn.unwrap_or(0);
        let subject = format!("partition {n} `{}` on {}", p.label, dev.path);
        let new_size = (desired + 1 - start) * SECTOR;
        let have = c.fstype.clone();
        let fs_ops = match (&p.content, have.as_deref()) {
            (None, None) => Ok(Vec::new()),
            (Some(content), Some(fs)) if expected_type(content) == Some(fs) => {
                grow_fs(fs, &p.device, self.mount_of(c))
            }
            (_, fs) => Err(fs
                .unwrap_or("content the layout does not describe")
                .to_string()),
        };
        let fs_ops = match fs_ops {
            Ok(ops) => ops,
            Err(fs) => {
                self.push_destructive(
                    Kind::PartitionGrown,
                    format!("{subject}: {} → {}", mib(c.size), mib(new_size)),
                    format!(
                        "it holds {fs}, which nixpave cannot grow in place (ext4, xfs, btrfs and \
                         LVM physical volumes can be grown)"
                    ),
                );
                return;
            }
        };
        let disk_path = match resolve(&dev.path, self.facts, &[]) {
            Resolution::Node(n) => n,
            _ => dev.path.clone(),
        };
        let mut ops = vec![
            // The backup GPT moves to the disk's (new) end first, else the space is unusable.
            op(
                &disk_path,
                format!("move the backup GPT to the end of {disk_path}"),
                argv!["sgdisk", "--move-second-header", &disk_path],
            ),
            op(
                &disk_path,
                format!(
                    "grow partition {n} `{}` to {} (same start, name, type and GUID)",
                    p.label,
                    mib(new_size)
                ),
                argv![
                    "sfdisk",
                    "--no-reread",
                    "--no-tell-kernel",
                    "-N",
                    n.to_string(),
                    &disk_path
                ],
            )
            .stdin(StdinSource::Text {
                text: format!("{start},{}\n", desired + 1 - start),
            }),
        ];
        ops.extend(fs_ops);
        self.push(
            Class::Growable,
            Kind::PartitionGrown,
            format!(
                "{subject}: {} → {} into the free space after it{}",
                mib(c.size),
                mib(new_size),
                have.as_deref()
                    .map(|f| format!(", {f} grown with it"))
                    .unwrap_or_default()
            ),
            ops,
            (PHASE_TABLE, format!("{}:{n}", dev.path)),
        );
        if let Some(content) = &p.content {
            self.existing_content(&subject, content, c);
        }
    }

    /// The logical volumes of a volume group that exists (from `vgs`/`lvs`).
    fn zpool(&mut self, pool: &Zpool) {
        let name = &pool.name;
        let Some(zfs) = &self.facts.zfs else {
            self.not_compared.push(format!(
                "ZFS pool `{name}` (no ZFS tools or module on this machine)"
            ));
            return;
        };
        if !zfs.pools.contains(name) {
            self.push_destructive(
                Kind::Pool,
                format!("ZFS pool `{name}` is not imported here"),
                "creating a pool needs its vdevs; the disks are in use (import the pool if it \
                 exists, or make it with `format` on disks that are free)"
                    .to_string(),
            );
            return;
        }
        self.same(Kind::Pool, format!("ZFS pool `{name}` is imported"));
        let mut root_props = pool.root_fs_options.clone();
        if let Some(m) = &pool.mountpoint {
            root_props
                .entry("mountpoint".into())
                .or_insert_with(|| m.clone());
        }
        self.zfs_properties(name, &root_props);
        // Parents that `zfs create -p` made for the layout's datasets count as the layout's.
        let wanted: Vec<&str> = pool
            .datasets
            .values()
            .map(|d| match d {
                Dataset::Fs(f) => f.full_name.as_str(),
                Dataset::Volume(v) => v.full_name.as_str(),
            })
            .collect();
        let prefix = format!("{name}/");
        for (full, live) in zfs.datasets.range(prefix.clone()..) {
            if !full.starts_with(&prefix) {
                break;
            }
            let kept = wanted
                .iter()
                .any(|w| *w == full || w.starts_with(&format!("{full}/")));
            if !kept {
                self.push_destructive(
                    Kind::DatasetRemoved,
                    format!("ZFS {} {full} is not in the layout", live.kind),
                    format!(
                        "removing a ZFS {} destroys its data and snapshots; nixpave never \
                         removes one (zfs destroy it yourself, or keep it in the layout)",
                        live.kind
                    ),
                );
            }
        }
        for ds in pool.datasets.values() {
            match ds {
                Dataset::Fs(f) => match zfs.datasets.get(&f.full_name) {
                    None => {
                        self.push(
                            Class::Additive,
                            Kind::DatasetAdded,
                            format!("new ZFS dataset {}", f.full_name),
                            create::zfs_fs(f),
                            (PHASE_CONTENT, format!("zfs:{}", f.full_name)),
                        );
                        // `zfs create -u` leaves it unmounted: mount it like `mount` mode does.
                        let mount = mount::zfs_fs_mount(
                            &f.full_name,
                            &f.options,
                            &f.mountpoint,
                            &f.mount_options,
                            &self.ctx,
                            Dir::Mount,
                        );
                        if let Some((mp, o)) = mount {
                            self.new_dataset_mount(&f.full_name, &mp, o);
                        }
                    }
                    Some(live) if live.kind != "filesystem" => {
                        self.zfs_kind_changed(&f.full_name, &live.kind, "filesystem")
                    }
                    Some(_) => {
                        self.same(Kind::Dataset, format!("ZFS dataset {}", f.full_name));
                        let mut props = f.options.clone();
                        if let Some(m) = &f.mountpoint {
                            props
                                .entry("mountpoint".into())
                                .or_insert_with(|| m.clone());
                        }
                        self.zfs_properties(&f.full_name, &props);
                    }
                },
                Dataset::Volume(v) => match zfs.datasets.get(&v.full_name) {
                    None => {
                        let mut ctx = Ctx {
                            root: self.ctx.root.clone(),
                        };
                        let ops = create::zfs_volume(v, &mut ctx);
                        self.push(
                            Class::Additive,
                            Kind::DatasetAdded,
                            format!(
                                "new ZFS volume {} ({})",
                                v.full_name,
                                v.size.as_deref().unwrap_or("no size")
                            ),
                            ops,
                            (PHASE_CONTENT, format!("zfs:{}", v.full_name)),
                        );
                        if let Some(c) = &v.content {
                            self.new_mounts(c);
                        }
                    }
                    Some(live) if live.kind != "volume" => {
                        self.zfs_kind_changed(&v.full_name, &live.kind, "volume")
                    }
                    Some(live) => {
                        self.zvol_size(v, live.volsize);
                        self.zfs_properties(&v.full_name, &v.options);
                    }
                },
            }
        }
    }

    fn new_dataset_mount(&mut self, full: &str, mp: &str, o: Operation) {
        let t = target(&self.ctx.root, mp);
        let taken = self
            .facts
            .mounts
            .iter()
            .rev()
            .find(|m| normalize_path(&m.target) == normalize_path(&t));
        match taken {
            Some(m) => self.push_destructive(
                Kind::MountTaken,
                format!("mount ZFS dataset {full} at {t}"),
                format!(
                    "{t} has {} ({}) mounted; mounting the new dataset over it would hide it: \
                     unmount it first or change the mountpoint",
                    m.source, m.fstype
                ),
            ),
            None => self.push(
                Class::Additive,
                Kind::MountAdded,
                format!("mount {full} at {t}"),
                vec![o],
                (PHASE_MOUNT, t.clone()),
            ),
        }
    }

    fn zfs_kind_changed(&mut self, full: &str, have: &str, want: &str) {
        self.push_destructive(
            Kind::Dataset,
            format!("ZFS {full} is a {have}, the layout has a {want}"),
            format!(
                "a ZFS {have} cannot become a {want}; it would have to be destroyed and made \
                 again, losing its data"
            ),
        );
    }

    fn zvol_size(&mut self, v: &crate::model::ZfsVolume, live: Option<u64>) {
        let subject = format!("ZFS volume {}", v.full_name);
        let want = match v.size.as_deref().map(crate::model::size::parse_size) {
            Some(Ok(crate::model::size::Size::Bytes(b))) => Some(b),
            _ => None,
        };
        let (Some(want), Some(live)) = (want, live) else {
            self.same(Kind::Dataset, format!("{subject} (size not compared)"));
            return;
        };
        if want.abs_diff(live) < ZVOL_SLACK {
            self.same(Kind::Dataset, format!("{subject} ({})", mib(live)));
        } else if want < live {
            self.push_destructive(
                Kind::ZvolShrunk,
                format!("{subject}: {} → {}", mib(live), mib(want)),
                "shrinking a ZFS volume cuts off the end of the device and whatever the \
                 filesystem or data on it keeps there; ZFS does not move it"
                    .to_string(),
            );
        } else {
            let fs_note = match v.content.as_ref().and_then(expected_type) {
                Some(fs) => format!(" (the {fs} on it is not grown: grow it once the volume is)"),
                None => String::new(),
            };
            self.push(
                Class::Growable,
                Kind::ZvolGrown,
                format!("{subject}: {} → {}{fs_note}", mib(live), mib(want)),
                vec![op(
                    &v.full_name,
                    format!("grow {subject} to {}", mib(want)),
                    argv!["zfs", "set", format!("volsize={want}"), &v.full_name],
                )],
                (PHASE_CONTENT, format!("zfs:{}", v.full_name)),
            );
        }
    }

    /// Compares the layout's properties of dataset `full` with the live ones: those ZFS can
    /// change are set (`zfs set`), creation-only ones that differ are destructive.
    fn zfs_properties(&mut self, full: &str, wanted: &BTreeMap<String, String>) {
        let Some(live) = self.facts.zfs.as_ref().and_then(|z| z.datasets.get(full)) else {
            return;
        };
        let mut set = Vec::new();
        for (k, want) in wanted {
            let have = if k == "mountpoint" {
                live.mountpoint.clone()
            } else {
                live.properties.get(k).cloned()
            };
            let want_live = if k == "mountpoint" && want.starts_with('/') {
                target(&self.ctx.root, want)
            } else {
                want.clone()
            };
            if have
                .as_deref()
                .is_some_and(|h| zfs_value_eq(k, &want_live, h))
            {
                continue;
            }
            let have = have.unwrap_or_else(|| "unset".into());
            if create::ONETIME_PROPS.contains(&k.as_str()) {
                self.push_destructive(
                    Kind::DatasetProperty,
                    format!("ZFS {full}: {k} is {have}, the layout has {want}"),
                    format!(
                        "{k} is fixed when a dataset is created; changing it means a new \
                         dataset and copying the data over (zfs send/receive)"
                    ),
                );
            } else {
                set.push((k.clone(), want.clone(), have));
            }
        }
        if set.is_empty() {
            return;
        }
        let mut a = argv!["zfs", "set"];
        a.extend(set.iter().map(|(k, v, _)| format!("{k}={v}")));
        a.push(full.to_string());
        let what = set
            .iter()
            .map(|(k, v, h)| format!("{k} {h} → {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.push(
            Class::Additive,
            Kind::DatasetProperty,
            format!("ZFS {full}: set {what}"),
            vec![op(full, format!("set properties of {full}"), a)],
            (PHASE_CONTENT, format!("zfs:{full}")),
        );
    }

    fn lvm_vg(&mut self, vg: &LvmVg) {
        let name = &vg.name;
        let facts = self.facts;
        let Some(groups) = &facts.volume_groups else {
            self.not_compared.push(format!(
                "LVM volume group `{name}` (no LVM tools or device-mapper on this machine)"
            ));
            return;
        };
        let Some(group) = groups.get(name) else {
            self.not_compared.push(format!(
                "LVM volume group `{name}` is not active here (made by `format`, not by update)"
            ));
            return;
        };
        let mut free = group.free;
        let extent = group.extent.max(1);
        for (lv_name, live) in &group.lvs {
            if !vg.lvs.iter().any(|l| &l.name == lv_name) {
                self.push_destructive(
                    Kind::LvRemoved,
                    format!(
                        "logical volume {name}/{lv_name} ({}) is not in the layout",
                        mib(live.size)
                    ),
                    "removing a logical volume destroys its data; nixpave never removes one \
                     (lvremove it yourself, or keep it in the layout)"
                        .to_string(),
                );
            }
        }
        for lv in &vg.lvs {
            let subject = format!("logical volume {name}/{}", lv.name);
            let node = format!(
                "/dev/mapper/{}-{}",
                name.replace('-', "--"),
                lv.name.replace('-', "--")
            );
            let Some(live) = group.lvs.get(&lv.name) else {
                let mut ops = vec![create::lvcreate(name, lv)];
                let mut ctx = Ctx {
                    root: self.ctx.root.clone(),
                };
                if let Some(c) = &lv.content {
                    ops.extend(create::content(c, &mut ctx));
                }
                let fixed = crate::model::size::parse_size(&lv.size).ok();
                if let Some(crate::model::size::Size::Bytes(b)) = fixed {
                    if b > free {
                        self.push_destructive(
                            Kind::LvAdded,
                            format!("new {subject} ({})", lv.size),
                            format!(
                                "the group has {} free; more space means a new physical volume \
                                 (not done by update yet) or shrinking another volume",
                                mib(free)
                            ),
                        );
                        continue;
                    }
                    free -= b.div_ceil(extent) * extent;
                }
                self.push(
                    Class::Additive,
                    Kind::LvAdded,
                    format!("new {subject} ({}) in the group's free space", lv.size),
                    ops,
                    (PHASE_CONTENT, format!("lv:{name}/{}", lv.name)),
                );
                if let Some(c) = &lv.content {
                    self.new_mounts(c);
                }
                continue;
            };
            if lv.lvm_type.is_some() || live.segtype != "linear" {
                self.same(
                    Kind::Lv,
                    format!(
                        "{subject} ({}, {}; size not compared)",
                        mib(live.size),
                        live.segtype
                    ),
                );
            } else {
                let want = match crate::model::size::parse_size(&lv.size) {
                    Ok(crate::model::size::Size::Bytes(b)) => Some(b.div_ceil(extent) * extent),
                    _ if lv.size.trim() == "100%FREE" && free >= extent => {
                        Some(live.size + (free / extent) * extent)
                    }
                    _ => None,
                };
                match want {
                    Some(w) if w > live.size && w - live.size <= free => {
                        let delta = w - live.size;
                        free -= delta;
                        let dev = facts.find(&node);
                        let fs = dev.and_then(|d| d.fstype.clone());
                        let mounted = dev.and_then(|d| self.mount_of(d));
                        let fs_ops = match (&lv.content, fs.as_deref()) {
                            (None, None) => Ok(Vec::new()),
                            (Some(c), Some(f)) if expected_type(c) == Some(f) => {
                                grow_fs(f, &lv.device, mounted)
                            }
                            (_, f) => Err(f.unwrap_or("unknown content").to_string()),
                        };
                        match fs_ops {
                            Ok(fs_ops) => {
                                let mut ops = vec![op(
                                    &lv.device,
                                    format!("grow {subject} to {}", mib(w)),
                                    argv!["lvextend", "-L", format!("{w}b"), &lv.device],
                                )];
                                ops.extend(fs_ops);
                                self.push(
                                    Class::Growable,
                                    Kind::LvGrown,
                                    format!(
                                        "{subject}: {} → {} from the group's free space{}",
                                        mib(live.size),
                                        mib(w),
                                        fs.as_deref()
                                            .map(|f| format!(", {f} grown with it"))
                                            .unwrap_or_default()
                                    ),
                                    ops,
                                    (PHASE_TABLE, format!("lv:{name}/{}", lv.name)),
                                );
                            }
                            Err(f) => self.push_destructive(
                                Kind::LvGrown,
                                format!("{subject}: {} → {}", mib(live.size), mib(w)),
                                format!(
                                    "it holds {f}, which nixpave cannot grow in place (ext4, \
                                     xfs and btrfs can be grown)"
                                ),
                            ),
                        }
                        if let (Some(c), Some(d)) = (&lv.content, dev) {
                            self.existing_content(&subject, c, d);
                        }
                        continue;
                    }
                    Some(w) if w > live.size + extent => self.push_destructive(
                        Kind::LvGrown,
                        format!("{subject}: {} → {}", mib(live.size), mib(w)),
                        format!(
                            "the group has only {} free; more space means a new physical \
                             volume (not done by update yet)",
                            mib(free)
                        ),
                    ),
                    Some(w) if w + extent <= live.size && lv.size.trim() != "100%FREE" => self
                        .push_destructive(
                            Kind::LvShrunk,
                            format!("{subject}: {} → {}", mib(live.size), mib(w)),
                            "shrinking cuts off the end of its filesystem: xfs cannot shrink \
                             at all and ext4 only unmounted; nixpave does not shrink"
                                .to_string(),
                        ),
                    _ => self.same(Kind::Lv, format!("{subject} ({})", mib(live.size))),
                }
            }
            match (&lv.content, facts.find(&node)) {
                (Some(c), Some(d)) => self.existing_content(&subject, c, d),
                (Some(_), None) => self
                    .not_compared
                    .push(format!("the content of {subject} ({node} not found)")),
                _ => {}
            }
        }
    }

    fn mount_of(&self, device: &BlockDevice) -> Option<String> {
        self.facts
            .mounts_of(device)
            .first()
            .map(|m| m.target.clone())
    }

    /// Content that exists (or should) on `dev`.
    fn existing_content(&mut self, subject: &str, c: &Content, dev: &BlockDevice) {
        let Some(want) = expected_type(c) else {
            return;
        };
        match dev.fstype.as_deref() {
            None => {
                let mut ctx = Ctx {
                    root: self.ctx.root.clone(),
                };
                let ops = create::content(c, &mut ctx);
                self.push(
                    Class::Additive,
                    Kind::ContentAdded,
                    format!("{subject}: empty, gets {}", describe(c)),
                    ops,
                    (PHASE_CONTENT, dev.path.clone()),
                );
                self.new_mounts(c);
            }
            Some(have) if have == want => {
                self.same(Kind::Content, format!("{} on {}", describe(c), dev.path));
                self.existing_mounts(c, dev);
            }
            Some(have) => self.push_destructive(
                Kind::ContentChanged,
                format!("{subject}: {have} → {}", describe(c)),
                change_reason(have, want, &dev.path),
            ),
        }
    }

    /// Mounts, subvolumes and swap of content that exists on `dev`.
    fn existing_mounts(&mut self, c: &Content, dev: &BlockDevice) {
        let steps = mount::content(c, &self.ctx, Dir::Mount);
        match c {
            Content::Filesystem(f) => {
                if let Some(mp) = &f.mountpoint {
                    self.check_mount(dev, mp, "/", &f.mount_options, &steps.fs);
                }
            }
            Content::Btrfs(b) => self.btrfs(b, dev, &steps.fs),
            Content::Swap(s) if !s.random_encryption => {
                if self.facts.swaps_of(dev).is_empty() {
                    let ops = steps.fs.get(&s.device).cloned().unwrap_or_default();
                    self.push(
                        Class::Additive,
                        Kind::SwapEnabled,
                        format!("enable swap on {}", dev.path),
                        ops,
                        (PHASE_SWAP, s.device.clone()),
                    );
                } else {
                    self.same(Kind::Mount, format!("swap on {} is active", dev.path));
                }
            }
            Content::Luks(l) => {
                let opened = dev.children.iter().find(|d| d.kind == "crypt");
                match (opened, &l.content) {
                    (Some(inner), Some(ic)) => {
                        let subject = format!("LUKS `{}`", l.name);
                        self.existing_content(&subject, ic, inner);
                    }
                    (None, Some(_)) => self.not_compared.push(format!(
                        "the content of LUKS container `{}` on {} (it is not open)",
                        l.name, dev.path
                    )),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn btrfs(&mut self, b: &Btrfs, dev: &BlockDevice, fs: &BTreeMap<String, Vec<Operation>>) {
        if let Some(mp) = &b.mountpoint {
            self.check_mount(dev, mp, "/", &b.mount_options, fs);
        }
        for f in b.swap.values() {
            self.swap_file(b, "", f, dev);
        }
        let known = self.facts.btrfs_subvolumes.get(&dev.path).cloned();
        let mut new: Vec<&Subvolume> = Vec::new();
        for s in b.subvolumes.values() {
            let name = s.name.trim_matches('/');
            match &known {
                Some(list) if list.iter().any(|k| k == name) => {
                    self.same(
                        Kind::Subvolume,
                        format!("btrfs subvolume {name} on {}", dev.path),
                    );
                    for f in s.swap.values() {
                        self.swap_file(b, name, f, dev);
                    }
                    if let Some(mp) = &s.mountpoint {
                        let opts: Vec<String> = s.mount_options.clone();
                        self.check_mount(dev, mp, &format!("/{name}"), &opts, fs);
                    }
                }
                _ => new.push(s),
            }
        }
        if !new.is_empty() {
            let (mount, umount) = create::btrfs_top_mount(&b.device);
            let tmp = create::btrfs_temp_dir(&b.device);
            let mut ops = vec![mount];
            for s in &new {
                ops.extend(create::subvolume(s, &tmp, &b.device));
            }
            ops.push(umount);
            let names: Vec<&str> = new.iter().map(|s| s.name.trim_matches('/')).collect();
            let unknown = if known.is_none() {
                " (the filesystem is not mounted, so which exist is unknown: each is made only if absent)"
            } else {
                ""
            };
            self.push(
                Class::Additive,
                Kind::SubvolumeAdded,
                format!(
                    "btrfs subvolume{} {} on {}{unknown}",
                    if new.len() > 1 { "s" } else { "" },
                    names.join(", "),
                    dev.path
                ),
                ops,
                (PHASE_CONTENT, format!("{}:subvolumes", dev.path)),
            );
            for s in new {
                if let Some(mp) = &s.mountpoint {
                    let t = target(&self.ctx.root, mp);
                    if let Some(o) = fs.get(mp) {
                        self.push(
                            Class::Additive,
                            Kind::MountAdded,
                            format!("mount subvolume {} at {t}", s.name.trim_matches('/')),
                            o.clone(),
                            (PHASE_MOUNT, t),
                        );
                    }
                }
            }
        }
    }

    /// A swap file `f` in the subvolume `subvol` ("" for the top level) of the btrfs `b`.
    fn swap_file(
        &mut self,
        b: &Btrfs,
        subvol: &str,
        f: &crate::model::SwapFile,
        dev: &BlockDevice,
    ) {
        let rel = f.path.trim_start_matches('/');
        let fs_root = format!("/{subvol}");
        let facts = self.facts;
        let active = facts.mounts.iter().any(|m| {
            normalize_path(&m.root) == normalize_path(&fs_root)
                && facts.same_device(&m.source, dev)
                && facts.swaps.iter().any(|sw| {
                    normalize_path(&sw.path) == normalize_path(&format!("{}/{rel}", m.target))
                })
        });
        let place = if subvol.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in subvolume {subvol}")
        };
        let exists = facts.mounts.iter().any(|m| {
            normalize_path(&m.root) == normalize_path(&fs_root)
                && facts.same_device(&m.source, dev)
                && facts
                    .existing_files
                    .iter()
                    .any(|p| normalize_path(p) == normalize_path(&format!("{}/{rel}", m.target)))
        });
        if active || exists {
            self.same(
                Kind::SwapFile,
                format!(
                    "swap file {rel} {place} on {} ({})",
                    dev.path,
                    if active {
                        "active"
                    } else {
                        "exists; NixOS's swapDevices turns it on"
                    }
                ),
            );
            return;
        }
        let (mount, umount) = create::btrfs_top_mount(&b.device);
        let tmp = create::btrfs_temp_dir(&b.device);
        let dir = if subvol.is_empty() {
            tmp
        } else {
            format!("{tmp}/{subvol}")
        };
        let mut files = BTreeMap::new();
        files.insert(rel.to_string(), f.clone());
        let mut ops = vec![mount];
        ops.extend(create::swapfiles(&files, &dir, &b.device));
        ops.push(umount);
        self.push(
            Class::Additive,
            Kind::SwapFile,
            format!(
                "{} swap file {rel} {place} on {} (not active: made only if absent)",
                f.size, dev.path
            ),
            ops,
            (PHASE_CONTENT, format!("{}:swap:{subvol}/{rel}", dev.path)),
        );
    }

    /// A filesystem of `dev` (btrfs: the subvolume `fs_root`) that belongs at `mountpoint`.
    fn check_mount(
        &mut self,
        dev: &BlockDevice,
        mountpoint: &str,
        fs_root: &str,
        options: &[String],
        fs: &BTreeMap<String, Vec<Operation>>,
    ) {
        let t = target(&self.ctx.root, mountpoint);
        let facts = self.facts;
        let mounted = facts
            .mounts
            .iter()
            .rev()
            .find(|m| normalize_path(&m.target) == normalize_path(&t));
        match mounted {
            None => {
                let ops = fs.get(mountpoint).cloned().unwrap_or_default();
                self.push(
                    Class::Additive,
                    Kind::MountAdded,
                    format!("mount {}{} at {t}", dev.path, subvol_note(fs_root)),
                    ops,
                    (PHASE_MOUNT, t),
                );
            }
            Some(m)
                if facts.same_device(&m.source, dev)
                    && normalize_path(&m.root) == normalize_path(fs_root) =>
            {
                // btrfs keeps the options of the filesystem's first mount for all of its
                // subvolumes (compress, ssd, …): only the per-mount VFS flags can differ.
                let wanted: Vec<String> = if m.fstype == "btrfs" {
                    options
                        .iter()
                        .filter(|o| VFS_FLAGS.contains(&o.as_str()))
                        .cloned()
                        .collect()
                } else {
                    options.to_vec()
                };
                let missing = missing_options(&wanted, &m.options);
                self.mount_options_diff(
                    &format!("{}{}", dev.path, subvol_note(fs_root)),
                    &t,
                    &missing,
                );
            }
            Some(m) => self.push_destructive(
                Kind::MountTaken,
                format!("mount {}{} at {t}", dev.path, subvol_note(fs_root)),
                format!(
                    "{t} has {} ({}{}) mounted; mounting another filesystem over it would hide \
                     it: unmount it first or change the mountpoint",
                    m.source,
                    m.fstype,
                    if m.root == "/" {
                        String::new()
                    } else {
                        format!(" {}", m.root)
                    }
                ),
            ),
        }
    }

    fn mount_options_diff(&mut self, what: &str, t: &str, missing: &[String]) {
        if missing.is_empty() {
            self.same(Kind::Mount, format!("{what} mounted at {t}"));
            return;
        }
        let o = op(
            t,
            format!("remount {t} with {}", missing.join(",")),
            argv!["mount", "-o", format!("remount,{}", missing.join(",")), t],
        );
        self.push(
            Class::Additive,
            Kind::MountOptions,
            format!(
                "{what} at {t}: add mount option{} {}",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(",")
            ),
            vec![o],
            (PHASE_MOUNT, t.to_string()),
        );
    }

    /// Every mount and swap of content that is made by this update.
    fn new_mounts(&mut self, c: &Content) {
        // Device steps (opening LUKS) are left out: creating the content opened it already.
        let steps = mount::content(c, &self.ctx, Dir::Mount);
        for (key, ops) in steps.fs {
            let swap = ops
                .iter()
                .any(|o| o.argv.first().is_some_and(|a| a == "swapon"));
            let device = ops
                .iter()
                .rev()
                .find(|o| o.argv.first().is_some_and(|a| a == "mount"))
                .map(|o| o.device.clone())
                .unwrap_or_default();
            let (kind, phase, what) = if swap {
                (
                    Kind::SwapEnabled,
                    PHASE_SWAP,
                    format!("enable swap on {key}"),
                )
            } else {
                let t = target(&self.ctx.root, &key);
                (
                    Kind::MountAdded,
                    PHASE_MOUNT,
                    format!("mount {device} at {t}"),
                )
            };
            let t = if swap {
                key.clone()
            } else {
                target(&self.ctx.root, &key)
            };
            self.push(Class::Additive, kind, what, ops, (phase, t));
        }
    }
}

enum Want {
    Sectors(u64),
    Rest(u64),
}

/// Free gaps (start, end; inclusive, 1 MiB aligned starts) between `used` extents.
fn free_regions(used: &[(u64, u64)], last_usable: u64) -> Vec<(u64, u64)> {
    let mut used = used.to_vec();
    used.sort();
    let mut out = Vec::new();
    let mut cursor = ALIGN;
    for (s, e) in used {
        if s > cursor && s - cursor >= ALIGN {
            out.push((cursor, s - 1));
        }
        cursor = cursor.max((e + 1).div_ceil(ALIGN) * ALIGN);
    }
    if last_usable > cursor && last_usable + 1 - cursor >= ALIGN {
        out.push((cursor, last_usable));
    }
    out
}

/// Grow operations for filesystem `fs` on `device`, mounted at `mounted` (if it is).
fn grow_fs(fs: &str, device: &str, mounted: Option<String>) -> Result<Vec<Operation>, String> {
    let temp = format!(
        "/run/nixpave/grow/{}",
        create::btrfs_temp_dir(device).trim_start_matches("/run/nixpave/btrfs/")
    );
    let with_mount = |grow: &dyn Fn(&str) -> Operation, fstype: &str| -> Vec<Operation> {
        match &mounted {
            Some(m) => vec![grow(m)],
            None => vec![
                op(
                    device,
                    format!("mount {device} at {temp} to grow it"),
                    argv!["mount", "-t", fstype, "-o", "X-mount.mkdir", device, &temp],
                ),
                grow(&temp),
                op(device, format!("unmount {temp}"), argv!["umount", &temp]),
            ],
        }
    };
    Ok(match fs {
        "ext4" | "ext3" | "ext2" => {
            let mut ops = Vec::new();
            if mounted.is_none() {
                // resize2fs insists on a fresh check of an unmounted filesystem
                ops.push(op(
                    device,
                    format!("check {device} before growing it"),
                    argv!["e2fsck", "-f", "-p", device],
                ));
            }
            ops.push(op(
                device,
                format!(
                    "grow the {fs} filesystem on {device}{}",
                    if mounted.is_some() { " (online)" } else { "" }
                ),
                argv!["resize2fs", device],
            ));
            ops
        }
        "xfs" => with_mount(
            &|m: &str| {
                op(
                    device,
                    format!("grow the xfs filesystem mounted at {m}"),
                    argv!["xfs_growfs", m],
                )
            },
            "xfs",
        ),
        "btrfs" => with_mount(
            &|m: &str| {
                op(
                    device,
                    format!("grow the btrfs filesystem mounted at {m}"),
                    argv!["btrfs", "filesystem", "resize", "max", m],
                )
            },
            "btrfs",
        ),
        // The PV grows; its group's new free extents are then there for logical volumes.
        "LVM2_member" => vec![op(
            device,
            format!("grow the LVM physical volume on {device}"),
            argv!["pvresize", device],
        )],
        other => return Err(other.to_string()),
    })
}

/// The blkid `TYPE` that content leaves on its device (`None`: not compared).
fn expected_type(c: &Content) -> Option<&str> {
    Some(match c {
        Content::Filesystem(f) => f.format.as_str(),
        Content::Btrfs(_) => "btrfs",
        Content::Swap(s) if !s.random_encryption => "swap",
        Content::Luks(_) => "crypto_LUKS",
        Content::LvmPv(_) => "LVM2_member",
        Content::Mdraid(_) => "linux_raid_member",
        Content::Zfs(_) => "zfs_member",
        Content::Bcachefs(_) => "bcachefs",
        _ => return None,
    })
}

fn describe(c: &Content) -> String {
    match c {
        Content::Filesystem(f) => match &f.mountpoint {
            Some(mp) => format!("{} for {mp}", f.format),
            None => f.format.clone(),
        },
        Content::Btrfs(_) => "btrfs".into(),
        Content::Swap(_) => "swap".into(),
        Content::Luks(l) => format!("LUKS `{}`", l.name),
        Content::LvmPv(p) => format!("LVM PV of `{}`", p.vg),
        Content::Mdraid(m) => format!("member of mdadm `{}`", m.name),
        Content::Zfs(z) => format!("member of ZFS pool `{}`", z.pool),
        other => other.type_name().to_string(),
    }
}

/// Why content `have` cannot become `want` in place.
fn change_reason(have: &str, want: &str, device: &str) -> String {
    let container = |t: &str| {
        matches!(
            t,
            "crypto_LUKS" | "linux_raid_member" | "LVM2_member" | "zfs_member"
        )
    };
    if have == "crypto_LUKS" || want == "crypto_LUKS" {
        format!(
            "adding or removing LUKS on {device} rewrites the whole device and its header; the \
             data on it would have to be re-encrypted or copied off first"
        )
    } else if container(have) || container(want) {
        format!(
            "{device} is {have}; making it {want} changes the RAID, LVM or ZFS structure, which \
             means recreating it and losing what it holds"
        )
    } else {
        format!(
            "{device} holds {have}; making it {want} means formatting it, which erases its data \
             (copy the data off first, or keep {have} in the layout)"
        )
    }
}

/// True when ZFS lists value `have` for property `k` that the layout gives as `want`: the same
/// word, the same size (`128K` = `131072`), or `encryption=on` met by a cipher name.
fn zfs_value_eq(k: &str, want: &str, have: &str) -> bool {
    if want.eq_ignore_ascii_case(have) {
        return true;
    }
    if k == "encryption" && want == "on" {
        return have != "off";
    }
    let bytes = |v: &str| match crate::model::size::parse_size(v) {
        Ok(crate::model::size::Size::Bytes(b)) => Some(b),
        _ => None,
    };
    bytes(want).is_some_and(|w| Some(w) == bytes(have))
}

fn subvol_note(fs_root: &str) -> String {
    if fs_root == "/" {
        String::new()
    } else {
        format!(" (subvolume {})", fs_root.trim_start_matches('/'))
    }
}

/// Mount flags the VFS keeps per mount (not per filesystem).
const VFS_FLAGS: [&str; 10] = [
    "ro",
    "rw",
    "nosuid",
    "nodev",
    "noexec",
    "noatime",
    "nodiratime",
    "relatime",
    "strictatime",
    "nosymfollow",
];

/// Layout mount options that the live mount does not show. Options that never show in the
/// mount table (`defaults`, `nofail`, `x-systemd.*`, …) are not compared; `compress=zstd` is
/// satisfied by `compress=zstd:3`.
fn missing_options(wanted: &[String], live: &[String]) -> Vec<String> {
    const INVISIBLE: [&str; 8] = [
        "defaults", "nofail", "auto", "noauto", "_netdev", "user", "nouser", "users",
    ];
    wanted
        .iter()
        .filter(|o| {
            !INVISIBLE.contains(&o.as_str())
                && !o.starts_with("x-")
                && !o.starts_with("X-")
                && !o.starts_with("subvol=")
                && !o.starts_with("comment=")
        })
        .filter(|o| !shown(o, live))
        .cloned()
        .collect()
}

/// True when the mount table shows option `o`: as is, with a level (`compress=zstd:3`), with a
/// value (`discard=async`), or as vfat spells `umask=077` (`fmask=0077,dmask=0077`).
fn shown(o: &str, live: &[String]) -> bool {
    let has = |want: &str| {
        live.iter().any(|l| {
            l == want
                || l.starts_with(&format!("{want}:"))
                || (!want.contains('=') && l.starts_with(&format!("{want}=")))
        })
    };
    if has(o) {
        return true;
    }
    if let Some(mask) = o.strip_prefix("umask=") {
        let octal = |v: &str| u32::from_str_radix(v, 8).ok();
        let want = octal(mask);
        let mask_of = |key: &str| {
            live.iter()
                .find_map(|l| l.strip_prefix(key))
                .and_then(octal)
        };
        return want.is_some() && mask_of("fmask=") == want && mask_of("dmask=") == want;
    }
    false
}

/// The type GUID of the sgdisk codes layouts use (a GUID stays itself); `None` when unknown.
fn type_guid(code: &str) -> Option<String> {
    if code.len() == 36 && code.matches('-').count() == 4 {
        return Some(code.to_ascii_lowercase());
    }
    Some(
        match code.to_ascii_uppercase().as_str() {
            "EF00" => "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            "EF02" => "21686148-6449-6e6f-744e-656564454649",
            "8300" => "0fc63daf-8483-4772-8e79-3d69d8477de4",
            "8200" => "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
            "8E00" => "e6d6d379-f507-44c2-a23c-238f2a3df928",
            "FD00" => "a19d880f-05fc-4d3b-a006-743f0f84911e",
            "8309" => "ca7d7ccb-63ed-4c53-861c-1742536059cc",
            "8304" => "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
            _ => return None,
        }
        .to_string(),
    )
}

/// Bytes as MiB (or GiB) for humans.
fn mib(bytes: u64) -> String {
    let m = bytes >> 20;
    if m >= 10 * 1024 && m.is_multiple_of(1024) {
        format!("{} GiB", m >> 10)
    } else {
        format!("{m} MiB")
    }
}

/// The update plan for humans: grouped by class, destructive differences with their reason.
pub fn render_human(u: &UpdatePlan) -> String {
    let mut out = String::new();
    for class in [
        Class::AlreadyThere,
        Class::Additive,
        Class::Growable,
        Class::Destructive,
    ] {
        let diffs: Vec<&Difference> = u.of(class).collect();
        out.push_str(&format!("{} ({}):\n", class.heading(), diffs.len()));
        for d in diffs {
            let mark = match class {
                Class::AlreadyThere => "=",
                Class::Additive => "+",
                Class::Growable => "^",
                Class::Destructive => "!",
            };
            out.push_str(&format!("  {mark} {}\n", d.description));
            if let Some(why) = &d.why {
                out.push_str(&format!("      why not: {why}\n"));
            }
            for o in &d.operations {
                out.push_str(&format!(
                    "      $ {}\n",
                    nixpave_remote::shell_join(&o.argv)
                ));
            }
        }
    }
    if !u.not_compared.is_empty() {
        out.push_str("not compared (left alone):\n");
        for n in &u.not_compared {
            out.push_str(&format!("  - {n}\n"));
        }
    }
    let additive = u.of(Class::Additive).count();
    let growable = u.of(Class::Growable).count();
    let destructive = u.of(Class::Destructive).count();
    out.push_str(&format!(
        "Summary: {additive} additive and {growable} growable change(s), {} step(s); {destructive} destructive difference(s){}\n",
        u.plan().operations.len(),
        if destructive > 0 {
            ": apply refuses until the layout drops them, or leaves them out with --skip-destructive"
        } else {
            ""
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_compare_as_the_mount_table_shows_them() {
        let live: Vec<String> = [
            "rw",
            "noatime",
            "compress=zstd:3",
            "discard=async",
            "fmask=0077",
            "dmask=0077",
        ]
        .map(String::from)
        .to_vec();
        let want: Vec<String> = [
            "defaults",
            "noatime",
            "compress=zstd",
            "discard",
            "umask=0077",
            "nofail",
            "x-systemd.automount",
        ]
        .map(String::from)
        .to_vec();
        assert!(missing_options(&want, &live).is_empty());
        let want: Vec<String> = ["nodev", "umask=0022", "compress=lzo"]
            .map(String::from)
            .to_vec();
        assert_eq!(missing_options(&want, &live), want);
    }

    #[test]
    fn free_regions_are_aligned_gaps() {
        assert_eq!(free_regions(&[], 10_000), vec![(2048, 10_000)]);
        assert_eq!(
            free_regions(&[(2048, 4095), (8192, 9000)], 20_479),
            vec![(4096, 8191), (10_240, 20_479)]
        );
        assert!(free_regions(&[(2048, 20_000)], 20_479).is_empty());
    }
}
