//! Snapshot tests of `update` classification: the project's fixtures and examples, and disko's
//! own examples, against synthetic facts — the disks as `format,mount` of the layout leaves
//! them (same), on disks that grew by 10 GiB (growable), without their last partition
//! (additive) — plus hand-made cases for each destructive kind.

use std::path::{Path, PathBuf};

use nixpave_disk::exec::facts::{
    BlockDevice, Facts, LogicalVolume, Mount, Swap, VolumeGroup, ZfsDataset, ZfsFacts,
};
use nixpave_disk::model::size::{parse_position, Position, SECTOR};
use nixpave_disk::model::{Content, Dataset, Layout};
use nixpave_disk::planner::update::{render_human, update, Class, Kind};
use nixpave_disk::{load_layout, LayoutSource, LoadOptions, PlanOptions};

const GIB: u64 = 1 << 30;
const ALIGN: u64 = 2048;

fn load(path: &Path) -> Layout {
    load_layout(
        &LayoutSource::File(path.to_path_buf()),
        &LoadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn options() -> PlanOptions {
    PlanOptions {
        root_mountpoint: "/".into(),
        ..PlanOptions::default()
    }
}

fn blkid_type(c: &Content) -> Option<String> {
    Some(
        match c {
            Content::Filesystem(f) => f.format.as_str(),
            Content::Btrfs(_) => "btrfs",
            Content::Swap(_) => "swap",
            Content::Luks(_) => "crypto_LUKS",
            Content::LvmPv(_) => "LVM2_member",
            Content::Mdraid(_) => "linux_raid_member",
            Content::Zfs(_) => "zfs_member",
            Content::Bcachefs(_) => "bcachefs",
            _ => return None,
        }
        .to_string(),
    )
}

fn join(root: &str, mp: &str) -> String {
    if mp == "/" {
        root.to_string()
    } else {
        format!("{}{mp}", root.trim_end_matches('/'))
    }
}

/// Mounts, swaps and subvolumes of content `c` formatted on `dev`.
fn content_facts(c: &Content, dev: &mut BlockDevice, facts: &mut Facts, root: &str) {
    dev.fstype = blkid_type(c);
    let mount =
        |source: &str, target: String, fstype: &str, fs_root: &str, opts: &[String]| Mount {
            source: source.to_string(),
            target,
            fstype: fstype.to_string(),
            majmin: "0:0".into(),
            root: fs_root.to_string(),
            options: opts.to_vec(),
        };
    match c {
        Content::Filesystem(f) => {
            if let Some(mp) = &f.mountpoint {
                facts.mounts.push(mount(
                    &dev.path,
                    join(root, mp),
                    &f.format,
                    "/",
                    &f.mount_options,
                ));
            }
        }
        Content::Btrfs(b) => {
            if let Some(mp) = &b.mountpoint {
                facts.mounts.push(mount(
                    &dev.path,
                    join(root, mp),
                    "btrfs",
                    "/",
                    &b.mount_options,
                ));
            }
            // A running system has its swap files on (NixOS's swapDevices).
            let mut swapfile = |mp: &Option<String>,
                                files: &std::collections::BTreeMap<
                String,
                nixpave_disk::model::SwapFile,
            >| {
                if let Some(mp) = mp {
                    for f in files.values() {
                        facts.swaps.push(Swap {
                            path: format!(
                                "{}/{}",
                                join(root, mp).trim_end_matches('/'),
                                f.path.trim_start_matches('/')
                            ),
                            kind: "file".into(),
                        });
                    }
                }
            };
            swapfile(&b.mountpoint, &b.swap);
            for s in b.subvolumes.values() {
                swapfile(&s.mountpoint, &s.swap);
            }
            let mut names = Vec::new();
            for s in b.subvolumes.values() {
                let name = s.name.trim_matches('/').to_string();
                if let Some(mp) = &s.mountpoint {
                    facts.mounts.push(mount(
                        &dev.path,
                        join(root, mp),
                        "btrfs",
                        &format!("/{name}"),
                        &s.mount_options,
                    ));
                }
                names.push(name);
            }
            names.sort();
            facts.btrfs_subvolumes.insert(dev.path.clone(), names);
        }
        Content::Swap(s) if !s.random_encryption => facts.swaps.push(Swap {
            path: dev.path.clone(),
            kind: "partition".into(),
        }),
        _ => {}
    }
}

/// The facts `format,mount` of `layout` at `/` leaves on disks of `disk_size` bytes.
fn formatted(layout: &Layout, disk_size: u64) -> Facts {
    let mut facts = Facts::default();
    for (i, disk) in layout.disk.values().enumerate() {
        let mut dev = BlockDevice {
            name: format!("vd{i}"),
            kname: format!("vd{i}"),
            path: disk.device.clone(),
            size: disk_size,
            kind: "disk".into(),
            ..BlockDevice::default()
        };
        match &disk.content {
            Some(Content::Gpt(g)) => {
                dev.pttype = Some("gpt".into());
                let last = disk_size / SECTOR - 34;
                let mut next = ALIGN;
                for p in &g.partitions {
                    let start = match parse_position(&p.start).expect("start") {
                        Position::Absolute(b) => (b / SECTOR).div_ceil(ALIGN) * ALIGN,
                        _ => next,
                    };
                    let end = match parse_position(&p.end).expect("end") {
                        Position::AfterStart(b) => start + b / SECTOR - 1,
                        Position::Absolute(b) => b / SECTOR - 1,
                        Position::BeforeEnd(b) => ((last + 1 - b / SECTOR) / ALIGN) * ALIGN - 1,
                        Position::Default => ((last + 1) / ALIGN) * ALIGN - 1,
                    };
                    next = (end + 1).div_ceil(ALIGN) * ALIGN;
                    let mut part = BlockDevice {
                        name: format!("vd{i}p{}", p.index),
                        kname: format!("vd{i}p{}", p.index),
                        path: format!("/dev/vd{i}p{}", p.index),
                        size: (end + 1 - start) * SECTOR,
                        kind: "part".into(),
                        start: Some(start),
                        partn: Some(p.index as u32),
                        partlabel: Some(p.label.clone()),
                        ..BlockDevice::default()
                    };
                    if let Some(c) = &p.content {
                        content_facts(c, &mut part, &mut facts, "/");
                    }
                    dev.children.push(part);
                }
            }
            Some(Content::Table(t)) => {
                dev.pttype = Some(if t.format == "msdos" { "dos" } else { "gpt" }.into());
            }
            Some(c) => content_facts(c, &mut dev, &mut facts, "/"),
            None => {}
        }
        facts.devices.push(dev);
    }
    // Volume groups with 10 GiB free; "%" sizes count as 1 GiB.
    let mut groups = std::collections::BTreeMap::new();
    for vg in layout.lvm_vg.values() {
        // `100%FREE` took what was left when the group was made.
        let full = vg
            .lvs
            .iter()
            .any(|lv| lv.size.ends_with("FREE") || lv.size.ends_with('%'));
        let mut group = VolumeGroup {
            free: if full { 0 } else { 10 * GIB },
            extent: 4 << 20,
            ..VolumeGroup::default()
        };
        for lv in &vg.lvs {
            let size = match nixpave_disk::model::size::parse_size(&lv.size) {
                Ok(nixpave_disk::model::size::Size::Bytes(b)) => b.div_ceil(4 << 20) * (4 << 20),
                _ => GIB,
            };
            group.lvs.insert(
                lv.name.clone(),
                LogicalVolume {
                    size,
                    segtype: match lv.lvm_type.as_deref() {
                        None => "linear".into(),
                        Some("thinlv") => "thin".into(),
                        Some(t) => t.into(),
                    },
                },
            );
            let mut dev = BlockDevice {
                name: format!("{}-{}", vg.name, lv.name),
                kname: format!("dm-{}", facts.devices.len()),
                path: format!(
                    "/dev/mapper/{}-{}",
                    vg.name.replace('-', "--"),
                    lv.name.replace('-', "--")
                ),
                size,
                kind: "lvm".into(),
                ..BlockDevice::default()
            };
            if let Some(c) = &lv.content {
                content_facts(c, &mut dev, &mut facts, "/");
            }
            facts.devices.push(dev);
        }
        groups.insert(vg.name.clone(), group);
    }
    facts.volume_groups = Some(groups);
    facts.zfs = Some(zfs_facts(layout, "/"));
    for n in layout.nodev.values() {
        facts.mounts.push(Mount {
            source: n.device.clone(),
            target: join("/", &n.mountpoint),
            fstype: n.fs_type.clone(),
            majmin: "0:0".into(),
            root: "/".into(),
            options: n.mount_options.clone(),
        });
    }
    facts
}

/// What `zpool list` and `zfs list` show after `format` of the layout's pools under `root`:
/// every pool imported, every dataset (and the parents `zfs create -p` made) with the layout's
/// properties and mountpoints, every volume at its size.
fn zfs_facts(layout: &Layout, root: &str) -> ZfsFacts {
    let mut z = ZfsFacts::default();
    let props = |opts: &std::collections::BTreeMap<String, String>| {
        opts.iter()
            .filter(|(k, _)| k.as_str() != "mountpoint")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mountpoint = |opts: &std::collections::BTreeMap<String, String>, mp: &Option<String>| {
        let m = opts.get("mountpoint").or(mp.as_ref())?;
        Some(if m.starts_with('/') {
            join(root, m)
        } else {
            m.clone()
        })
    };
    for pool in layout.zpool.values() {
        z.pools.push(pool.name.clone());
        z.datasets.insert(
            pool.name.clone(),
            ZfsDataset {
                kind: "filesystem".into(),
                volsize: None,
                mountpoint: mountpoint(&pool.root_fs_options, &pool.mountpoint),
                properties: props(&pool.root_fs_options),
            },
        );
        for ds in pool.datasets.values() {
            let (full, live) = match ds {
                Dataset::Fs(f) => (
                    &f.full_name,
                    ZfsDataset {
                        kind: "filesystem".into(),
                        volsize: None,
                        mountpoint: mountpoint(&f.options, &f.mountpoint),
                        properties: props(&f.options),
                    },
                ),
                Dataset::Volume(v) => (
                    &v.full_name,
                    ZfsDataset {
                        kind: "volume".into(),
                        volsize: v.size.as_deref().and_then(|s| {
                            match nixpave_disk::model::size::parse_size(s) {
                                Ok(nixpave_disk::model::size::Size::Bytes(b)) => Some(b),
                                _ => None,
                            }
                        }),
                        mountpoint: None,
                        properties: props(&v.options),
                    },
                ),
            };
            // parents made by `zfs create -p`
            let mut parent = full.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                z.datasets
                    .entry(p.to_string())
                    .or_insert_with(|| ZfsDataset {
                        kind: "filesystem".into(),
                        ..ZfsDataset::default()
                    });
                parent = p;
            }
            z.datasets.insert(full.clone(), live);
        }
    }
    z
}

/// The same facts with the highest-numbered partition of every disk gone.
fn without_last_partition(mut facts: Facts) -> Facts {
    for dev in &mut facts.devices {
        if let Some(last) = dev.children.pop() {
            facts.mounts.retain(|m| m.source != last.path);
            facts.swaps.retain(|s| s.path != last.path);
        }
    }
    facts
}

fn grown(mut facts: Facts, by: u64) -> Facts {
    for dev in &mut facts.devices {
        dev.size += by;
    }
    facts
}

fn snapshot_all(tag: &str, layouts: &[(String, Layout)]) {
    for (name, layout) in layouts {
        let same = formatted(layout, 20 * GIB);
        let cases = [
            ("same", same.clone()),
            ("grown", grown(same.clone(), 10 * GIB)),
            ("added", without_last_partition(same)),
        ];
        for (case, facts) in cases {
            let u = update(layout, &facts, &options()).expect("update plan");
            if case == "same" {
                let changes: Vec<_> = u
                    .differences
                    .iter()
                    .filter(|d| d.class != Class::AlreadyThere)
                    .collect();
                assert!(changes.is_empty(), "{name}: {changes:#?}");
            }
            insta::assert_snapshot!(format!("{tag}-{name}.{case}"), render_human(&u));
        }
    }
}

fn nix_files(dir: &Path) -> Vec<(String, Layout)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "nix"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().expect("stem").to_string_lossy().into_owned();
            (name, load(&p))
        })
        .filter(|(name, _)| name != "function")
        .collect()
}

