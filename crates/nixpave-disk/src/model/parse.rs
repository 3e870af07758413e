//! JSON (as printed by `nix-instantiate --eval --strict --json`) → [`Layout`], applying disko's
//! defaults. Unknown options are errors with a "did you mean"; `_`-prefixed attributes (disko's
//! internal options, e.g. from a flake) are ignored.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::error::suggest;
use super::label::{default_label, hex_escape_udev, partition_device, uuid_from_name};
use super::*;

type R<T> = Result<T, LayoutError>;

const HOOKS: [&str; 6] = [
    "preCreateHook",
    "postCreateHook",
    "preMountHook",
    "postMountHook",
    "preUnmountHook",
    "postUnmountHook",
];

/// Appends `key` to an attribute path, quoting it when it is not a plain identifier.
pub(crate) fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '\'');
    let k = if plain {
        key.to_string()
    } else {
        format!("\"{}\"", key.replace('"', "\\\""))
    };
    if path.is_empty() {
        k
    } else {
        format!("{path}.{k}")
    }
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an attribute set",
    }
}

/// An attribute set being read, with its path and the options its type knows.
struct Attrs<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Attrs<'a> {
    fn new(v: &'a Value, path: &str) -> R<Self> {
        match v {
            Value::Object(map) => Ok(Attrs {
                path: path.to_string(),
                map,
            }),
            other => Err(LayoutError::WrongType {
                path: path.to_string(),
                expected: "an attribute set".into(),
                found: type_of(other).into(),
            }),
        }
    }

    /// Refuses options outside `known` (plus `type`, hooks and `_`-prefixed internals).
    fn known(&self, known: &[&str], with_hooks: bool) -> R<()> {
        let mut all: Vec<&str> = known.to_vec();
        all.push("type");
        if with_hooks {
            all.extend(HOOKS);
        }
        for key in self.map.keys() {
            if key.starts_with('_') || all.contains(&key.as_str()) {
                continue;
            }
            return Err(LayoutError::UnknownOption {
                path: join(&self.path, key),
                option: key.clone(),
                suggestion: suggest(key, &all).map(str::to_string),
            });
        }
        Ok(())
    }

    fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value, treating `null` as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn opt_str(&self, key: &str) -> R<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(self.wrong(key, "a string", other)),
        }
    }

    fn str_or(&self, key: &str, default: &str) -> R<String> {
        Ok(self.opt_str(key)?.unwrap_or_else(|| default.to_string()))
    }

    fn req_str(&self, key: &str) -> R<String> {
        self.opt_str(key)?
            .ok_or_else(|| LayoutError::Missing { path: self.at(key) })
    }

    fn bool_or(&self, key: &str, default: bool) -> R<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.wrong(key, "a boolean", other)),
        }
    }

    fn opt_int(&self, key: &str) -> R<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64()),
            Some(other) => Err(self.wrong(key, "an integer", other)),
        }
    }

    fn str_list(&self, key: &str) -> R<Vec<String>> {
        self.str_list_or(key, &[])
    }

    fn str_list_or(&self, key: &str, default: &[&str]) -> R<Vec<String>> {
        match self.get(key) {
            None => Ok(default.iter().map(|s| s.to_string()).collect()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(LayoutError::WrongType {
                        path: format!("{}.{i}", self.at(key)),
                        expected: "a string".into(),
                        found: type_of(other).into(),
                    }),
                })
                .collect(),
            Some(other) => Err(self.wrong(key, "a list of strings", other)),
        }
    }

    /// `attrsOf str` (numbers and booleans are accepted and printed as Nix's toString would).
    fn str_map(&self, key: &str) -> R<BTreeMap<String, String>> {
        let Some(v) = self.get(key) else {
            return Ok(BTreeMap::new());
        };
        let a = Attrs::new(v, &self.at(key))?;
        let mut out = BTreeMap::new();
        for (k, v) in a.map {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => if *b { "1" } else { "" }.to_string(),
                other => {
                    return Err(LayoutError::WrongType {
                        path: a.at(k),
                        expected: "a string".into(),
                        found: type_of(other).into(),
                    })
                }
            };
            out.insert(k.clone(), s);
        }
        Ok(out)
    }

    fn attrs(&self, key: &str) -> R<Option<Attrs<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Attrs::new(v, &self.at(key)).map(Some),
        }
    }

    fn wrong(&self, key: &str, expected: &str, found: &Value) -> LayoutError {
        LayoutError::WrongType {
            path: self.at(key),
            expected: expected.into(),
            found: type_of(found).into(),
        }
    }

    fn hooks(&self) -> R<Hooks> {
        Ok(Hooks {
            pre_create: self.str_or("preCreateHook", "")?,
            post_create: self.str_or("postCreateHook", "")?,
            pre_mount: self.str_or("preMountHook", "")?,
            post_mount: self.str_or("postMountHook", "")?,
            pre_unmount: self.str_or("preUnmountHook", "")?,
            post_unmount: self.str_or("postUnmountHook", "")?,
        })
    }

    /// Checks `type` when present (it must be `expected`).
    fn check_type(&self, expected: &str) -> R<()> {
        if let Some(t) = self.opt_str("type")? {
            if t != expected {
                return Err(LayoutError::invalid(
                    self.at("type"),
                    format!("expected \"{expected}\", found \"{t}\""),
                ));
            }
        }
        Ok(())
    }

    fn entries(&self) -> impl Iterator<Item = (&'a String, &'a Value)> {
        self.map.iter().filter(|(k, _)| !k.starts_with('_'))
    }
}

