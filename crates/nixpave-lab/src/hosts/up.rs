//! `lab up`: bridge, then every host in parallel, then the inventory.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nixpave_remote::shell_quote;

use super::error::LabError;
use super::nixos::{self, Flavour, Layout};
use super::state::{HostState, LabState, LoopDisk, SharedState};
use super::{files, sys, LabSpec};

/// How long a host's sshd may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Creates the lab described by `spec`; on failure removes what was created and returns why.
pub fn up(spec: &LabSpec) -> Result<LabState, LabError> {
    spec.validate()?;
    sys::require_root()?;
    sys::require_tools()?;
    let dir = spec.lab_dir();
    if LabState::load(&dir)?.is_some() {
        return Err(LabError::Exists {
            name: spec.name.clone(),
            dir,
        });
    }
    create_private_dir(&dir)?;
    let state = LabState {
        name: spec.name.clone(),
        identity_file: dir.join("id_ed25519"),
        known_hosts: dir.join("known_hosts"),
        dir: dir.clone(),
        ..LabState::default()
    };
    state.save()?;
    let shared = SharedState::new(state);
    match build(spec, &shared) {
        Ok(state) => Ok(state),
        Err(err) => {
            tracing::warn!(lab = %spec.name, error = %err, "lab up failed; removing what was created");
            if let Err(cleanup) = super::down(&dir) {
                tracing::warn!(lab = %spec.name, error = %cleanup, "cleanup after failed lab up");
            }
            Err(err)
        }
    }
}

fn build(spec: &LabSpec, shared: &SharedState) -> Result<LabState, LabError> {
    let dir = spec.lab_dir();
    // sshd's privilege-separation directory, and mount points for the hosts' private
    // directories: /nix does not exist before nix first ran on this machine.
    for dir in ["/run/sshd", "/nix", "/home"] {
        if !Path::new(dir).exists() {
            tracing::info!(dir, "creating a directory the lab needs");
            std::fs::create_dir_all(dir).map_err(LabError::io("creating", dir))?;
        }
    }
    let key = dir.join("id_ed25519");
    new_key(
        "creating the lab ssh key",
        &format!("nixpave-lab-{}", spec.name),
        &key,
    )?;
    let public_key = read(&dir.join("id_ed25519.pub"))?;
    let subnet = create_bridge(shared)?;
    let hosts: Vec<HostState> = (1..=spec.hosts)
        .map(|i| HostState {
            name: format!("host{i}"),
            netns: format!("nplab{subnet}-host{i}"),
            veth: format!("nplab{subnet}v{i}"),
            address: format!("10.77.{subnet}.{}", 10 + i),
            port: 22,
            root: dir.join("hosts").join(format!("host{i}")),
            sshd_pid: None,
            disks: Vec::new(),
            flavour: spec.flavour,
        })
        .collect();
    // NixOS-shaped hosts: where each of this machine's tools goes, worked out once for all hosts.
    let layout = match spec.flavour {
        Flavour::Nixos => Some(nixos::layout(&nixos::root_shell(
            &read(Path::new("/etc/passwd")).unwrap_or_default(),
        ))?),
        Flavour::Debian => None,
    };
    let layout = layout.as_ref();
    // Recorded before anything of theirs exists, so a failed `up` cleans them up.
    shared.update(|s| s.hosts = hosts.clone())?;
    let results: Vec<Result<(), LabError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(index, host)| {
                let public_key = &public_key;
                scope.spawn(move || bring_up_host(spec, shared, index, host, public_key, layout))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(LabError::Spec("a host setup thread panicked".into())))
            })
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>, LabError>>()?;
    let state = shared.snapshot();
    let mut known = String::new();
    for host in &state.hosts {
        let key = read(&host.root.join("etc-ssh/ssh_host_ed25519_key.pub"))?;
        known.push_str(&files::known_hosts_line(host, &key));
    }
    write(&state.known_hosts, &known, 0o644)?;
    let inventory = serde_json::to_string_pretty(&files::inventory_json(&state))
        .map_err(|e| LabError::Spec(e.to_string()))?;
    write(&dir.join("inventory.json"), &inventory, 0o644)?;
    write(&dir.join("ssh_config"), &files::ssh_config(&state), 0o644)?;
    Ok(state)
}

