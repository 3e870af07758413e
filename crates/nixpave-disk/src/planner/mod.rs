//! The pure planner: layout + mode → [`Plan`]. No IO.
//!
//! Order follows disko: top-level devices by kind and name, topologically sorted by what they
//! consume; `format` creates each device's tree depth first; `mount` opens devices in that order,
//! then mounts filesystems parents first; `unmount` does the reverse.
//!
//! Every "only if" of disko's scripts is a [`crate::Guard`] on the operation, so `format` run
//! twice changes nothing. Deliberate differences from disko's scripts:
//! - `zfs load-key`/`unload-key` of an encrypted zfs_volume use the full `<pool>/<name>`
//!   (disko passes the bare name, which fails: disko #1139).
//! - `modprobe` loads real module names (`dm-raid`, `dm-thin-pool`) instead of `dm-<lvm_type>`;
//!   `boot.initrd.kernelModules` keeps disko's list.
//! - `luksAddKey` runs only when the key file does not open the container yet; an existing
//!   partition keeps its GUID when its name/type are brought in line (disko re-randomises it).
//! - Subvolumes are created through a temporary mount at `/run/nixpave/btrfs/<device>`.
//! - Not done (as in disko's current scripts but left out here): `zfs set` on datasets that
//!   already exist, `zvol_wait`/`partprobe`/`udevadm` (the executor re-reads partitions itself).

use std::collections::BTreeMap;

mod create;
pub use create::btrfs_temp_dir;
mod mount;
mod ops;
mod sizes;
pub mod update;

use crate::model::validate::{device_order, members, TopDevice};
use crate::model::{Content, Layout, LayoutError};
use crate::plan::{Mode, Operation, Plan};
use mount::Dir;
use ops::{argv, op, OpExt};

pub use sizes::check_disk_sizes;

/// Options of [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// Where the target system is mounted (disko's `--root-mountpoint`, default `/mnt`).
    pub root_mountpoint: String,
    /// Known sizes in bytes of whole disks by device path (from facts); partitions that cannot
    /// fit are refused. Disks not listed are not checked.
    pub disk_sizes: BTreeMap<String, u64>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            root_mountpoint: "/mnt".to_string(),
            disk_sizes: BTreeMap::new(),
        }
    }
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The layout is invalid (or does not fit the known disk sizes).
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The root mountpoint is not an absolute path.
    #[error("root mountpoint `{0}` is not an absolute path")]
    RootMountpoint(String),
    /// `update` compares the layout with the live disks: it needs their facts
    /// ([`update::update`]), not just the layout.
    #[error("mode `update` needs the machine's facts: use planner::update::update")]
    NeedsFacts,
}

/// Walk state shared by the stage builders.
pub(crate) struct Ctx {
    /// Root mountpoint.
    pub root: String,
}

/// Makes the plan for `mode`.
pub fn plan(layout: &Layout, mode: Mode, options: &PlanOptions) -> Result<Plan, PlanError> {
    if !options.root_mountpoint.starts_with('/') {
        return Err(PlanError::RootMountpoint(options.root_mountpoint.clone()));
    }
    if mode == Mode::Update {
        return Err(PlanError::NeedsFacts);
    }
    check_disk_sizes(layout, &options.disk_sizes)?;
    let order = device_order(layout)?;
    let mut ctx = Ctx {
        root: options.root_mountpoint.clone(),
    };
    let mut operations = Vec::new();
    if mode.destroys() {
        operations.extend(destroy(layout));
    }
    if matches!(
        mode,
        Mode::Format | Mode::FormatMount | Mode::DestroyFormatMount
    ) {
        for d in &order {
            operations.extend(create_device(layout, d, &mut ctx));
        }
    }
    if matches!(
        mode,
        Mode::Mount | Mode::FormatMount | Mode::DestroyFormatMount
    ) {
        operations.extend(stage(layout, &order, &ctx, Dir::Mount));
    }
    if mode == Mode::Unmount {
        operations.extend(stage(layout, &order, &ctx, Dir::Unmount));
    }
    Ok(Plan { mode, operations })
}

fn destroy(layout: &Layout) -> Vec<Operation> {
    let mut out = Vec::new();
    for d in layout.disk.values().filter(|d| d.destroy) {
        let dev = &d.device;
        out.push(
            op(
                dev,
                format!("wipe every signature (partition table, filesystems) from {dev}"),
                argv!["wipefs", "--all", "-f", dev],
            )
            .destructive(),
        );
        out.push(
            op(
                dev,
                format!("zero the MBR boot code of {dev}"),
                argv![
                    "dd",
                    "if=/dev/zero",
                    format!("of={dev}"),
                    "bs=440",
                    "count=1",
                    "conv=notrunc"
                ],
            )
            .destructive(),
        );
    }
    out
}