#[test]
fn fixtures_and_examples_classify() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    snapshot_all("fixture", &nix_files(&crate_dir.join("fixtures")));
    snapshot_all("example", &nix_files(&crate_dir.join("../../examples")));
}

/// For every layout with a pool: a dataset added (the layout's last one not in `zfs list`), a
/// volume grown (the live one at half the layout's size), a dataset removed (one more in
/// `zfs list` than in the layout).
fn snapshot_zfs(tag: &str, layouts: &[(String, Layout)]) -> usize {
    let mut n = 0;
    for (name, layout) in layouts.iter().filter(|(_, l)| !l.zpool.is_empty()) {
        n += 1;
        let same = formatted(layout, 20 * GIB);
        let mut cases = Vec::new();
        let mut added = same.clone();
        let z = added.zfs.as_mut().expect("zfs facts");
        let last = layout
            .zpool
            .values()
            .flat_map(|p| p.datasets.values())
            .map(|d| match d {
                Dataset::Fs(f) => f.full_name.clone(),
                Dataset::Volume(v) => v.full_name.clone(),
            })
            .next_back();
        if let Some(last) = last {
            z.datasets.remove(&last);
            cases.push(("dataset-added", added));
        }
        let mut grown = same.clone();
        let z = grown.zfs.as_mut().expect("zfs facts");
        if let Some(v) = z
            .datasets
            .values_mut()
            .find(|d| d.kind == "volume" && d.volsize.is_some())
        {
            v.volsize = v.volsize.map(|s| s / 2);
            cases.push(("zvol-grown", grown));
        }
        let mut removed = same;
        let z = removed.zfs.as_mut().expect("zfs facts");
        let pool = z.pools[0].clone();
        z.datasets.insert(
            format!("{pool}/old-data"),
            ZfsDataset {
                kind: "filesystem".into(),
                mountpoint: Some("/old-data".into()),
                ..ZfsDataset::default()
            },
        );
        cases.push(("dataset-removed", removed));
        for (case, facts) in cases {
            let u = update(layout, &facts, &options()).expect("update plan");
            let kind = match case {
                "dataset-added" => Kind::DatasetAdded,
                "zvol-grown" => Kind::ZvolGrown,
                _ => Kind::DatasetRemoved,
            };
            assert!(
                u.differences.iter().any(|d| d.kind == kind),
                "{name} {case}: {u:#?}"
            );
            insta::assert_snapshot!(format!("zfs-{tag}-{name}.{case}"), render_human(&u));
        }
    }
    n
}

