//! Refuses impossible layouts before anything runs, and computes the device order
//! (top-level devices sorted by kind and name, then topologically by what they consume).

use std::collections::{BTreeMap, BTreeSet};

use super::parse::join;
use super::*;

/// The sgdisk short type codes (`sgdisk -L`, gdisk 1.0.9), lower case.
const GPT_CODES: &str = "0700 0701 0702 0c01 2700 3000 3001 3900 4100 4200 4201 4202 7501 7f00 \
7f01 7f02 7f03 7f04 7f05 8200 8300 8301 8302 8303 8304 8305 8306 8307 8308 8309 830a 830b 830c \
830d 830e 830f 8310 8311 8312 8313 8314 8315 8316 8317 8318 8319 831a 831b 831c 8400 8401 8500 \
8501 8502 8503 8e00 a000 a001 a002 a003 a004 a005 a006 a007 a008 a009 a00a a00b a00c a00d a00e \
a00f a010 a011 a012 a013 a014 a015 a016 a017 a018 a019 a01a a01b a01c a01d a01e a01f a020 a021 \
a022 a023 a024 a025 a026 a027 a028 a029 a02a a02b a02c a02d a02e a02f a030 a031 a032 a033 a034 \
a035 a036 a037 a038 a039 a03a a03b a03c a03d a03e a03f a040 a200 a500 a501 a502 a503 a504 a505 \
a506 a580 a581 a582 a583 a584 a585 a600 a800 a901 a902 a903 a904 a905 a906 ab00 af00 af01 af02 \
af03 af04 af05 af06 af07 af08 af09 af0a af0b af0c b000 b300 bb00 bc00 be00 bf00 bf01 bf02 bf03 \
bf04 bf05 bf06 bf07 bf08 bf09 bf0a bf0b c001 c002 e100 e101 e900 ea00 eb00 ed00 ed01 ef00 ef01 \
ef02 f100 f101 f102 f103 f104 f105 f106 f107 f108 f109 f10a f10b f10c f10d f10e f10f f110 f111 \
f112 f113 f114 f115 f116 f117 f118 f119 f11a f800 f801 f802 f803 f804 f805 f806 f807 f808 f809 \
f80a f80b f80c f80d f80e f80f f810 f811 f812 f813 f814 f815 f816 f817 fb00 fb01 fc00 fd00";

/// True when `code` (4 hex digits) is a type code sgdisk knows.
pub(crate) fn known_gpt_code(code: &str) -> bool {
    let lower = code.to_ascii_lowercase();
    GPT_CODES.split_whitespace().any(|c| c == lower)
}

/// A top-level device: kind (`disk`, `mdadm`, …) and attribute name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopDevice {
    /// `bcachefs_filesystems`, `disk`, `lvm_vg`, `mdadm`, `nodev` or `zpool`.
    pub kind: &'static str,
    /// Attribute name.
    pub name: String,
}

