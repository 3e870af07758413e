//! `nixpave disk apply` end to end on real loop devices: the binary loads a layout, plans it and
//! applies it; results are checked with partx/sfdisk/blkid/findmnt.

use nixpave_testsupport as support;

use std::process::Output;

use assert_cmd::Command;
use support::{fstype, is_blank, mounted_source, partition_nodes, partitions, sh, Scratch};

/// Runs `nixpave disk apply ARGS…` with stdin closed (no terminal).
fn apply(args: &[&str]) -> Output {
    let mut cmd = Command::cargo_bin("nixpave").expect("nixpave binary");
    cmd.args(["disk", "apply"]).args(args).write_stdin("");
    cmd.output().expect("run nixpave")
}

use nixpave_testsupport::output_text as text;

/// A scratch with one loop disk of `mib` MiB, its root mountpoint, and the layout `json` (its
/// `DISK` replaced by the disk's device) written to `file`: `(scratch, disk, root, layout path)`.
fn one_disk(tag: &str, mib: u64, file: &str, json: &str) -> (Scratch, String, String, String) {
    let mut scratch = Scratch::new(tag);
    let disk = scratch.disk(mib);
    let root = scratch.root();
    let layout = scratch.write_file(file, &json.replace("DISK", &disk));
    (scratch, disk, root, layout)
}

