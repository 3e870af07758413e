//! `lab down`: removes everything a lab created. Idempotent, and works on half-built labs.

use std::path::Path;
use std::time::Duration;

use super::error::LabError;
use super::state::{HostState, LabState};
use super::sys;

/// Removes the lab whose state directory is `dir`: processes in its namespaces, loop disks,
/// namespaces, veths, the bridge, then the directory. Returns `false` when there was no lab.
pub fn down(dir: &Path) -> Result<bool, LabError> {
    let Some(state) = LabState::load(dir)? else {
        return Ok(false);
    };
    let netns_list = sys::run("listing namespaces", "ip", &["netns", "list"]).unwrap_or_default();
    // Hosts are independent: remove them all at once.
    let mut failures: Vec<LabError> = std::thread::scope(|scope| {
        let handles: Vec<_> = state
            .hosts
            .iter()
            .map(|host| scope.spawn(|| remove_host(host, &netns_list)))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(result) => result.err(),
                Err(_) => Some(LabError::Spec("a host teardown thread panicked".into())),
            })
            .collect()
    });
    if let Some(bridge) = &state.bridge {
        if link_exists(bridge) {
            if let Err(e) = sys::run("removing the lab bridge", "ip", &["link", "del", bridge]) {
                failures.push(e);
            }
        }
    }
    if let Some(first) = failures.into_iter().next() {
        // Keep the state so that a second `down` can finish the job.
        return Err(first);
    }
    std::fs::remove_dir_all(dir).map_err(LabError::io("removing", dir))?;
    Ok(true)
}

fn remove_host(host: &HostState, netns_list: &str) -> Result<(), LabError> {
    let has_netns = netns_list
        .lines()
        .any(|l| l.split_whitespace().next() == Some(host.netns.as_str()));
    // Everything running in the host: sshd, its sessions, commands left behind by them.
    let mut pids: Vec<i32> = Vec::new();
    if has_netns {
        let listed = sys::run(
            "listing host processes",
            "ip",
            &["netns", "pids", &host.netns],
        )
        .unwrap_or_default();
        pids.extend(
            listed
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    if let Some(pid) = host.sshd_pid.filter(|p| is_our_sshd(*p, host)) {
        pids.push(pid);
    }
    sys::terminate(&pids, Duration::from_secs(3));
    for disk in &host.disks {
        let backing = Path::new("/sys/block")
            .join(disk.device.trim_start_matches("/dev/"))
            .join("loop/backing_file");
        let ours = std::fs::read_to_string(&backing)
            .is_ok_and(|f| Path::new(f.trim()) == disk.file.as_path());
        if ours {
            sys::run("detaching a loop disk", "losetup", &["-d", &disk.device])?;
        }
    }
    if has_netns {
        sys::run(
            "removing a host namespace",
            "ip",
            &["netns", "del", &host.netns],
        )?;
    }
    // Deleting the namespace destroys the veth pair asynchronously: it may vanish under us.
    if link_exists(&host.veth) {
        if let Err(e) = sys::run("removing a host veth", "ip", &["link", "del", &host.veth]) {
            if link_exists(&host.veth) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Guards against killing an unrelated process that reused the pid.
fn is_our_sshd(pid: i32, host: &HostState) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("sshd"))
        .unwrap_or(false)
        && std::fs::read_to_string(host.pid_file()).is_ok_and(|p| p.trim() == pid.to_string())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}
