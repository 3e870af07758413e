//! One lab VM: start (images, disks, keys, qemu, wait for ssh), talk to it over ssh, stop it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::images::{cache_dir, Images};
use super::qemu::{Accel, QemuLayout};
use super::registry::{self, Inventory};
use super::{keys, VmError};
use nixpave_remote::{
    last_lines, HostKeyPolicy, SshOptions, SshTransport, Target, Transport, UploadSpec,
};

/// What VM to start. Defaults: 2 blank disks of 4 GiB, 2 GiB of memory, 1 CPU, 300 s to reach ssh.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Name: the state directory, the guest's hostname and the inventory entry.
    pub name: String,
    /// Number of blank virtio data disks (/dev/vdb, /dev/vdc, …).
    pub disks: u32,
    /// Size of each data disk in bytes (sparse qcow2: costs nothing until written).
    pub disk_size: u64,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs (under TCG more than one rarely helps).
    pub cpus: u32,
    /// How long to wait for ssh after starting qemu.
    pub boot_timeout: Duration,
    /// Accelerator; `None` detects it ([`Accel::detect`]).
    pub accel: Option<Accel>,
    /// State directory root; `None` uses [`registry::state_root`].
    pub state_root: Option<PathBuf>,
    /// Image cache; `None` uses [`cache_dir`].
    pub cache: Option<PathBuf>,
    /// Boot with UEFI firmware (OVMF from Debian's `ovmf`) instead of SeaBIOS.
    pub uefi: bool,
}

impl VmSpec {
    /// A spec with the defaults and this name.
    pub fn new(name: impl Into<String>) -> Self {
        VmSpec {
            name: name.into(),
            disks: 2,
            disk_size: 4 << 30,
            memory_mib: 2048,
            cpus: 1,
            boot_timeout: Duration::from_secs(300),
            accel: None,
            state_root: None,
            cache: None,
            uefi: false,
        }
    }

    /// Boots with UEFI firmware (OVMF) instead of SeaBIOS; the guest image boots either way.
    pub fn uefi(mut self, uefi: bool) -> Self {
        self.uefi = uefi;
        self
    }

    /// Sets the number of blank data disks.
    pub fn disks(mut self, n: u32) -> Self {
        self.disks = n;
        self
    }

    /// Sets the size of each data disk in bytes.
    pub fn disk_size(mut self, bytes: u64) -> Self {
        self.disk_size = bytes;
        self
    }

    /// Sets the guest memory in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Sets the bound on the wait for ssh.
    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = timeout;
        self
    }
}

/// The result of a command run in the VM over ssh.
#[derive(Debug, Clone)]
pub struct SshOutput {
    /// Exit status (255 is ssh's own failure); `None` when killed by a signal.
    pub status: Option<i32>,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

impl SshOutput {
    /// Whether the command exited 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// Standard output as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// A running lab VM. Dropping it stops qemu and removes its state directory, unless [`Vm::detach`] was called.
#[derive(Debug)]
pub struct Vm {
    name: String,
    dir: PathBuf,
    port: u16,
    images: Option<Images>,
    /// Whether Drop stops the VM and removes its directory.
    owned: bool,
}

impl Vm {
    /// Starts a VM and waits (bounded by `spec.boot_timeout`) until root can log in over ssh.
    pub fn start(spec: &VmSpec) -> Result<Vm, VmError> {
        Self::start_with_progress(spec, &mut |_| {})
    }

