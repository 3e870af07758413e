//! The `format` stage: partition tables, containers, volumes and filesystems, each guarded so
//! that what already exists is left alone.

use std::collections::BTreeMap;

use super::ops::{argv, hook, op, target, OpExt};
use super::Ctx;
use crate::model::*;
use crate::plan::{Guard, Operation, StdinSource};

/// ZFS properties that can only be set at creation (left out of `zfs set`).
pub(crate) const ONETIME_PROPS: [&str; 8] = [
    "encryption",
    "casesensitivity",
    "utf8only",
    "normalization",
    "volblocksize",
    "pbkdf2iters",
    "pbkdf2salt",
    "keyformat",
];

/// Wraps `body` in the node's pre/post create hooks.
fn with_hooks(hooks: &Hooks, device: &str, body: Vec<Operation>) -> Vec<Operation> {
    let mut out = Vec::new();
    out.extend(hook(&hooks.pre_create, device, "preCreateHook"));
    out.extend(body);
    out.extend(hook(&hooks.post_create, device, "postCreateHook"));
    out
}

/// Create operations of a content node.
pub(crate) fn content(c: &Content, ctx: &mut Ctx) -> Vec<Operation> {
    match c {
        Content::Gpt(g) => gpt(g, ctx),
        Content::Table(t) => table(t, ctx),
        Content::Filesystem(f) => {
            let mut a = vec![format!("mkfs.{}", f.format)];
            a.extend(f.extra_args.iter().cloned());
            a.push(f.device.clone());
            let body = vec![
                op(&f.device, format!("format {} as {}", f.device, f.format), a)
                    .destructive()
                    .guard(Guard::NoFilesystem {
                        device: f.device.clone(),
                    }),
            ];
            with_hooks(&f.hooks, &f.device, body)
        }
        Content::Btrfs(b) => btrfs(b, ctx),
        Content::Luks(l) => luks(l, ctx),
        Content::LvmPv(p) => with_hooks(
            &p.hooks,
            &p.device,
            vec![op(
                &p.device,
                format!("make {} an LVM physical volume of {}", p.device, p.vg),
                argv!["pvcreate", &p.device],
            )
            .destructive()
            .guard(Guard::NoFilesystem {
                device: p.device.clone(),
            })],
        ),
        // members are collected by their aggregate (md array, pool, bcachefs filesystem)
        Content::Mdraid(m) => with_hooks(&m.hooks, &m.device, vec![]),
        Content::Zfs(z) => with_hooks(&z.hooks, &z.device, vec![]),
        Content::Bcachefs(b) => with_hooks(&b.hooks, &b.device, vec![]),
        Content::Swap(s) => {
            let mut body = Vec::new();
            if !s.random_encryption {
                let mut a = argv!["mkswap"];
                a.extend(s.extra_args.iter().cloned());
                a.push(s.device.clone());
                body.push(
                    op(&s.device, format!("make {} a swap device", s.device), a)
                        .destructive()
                        .guard(Guard::NoFilesystem {
                            device: s.device.clone(),
                        }),
                );
            }
            with_hooks(&s.hooks, &s.device, body)
        }
    }
}

