//! Rendering a [`Plan`]: readable text grouped per device with a closing summary, or an
//! equivalent standalone bash script (guards become `if` tests).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use nixpave_remote::{shell_join, shell_quote};

use crate::plan::{Guard, Operation, Plan, StdinSource};

/// The guard in words, e.g. `only if /dev/vda is blank`.
pub fn describe_guard(g: &Guard) -> String {
    match g {
        Guard::DeviceBlank { device } => format!("only if {device} is blank"),
        Guard::NoFilesystem { device } => format!("only if {device} has no filesystem yet"),
        Guard::NotLuks { device } => format!("only if {device} is not LUKS yet"),
        Guard::PartitionAbsent { disk, number } => {
            format!("only if partition {number} does not exist on {disk}")
        }
        Guard::PartitionPresent { disk, number } => {
            format!("only if partition {number} already exists on {disk}")
        }
        Guard::PathAbsent { path } => format!("only if {path} does not exist"),
        Guard::PathExists { path } => format!("only if {path} exists"),
        Guard::NotMounted { target, .. } => format!("only if {target} is not mounted"),
        Guard::Mounted { target } => format!("only if {target} is mounted"),
        Guard::SwapInactive { device } => format!("only if swap on {device} is off"),
        Guard::SwapActive { device } => format!("only if swap on {device} is on"),
        Guard::VgAbsent { vg } => format!("only if volume group {vg} does not exist"),
        Guard::LvAbsent { vg, lv } => format!("only if {vg}/{lv} does not exist"),
        Guard::PoolAbsent { pool } => format!("only if pool {pool} is not imported"),
        Guard::PoolPresent { pool } => format!("only if pool {pool} is imported"),
        Guard::DatasetAbsent { dataset } => format!("only if {dataset} does not exist"),
        Guard::SubvolumeAbsent { path } => format!("only if subvolume {path} does not exist"),
        Guard::KeyUnavailable { dataset } => format!("only if the key of {dataset} is not loaded"),
        Guard::KeyAvailable { dataset } => format!("only if the key of {dataset} is loaded"),
        Guard::PoolImportable { pool } => format!("only if a pool {pool} can be imported"),
        Guard::LuksKeyMissing { device, key_file } => {
            format!("only if {key_file} does not open {device} yet")
        }
        Guard::MdAssemblable { array, members } => format!(
            "only if {array} is not running and {} carry its md superblocks",
            members.join(", ")
        ),
    }
}

/// The guard as a bash condition.
pub fn guard_test(g: &Guard) -> String {
    let q = |s: &str| shell_quote(s);
    match g {
        Guard::DeviceBlank { device } => format!("! blkid -p {} >/dev/null 2>&1", q(device)),
        Guard::NoFilesystem { device } => {
            format!(
                "! blkid -p -o export {} 2>/dev/null | grep -q '^TYPE='",
                q(device)
            )
        }
        Guard::NotLuks { device } => format!("! cryptsetup isLuks {}", q(device)),
        Guard::PartitionAbsent { disk, number } => format!(
            "! sgdisk -i {number} {} 2>/dev/null | grep -q '^Partition GUID code'",
            q(disk)
        ),
        Guard::PartitionPresent { disk, number } => format!(
            "sgdisk -i {number} {} 2>/dev/null | grep -q '^Partition GUID code'",
            q(disk)
        ),
        Guard::PathAbsent { path } => format!("[ ! -e {} ]", q(path)),
        Guard::PathExists { path } => format!("[ -e {} ]", q(path)),
        Guard::NotMounted { target, .. } => {
            format!("! findmnt --mountpoint {} >/dev/null 2>&1", q(target))
        }
        Guard::Mounted { target } => format!("findmnt --mountpoint {} >/dev/null 2>&1", q(target)),
        Guard::SwapInactive { device } => format!(
            "! swapon --show=NAME --noheadings | grep -qxF \"$(readlink -f {})\"",
            q(device)
        ),
        Guard::SwapActive { device } => format!(
            "swapon --show=NAME --noheadings | grep -qxF \"$(readlink -f {})\"",
            q(device)
        ),
        Guard::VgAbsent { vg } => format!("! vgs {} >/dev/null 2>&1", q(vg)),
        Guard::LvAbsent { vg, lv } => format!("! lvs {} >/dev/null 2>&1", q(&format!("{vg}/{lv}"))),
        Guard::PoolAbsent { pool } => format!("! zpool list {} >/dev/null 2>&1", q(pool)),
        Guard::PoolPresent { pool } => format!("zpool list {} >/dev/null 2>&1", q(pool)),
        Guard::DatasetAbsent { dataset } => format!("! zfs list {} >/dev/null 2>&1", q(dataset)),
        Guard::SubvolumeAbsent { path } => {
            format!("! btrfs subvolume show {} >/dev/null 2>&1", q(path))
        }
        Guard::KeyUnavailable { dataset } => format!(
            "[ \"$(zfs get -H -o value keystatus {} 2>/dev/null)\" != available ]",
            q(dataset)
        ),
        Guard::KeyAvailable { dataset } => format!(
            "[ \"$(zfs get -H -o value keystatus {} 2>/dev/null)\" = available ]",
            q(dataset)
        ),
        Guard::PoolImportable { pool } => format!(
            "zpool import 2>/dev/null | grep -qE {}",
            q(&format!("^[[:space:]]*pool: {pool}$"))
        ),
        Guard::LuksKeyMissing { device, key_file } => format!(
            "! cryptsetup open --test-passphrase --key-file {} {} 2>/dev/null",
            q(key_file),
            q(device)
        ),
        Guard::MdAssemblable { array, members } => {
            let mut test = format!("[ ! -e {} ]", q(array));
            for m in members {
                test.push_str(&format!(
                    " && [ \"$(blkid -p -s TYPE -o value {})\" = linux_raid_member ]",
                    q(m)
                ));
            }
            test
        }
    }
}