/// Picks a free `10.77.N.0/24` and creates the lab's bridge on it, under a machine-wide lock
/// so concurrent `lab up`s (parallel test binaries) never pick the same one.
fn create_bridge(shared: &SharedState) -> Result<u8, LabError> {
    let lock_path = Path::new("/run/nixpave-lab.lock");
    let lock = File::create(lock_path).map_err(LabError::io("creating", lock_path))?;
    lock.lock().map_err(LabError::io("locking", lock_path))?;
    let addresses = sys::run("listing addresses", "ip", &["-o", "-4", "addr", "show"])?;
    let links = sys::run("listing links", "ip", &["-o", "link", "show"])?;
    let namespaces = sys::run("listing namespaces", "ip", &["netns", "list"])?;
    // Free means: no address in it, and no bridge or namespace of an earlier lab using it.
    let subnet = (10u8..=250)
        .find(|n| {
            !addresses.contains(&format!(" 10.77.{n}."))
                && !namespaces
                    .lines()
                    .any(|l| l.starts_with(&format!("nplab{n}-")))
                && !links.contains(&format!(" nplab{n}br:"))
                && !links.contains(&format!(" nplab{n}br@"))
        })
        .ok_or(LabError::NoSubnet)?;
    let bridge = format!("nplab{subnet}br");
    shared.update(|s| {
        s.subnet = subnet;
        s.bridge = Some(bridge.clone());
    })?;
    sys::run(
        "creating the lab bridge",
        "ip",
        &["link", "add", &bridge, "type", "bridge"],
    )?;
    sys::run(
        "addressing the lab bridge",
        "ip",
        &[
            "addr",
            "add",
            &format!("10.77.{subnet}.1/24"),
            "dev",
            &bridge,
        ],
    )?;
    sys::run(
        "starting the lab bridge",
        "ip",
        &["link", "set", &bridge, "up"],
    )?;
    drop(lock);
    Ok(subnet)
}

fn bring_up_host(
    spec: &LabSpec,
    shared: &SharedState,
    index: usize,
    host: &HostState,
    public_key: &str,
    layout: Option<&Layout>,
) -> Result<(), LabError> {
    let root = &host.root;
    for sub in [
        "nix",
        "etc-ssh/authorized_keys",
        "etc-nix",
        "etc",
        "root",
        "home",
        "tmp",
    ] {
        create_private_dir(&root.join(sub))?;
    }
    set_mode(&root.join("home"), 0o755)?;
    set_mode(&root.join("tmp"), 0o1777)?;
    set_mode(&root.join("nix"), 0o755)?;
    set_mode(&root.join("etc-ssh"), 0o755)?;
    set_mode(&root.join("etc-nix"), 0o755)?;
    new_key(
        &format!("creating the host key of {}", host.name),
        &host.name,
        &root.join("etc-ssh/ssh_host_ed25519_key"),
    )?;
    let mut sshd_config = files::sshd_config(host);
    let mut path_first: Vec<&Path> = spec.nix_bin.iter().map(|b| b.as_path()).collect();
    if let Some(sshd) = &spec.sshd {
        sshd_config = files::sshd_config_with_helpers(&sshd_config, &sshd_helpers(sshd));
        path_first.extend(sshd.parent());
    }
    if !path_first.is_empty() {
        sshd_config = files::sshd_config_with_path_first(&sshd_config, &path_first);
    }
    write(&root.join("etc-ssh/sshd_config"), &sshd_config, 0o644)?;
    // Tells `nixpave facts` (and install preflight) that this "machine" shares our kernel.
    write(
        &root.join("etc-ssh/nixpave-lab-host"),
        &format!("{}\n", spec.name),
        0o644,
    )?;
    write(&root.join("etc-nix/nix.conf"), files::nix_conf(), 0o644)?;
    write_accounts(spec, root, public_key)?;
    if let Some(layout) = layout {
        nixos::prepare(root, layout)?;
    }
    create_netns(shared, host)?;
    let disks = create_disks(spec, root)?;
    shared.update(|s| s.hosts[index].disks = disks)?;
    let pid = start_sshd(spec, host, layout)?;
    shared.update(|s| s.hosts[index].sshd_pid = Some(pid))?;
    Ok(())
}

