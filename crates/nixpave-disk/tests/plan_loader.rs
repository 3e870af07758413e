//! Loading layouts with the real nix CLI: plain files, functions with --arg/--argstr, JSON,
//! flakes, disk overrides, and the errors for bad input.

use std::path::{Path, PathBuf};

use nixpave_disk::{load_layout, LayoutSource, LoadError, LoadOptions};
use nixpave_nix::NixArg;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn load(path: &Path, options: LoadOptions) -> Result<nixpave_disk::Layout, LoadError> {
    load_layout(&LayoutSource::File(path.to_path_buf()), &options)
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "nixpave-plan-loader-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Removes the directory when the test ends.
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_function_gets_lib_and_its_defaults() {
    let l = load(&fixture("function.nix"), LoadOptions::default()).expect("load");
    assert_eq!(l.disks().len(), 1);
    assert_eq!(l.disk["/dev/vda"].name, "_dev_vda");
    assert!(l.nodev.is_empty(), "optionalAttrs false gives nothing");
}

#[test]
fn arg_and_argstr_reach_the_function_and_mk_markers_resolve() {
    let options = LoadOptions {
        args: vec![
            NixArg::Expr {
                name: "disks".into(),
                expr: r#"[ "/dev/vdb" "/dev/vdc" ] # a comment"#.into(),
            },
            NixArg::Expr {
                name: "withTmp".into(),
                expr: "true".into(),
            },
            NixArg::Str {
                name: "swapSize".into(),
                value: "2G".into(),
            },
        ],
        disk_overrides: vec![],
    };
    let l = load(&fixture("function.nix"), options).expect("load");
    let names: Vec<String> = l.disks().into_iter().map(|d| d.device).collect();
    assert_eq!(names, ["/dev/vdb", "/dev/vdc"]);
    let tmp = &l.nodev["/tmp"];
    assert_eq!(
        tmp.mount_options,
        ["size=1G"],
        "mkIf true resolves to its content"
    );
    let nixpave_disk::model::Content::Gpt(g) = l.disk["/dev/vdb"].content.as_ref().unwrap() else {
        panic!("gpt")
    };
    assert_eq!(g.partitions[0].size, "2G");
    let nixpave_disk::model::Content::Filesystem(f) = g.partitions[1].content.as_ref().unwrap()
    else {
        panic!("fs")
    };
    assert_eq!(f.format, "ext4", "mkDefault resolves to its value");
    assert_eq!(f.mountpoint.as_deref(), Some("/vdb"));
}

#[test]
fn json_layouts_are_read_directly_and_disks_can_be_overridden() {
    let dir = tempdir();
    let _c = Cleanup(dir.clone());
    let path = dir.join("layout.json");
    std::fs::write(
        &path,
        r#"{"disk":{"main":{"type":"disk","device":"/dev/vda","content":{"type":"gpt","partitions":{
            "root":{"size":"100%","content":{"type":"filesystem","format":"ext4","mountpoint":"/"}}}}}}}"#,
    )
    .unwrap();
    let l = load(
        &path,
        LoadOptions {
            args: vec![],
            disk_overrides: vec![("main".into(), "/dev/loop9".into())],
        },
    )
    .expect("load");
    assert_eq!(l.disks()[0].device, "/dev/loop9");
    let nixpave_disk::model::Content::Gpt(g) = l.disk["main"].content.as_ref().unwrap() else {
        panic!("gpt")
    };
    assert_eq!(
        g.device, "/dev/loop9",
        "content devices follow the override"
    );

    let err = load(
        &path,
        LoadOptions {
            args: vec![],
            disk_overrides: vec![("mian".into(), "/dev/loop9".into())],
        },
    )
    .expect_err("unknown disk");
    assert!(
        err.to_string().contains("no disk `mian` (disks: main)"),
        "{err}"
    );
}

#[test]
fn nix_errors_carry_nix_message() {
    let dir = tempdir();
    let _c = Cleanup(dir.clone());
    let path = dir.join("broken.nix");
    std::fs::write(&path, "{ disko.devices = { disk = ; }; }").unwrap();
    let err = load(&path, LoadOptions::default()).expect_err("syntax error");
    assert!(matches!(err, LoadError::Eval(_)), "{err:?}");
    assert!(err.to_string().contains("syntax error"), "{err}");
    assert!(!err.to_string().contains("build-users-group"), "{err}");
}