fn gpt(g: &Gpt, ctx: &mut Ctx) -> Vec<Operation> {
    let dev = &g.device;
    let mut body = vec![op(
        dev,
        format!("create a GPT partition table on {dev}"),
        argv!["sgdisk", "--clear", dev],
    )
    .destructive()
    .guard(Guard::DeviceBlank {
        device: dev.clone(),
    })];
    for p in &g.partitions {
        let i = p.index;
        let mut a = argv!["sgdisk", "--align-end"];
        if p.alignment != 0 {
            a.push(format!("--set-alignment={}", p.alignment));
        }
        a.push(format!("--new={i}:{}:{}", p.start, p.end));
        a.push(format!(
            "--partition-guid={i}:{}",
            p.uuid.as_deref().unwrap_or("R")
        ));
        let mut settings = vec![
            format!("--change-name={i}:{}", p.label),
            format!("--typecode={i}:{}", p.type_code),
            format!("--attributes={i}:=:0"),
        ];
        for bit in &p.attributes {
            settings.push(format!("--attributes={i}:set:{bit}"));
        }
        a.extend(settings.iter().cloned());
        a.push(dev.clone());
        // An existing partition gets the layout's name, type and attributes, as disko does
        // when `--new` fails; its GUID only changes when the layout sets one.
        let mut update = argv!["sgdisk"];
        if let Some(u) = &p.uuid {
            update.push(format!("--partition-guid={i}:{u}"));
        }
        update.extend(settings);
        update.push(dev.clone());
        body.push(
            op(
                dev,
                format!(
                    "set name `{}` and type {} on existing partition {i} of {dev}",
                    p.label, p.type_code
                ),
                update,
            )
            .guard(Guard::PartitionPresent {
                disk: dev.clone(),
                number: i as u32,
            }),
        );
        let extent = if p.size == "100%" {
            "rest of the disk".to_string()
        } else if p.start == "0" && p.end.starts_with('+') {
            p.end[1..].to_string()
        } else {
            format!("{}..{}", p.start, p.end)
        };
        body.push(
            op(
                dev,
                format!(
                    "create partition {i} `{}` ({}, type {}) on {dev}",
                    p.label, extent, p.type_code
                ),
                a,
            )
            .destructive()
            .guard(Guard::PartitionAbsent {
                disk: dev.clone(),
                number: i as u32,
            }),
        );
    }
    let hybrids: Vec<&GptPartition> = g.partitions.iter().filter(|p| p.hybrid.is_some()).collect();
    if !hybrids.is_empty() {
        let mut spec: Vec<String> = hybrids.iter().map(|p| p.index.to_string()).collect();
        if !g.efi_gpt_partition_first {
            spec.push("EE".into());
        }
        body.push(
            op(
                dev,
                format!(
                    "write a hybrid MBR on {dev} (partitions {})",
                    spec.join(":")
                ),
                argv!["sgdisk", "-h", spec.join(":"), dev],
            )
            .destructive(),
        );
        for p in &hybrids {
            let Some(h) = &p.hybrid else { continue };
            if let Some(t) = &h.mbr_partition_type {
                body.push(
                    op(
                        dev,
                        format!("set MBR type {t} on hybrid partition {}", p.index),
                        argv![
                            "sfdisk",
                            "--label-nested",
                            "dos",
                            "--part-type",
                            dev,
                            p.index.to_string(),
                            t
                        ],
                    )
                    .destructive(),
                );
            }
            if h.mbr_bootable_flag {
                body.push(
                    op(
                        dev,
                        format!("mark hybrid MBR partition {} bootable", p.index),
                        argv![
                            "sfdisk",
                            "--label-nested",
                            "dos",
                            "--activate",
                            dev,
                            p.index.to_string()
                        ],
                    )
                    .destructive(),
                );
            }
        }
    }
    for p in &g.partitions {
        if let Some(c) = &p.content {
            body.extend(content(c, ctx));
        }
    }
    with_hooks(&g.hooks, dev, body)
}