/// The helper programs next to a chosen sshd, with the sshd_config options that name them (an sshd
/// other than this machine's would look for them where its own build put them).
fn sshd_helpers(sshd: &Path) -> Vec<(&'static str, std::path::PathBuf)> {
    let Some(dir) = sshd.parent() else {
        return Vec::new();
    };
    [
        ("SshdSessionPath", "sshd-session"),
        ("SshdAuthPath", "sshd-auth"),
    ]
    .into_iter()
    .map(|(option, name)| (option, dir.join(name)))
    .filter(|(_, path)| path.is_file())
    .collect()
}

/// The host's own passwd, group, shadow and sudoers.d: this machine's, plus the lab users,
/// who log in with the lab key (authorized keys live in the private /etc/ssh).
fn write_accounts(spec: &LabSpec, root: &Path, public_key: &str) -> Result<(), LabError> {
    let keys = root.join("etc-ssh/authorized_keys");
    set_mode(&keys, 0o755)?;
    write(&keys.join("root"), public_key, 0o600)?;
    let mut hashes = Vec::new();
    for user in &spec.users {
        write(&keys.join(&user.name), public_key, 0o644)?;
        let home = root.join("home").join(&user.name);
        create_private_dir(&home)?;
        hashes.push(match &user.sudo_password {
            // The password goes to openssl on stdin, never on a command line.
            Some(password) => Some(
                sys::run_with_stdin(
                    "hashing a lab user's password",
                    "openssl",
                    &["passwd", "-6", "-stdin"],
                    Some(password.as_bytes()),
                )?
                .trim()
                .to_string(),
            ),
            None => None,
        });
    }
    let mut lines = files::user_lines(&spec.users, &hashes);
    if spec.flavour == Flavour::Nixos {
        // NixOS's sudo keeps the caller's PATH (Debian's sudoers resets it to FHS directories).
        lines.sudoers.insert_str(0, "Defaults !secure_path\n");
    }
    let etc = root.join("etc");
    for (file, extra, mode) in [
        ("passwd", &lines.passwd, 0o644),
        ("group", &lines.group, 0o644),
        ("shadow", &lines.shadow, 0o640),
    ] {
        let mut text = read(&Path::new("/etc").join(file)).unwrap_or_default();
        text.push_str(extra);
        write(&etc.join(file), &text, mode)?;
    }
    let sudoers = etc.join("sudoers.d");
    create_private_dir(&sudoers)?;
    set_mode(&sudoers, 0o755)?;
    write(&sudoers.join("nixpave-lab"), &lines.sudoers, 0o440)?;
    for (i, user) in spec.users.iter().enumerate() {
        let uid = (2001 + i).to_string();
        let ids = format!("{uid}:{uid}");
        sys::run(
            "giving a lab user its home",
            "chown",
            &[&ids, &path_str(&root.join("home").join(&user.name))],
        )?;
    }
    Ok(())
}

