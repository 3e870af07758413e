//! `nixpave completions SHELL` and `nixpave man DIR`, checked by the real tools: bash parses the script and
//! completes a subcommand with it, `man -l` renders a page.

use std::process::Command;

fn nixpave(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nixpave"))
        .args(args)
        .output()
        .expect("nixpave runs")
}

#[test]
fn bash_completes_subcommands_and_their_flags() {
    let out = nixpave(&["completions", "bash"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("nixpave.bash");
    std::fs::write(&script, &out.stdout).expect("write");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("bash");
    assert!(syntax.success(), "bash rejects the completion script");
    // What bash does on `nixpave dep<TAB>` and `nixpave deploy --ssh-o<TAB>`.
    let complete = |words: &str, cword: usize| {
        let probe = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; \
             _nixpave nixpave \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(probe)
            .output()
            .expect("bash");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let subcommands = complete("nixpave dep", 1);
    assert_eq!(subcommands.trim(), "deploy", "{subcommands}");
    let flags = complete("nixpave deploy --ssh-o", 2);
    assert!(flags.lines().any(|l| l.trim() == "--ssh-opts"), "{flags}");
}

#[test]
fn every_shell_gets_a_script() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = nixpave(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("deploy"),
            "{shell}"
        );
    }
    assert_eq!(nixpave(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn man_pages_for_every_command_render_with_man() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = nixpave(&["man", &dir.path().display().to_string()]);
    assert!(out.status.success(), "{out:?}");
    for page in [
        "nixpave.1",
        "nixpave-deploy.1",
        "nixpave-lab-up.1",
        "nixpave-disk-plan.1",
    ] {
        assert!(dir.path().join(page).is_file(), "{page} missing");
    }
    let rendered = Command::new("man")
        .arg("-l")
        .arg(dir.path().join("nixpave-deploy.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man runs");
    assert!(rendered.status.success(), "{rendered:?}");
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(text.contains("nixpave-deploy"), "{text}");
    assert!(text.contains("--ssh-opts"), "{text}");
}

/// `nixpave completions bash | head` is no error: a closed pipe ends the script quietly (clap_complete
/// alone would panic).
#[test]
fn a_closed_pipe_is_not_a_panic() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_nixpave"))
        .args(["completions", "powershell"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nixpave runs");
    let mut first = [0u8; 16];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("read");
    // The reader is gone now (dropped above); the script is larger than a pipe's buffer.
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
