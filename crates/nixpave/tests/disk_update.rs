//! `nixpave disk apply --mode update` on real loop devices: layout A is formatted and mounted,
//! data is written, layout B is applied over it. New objects are checked with partx, blkid,
//! findmnt and /proc/swaps; the data must be intact; destructive changes are refused with
//! nothing written (the image's checksum is unchanged).

use nixpave_testsupport as support;

use std::process::Output;
use std::time::Instant;

use assert_cmd::Command;
use support::{fstype, mounted_source, partitions, sh, Scratch};

fn nixpave(args: &[&str]) -> Output {
    let mut cmd = Command::cargo_bin("nixpave").expect("nixpave binary");
    cmd.args(args).write_stdin("");
    cmd.output().expect("run nixpave")
}

use nixpave_testsupport::output_text as text;

/// A layout on one disk `main` (device given with --disk) with these partitions.
fn gpt(partitions: &str) -> String {
    format!(
        r#"{{"disk": {{"main": {{"type": "disk", "device": "/dev/placeholder", "content": {{"type": "gpt", "partitions": {{ {partitions} }}}}}}}}}}"#
    )
}

/// `nixpave disk SUB LAYOUT --disk main=DEV --root-mountpoint ROOT ARGS…`.
fn disk(sub: &str, layout: &str, dev: &str, root: &str, args: &[&str]) -> Output {
    let disk_arg = format!("main={dev}");
    let mut all = vec![
        "disk",
        sub,
        layout,
        "--disk",
        &disk_arg,
        "--root-mountpoint",
        root,
    ];
    all.extend(args);
    nixpave(&all)
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", text(&out));
    out
}

fn size_of(dev: &str) -> u64 {
    sh(&["blockdev", "--getsize64", dev])
        .trim()
        .parse()
        .expect("size")
}

/// Size in bytes of the filesystem mounted at `target`.
fn fs_bytes(target: &str) -> u64 {
    let out = sh(&["findmnt", "-b", "-n", "-o", "SIZE", "--mountpoint", target]);
    out.trim().parse().expect("findmnt size")
}

const SECTORS_PER_MIB: u64 = 2048;

/// True when this process has CAP_SYS_RESOURCE, which the kernel requires for growing a
/// mounted ext4 (`EXT4_IOC_RESIZE_FS`); some sandboxes drop it even for root.
fn has_cap_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