fn create_netns(shared: &SharedState, host: &HostState) -> Result<(), LabError> {
    let bridge = shared.snapshot().bridge.unwrap_or_default();
    let what = format!("creating the network of {}", host.name);
    let ns = host.netns.as_str();
    sys::run(&what, "ip", &["netns", "add", ns])?;
    sys::run(
        &what,
        "ip",
        &[
            "link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    sys::run(
        &what,
        "ip",
        &["link", "set", &host.veth, "master", &bridge, "up"],
    )?;
    sys::run(
        &what,
        "ip",
        &[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", host.address),
            "dev",
            "eth0",
        ],
    )?;
    sys::run(&what, "ip", &["-n", ns, "link", "set", "eth0", "up"])?;
    sys::run(&what, "ip", &["-n", ns, "link", "set", "lo", "up"])?;
    Ok(())
}

fn create_disks(spec: &LabSpec, root: &Path) -> Result<Vec<LoopDisk>, LabError> {
    let mut disks = Vec::new();
    for n in 1..=spec.disks {
        let file = root.join(format!("disk{n}.img"));
        let image = File::create(&file).map_err(LabError::io("creating", &file))?;
        image
            .set_len(spec.disk_size)
            .map_err(LabError::io("sizing", &file))?;
        let device = sys::run(
            "attaching a loop disk",
            "losetup",
            &["-f", "--show", &path_str(&file)],
        )?;
        disks.push(LoopDisk {
            device: device.trim().to_string(),
            file,
            size: spec.disk_size,
        });
    }
    Ok(disks)
}

/// Starts sshd in the host's namespaces, detached from us (its own session), and waits until
/// it accepts connections. Returns its pid.
fn start_sshd(spec: &LabSpec, host: &HostState, layout: Option<&Layout>) -> Result<i32, LabError> {
    let root = path_str(&host.root);
    let q = |sub: &str| shell_quote(&format!("{root}/{sub}"));
    // `ip netns exec`, `unshare` and `sh` all exec, so the pid sshd writes is the launcher's.
    // Slave propagation: the host's later unmounts reach the lab host too (a private copy would
    // keep filesystems busy that the host has unmounted), while the lab's binds stay inside.
    // NixOS-shaped hosts hide /usr/bin and /usr/sbin last; this machine's sshd then runs by its hidden path.
    let (nixos_lines, sshd) = match layout {
        Some(layout) => (
            nixos::mount_lines(&root, layout),
            nixos::hidden_tool("sshd"),
        ),
        None => (String::new(), sys::tool("sshd")),
    };
    let sshd = spec.sshd.clone().unwrap_or(sshd);
    let script = format!(
        "set -e\n\
         mount --bind {nix} /nix\n\
         mount --bind {etc_ssh} /etc/ssh\n\
         mount --bind {root_home} /root\n\
         mount --bind {home} /home\n\
         mount --bind {tmp} /tmp\n\
         for f in passwd group shadow; do mount --bind {etc}/$f /etc/$f; done\n\
         if [ -d /etc/sudoers.d ]; then mount --bind {etc}/sudoers.d /etc/sudoers.d; fi\n\
         {nix_path}NIX_CONF_DIR={etc_nix} nix-store --init\n\
         {nixos_lines}\
         exec {sshd} -D -e -f /etc/ssh/sshd_config\n",
        nix = q("nix"),
        etc_ssh = q("etc-ssh"),
        root_home = q("root"),
        home = q("home"),
        etc = q("etc"),
        tmp = q("tmp"),
        etc_nix = q("etc-nix"),
        sshd = shell_quote(&path_str(&sshd)),
        // The store is created by the nix the host runs.
        nix_path = spec.nix_bin.as_ref().map_or(String::new(), |bin| {
            format!("PATH={}:\"$PATH\" ", shell_quote(&path_str(bin)))
        }),
    );
    let log = host.sshd_log();
    let out = File::create(&log).map_err(LabError::io("creating", &log))?;
    let err = out.try_clone().map_err(LabError::io("opening", &log))?;
    let status = std::process::Command::new(sys::tool("setsid"))
        .arg("-f")
        .arg(sys::tool("ip"))
        .args(["netns", "exec", &host.netns])
        .arg(sys::tool("unshare"))
        .args(["--mount", "--propagation", "slave", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(LabError::io("starting sshd for", &host.root))?;
    if !status.success() {
        return Err(not_ready(spec, host, 0));
    }
    let started = Instant::now();
    loop {
        let pid = std::fs::read_to_string(host.pid_file())
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            if super::port_open(&host.address, host.port, Duration::from_millis(200)) {
                return Ok(pid);
            }
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(not_ready(spec, host, READY_TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn not_ready(spec: &LabSpec, host: &HostState, seconds: u64) -> LabError {
    LabError::HostNotReady {
        lab: spec.name.clone(),
        host: host.name.clone(),
        seconds,
        log_tail: nixpave_remote::last_lines(
            &std::fs::read_to_string(host.sshd_log()).unwrap_or_default(),
            8,
        ),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(dir).map_err(LabError::io("creating", dir))?;
    set_mode(dir, 0o700)
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), LabError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(LabError::io("setting the mode of", path))
}

pub(crate) fn write(path: &Path, contents: &str, mode: u32) -> Result<(), LabError> {
    std::fs::write(path, contents).map_err(LabError::io("writing", path))?;
    set_mode(path, mode)
}

fn read(path: &Path) -> Result<String, LabError> {
    std::fs::read_to_string(path).map_err(LabError::io("reading", path))
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A new ed25519 key pair without a passphrase at `file` (and `file.pub`).
fn new_key(what: &str, comment: &str, file: &Path) -> Result<(), LabError> {
    let file = path_str(file);
    let args = ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", &file];
    sys::run(what, "ssh-keygen", &args).map(drop)
}