/// JSON progress events (`--json`) of the steps that actually ran.
fn ran_commands(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["state"] == "done")
        .map(|v| v["command"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Commands that create or format something (what a second `format` must never run).
fn creating(commands: &[String]) -> Vec<&String> {
    commands
        .iter()
        .filter(|c| {
            c.contains("--new=")
                || c.contains("--clear")
                || c.contains("mklabel")
                || c.contains("mkpart")
                || c.starts_with("mkfs")
                || c.starts_with("mkswap")
                || c.contains("subvolume create")
                || c.contains("mkswapfile")
        })
        .collect()
}

fn swaps() -> String {
    std::fs::read_to_string("/proc/swaps").expect("read /proc/swaps")
}

const SECTORS_PER_MIB: u64 = 2048;

#[test]
fn disk_apply_gpt_btrfs_xfs_swap_tmpfs_end_to_end() {
    support::require_loop_devices();
    let _mounts = support::mounts_lock();
    let mut scratch = Scratch::new("cli-gpt");
    let disk = scratch.disk(1024);
    let root = scratch.root();
    // Every kind of content this kernel can run: vfat (formatted, not mounted: no vfat module
    // here), swap partition, a partition without content, xfs (>= 300 MB), btrfs with
    // subvolumes and a swap file, ext4 up to 16M before the end of the disk, tmpfs.
    let layout = scratch.write_file("layout.json",
        r#"{
 "disk": {"e2e": {"type": "disk", "device": "/dev/placeholder", "content": {"type": "gpt", "partitions": {
   "ESP": {"size": "64M", "type": "EF00", "content": {"type": "filesystem", "format": "vfat"}},
   "swap": {"size": "32M", "content": {"type": "swap"}},
   "raw": {"size": "8M"},
   "xfs": {"size": "320M", "content": {"type": "filesystem", "format": "xfs", "mountpoint": "/srv"}},
   "btr": {"size": "300M", "content": {"type": "btrfs", "extraArgs": ["-f"], "subvolumes": {
       "@root": {"mountpoint": "/"},
       "@nix": {"mountpoint": "/nix", "mountOptions": ["compress=zstd"]},
       "@swap": {"mountpoint": "/.swapvol", "swap": {"swapfile": {"size": "16M"}}}}}},
   "data": {"priority": 9000, "end": "-16M", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/data"}}
 }}}},
 "nodev": {"/tmp": {"fsType": "tmpfs", "mountOptions": ["size=64M"]}}
}"#,
    );
    let disk_arg = format!("e2e={disk}");
    let common = [
        layout.as_str(),
        "--disk",
        &disk_arg,
        "--root-mountpoint",
        &root,
    ];
    let run = |mode: &str, extra: &[&str]| {
        let mut args: Vec<&str> = common.to_vec();
        args.extend(["--mode", mode]);
        args.extend(extra);
        apply(&args)
    };

    // format,mount
    let out = run("format,mount", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("] create a GPT partition table on"),
        "{stderr}"
    );

    // Partition numbers (priority, then name), sizes, type codes and names as planned.
    let parts = partitions(&disk);
    let expected = [
        (1, "ESP", Some(64), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
        (2, "btr", Some(300), "0fc63daf-8483-4772-8e79-3d69d8477de4"),
        (3, "raw", Some(8), "0fc63daf-8483-4772-8e79-3d69d8477de4"),
        (4, "swap", Some(32), "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"),
        (5, "xfs", Some(320), "0fc63daf-8483-4772-8e79-3d69d8477de4"),
        (6, "data", None, "0fc63daf-8483-4772-8e79-3d69d8477de4"),
    ];
    assert_eq!(parts.len(), expected.len(), "{parts:?}");
    for (part, (number, name, mib, guid)) in parts.iter().zip(expected) {
        assert_eq!(part.number, number);
        assert_eq!(part.name, format!("disk-e2e-{name}"));
        assert_eq!(part.parttype, guid, "type of {name}");
        if let Some(mib) = mib {
            assert_eq!(part.sectors, mib * SECTORS_PER_MIB, "size of {name}");
        }
    }
    assert_eq!(
        parts[0].start, SECTORS_PER_MIB,
        "first partition 1 MiB aligned"
    );
    // Negative end: the last partition stops 16 MiB (minus the backup GPT) before the end.
    let disk_sectors = 1024 * SECTORS_PER_MIB;
    let data_end = parts[5].start + parts[5].sectors;
    assert!(
        disk_sectors - data_end >= 16 * SECTORS_PER_MIB
            && disk_sectors - data_end <= 17 * SECTORS_PER_MIB,
        "data ends {} sectors before the disk end",
        disk_sectors - data_end
    );
    assert_eq!(partition_nodes(&disk).len(), 6, "kernel nodes without udev");
    for (n, fs) in [
        (1, "vfat"),
        (2, "btrfs"),
        (3, ""),
        (4, "swap"),
        (5, "xfs"),
        (6, "ext4"),
    ] {
        assert_eq!(
            fstype(&format!("{disk}p{n}")),
            fs,
            "filesystem of partition {n}"
        );
    }
    let srcs = [
        ("", format!("{disk}p2[/@root]")),
        ("/nix", format!("{disk}p2[/@nix]")),
        ("/.swapvol", format!("{disk}p2[/@swap]")),
        ("/srv", format!("{disk}p5")),
        ("/data", format!("{disk}p6")),
        ("/tmp", "tmpfs".to_string()),
    ];
    for (mp, src) in &srcs {
        assert_eq!(
            mounted_source(&format!("{root}{mp}")).as_deref(),
            Some(src.as_str()),
            "mount {mp}"
        );
    }
    // btrfs applies mount options per filesystem (the first mount wins): check the command.
    assert!(
        stderr.contains("-o compress=zstd -o subvol=@nix -o X-mount.mkdir"),
        "{stderr}"
    );
    assert!(swaps().contains(&format!("{disk}p4")));
    let swapfile = std::fs::metadata(format!("{root}/.swapvol/swapfile")).expect("swap file");
    assert_eq!(swapfile.len(), 16 << 20);

    // unmount, then mount again
    let out = run("unmount", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(mounted_source(&root).is_none(), "{}", text(&out));
    assert!(!swaps().contains(&disk), "{}", swaps());
    let out = run("mount", &[]);
    assert!(out.status.success(), "{}", text(&out));
    for (mp, src) in &srcs {
        assert_eq!(
            mounted_source(&format!("{root}{mp}")).as_deref(),
            Some(src.as_str())
        );
    }

    // format again: no partitioning, no mkfs, the data stays.
    std::fs::write(format!("{root}/data/keep"), "kept").expect("write");
    std::fs::write(format!("{root}/nix/keep"), "kept").expect("write");
    let out = run("format,mount", &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let ran = ran_commands(&out);
    assert!(
        creating(&ran).is_empty(),
        "second format created something: {ran:?}"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{root}/data/keep")).expect("kept"),
        "kept"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{root}/nix/keep")).expect("kept"),
        "kept"
    );

    // destroy: refused without a terminal and without the flag, then done with the flag.
    let out = run("destroy", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("will be WIPED"), "{stderr}");
    assert!(
        stderr.contains(&format!("{disk}p6")),
        "lists partitions: {stderr}"
    );
    assert!(stderr.contains("--yes-wipe-all-disks"), "{stderr}");
    assert_eq!(
        mounted_source(&format!("{root}/data")),
        Some(format!("{disk}p6"))
    );

    let out = run("destroy", &["--yes-wipe-all-disks"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(mounted_source(&root).is_none());
    assert!(!swaps().contains(&disk));
    assert!(is_blank(&disk), "disk blank after destroy: {}", text(&out));
    assert!(partition_nodes(&disk).is_empty());
}

#[test]
fn disk_apply_msdos_table_and_hybrid_mbr() {
    support::require_loop_devices();
    let _mounts = support::mounts_lock();
    let mut scratch = Scratch::new("cli-msdos");
    let disk = scratch.disk(256);
    let root = scratch.root();
    let msdos = scratch.write_file("msdos.json",
        &r#"{"disk": {"legacy": {"type": "disk", "device": "DISK", "content": {"type": "table", "format": "msdos", "partitions": [
 {"name": "boot", "start": "1M", "end": "64M", "bootable": true, "content": {"type": "filesystem", "format": "vfat"}},
 {"name": "root", "start": "64M", "end": "-32M", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}},
 {"name": "swap", "start": "-32M", "end": "100%", "content": {"type": "swap"}}]}}}}"#
            .replace("DISK", &disk),
    );
    let out = apply(&[&msdos, "--root-mountpoint", &root, "--mode", "format,mount"]);
    assert!(out.status.success(), "{}", text(&out));
    let dump = sh(&["sfdisk", "--dump", &disk]);
    assert!(dump.contains("label: dos"), "{dump}");
    let parts = partitions(&disk);
    assert_eq!(parts.len(), 3, "{dump}");
    // parted's units are SI (1M = 10^6 bytes), aligned to 1 MiB.
    assert_eq!(parts[0].start, SECTORS_PER_MIB);
    assert_eq!(parts[0].sectors, 122880);
    assert_eq!(parts[1].start, 124928);
    assert!(
        dump.lines().nth(6).is_some_and(|l| l.contains("bootable")),
        "{dump}"
    );
    assert_eq!(fstype(&format!("{disk}p1")), "vfat");
    assert_eq!(fstype(&format!("{disk}p2")), "ext4");
    assert_eq!(fstype(&format!("{disk}p3")), "swap");
    assert_eq!(mounted_source(&root), Some(format!("{disk}p2")));
    assert!(swaps().contains(&format!("{disk}p3")));
    std::fs::write(format!("{root}/keep"), "kept").expect("write");
    let out = apply(&[
        &msdos,
        "--root-mountpoint",
        &root,
        "--mode",
        "format,mount",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let ran = ran_commands(&out);
    assert!(creating(&ran).is_empty(), "{ran:?}");
    assert_eq!(
        std::fs::read_to_string(format!("{root}/keep")).expect("kept"),
        "kept"
    );

    // The same disk re-laid out as GPT with a hybrid MBR: destroy,format,mount in one go.
    let hybrid = scratch.write_file("hybrid.json",
        &r#"{"disk": {"hyb": {"type": "disk", "device": "DISK", "content": {"type": "gpt", "partitions": {
 "boot": {"size": "1M", "type": "EF02", "priority": 1},
 "ESP": {"size": "32M", "type": "EF00", "hybrid": {"mbrPartitionType": "0x0c", "mbrBootableFlag": true},
         "content": {"type": "filesystem", "format": "vfat"}},
 "root": {"size": "100%", "hybrid": {}, "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}}}}}}"#
            .replace("DISK", &disk),
    );
    // The msdos layout's swap is active and the hybrid layout has no swap: refused.
    let out = apply(&[
        &hybrid,
        "--root-mountpoint",
        &root,
        "--mode",
        "destroy,format,mount",
        "--yes-wipe-all-disks",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("active swap"),
        "{}",
        text(&out)
    );
    sh(&["swapoff", &format!("{disk}p3")]);
    let out = apply(&[
        &hybrid,
        "--root-mountpoint",
        &root,
        "--mode",
        "destroy,format,mount",
        "--yes-wipe-all-disks",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let parts = partitions(&disk);
    assert_eq!(parts.len(), 3);
    assert_eq!(
        parts[0].parttype, "21686148-6449-6e6f-744e-656564454649",
        "BIOS boot"
    );
    assert_eq!(parts[1].name, "disk-hyb-ESP");
    let mbr = sh(&["sfdisk", "--label", "dos", "--dump", &disk]);
    let mbr = if mbr.contains("label: dos") {
        mbr
    } else {
        sh(&["sfdisk", "--label-nested", "dos", "--dump", &disk])
    };
    assert!(mbr.contains("type=ee"), "protective entry: {mbr}");
    assert!(
        mbr.lines()
            .any(|l| l.contains("type=c") && l.contains("bootable")),
        "hybrid ESP entry: {mbr}"
    );
    assert!(mbr.lines().any(|l| l.contains("type=83")), "{mbr}");
    assert_eq!(mounted_source(&root), Some(format!("{disk}p3")));
    assert!(!root.is_empty() && !std::path::Path::new(&format!("{root}/keep")).exists());
}

#[test]
fn disk_apply_dry_run_leaves_the_disk_unchanged() {
    support::require_loop_devices();
    let _mounts = support::mounts_lock();
    let mut scratch = Scratch::new("cli-dry");
    let disk = scratch.disk(128);
    let root = scratch.root();
    let layout = scratch.write_file("small.json",
        &r#"{"disk": {"dry": {"type": "disk", "device": "DISK", "content": {"type": "gpt", "partitions": {
 "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/",
   "extraArgs": ["-E", "lazy_itable_init=0,lazy_journal_init=0"]}}}}}}}"#
            .replace("DISK", &disk),
    );
    let out = apply(&[&layout, "--root-mountpoint", &root, "--mode", "format"]);
    assert!(out.status.success(), "{}", text(&out));
    let before = scratch.checksum(0);
    for mode in ["destroy,format,mount", "destroy", "format,mount", "unmount"] {
        let out = apply(&[
            &layout,
            "--root-mountpoint",
            &root,
            "--mode",
            mode,
            "--dry-run",
        ]);
        assert!(out.status.success(), "{mode}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("nothing was changed"), "{stderr}");
        assert_eq!(
            scratch.checksum(0),
            before,
            "dry run of {mode} wrote to the disk"
        );
        assert!(mounted_source(&root).is_none(), "dry run of {mode} mounted");
    }
    // Same with the disk mounted: no unmount, no write.
    let out = apply(&[&layout, "--root-mountpoint", &root, "--mode", "mount"]);
    assert!(out.status.success(), "{}", text(&out));
    sh(&["sync"]);
    let mounted = scratch.checksum(0);
    let out = apply(&[
        &layout,
        "--root-mountpoint",
        &root,
        "--mode",
        "destroy",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would run"),
        "{}",
        text(&out)
    );
    assert_eq!(mounted_source(&root), Some(format!("{disk}p1")));
    assert_eq!(scratch.checksum(0), mounted);
}

#[test]
fn disk_apply_refuses_unsafe_disks_and_bad_input() {
    support::require_loop_devices();
    let _mounts = support::mounts_lock();
    let mut scratch = Scratch::new("cli-refuse");
    let disk = scratch.disk(128);
    let root = scratch.root();
    let layout = scratch.write_file("busy.json",
        &r#"{"disk": {"busy": {"type": "disk", "device": "DISK", "content": {"type": "gpt", "partitions": {
 "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/",
   "extraArgs": ["-E", "lazy_itable_init=0,lazy_journal_init=0"]}}}}}}}"#
            .replace("DISK", &disk),
    );
    let out = apply(&[&layout, "--root-mountpoint", &root, "--mode", "format"]);
    assert!(out.status.success(), "{}", text(&out));
    let elsewhere = scratch.dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let elsewhere = elsewhere.to_string_lossy().into_owned();
    sh(&["mount", &format!("{disk}p1"), &elsewhere]);
    sh(&["sync"]);
    let before = scratch.checksum(0);
    for (mode, extra) in [
        ("format", None),
        ("format,mount", None),
        ("destroy", Some("--yes-wipe-all-disks")),
        ("destroy,format,mount", Some("--yes-wipe-all-disks")),
    ] {
        let mut args = vec![layout.as_str(), "--root-mountpoint", &root, "--mode", mode];
        args.extend(extra);
        let out = apply(&args);
        assert_eq!(out.status.code(), Some(3), "{mode}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&elsewhere), "{stderr}");
        assert!(stderr.contains("outside the root mountpoint"), "{stderr}");
    }
    assert_eq!(mounted_source(&elsewhere), Some(format!("{disk}p1")));
    assert_eq!(scratch.checksum(0), before, "a refusal wrote to the disk");
    sh(&["umount", &elsewhere]);

    // Bad input: exit 2, disk untouched.
    let bad = scratch.write_file("bad.json",
        &r#"{"disk": {"bad": {"type": "disk", "device": "DISK", "content": {"type": "gpt", "partitions": {
 "root": {"sise": "100%", "content": {"type": "filesystem", "format": "ext4"}}}}}}}"#
            .replace("DISK", &disk),
    );
    sh(&["sync"]);
    let before = scratch.checksum(0);
    let out = apply(&[
        &bad,
        "--root-mountpoint",
        &root,
        "--mode",
        "destroy,format,mount",
        "--yes-wipe-all-disks",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sise"),
        "{}",
        text(&out)
    );
    let out = apply(&[
        &layout,
        "--disk",
        "nope=/dev/null",
        "--root-mountpoint",
        &root,
        "--mode",
        "destroy",
        "--yes-wipe-all-disks",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = apply(&[
        &layout,
        "--root-mountpoint",
        &root,
        "--mode",
        "format,destroy",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(scratch.checksum(0), before, "bad input wrote to the disk");
}

#[test]
fn disk_apply_runs_a_saved_plan() {
    support::require_loop_devices();
    let (scratch, disk, root, layout) = one_disk(
        "cli-planfile",
        64,
        "saved.json",
        r#"{"disk": {"saved": {"type": "disk", "device": "DISK", "content": {"type": "gpt", "partitions": {
 "data": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}}}}}}"#,
    );
    let plan = Command::cargo_bin("nixpave")
        .expect("binary")
        .args([
            "disk",
            "plan",
            &layout,
            "--mode",
            "format",
            "--root-mountpoint",
            &root,
            "--json",
        ])
        .output()
        .expect("run plan");
    assert!(plan.status.success(), "{}", text(&plan));
    let plan_file = scratch.dir.join("plan.json");
    std::fs::write(&plan_file, &plan.stdout).expect("save plan");
    let plan_path = plan_file.to_str().expect("utf-8");
    let out = apply(&["--plan", plan_path, "--mode", "destroy"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(is_blank(&disk));
    let out = apply(&["--plan", plan_path, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default(),
    )
    .expect("json preflight line");
    assert_eq!(first["event"], "preflight");
    assert_eq!(first["preflight"]["disks"][0]["path"], disk.as_str());
    assert!(ran_commands(&out)
        .iter()
        .any(|c| c.starts_with("mkfs.ext4")));
    assert_eq!(fstype(&format!("{disk}p1")), "ext4");
    assert!(mounted_source(&root).is_none(), "format only");
}

#[test]
fn disk_apply_over_ssh_to_a_lab_host() {
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
    let disk = host.disks()[0].clone();
    let scratch = Scratch::new("cli-ssh");
    let root = scratch.root();
    let layout = scratch.write_file("remote.json",
        &r#"{"disk": {"remote": {"type": "disk", "device": "DISK", "content": {"type": "gpt", "partitions": {
 "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/",
   "extraArgs": ["-E", "lazy_itable_init=0,lazy_journal_init=0"]}}}}}}}"#
            .replace("DISK", &disk),
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
    let run = |mode: &str, extra: &[&str]| {
        let mut args = vec![layout.as_str(), "--root-mountpoint", &root, "--mode", mode];
        args.extend(ssh);
        args.extend(extra);
        apply(&args)
    };
    // The confirmation names the remote host; without a terminal or the flag: refused.
    let out = run("destroy,format,mount", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(host.name())
            || String::from_utf8_lossy(&out.stderr).contains(host.address()),
        "{}",
        text(&out)
    );
    let out = run("destroy,format,mount", &["--yes-wipe-all-disks"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fstype(&format!("{disk}p1")), "ext4");
    // Mounted inside the host's own mount namespace.
    let findmnt = host
        .run_inside(&["findmnt", "-n", "-o", "SOURCE", "--mountpoint", &root])
        .expect("findmnt inside the host");
    assert_eq!(
        String::from_utf8_lossy(&findmnt.stdout).trim(),
        format!("{disk}p1")
    );
    let out = run("format,mount", &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(creating(&ran_commands(&out)).is_empty(), "{}", text(&out));
    let out = run("unmount", &[]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Runs `nixpave disk apply ARGS…` on a pseudo-terminal (util-linux `script`), typing `answer`.
fn apply_on_tty(args: &[&str], answer: &str) -> Output {
    let bin = assert_cmd::cargo::cargo_bin("nixpave");
    let mut line = vec![
        bin.to_string_lossy().into_owned(),
        "disk".into(),
        "apply".into(),
    ];
    line.extend(args.iter().map(|a| a.to_string()));
    let line = nixpave_remote::shell_join(&line);
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"])
        .write_stdin(format!("{answer}\n"));
    cmd.output().expect("run script")
}

#[test]
fn disk_apply_destroy_asks_on_a_terminal() {
    support::require_loop_devices();
    let mut scratch = Scratch::new("cli-tty");
    let disk = scratch.disk(64);
    let root = scratch.root();
    let layout = scratch.write_file("tty.json",
        &r#"{"disk": {"tty": {"type": "disk", "device": "DISK", "content": {"type": "gpt", "partitions": {
 "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4"}}}}}}}"#
            .replace("DISK", &disk),
    );
    let out = apply(&[&layout, "--root-mountpoint", &root, "--mode", "format"]);
    assert!(out.status.success(), "{}", text(&out));
    let args = [
        layout.as_str(),
        "--root-mountpoint",
        &root,
        "--mode",
        "destroy",
    ];
    let out = apply_on_tty(&args, "no");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("will be WIPED"), "{shown}");
    assert!(shown.contains(&format!("{disk}p1")), "{shown}");
    assert!(
        shown.contains("Type the host name (localhost) or `yes`"),
        "{shown}"
    );
    assert_eq!(fstype(&format!("{disk}p1")), "ext4", "aborted: untouched");
    let out = apply_on_tty(&args, "localhost");
    assert!(out.status.success(), "{}", text(&out));
    assert!(is_blank(&disk));
}