/// The member devices of the aggregate device `kind`/`name` (an md array, a VG, a pool).
fn member_devices(layout: &Layout, kind: &'static str, name: &str) -> Vec<String> {
    members(layout)
        .get(&(kind, name.to_string()))
        .map(|ms| ms.iter().map(|(dev, _, _)| dev.clone()).collect())
        .unwrap_or_default()
}

fn create_device(layout: &Layout, d: &TopDevice, ctx: &mut Ctx) -> Vec<Operation> {
    let member_devs = |kind: &'static str, name: &str| member_devices(layout, kind, name);
    match d.kind {
        "disk" => {
            let disk = &layout.disk[&d.name];
            let mut out = Vec::new();
            out.extend(ops::hook(
                &disk.hooks.pre_create,
                &disk.device,
                "preCreateHook",
            ));
            if let Some(c) = &disk.content {
                out.extend(create::content(c, ctx));
            }
            out.extend(ops::hook(
                &disk.hooks.post_create,
                &disk.device,
                "postCreateHook",
            ));
            out
        }
        "lvm_vg" => create::lvm_vg(
            &layout.lvm_vg[&d.name],
            &member_devs("lvm_vg", &d.name),
            ctx,
        ),
        "mdadm" => create::mdadm(&layout.mdadm[&d.name], &member_devs("mdadm", &d.name), ctx),
        "zpool" => create::zpool(&layout.zpool[&d.name], &member_devs("zpool", &d.name), ctx),
        "bcachefs_filesystems" => {
            let fs = &layout.bcachefs_filesystems[&d.name];
            let mut ms = Vec::new();
            for (_, _, c) in crate::model::validate::contents(layout) {
                if let Content::Bcachefs(b) = c {
                    if b.filesystem == d.name {
                        let mut args = Vec::new();
                        if !b.label.is_empty() {
                            args.push(format!("--label={}", b.label));
                        }
                        args.extend(b.extra_format_args.iter().cloned());
                        ms.push(create::BcachefsMember {
                            device: b.device.clone(),
                            args,
                        });
                    }
                }
            }
            create::bcachefs(fs, &ms, ctx)
        }
        _ => Vec::new(), // nodev: nothing to create
    }
}

fn device_steps(layout: &Layout, d: &TopDevice, ctx: &Ctx, dir: Dir) -> mount::Steps {
    match d.kind {
        "disk" => {
            let disk = &layout.disk[&d.name];
            let mut s = disk
                .content
                .as_ref()
                .map(|c| mount::content(c, ctx, dir))
                .unwrap_or_default();
            let (pre, post) = match dir {
                Dir::Mount => (&disk.hooks.pre_mount, &disk.hooks.post_mount),
                Dir::Unmount => (&disk.hooks.pre_unmount, &disk.hooks.post_unmount),
            };
            let mut dev: Vec<Operation> =
                ops::hook(pre, &disk.device, "hook").into_iter().collect();
            dev.append(&mut s.dev);
            dev.extend(ops::hook(post, &disk.device, "hook"));
            s.dev = dev;
            s
        }
        "lvm_vg" => mount::lvm_vg(&layout.lvm_vg[&d.name], ctx, dir),
        "mdadm" => mount::mdadm(
            &layout.mdadm[&d.name],
            &member_devices(layout, "mdadm", &d.name),
            ctx,
            dir,
        ),
        "zpool" => mount::zpool(&layout.zpool[&d.name], ctx, dir),
        "nodev" => mount::nodev(&layout.nodev[&d.name], ctx, dir),
        "bcachefs_filesystems" => mount::bcachefs(&layout.bcachefs_filesystems[&d.name], ctx, dir),
        _ => mount::Steps::default(),
    }
}

fn stage(layout: &Layout, order: &[TopDevice], ctx: &Ctx, dir: Dir) -> Vec<Operation> {
    let mut devs: Vec<Vec<Operation>> = Vec::new();
    let mut fs: BTreeMap<String, Vec<Operation>> = BTreeMap::new();
    for d in order {
        let s = device_steps(layout, d, ctx, dir);
        devs.push(s.dev);
        for (k, v) in s.fs {
            fs.entry(k).or_default().extend(v);
        }
    }
    let mut out = Vec::new();
    match dir {
        Dir::Mount => {
            out.extend(devs.into_iter().flatten());
            // a parent path sorts before its children, so key order mounts parents first
            out.extend(fs.into_values().flatten());
        }
        Dir::Unmount => {
            out.extend(fs.into_values().rev().flatten());
            out.extend(devs.into_iter().rev().flatten());
        }
    }
    out
}
