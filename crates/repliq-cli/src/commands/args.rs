//! Parsers of argument values: sizes, segment sizes, capacities, positions, durations.

use std::time::Duration;

use repliq::store::layout::{MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};

/// Parses a byte size: `65536`, `64K`, `64M`, `1G`, `64KiB`, `64MB` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!(
            "{s:?} is not a size (expected e.g. 65536, 64K, 64M or 1G)"
        ));
    }
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is too large"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit (expected K, M, G or T, optionally followed by B or iB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses a segment size: a size that is a power of two within the format's bounds.
pub fn parse_segment_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if !n.is_power_of_two() {
        return Err(format!(
            "segment size {n} is not a power of two (e.g. 1M, 64M, 1G)"
        ));
    }
    if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&n) {
        return Err(format!(
            "segment size {n} is out of range ({MIN_SEGMENT_SIZE} to {MAX_SEGMENT_SIZE} bytes, i.e. 4K to 1G)"
        ));
    }
    Ok(n)
}

/// Parses a capacity in messages: a positive integer, `_` allowed as a separator.
pub fn parse_capacity(s: &str) -> Result<u64, String> {
    let t: String = s.trim().chars().filter(|&c| c != '_').collect();
    let n: u64 = t
        .parse()
        .map_err(|_| format!("{s:?} is not a number of messages"))?;
    if n == 0 {
        return Err("capacity must be at least 1".into());
    }
    Ok(n)
}

/// Where a tailer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest retained record.
    Start,
    /// The write position: only records appended from now on.
    End,
    /// A record id.
    Id(u64),
}

/// Parses `start`, `end` or a record id.
pub fn parse_start(s: &str) -> Result<StartAt, String> {
    match s.trim() {
        "start" | "begin" | "beginning" => Ok(StartAt::Start),
        "end" => Ok(StartAt::End),
        t => t
            .parse()
            .map(StartAt::Id)
            .map_err(|_| format!("{s:?} is not 'start', 'end' or a message id")),
    }
}

/// Parses a duration: `500ms`, `2s`, `1.5s`, `1m`, or plain seconds (`2.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (expected e.g. 500ms, 2s, 1.5, 1m)"))?;
    let secs = v * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2MB"), Ok(2 << 20));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(parse_segment_size("64M"), Ok(64 << 20));
        assert!(parse_segment_size("100000").is_err());
        assert!(parse_segment_size("2K").is_err());
        assert!(parse_segment_size("2G").is_err());
    }

    #[test]
    fn others() {
        assert_eq!(parse_capacity("1_000"), Ok(1000));
        assert!(parse_capacity("0").is_err());
        assert_eq!(parse_start("end"), Ok(StartAt::End));
        assert_eq!(parse_start("64"), Ok(StartAt::Id(64)));
        assert!(parse_start("x").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
