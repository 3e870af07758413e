//! Every kind of bad input is refused before anything runs, with the attribute path and a hint.

use nixpave_disk::{plan, Layout, LayoutError, Mode, PlanOptions};
use serde_json::{json, Value};

fn disk_with_partitions(partitions: Value) -> Value {
    json!({ "disko": { "devices": { "disk": { "main": {
        "type": "disk", "device": "/dev/vda",
        "content": { "type": "gpt", "partitions": partitions }
    }}}}})
}

fn err(v: Value) -> LayoutError {
    Layout::from_json(&v).expect_err("layout must be refused")
}

#[test]
fn misspelt_option_names_the_path_and_suggests() {
    let e = err(disk_with_partitions(
        json!({ "ESP": { "sise": "512M", "type": "EF00" } }),
    ));
    assert_eq!(e.path(), "disk.main.content.partitions.ESP.sise");
    assert_eq!(
        e.to_string(),
        "`disk.main.content.partitions.ESP.sise`: unknown option `sise` (did you mean `size`?)"
    );
}

#[test]
fn misspelt_option_without_close_match_has_no_suggestion() {
    let e = err(disk_with_partitions(json!({ "ESP": { "zzzzzzzz": 1 } })));
    assert!(!e.to_string().contains("did you mean"), "{e}");
}

#[test]
fn misspelt_content_type_suggests_the_type() {
    let e = err(disk_with_partitions(
        json!({ "root": { "content": { "type": "filesytem", "format": "ext4" } } }),
    ));
    assert_eq!(e.path(), "disk.main.content.partitions.root.content.type");
    assert!(e.to_string().contains("did you mean \"filesystem\""), "{e}");
}

#[test]
fn partition_tables_are_not_allowed_inside_partitions() {
    let e = err(disk_with_partitions(
        json!({ "p": { "content": { "type": "gpt" } } }),
    ));
    assert!(e.to_string().contains("not allowed here"), "{e}");
}

#[test]
fn two_partitions_taking_the_rest_are_refused() {
    let e = err(disk_with_partitions(json!({
        "a": { "size": "100%" }, "b": { "size": "100%" }
    })));
    assert_eq!(e.path(), "disk.main.content.partitions.b");
    assert!(
        e.to_string().contains("two partitions take the rest"),
        "{e}"
    );
}

#[test]
fn percent_sizes_other_than_100_are_refused() {
    let e = err(disk_with_partitions(json!({ "a": { "size": "50%" } })));
    assert_eq!(e.path(), "disk.main.content.partitions.a.size");
}

#[test]
fn bad_start_and_end_are_refused() {
    let e = err(disk_with_partitions(json!({ "a": { "end": "-8X" } })));
    assert_eq!(e.path(), "disk.main.content.partitions.a.end");
    assert!(e.to_string().contains("unknown unit"), "{e}");
}

#[test]
fn unknown_gpt_type_codes_are_refused() {
    let e = err(disk_with_partitions(json!({ "a": { "type": "EF99" } })));
    assert_eq!(e.path(), "disk.main.content.partitions.a.type");
    assert!(
        e.to_string().contains("unknown GPT type code `EF99`"),
        "{e}"
    );
    let e = err(disk_with_partitions(json!({ "a": { "type": "linux" } })));
    assert!(e.to_string().contains("neither a 4-digit"), "{e}");
    // full GUIDs are fine
    Layout::from_json(&disk_with_partitions(
        json!({ "a": { "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4" } }),
    ))
    .expect("GUID type");
}

#[test]
fn duplicate_labels_are_refused() {
    let e = err(disk_with_partitions(json!({
        "a": { "size": "1M", "label": "same" }, "b": { "size": "1M", "label": "same" }
    })));
    assert!(
        e.to_string().contains("duplicate partition label `same`"),
        "{e}"
    );
}

#[test]
fn duplicate_mountpoints_are_refused() {
    let fs = json!({ "type": "filesystem", "format": "ext4", "mountpoint": "/" });
    let e = err(disk_with_partitions(json!({
        "a": { "size": "1G", "content": fs.clone() }, "b": { "size": "100%", "content": fs }
    })));
    assert!(e.to_string().contains("mountpoint `/` is also used"), "{e}");
}

#[test]
fn a_volume_group_without_physical_volumes_is_refused() {
    let v =
        json!({ "disko": { "devices": { "lvm_vg": { "vg0": { "type": "lvm_vg", "lvs": {} } } } } });
    let e = err(v);
    assert_eq!(e.path(), "lvm_vg.vg0");
    assert!(e.to_string().contains("no member devices"), "{e}");
}

#[test]
fn a_physical_volume_of_a_missing_group_is_refused_with_a_suggestion() {
    let mut v = disk_with_partitions(
        json!({ "p": { "size": "100%", "content": { "type": "lvm_pv", "vg": "pooll" } } }),
    );
    v["disko"]["devices"]["lvm_vg"] = json!({ "pool": { "type": "lvm_vg", "lvs": {} } });
    let e = err(v);
    assert_eq!(e.path(), "disk.main.content.partitions.p.content.vg");
    assert!(
        e.to_string()
            .contains("there is no `lvm_vg.pooll` (did you mean `pool`?)"),
        "{e}"
    );
}

