//! The `mount` and `unmount` stages. Each node yields device steps (open LUKS, activate VGs,
//! import pools) and filesystem steps keyed by mountpoint; the planner runs device steps in
//! device order and filesystem steps parents first (unmount: the reverse).

use std::collections::BTreeMap;

use super::create::{bcachefs_unlock, luks_open};
use super::ops::{argv, hook, mount_opts, op, target, OpExt};
use super::Ctx;
use crate::model::*;
use crate::plan::{Guard, Operation, StdinSource};

/// Device steps and filesystem steps (keyed by mountpoint, or device path for swap).
#[derive(Debug, Default)]
pub(crate) struct Steps {
    /// Device steps, in walk order.
    pub dev: Vec<Operation>,
    /// Filesystem steps by key.
    pub fs: BTreeMap<String, Vec<Operation>>,
}

impl Steps {
    fn merge(&mut self, other: Steps) {
        self.dev.extend(other.dev);
        for (k, v) in other.fs {
            self.fs.entry(k).or_default().extend(v);
        }
    }
}

/// Whether steps mount or unmount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// The mount stage.
    Mount,
    /// The unmount stage.
    Unmount,
}

fn wrap(hooks: &Hooks, dir: Dir, device: &str, body: Vec<Operation>) -> Vec<Operation> {
    let (pre, post, pn, qn) = match dir {
        Dir::Mount => (
            &hooks.pre_mount,
            &hooks.post_mount,
            "preMountHook",
            "postMountHook",
        ),
        Dir::Unmount => (
            &hooks.pre_unmount,
            &hooks.post_unmount,
            "preUnmountHook",
            "postUnmountHook",
        ),
    };
    let mut out = Vec::new();
    out.extend(hook(pre, device, pn));
    out.extend(body);
    out.extend(hook(post, device, qn));
    out
}

/// A `mount` (or `umount`) of `device` at `root + mountpoint`.
fn mount_fs(
    ctx: &Ctx,
    dir: Dir,
    device: &str,
    mountpoint: &str,
    fstype: Option<&str>,
    options: &[String],
) -> Operation {
    let t = target(&ctx.root, mountpoint);
    match dir {
        Dir::Mount => {
            let mut a = argv!["mount", device, &t];
            if let Some(ft) = fstype {
                a.extend(argv!["-t", ft]);
            }
            a.extend(mount_opts(options));
            a.extend(argv!["-o", "X-mount.mkdir"]);
            op(device, format!("mount {device} at {t}"), a).guard(Guard::NotMounted {
                device: device.to_string(),
                target: t,
            })
        }
        Dir::Unmount => umount(device, &t),
    }
}

fn umount(device: &str, t: &str) -> Operation {
    op(device, format!("unmount {t}"), argv!["umount", t]).guard(Guard::Mounted {
        target: t.to_string(),
    })
}

