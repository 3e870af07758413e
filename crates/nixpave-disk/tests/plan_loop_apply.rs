//! The planner's own commands on real loop devices: a layout planned by `nixpave_disk::plan`
//! (not hand-written operations) is applied with the executor, then checked with sgdisk/blkid.
//! Fails, with the reason, when loop devices are not available (not root).

use std::path::PathBuf;
use std::process::Command;

use nixpave_disk::exec::{self, ApplyOptions, ApplyReport};
use nixpave_disk::{plan, Layout, Mode, PlanOptions};
use nixpave_remote::LocalTransport;
use serde_json::json;

use nixpave_testsupport as support;

fn sh(argv: &[&str]) -> (bool, String) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect(argv[0]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A sparse image on a loop device plus a root mountpoint; everything is released on drop.
struct LoopDisk {
    dir: PathBuf,
    dev: String,
}

impl LoopDisk {
    /// Fails the test when loop devices are not available.
    fn new(tag: &str, mib: u64) -> LoopDisk {
        support::require_loop_devices();
        let dir = std::env::temp_dir().join(format!("nixpave-plan-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("root")).expect("scratch directory");
        let image = dir.join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .expect("sparse image");
        let (ok, dev) = sh(&["losetup", "-f", "--show", &image.display().to_string()]);
        assert!(ok, "losetup -f --show {}", image.display());
        LoopDisk {
            dir,
            dev: dev.trim().to_string(),
        }
    }

    fn root(&self) -> String {
        self.dir.join("root").display().to_string()
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-R", &self.root()]).output();
        let _ = Command::new("losetup").args(["-d", &self.dev]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn apply(p: &nixpave_disk::Plan, options: &ApplyOptions) -> ApplyReport {
    let transport = LocalTransport;
    let preflight = exec::preflight(&transport, p, options).expect("preflight");
    exec::execute(&transport, p, &preflight, options, true, &mut |_| {})
        .unwrap_or_else(|e| panic!("apply {}: {e}", p.mode))
}

#[test]
fn planned_layout_formats_mounts_is_idempotent_and_destroys_on_a_loop_disk() {
    let disk = LoopDisk::new("gpt", 320);
    // the disk name makes the partition labels unique on this machine
    let name = format!("pl{}", std::process::id());
    let layout = Layout::from_json(&json!({ "disk": { name.clone(): {
        "type": "disk", "device": disk.dev,
        "content": { "type": "gpt", "partitions": {
            "ESP": { "size": "32M", "type": "EF00",
                "content": { "type": "filesystem", "format": "vfat" } },
            "empty": { "size": "8M" },
            "data": { "size": "128M", "content": { "type": "btrfs", "extraArgs": [ "-f" ],
                "subvolumes": {
                    "/a": { "mountpoint": "/a" },
                    "/a/nested": { },
                    "/swap": { "mountpoint": "/swap", "swap": { "swapfile": { "size": "16M" } } }
                } } },
            "root": { "end": "-4M", "content": { "type": "filesystem", "format": "ext4",
                "mountpoint": "/", "extraArgs": [ "-L", "root" ] } }
        } }
    } } }))
    .expect("layout");
    let root = disk.root();
    let options = ApplyOptions::new(&root);
    let plan_options = PlanOptions {
        root_mountpoint: root.clone(),
        ..PlanOptions::default()
    };
    let planned = |mode| plan(&layout, mode, &plan_options).expect("plan");

    let first = apply(&planned(Mode::FormatMount), &options);
    assert!(first.ran > 10, "{first:?}");

    // partition numbers, names, types and sizes are what the plan said
    let (_, table) = sh(&["sgdisk", "-p", &disk.dev]);
    for (n, label, code) in [
        (1, format!("disk-{name}-ESP"), "EF00"),
        (2, format!("disk-{name}-data"), "8300"),
        (3, format!("disk-{name}-empty"), "8300"),
        (4, format!("disk-{name}-root"), "8300"),
    ] {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&n.to_string()))
            .unwrap_or_else(|| panic!("partition {n} missing:\n{table}"));
        assert!(line.contains(&label) && line.contains(code), "{line}");
    }
    let (_, info) = sh(&["sgdisk", "-i", "1", &disk.dev]);
    assert!(info.contains("32.0 MiB"), "{info}");
    let (_, last) = sh(&["sgdisk", "-i", "4", &disk.dev]);
    let end: u64 = last
        .lines()
        .find_map(|l| l.strip_prefix("Last sector: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("last sector");
    let total = 320u64 * 2048;
    assert!(
        total - end > 4 * 2048 - 64,
        "-4M leaves 4 MiB free at the end: {last}"
    );

    let fstype = |n: u32| {
        sh(&[
            "blkid",
            "-o",
            "value",
            "-s",
            "TYPE",
            &format!("{}p{n}", disk.dev),
        ])
        .1
    };
    assert_eq!(fstype(1).trim(), "vfat");
    assert_eq!(fstype(2).trim(), "btrfs");
    assert_eq!(fstype(3).trim(), "");
    assert_eq!(fstype(4).trim(), "ext4");
    let (_, subvols) = sh(&["btrfs", "subvolume", "list", &format!("{root}/a")]);
    // ids: a, then nested inside a, then swap at the top level
    for s in ["top level 5 path a", "path nested", "top level 5 path swap"] {
        assert!(subvols.lines().any(|l| l.ends_with(s)), "{subvols}");
    }
    assert!(PathBuf::from(format!("{root}/swap/swapfile")).exists());
    let (_, mounts) = sh(&["findmnt", "-rn", "-o", "TARGET", "-R", &root]);
    assert!(mounts.contains(&format!("{root}/a")), "{mounts}");

    // data written now survives unmount, mount and a second format
    std::fs::write(format!("{root}/keep.txt"), "kept").expect("write");
    apply(&planned(Mode::Unmount), &options);
    assert!(!sh(&["findmnt", "--mountpoint", &root]).0, "unmounted");
    apply(&planned(Mode::Mount), &options);
    let guids = || {
        sh(&["sgdisk", "-p", &disk.dev]).1
            + &sh(&["blkid", "-o", "export", &format!("{}p4", disk.dev)]).1
    };
    let before = guids();
    let again = apply(&planned(Mode::Format), &options);
    assert!(
        again.commands.iter().all(|c| !c[0].starts_with("mkfs")
            && !c.iter().any(|a| a.starts_with("--new=") || a == "--clear")),
        "format twice must not re-create anything: {:?}",
        again.commands
    );
    assert_eq!(
        before,
        guids(),
        "partition table and filesystem ids unchanged"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{root}/keep.txt")).unwrap(),
        "kept"
    );

    // destroy leaves a blank disk
    apply(&planned(Mode::Unmount), &options);
    apply(&planned(Mode::Destroy), &options);
    let (found, _) = sh(&["blkid", "-p", &disk.dev]);
    assert!(!found, "the disk is blank after destroy");
}

#[test]
fn planned_msdos_table_hybrid_mbr_and_tmpfs_work_on_loop_disks() {
    let (old, hyb) = (LoopDisk::new("msdos", 400), LoopDisk::new("hybrid", 64));
    let name = format!("hy{}", std::process::id());
    let layout = Layout::from_json(&json!({
        "disk": {
            "old": { "type": "disk", "device": old.dev, "content": { "type": "table", "format": "msdos",
                "partitions": [
                    { "part-type": "primary", "start": "1MiB", "end": "40MiB", "bootable": true,
                      "content": { "type": "filesystem", "format": "ext4", "mountpoint": "/" } },
                    { "part-type": "primary", "fs-type": "linux-swap", "start": "40MiB", "end": "56MiB",
                      "content": { "type": "swap" } },
                    { "part-type": "primary", "start": "56MiB", "end": "100%",
                      "content": { "type": "filesystem", "format": "xfs", "mountpoint": "/srv" } }
                ] } },
            name.clone(): { "type": "disk", "device": hyb.dev, "content": { "type": "gpt",
                "efiGptPartitionFirst": false,
                "partitions": {
                    "bios": { "size": "1M", "type": "EF02",
                              "hybrid": { "mbrPartitionType": "83", "mbrBootableFlag": true } },
                    "rest": { "size": "100%", "hybrid": {} }
                } } }
        },
        "nodev": { "/tmp": { "fsType": "tmpfs", "mountOptions": [ "size=16M" ] } }
    }))
    .expect("layout");
    let root = old.root();
    let options = ApplyOptions::new(&root);
    let plan_options = PlanOptions {
        root_mountpoint: root.clone(),
        ..PlanOptions::default()
    };
    // format only: mounting would also turn the swap partition on for this machine
    let format = plan(&layout, Mode::Format, &plan_options).expect("plan");
    apply(&format, &options);

    let (_, dump) = sh(&["sfdisk", "--dump", &old.dev]);
    assert!(dump.contains("label: dos"), "{dump}");
    let p1 = dump
        .lines()
        .find(|l| l.starts_with(&format!("{}p1", old.dev)))
        .expect("p1");
    assert!(p1.contains("bootable"), "{p1}");
    let fstype = |dev: &str| {
        sh(&["blkid", "-o", "value", "-s", "TYPE", dev])
            .1
            .trim()
            .to_string()
    };
    assert_eq!(fstype(&format!("{}p1", old.dev)), "ext4");
    assert_eq!(fstype(&format!("{}p2", old.dev)), "swap");
    assert_eq!(fstype(&format!("{}p3", old.dev)), "xfs");

    // hybrid MBR: GPT partitions 1 and 2 mirrored into the MBR, protective EE last
    let (_, mbr) = sh(&["sfdisk", "--label-nested", "dos", "--dump", &hyb.dev]);
    let entries: Vec<&str> = mbr.lines().filter(|l| l.starts_with(&hyb.dev)).collect();
    assert_eq!(entries.len(), 3, "{mbr}");
    assert!(
        entries[0].contains("type=83") && entries[0].contains("bootable"),
        "{mbr}"
    );
    assert!(entries[2].contains("type=ee"), "{mbr}");

    // mount the tmpfs and the filesystems (no swap plan needed), then unmount
    let mut mount = plan(&layout, Mode::Mount, &plan_options).expect("plan");
    mount.operations.retain(|o| o.argv[0] != "swapon");
    apply(&mount, &options);
    let (_, mounts) = sh(&["findmnt", "-rn", "-o", "TARGET,FSTYPE", "-R", &root]);
    assert!(mounts.contains(&format!("{root}/tmp tmpfs")), "{mounts}");
    assert!(mounts.contains(&format!("{root}/srv xfs")), "{mounts}");
    let mut unmount = plan(&layout, Mode::Unmount, &plan_options).expect("plan");
    unmount.operations.retain(|o| o.argv[0] != "swapoff");
    apply(&unmount, &options);
    assert!(!sh(&["findmnt", "--mountpoint", &root]).0);

    // formatting again changes nothing
    let again = apply(&format, &options);
    assert!(
        again.commands.iter().all(|c| !c[0].starts_with("mkfs")
            && c[0] != "mkswap"
            && !c.contains(&"mkpart".to_string())
            && !c.contains(&"mklabel".to_string())),
        "{:?}",
        again.commands
    );
}