/// The parent of a content node: used for defaults (device, GPT label prefix).
struct Parent<'p> {
    /// disko type of the parent (`disk`, `mdadm`, `luks`, …).
    kind: &'p str,
    /// Name of the parent.
    name: &'p str,
    /// The device the content lives on.
    device: String,
}

/// Which content types a position allows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Allowed {
    /// disk, luks and mdadm content: everything.
    Device,
    /// partitions, LVs, zvols: everything but partition tables.
    Partition,
}

const DEVICE_TYPES: [&str; 10] = [
    "bcachefs",
    "btrfs",
    "filesystem",
    "gpt",
    "luks",
    "lvm_pv",
    "mdraid",
    "swap",
    "table",
    "zfs",
];

/// Parses the whole layout; accepts `{ disko.devices = …; }` or the devices attrset itself.
pub(super) fn layout(value: &Value) -> R<Layout> {
    let devices = match value.get("disko") {
        // like disko's CLI, only `disko.devices` is read; other settings are not ours
        Some(d) => {
            let disko = Attrs::new(d, "disko")?;
            disko.get("devices").ok_or_else(|| LayoutError::Missing {
                path: "disko.devices".into(),
            })?
        }
        None => value,
    };
    let top = Attrs::new(devices, "")?;
    top.known(
        &[
            "disk",
            "mdadm",
            "zpool",
            "lvm_vg",
            "nodev",
            "bcachefs_filesystems",
        ],
        false,
    )
    .map_err(|e| match e {
        // `type` is not a top-level option either
        LayoutError::UnknownOption { .. } => e,
        other => other,
    })?;
    if top.get("type").is_some() {
        return Err(LayoutError::UnknownOption {
            path: "type".into(),
            option: "type".into(),
            suggestion: None,
        });
    }
    let mut layout = Layout::default();
    if let Some(disks) = top.attrs("disk")? {
        for (key, v) in disks.entries() {
            layout
                .disk
                .insert(key.clone(), disk(key, v, &disks.at(key))?);
        }
    }
    if let Some(mds) = top.attrs("mdadm")? {
        for (key, v) in mds.entries() {
            layout
                .mdadm
                .insert(key.clone(), mdadm(key, v, &mds.at(key))?);
        }
    }
    if let Some(pools) = top.attrs("zpool")? {
        for (key, v) in pools.entries() {
            layout
                .zpool
                .insert(key.clone(), zpool(key, v, &pools.at(key))?);
        }
    }
    if let Some(vgs) = top.attrs("lvm_vg")? {
        for (key, v) in vgs.entries() {
            layout
                .lvm_vg
                .insert(key.clone(), lvm_vg(key, v, &vgs.at(key))?);
        }
    }
    if let Some(nodevs) = top.attrs("nodev")? {
        for (key, v) in nodevs.entries() {
            layout
                .nodev
                .insert(key.clone(), nodev(key, v, &nodevs.at(key))?);
        }
    }
    if let Some(fss) = top.attrs("bcachefs_filesystems")? {
        for (key, v) in fss.entries() {
            layout
                .bcachefs_filesystems
                .insert(key.clone(), bcachefs_filesystem(key, v, &fss.at(key))?);
        }
    }
    Ok(layout)
}

fn disk(key: &str, v: &Value, path: &str) -> R<Disk> {
    let a = Attrs::new(v, path)?;
    a.known(
        &[
            "name",
            "device",
            "destroy",
            "imageName",
            "imageSize",
            "content",
        ],
        true,
    )?;
    a.check_type("disk")?;
    let name = a.str_or("name", &key.replace('/', "_"))?;
    let device = a.req_str("device")?;
    let image_size = a.str_or("imageSize", "2G")?;
    if !super::size::is_disko_size(&image_size) || image_size.ends_with('%') {
        return Err(LayoutError::invalid(
            a.at("imageSize"),
            format!("`{image_size}` is not a size like 2G"),
        ));
    }
    let parent = Parent {
        kind: "disk",
        name: &name,
        device: device.clone(),
    };
    let content = content(a.get("content"), &a.at("content"), &parent, Allowed::Device)?;
    Ok(Disk {
        image_name: a.str_or("imageName", &name)?,
        destroy: a.bool_or("destroy", true)?,
        device,
        image_size,
        content,
        hooks: a.hooks()?,
        name,
    })
}