#[test]
fn disk_apply_refuses_a_missing_disk() {
    let scratch = Scratch::new("cli-missing");
    let root = scratch.root();
    let layout = scratch.write_file("missing.json",
        r#"{"disk": {"gone": {"type": "disk", "device": "/dev/disk/by-id/nixpave-no-such-disk", "content": {"type": "gpt", "partitions": {
 "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4"}}}}}}}"#,
    );
    let out = apply(&[
        &layout,
        "--root-mountpoint",
        &root,
        "--mode",
        "format",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nixpave-no-such-disk"), "{stderr}");
    assert!(stderr.contains("--disk NAME=DEVICE"), "{stderr}");
}

#[test]
fn disk_apply_interrupted_stops_between_steps_and_resumes() {
    support::require_loop_devices();
    let mut scratch = Scratch::new("cli-int");
    let disk = scratch.disk(128);
    let root = scratch.root();
    // Six partitions: sgdisk takes about a second per step, time enough to interrupt.
    let parts: Vec<String> = (1..=6)
        .map(|n| {
            format!(
                r#""p{n}": {{"size": "8M", "content": {{"type": "filesystem", "format": "ext4"}}}}"#
            )
        })
        .collect();
    let layout = scratch.write_file("int.json",
        &format!(
            r#"{{"disk": {{"int": {{"type": "disk", "device": "{disk}", "content": {{"type": "gpt", "partitions": {{{}}}}}}}}}}}"#,
            parts.join(",")
        ),
    );
    let bin = assert_cmd::cargo::cargo_bin("nixpave");
    let mut child = std::process::Command::new(&bin)
        .args([
            "disk",
            "apply",
            &layout,
            "--root-mountpoint",
            &root,
            "--mode",
            "format",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start nixpave");
    // Interrupted when it says it is creating partition 2 (its progress line), not after a guess
    // of how long steps take.
    let (lines, progress) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            all.push_str(&line);
            all.push('\n');
            let _ = lines.send(line);
        }
        all
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match progress.recv_timeout(left) {
            Ok(line) if line.contains("create partition 2") => break,
            Ok(_) => {}
            Err(e) => panic!("no progress line for partition 2 within 60 s: {e}"),
        }
    }
    sh(&["kill", "-INT", &child.id().to_string()]);
    let out = child.wait_with_output().expect("wait for nixpave");
    let stderr = reader.join().expect("stderr reader");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted after"), "{stderr}");
    assert!(stderr.contains("run the same command again"), "{stderr}");
    let before = partitions(&disk).len();
    assert!(before < 6, "stopped early: {before} partitions");
    // Running it again finishes the job.
    let out = apply(&[&layout, "--root-mountpoint", &root, "--mode", "format"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(partitions(&disk).len(), 6);
    assert_eq!(fstype(&format!("{disk}p6")), "ext4");
}

#[test]
fn disk_apply_refuses_the_running_root_disk() {
    // The disk `/` lives on; only probes run (dry run through a read-only transport) and the
    // refusal comes before anything else.
    let source = sh(&["findmnt", "-n", "-o", "SOURCE", "/"])
        .trim()
        .to_string();
    if !source.starts_with("/dev/") {
        support::skip(&format!("/ is not on a block device ({source})"));
        return;
    }
    let parent = sh(&["lsblk", "-n", "-d", "-o", "PKNAME", &source])
        .trim()
        .to_string();
    let disk = if parent.is_empty() {
        source.clone()
    } else {
        format!("/dev/{parent}")
    };
    let scratch = Scratch::new("cli-rootdisk");
    let root = scratch.root();
    let layout = scratch.write_file("root.json",
        &r#"{"disk": {"sys": {"type": "disk", "device": "DISK", "content": {"type": "gpt", "partitions": {
 "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}}}}}}"#
            .replace("DISK", &disk),
    );
    for mode in ["format", "destroy,format,mount"] {
        let out = apply(&[
            &layout,
            "--root-mountpoint",
            &root,
            "--mode",
            mode,
            "--dry-run",
            "--yes-wipe-all-disks",
        ]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("running system's root"), "{stderr}");
        assert!(stderr.contains("nothing was changed"), "{stderr}");
    }
}

/// `disk apply --json` speaks the one event envelope (README, "JSON output"): every line has
/// `event` and `host`, times are `_ms` integers. Pinned as shapes (no devices, no times).
#[test]
fn disk_apply_json_events_follow_the_envelope() {
    support::require_loop_devices();
    let (_scratch, _disk, root, layout) = one_disk(
        "cli-json",
        64,
        "json.json",
        r#"{"disk": {"j": {"type": "disk", "device": "DISK", "content": {"type": "gpt", "partitions": {"p1": {"size": "16M", "content": {"type": "filesystem", "format": "ext4"}}}}}}}"#,
    );
    let args = ["--root-mountpoint", &root, "--mode", "format", "--json"];
    let out = apply(&[&[layout.as_str()][..], &args].concat());
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(v["host"], "localhost", "{line}");
    }
    let shapes = support::json_lines_shapes(&stdout, 3, &["event", "state", "host"]);
    insta::assert_snapshot!(
        "json-disk-apply",
        serde_json::to_string_pretty(&shapes).expect("json")
    );
}

/// `-q`: no header and no per-step lines, but the wipe summary (a safety message) and the result
/// stay; a second `format` under `-q` prints only its result line.
#[test]
fn quiet_apply_prints_the_wipe_summary_and_the_result_only() {
    support::require_loop_devices();
    let mut scratch = Scratch::new("cli-quiet");
    let disk = scratch.disk(64);
    let layout = scratch.write_file("layout.json",
        r#"{"disk": {"q": {"type": "disk", "device": "/dev/placeholder", "content": {"type": "gpt",
            "partitions": {"data": {"size": "100%", "content": {"type": "filesystem", "format": "ext4"}}}}}}}"#,
    );
    let disk_arg = format!("q={disk}");
    let run = |extra: &[&str]| {
        let mut cmd = Command::cargo_bin("nixpave").expect("nixpave binary");
        cmd.args(["-q", "disk", "apply", &layout, "--disk", &disk_arg])
            .args(extra)
            .write_stdin("");
        cmd.output().expect("run nixpave")
    };
    let root = scratch.root();
    let out = run(&[
        "--mode",
        "destroy,format,mount",
        "--yes-wipe-all-disks",
        "--root-mountpoint",
        &root,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("will be WIPED"), "{stderr}");
    assert!(stderr.contains("steps ran"), "{stderr}");
    assert!(!stderr.contains("nixpave disk apply: mode"), "{stderr}");
    assert!(!stderr.contains("[1/"), "{stderr}");
    let out = run(&["--mode", "format,mount", "--root-mountpoint", &root]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("skipped (already done)"), "{stderr}");
    assert_eq!(fstype(&partition_nodes(&disk)[0]), "ext4");
}
