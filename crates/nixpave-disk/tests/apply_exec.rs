//! The executor on real loop devices with hand-written plans (the planner has its own tests):
//! partition-table rescans without udev, idempotent guards, refusals, dry runs, failure reports.

use nixpave_testsupport as support;

use nixpave_disk::exec::{self, ApplyError, ApplyOptions, ApplyReport, Progress};
use nixpave_disk::{Guard, Mode, Operation, Plan};
use nixpave_remote::LocalTransport;
use support::{fstype, is_blank, mounted_source, partition_nodes, partitions, Scratch};

fn op(argv: &[&str], device: &str, destructive: bool, guard: Option<Guard>) -> Operation {
    Operation {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        device: device.to_string(),
        destructive,
        description: argv.join(" "),
        guard,
        stdin: None,
    }
}

fn label(tag: &str, part: &str) -> String {
    format!("/dev/disk/by-partlabel/disk-{tag}-{part}")
}

/// A disko-like gpt layout: ESP (vfat), swap, root (ext4, rest of the disk).
fn format_ops(disk: &str, tag: &str) -> Vec<Operation> {
    let new = |n: u32, end: &str, name: &str, code: &str| {
        op(
            &[
                "sgdisk",
                "--align-end",
                &format!("--new={n}:0:{end}"),
                &format!("--partition-guid={n}:R"),
                &format!("--change-name={n}:disk-{tag}-{name}"),
                &format!("--typecode={n}:{code}"),
                &format!("--attributes={n}:=:0"),
                disk,
            ],
            disk,
            true,
            Some(Guard::PartitionAbsent {
                disk: disk.into(),
                number: n,
            }),
        )
    };
    let mkfs = |argv: &[&str], part: &str| {
        let dev = label(tag, part);
        let mut full: Vec<&str> = argv.to_vec();
        full.push(&dev);
        op(
            &full,
            &dev,
            true,
            Some(Guard::NoFilesystem {
                device: dev.clone(),
            }),
        )
    };
    vec![
        op(
            &["sgdisk", "--clear", disk],
            disk,
            true,
            Some(Guard::DeviceBlank {
                device: disk.into(),
            }),
        ),
        new(1, "+64M", "ESP", "EF00"),
        new(2, "+32M", "swap", "8200"),
        new(3, "-0", "root", "8300"),
        mkfs(&["mkfs.vfat"], "ESP"),
        mkfs(&["mkswap"], "swap"),
        mkfs(
            &[
                "mkfs.ext4",
                "-q",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
            ],
            "root",
        ),
    ]
}

fn mount_ops(root: &str, tag: &str) -> Vec<Operation> {
    let dev = label(tag, "root");
    let swap = label(tag, "swap");
    vec![
        op(
            &[
                "mount",
                &dev,
                &format!("{root}/"),
                "-t",
                "ext4",
                "-o",
                "defaults",
                "-o",
                "X-mount.mkdir",
            ],
            &dev,
            false,
            Some(Guard::NotMounted {
                device: dev.clone(),
                target: format!("{root}/"),
            }),
        ),
        op(
            &["swapon", &swap],
            &swap,
            false,
            Some(Guard::SwapInactive {
                device: swap.clone(),
            }),
        ),
    ]
}

fn unmount_ops(root: &str, tag: &str) -> Vec<Operation> {
    let swap = label(tag, "swap");
    vec![
        op(
            &["swapoff", &swap],
            &swap,
            false,
            Some(Guard::SwapActive {
                device: swap.clone(),
            }),
        ),
        op(
            &["umount", root],
            root,
            false,
            Some(Guard::Mounted {
                target: root.into(),
            }),
        ),
    ]
}

fn destroy_ops(disk: &str) -> Vec<Operation> {
    vec![
        op(&["wipefs", "--all", "-f", disk], disk, true, None),
        op(
            &[
                "dd",
                "if=/dev/zero",
                &format!("of={disk}"),
                "bs=440",
                "count=1",
            ],
            disk,
            true,
            None,
        ),
    ]
}

