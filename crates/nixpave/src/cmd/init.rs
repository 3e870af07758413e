//! `nixpave init`: a ready flake directory for a fresh server, from its facts.
//!
//! Gathers the facts (nixpave-remote's probe) and the hardware facts (the install crate's
//! generator) in two round trips, asks the pure `nixpave_install::init::propose` for the files,
//! and writes them — never over an existing file without `--force`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nixpave_install::init::{self, InitInput, LayoutKind, LUKS_KEY_PATH};
use nixpave_remote::{gather_facts, SshTransport, Transport};

use super::exec::{usage_error, HostArgs};
use crate::exit;

/// Arguments of `nixpave init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The node's name: `nixosConfigurations.NAME`, `deploy.nodes.NAME` and the host name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The machine to look at: `USER@HOST[:PORT]`, an inventory name or `LAB:HOST`.
    #[arg(long, value_name = "USER@HOST")]
    pub target: String,
    /// Directory to write the flake into (default: ./NAME; created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Disk layout: ext4 (GPT with BIOS boot, ESP and an ext4 root on the largest disk), btrfs
    /// (subvolumes for /, /home, /nix), luks-lvm (encrypted LVM) or zfs-mirror (needs two disks of
    /// one size).
    #[arg(long, value_name = "LAYOUT", default_value = "ext4", value_parser = ["ext4", "btrfs", "luks-lvm", "zfs-mirror"])]
    pub layout: String,
    /// Only consider this device (repeatable); loop devices are used only when named here.
    #[arg(long, value_name = "DEVICE")]
    pub disk: Vec<String>,
    /// Overwrite flake.nix, disk.nix and hardware-configuration.nix when they exist.
    #[arg(long)]
    pub force: bool,
    /// Print what was written as JSON ({dir, layout, disks, files, notes, next}).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: HostArgs,
}