fn stdin_note(s: &StdinSource) -> String {
    match s {
        StdinSource::Text { text } => format!("input: {:?}", text),
        StdinSource::File { path } => format!("input: contents of {path}"),
        StdinSource::Prompt { name, confirm } => format!(
            "input: password for {name}, asked at run time{}",
            if *confirm { " (twice)" } else { "" }
        ),
    }
}

/// Readable text: operations grouped per device (numbers give the run order), then a summary
/// of what will be destroyed and created.
pub fn human(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Plan for mode `{}`: {} operations ({} can destroy data).",
        plan.mode,
        plan.operations.len(),
        plan.operations.iter().filter(|o| o.destructive).count()
    );
    let mut devices: Vec<&str> = Vec::new();
    for o in &plan.operations {
        if !devices.contains(&o.device.as_str()) {
            devices.push(&o.device);
        }
    }
    for dev in devices {
        let _ = writeln!(out, "\n{dev}");
        for (i, o) in plan
            .operations
            .iter()
            .enumerate()
            .filter(|(_, o)| o.device == dev)
        {
            let mark = if o.destructive { "!" } else { " " };
            let _ = writeln!(out, "  {:>3}.{mark} {}", i + 1, o.description);
            let _ = writeln!(out, "        $ {}", shell_join(&o.argv));
            if let Some(g) = &o.guard {
                let _ = writeln!(out, "        ({})", describe_guard(g));
            }
            if let Some(s) = &o.stdin {
                let _ = writeln!(out, "        ({})", stdin_note(s));
            }
        }
    }
    out.push_str(&summary(plan));
    out
}

/// The closing summary: disks wiped, and what format creates.
pub fn summary(plan: &Plan) -> String {
    let mut wiped: BTreeSet<&str> = BTreeSet::new();
    let mut tables = 0;
    let mut parts = 0;
    let mut fss = 0;
    let mut other = 0;
    let mut mounts = 0;
    for o in &plan.operations {
        let cmd = o.argv.first().map(String::as_str).unwrap_or("");
        match cmd {
            "wipefs" => {
                wiped.insert(&o.device);
            }
            "sgdisk" if o.argv.iter().any(|a| a == "--clear") => tables += 1,
            "sgdisk" if o.argv.iter().any(|a| a.starts_with("--new=")) => parts += 1,
            "parted" if o.argv.iter().any(|a| a == "mklabel") => tables += 1,
            "parted" if o.argv.iter().any(|a| a == "mkpart") => parts += 1,
            c if c.starts_with("mkfs") || c == "mkswap" => fss += 1,
            "mount" if !o.argv.iter().any(|a| a.starts_with("/run/nixpave/")) => mounts += 1,
            "swapon" => mounts += 1,
            _ if o.destructive => other += 1,
            _ => {}
        }
    }
    let mut s = String::from("\nSummary:\n");
    if wiped.is_empty() {
        s.push_str("  destroys: nothing unconditionally; every destructive step (marked !) runs only if its check finds the target empty\n");
    } else {
        let _ = writeln!(
            s,
            "  DESTROYS ALL DATA on {} disk(s): {}",
            wiped.len(),
            wiped.iter().copied().collect::<Vec<_>>().join(", ")
        );
    }
    if tables + parts + fss + other > 0 {
        let _ = writeln!(
            s,
            "  creates (where missing): {tables} partition table(s), {parts} partition(s), {fss} filesystem(s)/swap, {other} other device(s)/volume(s)"
        );
    }
    if mounts > 0 {
        let _ = writeln!(s, "  mounts/enables: {mounts}");
    }
    s
}

fn var_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("password_{cleaned}")
}

/// An equivalent standalone bash script.
pub fn script(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "#!/usr/bin/env bash");
    let _ = writeln!(
        out,
        "# nixpave disk plan, mode `{}` ({} operations)",
        plan.mode,
        plan.operations.len()
    );
    let _ = writeln!(out, "set -euo pipefail");
    for (i, o) in plan.operations.iter().enumerate() {
        let _ = writeln!(out, "\n# {}. {}", i + 1, o.description);
        let body = script_command(o);
        match &o.guard {
            Some(g) => {
                let _ = writeln!(out, "if {}; then", guard_test(g));
                for line in body.lines() {
                    let _ = writeln!(out, "  {line}");
                }
                let _ = writeln!(out, "fi");
            }
            None => {
                let _ = writeln!(out, "{body}");
            }
        }
    }
    out
}

fn script_command(o: &Operation) -> String {
    let cmd = shell_join(&o.argv);
    match &o.stdin {
        None => cmd,
        Some(StdinSource::Text { text }) => {
            format!("printf '%s' {} | {cmd}", shell_quote(text))
        }
        Some(StdinSource::File { path }) => format!("{cmd} < {}", shell_quote(path)),
        Some(StdinSource::Prompt { name, confirm }) => {
            let v = var_name(name);
            let mut s = format!(
                "if [ -z \"${{{v}+x}}\" ]; then\n  read -rs -p {} {v}; echo >&2\n",
                shell_quote(&format!("Password for {name}: "))
            );
            if *confirm {
                let _ = write!(
                    s,
                    "  read -rs -p {} {v}_again; echo >&2\n  [ \"${v}\" = \"${v}_again\" ] || {{ echo 'passwords differ' >&2; exit 1; }}\n",
                    shell_quote(&format!("Password for {name} (again): "))
                );
            }
            let _ = write!(s, "fi\nprintf '%s' \"${v}\" | {cmd}");
            s
        }
    }
}
