//! `nixpave lab vm …`: qemu VMs for install tests (start, stop, console, status, ssh, images).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use nixpave_lab::vm::{self, Images, Vm, VmError, VmSpec};

use crate::exit;

/// `nixpave lab vm` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {
    /// Start a VM (a small Debian booted from its own disk) with blank disks; waits until ssh answers.
    Up {
        /// VM name (state in $NIXPAVE_LAB_VM_DIR/NAME, default /var/lib/nixpave/lab-vms/NAME).
        name: String,
        /// Number of blank virtio data disks (/dev/vdb, /dev/vdc, …).
        #[arg(long, default_value_t = 2)]
        disks: u32,
        /// Size of each data disk (sparse).
        #[arg(long, default_value = "4G", value_parser = nixpave_lab::size::parse_size)]
        disk_size: u64,
        /// Guest memory.
        #[arg(long, default_value = "2G", value_parser = nixpave_lab::size::parse_size)]
        memory: u64,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Seconds to wait for ssh before giving up.
        #[arg(long, default_value_t = 300)]
        boot_timeout: u64,
        /// Boot with UEFI firmware (OVMF, Debian's `ovmf`) instead of SeaBIOS.
        #[arg(long)]
        uefi: bool,
        /// Print the VM's inventory entry as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Stop VMs and remove their state (idempotent: a VM that does not exist is fine).
    Down {
        /// VM names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show a VM's serial console log (follow it with --follow).
    Console {
        /// VM name.
        name: String,
        /// Lines from the end to show first.
        #[arg(long, short = 'n', default_value_t = 40)]
        lines: usize,
        /// Keep printing what the console writes (Ctrl-C to stop).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// List the VMs with their state, ssh port and pid.
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Open ssh to a VM as root, or run a command there.
    Ssh {
        /// VM name.
        name: String,
        /// Command to run (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Build (or find in the cache) the guest disk and the test installer tarball, and print their paths.
    Images {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `nixpave lab vm` subcommand.
pub fn run(command: VmCommand) -> miette::Result<ExitCode> {
    match command {
        VmCommand::Up {
            name,
            disks,
            disk_size,
            memory,
            cpus,
            boot_timeout,
            uefi,
            json,
        } => {
            let mut spec = VmSpec::new(&name)
                .disks(disks)
                .disk_size(disk_size)
                .memory_mib(memory >> 20)
                .uefi(uefi)
                .boot_timeout(Duration::from_secs(boot_timeout));
            spec.cpus = cpus;
            let started = std::time::Instant::now();
            let machine = match Vm::start_with_progress(&spec, &mut |line| {
                if !crate::ui::quiet() {
                    eprintln!("[{name}] {line}")
                }
            }) {
                Ok(m) => m,
                Err(e @ (VmError::BadName(_) | VmError::Exists { .. })) => return usage(e),
                Err(e) => return Err(report(e)),
            };
            eprintln!(
                "[{name}] up in {:.1}s: ssh {}",
                started.elapsed().as_secs_f64(),
                machine.ssh_args().join(" ")
            );
            if json {
                let inventory =
                    std::fs::read_to_string(machine.inventory()).map_err(miette::Report::msg)?;
                print!("{inventory}");
            } else {
                println!("inventory: {}", machine.inventory().display());
                println!("ssh config: {}", machine.dir().join("ssh_config").display());
                println!("console:   {}", machine.console_log().display());
            }
            machine.detach();
            Ok(exit::code(exit::OK))
        }
        VmCommand::Down { names } => {
            for name in names {
                match Vm::open(&name) {
                    Ok(machine) => {
                        machine.destroy().map_err(report)?;
                        eprintln!("[{name}] stopped and removed");
                    }
                    Err(VmError::NotFound { .. }) => {
                        eprintln!("[{name}] no such VM (nothing to do)")
                    }
                    Err(e @ VmError::BadName(_)) => return usage(e),
                    Err(e) => return Err(report(e)),
                }
            }
            Ok(exit::code(exit::OK))
        }
        VmCommand::Console {
            name,
            lines,
            follow,
        } => console(&name, lines, follow),
        VmCommand::Status { json } => {
            let all = vm::list();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&all).map_err(miette::Report::msg)?
                );
            } else if all.is_empty() {
                println!("no VMs (state directory {})", vm::state_root().display());
            } else {
                let mut table = super::table::new(&["NAME", "STATE", "PORT", "PID", "DIR"]);
                for s in all {
                    let state = if s.running { "running" } else { "stopped" };
                    let pid = s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
                    table.add_row(vec![
                        s.name,
                        state.to_string(),
                        s.ssh_port.to_string(),
                        pid,
                        s.dir.display().to_string(),
                    ]);
                }
                println!("{}", super::table::render(table, &[2, 3]));
            }
            Ok(exit::code(exit::OK))
        }
        VmCommand::Ssh { name, command } => {
            let machine = Vm::open(&name).map_err(report)?;
            let status = std::process::Command::new("ssh")
                .args(machine.ssh_args())
                .args(if command.is_empty() {
                    vec![]
                } else {
                    vec!["--".to_string()]
                })
                .args(command)
                .status()
                .map_err(|e| miette::miette!("cannot run ssh: {e}"))?;
            Ok(exit::code(
                status
                    .code()
                    .and_then(|c| u8::try_from(c).ok())
                    .unwrap_or(exit::FAILED),
            ))
        }
        VmCommand::Images { json } => {
            let images = Images::ensure(&vm::cache_dir(), &mut |line| {
                if !crate::ui::quiet() {
                    eprintln!("{line}")
                }
            })
            .map_err(report)?;
            if json {
                let value = serde_json::json!({
                    "dir": images.dir,
                    "guest_disk": images.guest_disk(),
                    "installer_tarball": images.installer_tarball(),
                    "kernel": images.kernel(),
                });
                println!("{value:#}");
            } else {
                println!("guest disk:        {}", images.guest_disk().display());
                println!(
                    "installer tarball: {}",
                    images.installer_tarball().display()
                );
                println!("kernel:            {}", images.kernel().display());
            }
            Ok(exit::code(exit::OK))
        }
    }
}

/// Renders a lab error for the terminal (its message already says what, where, why and what next).
fn report(error: VmError) -> miette::Report {
    miette::Report::msg(error)
}

fn usage(error: VmError) -> miette::Result<ExitCode> {
    eprintln!("{:?}", report(error));
    Ok(exit::code(exit::USAGE))
}

/// Prints the end of the console log, then (with `follow`) whatever the guest writes next.
fn console(name: &str, lines: usize, follow: bool) -> miette::Result<ExitCode> {
    let machine = Vm::open(name).map_err(report)?;
    let path = machine.console_log();
    let mut out = std::io::stdout();
    let text = machine.console_tail(lines);
    let _ = writeln!(out, "{text}");
    if !follow {
        return Ok(exit::code(exit::OK));
    }
    let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let Ok(bytes) = std::fs::read(&path) else {
            break;
        };
        let len = bytes.len() as u64;
        if len > offset {
            let start = usize::try_from(offset).unwrap_or(bytes.len());
            let _ = out.write_all(&bytes[start..]);
            let _ = out.flush();
            offset = len;
        }
        if !machine.is_running() {
            eprintln!("[{name}] VM is not running");
            break;
        }
    }
    Ok(exit::code(exit::OK))
}