#[test]
fn zfs_datasets_of_fixtures_and_examples_are_compared() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let n = snapshot_zfs("fixture", &nix_files(&crate_dir.join("fixtures")))
        + snapshot_zfs("example", &nix_files(&crate_dir.join("../../examples")));
    assert!(n >= 2, "the project's ZFS fixtures are gone ({n} found)");
}

#[test]
#[ignore = "needs disko's examples in ../shared next to the repository; run by scripts/conformance.sh"]
fn zfs_datasets_of_disko_examples_are_compared() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/disko/examples");
    assert!(snapshot_zfs("disko", &nix_files(&dir)) >= 4);
}

fn zfs_json() -> serde_json::Value {
    serde_json::json!({
        "disk": {"a": {"type": "disk", "device": "/dev/vda", "content": {"type": "zfs", "pool": "tank"}}},
        "zpool": {"tank": {"type": "zpool", "rootFsOptions": {"compression": "zstd"}, "datasets": {
            "home": {"type": "zfs_fs", "mountpoint": "/home", "options": {"recordsize": "128K"}},
            "secret": {"type": "zfs_fs", "options": {"encryption": "on", "keyformat": "passphrase", "keylocation": "file:///run/key"}},
            "vm": {"type": "zfs_volume", "size": "10G"}
        }}}
    })
}