fn content(v: Option<&Value>, path: &str, parent: &Parent, allowed: Allowed) -> R<Option<Content>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let a = Attrs::new(v, path)?;
    let ty = a.req_str("type")?;
    let ok = DEVICE_TYPES.contains(&ty.as_str())
        && !(allowed == Allowed::Partition && (ty == "gpt" || ty == "table"));
    if !ok {
        let mut allowed_types: Vec<&str> = DEVICE_TYPES.to_vec();
        if allowed == Allowed::Partition {
            allowed_types.retain(|t| *t != "gpt" && *t != "table");
        }
        let hint = suggest(&ty, &allowed_types)
            .map(|s| format!(" (did you mean \"{s}\"?)"))
            .unwrap_or_default();
        return Err(LayoutError::invalid(
            a.at("type"),
            format!(
                "content type \"{ty}\" is not allowed here{hint}; expected one of: {}",
                allowed_types.join(", ")
            ),
        ));
    }
    let c = match ty.as_str() {
        "gpt" => Content::Gpt(gpt(&a, parent)?),
        "table" => Content::Table(table(&a, parent)?),
        "filesystem" => Content::Filesystem(filesystem(&a, parent)?),
        "btrfs" => Content::Btrfs(btrfs(&a, parent)?),
        "luks" => Content::Luks(Box::new(luks(&a, parent)?)),
        "lvm_pv" => {
            a.known(&["device", "vg"], true)?;
            Content::LvmPv(LvmPv {
                device: a.str_or("device", &parent.device)?,
                vg: a.req_str("vg")?,
                hooks: a.hooks()?,
            })
        }
        "mdraid" => {
            a.known(&["device", "name"], true)?;
            Content::Mdraid(Mdraid {
                device: a.str_or("device", &parent.device)?,
                name: a.req_str("name")?,
                hooks: a.hooks()?,
            })
        }
        "zfs" => {
            a.known(&["device", "pool"], true)?;
            Content::Zfs(Zfs {
                device: a.str_or("device", &parent.device)?,
                pool: a.req_str("pool")?,
                hooks: a.hooks()?,
            })
        }
        "swap" => Content::Swap(swap(&a, parent)?),
        "bcachefs" => {
            a.known(&["device", "filesystem", "extraFormatArgs", "label"], true)?;
            Content::Bcachefs(Bcachefs {
                device: a.str_or("device", &parent.device)?,
                filesystem: a.req_str("filesystem")?,
                extra_format_args: a.str_list("extraFormatArgs")?,
                label: a.str_or("label", "")?,
                hooks: a.hooks()?,
            })
        }
        _ => unreachable!("checked against DEVICE_TYPES"),
    };
    Ok(Some(c))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit())
}

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| is_hex(p, n))
}

fn gpt(a: &Attrs, parent: &Parent) -> R<Gpt> {
    a.known(&["device", "efiGptPartitionFirst", "partitions"], true)?;
    let device = a.str_or("device", &parent.device)?;
    let mut parts = Vec::new();
    if let Some(pa) = a.attrs("partitions")? {
        for (key, v) in pa.entries() {
            parts.push(gpt_partition(key, v, &pa.at(key), parent)?);
        }
    }
    // BTreeMap order is Nix's attribute order; the sort is stable, so ties stay by name.
    parts.sort_by_key(|p| p.priority);
    for (i, p) in parts.iter_mut().enumerate() {
        p.index = i + 1;
        if p.device.is_empty() {
            // md partitions have no by-partlabel link; disko uses the md-name by-id link
            p.device = format!(
                "/dev/disk/by-id/md-name-any:{}-part{}",
                parent.name, p.index
            );
        }
    }
    // contents need the final device path, so they are parsed after numbering
    let mut out = Vec::new();
    if let Some(pa) = a.attrs("partitions")? {
        for mut p in parts {
            let pv = Attrs::new(pa.map.get(&p.key).unwrap_or(&Value::Null), &pa.at(&p.key))?;
            let child = Parent {
                kind: "partition",
                name: &p.name,
                device: p.device.clone(),
            };
            p.content = content(
                pv.get("content"),
                &pv.at("content"),
                &child,
                Allowed::Partition,
            )?;
            out.push(p);
        }
    }
    Ok(Gpt {
        device,
        efi_gpt_partition_first: a.bool_or("efiGptPartitionFirst", true)?,
        partitions: out,
        hooks: a.hooks()?,
    })
}

