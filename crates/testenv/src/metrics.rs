//! Reading an `iter8 controller` process's `/metrics` (the Prometheus text format), for tests
//! and the benchmark that run the controller out of process and need evidence of what it did:
//! how many reconciles it started and finished, how its applies ended, whether work is
//! queued. [`parse`] is pure; [`scrape`] does one HTTP GET.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};

/// One sample: a metric name (with its `_total`, `_count`, ... suffix), labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// The sum of the samples named `name` (and, if given, with label `key` = `value`);
    /// 0 when there is none, as for a counter that was never incremented.
    pub fn get(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v)))
            .map(|s| s.value)
            // Not `sum()`: an empty f64 sum is -0.0, which prints as "-0".
            .fold(0.0, |total, v| total + v)
    }

    /// Reconciles started (`iter8_reconciles_total`: counted when a worker takes a routemap).
    pub fn reconciles_started(&self) -> f64 {
        self.get("iter8_reconciles_total", None)
    }

    /// Reconciles finished, apply and Events included (the count of
    /// `iter8_reconcile_duration_seconds`, observed when a reconcile returns).
    pub fn reconciles_finished(&self) -> f64 {
        self.get("iter8_reconcile_duration_seconds_count", None)
    }

    /// Routing object applies that ended with `result` (`applied`, `unchanged`, `failed`).
    pub fn applies(&self, result: &str) -> f64 {
        self.get("iter8_applies_total", Some(("result", result)))
    }

    /// Nothing queued and no reconcile between its start and its end: every change the
    /// controller has taken in so far is fully worked off.
    pub fn is_idle(&self) -> bool {
        self.get("iter8_queue_depth", None) == 0.0
            && self.reconciles_started() == self.reconciles_finished()
    }
}

/// Parses the Prometheus text format (comments and `# EOF` skipped; label values unescaped).
pub fn parse(text: &str) -> Result<Scrape> {
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(sample(line).with_context(|| format!("line {}: {line:?}", n + 1))?);
    }
    Ok(Scrape { samples })
}

fn sample(line: &str) -> Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or_else(|| anyhow!("no value"))?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        bail!("label {key} has no quoted value");
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().map(|(_, c)| c) {
                            Some('"') => break,
                            Some('\\') => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(c) => value.push(c),
                                None => bail!("unterminated label value"),
                            },
                            Some(c) => value.push(c),
                            None => bail!("unterminated label value"),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
        let end = end.ok_or_else(|| anyhow!("unterminated labels"))?;
        rest = &after[end..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("no value"))?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// `GET /metrics` from an admin server on `127.0.0.1:port`, parsed.
pub fn scrape(port: u16) -> Result<Scrape> {
    let r = crate::http::get_local(port, "/metrics")
        .ok_or_else(|| anyhow!("nothing answers on 127.0.0.1:{port}/metrics"))?;
    if r.status != 200 {
        bail!("127.0.0.1:{port}/metrics answered {}", r.status);
    }
    parse(&r.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes of the text format the controller's metrics take: a counter, a family with
    /// labels, a gauge and a histogram.
    const TEXT: &str = r#"# HELP iter8_reconciles Routemap reconciles.
# TYPE iter8_reconciles counter
iter8_reconciles_total 7
# TYPE iter8_reconcile_duration_seconds histogram
iter8_reconcile_duration_seconds_sum 0.25
iter8_reconcile_duration_seconds_count 6
iter8_reconcile_duration_seconds_bucket{le="0.0005"} 1
iter8_reconcile_duration_seconds_bucket{le="+Inf"} 6
# TYPE iter8_applies counter
iter8_applies_total{result="applied"} 2
iter8_applies_total{result="unchanged"} 5
iter8_watched_objects{resource="a\"b\\c,d"} 3
iter8_queue_depth 0
# EOF
"#;

    #[test]
    fn reads_counters_families_and_histogram_counts() -> Result<()> {
        let s = parse(TEXT)?;
        assert_eq!(s.reconciles_started(), 7.0);
        assert_eq!(s.reconciles_finished(), 6.0);
        assert_eq!(s.applies("applied"), 2.0);
        assert_eq!(s.applies("unchanged"), 5.0);
        assert_eq!(s.applies("failed"), 0.0);
        assert_eq!(s.get("iter8_applies_total", None), 7.0);
        assert_eq!(
            s.get("iter8_watched_objects", Some(("resource", "a\"b\\c,d"))),
            3.0
        );
        assert_eq!(
            s.get(
                "iter8_reconcile_duration_seconds_bucket",
                Some(("le", "+Inf"))
            ),
            6.0
        );
        // One reconcile started and not finished.
        assert!(!s.is_idle());
        Ok(())
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in ["x", "x{a=\"1\" 2", "x{a=1} 2", "x nan-ish"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
