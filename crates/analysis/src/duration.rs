//! Go durations (`500ms`, `30s`, `1m30s`, `2h`), the format of the chart's values, and the
//! Prometheus duration a query's `{{ interval }}` is rendered as.

use std::time::Duration;

/// Parses a Go duration: one or more `<number><unit>` with units `ns`, `us` (or `µs`), `ms`,
/// `s`, `m`, `h`, and a decimal fraction allowed. Signs are refused (no negative durations
/// here), as is the bare `0` Go also accepts, which means nothing useful in an analysis.
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 30s, 1m30s or 500ms");
    if text.is_empty() {
        return Err(bad());
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if number_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let (unit, nanos) = [
            ("ns", 1e0),
            ("us", 1e3),
            ("µs", 1e3),
            ("ms", 1e6),
            ("s", 1e9),
            ("m", 60e9),
            ("h", 3600e9),
        ]
        .into_iter()
        // `ms` before `m`: take the longest unit that matches.
        .filter(|(u, _)| rest.starts_with(u))
        .max_by_key(|(u, _)| u.len())
        .ok_or_else(bad)?;
        rest = &rest[unit.len()..];
        total += number * nanos;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

/// A duration as Prometheus reads it in a range selector: whole seconds as `30s`, else
/// milliseconds (`1500ms`).
pub fn prometheus(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A duration as users write it: `1m30s`, `2h`, `500ms`.
pub fn display(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        for (text, ms) in [
            ("30s", 30_000),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
            ("500ms", 500),
            ("1.5s", 1500),
            ("1h2m3s4ms", 3_723_004),
            ("1000us", 1),
            ("1000µs", 1),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        for text in ["", "0", "30", "s", "-1s", "1d", "1 s", "1.2.3s", "m5"] {
            assert!(parse(text).is_err(), "{text} accepted");
        }
    }

    #[test]
    fn renders_for_prometheus_and_people() {
        assert_eq!(prometheus(Duration::from_secs(90)), "90s");
        assert_eq!(prometheus(Duration::from_millis(1500)), "1500ms");
        assert_eq!(display(Duration::from_secs(90)), "1m30s");
        assert_eq!(display(Duration::from_secs(7200)), "2h");
        assert_eq!(display(Duration::from_millis(250)), "250ms");
        assert_eq!(display(Duration::ZERO), "0s");
    }
}