fn gpt_partition(key: &str, v: &Value, path: &str, parent: &Parent) -> R<GptPartition> {
    let a = Attrs::new(v, path)?;
    a.known(
        &[
            "name",
            "type",
            "attributes",
            "uuid",
            "label",
            "device",
            "size",
            "start",
            "end",
            "alignment",
            "priority",
            "hybrid",
            "content",
        ],
        false,
    )?;
    let name = a.str_or("name", key)?;
    let content_type = a
        .get("content")
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let default_type = if content_type.as_deref() == Some("swap") {
        "8200"
    } else {
        "8300"
    };
    let type_code = a.str_or("type", default_type)?;
    if !(is_hex(&type_code, 4) || is_guid(&type_code)) {
        return Err(LayoutError::invalid(
            a.at("type"),
            format!("`{type_code}` is neither a 4-digit sgdisk type code (e.g. EF00) nor a GUID"),
        ));
    }
    if is_hex(&type_code, 4) && !super::validate::known_gpt_code(&type_code) {
        return Err(LayoutError::invalid(
            a.at("type"),
            format!("unknown GPT type code `{type_code}` (`sgdisk -L` lists the known codes)"),
        ));
    }
    let size = a.str_or("size", "0")?;
    if !super::size::is_disko_size(&size) {
        return Err(LayoutError::invalid(
            a.at("size"),
            format!("`{size}` is not a size: use \"100%\" or a number with an optional K, M, G, T or P suffix (e.g. \"512M\")"),
        ));
    }
    let start = a.str_or("start", "0")?;
    let end = match a.opt_str("end")? {
        Some(e) => e,
        None if size == "100%" => "-0".to_string(),
        None => format!("+{size}"),
    };
    for (k, val) in [("start", &start), ("end", &end)] {
        super::size::parse_position(val).map_err(|m| LayoutError::invalid(a.at(k), m))?;
    }
    let default_alignment = if start.ends_with('s') || end.ends_with('s') {
        1
    } else {
        0
    };
    let alignment = match a.opt_int("alignment")? {
        Some(n) if n < 0 => {
            return Err(LayoutError::invalid(
                a.at("alignment"),
                "must not be negative",
            ))
        }
        Some(n) => n as u64,
        None => default_alignment,
    };
    let priority = match a.opt_int("priority")? {
        Some(p) => p,
        None if size == "100%" => 9001,
        None if type_code.eq_ignore_ascii_case("EF02") => 100,
        None => 1000,
    };
    let uuid = a.opt_str("uuid")?;
    if let Some(u) = &uuid {
        if !is_guid(u) {
            return Err(LayoutError::invalid(
                a.at("uuid"),
                format!("`{u}` is not a UUID"),
            ));
        }
    }
    let label = match a.opt_str("label")? {
        Some(l) => l,
        None => default_label(parent.kind, parent.name, &name),
    };
    let device = match (a.opt_str("device")?, &uuid) {
        (Some(d), _) => d,
        (None, Some(u)) => format!("/dev/disk/by-partuuid/{u}"),
        // md partitions get their by-id link once numbered (see `gpt`)
        (None, None) if parent.kind == "mdadm" => String::new(),
        (None, None) => format!("/dev/disk/by-partlabel/{}", hex_escape_udev(&label)),
    };
    let mut attributes = Vec::new();
    match a.get("attributes") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                match it.as_u64() {
                    Some(b) if b < 64 => attributes.push(b),
                    _ => {
                        return Err(LayoutError::invalid(
                            format!("{}.{i}", a.at("attributes")),
                            "GPT attribute bits are integers from 0 to 63",
                        ))
                    }
                }
            }
        }
        Some(other) => return Err(a.wrong("attributes", "a list of integers", other)),
    }
    let hybrid = match a.attrs("hybrid")? {
        None => None,
        Some(h) => {
            h.known(&["mbrPartitionType", "mbrBootableFlag"], false)?;
            Some(Hybrid {
                mbr_partition_type: h.opt_str("mbrPartitionType")?,
                mbr_bootable_flag: h.bool_or("mbrBootableFlag", false)?,
            })
        }
    };
    Ok(GptPartition {
        key: key.to_string(),
        name,
        index: 0,
        type_code,
        attributes,
        uuid,
        label,
        device,
        size,
        start,
        end,
        alignment,
        priority,
        hybrid,
        content: None,
    })
}