/// Steps of a content node.
pub(crate) fn content(c: &Content, ctx: &Ctx, dir: Dir) -> Steps {
    let mut s = Steps::default();
    match c {
        Content::Gpt(g) => {
            for p in &g.partitions {
                if let Some(pc) = &p.content {
                    s.merge(content(pc, ctx, dir));
                }
            }
            s.dev = wrap(&g.hooks, dir, &g.device, std::mem::take(&mut s.dev));
        }
        Content::Table(t) => {
            for p in &t.partitions {
                if let Some(pc) = &p.content {
                    s.merge(content(pc, ctx, dir));
                }
            }
            s.dev = wrap(&t.hooks, dir, &t.device, std::mem::take(&mut s.dev));
        }
        Content::Filesystem(f) => {
            if let Some(mp) = &f.mountpoint {
                let o = mount_fs(ctx, dir, &f.device, mp, Some(&f.format), &f.mount_options);
                s.fs.insert(mp.clone(), wrap(&f.hooks, dir, &f.device, vec![o]));
            }
        }
        Content::Btrfs(b) => btrfs(b, ctx, dir, &mut s),
        Content::Luks(l) => {
            let inner = l
                .content
                .as_ref()
                .map(|c| content(c, ctx, dir))
                .unwrap_or_default();
            let mapper = format!("/dev/mapper/{}", l.name);
            let mut dev = Vec::new();
            match dir {
                Dir::Mount => {
                    dev.push(luks_open(l, false));
                    dev.extend(inner.dev);
                }
                Dir::Unmount => {
                    dev.extend(inner.dev);
                    dev.push(
                        op(
                            &l.device,
                            format!("close LUKS {mapper}"),
                            argv!["cryptsetup", "close", &l.name],
                        )
                        .guard(Guard::PathExists { path: mapper }),
                    );
                }
            }
            s.dev = wrap(&l.hooks, dir, &l.device, dev);
            s.fs = inner.fs;
        }
        Content::Swap(sw) => {
            if !sw.random_encryption {
                let o = match dir {
                    Dir::Mount => {
                        let mut a = argv!["swapon"];
                        if let Some(p) = &sw.discard_policy {
                            a.push(if p == "both" {
                                "--discard".to_string()
                            } else {
                                format!("--discard={p}")
                            });
                        }
                        if let Some(p) = sw.priority {
                            a.push(format!("--priority={p}"));
                        }
                        a.push(format!("--options={}", sw.mount_options.join(",")));
                        a.push(sw.device.clone());
                        op(&sw.device, format!("enable swap on {}", sw.device), a).guard(
                            Guard::SwapInactive {
                                device: sw.device.clone(),
                            },
                        )
                    }
                    Dir::Unmount => op(
                        &sw.device,
                        format!("disable swap on {}", sw.device),
                        argv!["swapoff", &sw.device],
                    )
                    .guard(Guard::SwapActive {
                        device: sw.device.clone(),
                    }),
                };
                s.fs.insert(sw.device.clone(), wrap(&sw.hooks, dir, &sw.device, vec![o]));
            }
        }
        Content::LvmPv(_) | Content::Mdraid(_) | Content::Zfs(_) | Content::Bcachefs(_) => {}
    }
    s
}

/// Mounts of a btrfs filesystem and its subvolumes. Swap files are left to NixOS
/// (`swapDevices`), as disko does: activating swap on the target during install is unwanted.
fn btrfs(b: &Btrfs, ctx: &Ctx, dir: Dir, s: &mut Steps) {
    let dev = &b.device;
    if let Some(mp) = &b.mountpoint {
        let o = mount_fs(ctx, dir, dev, mp, Some("btrfs"), &b.mount_options);
        s.fs.insert(mp.clone(), wrap(&b.hooks, dir, dev, vec![o]));
    }
    for sv in b.subvolumes.values() {
        if let Some(mp) = &sv.mountpoint {
            let mut opts = sv.mount_options.clone();
            opts.push(format!("subvol={}", sv.name));
            let o = mount_fs(ctx, dir, dev, mp, Some("btrfs"), &opts);
            s.fs.insert(mp.clone(), wrap(&b.hooks, dir, dev, vec![o]));
        }
    }
}

/// Steps of a volume group and its LVs.
pub(crate) fn lvm_vg(vg: &LvmVg, ctx: &Ctx, dir: Dir) -> Steps {
    let mut inner = Steps::default();
    for lv in &vg.lvs {
        if let Some(c) = &lv.content {
            inner.merge(content(c, ctx, dir));
        }
    }
    let name = &vg.name;
    let mut dev = Vec::new();
    match dir {
        Dir::Mount => {
            dev.push(op(
                name,
                format!("activate the logical volumes of {name}"),
                argv!["vgchange", "-a", "y", name],
            ));
            dev.extend(inner.dev);
        }
        Dir::Unmount => {
            dev.extend(inner.dev);
            dev.push(
                op(
                    name,
                    format!("deactivate the logical volumes of {name}"),
                    argv!["vgchange", "-a", "n", name],
                )
                .guard(Guard::PathExists {
                    path: format!("/dev/{name}"),
                }),
            );
        }
    }
    Steps {
        dev: wrap(&vg.hooks, dir, name, dev),
        fs: inner.fs,
    }
}

