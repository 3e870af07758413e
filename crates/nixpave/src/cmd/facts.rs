//! `nixpave facts`: what hosts are (OS, arch, RAM, kexec, disks, nix), one round trip each.

use std::fmt::Write as _;
use std::process::ExitCode;

use nixpave_remote::parallel::{self, Slot};
use nixpave_remote::{cancel, gather_facts, BlockDevice, Facts, SshTransport};

use super::exec::{usage_error, HostArgs};
use crate::exit;
use nixpave_disk::exec::safety::human_size;

/// Arguments of `nixpave facts`.
#[derive(Debug, clap::Args)]
pub struct FactsArgs {
    /// Hosts: `user@host[:port]`, inventory names, `all`, a lab name (`lab`) or `LAB:HOST`.
    #[arg(required = true, value_name = "TARGETS")]
    pub targets: Vec<String>,
    /// Print JSON (one object for one host; an array of {host, facts | error} for several).
    #[arg(long)]
    pub json: bool,
    /// Hosts asked at the same time (0 = all).
    #[arg(long, short = 'p', default_value_t = 16)]
    pub parallel: usize,
    #[command(flatten)]
    pub hosts: HostArgs,
}

/// Runs `nixpave facts`.
pub fn run(args: FactsArgs) -> miette::Result<ExitCode> {
    let hosts = match args.hosts.resolve(&args.targets) {
        Ok(hosts) => hosts,
        Err(e) => return Ok(usage_error(&e)),
    };
    if let Err(e) = cancel::install_signal_handlers() {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
    let base = args.hosts.ssh_options();
    let results = parallel::run(
        &hosts,
        args.parallel,
        || false,
        |host| {
            let ssh = SshTransport::connect(&host.target, host.ssh_options(&base))
                .map_err(|e| (e.is_refusal(), e.to_string()))?;
            gather_facts(&ssh).map_err(|e| (false, e.to_string()))
        },
    );
    let results: Vec<Result<Facts, (bool, String)>> = results
        .into_iter()
        .map(|r| match r {
            Slot::Done(r) => r,
            Slot::Panicked(m) => Err((false, format!("internal error: {m}"))),
            Slot::NotStarted => Err((false, "interrupted".into())),
        })
        .collect();
    if args.json {
        // Always an array, one `{host, facts}` or `{host, error}` per host, however many were asked for.
        let value: serde_json::Value = hosts
            .iter()
            .zip(&results)
            .map(|(h, r)| match r {
                Ok(f) => serde_json::json!({ "host": h.name, "facts": f }),
                Err((_, e)) => serde_json::json!({ "host": h.name, "error": e }),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        for (host, result) in hosts.iter().zip(&results) {
            match result {
                Ok(facts) => print!("{}", render(&host.name, facts)),
                Err((_, e)) => eprintln!("{:?}", miette::miette!("{e}")),
            }
        }
    }
    if cancel::is_cancelled() {
        return Ok(exit::code(exit::INTERRUPTED));
    }
    Ok(exit::code(exit::aggregate(results.iter().map(
        |r| match r {
            Ok(_) => exit::OK,
            Err((true, _)) => exit::REFUSED,
            Err((false, _)) => exit::FAILED,
        },
    ))))
}

/// Human-readable facts of one host.
fn render(name: &str, f: &Facts) -> String {
    let mut s = String::new();
    let os = if f.os.pretty_name.is_empty() {
        f.os.id.as_str()
    } else {
        f.os.pretty_name.as_str()
    };
    let _ = writeln!(s, "{name}");
    let mut kind = Vec::new();
    if f.os.is_nixos_installer {
        kind.push("NixOS installer");
    } else if f.os.is_nixos {
        kind.push("NixOS");
    }
    if f.lab_host {
        kind.push("nixpave lab host");
    }
    let kind = if kind.is_empty() {
        String::new()
    } else {
        format!(" ({})", kind.join(", "))
    };
    let _ = writeln!(s, "  os        {os}{kind}");
    let _ = writeln!(s, "  kernel    {} {}", f.kernel, f.arch);
    let _ = writeln!(s, "  memory    {}", human_size(f.memory_bytes));
    let boot = if f.kexec.uefi { "UEFI" } else { "BIOS" };
    let sb = match f.kexec.secure_boot {
        Some(true) => ", Secure Boot on",
        Some(false) => ", Secure Boot off",
        None => "",
    };
    let _ = writeln!(s, "  boot      {boot}{sb}");
    if f.kexec.possible {
        let _ = writeln!(s, "  kexec     possible");
    } else {
        let _ = writeln!(
            s,
            "  kexec     not possible: {}",
            f.kexec.blockers.join("; ")
        );
    }
    let _ = writeln!(
        s,
        "  nix       {}{}",
        f.nix_version.as_deref().unwrap_or("not installed"),
        f.nix_path
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "  systemd   {}", if f.systemd { "yes" } else { "no" });
    let root = if f.is_root {
        "yes".to_string()
    } else if f.escalation_tools.is_empty() {
        "no (and no sudo/doas/run0)".to_string()
    } else {
        format!("via {}", f.escalation_tools.join("/"))
    };
    let _ = writeln!(s, "  user      {} (root: {root})", f.user);
    let _ = writeln!(s, "  disks");
    for disk in &f.disks {
        render_device(&mut s, disk, 2);
    }
    s
}

fn render_device(s: &mut String, d: &BlockDevice, depth: usize) {
    let mut details = Vec::new();
    details.push(d.kind.clone());
    if let Some(m) = &d.model {
        details.push(m.clone());
    }
    if let Some(serial) = &d.serial {
        details.push(format!("serial {serial}"));
    }
    if let Some(fs) = &d.fstype {
        details.push(fs.clone());
    }
    if !d.mountpoints.is_empty() {
        details.push(format!("mounted on {}", d.mountpoints.join(", ")));
    }
    let _ = writeln!(
        s,
        "{:indent$}{:<14} {:>10}  {}",
        "",
        d.path,
        human_size(d.size),
        details.join(", "),
        indent = depth * 2
    );
    for child in &d.children {
        render_device(s, child, depth + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sizes_and_kexec_blockers() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(2 << 30), "2.0 GiB");
        let mut facts = Facts::default();
        facts.kexec.blockers = vec!["the host is a container (lxc)".into()];
        facts.disks = vec![BlockDevice {
            path: "/dev/vda".into(),
            kind: "disk".into(),
            size: 1 << 30,
            ..BlockDevice::default()
        }];
        let text = render("web", &facts);
        assert!(
            text.contains("kexec     not possible: the host is a container (lxc)"),
            "{text}"
        );
        assert!(text.contains("/dev/vda"), "{text}");
    }
}
