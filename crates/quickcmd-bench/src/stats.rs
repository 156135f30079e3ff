//! Exact percentiles over every sample (sorted, nearest rank), and the result rows the table
//! and `results.json` are made of.

use std::time::Duration;

use serde::Serialize;

/// p50/p95/p99 of one variant, in milliseconds, over all `samples`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    pub(crate) samples: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) min_ms: f64,
    pub(crate) max_ms: f64,
}

impl Summary {
    pub(crate) fn of(samples: &[Duration]) -> Option<Summary> {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Some(Summary {
            samples: ms.len(),
            p50_ms: percentile(&ms, 50.0)?,
            p95_ms: percentile(&ms, 95.0)?,
            p99_ms: percentile(&ms, 99.0)?,
            min_ms: *ms.first()?,
            max_ms: *ms.last()?,
        })
    }
}

/// Nearest-rank percentile of sorted `values`: the smallest value with at least `p`% of the
/// samples at or below it.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// One line of the table: a measured value, and how it compares to its baseline and target.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) section: &'static str,
    pub(crate) name: String,
    /// e.g. `p50 ms`, `jobs/s`, `MB/s`, `MiB`.
    pub(crate) unit: &'static str,
    pub(crate) value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) summary: Option<Summary>,
    /// value / baseline value, when the row has a baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) baseline: Option<String>,
    /// The target, as text (`≤ 0.25×`), and whether it was met.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) met: Option<bool>,
}

impl Row {
    pub(crate) fn new(
        section: &'static str,
        name: impl Into<String>,
        unit: &'static str,
        value: f64,
    ) -> Row {
        Row {
            section,
            name: name.into(),
            unit,
            value,
            summary: None,
            ratio: None,
            baseline: None,
            target: None,
            met: None,
        }
    }

    pub(crate) fn latency(section: &'static str, name: impl Into<String>, summary: Summary) -> Row {
        let mut row = Row::new(section, name, "p50 ms", summary.p50_ms);
        row.summary = Some(summary);
        row
    }

    pub(crate) fn against(mut self, baseline: &Row) -> Row {
        if baseline.value > 0.0 {
            self.ratio = Some(self.value / baseline.value);
            self.baseline = Some(baseline.name.clone());
        }
        self
    }

    pub(crate) fn target(mut self, text: &str, met: bool) -> Row {
        self.target = Some(text.to_owned());
        self.met = Some(met);
        self
    }
}

/// The table printed at the end.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<11} {:<46} {:>9} {:>9} {:>9} {:>9}  {:>7}  {}\n",
        "section", "variant", "value", "p95", "p99", "unit", "ratio", "target"
    );
    for row in rows {
        let (p95, p99) = row
            .summary
            .as_ref()
            .map_or((String::new(), String::new()), |s| {
                (format!("{:.1}", s.p95_ms), format!("{:.1}", s.p99_ms))
            });
        let ratio = row.ratio.map_or(String::new(), |r| format!("{r:.2}×"));
        let target = match (&row.target, row.met) {
            (Some(text), Some(true)) => format!("{text} met"),
            (Some(text), _) => format!("{text} MISSED"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:<11} {:<46} {:>9.1} {:>9} {:>9} {:>9}  {:>7}  {}\n",
            row.section, row.name, row.value, p95, p99, row.unit, ratio, target
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 95.0), Some(95.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_sorts_before_ranking() {
        let samples = [30, 10, 20].map(Duration::from_millis);
        let summary = Summary::of(&samples).unwrap_or_else(|| panic!("no summary"));
        assert_eq!(summary.p50_ms, 20.0);
        assert_eq!(summary.min_ms, 10.0);
        assert_eq!(summary.max_ms, 30.0);
    }
}
