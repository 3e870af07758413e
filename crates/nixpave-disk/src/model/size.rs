//! Sizes and positions in sgdisk's syntax: `512M`, `100%`, `+1G`, `-8G`, `-0`, `2048s`.
//!
//! Units are binary like sgdisk's (K = 1024 bytes … P = 1024⁵); a bare number is bytes for
//! sizes and sectors of 512 bytes for positions (`0` means "first free / default").

/// Bytes per logical sector, as sgdisk assumes for `s` suffixes on 512-byte disks.
pub const SECTOR: u64 = 512;

/// A partition size (`size` option of gpt partitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// `100%`: everything that is left.
    Rest,
    /// A fixed number of bytes.
    Bytes(u64),
}

/// Where a partition starts or ends (`start`/`end` options, sgdisk syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// `0`: sgdisk's default (first free sector for starts, last usable for ends).
    Default,
    /// An absolute offset from the start of the disk, in bytes.
    Absolute(u64),
    /// `+N`: relative to the partition's start, in bytes.
    AfterStart(u64),
    /// `-N`: that many bytes before the end of the disk (`-0` is the very end).
    BeforeEnd(u64),
}

/// Parses `[0-9]+[KMGTP]?` (what disko accepts for `size`) or `100%`.
pub fn parse_size(text: &str) -> Result<Size, String> {
    if text == "100%" {
        return Ok(Size::Rest);
    }
    if text.ends_with('%') {
        return Err(format!(
            "`{text}`: only \"100%\" is allowed as a percentage; use `end = \"-N\"` to leave space at the end"
        ));
    }
    parse_amount(text, 1).map(Size::Bytes)
}

/// Parses an sgdisk position: `0`, `1M`, `+1G`, `-8G`, `-0`, `2048s`, `2048` (sectors).
pub fn parse_position(text: &str) -> Result<Position, String> {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix('+') {
        return parse_amount(rest, SECTOR).map(Position::AfterStart);
    }
    if let Some(rest) = t.strip_prefix('-') {
        return parse_amount(rest, SECTOR).map(Position::BeforeEnd);
    }
    let v = parse_amount(t, SECTOR)?;
    Ok(if v == 0 {
        Position::Default
    } else {
        Position::Absolute(v)
    })
}

/// A number with an optional K/M/G/T/P (binary) or `s` (sectors) suffix; a bare number is
/// multiplied by `bare_unit`. Also accepts parted-style `KiB`/`MiB`/... suffixes.
pub fn parse_amount(text: &str, bare_unit: u64) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!(
            "`{text}` is not a size (expected e.g. 512M, 1G, 2048s)"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}`: number too large"))?;
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => bare_unit,
        "S" => SECTOR,
        "B" => 1,
        "K" | "KIB" => 1 << 10,
        "M" | "MIB" => 1 << 20,
        "G" | "GIB" => 1 << 30,
        "T" | "TIB" => 1 << 40,
        "P" | "PIB" => 1 << 50,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (expected K, M, G, T, P or s)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{text}`: size too large"))
}

/// True for sizes disko accepts in `size`: `100%` or `[0-9]+[KMGTP]?`.
pub fn is_disko_size(text: &str) -> bool {
    if text == "100%" {
        return true;
    }
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(digits_end);
    !num.is_empty() && matches!(unit, "" | "K" | "M" | "G" | "T" | "P")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("512M"), Ok(Size::Bytes(512 << 20)));
        assert_eq!(parse_size("1G"), Ok(Size::Bytes(1 << 30)));
        assert_eq!(parse_size("100%"), Ok(Size::Rest));
        assert_eq!(parse_size("0"), Ok(Size::Bytes(0)));
        assert!(parse_size("50%").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn positions_follow_sgdisk() {
        assert_eq!(parse_position("0"), Ok(Position::Default));
        assert_eq!(parse_position("1M"), Ok(Position::Absolute(1 << 20)));
        assert_eq!(parse_position("+1G"), Ok(Position::AfterStart(1 << 30)));
        assert_eq!(parse_position("-8G"), Ok(Position::BeforeEnd(8 << 30)));
        assert_eq!(parse_position("-0"), Ok(Position::BeforeEnd(0)));
        assert_eq!(parse_position("2048s"), Ok(Position::Absolute(2048 * 512)));
        assert_eq!(parse_position("2048"), Ok(Position::Absolute(2048 * 512)));
        assert_eq!(parse_position("100MiB"), Ok(Position::Absolute(100 << 20)));
    }

    #[test]
    fn disko_size_pattern() {
        assert!(is_disko_size("1M"));
        assert!(is_disko_size("100%"));
        assert!(is_disko_size("4096"));
        assert!(!is_disko_size("1MiB"));
        assert!(!is_disko_size("-1G"));
    }
}