#[test]
fn layout_errors_point_at_the_file_line() {
    let dir = tempdir();
    let _c = Cleanup(dir.clone());
    let path = dir.join("typo.nix");
    std::fs::write(
        &path,
        "{\n  disko.devices.disk.main = {\n    type = \"disk\";\n    device = \"/dev/vda\";\n    content = {\n      type = \"gpt\";\n      partitions.ESP = {\n        sise = \"512M\";\n      };\n    };\n  };\n}\n",
    )
    .unwrap();
    let err = load(&path, LoadOptions::default()).expect_err("typo");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}:8: ", path.display())),
        "{text}"
    );
    assert!(text.contains("did you mean `size`?"), "{text}");
}

#[test]
fn missing_files_and_unknown_extensions_are_refused() {
    let err =
        load(Path::new("/nonexistent/layout.nix"), LoadOptions::default()).expect_err("missing");
    assert!(matches!(err, LoadError::Read { .. }), "{err:?}");
    let err = load(Path::new("/etc/hostname"), LoadOptions::default()).expect_err("type");
    assert!(matches!(err, LoadError::FileType(_)), "{err:?}");
}

#[test]
fn flakes_provide_disko_configurations_or_nixos_configurations() {
    let dir = tempdir();
    let _c = Cleanup(dir.clone());
    let devices = r#"{ disk.main = { type = "disk"; device = "/dev/vda"; content = { type = "gpt"; partitions.root = { size = "100%"; content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; }; }; }; }; }"#;
    std::fs::write(
        dir.join("flake.nix"),
        format!(
            r#"{{
  outputs = {{ self }}: {{
    diskoConfigurations.plain = {{ disko.devices = {devices}; }};
    nixosConfigurations.host.config.disko.devices = {devices} // {{ _meta = {{ internal = true; }}; }};
  }};
}}"#
        ),
    )
    .unwrap();
    let flake_ref = format!("path:{}", dir.display());
    for name in ["plain", "host"] {
        let source = LayoutSource::Flake {
            flake_ref: flake_ref.clone(),
            name: name.into(),
        };
        let l =
            load_layout(&source, &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(l.disks()[0].device, "/dev/vda", "{name}");
    }
    let source = LayoutSource::Flake {
        flake_ref,
        name: "nope".into(),
    };
    let err = load_layout(&source, &LoadOptions::default()).expect_err("missing config");
    assert!(matches!(err, LoadError::Eval(_)), "{err:?}");
}

/// The planner's snapshot tests read pre-evaluated JSON (no nix binary needed); this test is
/// where the real loader still runs: it evaluates every fixture and shipped example with nix and
/// fails when its JSON is stale or missing. `scripts/update-disk-fixtures.sh` rewrites them
/// (`NIXPAVE_UPDATE_FIXTURES=1`).
#[test]
fn evaluated_json_fixtures_are_what_nix_makes_of_the_layouts() {
    let update = std::env::var_os("NIXPAVE_UPDATE_FIXTURES").is_some_and(|v| v == "1");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    for dir in [manifest.join("fixtures"), manifest.join("../../examples")] {
        for entry in std::fs::read_dir(&dir).expect("read layouts dir") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "nix") {
                sources.push(path);
            }
        }
    }
    sources.sort();
    assert!(sources.len() >= 9, "fixtures and examples: {sources:?}");
    let mut stale = Vec::new();
    for source in &sources {
        let evaluated = nixpave_nix::eval_file(source, &[])
            .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        let json_path = nixpave_testsupport::evaluated_layout(source);
        let text = serde_json::to_string_pretty(&evaluated).expect("serialise") + "\n";
        if update {
            std::fs::create_dir_all(json_path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&json_path, &text).expect("write fixture");
            continue;
        }
        let committed = std::fs::read_to_string(&json_path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if committed.as_ref() != Some(&evaluated) {
            stale.push(json_path.display().to_string());
        } else {
            // The JSON loads to the same layout as the .nix file does.
            assert_eq!(
                load(source, LoadOptions::default()).expect("load .nix"),
                load(&json_path, LoadOptions::default()).expect("load .json"),
                "{}",
                source.display()
            );
        }
    }
    assert!(
        stale.is_empty(),
        "stale or missing pre-evaluated layouts (run scripts/update-disk-fixtures.sh): {stale:?}"
    );
}
