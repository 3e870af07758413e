//! Unit-level rules of the model and planner: sizes (property-tested), labels, ordering.

use nixpave_disk::model::label::{default_label, hex_escape_udev};
use nixpave_disk::model::size::{parse_position, parse_size, Position, Size};
use nixpave_disk::{plan, Layout, Mode, PlanOptions};
use proptest::prelude::*;
use serde_json::json;

proptest! {
    #[test]
    fn sizes_round_trip_through_units(n in 0u64..1_000_000, unit in 0usize..6) {
        let (suffix, mult) = [("", 1u64), ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40), ("P", 1 << 50)][unit];
        let parsed = parse_size(&format!("{n}{suffix}"));
        match n.checked_mul(mult) {
            Some(bytes) => prop_assert_eq!(parsed, Ok(Size::Bytes(bytes))),
            None => prop_assert!(parsed.is_err(), "overflow must be an error"),
        }
    }

    #[test]
    fn positions_keep_their_sign(n in 1u64..1_000_000) {
        prop_assert_eq!(parse_position(&format!("+{n}M")).unwrap(), Position::AfterStart(n << 20));
        prop_assert_eq!(parse_position(&format!("-{n}M")).unwrap(), Position::BeforeEnd(n << 20));
        prop_assert_eq!(parse_position(&format!("{n}s")).unwrap(), Position::Absolute(n * 512));
    }

    #[test]
    fn the_size_parser_never_panics(s in "\\PC{0,12}") {
        let _ = parse_size(&s);
        let _ = parse_position(&s);
    }

    #[test]
    fn labels_never_exceed_36_characters(d in "[a-z]{1,30}", p in "[a-zA-Z0-9_]{1,40}") {
        let l = default_label("disk", &d, &p);
        prop_assert!(l.chars().count() <= 36);
    }

    #[test]
    fn escaped_names_only_use_udev_safe_characters(s in "\\PC{0,20}") {
        let e = hex_escape_udev(&s);
        prop_assert!(e.chars().all(|c| c.is_ascii_alphanumeric() || "#+-.:=@_/\\".contains(c)));
    }
}

fn plan_of(v: serde_json::Value, mode: Mode) -> nixpave_disk::Plan {
    let layout = Layout::from_json(&v).expect("valid");
    plan(&layout, mode, &PlanOptions::default()).expect("plan")
}

#[test]
fn partitions_are_numbered_by_priority_then_name() {
    let v = json!({ "disk": { "d": { "type": "disk", "device": "/dev/vda", "content": { "type": "gpt", "partitions": {
        "zz": { "size": "100%" },
        "b": { "size": "1G" },
        "a": { "size": "1G" },
        "bios": { "size": "1M", "type": "EF02" },
        "first": { "size": "1M", "priority": 1 }
    }}}}});
    let p = plan_of(v, Mode::Format);
    let names: Vec<String> = p
        .operations
        .iter()
        .filter(|o| o.argv.iter().any(|a| a.starts_with("--new=")))
        .filter_map(|o| {
            o.argv
                .iter()
                .find(|a| a.starts_with("--change-name="))
                .cloned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "--change-name=1:disk-d-first",
            "--change-name=2:disk-d-bios",
            "--change-name=3:disk-d-a",
            "--change-name=4:disk-d-b",
            "--change-name=5:disk-d-zz"
        ]
    );
}

#[test]
fn devices_are_created_after_the_devices_they_consume() {
    // the VG's PV lives on disk "z", which sorts after "lvm_vg" kinds but must come first
    let v = json!({
        "disk": { "z": { "type": "disk", "device": "/dev/vdz", "content": { "type": "gpt", "partitions": {
            "pv": { "size": "100%", "content": { "type": "lvm_pv", "vg": "a" } } } } } },
        "lvm_vg": { "a": { "type": "lvm_vg", "lvs": { "root": { "size": "1G",
            "content": { "type": "filesystem", "format": "ext4", "mountpoint": "/" } } } } }
    });
    let p = plan_of(v, Mode::Format);
    let pos = |cmd: &str| p.operations.iter().position(|o| o.argv[0] == cmd).unwrap();
    assert!(pos("pvcreate") < pos("vgcreate"));
    assert!(pos("vgcreate") < pos("lvcreate"));
    assert!(pos("lvcreate") < pos("mkfs.ext4"));
}

#[test]
fn mounts_go_parents_first_and_unmounts_children_first() {
    let fs = |mp: &str| json!({ "type": "filesystem", "format": "ext4", "mountpoint": mp });
    let v = json!({ "disk": { "d": { "type": "disk", "device": "/dev/vda", "content": { "type": "gpt", "partitions": {
        "a": { "size": "1G", "content": fs("/var/lib") },
        "b": { "size": "1G", "content": fs("/var") },
        "c": { "size": "100%", "content": fs("/") }
    }}}}});
    let targets = |m: Mode, cmd: &str| -> Vec<String> {
        plan_of(v.clone(), m)
            .operations
            .into_iter()
            .filter(|o| o.argv[0] == cmd)
            .map(|o| {
                if cmd == "mount" {
                    o.argv[2].clone()
                } else {
                    o.argv[1].clone()
                }
            })
            .collect()
    };
    assert_eq!(
        targets(Mode::Mount, "mount"),
        ["/mnt", "/mnt/var", "/mnt/var/lib"]
    );
    assert_eq!(
        targets(Mode::Unmount, "umount"),
        ["/mnt/var/lib", "/mnt/var", "/mnt"]
    );
}