fn apply(
    plan: &Plan,
    options: &ApplyOptions,
    confirmed: bool,
) -> Result<(ApplyReport, Vec<Progress>), ApplyError> {
    let transport = LocalTransport;
    let preflight = exec::preflight(&transport, plan, options)?;
    let mut events = Vec::new();
    let report = exec::execute(&transport, plan, &preflight, options, confirmed, &mut |p| {
        events.push(p.clone())
    })?;
    Ok((report, events))
}

#[test]
fn apply_gpt_format_mount_is_idempotent_and_destroy_blanks() {
    support::require_loop_devices();
    let mut scratch = Scratch::new("exec-gpt");
    let disk = scratch.disk(256);
    let root = scratch.root();
    let tag = format!("x{}", std::process::id());
    let options = ApplyOptions::new(&root);
    let mut ops = format_ops(&disk, &tag);
    ops.extend(mount_ops(&root, &tag));
    let plan = Plan {
        mode: Mode::FormatMount,
        operations: ops,
    };

    let (report, events) = apply(&plan, &options, false).expect("format,mount works");
    assert_eq!(report.ran, 9, "{events:#?}");
    // The executor resolved the partlabels from the kernel's view: no udev links here.
    assert!(report
        .commands
        .iter()
        .all(|argv| argv.iter().all(|w| !w.starts_with("/dev/disk/"))));
    let parts = partitions(&disk);
    assert_eq!(
        parts.iter().map(|p| p.number).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(parts[0].name, format!("disk-{tag}-ESP"));
    assert_eq!(parts[0].parttype, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    assert_eq!(parts[0].start, 2048);
    assert_eq!(parts[0].sectors, 64 * 2048);
    assert_eq!(parts[1].parttype, "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f");
    assert_eq!(
        partition_nodes(&disk),
        (1..=3).map(|n| format!("{disk}p{n}")).collect::<Vec<_>>()
    );
    assert_eq!(fstype(&format!("{disk}p1")), "vfat");
    assert_eq!(fstype(&format!("{disk}p2")), "swap");
    assert_eq!(fstype(&format!("{disk}p3")), "ext4");
    assert_eq!(mounted_source(&root), Some(format!("{disk}p3")));
    let swaps = std::fs::read_to_string("/proc/swaps").expect("read swaps");
    assert!(swaps.contains(&format!("{disk}p2")), "{swaps}");

    let unmount = Plan {
        mode: Mode::Unmount,
        operations: unmount_ops(&root, &tag),
    };
    let (report, _) = apply(&unmount, &options, false).expect("unmount works");
    assert_eq!(report.ran, 2);
    assert!(mounted_source(&root).is_none());
    let swaps = std::fs::read_to_string("/proc/swaps").expect("read swaps");
    assert!(!swaps.contains(&format!("{disk}p2")), "{swaps}");
    let mount = Plan {
        mode: Mode::Mount,
        operations: mount_ops(&root, &tag),
    };
    let (report, _) = apply(&mount, &options, false).expect("mount works");
    assert_eq!(report.ran, 2);
    assert_eq!(mounted_source(&root), Some(format!("{disk}p3")));

    std::fs::write(format!("{root}/keep.txt"), "data").expect("write a file");
    let (again, events) = apply(&plan, &options, false).expect("second run works");
    assert_eq!(again.ran, 0, "nothing to do the second time: {events:#?}");
    assert_eq!(again.skipped, 9);
    assert_eq!(
        std::fs::read_to_string(format!("{root}/keep.txt")).expect("file kept"),
        "data"
    );

    // Destroy: deactivation (swapoff, umount, wipefs partitions) comes from live facts.
    let destroy = Plan {
        mode: Mode::Destroy,
        operations: destroy_ops(&disk),
    };
    let mut destroy_options = options.clone();
    let refused = apply(&destroy, &destroy_options, true).expect_err("swap not managed");
    assert!(refused.is_refusal(), "{refused}");
    assert!(refused.to_string().contains("active swap"), "{refused}");
    destroy_options.own_swaps = vec![label(&tag, "swap")];
    let not_confirmed = apply(&destroy, &destroy_options, false).expect_err("needs confirmation");
    assert!(matches!(not_confirmed, ApplyError::NotConfirmed { .. }));
    assert_eq!(
        mounted_source(&root),
        Some(format!("{disk}p3")),
        "untouched"
    );

    let (report, events) = apply(&destroy, &destroy_options, true).expect("destroy works");
    let lines: Vec<String> = events.iter().map(|e| e.render()).collect();
    assert!(report.ran >= 5, "{lines:#?}");
    assert!(mounted_source(&root).is_none());
    assert!(is_blank(&disk), "disk blank after destroy");
    assert!(
        partition_nodes(&disk).is_empty(),
        "stale partition nodes removed"
    );
}

#[test]
fn apply_dry_run_changes_nothing() {
    support::require_loop_devices();
    let mut scratch = Scratch::new("exec-dry");
    let disk = scratch.disk(128);
    let root = scratch.root();
    let tag = format!("d{}", std::process::id());
    let mut options = ApplyOptions::new(&root);
    let format = Plan {
        mode: Mode::Format,
        operations: format_ops(&disk, &tag),
    };
    apply(&format, &options, false).expect("format works");
    let before = scratch.checksum(0);
    let nodes = partition_nodes(&disk);

    options.dry_run = true;
    let mut ops = destroy_ops(&disk);
    ops.extend(format_ops(&disk, &tag));
    ops.extend(mount_ops(&root, &tag));
    let everything = Plan {
        mode: Mode::DestroyFormatMount,
        operations: ops,
    };
    let (report, events) = apply(&everything, &options, false).expect("dry run works");
    assert!(report.ran > 0);
    assert!(events
        .iter()
        .all(|e| !matches!(e.state, exec::StepState::Done)));
    assert_eq!(scratch.checksum(0), before, "dry run wrote to the disk");
    assert_eq!(partition_nodes(&disk), nodes);
    assert!(mounted_source(&root).is_none());
}

#[test]
fn apply_refuses_a_disk_mounted_outside_the_root_mountpoint() {
    support::require_loop_devices();
    let mut scratch = Scratch::new("exec-refuse");
    let disk = scratch.disk(128);
    let root = scratch.root();
    let tag = format!("r{}", std::process::id());
    let options = ApplyOptions::new(&root);
    let format = Plan {
        mode: Mode::Format,
        operations: format_ops(&disk, &tag),
    };
    apply(&format, &options, false).expect("format works");
    let elsewhere = scratch.dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let elsewhere = elsewhere.to_string_lossy().into_owned();
    support::sh(&["mount", &format!("{disk}p3"), &elsewhere]);
    let before = scratch.checksum(0);

    for mode in [Mode::Format, Mode::Destroy] {
        let plan = Plan {
            mode,
            operations: if mode == Mode::Format {
                format_ops(&disk, &tag)
            } else {
                destroy_ops(&disk)
            },
        };
        let err = apply(&plan, &options, true).expect_err("must refuse");
        assert!(err.is_refusal(), "{err}");
        let text = err.to_string();
        assert!(text.contains(&elsewhere), "{text}");
        assert!(text.contains("outside the root mountpoint"), "{text}");
    }
    assert_eq!(mounted_source(&elsewhere), Some(format!("{disk}p3")));
    assert_eq!(scratch.checksum(0), before, "a refusal wrote to the disk");
    support::sh(&["umount", &elsewhere]);
}

#[test]
fn apply_failure_reports_command_stderr_done_steps_and_disk_state() {
    support::require_loop_devices();
    let mut scratch = Scratch::new("exec-fail");
    let disk = scratch.disk(64);
    let root = scratch.root();
    let plan = Plan {
        mode: Mode::Format,
        operations: vec![
            op(&["sgdisk", "--clear", &disk], &disk, true, None),
            op(
                &[
                    "sgdisk",
                    "--new=1:0:+16M",
                    "--change-name=1:failtest",
                    &disk,
                ],
                &disk,
                true,
                None,
            ),
            op(
                &[
                    "mkfs.ext4",
                    "--no-such-option",
                    "/dev/disk/by-partlabel/failtest",
                ],
                "/dev/disk/by-partlabel/failtest",
                true,
                None,
            ),
            op(&["true"], &disk, false, None),
        ],
    };
    let err = apply(&plan, &ApplyOptions::new(&root), false).expect_err("mkfs fails");
    let ApplyError::Op(failure) = &err else {
        panic!("expected an operation failure, got {err}");
    };
    assert_eq!(failure.index, 3);
    assert_eq!(failure.total, 4);
    assert_eq!(failure.done.len(), 2);
    assert!(failure
        .command
        .starts_with(&format!("mkfs.ext4 --no-such-option {disk}p1")));
    assert!(failure.status.is_some_and(|s| s != 0));
    assert!(!failure.stderr_tail.is_empty());
    assert!(
        failure.disk_state.contains(&format!("{disk}p1")),
        "{}",
        failure.disk_state
    );
    let text = err.to_string();
    assert!(text.contains("step 3/4 failed"), "{text}");
    assert!(text.contains("next:"), "{text}");
}

#[test]
fn apply_unresolvable_label_is_a_clear_error() {
    support::require_loop_devices();
    let mut scratch = Scratch::new("exec-missing");
    let disk = scratch.disk(32);
    let root = scratch.root();
    let dev = "/dev/disk/by-partlabel/no-such-label-anywhere";
    let plan = Plan {
        mode: Mode::Format,
        operations: vec![op(
            &["mkfs.ext4", dev],
            dev,
            true,
            Some(Guard::NoFilesystem { device: dev.into() }),
        )],
    };
    let mut options = ApplyOptions::new(&root);
    options.disks = vec![disk.clone()];
    let err = apply(&plan, &options, false).expect_err("label missing");
    assert!(matches!(err, ApplyError::Resolve { .. }), "{err}");
    assert!(err.to_string().contains("no-such-label-anywhere"), "{err}");
    assert!(is_blank(&disk));
}

#[test]
fn apply_reports_a_partition_table_the_kernel_cannot_take() {
    support::require_loop_devices();
    let mut scratch = Scratch::new("exec-busy");
    let disk = scratch.disk(64);
    let root = scratch.root();
    support::sh(&["sgdisk", "-n1:0:+16M", "-n2:0:+16M", &disk]);
    support::sh(&["partx", "-a", &disk]);
    support::sh(&["mkfs.ext4", "-q", &format!("{disk}p2")]);
    support::sh(&["mount", &format!("{disk}p2"), &root]);
    // Deleting a partition that is mounted: the table changes on disk, the kernel keeps the
    // busy partition, and the executor says so after its bounded wait.
    let plan = Plan {
        mode: Mode::Format,
        operations: vec![op(&["sgdisk", "--delete=2", &disk], &disk, true, None)],
    };
    let mut options = ApplyOptions::new(&root);
    options.rescan_timeout = std::time::Duration::from_secs(2);
    let started = std::time::Instant::now();
    let err = apply(&plan, &options, false).expect_err("kernel keeps the busy partition");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // The step ran; what stopped the plan is the kernel's view, reported with the disk state.
    let ApplyError::Op(failure) = &err else {
        panic!("expected a step failure, got {err}");
    };
    assert!(failure.stopped);
    assert_eq!(failure.done.len(), 1, "the sgdisk step itself ran");
    let reason = &failure.stderr_tail;
    assert!(
        reason.contains(&format!("new partition table of {disk}")),
        "{reason}"
    );
    assert!(reason.contains("on disk: #1 at"), "{reason}");
    assert!(
        reason.contains("kernel: #1 at") && reason.contains("#2 at"),
        "{reason}"
    );
    assert!(reason.contains("partx -u"), "{reason}");
    assert!(
        failure.disk_state.contains(&format!("{disk}p2")),
        "{}",
        failure.disk_state
    );
    let text = err.to_string();
    assert!(text.contains("stopped by nixpave"), "{text}");
    support::sh(&["umount", &root]);
}

#[test]
fn a_skip_is_a_failure_when_every_test_must_run() {
    support::skip_unless_required("reported, not failed", false);
    let failed = std::panic::catch_unwind(|| support::skip_unless_required("no disk", true));
    assert!(
        failed.is_err(),
        "NIXPAVE_REQUIRE_ALL=1 turns a skip into a failure"
    );
}