fn table(a: &Attrs, parent: &Parent) -> R<Table> {
    a.known(&["device", "format", "partitions"], true)?;
    let device = a.str_or("device", &parent.device)?;
    let format = a.str_or("format", "gpt")?;
    if format != "gpt" && format != "msdos" {
        return Err(LayoutError::invalid(
            a.at("format"),
            format!("\"{format}\" is not a table format (expected \"gpt\" or \"msdos\")"),
        ));
    }
    let mut partitions = Vec::new();
    match a.get("partitions") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                let p = Attrs::new(v, &format!("{}.{i}", a.at("partitions")))?;
                p.known(
                    &[
                        "part-type",
                        "fs-type",
                        "name",
                        "start",
                        "end",
                        "flags",
                        "bootable",
                        "content",
                    ],
                    false,
                )?;
                let index = i + 1;
                let part_type = p.str_or("part-type", "primary")?;
                if !["primary", "logical", "extended"].contains(&part_type.as_str()) {
                    return Err(LayoutError::invalid(
                        p.at("part-type"),
                        "expected \"primary\", \"logical\" or \"extended\"",
                    ));
                }
                let fs_type = p.opt_str("fs-type")?;
                const FS_TYPES: [&str; 14] = [
                    "bcachefs",
                    "btrfs",
                    "ext2",
                    "ext3",
                    "ext4",
                    "fat16",
                    "fat32",
                    "hfs",
                    "hfs+",
                    "linux-swap",
                    "ntfs",
                    "reiserfs",
                    "udf",
                    "xfs",
                ];
                if let Some(t) = &fs_type {
                    if !FS_TYPES.contains(&t.as_str()) {
                        return Err(LayoutError::invalid(
                            p.at("fs-type"),
                            format!(
                                "\"{t}\" is not a parted filesystem type ({})",
                                FS_TYPES.join(", ")
                            ),
                        ));
                    }
                }
                let pdev = partition_device(&device, index)
                    .map_err(|m| LayoutError::invalid(a.at("device"), m))?;
                let name = p.opt_str("name")?;
                let child = Parent {
                    kind: "partition",
                    name: name.as_deref().unwrap_or(""),
                    device: pdev.clone(),
                };
                partitions.push(TablePartition {
                    index,
                    part_type,
                    fs_type,
                    start: p.str_or("start", "0%")?,
                    end: p.str_or("end", "100%")?,
                    flags: p.str_list("flags")?,
                    bootable: p.bool_or("bootable", false)?,
                    device: pdev,
                    content: content(
                        p.get("content"),
                        &p.at("content"),
                        &child,
                        Allowed::Partition,
                    )?,
                    name,
                });
            }
        }
        Some(other) => return Err(a.wrong("partitions", "a list of partitions", other)),
    }
    Ok(Table {
        device,
        format,
        partitions,
        hooks: a.hooks()?,
    })
}

fn filesystem(a: &Attrs, parent: &Parent) -> R<Filesystem> {
    a.known(
        &[
            "device",
            "format",
            "extraArgs",
            "mountOptions",
            "mountpoint",
        ],
        true,
    )?;
    Ok(Filesystem {
        device: a.str_or("device", &parent.device)?,
        format: a.req_str("format")?,
        extra_args: a.str_list("extraArgs")?,
        mount_options: a.str_list_or("mountOptions", &["defaults"])?,
        mountpoint: mountpoint(a, "mountpoint")?,
        hooks: a.hooks()?,
    })
}

fn mountpoint(a: &Attrs, key: &str) -> R<Option<String>> {
    let mp = a.opt_str(key)?;
    if let Some(m) = &mp {
        if !m.starts_with('/') {
            return Err(LayoutError::invalid(
                a.at(key),
                format!("`{m}` is not an absolute path"),
            ));
        }
    }
    Ok(mp)
}