    /// Like [`Vm::start`], reporting progress lines (image build, qemu start, seconds waited) to `progress`.
    pub fn start_with_progress(
        spec: &VmSpec,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vm, VmError> {
        registry::check_name(&spec.name)?;
        let root = spec.state_root.clone().unwrap_or_else(registry::state_root);
        let dir = root.join(&spec.name);
        if dir.exists() && !registry::is_vm_dir(&dir) {
            // Someone else's directory (a network-namespace lab of that name): never touch it.
            return Err(VmError::Exists {
                name: spec.name.clone(),
                dir,
            });
        }
        if dir.exists() {
            let stale = Vm::adopt(&dir, &spec.name);
            if stale.is_running() {
                std::mem::forget(stale);
                return Err(VmError::Exists {
                    name: spec.name.clone(),
                    dir,
                });
            }
            drop(stale); // not running: clear the leftovers of an earlier VM of that name
        }
        let cache = spec.cache.clone().unwrap_or_else(cache_dir);
        let started = Instant::now();
        let images = Images::ensure(&cache, progress)?;
        progress(&format!(
            "images ready in {:.1}s ({})",
            started.elapsed().as_secs_f64(),
            images.dir.display()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| VmError::io("creating", &dir, e))?;
        let mut vm = Vm {
            name: spec.name.clone(),
            dir: dir.clone(),
            port: 0,
            images: Some(images.clone()),
            owned: true,
        };
        let marker = dir.join(registry::MARKER);
        let record = serde_json::json!({
            "name": spec.name, "disks": spec.disks, "disk_size": spec.disk_size,
            "memory_mib": spec.memory_mib, "cpus": spec.cpus, "images": images.dir, "uefi": spec.uefi,
        });
        std::fs::write(&marker, format!("{record:#}\n"))
            .map_err(|e| VmError::io("writing", &marker, e))?;
        let layout = vm.prepare_files(spec, &images)?;
        vm.port = vm.launch(layout, spec.accel.unwrap_or_else(Accel::detect))?;
        progress(&format!(
            "qemu started, ssh forwarded to 127.0.0.1:{}",
            vm.port
        ));
        let inventory = Inventory::for_vm(&vm.name, vm.port, &vm.key(), &vm.known_hosts());
        registry::write_inventory(&dir, &inventory)?;
        let boot = Instant::now();
        if let Err(e) = vm.wait_for_ssh_reporting(spec.boot_timeout, "booting", progress) {
            // Keep the console log for the error message's reader; the VM itself is stopped.
            vm.kill();
            vm.owned = false;
            return Err(e);
        }
        progress(&format!(
            "ssh answers after {:.1}s of boot",
            boot.elapsed().as_secs_f64()
        ));
        Ok(vm)
    }

    /// A handle on an existing VM's state directory (for `lab vm down/console/status`); dropping it changes nothing.
    pub fn open(name: &str) -> Result<Vm, VmError> {
        registry::check_name(name)?;
        let dir = registry::state_root().join(name);
        if !registry::is_vm_dir(&dir) {
            return Err(VmError::NotFound {
                name: name.into(),
                dir: registry::state_root(),
            });
        }
        let mut vm = Vm::adopt(&dir, name);
        vm.owned = false;
        Ok(vm)
    }

    fn adopt(dir: &Path, name: &str) -> Vm {
        let port = registry::read_inventory(dir)
            .ok()
            .and_then(|i| i.hosts.first().map(|h| h.port))
            .unwrap_or(0);
        Vm {
            name: name.into(),
            dir: dir.to_path_buf(),
            port,
            images: None,
            owned: true,
        }
    }

    fn prepare_files(&self, spec: &VmSpec, images: &Images) -> Result<QemuLayout, VmError> {
        let d = &self.dir;
        keys::ensure_keypair(&self.key(), &format!("nixpave-lab-{}", self.name))?;
        keys::ensure_keypair(&d.join("ssh_host_ed25519_key"), &self.name)?;
        let public = d.join("id_ed25519.pub");
        std::fs::copy(&public, d.join("authorized_keys"))
            .map_err(|e| VmError::io("copying", &public, e))?;
        let root_disk = d.join("root.qcow2");
        let guest = images.guest_disk();
        run_tool(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&guest)
                .arg(&root_disk),
        )?;
        let mut data_disks = Vec::new();
        for i in 1..=spec.disks {
            let disk = d.join(format!("disk{i}.qcow2"));
            run_tool(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&disk)
                    .arg(spec.disk_size.to_string()),
            )?;
            data_disks.push(disk);
        }
        let uefi = if spec.uefi {
            let vars = d.join("OVMF_VARS.fd");
            std::fs::copy(super::qemu::OVMF_VARS, &vars).map_err(|e| {
                VmError::io(
                    "copying (install Debian's ovmf package)",
                    Path::new(super::qemu::OVMF_VARS),
                    e,
                )
            })?;
            if !Path::new(super::qemu::OVMF_CODE).is_file() {
                return Err(VmError::io(
                    "reading (install Debian's ovmf package)",
                    Path::new(super::qemu::OVMF_CODE),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
            Some(super::qemu::UefiFirmware {
                code: super::qemu::OVMF_CODE.into(),
                vars,
            })
        } else {
            None
        };
        Ok(QemuLayout {
            name: self.name.clone(),
            root_disk,
            data_disks,
            memory_mib: spec.memory_mib,
            cpus: spec.cpus.max(1),
            ssh_port: 0,
            console_log: self.console_log(),
            monitor_socket: d.join("monitor.sock"),
            pid_file: d.join("qemu.pid"),
            authorized_keys: d.join("authorized_keys"),
            host_key: d.join("ssh_host_ed25519_key"),
            accel: Accel::Tcg,
            uefi,
        })
    }

    /// Runs qemu on a free loopback port, retrying with another port when one was taken in the meantime.
    fn launch(&self, mut layout: QemuLayout, accel: Accel) -> Result<u16, VmError> {
        layout.accel = accel;
        let host_public = self.dir.join("ssh_host_ed25519_key.pub");
        let host_public = std::fs::read_to_string(&host_public)
            .map_err(|e| VmError::io("reading", &host_public, e))?;
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            layout.ssh_port = port;
            std::fs::write(
                self.known_hosts(),
                keys::known_hosts_line(port, &host_public),
            )
            .map_err(|e| VmError::io("writing", self.known_hosts(), e))?;
            let out = Command::new("qemu-system-x86_64")
                .args(layout.argv())
                .stdin(Stdio::null())
                .output()
                .map_err(|source| VmError::Spawn {
                    program: "qemu-system-x86_64".into(),
                    source,
                })?;
            if out.status.success() {
                return Ok(port);
            }
            last_error = last_lines(&String::from_utf8_lossy(&out.stderr), 5);
            if !last_error.contains("forward") {
                break;
            }
        }
        Err(VmError::QemuStart {
            name: self.name.clone(),
            stderr_tail: last_error,
        })
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its state directory (disks, keys, console log, inventory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The loopback port forwarded to the guest's sshd.
    pub fn ssh_port(&self) -> u16 {
        self.port
    }

    /// The private key that logs in as root.
    pub fn key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// The known_hosts file holding exactly this VM's host key (it survives kexec into the test installer).
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The inventory file of this VM (same shape as the lab's).
    pub fn inventory(&self) -> PathBuf {
        self.dir.join("inventory.json")
    }

    /// The serial console log.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The images this VM was started from (known for VMs started by this process).
    pub fn images(&self) -> Option<&Images> {
        self.images.as_ref()
    }

    /// ssh options (no destination): key, strict host-key checking against [`Vm::known_hosts`], port, timeouts.
    pub fn ssh_options(&self) -> Vec<String> {
        let opt = |o: String| ["-o".to_string(), o];
        let mut args = vec!["-i".to_string(), self.key().display().to_string()];
        for o in [
            "IdentitiesOnly=yes".to_string(),
            "BatchMode=yes".to_string(),
            format!("UserKnownHostsFile={}", self.known_hosts().display()),
            "StrictHostKeyChecking=yes".to_string(),
            "ConnectTimeout=10".to_string(),
            "ServerAliveInterval=5".to_string(),
            "ServerAliveCountMax=6".to_string(),
            "LogLevel=ERROR".to_string(),
        ] {
            args.extend(opt(o));
        }
        args.extend(["-p".to_string(), self.port.to_string()]);
        args
    }

    /// The full `ssh` arguments up to and including the destination `root@127.0.0.1`.
    pub fn ssh_args(&self) -> Vec<String> {
        let mut args = self.ssh_options();
        args.push("root@127.0.0.1".into());
        args
    }

    /// Where to log in: `root@127.0.0.1` on the forwarded port.
    pub fn target(&self) -> Target {
        Target {
            user: Some("root".into()),
            host: "127.0.0.1".into(),
            port: Some(self.port),
        }
    }

    /// The connection settings for [`Vm::target`]: this VM's key, strict host-key checking against
    /// [`Vm::known_hosts`], and keepalives that notice a VM gone (kexec, reboot) within ~30 s.
    pub fn connection(&self) -> SshOptions {
        SshOptions {
            name: Some(self.name.clone()),
            identity_file: Some(self.key()),
            known_hosts: Some(self.known_hosts()),
            host_key_policy: HostKeyPolicy::Strict,
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_count_max: 6,
            ..SshOptions::default()
        }
    }

    /// Opens the one ssh transport of the workspace to the VM as root.
    pub fn connect(&self) -> Result<SshTransport, VmError> {
        self.connect_with(self.connection())
    }

    fn connect_with(&self, options: SshOptions) -> Result<SshTransport, VmError> {
        SshTransport::connect(&self.target(), options).map_err(|source| VmError::Ssh {
            name: self.name.clone(),
            source: Box::new(source),
        })
    }

    /// Runs a shell command line as root in the VM, feeding `stdin` when given.
    pub fn ssh(&self, command: &str, stdin: Option<&[u8]>) -> Result<SshOutput, VmError> {
        let ssh = self.connect()?;
        let argv = ["sh".to_string(), "-c".to_string(), command.to_string()];
        let out = ssh.run(&argv, stdin).map_err(|source| VmError::Ssh {
            name: self.name.clone(),
            source: Box::new(source),
        })?;
        Ok(SshOutput {
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// Runs a command and fails (with its stderr) unless it exits 0; returns its stdout.
    pub fn ssh_ok(&self, command: &str) -> Result<String, VmError> {
        let out = self.ssh(command, None)?;
        if out.success() {
            return Ok(out.stdout_text());
        }
        Err(VmError::Command {
            command: format!("ssh {} {command}", self.name),
            status: format!("{:?}", out.status),
            stderr_tail: last_lines(&String::from_utf8_lossy(&out.stderr), 10),
        })
    }

    /// Copies a local file to `remote` in the VM (written to a temp file beside it, then renamed,
    /// with `mode`).
    pub fn upload(&self, local: &Path, remote: &str, mode: u32) -> Result<(), VmError> {
        let contents = std::fs::read(local).map_err(|e| VmError::io("reading", local, e))?;
        let spec = UploadSpec {
            dest: PathBuf::from(remote),
            mode,
            owner: None,
        };
        self.connect()?
            .upload(&contents, &spec)
            .map_err(|source| VmError::Ssh {
                name: self.name.clone(),
                source: Box::new(source),
            })
    }

    /// Whether qemu still runs.
    pub fn is_running(&self) -> bool {
        self.pid().is_some_and(process_is_qemu)
    }

    /// qemu's process id, when known.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("qemu.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Whether root can log in right now (one login attempt, at most ~5 s).
    pub fn ssh_answers(&self) -> bool {
        let options = SshOptions {
            connect_timeout: Duration::from_secs(5),
            ..self.connection()
        };
        self.connect_with(options).is_ok()
    }

    /// Waits (bounded) until root can log in over ssh.
    pub fn wait_for_ssh(&self, timeout: Duration) -> Result<(), VmError> {
        self.wait_for_ssh_reporting(timeout, "waiting for ssh", &mut |_| {})
    }

    fn wait_for_ssh_reporting(
        &self,
        timeout: Duration,
        phase: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), VmError> {
        let start = Instant::now();
        let mut reported = 0;
        loop {
            if !self.is_running() {
                return Err(self.died(phase));
            }
            if self.ssh_answers() {
                return Ok(());
            }
            let waited = start.elapsed().as_secs();
            if waited >= timeout.as_secs() {
                return Err(self.timeout("ssh login", timeout));
            }
            if waited >= reported + 10 {
                reported = waited;
                progress(&format!("{phase}: waiting for ssh ({waited}s)"));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Waits (bounded) until ssh stops answering (e.g. after starting a kexec or a reboot).
    pub fn wait_for_ssh_gone(&self, timeout: Duration) -> Result<(), VmError> {
        let start = Instant::now();
        while self.ssh_answers() {
            if start.elapsed() >= timeout {
                return Err(self.timeout("ssh going away", timeout));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }

    /// The last `lines` lines of the serial console.
    pub fn console_tail(&self, lines: usize) -> String {
        let bytes = std::fs::read(self.console_log()).unwrap_or_default();
        last_lines(&String::from_utf8_lossy(&bytes), lines)
    }

    fn died(&self, phase: &str) -> VmError {
        VmError::Died {
            name: self.name.clone(),
            phase: phase.into(),
            console: self.console_log(),
            console_tail: self.console_tail(20),
        }
    }

    fn timeout(&self, what: &str, timeout: Duration) -> VmError {
        VmError::Timeout {
            name: self.name.clone(),
            what: what.into(),
            seconds: timeout.as_secs(),
            console: self.console_log(),
            console_tail: self.console_tail(20),
        }
    }

    /// Leaves the VM running after this handle is dropped (for `nixpave lab vm up`).
    pub fn detach(mut self) {
        self.owned = false;
    }

    /// Stops qemu (monitor `quit`, then SIGKILL after 5 s) and removes the state directory. Idempotent.
    pub fn destroy(mut self) -> Result<(), VmError> {
        self.kill();
        self.owned = false;
        if !registry::is_vm_dir(&self.dir) {
            return Ok(());
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(VmError::io("removing", &self.dir, e)),
        }
    }

    /// Stops qemu, leaving the state directory.
    fn kill(&self) {
        let Some(pid) = self.pid().filter(|p| process_is_qemu(*p)) else {
            return;
        };
        let monitor = self.dir.join("monitor.sock");
        if let Ok(mut sock) = std::os::unix::net::UnixStream::connect(&monitor) {
            let _ = sock.set_write_timeout(Some(Duration::from_secs(2)));
            let _ = sock.write_all(b"quit\n");
        }
        let start = Instant::now();
        while process_is_qemu(pid) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if process_is_qemu(pid) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.owned {
            self.kill();
            if registry::is_vm_dir(&self.dir) {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}

/// Whether `pid` is a live qemu process (guards against a recycled pid).
fn process_is_qemu(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // A zombie (state Z) has exited already.
    let zombie = status
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    !zombie
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
            .unwrap_or(false)
}

/// A loopback TCP port that was free a moment ago.
fn free_port() -> Result<u16, VmError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| VmError::io("binding a free port on", "127.0.0.1", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| VmError::io("reading the address of", "127.0.0.1", e))
}

fn run_tool(cmd: &mut Command) -> Result<(), VmError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|source| VmError::Spawn {
        program: program.clone(),
        source,
    })?;
    if !out.status.success() {
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return Err(VmError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr_tail: last_lines(&String::from_utf8_lossy(&out.stderr), 5),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_options_keep_strict_host_key_checking_and_the_port() {
        let vm = Vm {
            name: "t".into(),
            dir: PathBuf::from("/v/t"),
            port: 40001,
            images: None,
            owned: false,
        };
        let args = vm.ssh_args().join(" ");
        assert!(args.starts_with("-i /v/t/id_ed25519 -o IdentitiesOnly=yes"));
        assert!(
            args.contains("-o UserKnownHostsFile=/v/t/known_hosts -o StrictHostKeyChecking=yes")
        );
        assert!(args.ends_with("-p 40001 root@127.0.0.1"));
        assert_eq!(vm.target().to_string(), "root@127.0.0.1:40001");
        let c = vm.connection();
        assert_eq!(c.host_key_policy, HostKeyPolicy::Strict);
        assert_eq!(
            c.known_hosts.as_deref(),
            Some(Path::new("/v/t/known_hosts"))
        );
        assert_eq!(
            c.identity_file.as_deref(),
            Some(Path::new("/v/t/id_ed25519"))
        );
    }

    #[test]
    fn our_own_process_is_not_mistaken_for_qemu() {
        assert!(!process_is_qemu(std::process::id()));
        assert!(!process_is_qemu(u32::MAX));
    }
}
