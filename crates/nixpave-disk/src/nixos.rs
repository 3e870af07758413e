//! The NixOS configuration fragment disko's module generates from a layout: `fileSystems`,
//! `swapDevices` and `boot` (initrd LUKS devices and kernel modules, swraid, GRUB devices,
//! resume device). Returned merged (as the module system would), as JSON.

use serde_json::{json, Map, Value};

use crate::model::validate::device_order;
use crate::model::*;

/// Accumulates the fragment.
#[derive(Default)]
struct Fragment {
    file_systems: Map<String, Value>,
    swap_devices: Vec<Value>,
    luks: Map<String, Value>,
    kernel_modules: Vec<String>,
    swraid: bool,
    grub_devices: Vec<String>,
    resume_device: Option<String>,
}

impl Fragment {
    fn fs(&mut self, mountpoint: &str, device: &str, fs_type: &str, options: Vec<String>) {
        self.file_systems.insert(
            mountpoint.to_string(),
            json!({ "device": device, "fsType": fs_type, "options": options }),
        );
    }

    fn content(&mut self, c: &Content) {
        match c {
            Content::Gpt(g) => {
                for p in &g.partitions {
                    if let Some(pc) = &p.content {
                        self.content(pc);
                    }
                }
                if g.partitions
                    .iter()
                    .any(|p| p.type_code.eq_ignore_ascii_case("EF02"))
                {
                    self.grub_devices.push(g.device.clone());
                }
            }
            Content::Table(t) => {
                for p in &t.partitions {
                    if let Some(pc) = &p.content {
                        self.content(pc);
                    }
                }
            }
            Content::Filesystem(f) => {
                if let Some(mp) = &f.mountpoint {
                    self.fs(mp, &f.device, &f.format, f.mount_options.clone());
                }
            }
            Content::Btrfs(b) => {
                if let Some(mp) = &b.mountpoint {
                    self.fs(mp, &b.device, "btrfs", b.mount_options.clone());
                    self.swap_files(&b.swap, mp);
                }
                for s in b.subvolumes.values() {
                    if let Some(mp) = &s.mountpoint {
                        let mut opts = s.mount_options.clone();
                        opts.push(format!("subvol={}", s.name));
                        self.fs(mp, &b.device, "btrfs", opts);
                        self.swap_files(&s.swap, mp);
                    }
                }
            }
            Content::Luks(l) => {
                if l.initrd_unlock {
                    let mut entry = Map::new();
                    entry.insert("device".into(), Value::String(l.device.clone()));
                    for (k, v) in &l.settings {
                        entry.insert(k.clone(), v.clone());
                    }
                    self.luks.insert(l.name.clone(), Value::Object(entry));
                }
                if let Some(lc) = &l.content {
                    self.content(lc);
                }
            }
            Content::Swap(s) => {
                self.swap_devices.push(json!({
                    "device": s.device,
                    "discardPolicy": s.discard_policy,
                    "options": s.mount_options,
                    "priority": s.priority,
                    "randomEncryption": {
                        "enable": s.random_encryption,
                        "allowDiscards": s.discard_policy.is_some(),
                    },
                }));
                if s.resume_device {
                    self.resume_device = Some(s.device.clone());
                }
            }
            Content::LvmPv(_) | Content::Mdraid(_) | Content::Zfs(_) | Content::Bcachefs(_) => {}
        }
    }

    fn swap_files(
        &mut self,
        files: &std::collections::BTreeMap<String, SwapFile>,
        mountpoint: &str,
    ) {
        for f in files.values() {
            self.swap_devices.push(json!({
                "device": format!("{}/{}", mountpoint.trim_end_matches('/'), f.path.trim_start_matches('/')),
                "priority": f.priority,
                "options": f.options,
            }));
        }
    }

    fn zfs_fs(
        &mut self,
        name: &str,
        options: &std::collections::BTreeMap<String, String>,
        mountpoint: &Option<String>,
        mount_options: &[String],
    ) {
        let Some(mp) = mountpoint else { return };
        if options.get("mountpoint").map(String::as_str) == Some("none")
            || options.get("canmount").map(String::as_str) == Some("off")
        {
            return;
        }
        let mut opts = mount_options.to_vec();
        if options.get("mountpoint").map(String::as_str) != Some("legacy") {
            opts.push("zfsutil".into());
        }
        self.fs(mp, name, "zfs", opts);
    }

    fn into_json(self) -> Value {
        let mut out = Map::new();
        let mut boot = Map::new();
        let mut initrd = Map::new();
        if !self.luks.is_empty() {
            initrd.insert("luks".into(), json!({ "devices": self.luks }));
        }
        if !self.kernel_modules.is_empty() {
            initrd.insert("kernelModules".into(), json!(self.kernel_modules));
        }
        if !initrd.is_empty() {
            boot.insert("initrd".into(), Value::Object(initrd));
        }
        if self.swraid {
            boot.insert("swraid".into(), json!({ "enable": true }));
        }
        if !self.grub_devices.is_empty() {
            boot.insert(
                "loader".into(),
                json!({ "grub": { "devices": self.grub_devices } }),
            );
        }
        if let Some(r) = self.resume_device {
            boot.insert("resumeDevice".into(), Value::String(r));
        }
        if !boot.is_empty() {
            out.insert("boot".into(), Value::Object(boot));
        }
        if !self.file_systems.is_empty() {
            out.insert("fileSystems".into(), Value::Object(self.file_systems));
        }
        if !self.swap_devices.is_empty() {
            out.insert("swapDevices".into(), Value::Array(self.swap_devices));
        }
        Value::Object(out)
    }
}

