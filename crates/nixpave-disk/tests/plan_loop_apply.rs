//! The planner's own commands on real loop devices: a layout planned by `nixpave_disk::plan`
//! (not hand-written operations) is applied with the executor, then checked with sgdisk/blkid.
//! Skips (passes with a message) when loop devices are not available (not root).

use std::path::PathBuf;
use std::process::Command;

use nixpave_disk::exec::{self, ApplyOptions, ApplyReport};
use nixpave_disk::{plan, Layout, Mode, PlanOptions};
use nixpave_remote::LocalTransport;
use serde_json::json;

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
    fn new(mib: u64) -> Option<LoopDisk> {
        let (root, uid) = sh(&["id", "-u"]);
        if !root || uid.trim() != "0" || !sh(&["losetup", "-f"]).0 {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("nixpave-plan-loop-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("root")).ok()?;
        let image = dir.join("disk.img");
        std::fs::File::create(&image)
            .ok()?
            .set_len(mib << 20)
            .ok()?;
        let (ok, dev) = sh(&["losetup", "-f", "--show", image.to_str()?]);
        ok.then(|| LoopDisk {
            dir,
            dev: dev.trim().to_string(),
        })
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
    let Some(disk) = LoopDisk::new(320) else {
        eprintln!("skipped: needs root and loop devices");
        return;
    };
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
