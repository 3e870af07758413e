//! Snapshot tests of plans, scripts and NixOS fragments for the project's own fixture layouts
//! (`fixtures/*.nix`), read from their pre-evaluated JSON (`fixtures/evaluated/`): no nix binary
//! needed. `plan_loader.rs` checks that JSON against the real nix loader.

use std::path::PathBuf;

use nixpave_disk::{load_layout, plan, LayoutSource, LoadOptions, Mode, PlanOptions};

fn fixture(name: &str) -> nixpave_disk::Layout {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let path = nixpave_testsupport::evaluated_layout(&path);
    load_layout(&LayoutSource::File(path), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

const FIXTURES: [&str; 5] = [
    "gpt-everything",
    "legacy-msdos",
    "luks-lvm",
    "md-zfs",
    "bcachefs",
];

#[test]
fn plans_of_every_fixture_and_mode() {
    for name in FIXTURES {
        let layout = fixture(&format!("{name}.nix"));
        for mode in [Mode::Format, Mode::Mount, Mode::Unmount, Mode::Destroy] {
            let p = plan(&layout, mode, &PlanOptions::default()).expect("plan");
            insta::assert_json_snapshot!(format!("{name}.{}", mode.as_str()), p);
        }
    }
}

#[test]
fn human_rendering_groups_per_device_and_ends_with_a_summary() {
    for name in FIXTURES {
        let layout = fixture(&format!("{name}.nix"));
        let p = plan(&layout, Mode::DestroyFormatMount, &PlanOptions::default()).expect("plan");
        let text = nixpave_disk::render::human(&p);
        assert!(text.contains("Summary:"), "{text}");
        assert!(text.contains("DESTROYS ALL DATA"), "{text}");
        insta::assert_snapshot!(format!("{name}.human"), text);
    }
}

#[test]
fn scripts_turn_guards_into_if_tests() {
    let layout = fixture("gpt-everything.nix");
    let p = plan(&layout, Mode::FormatMount, &PlanOptions::default()).expect("plan");
    let script = nixpave_disk::render::script(&p);
    assert!(script.starts_with("#!/usr/bin/env bash\n"));
    assert!(script
        .contains("if ! blkid -p /dev/vda >/dev/null 2>&1; then\n  sgdisk --clear /dev/vda\nfi"));
    insta::assert_snapshot!("gpt-everything.script", script);
    // bash accepts the scripts of every fixture (prompts, stdin files, quoting)
    for name in FIXTURES {
        let p = plan(
            &fixture(&format!("{name}.nix")),
            Mode::DestroyFormatMount,
            &PlanOptions::default(),
        )
        .expect("plan");
        let script = nixpave_disk::render::script(&p);
        let check = std::process::Command::new("bash")
            .args(["-n", "-c", &script])
            .status()
            .expect("bash");
        assert!(check.success(), "{name}:\n{script}");
    }
}

#[test]
fn nixos_fragments_of_every_fixture() {
    for name in FIXTURES {
        let layout = fixture(&format!("{name}.nix"));
        insta::assert_json_snapshot!(format!("{name}.nixos"), nixpave_disk::nixos_config(&layout));
    }
}

#[test]
fn root_mountpoint_prefixes_every_target() {
    let layout = fixture("gpt-everything.nix");
    let options = PlanOptions {
        root_mountpoint: "/target".into(),
        ..PlanOptions::default()
    };
    let p = plan(&layout, Mode::Mount, &options).expect("plan");
    let targets: Vec<&String> = p
        .operations
        .iter()
        .filter(|o| o.argv[0] == "mount")
        .map(|o| {
            o.argv
                .iter()
                .find(|a| a.starts_with("/target"))
                .expect("target")
        })
        .collect();
    assert!(targets.contains(&&"/target".to_string()));
    assert!(targets.contains(&&"/target/boot".to_string()));
    // parents first
    let root = targets.iter().position(|t| *t == "/target").unwrap();
    let boot = targets.iter().position(|t| *t == "/target/boot").unwrap();
    assert!(root < boot);
}

#[test]
fn shipped_examples_plan_in_every_mode() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("nix") {
            continue;
        }
        let evaluated = nixpave_testsupport::evaluated_layout(&path);
        let layout = load_layout(&LayoutSource::File(evaluated), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // `update` plans from the live disks' facts (update_snapshots.rs).
        for mode in Mode::ALL.into_iter().filter(|m| *m != Mode::Update) {
            let p = plan(&layout, mode, &PlanOptions::default())
                .unwrap_or_else(|e| panic!("{} {mode}: {e}", path.display()));
            assert!(!p.operations.is_empty(), "{} {mode}", path.display());
        }
        n += 1;
    }
    assert!(n >= 3, "examples/ has the shipped layouts");
}
