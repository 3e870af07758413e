//! The environment commands get on targets: one `PATH` that finds the tools on NixOS and on
//! other Linux distributions alike.
//!
//! Nothing nixpave runs on a host may depend on the `PATH` it inherits: a NixOS host keeps its
//! tools in `/run/current-system/sw/bin` and nix profiles, `/bin` holds only `sh` and `/usr/bin`
//! only `env`, and a unit started by `systemd-run` or a process started with an empty
//! environment gets a minimal or FHS-only `PATH`. Every command and script sent to a host
//! therefore runs under [`TARGET_PATH`]: the ssh transport wraps commands in
//! [`with_target_path`], and scripts that outlive their command (the deploy agent) start with
//! [`path_prelude`]. `/bin/sh` is the one absolute path relied on (NixOS has it too).

/// The `PATH` of every command nixpave runs on a host (as root): NixOS's setuid wrappers, root's
/// and the default nix profiles and the system profile first, then the usual FHS directories.
pub const TARGET_PATH: &str = "/run/wrappers/bin:/root/.nix-profile/bin:/nix/profile/bin:\
/root/.local/state/nix/profile/bin:/etc/profiles/per-user/root/bin:\
/nix/var/nix/profiles/default/bin:/run/current-system/sw/bin:\
/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The shell that runs nixpave's scripts on hosts: the one path NixOS shares with FHS systems.
pub const TARGET_SHELL: &str = "/bin/sh";

/// `PATH=…; export PATH`: the first line of a script that must not depend on the environment
/// it is started with. The inherited `PATH` keeps its place in front (a host's own choice of tools,
/// such as a newer nix first on its session `PATH`, stands), and [`TARGET_PATH`] follows, so the
/// tools are found even when nothing, or only systemd's FHS default, was inherited.
pub fn path_prelude() -> String {
    format!("PATH=\"${{PATH:+$PATH:}}{TARGET_PATH}\"; export PATH")
}

/// `argv` run with [`TARGET_PATH`] on its `PATH` (after the inherited one): `/bin/sh -c 'PATH=…; export PATH; exec "$@"'
/// sh ARGV…`, so even `argv[0]` is looked up in it (a `sh -c SCRIPT` runs inline, see [`with_target_env`]).
pub fn with_target_path(argv: &[String]) -> Vec<String> {
    with_target_env(argv, &[])
}

/// [`with_target_path`], with the variables `NAME=value` of `env` exported as well. A script given as
/// `sh -c SCRIPT [ARG0 ARGS…]` runs in the shell that sets the `PATH` (after it, on its own line) instead
/// of a second shell: a shell fewer per command on the host.
pub fn with_target_env(argv: &[String], env: &[&str]) -> Vec<String> {
    let mut prelude = path_prelude();
    for assignment in env {
        if let Some((name, value)) = assignment.split_once('=') {
            prelude.push_str(&format!(
                "; {name}={}; export {name}",
                crate::shell_quote(value)
            ));
        }
    }
    if let [sh, c, script, rest @ ..] = argv {
        if sh == "sh" && c == "-c" {
            let mut wrapped = vec![
                TARGET_SHELL.to_string(),
                "-c".to_string(),
                format!("{prelude}\n{script}"),
            ];
            // `$0` stays what `sh -c SCRIPT` gave it.
            if rest.is_empty() {
                wrapped.push("sh".to_string());
            }
            wrapped.extend(rest.iter().cloned());
            return wrapped;
        }
    }
    let mut wrapped = vec![
        TARGET_SHELL.to_string(),
        "-c".to_string(),
        format!("{prelude}; exec \"$@\""),
        "sh".to_string(),
    ];
    wrapped.extend(argv.iter().cloned());
    wrapped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_covers_nixos_and_fhs() {
        let dirs: Vec<&str> = TARGET_PATH.split(':').collect();
        for dir in [
            "/run/wrappers/bin",
            "/nix/var/nix/profiles/default/bin",
            "/run/current-system/sw/bin",
            "/etc/profiles/per-user/root/bin",
            "/root/.nix-profile/bin",
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ] {
            assert!(dirs.contains(&dir), "{dir} missing from {TARGET_PATH}");
        }
        // setuid wrappers come before everything, NixOS's profiles before the FHS directories.
        assert_eq!(dirs[0], "/run/wrappers/bin");
        let pos = |d: &str| dirs.iter().position(|x| *x == d).unwrap_or(usize::MAX);
        assert!(pos("/run/current-system/sw/bin") < pos("/usr/bin"));
        assert!(dirs.iter().all(|d| d.starts_with('/') && !d.is_empty()));
    }

    /// Runs `argv` here with an empty environment (`env -i`); its stdout, once it succeeded.
    fn run_with_empty_env(argv: &[String]) -> String {
        let out = std::process::Command::new("env")
            .arg("-i")
            .args(argv)
            .output()
            .expect("env -i runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn wrapped_command_finds_tools_with_an_empty_environment() {
        let argv = with_target_path(&[
            "sh".into(),
            "-c".into(),
            "echo \"$PATH\"; printf '%s|' \"$@\"".into(),
            "x".into(),
            "a b".into(),
            "$HOME".into(),
        ]);
        let text = run_with_empty_env(&argv);
        let (path, args) = text.split_once('\n').expect("two lines");
        assert!(path.ends_with(TARGET_PATH), "{path}");
        assert_eq!(args, "a b|$HOME|");
    }

    #[test]
    fn exported_variables_reach_scripts_and_programs_with_arguments_unchanged() {
        let run = |argv: Vec<String>| run_with_empty_env(&argv);
        let env = ["NIXPAVE_RUN=123-4", "OTHER=it's"];
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // A script runs inline, in the shell that sets the environment, with `$0` and its arguments as
        // `sh -c` gives them.
        let script = "set -eu; printf '%s|' \"$0\" \"$@\" \"$NIXPAVE_RUN\" \"$OTHER\"";
        let inline = with_target_env(&words(&["sh", "-c", script]), &env);
        assert_eq!(inline.len(), 4, "one shell, not two: {inline:?}");
        assert_eq!(run(inline), "sh|123-4|it's|");
        let inline = with_target_env(&words(&["sh", "-c", script, "zero", "a b", "$HOME"]), &env);
        assert_eq!(run(inline), "zero|a b|$HOME|123-4|it's|");
        // Any other program is exec'd, and sees the variables.
        let program = with_target_env(&words(&["env"]), &env);
        let text = run(program);
        assert!(text.lines().any(|l| l == "NIXPAVE_RUN=123-4"), "{text}");
        assert!(text.lines().any(|l| l == "OTHER=it's"), "{text}");
    }
}