#[test]
fn zfs_properties_pools_and_tools_are_classified() {
    let layout = Layout::from_json(&zfs_json()).expect("layout");
    let same = formatted(&layout, 20 * GIB);
    // equal sizes in another spelling (zfs list -p) are the same
    let mut facts = same.clone();
    let z = facts.zfs.as_mut().expect("zfs");
    z.datasets
        .get_mut("tank/home")
        .expect("home")
        .properties
        .insert("recordsize".into(), "131072".into());
    z.datasets
        .get_mut("tank/secret")
        .expect("secret")
        .properties
        .insert("encryption".into(), "aes-256-gcm".into());
    let u = update(&layout, &facts, &options()).expect("plan");
    assert!(
        u.differences.iter().all(|d| d.class == Class::AlreadyThere),
        "{u:#?}"
    );
    // recordsize changes in place; encryption does not; a shrunk volume does not
    let mut facts = same.clone();
    let z = facts.zfs.as_mut().expect("zfs");
    z.datasets
        .get_mut("tank/home")
        .expect("home")
        .properties
        .insert("recordsize".into(), "1048576".into());
    z.datasets
        .get_mut("tank/secret")
        .expect("secret")
        .properties
        .insert("encryption".into(), "off".into());
    z.datasets.get_mut("tank/vm").expect("vm").volsize = Some(20 * GIB);
    let u = update(&layout, &facts, &options()).expect("plan");
    let kinds: Vec<(Class, Kind)> = u
        .differences
        .iter()
        .filter(|d| d.class != Class::AlreadyThere)
        .map(|d| (d.class, d.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (Class::Additive, Kind::DatasetProperty),
            (Class::Destructive, Kind::DatasetProperty),
            (Class::Destructive, Kind::ZvolShrunk),
        ]
    );
    assert!(u
        .differences
        .iter()
        .filter(|d| d.class == Class::Destructive)
        .all(|d| d.why.is_some()));
    insta::assert_snapshot!("zfs-properties", render_human(&u));
    // a pool that is not imported cannot be made in place
    let mut facts = same.clone();
    facts.zfs.as_mut().expect("zfs").pools.clear();
    let u = update(&layout, &facts, &options()).expect("plan");
    let pool = u
        .differences
        .iter()
        .find(|d| d.kind == Kind::Pool)
        .expect("pool difference");
    assert_eq!(pool.class, Class::Destructive);
    assert!(pool.why.as_deref().is_some_and(|w| w.contains("vdevs")));
    // no ZFS tools: not compared, said so
    let mut facts = same;
    facts.zfs = None;
    let u = update(&layout, &facts, &options()).expect("plan");
    assert!(u.differences.iter().all(|d| d.kind != Kind::Pool));
    assert!(u.not_compared.iter().any(|n| n.contains("ZFS pool `tank`")));
}