const LAYOUT_A: &str = r#"
    "boot": {"size": "64M", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/boot"}},
    "btr": {"size": "200M", "content": {"type": "btrfs", "extraArgs": ["-f"], "subvolumes": {
        "@root": {"mountpoint": "/"}}}},
    "data": {"size": "100M", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/data"}}
"#;

#[test]
fn update_adds_partitions_subvolumes_swap_mount_options_and_a_blank_disk_keeping_data() {
    support::require_loop_devices();
    let _mounts = support::mounts_lock();
    let mut scratch = Scratch::new("update-add");
    let dev = scratch.disk(1200);
    let extra = scratch.disk(64);
    let root = scratch.root();
    let a = scratch.write_file("a.json", &gpt(LAYOUT_A));
    ok(disk("apply", &a, &dev, &root, &["--mode", "format,mount"]));
    std::fs::write(format!("{root}/data/keep"), "data of layout A").expect("write data");
    std::fs::write(format!("{root}/root-file"), "on the btrfs root").expect("write data");
    let before = partitions(&dev);

    // B: a swap partition whose name sorts first, an xfs filling the rest, a new subvolume
    // with a swap file, another one mounted at /home, noatime on /boot, and a blank disk.
    let b_json = format!(
        r#"{{"disk": {{
  "main": {{"type": "disk", "device": "/dev/placeholder", "content": {{"type": "gpt", "partitions": {{
    "aaswap": {{"size": "32M", "content": {{"type": "swap"}}}},
    "boot": {{"size": "64M", "content": {{"type": "filesystem", "format": "ext4", "mountpoint": "/boot", "mountOptions": ["noatime"]}}}},
    "btr": {{"size": "200M", "content": {{"type": "btrfs", "extraArgs": ["-f"], "subvolumes": {{
        "@root": {{"mountpoint": "/"}},
        "@home": {{"mountpoint": "/home"}},
        "@swap": {{"mountpoint": "/.swap", "swap": {{"swapfile": {{"size": "16M"}}}}}}}}}}}},
    "data": {{"size": "100M", "content": {{"type": "filesystem", "format": "ext4", "mountpoint": "/data"}}}},
    "srv": {{"size": "100%", "content": {{"type": "filesystem", "format": "xfs", "mountpoint": "/srv"}}}}
  }}}}}},
  "extra": {{"type": "disk", "device": "{extra}", "content": {{"type": "gpt", "partitions": {{
    "x": {{"size": "100%", "content": {{"type": "filesystem", "format": "ext4", "mountpoint": "/extra"}}}}}}}}}}
}}}}"#
    );
    let b = scratch.write_file("b.json", &b_json);

    // The plan groups by class and names every new object.
    let out = ok(disk("plan", &b, &dev, &root, &["--mode", "update"]));
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    for needle in [
        "additive (",
        "new partition 4 `disk-main-aaswap` (32 MiB",
        "new partition 5 `disk-main-srv`",
        "btrfs subvolumes @home, @swap",
        "add mount option noatime",
        "blank disk `extra`",
        "destructive (not done in place) (0)",
    ] {
        assert!(plan.contains(needle), "{needle} missing:\n{plan}");
    }
    let json = ok(disk(
        "plan",
        &b,
        &dev,
        &root,
        &["--mode", "update", "--json"],
    ));
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json plan");
    assert!(json["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .any(|d| d["class"] == "additive" && d["kind"] == "partition_added"));

    // A dry run writes nothing.
    let out = ok(disk(
        "apply",
        &b,
        &dev,
        &root,
        &["--mode", "update", "--dry-run"],
    ));
    assert!(text(&out).contains("nothing was changed"), "{}", text(&out));
    assert_eq!(partitions(&dev), before, "a dry run must not partition");

    let started = Instant::now();
    let out = ok(disk("apply", &b, &dev, &root, &["--mode", "update"]));
    eprintln!(
        "update (6 kinds, 2 disks) took {:?}\n{}",
        started.elapsed(),
        text(&out)
    );

    // Old partitions keep their numbers, places and names; new ones take 4 and 5.
    let after = partitions(&dev);
    assert_eq!(
        &after[..3],
        &before[..],
        "existing partitions are untouched"
    );
    assert_eq!(after[3].number, 4);
    assert_eq!(after[3].name, "disk-main-aaswap");
    assert_eq!(after[3].sectors, 32 * SECTORS_PER_MIB);
    assert_eq!(after[3].parttype, "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f");
    assert_eq!(after[4].number, 5);
    assert_eq!(after[4].name, "disk-main-srv");
    assert!(after[4].start > after[3].start);
    let p4 = format!("{dev}p4");
    let p5 = format!("{dev}p5");
    assert_eq!(fstype(&p4), "swap");
    assert_eq!(fstype(&p5), "xfs");
    let swaps = std::fs::read_to_string("/proc/swaps").expect("swaps");
    assert!(swaps.contains(&p4), "{swaps}");
    assert_eq!(
        mounted_source(&format!("{root}/srv")).as_deref(),
        Some(p5.as_str())
    );
    let home = mounted_source(&format!("{root}/home")).expect("/home mounted");
    assert!(home.ends_with("[/@home]"), "{home}");
    let subvols = sh(&["btrfs", "subvolume", "list", &root]);
    assert!(
        subvols.contains("@home") && subvols.contains("@swap"),
        "{subvols}"
    );
    assert!(
        std::path::Path::new(&format!("{root}/.swap/swapfile")).exists(),
        "the swap file exists"
    );
    let boot = sh(&[
        "findmnt",
        "-n",
        "-o",
        "OPTIONS",
        "--mountpoint",
        &format!("{root}/boot"),
    ]);
    assert!(boot.contains("noatime"), "{boot}");
    assert_eq!(partitions(&extra)[0].name, "disk-extra-x");
    assert_eq!(
        mounted_source(&format!("{root}/extra")).as_deref(),
        Some(format!("{extra}p1").as_str())
    );
    // Data intact.
    assert_eq!(
        std::fs::read_to_string(format!("{root}/data/keep")).expect("read"),
        "data of layout A"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{root}/root-file")).expect("read"),
        "on the btrfs root"
    );

    // Applying B again finds everything there (the swap file exists, though it is off).
    let out = ok(disk("plan", &b, &dev, &root, &["--mode", "update"]));
    let again = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        again.contains("Summary: 0 additive and 0 growable change(s), 0 step(s); 0 destructive"),
        "{again}"
    );
    assert!(
        again.contains("swap file swapfile in subvolume @swap"),
        "{again}"
    );

    // `nixos-config` of B describes the disks as they now are.
    let disk_arg = format!("main={dev}");
    let out = ok(nixpave(&[
        "disk",
        "nixos-config",
        &b,
        "--disk",
        &disk_arg,
        "--json",
    ]));
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let file_systems = config["fileSystems"].as_object().expect("fileSystems");
    assert_eq!(file_systems.len(), 7, "{config}");
    for (mountpoint, fs) in file_systems {
        let target = if mountpoint == "/" {
            root.clone()
        } else {
            format!("{root}{mountpoint}")
        };
        let source = mounted_source(&target)
            .unwrap_or_else(|| panic!("{mountpoint} of nixos-config is not mounted"));
        let node = source.split('[').next().expect("node").to_string();
        let label = fs["device"]
            .as_str()
            .and_then(|d| d.strip_prefix("/dev/disk/by-partlabel/"))
            .expect("a partlabel device");
        let name = sh(&["blkid", "-p", "-s", "PART_ENTRY_NAME", "-o", "value", &node]);
        assert_eq!(name.trim(), label, "{mountpoint}");
        let mounted_type = sh(&["findmnt", "-n", "-o", "FSTYPE", "--mountpoint", &target]);
        assert_eq!(
            Some(mounted_type.trim()),
            fs["fsType"].as_str(),
            "{mountpoint}"
        );
    }
    let swap_devices = config["swapDevices"].as_array().expect("swapDevices");
    assert!(swap_devices
        .iter()
        .any(|s| s["device"] == "/dev/disk/by-partlabel/disk-main-aaswap"));
}