#[test]
fn every_destructive_format_step_is_guarded_and_destroy_wipes_only_destroyable_disks() {
    let v = json!({ "disk": {
        "keep": { "type": "disk", "device": "/dev/vdb", "destroy": false },
        "wipe": { "type": "disk", "device": "/dev/vda", "content": { "type": "gpt", "partitions": {
            "r": { "size": "100%", "content": { "type": "filesystem", "format": "ext4", "mountpoint": "/" } } } } }
    }});
    let p = plan_of(v.clone(), Mode::Format);
    assert!(p
        .operations
        .iter()
        .filter(|o| o.destructive)
        .all(|o| o.guard.is_some()));
    let d = plan_of(v, Mode::Destroy);
    assert!(d
        .operations
        .iter()
        .all(|o| o.destructive && o.device == "/dev/vda"));
    assert_eq!(d.operations[0].argv, ["wipefs", "--all", "-f", "/dev/vda"]);
}

#[test]
fn secrets_are_never_in_the_plan() {
    let v = json!({ "disk": { "d": { "type": "disk", "device": "/dev/vda", "content": { "type": "gpt", "partitions": {
        "c": { "size": "100%", "content": { "type": "luks", "name": "c",
            "content": { "type": "filesystem", "format": "ext4", "mountpoint": "/" } } } } } } } });
    let p = plan_of(v, Mode::FormatMount);
    let format = p
        .operations
        .iter()
        .find(|o| o.argv.contains(&"luksFormat".to_string()))
        .unwrap();
    assert_eq!(
        format.stdin,
        Some(nixpave_disk::StdinSource::Prompt {
            name: "c".into(),
            confirm: true
        })
    );
    assert!(format
        .argv
        .ends_with(&["--key-file".to_string(), "-".to_string()]));
}

#[test]
fn mdadm_create_confirms_on_stdin() {
    let v = json!({
        "disk": {
            "a": { "type": "disk", "device": "/dev/vda", "content": { "type": "mdraid", "name": "r" } },
            "b": { "type": "disk", "device": "/dev/vdb", "content": { "type": "mdraid", "name": "r" } }
        },
        "mdadm": { "r": { "type": "mdadm", "level": 1 } }
    });
    let p = plan_of(v, Mode::Format);
    let md = p
        .operations
        .iter()
        .find(|o| o.argv[..2] == ["mdadm", "--create"])
        .unwrap();
    assert_eq!(
        md.stdin,
        Some(nixpave_disk::StdinSource::Text { text: "y\n".into() })
    );
    assert!(md.argv.contains(&"--raid-devices=2".to_string()));
    // the new array's stale partition table is zapped, but only in the run that created it
    let i = p
        .operations
        .iter()
        .position(|o| o.argv[..2] == ["mdadm", "--create"])
        .unwrap();
    assert_eq!(
        p.operations[i - 1].argv,
        ["mkdir", "-p", "/run/nixpave/md-created/r"]
    );
    assert_eq!(
        p.operations[i + 1].argv,
        ["sgdisk", "--zap-all", "/dev/md/r"]
    );
    assert_eq!(
        p.operations[i + 1].guard,
        Some(nixpave_disk::Guard::PathExists {
            path: "/run/nixpave/md-created/r".into()
        })
    );
    assert_eq!(
        p.operations[i + 2].argv,
        ["rmdir", "/run/nixpave/md-created/r"]
    );
}

#[test]
fn hooks_run_in_bash_and_see_their_device_like_in_disko() {
    let v = json!({ "disk": { "d": { "type": "disk", "device": "/dev/vda",
        "preCreateHook": "echo \"creating $device\"" } } });
    let p = plan_of(v, Mode::Format);
    let hook = &p.operations[0];
    assert_eq!(&hook.argv[..2], ["bash", "-c"]);
    let out = std::process::Command::new(&hook.argv[0])
        .args(&hook.argv[1..])
        .output()
        .expect("bash");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "creating /dev/vda\n");
}

#[test]
fn bind_mounts_take_their_source_from_under_the_root() {
    let v = json!({ "nodev": { "/var/log": { "type": "nodev", "fsType": "none",
        "device": "/persist/log", "mountOptions": [ "bind" ] } } });
    let p = plan_of(v, Mode::Mount);
    assert_eq!(
        p.operations[0].argv,
        [
            "mount",
            "-t",
            "none",
            "/mnt/persist/log",
            "/mnt/var/log",
            "-o",
            "bind",
            "-o",
            "X-mount.mkdir"
        ]
    );
}

#[test]
fn a_stopped_md_array_is_assembled_not_recreated() {
    let v = json!({
        "disk": {
            "a": { "type": "disk", "device": "/dev/vda", "content": { "type": "mdraid", "name": "r" } },
            "b": { "type": "disk", "device": "/dev/vdb", "content": { "type": "mdraid", "name": "r" } }
        },
        "mdadm": { "r": { "type": "mdadm", "level": 1 } }
    });
    let assemble = |mode| {
        let p = plan_of(v.clone(), mode);
        let i = p
            .operations
            .iter()
            .position(|o| o.argv[..2] == ["mdadm", "--assemble"])
            .expect("an assemble step");
        let create = p
            .operations
            .iter()
            .position(|o| o.argv[..2] == ["mdadm", "--create"]);
        (p.operations[i].clone(), i, create)
    };
    for mode in [Mode::Mount, Mode::Format] {
        let (op, i, create) = assemble(mode);
        assert_eq!(
            op.argv,
            ["mdadm", "--assemble", "/dev/md/r", "/dev/vda", "/dev/vdb"]
        );
        assert_eq!(
            op.guard,
            Some(nixpave_disk::Guard::MdAssemblable {
                array: "/dev/md/r".into(),
                members: vec!["/dev/vda".into(), "/dev/vdb".into()],
            })
        );
        assert!(!op.destructive);
        // format tries to bring an existing array back before it would create one
        if let Some(c) = create {
            assert!(i < c, "assemble must come before create in {mode}");
        }
    }
}