/// disko joins these lists unescaped into the command line, so words split on whitespace.
fn words(list: Vec<String>) -> Vec<String> {
    list.iter()
        .flat_map(|s| s.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

fn swap_files(a: &Attrs, key: &str) -> R<BTreeMap<String, SwapFile>> {
    let mut out = BTreeMap::new();
    if let Some(s) = a.attrs(key)? {
        for (name, v) in s.entries() {
            let f = Attrs::new(v, &s.at(name))?;
            f.known(&["size", "path", "priority", "options"], false)?;
            let size = f.req_str("size")?;
            if !super::size::is_disko_size(&size) || size.ends_with('%') {
                return Err(LayoutError::invalid(
                    f.at("size"),
                    format!("`{size}` is not a size like 8G"),
                ));
            }
            out.insert(
                name.clone(),
                SwapFile {
                    size,
                    path: f.str_or("path", name)?,
                    priority: f.opt_int("priority")?,
                    options: f.str_list_or("options", &["defaults"])?,
                },
            );
        }
    }
    Ok(out)
}

fn btrfs(a: &Attrs, parent: &Parent) -> R<Btrfs> {
    a.known(
        &[
            "device",
            "extraArgs",
            "mountOptions",
            "mountpoint",
            "swap",
            "subvolumes",
        ],
        true,
    )?;
    let mut subvolumes = BTreeMap::new();
    if let Some(s) = a.attrs("subvolumes")? {
        for (name, v) in s.entries() {
            let sa = Attrs::new(v, &s.at(name))?;
            sa.known(
                &["name", "extraArgs", "mountOptions", "mountpoint", "swap"],
                false,
            )?;
            subvolumes.insert(
                name.clone(),
                Subvolume {
                    name: sa.str_or("name", name)?,
                    extra_args: words(sa.str_list("extraArgs")?),
                    mount_options: sa.str_list_or("mountOptions", &["defaults"])?,
                    mountpoint: mountpoint(&sa, "mountpoint")?,
                    swap: swap_files(&sa, "swap")?,
                },
            );
        }
    }
    Ok(Btrfs {
        device: a.str_or("device", &parent.device)?,
        extra_args: words(a.str_list("extraArgs")?),
        mount_options: a.str_list_or("mountOptions", &["defaults"])?,
        mountpoint: mountpoint(a, "mountpoint")?,
        swap: swap_files(a, "swap")?,
        subvolumes,
        hooks: a.hooks()?,
    })
}

fn luks(a: &Attrs, parent: &Parent) -> R<Luks> {
    a.known(
        &[
            "device",
            "name",
            "keyFile",
            "passwordFile",
            "askPassword",
            "settings",
            "additionalKeyFiles",
            "initrdUnlock",
            "extraFormatArgs",
            "extraOpenArgs",
            "content",
        ],
        true,
    )?;
    let name = a.req_str("name")?;
    let key_file = a.opt_str("keyFile")?;
    let password_file = a.opt_str("passwordFile")?;
    let settings = match a.get("settings") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(a.wrong("settings", "an attribute set", other)),
    };
    let has_settings_key = settings.get("keyFile").is_some_and(|v| !v.is_null());
    let ask_default = key_file.is_none() && password_file.is_none() && !has_settings_key;
    let child = Parent {
        kind: "luks",
        name: &name,
        device: format!("/dev/mapper/{name}"),
    };
    Ok(Luks {
        device: a.str_or("device", &parent.device)?,
        ask_password: a.bool_or("askPassword", ask_default)?,
        additional_key_files: a.str_list("additionalKeyFiles")?,
        initrd_unlock: a.bool_or("initrdUnlock", true)?,
        extra_format_args: words(a.str_list("extraFormatArgs")?),
        extra_open_args: words(a.str_list("extraOpenArgs")?),
        content: content(a.get("content"), &a.at("content"), &child, Allowed::Device)?,
        hooks: a.hooks()?,
        key_file,
        password_file,
        settings,
        name,
    })
}

fn swap(a: &Attrs, parent: &Parent) -> R<Swap> {
    a.known(
        &[
            "device",
            "discardPolicy",
            "extraArgs",
            "mountOptions",
            "priority",
            "randomEncryption",
            "resumeDevice",
        ],
        true,
    )?;
    let discard_policy = a.opt_str("discardPolicy")?;
    if let Some(d) = &discard_policy {
        if !["once", "pages", "both"].contains(&d.as_str()) {
            return Err(LayoutError::invalid(
                a.at("discardPolicy"),
                format!("\"{d}\" is not one of \"once\", \"pages\", \"both\""),
            ));
        }
    }
    Ok(Swap {
        device: a.str_or("device", &parent.device)?,
        discard_policy,
        extra_args: a.str_list("extraArgs")?,
        mount_options: a.str_list_or("mountOptions", &["defaults"])?,
        priority: a.opt_int("priority")?,
        random_encryption: a.bool_or("randomEncryption", false)?,
        resume_device: a.bool_or("resumeDevice", false)?,
        hooks: a.hooks()?,
    })
}

fn mdadm(key: &str, v: &Value, path: &str) -> R<Mdadm> {
    let a = Attrs::new(v, path)?;
    a.known(&["name", "level", "metadata", "extraArgs", "content"], true)?;
    a.check_type("mdadm")?;
    let name = a.str_or("name", key)?;
    let metadata = a.str_or("metadata", "default")?;
    if !["1", "1.0", "1.1", "1.2", "default", "ddf", "imsm"].contains(&metadata.as_str()) {
        return Err(LayoutError::invalid(
            a.at("metadata"),
            format!("\"{metadata}\" is not one of 1, 1.0, 1.1, 1.2, default, ddf, imsm"),
        ));
    }
    let device = format!("/dev/md/{name}");
    let parent = Parent {
        kind: "mdadm",
        name: &name,
        device: device.clone(),
    };
    Ok(Mdadm {
        level: a.opt_int("level")?.unwrap_or(1),
        extra_args: a.str_list("extraArgs")?,
        content: content(a.get("content"), &a.at("content"), &parent, Allowed::Device)?,
        hooks: a.hooks()?,
        device,
        metadata,
        name,
    })
}

fn vdevs(a: &Attrs, key: &str) -> R<Vec<Vdev>> {
    let mut out = Vec::new();
    match a.get(key) {
        None => {}
        Some(Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                out.push(vdev(v, &format!("{}.{i}", a.at(key)))?);
            }
        }
        // `special` may be a single vdev
        Some(v @ Value::Object(_)) => out.push(vdev(v, &a.at(key))?),
        Some(other) => return Err(a.wrong(key, "a list of vdevs", other)),
    }
    Ok(out)
}

fn vdev(v: &Value, path: &str) -> R<Vdev> {
    let a = Attrs::new(v, path)?;
    a.known(&["mode", "members"], false)?;
    let mode = a.str_or("mode", "")?;
    let ok = mode.is_empty()
        || ["mirror", "raidz", "raidz1", "raidz2", "raidz3"].contains(&mode.as_str())
        || mode.starts_with("draid");
    if !ok {
        return Err(LayoutError::invalid(
            a.at("mode"),
            format!("\"{mode}\" is not a vdev mode (\"\", mirror, raidz, raidz1, raidz2, raidz3, draid…)"),
        ));
    }
    Ok(Vdev {
        mode,
        members: a.str_list("members")?,
    })
}