/// Kernel modules disko adds to the initrd for a volume group: `dm-snapshot`, one `dm-<type>`
/// per typed LV, then per LV what its type needs (mirror: dm-mirror; raid: dm-raid + raidN).
pub(crate) fn vg_kernel_modules(vg: &LvmVg) -> Vec<String> {
    let mut out = vec!["dm-snapshot".to_string()];
    for lv in &vg.lvs {
        match lv.lvm_type.as_deref() {
            None | Some("thinlv") => {}
            Some(t) => out.push(format!("dm-{t}")),
        }
    }
    for lv in &vg.lvs {
        match lv.lvm_type.as_deref() {
            Some("mirror") => out.push("dm-mirror".into()),
            Some("thin-pool") => {}
            t => {
                out.push("dm-raid".into());
                match t {
                    Some("raid0") => out.push("raid0".into()),
                    Some("raid1") => out.push("raid1".into()),
                    Some("raid4") | Some("raid5") | Some("raid6") => out.push("raid456".into()),
                    _ => {}
                }
            }
        }
    }
    out
}

/// The NixOS configuration fragment for the layout (merged JSON: `fileSystems`,
/// `swapDevices`, `boot`).
pub fn nixos_config(layout: &Layout) -> Value {
    let mut f = Fragment::default();
    // a valid Layout has an order; fall back to plain order if called on an unvalidated one
    let order = device_order(layout).unwrap_or_default();
    for d in &order {
        match d.kind {
            "disk" => {
                if let Some(c) = layout.disk.get(&d.name).and_then(|x| x.content.as_ref()) {
                    f.content(c);
                }
            }
            "mdadm" => {
                f.swraid = true;
                if let Some(c) = layout.mdadm.get(&d.name).and_then(|x| x.content.as_ref()) {
                    f.content(c);
                }
            }
            "lvm_vg" => {
                if let Some(vg) = layout.lvm_vg.get(&d.name) {
                    f.kernel_modules.extend(vg_kernel_modules(vg));
                    for lv in &vg.lvs {
                        if let Some(c) = &lv.content {
                            f.content(c);
                        }
                    }
                }
            }
            "zpool" => {
                if let Some(p) = layout.zpool.get(&d.name) {
                    f.zfs_fs(&p.name, &p.root_fs_options, &p.mountpoint, &p.mount_options);
                    for ds in p.datasets.values() {
                        match ds {
                            Dataset::Fs(z) => {
                                f.zfs_fs(&z.full_name, &z.options, &z.mountpoint, &z.mount_options)
                            }
                            Dataset::Volume(v) => {
                                if let Some(c) = &v.content {
                                    f.content(c);
                                }
                            }
                        }
                    }
                }
            }
            "nodev" => {
                if let Some(n) = layout.nodev.get(&d.name) {
                    f.fs(
                        &n.mountpoint,
                        &n.device,
                        &n.fs_type,
                        n.mount_options.clone(),
                    );
                }
            }
            "bcachefs_filesystems" => {
                if let Some(b) = layout.bcachefs_filesystems.get(&d.name) {
                    let dev = format!("/dev/disk/by-uuid/{}", b.uuid);
                    let mut add = |mp: &str, opts: &[String]| {
                        f.file_systems.insert(
                            mp.to_string(),
                            json!({ "device": dev, "fsType": "bcachefs", "neededForBoot": true, "options": opts }),
                        );
                    };
                    if let Some(mp) = &b.mountpoint {
                        add(mp, &b.mount_options);
                    }
                    for s in b.subvolumes.values() {
                        if let Some(mp) = &s.mountpoint {
                            add(mp, &s.mount_options);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    f.into_json()
}

/// Renders JSON as a Nix expression (for `nixpave disk nixos-config` without `--json`).
pub fn to_nix(value: &Value) -> String {
    let mut out = String::new();
    write_nix(value, 0, &mut out);
    out.push('\n');
    out
}

fn nix_key(k: &str) -> String {
    let plain = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '\'');
    if plain {
        k.to_string()
    } else {
        nixpave_nix::eval::nix_string(k)
    }
}

fn write_nix(v: &Value, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent + 1);
    let end = "  ".repeat(indent);
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(&nixpave_nix::eval::nix_string(s)),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[ ]");
                return;
            }
            out.push_str("[\n");
            for it in items {
                out.push_str(&pad);
                write_nix(it, indent + 1, out);
                out.push('\n');
            }
            out.push_str(&end);
            out.push(']');
        }
        Value::Object(m) => {
            if m.is_empty() {
                out.push_str("{ }");
                return;
            }
            out.push_str("{\n");
            for (k, val) in m {
                out.push_str(&pad);
                out.push_str(&nix_key(k));
                out.push_str(" = ");
                write_nix(val, indent + 1, out);
                out.push_str(";\n");
            }
            out.push_str(&end);
            out.push('}');
        }
    }
}
