//! Checks that GPT partitions fit on disks whose size is known (from facts).

use std::collections::BTreeMap;

use crate::model::size::{parse_position, Position, SECTOR};
use crate::model::{Content, Layout, LayoutError};

/// sgdisk's default alignment (2048 sectors = 1 MiB).
const ALIGN: u64 = 2048 * SECTOR;
/// Space the backup GPT takes at the end of the disk (header + 128 entries).
const BACKUP_GPT: u64 = 33 * SECTOR;

fn align_up(v: u64) -> u64 {
    v.div_ceil(ALIGN) * ALIGN
}

/// Refuses a GPT whose partitions cannot fit on its disk, for disks listed in `sizes`.
pub fn check_disk_sizes(layout: &Layout, sizes: &BTreeMap<String, u64>) -> Result<(), LayoutError> {
    for (key, disk) in &layout.disk {
        let Some(&size) = sizes.get(&disk.device) else {
            continue;
        };
        let Some(Content::Gpt(g)) = &disk.content else {
            continue;
        };
        let last = size.saturating_sub(BACKUP_GPT);
        let mut next_free = ALIGN;
        for p in &g.partitions {
            let path = format!("disk.{key}.content.partitions.{}", p.key);
            let pos =
                |s: &str| parse_position(s).map_err(|m| LayoutError::invalid(path.clone(), m));
            let start = match pos(&p.start)? {
                Position::Default => next_free,
                Position::Absolute(b) => align_up(b),
                Position::AfterStart(b) => align_up(next_free + b),
                Position::BeforeEnd(b) => align_up(last.saturating_sub(b)),
            };
            let end = match pos(&p.end)? {
                Position::Default | Position::BeforeEnd(0) => last,
                Position::Absolute(b) => b,
                Position::AfterStart(b) => start + b,
                Position::BeforeEnd(b) => last.saturating_sub(b),
            };
            if end > last || start >= end {
                return Err(LayoutError::invalid(
                    path,
                    format!(
                        "partition `{}` ({}..{}) does not fit on {} ({} bytes = {} MiB; {} MiB still free at that point)",
                        p.name,
                        p.start,
                        p.end,
                        disk.device,
                        size,
                        size >> 20,
                        last.saturating_sub(next_free) >> 20
                    ),
                ));
            }
            next_free = align_up(end);
        }
    }
    Ok(())
}