#[test]
fn update_grows_the_last_partition_and_its_filesystem_after_the_image_grew() {
    support::require_loop_devices();
    // (filesystem, mounted?): online for xfs and btrfs, offline (e2fsck + resize2fs) for ext4.
    for (format, mounted) in [("xfs", true), ("btrfs", true), ("ext4", false)] {
        grow_case(format, mounted);
    }
}

// Ignored, not skipped: root on this machine and on CI lacks CAP_SYS_RESOURCE, which the kernel
// needs to grow a mounted ext4 (EXT4_IOC_RESIZE_FS). Run it with `--ignored` where root has it;
// there it fails, rather than passes, without the capability.
#[test]
#[ignore = "growing a mounted ext4 needs CAP_SYS_RESOURCE, which root here and on CI lacks"]
fn update_grows_a_mounted_ext4_online() {
    support::require_loop_devices();
    assert!(
        has_cap_sys_resource(),
        "growing a mounted ext4 needs CAP_SYS_RESOURCE, which this root lacks"
    );
    grow_case("ext4", true);
}

/// Formats a layout whose last partition fills the disk, grows the image by 300 MiB and
/// applies the same layout in update mode.
fn grow_case(format: &str, mounted: bool) {
    let _mounts = support::mounts_lock();
    let mut scratch = Scratch::new("update-grow");
    let dev = scratch.disk(400);
    let root = scratch.root();
    let mountpoint = if mounted {
        r#", "mountpoint": "/data""#
    } else {
        ""
    };
    let extra = if format == "btrfs" || format == "xfs" {
        r#", "extraArgs": ["-f"]"#
    } else {
        ""
    };
    let layout = scratch.write_file("layout.json",
        &gpt(&format!(
            r#""boot": {{"size": "32M", "content": {{"type": "filesystem", "format": "ext4"}}}},
                   "data": {{"size": "100%", "content": {{"type": "filesystem", "format": "{format}"{extra}{mountpoint}}}}}"#
        )),
    );
    ok(disk(
        "apply",
        &layout,
        &dev,
        &root,
        &["--mode", "format,mount"],
    ));
    let p2 = format!("{dev}p2");
    if mounted {
        std::fs::write(format!("{root}/data/keep"), "kept").expect("write data");
    }
    let part_before = size_of(&p2);
    let fs_before = mounted.then(|| fs_bytes(&format!("{root}/data")));

    // The cloud disk got bigger.
    scratch.grow(0, 700);
    let out = ok(disk("plan", &layout, &dev, &root, &["--mode", "update"]));
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(plan.contains("growable (1)"), "{format}: {plan}");
    let started = Instant::now();
    let out = ok(disk("apply", &layout, &dev, &root, &["--mode", "update"]));
    eprintln!(
        "grow {format} (mounted: {mounted}) took {:?}\n{}",
        started.elapsed(),
        text(&out)
    );
    let part_after = size_of(&p2);
    assert!(
        part_after >= part_before + 299 * 1024 * 1024,
        "{format}: partition {part_before} -> {part_after}"
    );
    let parts = partitions(&dev);
    assert_eq!(parts[1].name, "disk-main-data", "name kept");
    assert_eq!(parts.len(), 2);
    if mounted {
        let fs_after = fs_bytes(&format!("{root}/data"));
        assert!(
            fs_after > fs_before.unwrap_or(0) + 250 * 1024 * 1024,
            "{format}: filesystem {fs_before:?} -> {fs_after}"
        );
        assert_eq!(
            std::fs::read_to_string(format!("{root}/data/keep")).expect("read"),
            "kept"
        );
    } else {
        // e2fsck, then resize2fs offline: the superblock says the new size.
        let info = sh(&["dumpe2fs", "-h", &p2]);
        let blocks: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("Block count:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("block count");
        let block_size: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("Block size:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("block size");
        assert_eq!(blocks * block_size, part_after, "ext4 fills the partition");
    }
    // Nothing left to do.
    let out = ok(disk("plan", &layout, &dev, &root, &["--mode", "update"]));
    let again = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(again.contains("growable (0)"), "{again}");
}

#[test]
fn update_refuses_destructive_changes_and_writes_nothing() {
    support::require_loop_devices();
    let _mounts = support::mounts_lock();
    let mut scratch = Scratch::new("update-refuse");
    let dev = scratch.disk(600);
    let root = scratch.root();
    let a = scratch.write_file("a.json", &gpt(LAYOUT_A));
    ok(disk("apply", &a, &dev, &root, &["--mode", "format,mount"]));
    std::fs::write(format!("{root}/data/keep"), "kept").expect("write data");
    // Unmounted, so nothing but nixpave could change the image between the checksums.
    ok(disk("apply", &a, &dev, &root, &["--mode", "unmount"]));
    let before = scratch.checksum(0);

    // `data` shrunk and turned into xfs, `boot` gone; a new partition would fit.
    let c = scratch.write_file("c.json",
        &gpt(r#"
    "btr": {"size": "200M", "content": {"type": "btrfs", "extraArgs": ["-f"], "subvolumes": {
        "@root": {"mountpoint": "/"}}}},
    "data": {"size": "50M", "content": {"type": "filesystem", "format": "xfs", "mountpoint": "/data"}},
    "new": {"size": "32M", "content": {"type": "filesystem", "format": "ext4"}}
"#),
    );
    let out = disk("apply", &c, &dev, &root, &["--mode", "update"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    for needle in [
        "why not: shrinking cuts off the end",
        "holds ext4; making it xfs means formatting it, which erases its data",
        "partition 1 `disk-main-boot`",
        "removing a partition destroys its data",
        "nothing was changed",
    ] {
        assert!(err.contains(needle), "{needle} missing:\n{err}");
    }
    assert_eq!(
        scratch.checksum(0),
        before,
        "a refused update writes nothing"
    );

    // A dry run with --skip-destructive writes nothing either.
    let out = ok(disk(
        "apply",
        &c,
        &dev,
        &root,
        &["--mode", "update", "--skip-destructive", "--dry-run"],
    ));
    assert!(
        text(&out).contains("left out (--skip-destructive)"),
        "{}",
        text(&out)
    );
    assert_eq!(scratch.checksum(0), before, "a dry run writes nothing");

    // --skip-destructive applies the rest (the new partition) and lists what was left out.
    let out = ok(disk(
        "apply",
        &c,
        &dev,
        &root,
        &["--mode", "update", "--skip-destructive"],
    ));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("left out (--skip-destructive), 3 difference(s)"),
        "{err}"
    );
    let parts = partitions(&dev);
    assert_eq!(parts.len(), 4, "{parts:?}");
    assert_eq!(parts[3].name, "disk-main-new");
    assert_eq!(fstype(&format!("{dev}p3")), "ext4", "data keeps its ext4");
    assert_eq!(fstype(&format!("{dev}p4")), "ext4");
    ok(disk("apply", &a, &dev, &root, &["--mode", "mount"]));
    assert_eq!(
        std::fs::read_to_string(format!("{root}/data/keep")).expect("read"),
        "kept"
    );
}

#[test]
fn update_over_ssh_to_a_lab_host() {
    support::require_loop_devices();
    let lab = {
        let _mounts = support::mounts_lock();
        nixpave_lab::testing::Lab::with(nixpave_lab::testing::LabOptions {
            hosts: 1,
            disks: 1,
            disk_size: 128 << 20,
            ..Default::default()
        })
        .expect("lab up")
    };
    let host = lab.host(0);
    let dev = host.disks()[0].clone();
    let scratch = Scratch::new("update-ssh");
    let root = scratch.root();
    let a = scratch.write_file("a.json",
        &gpt(
            r#""root": {"size": "48M", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}"#,
        ),
    );
    let b = scratch.write_file("b.json",
        &gpt(
            r#""root": {"size": "48M", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}},
               "srv": {"size": "32M", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/srv"}}"#,
        ),
    );
    let target = host.target().to_string();
    let identity = host.identity_file().to_string_lossy().into_owned();
    let known_hosts = host.known_hosts().to_string_lossy().into_owned();
    let ssh = [
        "--target",
        target.as_str(),
        "-i",
        identity.as_str(),
        "--known-hosts",
        known_hosts.as_str(),
    ];
    let with_ssh = |mode: &'static str| -> Vec<String> {
        let mut v = vec!["--mode".to_string(), mode.to_string()];
        v.extend(ssh.iter().map(|s| s.to_string()));
        v
    };
    let run = |sub: &str, layout: &str, mode: &'static str| {
        let args = with_ssh(mode);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        disk(sub, layout, &dev, &root, &args)
    };
    ok(run("apply", &a, "format,mount"));
    let out = ok(run("plan", &b, "update"));
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        plan.contains("new partition 2 `disk-main-srv` (32 MiB"),
        "{plan}"
    );
    assert!(
        plan.contains("mounted at"),
        "the host's own mounts are seen: {plan}"
    );
    ok(run("apply", &b, "update"));
    assert_eq!(fstype(&format!("{dev}p2")), "ext4");
    let findmnt = host
        .run_inside(&[
            "findmnt",
            "-n",
            "-o",
            "SOURCE",
            "--mountpoint",
            &format!("{root}/srv"),
        ])
        .expect("findmnt inside the host");
    assert_eq!(
        String::from_utf8_lossy(&findmnt.stdout).trim(),
        format!("{dev}p2")
    );
    ok(run("apply", &b, "unmount"));
}
