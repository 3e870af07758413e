//! The layout model: every disko type with disko's defaults already applied.
//!
//! Built from the JSON of `disko.devices` by [`Layout::from_json`] (see `parse`), then checked
//! by `validate`. Every device path a child uses is resolved here (partition labels, by-partuuid,
//! md partition links, `/dev/mapper/<name>`, `/dev/<vg>/<lv>`, `/dev/zvol/<pool>/<name>`), so the
//! planner only walks the tree.

use std::collections::BTreeMap;

pub mod error;
pub mod label;
mod parse;
pub mod size;
pub(crate) mod validate;

pub use error::LayoutError;

/// The six hook scripts every disko type accepts (bash snippets, empty when unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Runs before the node's create step.
    pub pre_create: String,
    /// Runs after the node's create step.
    pub post_create: String,
    /// Runs before the node's mount step.
    pub pre_mount: String,
    /// Runs after the node's mount step.
    pub post_mount: String,
    /// Runs before the node's unmount step.
    pub pre_unmount: String,
    /// Runs after the node's unmount step.
    pub post_unmount: String,
}

/// A whole layout (`disko.devices`). Maps iterate in Nix attribute order (byte order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layout {
    /// `disk.<name>`.
    pub disk: BTreeMap<String, Disk>,
    /// `mdadm.<name>`.
    pub mdadm: BTreeMap<String, Mdadm>,
    /// `zpool.<name>`.
    pub zpool: BTreeMap<String, Zpool>,
    /// `lvm_vg.<name>`.
    pub lvm_vg: BTreeMap<String, LvmVg>,
    /// `nodev.<mountpoint>`.
    pub nodev: BTreeMap<String, Nodev>,
    /// `bcachefs_filesystems.<name>`.
    pub bcachefs_filesystems: BTreeMap<String, BcachefsFilesystem>,
}

/// One disk of [`Layout::disks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Attribute name (`disk.<name>`).
    pub name: String,
    /// Device path.
    pub device: String,
    /// False when the destroy stage must leave the disk alone.
    pub destroy: bool,
}

impl Layout {
    /// The disks of the layout in attribute order.
    pub fn disks(&self) -> Vec<DiskInfo> {
        self.disk
            .iter()
            .map(|(key, d)| DiskInfo {
                name: key.clone(),
                device: d.device.clone(),
                destroy: d.destroy,
            })
            .collect()
    }

    /// Parses and validates the JSON of `disko.devices` (or of a whole `{ disko.devices = …; }`).
    pub fn from_json(value: &serde_json::Value) -> Result<Layout, LayoutError> {
        let layout = parse::layout(value)?;
        validate::layout(&layout)?;
        Ok(layout)
    }
}

/// `disk.<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    /// `name` (attribute name with `/` replaced by `_`).
    pub name: String,
    /// `device`.
    pub device: String,
    /// `destroy` (default true).
    pub destroy: bool,
    /// `imageName` (default: name).
    pub image_name: String,
    /// `imageSize` (default "2G").
    pub image_size: String,
    /// `content`.
    pub content: Option<Content>,
    /// Hooks.
    pub hooks: Hooks,
}

/// What a device holds (`content`), tagged by `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// `type = "gpt"`.
    Gpt(Gpt),
    /// `type = "table"` (legacy msdos/gpt via parted).
    Table(Table),
    /// `type = "filesystem"`.
    Filesystem(Filesystem),
    /// `type = "btrfs"`.
    Btrfs(Btrfs),
    /// `type = "luks"`.
    Luks(Box<Luks>),
    /// `type = "lvm_pv"`.
    LvmPv(LvmPv),
    /// `type = "mdraid"`.
    Mdraid(Mdraid),
    /// `type = "zfs"`.
    Zfs(Zfs),
    /// `type = "swap"`.
    Swap(Swap),
    /// `type = "bcachefs"`.
    Bcachefs(Bcachefs),
}

impl Content {
    /// The disko `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            Content::Gpt(_) => "gpt",
            Content::Table(_) => "table",
            Content::Filesystem(_) => "filesystem",
            Content::Btrfs(_) => "btrfs",
            Content::Luks(_) => "luks",
            Content::LvmPv(_) => "lvm_pv",
            Content::Mdraid(_) => "mdraid",
            Content::Zfs(_) => "zfs",
            Content::Swap(_) => "swap",
            Content::Bcachefs(_) => "bcachefs",
        }
    }
}