/// Runs `nixpave init`.
pub fn run(args: InitArgs) -> miette::Result<ExitCode> {
    let layout: LayoutKind = match args.layout.parse() {
        Ok(l) => l,
        Err(e) => return Ok(usage_error(&e)),
    };
    if let Err(e) = init::check_name(&args.name) {
        return Ok(usage_error(&e.to_string()));
    }
    let host = match args.connect.resolve(std::slice::from_ref(&args.target)) {
        Ok(mut hosts) if hosts.len() == 1 => hosts.remove(0),
        Ok(hosts) => {
            return Ok(usage_error(&format!(
                "--target {} names {} hosts; init looks at one",
                args.target,
                hosts.len()
            )))
        }
        Err(e) => return Ok(usage_error(&e)),
    };
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    const FILES: [&str; 3] = ["flake.nix", "disk.nix", "hardware-configuration.nix"];
    // Refuse before connecting: nothing is gathered for files that would not be written.
    let existing: Vec<String> = FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() && !args.force {
        eprintln!(
            "{:?}",
            miette::miette!(
                help = "pass --force to replace them, or --dir for another directory",
                "refusing to overwrite {}; nothing was written",
                existing.join(", ")
            )
        );
        return Ok(exit::code(exit::REFUSED));
    }

    let options = host.ssh_options(&args.connect.ssh_options());
    let ssh = match SshTransport::connect(&host.target, options) {
        Ok(ssh) => ssh,
        Err(e) => {
            eprintln!("{:?}", miette::miette!("{e}"));
            return Ok(exit::code(super::connect::connect_exit_code(&e)));
        }
    };
    let facts = match gather_facts(&ssh) {
        Ok(f) => f,
        Err(e) => return failed(&format!("gathering facts on {}: {e}", host.name)),
    };
    let hardware = match nixpave_install::hwconfig::gather(&ssh) {
        Ok(h) => h,
        Err(e) => return failed(&format!("gathering hardware facts on {}: {e}", host.name)),
    };
    let mut keys = authorized_keys(&ssh);
    // The key this login used, when it was given as a file (`-i`, or the inventory's/lab's key).
    let identity = args
        .connect
        .connect
        .identity
        .clone()
        .or_else(|| host.identity_file.clone());
    if let Some(public) =
        identity.and_then(|i| std::fs::read_to_string(format!("{}.pub", i.display())).ok())
    {
        let public = public.trim().to_string();
        if !public.is_empty() && !keys.contains(&public) {
            keys.push(public);
        }
    }
    let user = host.target.user.clone().unwrap_or_else(|| "root".into());
    let input = InitInput {
        name: &args.name,
        hostname: &host.target.host,
        ssh_user: &user,
        ssh_port: host.target.port,
        facts: &facts,
        hardware: &hardware,
        layout: Some(layout),
        only_disks: &args.disk,
        authorized_keys: &keys,
    };
    let proposal = match init::propose(&input) {
        Ok(p) => p,
        Err(e @ init::InitError::Layout(_)) => return failed(&e.to_string()),
        Err(e) => return Ok(usage_error(&e.to_string())),
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return failed(&format!("creating {}: {e}", dir.display()));
    }
    let mut written = Vec::new();
    for (name, text) in &proposal.files {
        let path = dir.join(name);
        if let Err(e) = write_file(&path, text) {
            return failed(&format!(
                "writing {}: {e} (written before it: {})",
                path.display(),
                if written.is_empty() {
                    "nothing".into()
                } else {
                    written.join(", ")
                }
            ));
        }
        written.push(path.display().to_string());
    }
    let next = next_commands(&args.name, &dir, layout, host.target.port, &host.target);
    if args.json {
        let value = serde_json::json!({
            "host": args.name,
            "dir": dir.display().to_string(),
            "layout": proposal.layout,
            "disks": proposal.disks,
            "files": written,
            "notes": proposal.notes,
            "next": next,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else if !crate::ui::quiet() {
        println!(
            "wrote {} ({} on {})",
            written.join(", "),
            proposal.layout.as_str(),
            proposal.disks.join(" + ")
        );
        for n in &proposal.notes {
            println!("note: {n}");
        }
        println!("next:");
        for c in &next {
            println!("  {c}");
        }
    }
    Ok(exit::code(exit::OK))
}

fn failed(message: &str) -> miette::Result<ExitCode> {
    eprintln!("{:?}", miette::miette!("{message}"));
    Ok(exit::code(exit::FAILED))
}

/// The login's authorized keys on the host (public, not secret): the new system lets them in as
/// root. A host without the file gives none.
fn authorized_keys(t: &dyn Transport) -> Vec<String> {
    let argv = [
        "sh".to_string(),
        "-c".into(),
        "cat \"$HOME/.ssh/authorized_keys\" 2>/dev/null; true".into(),
    ];
    match t.run(&argv, None) {
        Ok(out) => out
            .stdout_str()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
        Err(e) => {
            tracing::warn!("reading authorized_keys: {e}");
            Vec::new()
        }
    }
}

/// The commands to run next (pure).
fn next_commands(
    name: &str,
    dir: &Path,
    layout: LayoutKind,
    port: Option<u16>,
    target: &nixpave_remote::Target,
) -> Vec<String> {
    let mut install = format!("nixpave install {name} --kexec nixos-kexec-installer.tar.gz");
    if port.is_some_and(|p| p != 22) {
        install.push_str(&format!(" --target {target}"));
    }
    if layout == LayoutKind::LuksLvm {
        install.push_str(&format!(
            " --disk-encryption-keys {LUKS_KEY_PATH} ./disk.key"
        ));
    }
    vec![
        format!(
            "cd {} && git init -q && git add .   # flakes see tracked files only",
            dir.display()
        ),
        "nixpave disk plan disk.nix".into(),
        install,
        format!("nixpave deploy .#{name}"),
    ]
}

/// Writes `text` to `path` through a temporary file beside it, so a failure leaves the old file whole.
fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("nix.nixpave-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