#[test]
#[ignore = "needs disko's examples in ../shared next to the repository; run by scripts/conformance.sh"]
fn disko_examples_classify() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/disko/examples");
    assert!(
        dir.is_dir(),
        "disko's examples are not at {}",
        dir.display()
    );
    snapshot_all("disko", &nix_files(&dir));
}

fn simple() -> Layout {
    Layout::from_json(&serde_json::json!({
        "disk": {"main": {"type": "disk", "device": "/dev/vda", "content": {"type": "gpt", "partitions": {
            "ESP": {"size": "512M", "type": "EF00", "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
            "root": {"size": "4G", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}},
            "data": {"size": "100%", "content": {"type": "filesystem", "format": "xfs", "mountpoint": "/data"}}
        }}}}
    }))
    .expect("valid layout")
}

fn with(mut json: serde_json::Value, path: &[&str], value: serde_json::Value) -> Layout {
    let mut at = &mut json;
    for key in &path[..path.len() - 1] {
        at = &mut at[*key];
    }
    at[path[path.len() - 1]] = value;
    Layout::from_json(&json).expect("valid layout")
}

fn simple_json() -> serde_json::Value {
    serde_json::json!({
        "disk": {"main": {"type": "disk", "device": "/dev/vda", "content": {"type": "gpt", "partitions": {
            "ESP": {"size": "512M", "type": "EF00", "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
            "root": {"size": "4G", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}},
            "data": {"size": "100%", "content": {"type": "filesystem", "format": "xfs", "mountpoint": "/data"}}
        }}}}
    })
}

const PARTS: [&str; 5] = ["disk", "main", "content", "partitions", ""];

fn part_path(name: &str) -> Vec<&str> {
    let mut p = PARTS.to_vec();
    p[4] = name;
    p
}