/// `type = "gpt"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt {
    /// `device` (the parent's device).
    pub device: String,
    /// `efiGptPartitionFirst` (default true).
    pub efi_gpt_partition_first: bool,
    /// Partitions sorted by priority then name; `index` is their 1-based number.
    pub partitions: Vec<GptPartition>,
    /// Hooks.
    pub hooks: Hooks,
}

/// A GPT partition.
#[derive(Debug, Clone, PartialEq)]
pub struct GptPartition {
    /// Attribute name.
    pub key: String,
    /// `name` (default: attribute name).
    pub name: String,
    /// 1-based partition number after sorting.
    pub index: usize,
    /// `type`: sgdisk code (`EF00`) or GUID.
    pub type_code: String,
    /// `attributes`: GPT attribute bits to set.
    pub attributes: Vec<u64>,
    /// `uuid` (partition GUID); `None` lets sgdisk pick one.
    pub uuid: Option<String>,
    /// `label` (GPT partition name).
    pub label: String,
    /// `device`: the path children use.
    pub device: String,
    /// `size` as written (`"0"`, `"512M"`, `"100%"`).
    pub size: String,
    /// `start` (sgdisk syntax, default "0").
    pub start: String,
    /// `end` (sgdisk syntax).
    pub end: String,
    /// `alignment` (0 = sgdisk's default).
    pub alignment: u64,
    /// `priority`.
    pub priority: i64,
    /// `hybrid` MBR entry.
    pub hybrid: Option<Hybrid>,
    /// `content`.
    pub content: Option<Content>,
}

/// A GPT partition's entry in a hybrid MBR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hybrid {
    /// `mbrPartitionType` (hex MBR type), if any.
    pub mbr_partition_type: Option<String>,
    /// `mbrBootableFlag`.
    pub mbr_bootable_flag: bool,
}

/// `type = "table"` (legacy).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// `device`.
    pub device: String,
    /// `format`: `gpt` or `msdos`.
    pub format: String,
    /// Partitions in list order.
    pub partitions: Vec<TablePartition>,
    /// Hooks.
    pub hooks: Hooks,
}

/// A legacy table partition.
#[derive(Debug, Clone, PartialEq)]
pub struct TablePartition {
    /// 1-based number (list position).
    pub index: usize,
    /// `part-type`: primary, logical or extended.
    pub part_type: String,
    /// `fs-type` hint for parted.
    pub fs_type: Option<String>,
    /// `name` (GPT partition name).
    pub name: Option<String>,
    /// `start` (parted syntax).
    pub start: String,
    /// `end` (parted syntax).
    pub end: String,
    /// `flags`.
    pub flags: Vec<String>,
    /// `bootable`.
    pub bootable: bool,
    /// The partition's device node.
    pub device: String,
    /// `content`.
    pub content: Option<Content>,
}

/// `type = "filesystem"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filesystem {
    /// `device`.
    pub device: String,
    /// `format` (`mkfs.<format>`).
    pub format: String,
    /// `extraArgs` (one argv word each).
    pub extra_args: Vec<String>,
    /// `mountOptions` (default ["defaults"]).
    pub mount_options: Vec<String>,
    /// `mountpoint`.
    pub mountpoint: Option<String>,
    /// Hooks.
    pub hooks: Hooks,
}

/// `type = "btrfs"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Btrfs {
    /// `device`.
    pub device: String,
    /// `extraArgs` (split on whitespace, as disko joins them unescaped).
    pub extra_args: Vec<String>,
    /// `mountOptions`.
    pub mount_options: Vec<String>,
    /// `mountpoint`.
    pub mountpoint: Option<String>,
    /// `swap`: swap files at the top level.
    pub swap: BTreeMap<String, SwapFile>,
    /// `subvolumes`.
    pub subvolumes: BTreeMap<String, Subvolume>,
    /// Hooks.
    pub hooks: Hooks,
}

/// A btrfs subvolume.
#[derive(Debug, Clone, PartialEq)]
pub struct Subvolume {
    /// `name` (default: attribute name), e.g. `/root`.
    pub name: String,
    /// `extraArgs` for `btrfs subvolume create`.
    pub extra_args: Vec<String>,
    /// `mountOptions`.
    pub mount_options: Vec<String>,
    /// `mountpoint`.
    pub mountpoint: Option<String>,
    /// `swap`: swap files inside the subvolume.
    pub swap: BTreeMap<String, SwapFile>,
}

