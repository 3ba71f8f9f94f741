//! Result tables: printed as markdown, optionally written as JSON.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// One table of results.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// Heading of the table.
    pub title: String,
    /// Column headings.
    pub columns: Vec<String>,
    /// Rows, one cell per column.
    pub rows: Vec<Vec<String>>,
    /// Lines printed under the table.
    pub notes: Vec<String>,
}

impl Section {
    /// An empty table with these columns.
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Self {
        Section {
            title: title.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a row (cells beyond the columns are kept; missing ones print empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        out += &format!("| {} |\n", self.columns.join(" | "));
        out += &format!("|{}\n", "---|".repeat(self.columns.len()));
        for row in &self.rows {
            let mut cells = row.clone();
            cells.resize(self.columns.len().max(row.len()), String::new());
            out += &format!("| {} |\n", cells.join(" | "));
        }
        for note in &self.notes {
            out += &format!("\n{note}\n");
        }
        out
    }
}

/// Prints every section as markdown and, with `json`, writes them there.
pub fn finish(sections: &[Section], json: Option<&Path>) -> Result<(), crate::nodeproc::BoxError> {
    for s in sections {
        println!("{}", s.markdown());
    }
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(sections)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Latency percentiles of a set of samples.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Percentiles {
    /// Percentiles (nearest rank) of `samples`; all zero when there are none.
    pub fn of(samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1]
        };
        Percentiles {
            count: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[samples.len() - 1],
        }
    }
}

/// A duration for a table: µs below 10 ms, ms above.
pub fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

/// A rate for a table.
pub fn fmt_rate(per_second: f64) -> String {
    if per_second >= 100.0 {
        format!("{per_second:.0}")
    } else {
        format!("{per_second:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, Duration::from_micros(500));
        assert_eq!(p.p99, Duration::from_micros(990));
        assert_eq!(p.p999, Duration::from_micros(999));
        assert_eq!(p.max, Duration::from_micros(1000));
        assert_eq!(Percentiles::of(&mut []).count, 0);
    }

    #[test]
    fn markdown_pads_short_rows() {
        let mut s = Section::new("t", &["a", "b"]);
        s.row(vec!["1".into()]);
        assert_eq!(s.markdown(), "### t\n\n| a | b |\n|---|---|\n| 1 |  |\n");
    }
}
