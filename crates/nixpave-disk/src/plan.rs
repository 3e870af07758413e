//! The plan: an ordered list of commands with the conditions under which each one runs.
//!
//! A plan is data. The planner produces it without touching any machine; the executor probes
//! the machine to evaluate each [`Guard`] and runs the operations whose guard holds.

use serde::{Deserialize, Serialize};

/// What a plan does, as in disko's `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Wipe every disk of the layout.
    #[serde(rename = "destroy")]
    Destroy,
    /// Create partitions, devices and filesystems that do not exist yet.
    #[serde(rename = "format")]
    Format,
    /// Open devices and mount filesystems under the root mountpoint.
    #[serde(rename = "mount")]
    Mount,
    /// Unmount filesystems and close devices.
    #[serde(rename = "unmount")]
    Unmount,
    /// `format` then `mount`.
    #[serde(rename = "format,mount")]
    FormatMount,
    /// `destroy`, `format`, then `mount`.
    #[serde(rename = "destroy,format,mount")]
    DestroyFormatMount,
    /// Bring live disks in line with a changed layout without wiping: only additions and
    /// growth (see [`crate::planner::update`]).
    #[serde(rename = "update")]
    Update,
}

impl Mode {
    /// All modes, in the spelling the CLI accepts.
    pub const ALL: [Mode; 7] = [
        Mode::Format,
        Mode::Mount,
        Mode::Unmount,
        Mode::Destroy,
        Mode::FormatMount,
        Mode::DestroyFormatMount,
        Mode::Update,
    ];

    /// The CLI spelling, e.g. `format,mount`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Destroy => "destroy",
            Mode::Format => "format",
            Mode::Mount => "mount",
            Mode::Unmount => "unmount",
            Mode::FormatMount => "format,mount",
            Mode::DestroyFormatMount => "destroy,format,mount",
            Mode::Update => "update",
        }
    }

    /// True when the mode wipes disks.
    pub fn destroys(self) -> bool {
        matches!(self, Mode::Destroy | Mode::DestroyFormatMount)
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = Mode::ALL.iter().map(|m| m.as_str()).collect();
                format!("unknown mode `{s}` (expected one of: {})", all.join(", "))
            })
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A whole plan, as printed by `nixpave disk plan --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The mode the plan was made for.
    pub mode: Mode,
    /// Operations in the order they run.
    pub operations: Vec<Operation>,
}

/// One command of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// Exactly the command that runs (no shell). Device paths may be udev-style
    /// (`/dev/disk/by-partlabel/…`); the executor resolves them from the kernel's view.
    pub argv: Vec<String>,
    /// The device (or mountpoint / pool / VG name) the operation acts on.
    pub device: String,
    /// True when the operation can destroy data.
    pub destructive: bool,
    /// One line for humans, e.g. `create partition 1 (ESP) on /dev/vda`.
    pub description: String,
    /// Run only when this condition holds on the machine; `None` runs always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    /// What to feed on standard input (a confirmation, or a secret read at run time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<StdinSource>,
}

/// Standard input for an operation. Secrets are referenced, never embedded in the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StdinSource {
    /// Literal text, e.g. `y\n` for `mdadm --create`.
    Text {
        /// The text to feed.
        text: String,
    },
    /// The contents of a file on the machine that runs the operation.
    File {
        /// Absolute path of the file.
        path: String,
    },
    /// A password asked interactively once (twice when `confirm`) and cached by `name`.
    Prompt {
        /// Cache key and prompt subject, e.g. the LUKS device name.
        name: String,
        /// Ask twice and compare (when creating).
        confirm: bool,
    },
}

/// A condition probed on the machine right before an operation runs. Guards make plans
/// idempotent: running `format` twice changes nothing the second time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Guard {
    /// The device carries no signature at all (no partition table, no filesystem): `blkid` finds nothing.
    DeviceBlank {
        /// Device path.
        device: String,
    },
    /// The device has no filesystem/volume signature (`blkid` reports no `TYPE`).
    NoFilesystem {
        /// Device path.
        device: String,
    },
    /// The device is not a LUKS container.
    NotLuks {
        /// Device path.
        device: String,
    },
    /// Partition `number` does not exist on `disk` yet.
    PartitionAbsent {
        /// Disk path.
        disk: String,
        /// 1-based partition number.
        number: u32,
    },
    /// Partition `number` exists on `disk` (its name and type are then brought in line).
    PartitionPresent {
        /// Disk path.
        disk: String,
        /// 1-based partition number.
        number: u32,
    },
    /// Nothing exists at this path (device node or file).
    PathAbsent {
        /// Absolute path.
        path: String,
    },
    /// Something exists at this path.
    PathExists {
        /// Absolute path.
        path: String,
    },
    /// `device` is not mounted at `target`.
    NotMounted {
        /// Device (or source) path.
        device: String,
        /// Mount target.
        target: String,
    },
    /// Something is mounted at `target`.
    Mounted {
        /// Mount target.
        target: String,
    },
    /// The swap device or file is not active.
    SwapInactive {
        /// Device or file path.
        device: String,
    },
    /// The swap device or file is active.
    SwapActive {
        /// Device or file path.
        device: String,
    },
    /// The LVM volume group does not exist.
    VgAbsent {
        /// Volume group name.
        vg: String,
    },
    /// The logical volume does not exist.
    LvAbsent {
        /// Volume group name.
        vg: String,
        /// Logical volume name.
        lv: String,
    },
    /// The ZFS pool is not imported.
    PoolAbsent {
        /// Pool name.
        pool: String,
    },
    /// The ZFS pool is imported.
    PoolPresent {
        /// Pool name.
        pool: String,
    },
    /// The ZFS dataset or volume does not exist.
    DatasetAbsent {
        /// Full dataset name, e.g. `zroot/root`.
        dataset: String,
    },
    /// The btrfs subvolume does not exist at this path.
    SubvolumeAbsent {
        /// Absolute path of the subvolume.
        path: String,
    },
    /// The ZFS key of the dataset is not loaded.
    KeyUnavailable {
        /// Dataset name.
        dataset: String,
    },
    /// The ZFS key of the dataset is loaded (`zfs get keystatus` says `available`).
    KeyAvailable {
        /// Dataset name.
        dataset: String,
    },
    /// The key file does not open the LUKS container yet (`cryptsetup open --test-passphrase
    /// --key-file KEY DEVICE` fails), so `luksAddKey` would add a new key slot.
    LuksKeyMissing {
        /// The LUKS device.
        device: String,
        /// The key file to be added.
        key_file: String,
    },
    /// A ZFS pool of this name is not imported but can be imported (`zpool import` lists it),
    /// e.g. left by an earlier install: `format` imports it instead of re-creating it.
    PoolImportable {
        /// Pool name.
        pool: String,
    },
    /// The md array is not running but every member carries an md superblock (blkid `TYPE`
    /// `linux_raid_member`), e.g. after `unmount` stopped it: `mdadm --assemble` brings it back
    /// with its data instead of `mdadm --create` building a new one.
    MdAssemblable {
        /// The array, e.g. `/dev/md/raid1`.
        array: String,
        /// Its member devices.
        members: Vec<String>,
    },
}