fn zpool(key: &str, v: &Value, path: &str) -> R<Zpool> {
    let a = Attrs::new(v, path)?;
    a.known(
        &[
            "name",
            "mode",
            "options",
            "rootFsOptions",
            "mountpoint",
            "mountOptions",
            "datasets",
        ],
        true,
    )?;
    a.check_type("zpool")?;
    let name = a.str_or("name", key)?;
    let mode = match a.get("mode") {
        None => ZpoolMode::Simple(String::new()),
        Some(Value::String(s)) => {
            if !["", "mirror", "raidz", "raidz1", "raidz2", "raidz3"].contains(&s.as_str()) {
                return Err(LayoutError::invalid(
                    a.at("mode"),
                    format!("\"{s}\" is not a pool mode (\"\", mirror, raidz, raidz1, raidz2, raidz3 or {{ topology = …; }})"),
                ));
            }
            ZpoolMode::Simple(s.clone())
        }
        Some(v @ Value::Object(_)) => {
            let m = Attrs::new(v, &a.at("mode"))?;
            m.known(&["topology"], false)?;
            let t = m.attrs("topology")?.ok_or_else(|| LayoutError::Missing {
                path: m.at("topology"),
            })?;
            t.known(
                &["vdev", "spare", "log", "dedup", "special", "cache"],
                false,
            )?;
            ZpoolMode::Topology(Topology {
                vdev: vdevs(&t, "vdev")?,
                spare: t.str_list("spare")?,
                log: vdevs(&t, "log")?,
                dedup: vdevs(&t, "dedup")?,
                special: vdevs(&t, "special")?,
                cache: t.str_list("cache")?,
            })
        }
        Some(other) => return Err(a.wrong("mode", "a string or { topology = …; }", other)),
    };
    let mut datasets = BTreeMap::new();
    if let Some(ds) = a.attrs("datasets")? {
        for (dname, v) in ds.entries() {
            datasets.insert(dname.clone(), dataset(&name, dname, v, &ds.at(dname))?);
        }
    }
    Ok(Zpool {
        mode,
        options: a.str_map("options")?,
        root_fs_options: a.str_map("rootFsOptions")?,
        mountpoint: mountpoint(&a, "mountpoint")?,
        mount_options: a.str_list_or("mountOptions", &["defaults"])?,
        datasets,
        hooks: a.hooks()?,
        name,
    })
}

fn dataset(pool: &str, key: &str, v: &Value, path: &str) -> R<Dataset> {
    let a = Attrs::new(v, path)?;
    let ty = a.req_str("type")?;
    match ty.as_str() {
        "zfs_fs" => {
            a.known(&["name", "options", "mountOptions", "mountpoint"], true)?;
            let name = a.str_or("name", key)?;
            Ok(Dataset::Fs(ZfsFs {
                full_name: format!("{pool}/{name}"),
                options: a.str_map("options")?,
                mount_options: a.str_list_or("mountOptions", &["defaults"])?,
                mountpoint: mountpoint(&a, "mountpoint")?,
                hooks: a.hooks()?,
                name,
            }))
        }
        "zfs_volume" => {
            a.known(&["name", "options", "extraArgs", "size", "content"], true)?;
            let name = a.str_or("name", key)?;
            let device = format!("/dev/zvol/{pool}/{name}");
            let parent = Parent {
                kind: "zfs_volume",
                name: &name,
                device: device.clone(),
            };
            Ok(Dataset::Volume(ZfsVolume {
                full_name: format!("{pool}/{name}"),
                options: a.str_map("options")?,
                extra_args: a.str_list("extraArgs")?,
                size: a.opt_str("size")?,
                content: content(
                    a.get("content"),
                    &a.at("content"),
                    &parent,
                    Allowed::Partition,
                )?,
                hooks: a.hooks()?,
                device,
                name,
            }))
        }
        other => Err(LayoutError::invalid(
            a.at("type"),
            format!(
                "dataset type \"{other}\" is not \"zfs_fs\" or \"zfs_volume\"{}",
                suggest(other, &["zfs_fs", "zfs_volume"])
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default()
            ),
        )),
    }
}