#[test]
fn destructive_kinds_say_why() {
    let mut facts = formatted(&simple(), 20 * GIB);
    facts.devices[0].children[0].parttype = Some("c12a7328-f81f-11d2-ba4b-00a0c93ec93b".into());
    let cases: Vec<(&str, Layout, Kind)> = vec![
        (
            "shrink",
            with(
                simple_json(),
                &part_path("root"),
                serde_json::json!({"size": "2G", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}),
            ),
            Kind::PartitionShrunk,
        ),
        (
            "fs-change",
            with(
                simple_json(),
                &part_path("root"),
                serde_json::json!({"size": "4G", "content": {"type": "filesystem", "format": "xfs", "mountpoint": "/"}}),
            ),
            Kind::ContentChanged,
        ),
        (
            "luks-added",
            with(
                simple_json(),
                &part_path("root"),
                serde_json::json!({"size": "4G", "content": {"type": "luks", "name": "crypted", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}}),
            ),
            Kind::ContentChanged,
        ),
        (
            "grow-middle",
            with(
                simple_json(),
                &part_path("root"),
                serde_json::json!({"size": "8G", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}),
            ),
            Kind::PartitionShrunk,
        ),
        (
            "type",
            with(
                simple_json(),
                &part_path("ESP"),
                serde_json::json!({"size": "512M", "type": "EF02"}),
            ),
            Kind::PartitionType,
        ),
        (
            "move",
            with(
                simple_json(),
                &part_path("ESP"),
                serde_json::json!({"start": "2M", "end": "+512M", "type": "EF00", "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}}),
            ),
            Kind::PartitionMoved,
        ),
    ];
    let mut removed = simple_json();
    removed["disk"]["main"]["content"]["partitions"]
        .as_object_mut()
        .expect("object")
        .remove("data");
    let removed = Layout::from_json(&removed).expect("valid");
    let mut all = cases;
    all.push(("removal", removed, Kind::PartitionRemoved));
    for (name, layout, kind) in all {
        let u = update(&layout, &facts, &options()).expect("update plan");
        let d = u
            .of(Class::Destructive)
            .find(|d| d.kind == kind)
            .unwrap_or_else(|| panic!("{name}: no destructive {kind:?}:\n{}", render_human(&u)));
        assert!(d.why.as_deref().is_some_and(|w| w.len() > 20), "{name}");
        assert!(d.operations.is_empty(), "{name}");
        assert!(
            u.plan().operations.iter().all(|o| !o.destructive),
            "{name}: update plans never carry destructive steps"
        );
        insta::assert_snapshot!(format!("destructive-{name}"), render_human(&u));
    }
}

#[test]
fn a_new_partition_never_renumbers_and_goes_into_free_space() {
    // `aaa` sorts first: in a fresh layout it would be partition 1, here it takes number 4.
    let mut json = simple_json();
    json["disk"]["main"]["content"]["partitions"]["data"]["size"] = "8G".into();
    let layout_a = Layout::from_json(&json).expect("valid");
    let facts = formatted(&layout_a, 20 * GIB);
    json["disk"]["main"]["content"]["partitions"]["aaa"] =
        serde_json::json!({"size": "1G", "content": {"type": "swap"}});
    let layout_b = Layout::from_json(&json).expect("valid");
    let u = update(&layout_b, &facts, &options()).expect("update plan");
    assert!(!u.has_destructive(), "{}", render_human(&u));
    let added = u
        .of(Class::Additive)
        .find(|d| d.kind == Kind::PartitionAdded)
        .expect("a new partition");
    let argv = &added.operations[0].argv;
    let data = &facts.devices[0].children[2];
    let after_data = data.start.expect("start") + data.size / SECTOR;
    assert_eq!(
        argv[1],
        format!("--new=4:{after_data}:{}", after_data + 2 * 1024 * 1024 - 1)
    );
    assert!(
        argv.iter().any(|a| a == "--change-name=4:disk-main-aaa"),
        "{argv:?}"
    );
    let plan = u.plan();
    let programs: Vec<&str> = plan.operations.iter().map(|o| o.argv[0].as_str()).collect();
    assert_eq!(programs, ["sgdisk", "mkswap", "swapon"]);
    insta::assert_json_snapshot!("new-partition.json", u);
}

#[test]
fn mount_options_and_subvolumes_are_additive() {
    let json = serde_json::json!({
        "disk": {"main": {"type": "disk", "device": "/dev/vda", "content": {"type": "gpt", "partitions": {
            "root": {"size": "100%", "content": {"type": "btrfs", "subvolumes": {
                "@root": {"mountpoint": "/"},
                "@nix": {"mountpoint": "/nix", "mountOptions": ["noatime"]}
            }}}
        }}}}
    });
    let a = Layout::from_json(&json).expect("valid");
    let facts = formatted(&a, 20 * GIB);
    let mut jb = json.clone();
    let subs = &mut jb["disk"]["main"]["content"]["partitions"]["root"]["content"]["subvolumes"];
    // compress is the filesystem's (btrfs keeps the first mount's): only noexec can differ.
    subs["@nix"]["mountOptions"] = serde_json::json!(["noatime", "compress=zstd", "noexec"]);
    subs["@home"] = serde_json::json!({"mountpoint": "/home"});
    let b = Layout::from_json(&jb).expect("valid");
    let u = update(&b, &facts, &options()).expect("update plan");
    let mut kinds: Vec<String> = u
        .of(Class::Additive)
        .map(|d| format!("{:?}", d.kind))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["MountAdded", "MountOptions", "SubvolumeAdded"],
        "{}",
        render_human(&u)
    );
    insta::assert_snapshot!("subvolume-and-options", render_human(&u));
}

fn lvm_json(root_size: &str, extra: Option<serde_json::Value>) -> Layout {
    let mut lvs = serde_json::json!({
        "root": {"size": root_size, "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}},
        "data": {"size": "100%FREE", "content": {"type": "filesystem", "format": "xfs", "mountpoint": "/data"}}
    });
    if let Some(e) = extra {
        lvs["home"] = e;
    }
    Layout::from_json(&serde_json::json!({
        "disk": {"main": {"type": "disk", "device": "/dev/vda", "content": {"type": "gpt", "partitions": {
            "pv": {"size": "100%", "content": {"type": "lvm_pv", "vg": "pool"}}}}}},
        "lvm_vg": {"pool": {"type": "lvm_vg", "lvs": lvs}}
    }))
    .expect("valid layout")
}

#[test]
fn lvm_volumes_are_added_grown_or_refused_from_vgs_and_lvs() {
    let mut facts = formatted(&lvm_json("2G", None), 20 * GIB);
    let u = update(&lvm_json("2G", None), &facts, &options()).expect("update plan");
    assert!(u.plan().operations.is_empty(), "{}", render_human(&u));
    // 10 GiB more in the group (a grown PV): 100%FREE grows into it.
    if let Some(groups) = facts.volume_groups.as_mut() {
        groups.get_mut("pool").expect("pool").free = 10 * GIB;
    }
    let u = update(&lvm_json("2G", None), &facts, &options()).expect("update plan");
    assert_eq!(
        u.of(Class::Growable).map(|d| d.kind).collect::<Vec<_>>(),
        [Kind::LvGrown]
    );
    // A new LV, and root grown: additive and growable, lvcreate/lvextend + resize2fs.
    let home = serde_json::json!({"size": "1G", "priority": 10, "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/home"}});
    let u = update(&lvm_json("3G", Some(home)), &facts, &options()).expect("update plan");
    assert!(!u.has_destructive(), "{}", render_human(&u));
    let plan = u.plan();
    let programs: Vec<&str> = plan.operations.iter().map(|o| o.argv[0].as_str()).collect();
    assert!(
        programs.contains(&"lvcreate") && programs.contains(&"lvextend"),
        "{programs:?}"
    );
    insta::assert_snapshot!("lvm-added-and-grown", render_human(&u));
    // Root shrunk, an LV gone: destructive.
    let mut facts2 = facts.clone();
    if let Some(groups) = facts2.volume_groups.as_mut() {
        groups.get_mut("pool").expect("pool").lvs.insert(
            "old".into(),
            LogicalVolume {
                size: GIB,
                segtype: "linear".into(),
            },
        );
    }
    let u = update(&lvm_json("1G", None), &facts2, &options()).expect("update plan");
    let kinds: Vec<Kind> = u.of(Class::Destructive).map(|d| d.kind).collect();
    assert!(
        kinds.contains(&Kind::LvShrunk) && kinds.contains(&Kind::LvRemoved),
        "{kinds:?}"
    );
    insta::assert_snapshot!("lvm-destructive", render_human(&u));
}

#[test]
fn an_unnamed_partition_is_never_taken_for_a_layout_partition() {
    // A partition made by another tool has no GPT name: it matches nothing, even in the slot the
    // layout's partition would have.
    let mut facts = formatted(&simple(), 20 * GIB);
    facts.devices[0].children[2].partlabel = None;
    let u = update(&simple(), &facts, &options()).expect("update plan");
    let removed = u
        .of(Class::Destructive)
        .find(|d| d.kind == Kind::PartitionRemoved)
        .expect("the unnamed partition is reported");
    assert!(
        removed
            .why
            .as_deref()
            .is_some_and(|w| w.contains("no GPT name")),
        "{removed:?}"
    );
    // The layout's `data` is new, and there is no room for it: refused, not put elsewhere.
    assert!(u
        .of(Class::Destructive)
        .any(|d| d.kind == Kind::PartitionAdded));
}
