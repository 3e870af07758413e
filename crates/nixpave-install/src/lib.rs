//! Installing NixOS on a reachable Linux host: kexec, disks, install, reboot, verify.