fn table(t: &Table, ctx: &mut Ctx) -> Vec<Operation> {
    let dev = &t.device;
    let mut body = vec![op(
        dev,
        format!("create an {} partition table on {dev}", t.format),
        argv!["parted", "-s", dev, "--", "mklabel", &t.format],
    )
    .destructive()
    .guard(Guard::DeviceBlank {
        device: dev.clone(),
    })];
    for p in &t.partitions {
        let mut a = argv!["parted", "-s", dev, "--", "mkpart"];
        if t.format == "gpt" {
            let name = p.name.clone().unwrap_or_else(|| p.part_type.clone());
            a.push(crate::model::label::hex_escape_udev(&name));
        } else {
            a.push(p.part_type.clone());
        }
        if let Some(fs) = &p.fs_type {
            a.push(fs.clone());
        }
        a.push(p.start.clone());
        a.push(p.end.clone());
        body.push(
            op(
                dev,
                format!(
                    "create partition {} ({}..{}) on {dev}",
                    p.index, p.start, p.end
                ),
                a,
            )
            .destructive()
            .guard(Guard::PartitionAbsent {
                disk: dev.clone(),
                number: p.index as u32,
            }),
        );
        let mut flags: Vec<&str> = Vec::new();
        if p.bootable {
            flags.push("boot");
        }
        flags.extend(p.flags.iter().map(String::as_str));
        for f in flags {
            body.push(op(
                dev,
                format!("set flag {f} on partition {} of {dev}", p.index),
                argv![
                    "parted",
                    "-s",
                    dev,
                    "--",
                    "set",
                    p.index.to_string(),
                    f,
                    "on"
                ],
            ));
        }
    }
    for p in &t.partitions {
        if let Some(c) = &p.content {
            body.extend(content(c, ctx));
        }
    }
    with_hooks(&t.hooks, dev, body)
}

/// The temporary mount of a btrfs top level used to create subvolumes and swap files:
/// deterministic and distinct per device, so concurrent plans on other disks never collide.
pub fn btrfs_temp_dir(device: &str) -> String {
    let name: String = device
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("/run/nixpave/btrfs/{name}")
}

fn btrfs(b: &Btrfs, _ctx: &mut Ctx) -> Vec<Operation> {
    let dev = &b.device;
    let mut a = argv!["mkfs.btrfs", dev];
    a.extend(b.extra_args.iter().cloned());
    let mut body = vec![op(dev, format!("format {dev} as btrfs"), a)
        .destructive()
        .guard(Guard::NoFilesystem {
            device: dev.clone(),
        })];
    let has_swap = !b.swap.is_empty() || b.subvolumes.values().any(|s| !s.swap.is_empty());
    if !b.subvolumes.is_empty() || has_swap {
        let (mount, umount) = btrfs_top_mount(dev);
        let tmp = btrfs_temp_dir(dev);
        body.push(mount);
        body.extend(swapfiles(&b.swap, &tmp, dev));
        for s in b.subvolumes.values() {
            body.extend(subvolume(s, &tmp, dev));
        }
        body.push(umount);
    }
    with_hooks(&b.hooks, dev, body)
}

/// Mounting the top level of the btrfs on `dev` at [`btrfs_temp_dir`], and unmounting it.
pub(crate) fn btrfs_top_mount(dev: &str) -> (Operation, Operation) {
    let tmp = btrfs_temp_dir(dev);
    let mount = op(
        dev,
        format!("mount the top level of {dev} at {tmp} to create subvolumes"),
        argv![
            "mount",
            "-t",
            "btrfs",
            "-o",
            "subvol=/",
            "-o",
            "X-mount.mkdir",
            dev,
            &tmp
        ],
    )
    .guard(Guard::NotMounted {
        device: dev.to_string(),
        target: tmp.clone(),
    });
    let umount = op(dev, format!("unmount {tmp}"), argv!["umount", &tmp]).guard(Guard::Mounted {
        target: tmp.clone(),
    });
    (mount, umount)
}

/// Creating one subvolume (and its swap files) below the top level mounted at `tmp`.
pub(crate) fn subvolume(s: &Subvolume, tmp: &str, dev: &str) -> Vec<Operation> {
    let mut body = Vec::new();
    let rel = s.name.trim_start_matches('/');
    let path = format!("{tmp}/{rel}");
    if let Some((parent, _)) = rel.rsplit_once('/') {
        let pdir = format!("{tmp}/{parent}");
        body.push(
            op(
                dev,
                format!("create directory {pdir}"),
                argv!["mkdir", "-p", &pdir],
            )
            .guard(Guard::PathAbsent { path: pdir.clone() }),
        );
    }
    let mut a = argv!["btrfs", "subvolume", "create"];
    a.extend(s.extra_args.iter().cloned());
    a.push(path.clone());
    body.push(
        op(
            dev,
            format!("create btrfs subvolume {} on {dev}", s.name),
            a,
        )
        .guard(Guard::SubvolumeAbsent { path: path.clone() }),
    );
    body.extend(swapfiles(&s.swap, &path, dev));
    body
}