/// Steps of an md array.
pub(crate) fn mdadm(md: &Mdadm, members: &[String], ctx: &Ctx, dir: Dir) -> Steps {
    let mut s = md
        .content
        .as_ref()
        .map(|c| content(c, ctx, dir))
        .unwrap_or_default();
    if dir == Dir::Mount {
        s.dev.insert(0, super::create::md_assemble(md, members));
    }
    if dir == Dir::Unmount {
        s.dev.push(
            op(
                &md.device,
                format!("stop the md array {}", md.device),
                argv!["mdadm", "--stop", &md.device],
            )
            .guard(Guard::PathExists {
                path: md.device.clone(),
            }),
        );
    }
    s.dev = wrap(&md.hooks, dir, &md.device, std::mem::take(&mut s.dev));
    s
}

fn has_key(options: &BTreeMap<String, String>) -> bool {
    options.get("keylocation").is_some_and(|k| k != "none")
}

pub(crate) fn zfs_fs_mount(
    name: &str,
    options: &BTreeMap<String, String>,
    mountpoint: &Option<String>,
    mount_options: &[String],
    ctx: &Ctx,
    dir: Dir,
) -> Option<(String, Operation)> {
    let mp = mountpoint.as_ref()?;
    if options.get("mountpoint").map(String::as_str) == Some("none")
        || options.get("canmount").map(String::as_str) == Some("off")
    {
        return None;
    }
    let legacy = options.get("mountpoint").map(String::as_str) == Some("legacy");
    let mut opts = mount_options.to_vec();
    if !legacy {
        opts.push("zfsutil".into());
    }
    Some((mp.clone(), mount_fs(ctx, dir, name, mp, Some("zfs"), &opts)))
}

/// Steps of a pool and its datasets.
pub(crate) fn zpool(pool: &Zpool, ctx: &Ctx, dir: Dir) -> Steps {
    let name = &pool.name;
    let mut s = Steps::default();
    let mut keys = Vec::new();
    if let Some((mp, o)) = zfs_fs_mount(
        name,
        &pool.root_fs_options,
        &pool.mountpoint,
        &pool.mount_options,
        ctx,
        dir,
    ) {
        s.fs.insert(mp, vec![o]);
    }
    for ds in pool.datasets.values() {
        let (full, options) = match ds {
            Dataset::Fs(f) => (&f.full_name, &f.options),
            Dataset::Volume(v) => (&v.full_name, &v.options),
        };
        if has_key(options) {
            keys.push(match dir {
                Dir::Mount => {
                    let mut o = op(
                        full,
                        format!("load the encryption key of {full}"),
                        argv!["zfs", "load-key", full],
                    )
                    .guard(Guard::KeyUnavailable {
                        dataset: full.clone(),
                    });
                    if options.get("keylocation").map(String::as_str) == Some("prompt") {
                        o.stdin = Some(StdinSource::Prompt {
                            name: full.clone(),
                            confirm: false,
                        });
                    }
                    o
                }
                Dir::Unmount => op(
                    full,
                    format!("unload the encryption key of {full}"),
                    argv!["zfs", "unload-key", full],
                )
                .guard(Guard::KeyAvailable {
                    dataset: full.clone(),
                }),
            });
        }
        match ds {
            Dataset::Fs(f) => {
                if let Some((mp, o)) = zfs_fs_mount(
                    &f.full_name,
                    &f.options,
                    &f.mountpoint,
                    &f.mount_options,
                    ctx,
                    dir,
                ) {
                    s.fs.insert(mp, wrap(&f.hooks, dir, &f.full_name, vec![o]));
                }
            }
            Dataset::Volume(v) => {
                if let Some(c) = &v.content {
                    let mut inner = content(c, ctx, dir);
                    if dir == Dir::Mount {
                        // like disko: swap on a zvol is left to NixOS at boot, not enabled here
                        inner
                            .fs
                            .retain(|_, ops| ops.iter().all(|o| o.argv[0] != "swapon"));
                    }
                    keys.extend(inner.dev);
                    for (k, ops) in inner.fs {
                        s.fs.entry(k).or_default().extend(ops);
                    }
                }
            }
        }
    }
    let mut dev = Vec::new();
    match dir {
        Dir::Mount => {
            dev.push(
                op(
                    name,
                    format!("import ZFS pool {name} under {}", ctx.root),
                    argv!["zpool", "import", "-l", "-R", &ctx.root, name],
                )
                .guard(Guard::PoolAbsent { pool: name.clone() }),
            );
            dev.extend(keys);
        }
        Dir::Unmount => {
            dev.extend(keys);
            dev.push(
                op(
                    name,
                    format!("export ZFS pool {name}"),
                    argv!["zpool", "export", name],
                )
                .guard(Guard::PoolPresent { pool: name.clone() }),
            );
        }
    }
    s.dev = wrap(&pool.hooks, dir, name, dev);
    s
}

