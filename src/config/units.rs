//! Durations (`250ms`, `5s`, `1h`) and sizes (`64KiB`, `1MiB`, `1048576`) as written in configs.

use std::time::Duration;

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 250ms, 5s, 1m"))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("`{s}` is not a size; write e.g. 65536, 64KiB, 1MiB");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// A request-head limit (`limits.max_header_bytes`, `--max-header-bytes`): at least 1 KiB.
pub fn head_bytes_limit(s: &str) -> Result<usize, String> {
    parse_size(s)
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n >= 1024)
        .ok_or_else(|| "must be a size of at least 1KiB (e.g. 64KiB)".to_owned())
}

/// A request-body limit (`limits.max_body`, `--max-body-bytes`); 0 means none.
pub fn body_limit(s: &str) -> Result<Option<u64>, String> {
    Ok(Some(parse_size(s)?).filter(|n| *n > 0))
}

/// The YAML error's message without the location and source snippet (we print our own).
pub fn yaml_message(e: &serde_saphyr::Error) -> String {
    let full = e.without_snippet().to_string();
    // serde-saphyr appends " at line L, column C"; drop it.
    let msg = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => full.as_str(),
    };
    msg.lines()
        .next()
        .unwrap_or("invalid YAML")
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2 mb"), Ok(2 << 20));
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