/// A btrfs swap file.
#[derive(Debug, Clone, PartialEq)]
pub struct SwapFile {
    /// `size`.
    pub size: String,
    /// `path` (default: attribute name), relative to its subvolume.
    pub path: String,
    /// `priority`.
    pub priority: Option<i64>,
    /// `options`.
    pub options: Vec<String>,
}

/// `type = "luks"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Luks {
    /// `device`.
    pub device: String,
    /// `name` (`/dev/mapper/<name>`).
    pub name: String,
    /// `keyFile` (deprecated).
    pub key_file: Option<String>,
    /// `passwordFile`.
    pub password_file: Option<String>,
    /// `askPassword`.
    pub ask_password: bool,
    /// `settings` (copied to `boot.initrd.luks.devices.<name>`).
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// `additionalKeyFiles`.
    pub additional_key_files: Vec<String>,
    /// `initrdUnlock`.
    pub initrd_unlock: bool,
    /// `extraFormatArgs` (split on whitespace).
    pub extra_format_args: Vec<String>,
    /// `extraOpenArgs` (split on whitespace).
    pub extra_open_args: Vec<String>,
    /// `content`.
    pub content: Option<Content>,
    /// Hooks.
    pub hooks: Hooks,
}

/// `type = "lvm_pv"`.
#[derive(Debug, Clone, PartialEq)]
pub struct LvmPv {
    /// `device`.
    pub device: String,
    /// `vg`.
    pub vg: String,
    /// Hooks.
    pub hooks: Hooks,
}

/// `lvm_vg.<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct LvmVg {
    /// `name`.
    pub name: String,
    /// LVs sorted by priority then name.
    pub lvs: Vec<Lv>,
    /// Hooks.
    pub hooks: Hooks,
}

/// A logical volume.
#[derive(Debug, Clone, PartialEq)]
pub struct Lv {
    /// `name`.
    pub name: String,
    /// `size` (`10G`, `100%FREE`, `50%`).
    pub size: String,
    /// `lvm_type`.
    pub lvm_type: Option<String>,
    /// `pool` (thin LVs).
    pub pool: Option<String>,
    /// `extraArgs`.
    pub extra_args: Vec<String>,
    /// `priority`.
    pub priority: i64,
    /// `/dev/<vg>/<name>`.
    pub device: String,
    /// `content`.
    pub content: Option<Content>,
}

/// `type = "mdraid"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mdraid {
    /// `device`.
    pub device: String,
    /// `name` of the mdadm array.
    pub name: String,
    /// Hooks.
    pub hooks: Hooks,
}

/// `mdadm.<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mdadm {
    /// `name`.
    pub name: String,
    /// `level`.
    pub level: i64,
    /// `metadata`.
    pub metadata: String,
    /// `extraArgs` (one argv word each).
    pub extra_args: Vec<String>,
    /// `/dev/md/<name>`.
    pub device: String,
    /// `content`.
    pub content: Option<Content>,
    /// Hooks.
    pub hooks: Hooks,
}

/// `type = "zfs"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Zfs {
    /// `device`.
    pub device: String,
    /// `pool`.
    pub pool: String,
    /// Hooks.
    pub hooks: Hooks,
}

/// A vdev: `mode` ("" for plain devices, mirror, raidz…) and its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vdev {
    /// `mode`.
    pub mode: String,
    /// `members` (absolute paths or disk names).
    pub members: Vec<String>,
}

/// `zpool.<name>.mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZpoolMode {
    /// "", mirror, raidz, raidz1, raidz2, raidz3.
    Simple(String),
    /// `{ topology = { … }; }`.
    Topology(Topology),
}

/// A prescribed zpool topology.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    /// `vdev`.
    pub vdev: Vec<Vdev>,
    /// `spare`.
    pub spare: Vec<String>,
    /// `log`.
    pub log: Vec<Vdev>,
    /// `dedup`.
    pub dedup: Vec<Vdev>,
    /// `special`.
    pub special: Vec<Vdev>,
    /// `cache`.
    pub cache: Vec<String>,
}