/// Every content node of the layout with its attribute path and its top-level device.
pub(crate) fn contents(layout: &Layout) -> Vec<(TopDevice, String, &Content)> {
    fn walk<'a>(
        top: &TopDevice,
        path: String,
        c: &'a Content,
        out: &mut Vec<(TopDevice, String, &'a Content)>,
    ) {
        out.push((top.clone(), path.clone(), c));
        match c {
            Content::Gpt(g) => {
                for p in &g.partitions {
                    if let Some(pc) = &p.content {
                        walk(
                            top,
                            join(&join(&join(&path, "partitions"), &p.key), "content"),
                            pc,
                            out,
                        );
                    }
                }
            }
            Content::Table(t) => {
                for p in &t.partitions {
                    if let Some(pc) = &p.content {
                        walk(
                            top,
                            format!("{path}.partitions.{}.content", p.index - 1),
                            pc,
                            out,
                        );
                    }
                }
            }
            Content::Luks(l) => {
                if let Some(lc) = &l.content {
                    walk(top, join(&path, "content"), lc, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (name, d) in &layout.disk {
        if let Some(c) = &d.content {
            let top = TopDevice {
                kind: "disk",
                name: name.clone(),
            };
            walk(&top, join(&join("disk", name), "content"), c, &mut out);
        }
    }
    for (name, m) in &layout.mdadm {
        if let Some(c) = &m.content {
            let top = TopDevice {
                kind: "mdadm",
                name: name.clone(),
            };
            walk(&top, join(&join("mdadm", name), "content"), c, &mut out);
        }
    }
    for (name, vg) in &layout.lvm_vg {
        let top = TopDevice {
            kind: "lvm_vg",
            name: name.clone(),
        };
        for lv in &vg.lvs {
            if let Some(c) = &lv.content {
                let p = join(
                    &join(&join(&join("lvm_vg", name), "lvs"), &lv.name),
                    "content",
                );
                walk(&top, p, c, &mut out);
            }
        }
    }
    for (name, pool) in &layout.zpool {
        let top = TopDevice {
            kind: "zpool",
            name: name.clone(),
        };
        for (dname, ds) in &pool.datasets {
            if let Dataset::Volume(v) = ds {
                if let Some(c) = &v.content {
                    let p = join(
                        &join(&join(&join("zpool", name), "datasets"), dname),
                        "content",
                    );
                    walk(&top, p, c, &mut out);
                }
            }
        }
    }
    out
}

/// Members of aggregate devices: (kind, name) → [(member device, path, top device)].
pub(crate) type Members = BTreeMap<(&'static str, String), Vec<(String, String, TopDevice)>>;

/// Who feeds which VG / md array / pool / bcachefs filesystem, in creation order of the walk.
pub(crate) fn members(layout: &Layout) -> Members {
    let mut m: Members = BTreeMap::new();
    for (top, path, c) in contents(layout) {
        let (kind, name, dev) = match c {
            Content::LvmPv(p) => ("lvm_vg", p.vg.clone(), p.device.clone()),
            Content::Mdraid(p) => ("mdadm", p.name.clone(), p.device.clone()),
            Content::Zfs(p) => ("zpool", p.pool.clone(), p.device.clone()),
            Content::Bcachefs(p) => (
                "bcachefs_filesystems",
                p.filesystem.clone(),
                p.device.clone(),
            ),
            _ => continue,
        };
        m.entry((kind, name)).or_default().push((dev, path, top));
    }
    m
}

/// Top-level devices in disko's order: kinds in attribute order, names sorted, then a
/// topological sort so every device comes after the devices that hold its members.
pub(crate) fn device_order(layout: &Layout) -> Result<Vec<TopDevice>, LayoutError> {
    let mut base: Vec<TopDevice> = Vec::new();
    let kinds: [(&'static str, Vec<&String>); 6] = [
        (
            "bcachefs_filesystems",
            layout.bcachefs_filesystems.keys().collect(),
        ),
        ("disk", layout.disk.keys().collect()),
        ("lvm_vg", layout.lvm_vg.keys().collect()),
        ("mdadm", layout.mdadm.keys().collect()),
        ("nodev", layout.nodev.keys().collect()),
        ("zpool", layout.zpool.keys().collect()),
    ];
    for (kind, names) in kinds {
        for n in names {
            base.push(TopDevice {
                kind,
                name: n.clone(),
            });
        }
    }
    let members = members(layout);
    let deps = |d: &TopDevice| -> Vec<TopDevice> {
        let mut v: Vec<TopDevice> = members
            .get(&(d.kind, d.name.clone()))
            .map(|ms| ms.iter().map(|(_, _, t)| t.clone()).collect())
            .unwrap_or_default();
        v.dedup();
        v
    };
    let mut done: Vec<TopDevice> = Vec::new();
    let mut visiting: Vec<TopDevice> = Vec::new();
    fn visit(
        d: &TopDevice,
        deps: &dyn Fn(&TopDevice) -> Vec<TopDevice>,
        done: &mut Vec<TopDevice>,
        visiting: &mut Vec<TopDevice>,
    ) -> Result<(), LayoutError> {
        if done.contains(d) {
            return Ok(());
        }
        if let Some(pos) = visiting.iter().position(|v| v == d) {
            let cycle: Vec<String> = visiting[pos..]
                .iter()
                .chain(std::iter::once(d))
                .map(|t| format!("{}.{}", t.kind, t.name))
                .collect();
            return Err(LayoutError::invalid(
                format!("{}.{}", d.kind, d.name),
                format!("dependency cycle: {}", cycle.join(" → ")),
            ));
        }
        visiting.push(d.clone());
        for dep in deps(d) {
            visit(&dep, deps, done, visiting)?;
        }
        visiting.pop();
        done.push(d.clone());
        Ok(())
    }
    for d in &base {
        visit(d, &deps, &mut done, &mut visiting)?;
    }
    Ok(done)
}

/// The device a zpool topology member names: absolute paths as is, disk names as disko does.
pub(crate) fn zpool_member_device(member: &str) -> String {
    if member.starts_with('/') {
        member.to_string()
    } else {
        format!("/dev/disk/by-partlabel/disk-{member}-zfs")
    }
}

/// All checks that need no facts about the machine.
pub(super) fn layout(layout: &Layout) -> Result<(), LayoutError> {
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut mountpoints: BTreeMap<String, String> = BTreeMap::new();
    let mut add_mp = |mp: &Option<String>, path: String| -> Result<(), LayoutError> {
        if let Some(m) = mp {
            if let Some(first) = mountpoints.insert(m.clone(), path.clone()) {
                return Err(LayoutError::invalid(
                    path,
                    format!("mountpoint `{m}` is also used by `{first}`"),
                ));
            }
        }
        Ok(())
    };
    for (_, path, c) in contents(layout) {
        match c {
            Content::Gpt(g) => {
                let rest: Vec<&GptPartition> =
                    g.partitions.iter().filter(|p| p.size == "100%").collect();
                if rest.len() > 1 {
                    return Err(LayoutError::invalid(
                        join(&join(&path, "partitions"), &rest[1].key),
                        format!(
                            "two partitions take the rest of the disk (size = \"100%\"): `{}` and `{}`; give one of them a fixed size",
                            rest[0].key, rest[1].key
                        ),
                    ));
                }
                for p in &g.partitions {
                    let ppath = join(&join(&path, "partitions"), &p.key);
                    if let Some(first) = labels.insert(p.label.clone(), ppath.clone()) {
                        return Err(LayoutError::invalid(
                            join(&ppath, "label"),
                            format!(
                                "duplicate partition label `{}` (also used by `{first}`); labels must be unique because partitions are found by label",
                                p.label
                            ),
                        ));
                    }
                }
            }
            Content::Filesystem(f) => add_mp(&f.mountpoint, join(&path, "mountpoint"))?,
            Content::Btrfs(b) => {
                add_mp(&b.mountpoint, join(&path, "mountpoint"))?;
                for (k, s) in &b.subvolumes {
                    add_mp(
                        &s.mountpoint,
                        join(&join(&join(&path, "subvolumes"), k), "mountpoint"),
                    )?;
                }
            }
            _ => {}
        }
    }
    for (k, n) in &layout.nodev {
        add_mp(
            &Some(n.mountpoint.clone()),
            join(&join("nodev", k), "mountpoint"),
        )?;
    }
    for (pname, pool) in &layout.zpool {
        add_mp(&pool.mountpoint, join(&join("zpool", pname), "mountpoint"))?;
        for (dname, ds) in &pool.datasets {
            if let Dataset::Fs(f) = ds {
                let legacy_or_none = matches!(
                    f.options.get("mountpoint").map(String::as_str),
                    Some("none")
                );
                if !legacy_or_none {
                    add_mp(
                        &f.mountpoint,
                        join(
                            &join(&join(&join("zpool", pname), "datasets"), dname),
                            "mountpoint",
                        ),
                    )?;
                }
            }
        }
    }

    // every reference must point at something, and every aggregate needs members
    let members = members(layout);
    for ((kind, name), ms) in &members {
        let exists = match *kind {
            "lvm_vg" => layout.lvm_vg.contains_key(name),
            "mdadm" => layout.mdadm.contains_key(name),
            "zpool" => layout.zpool.contains_key(name),
            _ => layout.bcachefs_filesystems.contains_key(name),
        };
        if !exists {
            let (opt, known): (&str, Vec<&String>) = match *kind {
                "lvm_vg" => ("vg", layout.lvm_vg.keys().collect()),
                "mdadm" => ("name", layout.mdadm.keys().collect()),
                "zpool" => ("pool", layout.zpool.keys().collect()),
                _ => ("filesystem", layout.bcachefs_filesystems.keys().collect()),
            };
            let known_strs: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
            let hint = super::error::suggest(name, &known_strs)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(LayoutError::invalid(
                join(&ms[0].1, opt),
                format!("there is no `{kind}.{name}`{hint}"),
            ));
        }
    }
    let need = |kind: &'static str, name: &str, what: &str| -> Result<(), LayoutError> {
        if members.contains_key(&(kind, name.to_string())) {
            Ok(())
        } else {
            Err(LayoutError::invalid(
                join(kind, name),
                format!("{what} has no member devices: no content refers to it"),
            ))
        }
    };
    for name in layout.lvm_vg.keys() {
        need("lvm_vg", name, "volume group (no lvm_pv with this `vg`)")?;
    }
    for name in layout.mdadm.keys() {
        need("mdadm", name, "md array (no mdraid with this `name`)")?;
    }
    for name in layout.zpool.keys() {
        need("zpool", name, "pool (no zfs content with this `pool`)")?;
    }
    for name in layout.bcachefs_filesystems.keys() {
        need(
            "bcachefs_filesystems",
            name,
            "bcachefs filesystem (no bcachefs content with this `filesystem`)",
        )?;
    }
    for (vname, vg) in &layout.lvm_vg {
        let pools: BTreeSet<&str> = vg
            .lvs
            .iter()
            .filter(|l| l.lvm_type.as_deref() == Some("thin-pool"))
            .map(|l| l.name.as_str())
            .collect();
        for lv in &vg.lvs {
            let lpath = join(&join(&join("lvm_vg", vname), "lvs"), &lv.name);
            if lv.lvm_type.as_deref() == Some("thinlv") {
                match &lv.pool {
                    Some(p) if pools.contains(p.as_str()) => {}
                    Some(p) => {
                        return Err(LayoutError::invalid(
                            join(&lpath, "pool"),
                            format!("`{p}` is not a thin-pool LV of `{vname}`"),
                        ))
                    }
                    None => {
                        return Err(LayoutError::Missing {
                            path: join(&lpath, "pool"),
                        })
                    }
                }
            }
        }
    }
    for (pname, pool) in &layout.zpool {
        if let ZpoolMode::Topology(t) = &pool.mode {
            let have: BTreeSet<String> = members
                .get(&("zpool", pname.clone()))
                .map(|ms| ms.iter().map(|(d, _, _)| d.clone()).collect())
                .unwrap_or_default();
            let mut named: Vec<(String, String)> = Vec::new();
            let tpath = join(&join(&join("zpool", pname), "mode"), "topology");
            for (class, vdevs) in [
                ("vdev", &t.vdev),
                ("log", &t.log),
                ("dedup", &t.dedup),
                ("special", &t.special),
            ] {
                for (i, v) in vdevs.iter().enumerate() {
                    for m in &v.members {
                        named.push((m.clone(), format!("{tpath}.{class}.{i}.members")));
                    }
                }
            }
            for (class, list) in [("spare", &t.spare), ("cache", &t.cache)] {
                for m in list {
                    named.push((m.clone(), format!("{tpath}.{class}")));
                }
            }
            let named_devs: BTreeSet<String> =
                named.iter().map(|(m, _)| zpool_member_device(m)).collect();
            if let Some(unused) = have.iter().find(|d| !named_devs.contains(*d)) {
                return Err(LayoutError::invalid(
                    tpath.clone(),
                    format!("`{unused}` has `pool = \"{pname}\"` but is not in the topology; add it (disko would refuse to create the pool)"),
                ));
            }
            for (m, mpath) in &named {
                let dev = zpool_member_device(m);
                if !have.contains(&dev) {
                    return Err(LayoutError::invalid(
                        mpath.clone(),
                        format!(
                            "zpool member `{m}` ({dev}) does not exist: no zfs content with `pool = \"{pname}\"` has that device (have: {})",
                            have.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
        }
    }
    device_order(layout)?;
    Ok(())
}
