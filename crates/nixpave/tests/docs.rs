//! The docs: docs/migrating.md names only flags nixpave has (every table row's nixpave column is read,
//! and each flag in it must be in the `--help` of the command its table is about, `nixpave command: …`),
//! and every command has a page in docs/commands with an example session.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

fn help_flags(command: &[&str]) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_nixpave"))
        .args(command)
        .arg("--help")
        .env("COLUMNS", "200")
        .output()
        .expect("nixpave runs");
    assert!(out.status.success(), "nixpave {command:?} --help failed");
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| w.starts_with('-'))
        .map(|w| w.split(['=', '[', '<']).next().unwrap_or(w).to_string())
        .collect()
}

/// The flags (`-x`, `--name`) in a table cell's backticked words.
fn flags_in(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|code| {
            code.split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .flat_map(|w| w.split('/').map(String::from).collect::<Vec<_>>())
        .filter(|w| {
            (w.starts_with("--") && w.len() > 2)
                || (w.len() == 2 && w.starts_with('-') && w.as_bytes()[1].is_ascii_alphabetic())
        })
        .collect()
}

#[test]
fn every_nixpave_flag_in_the_migration_guide_exists() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/migrating.md");
    let doc = std::fs::read_to_string(path).expect("docs/migrating.md");
    let mut helps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut command: Option<String> = None;
    let mut checked = 0;
    let mut rows = 0;
    let mut missing = Vec::new();
    for (n, line) in doc.lines().enumerate() {
        if let Some(rest) = line.strip_prefix("nixpave command: `nixpave ") {
            let cmd = rest.trim_end_matches('`').to_string();
            helps
                .entry(cmd.clone())
                .or_insert_with(|| help_flags(&cmd.split(' ').collect::<Vec<_>>()));
            command = Some(cmd);
            continue;
        }
        if line.starts_with("## ") {
            command = None;
        }
        if !line.starts_with('|') || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<String> = line
            .replace("\\|", "\u{0}")
            .split('|')
            .map(|c| c.replace('\u{0}', "|").trim().to_string())
            .collect();
        // ["", theirs, nixpave, note, ""]; the header row names the nixpave column "nixpave".
        if cells.len() < 4 || cells[2] == "nixpave" {
            continue;
        }
        let cmd = command.as_deref().unwrap_or_else(|| {
            panic!(
                "line {}: a table row before any `nixpave command:` line",
                n + 1
            )
        });
        rows += 1;
        let nixpave = &cells[2];
        assert!(
            nixpave.starts_with("same")
                || nixpave.starts_with("renamed to")
                || nixpave.starts_with("not supported")
                || cells[1] == "(none)",
            "line {}: the nixpave column must say same, renamed to … or not supported, because …: {nixpave}",
            n + 1
        );
        if nixpave.starts_with("not supported") {
            assert!(
                nixpave.contains("because"),
                "line {}: say why: {nixpave}",
                n + 1
            );
            continue;
        }
        // `renamed to `nixpave exec`` names another command: it must exist.
        if let Some(other) = nixpave.strip_prefix("renamed to `nixpave ") {
            let other = other.split('`').next().unwrap_or_default();
            help_flags(&other.split(' ').collect::<Vec<_>>());
            checked += 1;
            continue;
        }
        for flag in flags_in(nixpave) {
            checked += 1;
            if !helps[cmd].contains(&flag) {
                missing.push(format!(
                    "line {}: `{flag}` is not in `nixpave {cmd} --help`",
                    n + 1
                ));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    // The guide is not empty and its tables were read: a parser that finds nothing must not pass.
    assert!(rows >= 100, "only {rows} table rows read");
    assert!(checked >= 80, "only {checked} flags checked");
    assert!(helps.len() >= 3, "commands: {:?}", helps.keys());
}

#[test]
fn the_flag_reader_reads_cells() {
    assert_eq!(
        flags_in("same: `-i`/`--identity` and `-s/--skip-checks`, `sshOpts = [ \"-p\" ]`"),
        ["-i", "--identity", "-s", "--skip-checks"]
    );
}

#[test]
fn every_command_has_a_page_with_a_session() {
    let out = Command::new(env!("CARGO_BIN_EXE_nixpave"))
        .arg("--help")
        .output()
        .expect("nixpave runs");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let commands: Vec<&str> = help
        .split("Commands:\n")
        .nth(1)
        .expect("a Commands section")
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 10, "{commands:?}");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/commands");
    let pages: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("docs/commands")
        .map(|e| {
            let path = e.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("page");
            (path.display().to_string(), text)
        })
        .collect();
    let index =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/README.md"))
            .expect("docs/README.md");
    for cmd in commands {
        let (path, text) = pages
            .iter()
            .find(|(_, t)| {
                t.lines()
                    .next()
                    .is_some_and(|title| title.contains(&format!("nixpave {cmd}")))
            })
            .unwrap_or_else(|| panic!("no page in docs/commands has the title `nixpave {cmd}`"));
        // A session: a console block with the command run and its exit status.
        assert!(
            text.contains("```console") && text.contains(&format!("$ nixpave {cmd}")),
            "{path}: no example session of `nixpave {cmd}`"
        );
        let file = std::path::Path::new(path)
            .file_name()
            .unwrap()
            .to_string_lossy();
        assert!(
            index.contains(&format!("commands/{file}")),
            "docs/README.md does not link {file}"
        );
    }
}