fn lvm_vg(key: &str, v: &Value, path: &str) -> R<LvmVg> {
    let a = Attrs::new(v, path)?;
    a.known(&["name", "lvs"], true)?;
    a.check_type("lvm_vg")?;
    let name = a.str_or("name", key)?;
    let mut lvs = Vec::new();
    if let Some(la) = a.attrs("lvs")? {
        for (lkey, v) in la.entries() {
            let l = Attrs::new(v, &la.at(lkey))?;
            l.known(
                &[
                    "name",
                    "size",
                    "lvm_type",
                    "pool",
                    "extraArgs",
                    "content",
                    "priority",
                ],
                false,
            )?;
            let lname = l.str_or("name", lkey)?;
            let size = l.req_str("size")?;
            let lvm_type = l.opt_str("lvm_type")?;
            if let Some(t) = &lvm_type {
                const TYPES: [&str; 8] = [
                    "mirror",
                    "raid0",
                    "raid1",
                    "raid4",
                    "raid5",
                    "raid6",
                    "thin-pool",
                    "thinlv",
                ];
                if !TYPES.contains(&t.as_str()) {
                    return Err(LayoutError::invalid(
                        l.at("lvm_type"),
                        format!("\"{t}\" is not one of {}", TYPES.join(", ")),
                    ));
                }
            }
            let default_priority = if lvm_type.as_deref() == Some("thin-pool") {
                501
            } else {
                1000
            } + if size.contains("100%") { 251 } else { 0 };
            let device = format!("/dev/{name}/{lname}");
            let parent = Parent {
                kind: "lvm_lv",
                name: &lname,
                device: device.clone(),
            };
            lvs.push(Lv {
                size,
                pool: l.opt_str("pool")?,
                extra_args: l.str_list("extraArgs")?,
                priority: l.opt_int("priority")?.unwrap_or(default_priority),
                content: content(
                    l.get("content"),
                    &l.at("content"),
                    &parent,
                    Allowed::Partition,
                )?,
                lvm_type,
                device,
                name: lname,
            });
        }
    }
    lvs.sort_by_key(|l| l.priority);
    Ok(LvmVg {
        lvs,
        hooks: a.hooks()?,
        name,
    })
}

fn nodev(key: &str, v: &Value, path: &str) -> R<Nodev> {
    let a = Attrs::new(v, path)?;
    a.known(&["fsType", "device", "mountpoint", "mountOptions"], true)?;
    a.check_type("nodev")?;
    let fs_type = a.req_str("fsType")?;
    let default_device =
        if ["proc", "sysfs", "tmpfs", "ramfs", "devtmpfs", "devpts"].contains(&fs_type.as_str()) {
            fs_type.clone()
        } else {
            "none".to_string()
        };
    let mountpoint = a.str_or("mountpoint", key)?;
    if !mountpoint.starts_with('/') {
        return Err(LayoutError::invalid(
            a.at("mountpoint"),
            format!("`{mountpoint}` is not an absolute path"),
        ));
    }
    Ok(Nodev {
        device: a.str_or("device", &default_device)?,
        mount_options: a.str_list_or("mountOptions", &["defaults"])?,
        hooks: a.hooks()?,
        fs_type,
        mountpoint,
    })
}

fn bcachefs_filesystem(key: &str, v: &Value, path: &str) -> R<BcachefsFilesystem> {
    let a = Attrs::new(v, path)?;
    a.known(
        &[
            "name",
            "extraFormatArgs",
            "mountOptions",
            "mountpoint",
            "uuid",
            "passwordFile",
            "subvolumes",
        ],
        true,
    )?;
    match a.opt_str("type")? {
        Some(t) if t == "bcachefs_filesystem" => {}
        Some(t) => {
            return Err(LayoutError::invalid(
                a.at("type"),
                format!("expected \"bcachefs_filesystem\", found \"{t}\""),
            ))
        }
        None => return Err(LayoutError::Missing { path: a.at("type") }),
    }
    let name = a.str_or("name", key)?;
    let mut subvolumes = BTreeMap::new();
    if let Some(s) = a.attrs("subvolumes")? {
        for (sname, v) in s.entries() {
            let sa = Attrs::new(v, &s.at(sname))?;
            sa.known(&["name", "mountOptions", "mountpoint"], false)?;
            let n = sa.str_or("name", sname)?;
            let subdir = format!("X-mount.subdir={}", n.trim_start_matches('/'));
            let mut opts = vec!["X-mount.mkdir".to_string(), subdir];
            for o in sa.str_list("mountOptions")? {
                if !opts.contains(&o) {
                    opts.push(o);
                }
            }
            subvolumes.insert(
                sname.clone(),
                BcachefsSubvolume {
                    name: n,
                    mount_options: opts,
                    mountpoint: mountpoint(&sa, "mountpoint")?,
                },
            );
        }
    }
    let uuid = a.str_or("uuid", &uuid_from_name(&name))?;
    if !is_guid(&uuid) {
        return Err(LayoutError::invalid(
            a.at("uuid"),
            format!("`{uuid}` is not a UUID"),
        ));
    }
    Ok(BcachefsFilesystem {
        extra_format_args: a.str_list("extraFormatArgs")?,
        mount_options: a.str_list_or("mountOptions", &["X-mount.mkdir"])?,
        mountpoint: mountpoint(&a, "mountpoint")?,
        password_file: a.opt_str("passwordFile")?,
        subvolumes,
        hooks: a.hooks()?,
        uuid,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_non_identifiers() {
        assert_eq!(join("", "disk"), "disk");
        assert_eq!(join("nodev", "/tmp"), "nodev.\"/tmp\"");
        assert_eq!(join("a", "part-type"), "a.part-type");
    }
}
