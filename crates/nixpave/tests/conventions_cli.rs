//! `--color` and `NO_COLOR` reach the result words of a fleet command: `nixpave exec` on a real lab
//! host, one command that succeeds and one that fails.

use std::process::{Command, Stdio};

use nixpave_lab::testing::Lab;

fn exec(lab: &Lab, global: &[&str], command: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nixpave"))
        .args(global)
        .args(["exec", lab.name(), "--", "sh", "-c", command])
        .env("NIXPAVE_LAB_DIR", lab.base_dir())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("nixpave runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exec_summary_colours_results_only_when_asked() {
    let lab = Lab::up(1).expect("lab up");
    let (code, stderr) = exec(&lab, &["--color", "always"], "exit 3");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("\x1b[31mfailed"), "{stderr:?}");
    let (code, stderr) = exec(&lab, &["--color", "always"], "true");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("\x1b[32mok"), "{stderr:?}");
    // auto (not a terminal, NO_COLOR set) and never: plain words.
    for global in [&[][..], &["--color", "never"]] {
        let (_, stderr) = exec(&lab, global, "exit 3");
        assert!(
            stderr.contains("failed") && !stderr.contains('\x1b'),
            "{stderr:?}"
        );
    }
}