#[test]
fn a_zpool_member_that_does_not_exist_is_refused() {
    let mut v = disk_with_partitions(
        json!({ "zfs": { "size": "100%", "content": { "type": "zfs", "pool": "tank" } } }),
    );
    v["disko"]["devices"]["zpool"] = json!({ "tank": { "type": "zpool", "mode": { "topology": {
        "type": "topology",
        "vdev": [ { "mode": "mirror", "members": [ "main", "other" ] } ]
    }}}});
    let e = err(v);
    assert_eq!(e.path(), "zpool.tank.mode.topology.vdev.0.members");
    assert!(e.to_string().contains("zpool member `other`"), "{e}");
}

#[test]
fn a_thin_volume_needs_an_existing_thin_pool() {
    let mut v = disk_with_partitions(
        json!({ "p": { "size": "100%", "content": { "type": "lvm_pv", "vg": "vg" } } }),
    );
    v["disko"]["devices"]["lvm_vg"] = json!({ "vg": { "type": "lvm_vg", "lvs": {
        "t": { "size": "1G", "lvm_type": "thinlv", "pool": "nope" }
    }}});
    let e = err(v);
    assert_eq!(e.path(), "lvm_vg.vg.lvs.t.pool");
}

#[test]
fn dependency_cycles_are_refused() {
    // md array a is built from md array b, and b from a
    let v = json!({ "disko": { "devices": { "mdadm": {
        "a": { "type": "mdadm", "content": { "type": "mdraid", "name": "b" } },
        "b": { "type": "mdadm", "content": { "type": "mdraid", "name": "a" } }
    }}}});
    let e = err(v);
    assert!(e.to_string().contains("dependency cycle"), "{e}");
}

#[test]
fn missing_required_options_and_wrong_types_are_named() {
    let v = json!({ "disko": { "devices": { "disk": { "main": { "type": "disk" } } } } });
    assert_eq!(err(v).path(), "disk.main.device");
    let v = json!({ "disko": { "devices": { "disk": { "main": { "type": "disk", "device": "/dev/vda", "destroy": "yes" } } } } });
    let e = err(v);
    assert_eq!(
        e.to_string(),
        "`disk.main.destroy`: expected a boolean, found a string"
    );
}

#[test]
fn relative_mountpoints_are_refused() {
    let e = err(disk_with_partitions(
        json!({ "r": { "size": "100%", "content": {
        "type": "filesystem", "format": "ext4", "mountpoint": "mnt" } } }),
    ));
    assert_eq!(
        e.path(),
        "disk.main.content.partitions.r.content.mountpoint"
    );
}

#[test]
fn quoted_attribute_names_appear_quoted_in_paths() {
    let v = json!({ "disko": { "devices": { "nodev": { "/tmp": { "type": "nodev", "fstype": "tmpfs" } } } } });
    let e = err(v);
    assert_eq!(e.path(), "nodev.\"/tmp\".fstype");
    assert!(e.to_string().contains("did you mean `fsType`"), "{e}");
}

#[test]
fn partitions_bigger_than_a_known_disk_are_refused() {
    let layout = Layout::from_json(&disk_with_partitions(json!({
        "a": { "size": "600M" }, "b": { "size": "600M" }, "c": { "size": "100%" }
    })))
    .expect("valid without sizes");
    let mut options = PlanOptions::default();
    options.disk_sizes.insert("/dev/vda".into(), 1 << 30);
    let e = plan(&layout, Mode::Format, &options).expect_err("does not fit");
    assert!(e.to_string().contains("partition `b`"), "{e}");
    assert!(e.to_string().contains("does not fit on /dev/vda"), "{e}");
    // the same layout fits on 2 GiB
    options.disk_sizes.insert("/dev/vda".into(), 2 << 30);
    plan(&layout, Mode::Format, &options).expect("fits");
    // a negative end beyond the disk is refused too
    let layout =
        Layout::from_json(&disk_with_partitions(json!({ "a": { "end": "-2G" } }))).unwrap();
    options.disk_sizes.insert("/dev/vda".into(), 1 << 30);
    assert!(plan(&layout, Mode::Format, &options).is_err());
}

#[test]
fn relative_root_mountpoint_is_refused() {
    let layout = Layout::from_json(&disk_with_partitions(json!({}))).unwrap();
    let options = PlanOptions {
        root_mountpoint: "mnt".into(),
        ..PlanOptions::default()
    };
    assert!(plan(&layout, Mode::Mount, &options).is_err());
}

#[test]
fn a_pool_device_missing_from_the_topology_is_refused() {
    let mut v = disk_with_partitions(json!({
        "z1": { "size": "1G", "content": { "type": "zfs", "pool": "tank" } },
        "z2": { "size": "100%", "content": { "type": "zfs", "pool": "tank" } }
    }));
    v["disko"]["devices"]["zpool"] = json!({ "tank": { "type": "zpool", "mode": { "topology": {
        "type": "topology",
        "vdev": [ { "members": [ "/dev/disk/by-partlabel/disk-main-z1" ] } ]
    }}}});
    let e = err(v);
    assert_eq!(e.path(), "zpool.tank.mode.topology");
    assert!(
        e.to_string()
            .contains("disk-main-z2` has `pool = \"tank\"` but is not in the topology"),
        "{e}"
    );
}