pub(crate) fn swapfiles(
    files: &BTreeMap<String, SwapFile>,
    dir: &str,
    dev: &str,
) -> Vec<Operation> {
    files
        .values()
        .map(|f| {
            let path = format!("{dir}/{}", f.path.trim_start_matches('/'));
            op(
                dev,
                format!("create a {} swap file {path}", f.size),
                argv![
                    "btrfs",
                    "filesystem",
                    "mkswapfile",
                    "--size",
                    &f.size,
                    &path
                ],
            )
            .guard(Guard::PathAbsent { path })
        })
        .collect()
}

/// The key arguments and stdin of a LUKS container, in disko's precedence.
pub(crate) fn luks_key(l: &Luks, confirm: bool) -> (Vec<String>, Option<StdinSource>) {
    let setting = |k: &str| -> Option<String> {
        l.settings.get(k).and_then(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let mut args = Vec::new();
    let mut stdin = None;
    if let Some(k) = setting("keyFile") {
        args.extend(argv!["--key-file", k]);
    } else if l.ask_password {
        args.extend(argv!["--key-file", "-"]);
        stdin = Some(StdinSource::Prompt {
            name: l.name.clone(),
            confirm,
        });
    } else if let Some(p) = &l.password_file {
        args.extend(argv!["--key-file", p]);
    } else if let Some(k) = &l.key_file {
        args.extend(argv!["--key-file", k]);
    }
    if let Some(n) = setting("keyFileSize") {
        args.extend(argv!["--keyfile-size", n]);
    }
    if let Some(n) = setting("keyFileOffset") {
        args.extend(argv!["--keyfile-offset", n]);
    }
    (args, stdin)
}

/// `cryptsetup open` arguments shared by the format and mount stages.
pub(crate) fn luks_open(l: &Luks, persistent: bool) -> Operation {
    let mut a = argv!["cryptsetup", "open", &l.device, &l.name];
    if l.settings.get("allowDiscards") == Some(&serde_json::Value::Bool(true)) {
        a.push("--allow-discards".into());
    }
    if l.settings.get("bypassWorkqueues") == Some(&serde_json::Value::Bool(true)) {
        a.extend(argv![
            "--perf-no_read_workqueue",
            "--perf-no_write_workqueue"
        ]);
    }
    a.extend(l.extra_open_args.iter().cloned());
    let (key, stdin) = luks_key(l, false);
    a.extend(key);
    if persistent {
        a.push("--persistent".into());
    }
    let mapper = format!("/dev/mapper/{}", l.name);
    let mut o = op(&l.device, format!("open LUKS {} as {mapper}", l.device), a)
        .guard(Guard::PathAbsent { path: mapper });
    o.stdin = stdin;
    o
}

fn luks(l: &Luks, ctx: &mut Ctx) -> Vec<Operation> {
    let dev = &l.device;
    let mut a = argv!["cryptsetup", "-q", "luksFormat", dev];
    a.extend(l.extra_format_args.iter().cloned());
    let (key, stdin) = luks_key(l, true);
    a.extend(key.clone());
    let mut format = op(dev, format!("encrypt {dev} with LUKS ({})", l.name), a)
        .destructive()
        .guard(Guard::NotLuks {
            device: dev.clone(),
        });
    format.stdin = stdin;
    let mut body = vec![format, luks_open(l, true)];
    for extra in &l.additional_key_files {
        let mut a = argv!["cryptsetup", "luksAddKey", dev, extra];
        let (key, stdin) = luks_key(l, false);
        a.extend(key);
        let mut o = op(dev, format!("add key file {extra} to LUKS {dev}"), a).guard(
            Guard::LuksKeyMissing {
                device: dev.clone(),
                key_file: extra.clone(),
            },
        );
        o.stdin = stdin;
        body.push(o);
    }
    if let Some(c) = &l.content {
        body.extend(content(c, ctx));
    }
    with_hooks(&l.hooks, dev, body)
}

/// Create operations of a volume group, its LVs and their contents.
pub(crate) fn lvm_vg(vg: &LvmVg, pvs: &[String], ctx: &mut Ctx) -> Vec<Operation> {
    let name = &vg.name;
    let mut body = Vec::new();
    // real module names (disko's `dm-<lvm_type>` names such as dm-raid0 do not exist)
    let mut modules = vec!["dm-snapshot"];
    for lv in &vg.lvs {
        let m = match lv.lvm_type.as_deref() {
            Some("mirror") => Some("dm-mirror"),
            Some("thin-pool") | Some("thinlv") => Some("dm-thin-pool"),
            Some(_) => Some("dm-raid"),
            None => None,
        };
        if let Some(m) = m.filter(|m| !modules.contains(m)) {
            modules.push(m);
        }
    }
    for m in modules {
        body.push(op(
            name,
            format!("load the {m} kernel module"),
            argv!["modprobe", m],
        ));
    }
    let mut a = argv!["vgcreate", name];
    a.extend(pvs.iter().cloned());
    body.push(
        op(
            name,
            format!("create volume group {name} on {}", pvs.join(", ")),
            a,
        )
        .destructive()
        .guard(Guard::VgAbsent { vg: name.clone() }),
    );
    for lv in &vg.lvs {
        body.push(lvcreate(name, lv).destructive());
    }
    for lv in &vg.lvs {
        if let Some(c) = &lv.content {
            body.extend(content(c, ctx));
        }
    }
    with_hooks(&vg.hooks, name, body)
}

/// `lvcreate` of one logical volume of `vg`, guarded by its absence.
pub(crate) fn lvcreate(vg: &str, lv: &Lv) -> Operation {
    let mut a = argv!["lvcreate", "--yes"];
    if lv.lvm_type.as_deref() == Some("thinlv") {
        a.extend(argv!["-V", &lv.size]);
    } else if lv.size.contains('%') {
        let size = if lv.size.ends_with('%') {
            format!("{}FREE", lv.size)
        } else {
            lv.size.clone()
        };
        a.extend(argv!["-l", size]);
    } else {
        a.extend(argv!["-L", &lv.size]);
    }
    a.extend(argv!["-n", &lv.name]);
    if let Some(p) = &lv.pool {
        a.push(format!("--thinpool={p}"));
    }
    if let Some(t) = lv.lvm_type.as_deref().filter(|t| *t != "thinlv") {
        a.push(format!("--type={t}"));
    }
    a.extend(lv.extra_args.iter().cloned());
    a.push(vg.to_string());
    op(
        vg,
        format!("create logical volume {vg}/{} ({})", lv.name, lv.size),
        a,
    )
    .guard(Guard::LvAbsent {
        vg: vg.to_string(),
        lv: lv.name.clone(),
    })
}

/// Brings back an existing array whose members carry its superblocks (stopped by `unmount`,
/// or left by an earlier run) so that neither `mount` fails nor `format` re-creates it.
pub(crate) fn md_assemble(md: &Mdadm, members: &[String]) -> Operation {
    let dev = &md.device;
    let mut a = argv!["mdadm", "--assemble", dev];
    a.extend(members.iter().cloned());
    op(dev, format!("assemble the existing md array {dev}"), a).guard(Guard::MdAssemblable {
        array: dev.clone(),
        members: members.to_vec(),
    })
}

/// Create operations of an md array and its content.
pub(crate) fn mdadm(md: &Mdadm, members: &[String], ctx: &mut Ctx) -> Vec<Operation> {
    let dev = &md.device;
    let mut a = argv![
        "mdadm",
        "--create",
        dev,
        format!("--level={}", md.level),
        format!("--raid-devices={}", members.len()),
        format!("--metadata={}", md.metadata),
        "--force",
        "--homehost=any"
    ];
    a.extend(md.extra_args.iter().cloned());
    a.extend(members.iter().cloned());
    // A new array can show a stale partition table from an earlier array on the same members;
    // disko zaps it right after creating. A marker in /run remembers "created in this run"
    // for the zap step (guards are probed right before each step).
    let marker = format!("/run/nixpave/md-created/{}", md.name);
    let mut body = vec![md_assemble(md, members)];
    body.push(
        op(
            dev,
            format!("remember that {dev} is created now"),
            argv!["mkdir", "-p", &marker],
        )
        .guard(Guard::PathAbsent { path: dev.clone() }),
    );
    body.push(
        op(
            dev,
            format!(
                "create RAID{} array {dev} from {}",
                md.level,
                members.join(", ")
            ),
            a,
        )
        .destructive()
        .guard(Guard::PathAbsent { path: dev.clone() })
        .stdin(StdinSource::Text { text: "y\n".into() }),
    );
    body.push(
        op(
            dev,
            format!("wipe any stale partition table from the new array {dev}"),
            argv!["sgdisk", "--zap-all", dev],
        )
        .destructive()
        .guard(Guard::PathExists {
            path: marker.clone(),
        }),
    );
    body.push(
        op(
            dev,
            format!("forget the marker of {dev}"),
            argv!["rmdir", &marker],
        )
        .guard(Guard::PathExists { path: marker }),
    );
    if let Some(c) = &md.content {
        body.extend(content(c, ctx));
    }
    with_hooks(&md.hooks, dev, body)
}

/// The vdev words of `zpool create` (mode words and member devices).
pub(crate) fn zpool_topology(pool: &Zpool, members: &[String]) -> Vec<String> {
    use crate::model::validate::zpool_member_device as dev;
    match &pool.mode {
        ZpoolMode::Simple(mode) => {
            let mut v = Vec::new();
            if !mode.is_empty() {
                v.push(mode.clone());
            }
            v.extend(members.iter().cloned());
            v
        }
        ZpoolMode::Topology(t) => {
            let vdev_words = |vs: &Vec<Vdev>| -> Vec<String> {
                // vdevs without a mode come first, as disko sorts them
                let mut sorted: Vec<&Vdev> = vs.iter().filter(|v| v.mode.is_empty()).collect();
                sorted.extend(vs.iter().filter(|v| !v.mode.is_empty()));
                let mut w = Vec::new();
                for v in sorted {
                    if !v.mode.is_empty() {
                        w.push(v.mode.clone());
                    }
                    w.extend(v.members.iter().map(|m| dev(m)));
                }
                w
            };
            let mut words = vdev_words(&t.vdev);
            if !t.spare.is_empty() {
                words.push("spare".into());
                words.extend(t.spare.iter().map(|m| dev(m)));
            }
            for (class, vs) in [
                ("log", &t.log),
                ("dedup", &t.dedup),
                ("special", &t.special),
            ] {
                if !vs.is_empty() {
                    words.push(class.into());
                    words.extend(vdev_words(vs));
                }
            }
            if !t.cache.is_empty() {
                words.push("cache".into());
                words.extend(t.cache.iter().map(|m| dev(m)));
            }
            words
        }
    }
}

fn keylocation_prompt(options: &BTreeMap<String, String>) -> bool {
    options.get("keylocation").map(String::as_str) == Some("prompt")
}

/// Create operations of a pool and its datasets.
pub(crate) fn zpool(pool: &Zpool, members: &[String], ctx: &mut Ctx) -> Vec<Operation> {
    let name = &pool.name;
    let mut body = vec![op(
        name,
        format!("import the existing pool {name} (not mounted)"),
        argv!["zpool", "import", "-N", "-f", name],
    )
    .guard(Guard::PoolImportable { pool: name.clone() })];
    let mut a = argv!["zpool", "create", "-f", name, "-R", &ctx.root];
    if pool.root_fs_options.get("canmount").map(String::as_str) == Some("off") {
        a.extend(argv!["-m", "none"]);
    }
    for (k, v) in &pool.options {
        a.extend(argv!["-o", format!("{k}={v}")]);
    }
    for (k, v) in &pool.root_fs_options {
        a.extend(argv!["-O", format!("{k}={v}")]);
    }
    a.extend(zpool_topology(pool, members));
    let mut create = op(
        name,
        format!("create ZFS pool {name} on {}", members.join(", ")),
        a,
    )
    .destructive()
    .guard(Guard::PoolAbsent { pool: name.clone() });
    if keylocation_prompt(&pool.root_fs_options) {
        create.stdin = Some(StdinSource::Prompt {
            name: name.clone(),
            confirm: true,
        });
    }
    body.push(create);
    // a new pool's root dataset is mounted right away (at ROOT/<pool>); disko unmounts it
    let canmount_off = pool.root_fs_options.get("canmount").map(String::as_str) == Some("off");
    let mp = pool
        .root_fs_options
        .get("mountpoint")
        .cloned()
        .unwrap_or_else(|| format!("/{name}"));
    if !canmount_off && mp.starts_with('/') {
        let t = target(&ctx.root, &mp);
        body.push(
            op(
                name,
                format!("unmount the new pool's root dataset from {t}"),
                argv!["zfs", "unmount", name],
            )
            .guard(Guard::Mounted { target: t }),
        );
    }
    let mut props: BTreeMap<String, String> = pool
        .root_fs_options
        .iter()
        .filter(|(k, _)| !ONETIME_PROPS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(m) = &pool.mountpoint {
        props
            .entry("mountpoint".into())
            .or_insert_with(|| m.clone());
    }
    if !props.is_empty() {
        let mut a = argv!["zfs", "set", "-u"];
        a.extend(props.iter().map(|(k, v)| format!("{k}={v}")));
        a.push(name.clone());
        body.push(op(
            name,
            format!("set the properties of {name}'s root dataset"),
            a,
        ));
    }
    for ds in pool.datasets.values() {
        match ds {
            Dataset::Fs(f) => body.extend(zfs_fs(f)),
            Dataset::Volume(v) => body.extend(zfs_volume(v, ctx)),
        }
    }
    with_hooks(&pool.hooks, name, body)
}

/// Create operations of a ZFS dataset (`zfs create -up`, its options and mountpoint).
pub(crate) fn zfs_fs(f: &ZfsFs) -> Vec<Operation> {
    let mut opts = f.options.clone();
    if let Some(m) = &f.mountpoint {
        opts.entry("mountpoint".into()).or_insert_with(|| m.clone());
    }
    let mut a = argv!["zfs", "create", "-up", &f.full_name];
    for (k, v) in &opts {
        a.extend(argv!["-o", format!("{k}={v}")]);
    }
    let mut o = op(
        &f.full_name,
        format!("create ZFS dataset {}", f.full_name),
        a,
    )
    .guard(Guard::DatasetAbsent {
        dataset: f.full_name.clone(),
    });
    if keylocation_prompt(&f.options) {
        o.stdin = Some(StdinSource::Prompt {
            name: f.full_name.clone(),
            confirm: true,
        });
    }
    with_hooks(&f.hooks, &f.full_name, vec![o])
}

/// Create operations of a ZFS volume and its content.
pub(crate) fn zfs_volume(v: &ZfsVolume, ctx: &mut Ctx) -> Vec<Operation> {
    let mut a = argv!["zfs", "create", &v.full_name];
    for (k, val) in &v.options {
        a.extend(argv!["-o", format!("{k}={val}")]);
    }
    if let Some(s) = &v.size {
        a.extend(argv!["-V", s]);
    }
    a.extend(v.extra_args.iter().cloned());
    let mut o = op(
        &v.full_name,
        format!(
            "create ZFS volume {} ({})",
            v.full_name,
            v.size.as_deref().unwrap_or("no size")
        ),
        a,
    )
    .destructive()
    .guard(Guard::DatasetAbsent {
        dataset: v.full_name.clone(),
    });
    if keylocation_prompt(&v.options) {
        o.stdin = Some(StdinSource::Prompt {
            name: v.full_name.clone(),
            confirm: true,
        });
    }
    let mut vb = vec![o];
    if let Some(c) = &v.content {
        vb.extend(content(c, ctx));
    }
    with_hooks(&v.hooks, &v.full_name, vb)
}

/// One member of a bcachefs filesystem: its device and the format arguments that go before it.
pub(crate) struct BcachefsMember {
    /// Device path.
    pub device: String,
    /// `--label=…` and the member's extraFormatArgs.
    pub args: Vec<String>,
}

/// Create operations of a bcachefs filesystem and its subvolumes.
pub(crate) fn bcachefs(
    fs: &BcachefsFilesystem,
    members: &[BcachefsMember],
    _ctx: &mut Ctx,
) -> Vec<Operation> {
    let uuid_dev = format!("/dev/disk/by-uuid/{}", fs.uuid);
    let mut a = argv!["bcachefs", "format"];
    for m in members {
        a.extend(m.args.iter().cloned());
        a.push(m.device.clone());
    }
    a.push(format!("--uuid={}", fs.uuid));
    a.extend(fs.extra_format_args.iter().cloned());
    let first = members
        .first()
        .map(|m| m.device.clone())
        .unwrap_or_default();
    let mut format = op(
        &first,
        format!(
            "format bcachefs {} on {}",
            fs.name,
            members
                .iter()
                .map(|m| m.device.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        a,
    )
    .destructive()
    .guard(Guard::NoFilesystem {
        device: first.clone(),
    });
    if let Some(p) = &fs.password_file {
        format.argv.push("--encrypted".into());
        format.stdin = Some(StdinSource::File { path: p.clone() });
    }
    let mut body = vec![format];
    if !fs.subvolumes.is_empty() {
        let tmp = format!("/run/nixpave/bcachefs/{}", fs.uuid);
        body.extend(bcachefs_unlock(fs, &uuid_dev, &tmp));
        body.push(
            op(
                &uuid_dev,
                format!("mount bcachefs {} at {tmp} to create subvolumes", fs.name),
                argv![
                    "mount",
                    "-t",
                    "bcachefs",
                    "-o",
                    "X-mount.mkdir",
                    &uuid_dev,
                    &tmp
                ],
            )
            .guard(Guard::NotMounted {
                device: uuid_dev.clone(),
                target: tmp.clone(),
            }),
        );
        for s in fs.subvolumes.values() {
            let rel = s.name.trim_start_matches('/');
            let path = format!("{tmp}/{rel}");
            if let Some((parent, _)) = rel.rsplit_once('/') {
                let pdir = format!("{tmp}/{parent}");
                body.push(
                    op(
                        &uuid_dev,
                        format!("create directory {pdir}"),
                        argv!["mkdir", "-p", &pdir],
                    )
                    .guard(Guard::PathAbsent { path: pdir.clone() }),
                );
            }
            body.push(
                op(
                    &uuid_dev,
                    format!("create bcachefs subvolume {}", s.name),
                    argv!["bcachefs", "subvolume", "create", &path],
                )
                .guard(Guard::PathAbsent { path: path.clone() }),
            );
        }
        body.push(
            op(&uuid_dev, format!("unmount {tmp}"), argv!["umount", &tmp]).guard(Guard::Mounted {
                target: tmp.clone(),
            }),
        );
    }
    with_hooks(&fs.hooks, &uuid_dev, body)
}

/// `bcachefs unlock` before a mount at `target`, for encrypted filesystems.
pub(crate) fn bcachefs_unlock(
    fs: &BcachefsFilesystem,
    uuid_dev: &str,
    target: &str,
) -> Option<Operation> {
    fs.password_file.as_ref().map(|p| {
        op(
            uuid_dev,
            format!("unlock bcachefs {}", fs.name),
            argv!["bcachefs", "unlock", "-k", "session", uuid_dev],
        )
        .guard(Guard::NotMounted {
            device: uuid_dev.to_string(),
            target: target.to_string(),
        })
        .stdin(StdinSource::File { path: p.clone() })
    })
}
