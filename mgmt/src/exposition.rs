//! Prometheus text exposition format, version 0.0.4: a writer the daemons
//! render their metrics with at scrape time, a latency [`Histogram`], and a
//! strict [`parse`]r that tests (and `cstor ctl`) read the text back with.
//!
//! Why not the `prometheus-client` crate: every metric here is either an
//! atomic counter the daemon already keeps or a figure read from a status
//! snapshot at scrape time (replica states, pool space), with label sets
//! known in advance; a registry of metric objects would add a dependency
//! and a second copy of that state. What remains, the text format, is
//! small and fully checked below by a parser round trip.
//!
//! Format (Prometheus "Exposition formats", text 0.0.4): `# HELP name
//! text` and `# TYPE name type` once per family, before its samples; a
//! sample is `name{label="value",…} value`; label values escape `\`, `"`
//! and newline, help text `\` and newline; values are Go floats (`+Inf`,
//! `-Inf`, `NaN`). A histogram is the `_bucket{le=…}` series (cumulative,
//! ending with `le="+Inf"`), `_sum` and `_count`.
//!
//! Invariants: a rendered histogram's buckets are non-decreasing and its
//! `_count` equals its `+Inf` bucket, even while observations race with the
//! scrape (both come from one snapshot).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds of IO latency histograms, in seconds: 50 µs (a cached
/// read on loopback) to 10 s (a write held below quorum).
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// A sample value: integers are written exactly (a u64 counter above 2^53
/// would lose digits as a float).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(u64::try_from(v).unwrap_or(u64::MAX))
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(u64::from(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(u64::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

/// Text being rendered. Metric and label names are the caller's constants
/// (checked by the tests that parse the output); label values and help
/// text are escaped here.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its HELP and TYPE lines. Call once per name, before
    /// its samples.
    pub fn family(&mut self, name: &str, kind: MetricType, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_label_value(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(&mut self.out, value.into());
        self.out.push('\n');
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn write_value(out: &mut String, value: Value) {
    let _ = match value {
        Value::Int(v) => write!(out, "{v}"),
        Value::Float(v) if v.is_nan() => write!(out, "NaN"),
        Value::Float(v) if v == f64::INFINITY => write!(out, "+Inf"),
        Value::Float(v) if v == f64::NEG_INFINITY => write!(out, "-Inf"),
        Value::Float(v) => write!(out, "{v}"),
    };
}

/// A latency histogram with fixed bucket bounds: lock-free to observe,
/// rendered at scrape time.
#[derive(Debug)]
pub struct Histogram {
    bounds_seconds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds_seconds` (ascending), e.g.
    /// [`LATENCY_BUCKETS_SECONDS`].
    pub fn new(bounds_seconds: &'static [f64]) -> Self {
        Histogram {
            bounds_seconds,
            counts: (0..=bounds_seconds.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        // The first bucket whose bound is >= the value (`le` is inclusive).
        let at = self.bounds_seconds.partition_point(|&b| b < seconds);
        if let Some(count) = self.counts.get(at) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .fold(0, u64::saturating_add)
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples of the family
    /// `name` (its HELP/TYPE written by the caller) with `labels` (and
    /// `le`).
    pub fn encode(&self, out: &mut Exposition, name: &str, labels: &[(&str, &str)]) {
        let bucket_name = format!("{name}_bucket");
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        let mut cumulative = 0u64;
        let mut bounds: Vec<String> = self.bounds_seconds.iter().map(|b| b.to_string()).collect();
        bounds.push("+Inf".to_owned());
        for (count, le) in self.counts.iter().zip(&bounds) {
            cumulative = cumulative.saturating_add(count.load(Ordering::Relaxed));
            with_le.truncate(labels.len());
            with_le.push(("le", le));
            out.sample(&bucket_name, &with_le, cumulative);
        }
        let sum_seconds = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        out.sample(&format!("{name}_sum"), labels, sum_seconds);
        out.sample(&format!("{name}_count"), labels, cumulative);
    }
}

/// One parsed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(l, _)| l == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The value of the sample `name` whose labels include every pair of
/// `labels` (first match).
pub fn find(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(l, v)| s.label(l) == Some(*v)))
        .map(|s| s.value)
}

/// Why text is not valid exposition format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct ParseError {
    pub line: usize,
    pub why: String,
}

/// Parses text format 0.0.4 strictly: every sample belongs to a family
/// declared by a TYPE line before it, no family is declared twice, names
/// and label names are well formed, label values correctly escaped, values
/// Go floats, histogram buckets carry `le`.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut families: Vec<(String, String)> = Vec::new();
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |why: String| ParseError { line: i + 1, why };
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !is_metric_name(name) {
                        return Err(err(format!("bad metric name {name:?}")));
                    }
                    if !matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ) {
                        return Err(err(format!("unknown type {kind:?}")));
                    }
                    if families.iter().any(|(n, _)| n == name) {
                        return Err(err(format!("family {name} declared twice")));
                    }
                    families.push((name.to_owned(), kind.to_owned()));
                }
                (Some("HELP"), Some(name), _) if !is_metric_name(name) => {
                    return Err(err(format!("bad metric name {name:?}")));
                }
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(line).map_err(err)?;
        let Some(kind) = family_of(&sample.name, &families) else {
            return Err(err(format!("sample {} of no declared family", sample.name)));
        };
        if kind == "histogram" && sample.name.ends_with("_bucket") && sample.label("le").is_none() {
            return Err(err(format!("bucket {} without le", sample.name)));
        }
        samples.push(sample);
    }
    Ok(samples)
}

/// The type of the family `name` belongs to.
fn family_of<'f>(name: &str, families: &'f [(String, String)]) -> Option<&'f str> {
    families.iter().find_map(|(family, kind)| {
        let exact = name == family;
        let suffixed = || {
            name.strip_prefix(family.as_str())
                .is_some_and(|rest| matches!(rest, "_bucket" | "_sum" | "_count"))
        };
        let matches = match kind.as_str() {
            "histogram" | "summary" => exact && kind == "summary" || suffixed(),
            _ => exact,
        };
        matches.then_some(kind.as_str())
    })
}

fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let (name, mut rest) = line.split_at(name_end);
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    if !rest.starts_with(' ') {
        return Err("no space before the value".into());
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = parse_value(value).ok_or_else(|| format!("bad value {value:?}"))?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `label="value",…}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str, String> {
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let (label, rest) = s.split_once('=').ok_or("label without '='")?;
        if !is_label_name(label) {
            return Err(format!("bad label name {label:?}"));
        }
        if labels.iter().any(|(l, _)| l == label) {
            return Err(format!("label {label} repeated"));
        }
        let rest = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("value of {label} not quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i + 1,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((label.to_owned(), value));
        s = rest.get(end..).unwrap_or_default();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E')) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_family_renders_help_type_and_escaped_labels() {
        let mut e = Exposition::new();
        e.family(
            "cstor_x_total",
            MetricType::Counter,
            "Things \\ done\nso far.",
        );
        e.sample("cstor_x_total", &[("volume", "a\"b\\c\nd")], 7u64);
        e.sample("cstor_x_total", &[], f64::INFINITY);
        assert_eq!(
            e.finish(),
            "# HELP cstor_x_total Things \\\\ done\\nso far.\n\
             # TYPE cstor_x_total counter\n\
             cstor_x_total{volume=\"a\\\"b\\\\c\\nd\"} 7\n\
             cstor_x_total +Inf\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_le_inclusive() {
        static BOUNDS: &[f64] = &[0.001, 0.01];
        let h = Histogram::new(BOUNDS);
        h.observe(Duration::from_millis(1)); // le 0.001 exactly
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut e = Exposition::new();
        e.family("lat_seconds", MetricType::Histogram, "Latency.");
        h.encode(&mut e, "lat_seconds", &[("op", "read")]);
        let samples = parse(&e.finish()).unwrap();
        let bucket = |le| {
            find(
                &samples,
                "lat_seconds_bucket",
                &[("op", "read"), ("le", le)],
            )
        };
        assert_eq!(bucket("0.001"), Some(1.0));
        assert_eq!(bucket("0.01"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(3.0));
        assert_eq!(find(&samples, "lat_seconds_count", &[]), Some(3.0));
        let sum = find(&samples, "lat_seconds_sum", &[]).unwrap();
        assert!((sum - 1.006).abs() < 1e-9, "{sum}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn parse_refuses_malformed_text() {
        let typed = "# TYPE a counter\n";
        for bad in [
            "a 1\n",                                     // no TYPE
            "# TYPE a counter\n# TYPE a counter\n",      // declared twice
            "# TYPE a countr\n",                         // unknown type
            &format!("{typed}a{{x=\"1 1\n"),             // unterminated
            &format!("{typed}a{{x=1}} 1\n"),             // unquoted
            &format!("{typed}a{{x=\"\\q\"}} 1\n"),       // bad escape
            &format!("{typed}a{{x=\"1\",x=\"2\"}} 1\n"), // repeated label
            &format!("{typed}a{{1x=\"1\"}} 1\n"),        // bad label name
            &format!("{typed}a one\n"),                  // bad value
            &format!("{typed}a 1 2 3\n"),                // trailing
            "# TYPE h histogram\nh_bucket 1\n",          // bucket without le
            "# TYPE 9a gauge\n",                         // bad name
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
        let ok = format!("{typed}a{{x=\"1\",y=\"\"}} 1.5 1700000000000\na 2\n");
        assert_eq!(parse(&ok).unwrap().len(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// The model: what was written is what parses back.
        #[test]
        fn rendered_samples_parse_back(
            samples in proptest::collection::vec(
                ("\\PC{0,12}", "[a-z]{0,4}", any::<u64>(), any::<bool>()),
                0..8,
            ),
        ) {
            let mut e = Exposition::new();
            e.family("m_total", MetricType::Counter, "help \\ with \n specials");
            for (volume, op, value, _) in &samples {
                e.sample("m_total", &[("volume", volume), ("op", op)], *value);
            }
            e.family("g", MetricType::Gauge, "g");
            for (_, _, value, flag) in &samples {
                e.sample("g", &[], if *flag { f64::NAN } else { *value as f64 / 7.0 });
            }
            let parsed = parse(&e.finish()).unwrap();
            prop_assert_eq!(parsed.len(), samples.len() * 2);
            for ((volume, op, value, flag), (c, g)) in
                samples.iter().zip(parsed.iter().zip(parsed.iter().skip(samples.len())))
            {
                prop_assert_eq!(c.label("volume"), Some(volume.as_str()));
                prop_assert_eq!(c.label("op"), Some(op.as_str()));
                prop_assert_eq!(c.value, *value as f64);
                if *flag {
                    prop_assert!(g.value.is_nan());
                } else {
                    prop_assert_eq!(g.value, *value as f64 / 7.0);
                }
            }
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn histogram_count_equals_observations(
            micros in proptest::collection::vec(0u64..20_000_000, 0..50),
        ) {
            let h = Histogram::new(LATENCY_BUCKETS_SECONDS);
            for m in &micros {
                h.observe(Duration::from_micros(*m));
            }
            let mut e = Exposition::new();
            e.family("h_seconds", MetricType::Histogram, "h");
            h.encode(&mut e, "h_seconds", &[]);
            let parsed = parse(&e.finish()).unwrap();
            let buckets: Vec<f64> = parsed
                .iter()
                .filter(|s| s.name == "h_seconds_bucket")
                .map(|s| s.value)
                .collect();
            prop_assert!(buckets.windows(2).all(|w| w[0] <= w[1]));
            prop_assert_eq!(find(&parsed, "h_seconds_count", &[]), Some(micros.len() as f64));
            prop_assert_eq!(buckets.last().copied(), Some(micros.len() as f64));
        }
    }
}
