//! GPT partition labels and the udev-escaped names of their `/dev/disk/by-partlabel` links.

use sha2::{Digest, Sha256};

/// Longest GPT partition name disko writes as is (GPT allows 36 UTF-16 code units).
pub const MAX_LABEL: usize = 36;

/// disko's default label `<parent type>-<parent name>-<partition name>`; when longer than 36
/// characters, the first 36 hex digits of its sha256 instead.
pub fn default_label(parent_type: &str, parent_name: &str, part_name: &str) -> String {
    let label = format!("{parent_type}-{parent_name}-{part_name}");
    if label.chars().count() > MAX_LABEL {
        let digest = Sha256::digest(label.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        hex[..MAX_LABEL].to_string()
    } else {
        label
    }
}

/// Escapes a name the way udev does for symlinks: bytes outside `[0-9A-Za-z#+-.:=@_/]` become `\xHH`.
pub fn hex_escape_udev(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || "#+-.:=@_/".contains(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out
}

/// The udev link of a partition label.
pub fn partlabel_path(label: &str) -> String {
    format!("/dev/disk/by-partlabel/{}", hex_escape_udev(label))
}

/// disko's bcachefs default UUID: sha256 of the filesystem name shaped as a UUID.
pub fn uuid_from_name(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let h: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The device node of partition `index` of a whole device, as disko's `deviceNumbering`
/// (legacy `table` partitions): `sda` → `sda1`, `nvme0n1` → `nvme0n1p1`, by-id → `-part1`.
pub fn partition_device(device: &str, index: usize) -> Result<String, String> {
    let ends_digit = device.chars().last().is_some_and(|c| c.is_ascii_digit());
    let base = device.rsplit('/').next().unwrap_or(device);
    if device.starts_with("/dev/disk/") || device.starts_with("/dev/zvol/") {
        Ok(format!("{device}-part{index}"))
    } else if ["sd", "vd", "xvd", "hd"]
        .iter()
        .any(|p| base.starts_with(p))
        && device.starts_with("/dev/")
        && !ends_digit
    {
        Ok(format!("{device}{index}"))
    } else if device.starts_with("/dev/nvme")
        || device.starts_with("/dev/mmcblk")
        || device.starts_with("/dev/loop")
        || (device.starts_with("/dev/md/") && ends_digit)
    {
        Ok(format!("{device}p{index}"))
    } else if device.starts_with("/dev/md/") || device.starts_with("/dev/mapper/") {
        Ok(format!("{device}{index}"))
    } else if ends_digit {
        Ok(format!("{device}p{index}"))
    } else {
        Err(format!(
            "cannot tell the partition device names of `{device}` (use /dev/sdX, /dev/vdX, /dev/nvmeXnY, /dev/loopN or /dev/disk/by-*)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_longer_than_36_characters_are_hashed() {
        assert_eq!(default_label("disk", "main", "ESP"), "disk-main-ESP");
        let long = default_label("disk", "a-very-long-disk-name", "a-long-partition");
        assert_eq!(long.len(), 36);
        assert!(long.chars().all(|c| c.is_ascii_hexdigit()));
        // exactly 36 characters stays readable
        let name36 = "x".repeat(36 - "disk-d-".len());
        assert_eq!(default_label("disk", "d", &name36).len(), 36);
        assert!(default_label("disk", "d", &name36).starts_with("disk-d-"));
    }

    #[test]
    fn udev_escaping() {
        assert_eq!(
            hex_escape_udev("name with spaces"),
            "name\\x20with\\x20spaces"
        );
        assert_eq!(hex_escape_udev("a:b=c@d_e.f+g#h"), "a:b=c@d_e.f+g#h");
        assert_eq!(hex_escape_udev("é"), "\\xc3\\xa9");
    }

    #[test]
    fn bcachefs_uuid_matches_disko() {
        assert_eq!(
            uuid_from_name("mounted_subvolumes_in_multi"),
            "88d9c058-757d-c06e-0fb7-a612f2db8a7a"
        );
    }

    #[test]
    fn partition_numbering() {
        assert_eq!(partition_device("/dev/sda", 2).unwrap(), "/dev/sda2");
        assert_eq!(
            partition_device("/dev/nvme0n1", 1).unwrap(),
            "/dev/nvme0n1p1"
        );
        assert_eq!(partition_device("/dev/loop3", 1).unwrap(), "/dev/loop3p1");
        assert_eq!(
            partition_device("/dev/disk/by-id/x", 1).unwrap(),
            "/dev/disk/by-id/x-part1"
        );
        assert_eq!(
            partition_device("/dev/md/boot", 1).unwrap(),
            "/dev/md/boot1"
        );
    }
}