/// Steps of a nodev mount (tmpfs and friends).
pub(crate) fn nodev(n: &Nodev, ctx: &Ctx, dir: Dir) -> Steps {
    let t = target(&ctx.root, &n.mountpoint);
    // a bind mount's source is a path of the target system, so it lives under the root too
    let bind = n.mount_options.iter().any(|o| o == "bind" || o == "rbind");
    let source = if bind && n.device.starts_with('/') {
        target(&ctx.root, &n.device)
    } else {
        n.device.clone()
    };
    let o = match dir {
        Dir::Mount => {
            let mut a = argv!["mount", "-t", &n.fs_type, &source, &t];
            a.extend(mount_opts(&n.mount_options));
            a.extend(argv!["-o", "X-mount.mkdir"]);
            op(
                &n.device,
                format!("mount {} ({}) at {t}", n.device, n.fs_type),
                a,
            )
            .guard(Guard::NotMounted {
                device: n.device.clone(),
                target: t.clone(),
            })
        }
        Dir::Unmount => umount(&n.device, &t),
    };
    let mut s = Steps::default();
    s.fs.insert(
        n.mountpoint.clone(),
        wrap(&n.hooks, dir, &n.device, vec![o]),
    );
    s
}

/// Steps of a bcachefs filesystem and its subvolumes.
pub(crate) fn bcachefs(fs: &BcachefsFilesystem, ctx: &Ctx, dir: Dir) -> Steps {
    let dev = format!("/dev/disk/by-uuid/{}", fs.uuid);
    let mut s = Steps::default();
    let mut mounts: Vec<(String, Vec<String>)> = Vec::new();
    if let Some(mp) = &fs.mountpoint {
        mounts.push((mp.clone(), fs.mount_options.clone()));
    }
    for sv in fs.subvolumes.values() {
        if let Some(mp) = &sv.mountpoint {
            mounts.push((mp.clone(), sv.mount_options.clone()));
        }
    }
    for (mp, opts) in mounts {
        let t = target(&ctx.root, &mp);
        let ops = match dir {
            Dir::Mount => {
                let mut v: Vec<Operation> = bcachefs_unlock(fs, &dev, &t).into_iter().collect();
                v.push(
                    op(
                        &dev,
                        format!("mount bcachefs {} at {t}", fs.name),
                        argv!["mount", "-t", "bcachefs", "-o", opts.join(","), &dev, &t],
                    )
                    .guard(Guard::NotMounted {
                        device: dev.clone(),
                        target: t.clone(),
                    }),
                );
                v
            }
            Dir::Unmount => vec![umount(&dev, &t)],
        };
        s.fs.insert(mp, wrap(&fs.hooks, dir, &dev, ops));
    }
    s
}