/// `zpool.<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Zpool {
    /// `name`.
    pub name: String,
    /// `mode`.
    pub mode: ZpoolMode,
    /// `options` (`-o`).
    pub options: BTreeMap<String, String>,
    /// `rootFsOptions` (`-O`).
    pub root_fs_options: BTreeMap<String, String>,
    /// `mountpoint`.
    pub mountpoint: Option<String>,
    /// `mountOptions`.
    pub mount_options: Vec<String>,
    /// `datasets`.
    pub datasets: BTreeMap<String, Dataset>,
    /// Hooks.
    pub hooks: Hooks,
}

/// A ZFS dataset or volume.
// Few datasets per layout: boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Dataset {
    /// `type = "zfs_fs"`.
    Fs(ZfsFs),
    /// `type = "zfs_volume"`.
    Volume(ZfsVolume),
}

/// `type = "zfs_fs"`.
#[derive(Debug, Clone, PartialEq)]
pub struct ZfsFs {
    /// `name` relative to the pool.
    pub name: String,
    /// `<pool>/<name>`.
    pub full_name: String,
    /// `options` (`-o k=v`).
    pub options: BTreeMap<String, String>,
    /// `mountOptions`.
    pub mount_options: Vec<String>,
    /// `mountpoint`.
    pub mountpoint: Option<String>,
    /// Hooks.
    pub hooks: Hooks,
}

/// `type = "zfs_volume"`.
#[derive(Debug, Clone, PartialEq)]
pub struct ZfsVolume {
    /// `name` relative to the pool.
    pub name: String,
    /// `<pool>/<name>`.
    pub full_name: String,
    /// `options`.
    pub options: BTreeMap<String, String>,
    /// `extraArgs`.
    pub extra_args: Vec<String>,
    /// `size`.
    pub size: Option<String>,
    /// `/dev/zvol/<pool>/<name>`.
    pub device: String,
    /// `content`.
    pub content: Option<Content>,
    /// Hooks.
    pub hooks: Hooks,
}

/// `type = "swap"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Swap {
    /// `device`.
    pub device: String,
    /// `discardPolicy`: once, pages or both.
    pub discard_policy: Option<String>,
    /// `extraArgs`.
    pub extra_args: Vec<String>,
    /// `mountOptions`.
    pub mount_options: Vec<String>,
    /// `priority`.
    pub priority: Option<i64>,
    /// `randomEncryption`.
    pub random_encryption: bool,
    /// `resumeDevice`.
    pub resume_device: bool,
    /// Hooks.
    pub hooks: Hooks,
}

/// `nodev.<mountpoint>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Nodev {
    /// `fsType`.
    pub fs_type: String,
    /// `device`.
    pub device: String,
    /// `mountpoint` (default: attribute name).
    pub mountpoint: String,
    /// `mountOptions`.
    pub mount_options: Vec<String>,
    /// Hooks.
    pub hooks: Hooks,
}

/// `type = "bcachefs"` (a member device of a bcachefs filesystem).
#[derive(Debug, Clone, PartialEq)]
pub struct Bcachefs {
    /// `device`.
    pub device: String,
    /// `filesystem`.
    pub filesystem: String,
    /// `extraFormatArgs`.
    pub extra_format_args: Vec<String>,
    /// `label`.
    pub label: String,
    /// Hooks.
    pub hooks: Hooks,
}

/// `bcachefs_filesystems.<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct BcachefsFilesystem {
    /// `name`.
    pub name: String,
    /// `extraFormatArgs`.
    pub extra_format_args: Vec<String>,
    /// `mountOptions`.
    pub mount_options: Vec<String>,
    /// `mountpoint`.
    pub mountpoint: Option<String>,
    /// `uuid`.
    pub uuid: String,
    /// `passwordFile`.
    pub password_file: Option<String>,
    /// `subvolumes`.
    pub subvolumes: BTreeMap<String, BcachefsSubvolume>,
    /// Hooks.
    pub hooks: Hooks,
}

/// A bcachefs subvolume.
#[derive(Debug, Clone, PartialEq)]
pub struct BcachefsSubvolume {
    /// `name`.
    pub name: String,
    /// `mountOptions`.
    pub mount_options: Vec<String>,
    /// `mountpoint`.
    pub mountpoint: Option<String>,
}
