//! The node's metrics in the Prometheus text format (`GET /metrics` on the admin
//! endpoint), kept with the `prometheus-client` crate.
//!
//! Totals count what the service did since start (publishes, deliveries, acks, defers,
//! discards, replays, refused requests by operation and reason); gauges are read from the
//! node and its backend when scraped (sessions, subscriptions, in-flight, ready and
//! deferred events, store size); the embedded backend adds its commit latency and batch
//! size histograms.
//!
//! Per queue (recipient app, event name), computed at scrape time when the backend counts
//! per queue (the embedded one does) and `metrics_queue_limit` is not 0:
//! `ensync_queue_ready_events`, `ensync_queue_held_events` (in flight on this node) and
//! `ensync_queue_deferred_events`, labelled `app` (the recipient app's name, or the first
//! [`KEY_PREFIX_LEN`] characters of its public key when no app has that key) and `event`;
//! at most `metrics_queue_limit` queues, those with the most ready events, and
//! `ensync_queues_left_out` counts the queues not shown.

use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, gauge::ConstGauge};
use prometheus_client::registry::Registry;

/// Characters of a recipient's public key that label its queues when no app has the key.
pub const KEY_PREFIX_LEN: usize = 8;

/// One queue's row of the per-queue gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRow {
    /// The `app` label: the recipient app's name (or a key prefix).
    pub app: String,
    /// The `event` label: the event name.
    pub event: String,
    /// Events ready for delivery.
    pub ready: u64,
    /// Events held: handed to a session of this node, not yet settled.
    pub held: u64,
    /// Deferred events waiting for their time.
    pub deferred: u64,
}

/// The per-queue gauges at one moment: the rows shown and how many queues were left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueReport {
    /// The queues shown.
    pub rows: Vec<QueueRow>,
    /// Queues not shown (beyond the limit).
    pub left_out: u64,
}

impl QueueReport {
    /// At most `limit` of `rows` (the ones with the most ready events; ties: most held,
    /// then most deferred, then by labels, so the choice does not flap between scrapes),
    /// rows with the same labels added up.
    pub fn capped(rows: impl IntoIterator<Item = QueueRow>, limit: usize) -> Self {
        let mut merged: std::collections::BTreeMap<(String, String), QueueRow> =
            std::collections::BTreeMap::new();
        for row in rows {
            match merged.entry((row.app.clone(), row.event.clone())) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(row);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let r = o.get_mut();
                    r.ready = r.ready.saturating_add(row.ready);
                    r.held = r.held.saturating_add(row.held);
                    r.deferred = r.deferred.saturating_add(row.deferred);
                }
            }
        }
        let mut rows: Vec<QueueRow> = merged.into_values().collect();
        rows.sort_by(|a, b| {
            (b.ready, b.held, b.deferred)
                .cmp(&(a.ready, a.held, a.deferred))
                .then_with(|| (&a.app, &a.event).cmp(&(&b.app, &b.event)))
        });
        let left_out = rows.len().saturating_sub(limit) as u64;
        rows.truncate(limit);
        Self { rows, left_out }
    }
}

/// A label value as the text format wants it: `\`, `"` and line feeds escaped (the
/// encoder writes label values as given; app and event names may hold any of them).
fn label_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes the [`QueueReport`] of the scrape in progress (nothing when there is none).
#[derive(Debug, Default)]
struct QueueCollector {
    now: Arc<Mutex<Option<QueueReport>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Which count of a row a gauge shows.
type RowValue = fn(&QueueRow) -> u64;

impl Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let now = lock(&self.now);
        let Some(report) = now.as_ref() else {
            return Ok(());
        };
        let labels: Vec<[(&str, String); 2]> = report
            .rows
            .iter()
            .map(|r| {
                [
                    ("app", label_value(&r.app)),
                    ("event", label_value(&r.event)),
                ]
            })
            .collect();
        let gauges: [(&str, &str, RowValue); 3] = [
            (
                "queue_ready_events",
                "Events ready for delivery, per queue (the queues with the most)",
                |r| r.ready,
            ),
            (
                "queue_held_events",
                "Events in flight on this node (handed out, not yet settled), per queue",
                |r| r.held,
            ),
            (
                "queue_deferred_events",
                "Deferred events waiting for their time, per queue",
                |r| r.deferred,
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (row, labels) in report.rows.iter().zip(&labels) {
                let sample = family.encode_family(labels)?;
                ConstGauge::new(gauge_value(value(row))).encode(sample)?;
            }
        }
        let left_out = encoder.encode_descriptor(
            "queues_left_out",
            "Queues not shown per queue (beyond metrics_queue_limit)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(gauge_value(report.left_out)).encode(left_out)?;
        Ok(())
    }
}

/// Labels of a refused request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refusal {
    /// The operation (`connect`, `publish`, `subscribe`, `ack`, ...).
    pub op: &'static str,
    /// Why (`invalid`, `forbidden`, `not_authenticated`, ...).
    pub reason: &'static str,
}

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    /// Events accepted (durable).
    pub publishes: Counter,
    /// Events handed to a subscription stream.
    pub deliveries: Counter,
    /// Acknowledged events.
    pub acks: Counter,
    /// Deferred events.
    pub defers: Counter,
    /// Discarded events.
    pub discards: Counter,
    /// Replayed events.
    pub replays: Counter,
    /// Sessions opened.
    pub connects: Counter,
    /// Subscriptions opened.
    pub subscribes: Counter,
    /// Refused requests by operation and reason.
    pub refused: Family<Refusal, Counter>,
    apps: Gauge,
    sessions: Gauge,
    subscriptions: Gauge,
    in_flight: Gauge,
    ready: Gauge,
    deferred: Gauge,
    store_bytes: Gauge,
    commits: Gauge,
    /// Seconds per durable commit (embedded backend).
    pub commit_seconds: Histogram,
    /// Writes per durable commit (embedded backend).
    pub commit_batch: Histogram,
    /// The per-queue report of the scrape in progress.
    queues: Arc<Mutex<Option<QueueReport>>>,
    /// One scrape at a time (the gauges and the queue report are set for it).
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ensync");
        let m = Metrics {
            publishes: Counter::default(),
            deliveries: Counter::default(),
            acks: Counter::default(),
            defers: Counter::default(),
            discards: Counter::default(),
            replays: Counter::default(),
            connects: Counter::default(),
            subscribes: Counter::default(),
            refused: Family::default(),
            apps: Gauge::default(),
            sessions: Gauge::default(),
            subscriptions: Gauge::default(),
            in_flight: Gauge::default(),
            ready: Gauge::default(),
            deferred: Gauge::default(),
            store_bytes: Gauge::default(),
            commits: Gauge::default(),
            // 50 µs .. ~1.6 s
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            // 1 .. 1024 writes
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            registry: Registry::default(),
            queues: Arc::default(),
            scrape: Mutex::new(()),
        };
        let r = &mut registry;
        r.register(
            "publishes",
            "Events accepted (durable)",
            m.publishes.clone(),
        );
        r.register(
            "deliveries",
            "Events handed to subscription streams",
            m.deliveries.clone(),
        );
        r.register("acks", "Acknowledged events", m.acks.clone());
        r.register("defers", "Deferred events", m.defers.clone());
        r.register("discards", "Discarded events", m.discards.clone());
        r.register("replays", "Replayed events", m.replays.clone());
        r.register("connects", "Sessions opened", m.connects.clone());
        r.register("subscribes", "Subscriptions opened", m.subscribes.clone());
        r.register(
            "refused_requests",
            "Requests refused, by operation and reason",
            m.refused.clone(),
        );
        r.register(
            "apps",
            "Apps the node accepts: the config file's and the admin API's",
            m.apps.clone(),
        );
        r.register("sessions", "Live sessions", m.sessions.clone());
        r.register(
            "subscriptions",
            "Open subscriptions",
            m.subscriptions.clone(),
        );
        r.register(
            "in_flight_events",
            "Events handed out and not yet settled",
            m.in_flight.clone(),
        );
        r.register(
            "ready_events",
            "Events waiting in queues, ready for delivery",
            m.ready.clone(),
        );
        r.register(
            "deferred_events",
            "Deferred events waiting for their time",
            m.deferred.clone(),
        );
        r.register(
            "store_bytes",
            "Size of the store file in bytes",
            m.store_bytes.clone(),
        );
        r.register(
            "store_commits",
            "Durable commits since start",
            m.commits.clone(),
        );
        r.register(
            "commit_seconds",
            "Time of one durable commit (fsync included)",
            m.commit_seconds.clone(),
        );
        r.register(
            "commit_batch_writes",
            "Writes committed in one durable commit",
            m.commit_batch.clone(),
        );
        r.register_collector(Box::new(QueueCollector {
            now: m.queues.clone(),
        }));
        Metrics { registry, ..m }
    }
}

/// The gauges' values at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Apps (access keys) the node accepts.
    pub apps: u64,
    /// Live sessions.
    pub sessions: u64,
    /// Open subscriptions.
    pub subscriptions: u64,
    /// Events in flight.
    pub in_flight: u64,
    /// Ready events.
    pub ready: u64,
    /// Deferred events.
    pub deferred: u64,
    /// Store file size.
    pub store_bytes: u64,
    /// Durable commits.
    pub commits: u64,
}

impl Metrics {
    /// Counts a refused request.
    pub fn refuse(&self, op: &'static str, reason: &'static str) {
        self.refused.get_or_create(&Refusal { op, reason }).inc();
    }

    /// Everything in the Prometheus text format, with the gauges set from `now` and the
    /// per-queue gauges from `queues` (none when `None`).
    pub fn encode(&self, now: Snapshot, queues: Option<QueueReport>) -> String {
        let _one_at_a_time = lock(&self.scrape);
        let set = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&self.apps, now.apps);
        set(&self.sessions, now.sessions);
        set(&self.subscriptions, now.subscriptions);
        set(&self.in_flight, now.in_flight);
        set(&self.ready, now.ready);
        set(&self.deferred, now.deferred);
        set(&self.store_bytes, now.store_bytes);
        set(&self.commits, now.commits);
        *lock(&self.queues) = queues;
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        lock(&self.queues).take();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_are_in_the_text() {
        let m = Metrics::default();
        m.publishes.inc();
        m.publishes.inc();
        m.refuse("publish", "forbidden");
        m.commit_batch.observe(3.0);
        let text = m.encode(
            Snapshot {
                apps: 2,
                sessions: 4,
                ready: 7,
                ..Snapshot::default()
            },
            None,
        );
        assert!(text.contains("ensync_publishes_total 2"), "{text}");
        assert!(
            text.contains(r#"ensync_refused_requests_total{op="publish",reason="forbidden"} 1"#),
            "{text}"
        );
        assert!(text.contains("ensync_apps 2"), "{text}");
        assert!(text.contains("ensync_sessions 4"), "{text}");
        assert!(text.contains("ensync_ready_events 7"), "{text}");
        assert!(
            text.contains("ensync_commit_batch_writes_count 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    fn row(app: &str, event: &str, ready: u64, held: u64, deferred: u64) -> QueueRow {
        QueueRow {
            app: app.into(),
            event: event.into(),
            ready,
            held,
            deferred,
        }
    }

    #[test]
    fn the_cap_keeps_the_most_ready_queues_and_counts_the_rest() {
        let rows = vec![
            row("a", "x", 1, 0, 0),
            row("a", "y", 5, 0, 0),
            row("b", "x", 1, 2, 0),
            row("c", "z", 0, 0, 9),
            row("a", "y", 1, 1, 1),
        ];
        let report = QueueReport::capped(rows.clone(), 2);
        // Same labels add up; ties on ready go to the most held.
        assert_eq!(
            report.rows,
            vec![row("a", "y", 6, 1, 1), row("b", "x", 1, 2, 0)]
        );
        assert_eq!(report.left_out, 2);
        let all = QueueReport::capped(rows, 10);
        assert_eq!(all.rows.len(), 4);
        assert_eq!(all.left_out, 0);
        assert_eq!(QueueReport::capped(Vec::new(), 0), QueueReport::default());
    }

    #[test]
    fn per_queue_gauges_only_when_reported_and_with_escaped_labels() {
        let m = Metrics::default();
        let text = m.encode(Snapshot::default(), None);
        assert!(!text.contains("ensync_queue_"), "{text}");
        assert!(!text.contains("ensync_queues_left_out"), "{text}");
        let report = QueueReport {
            rows: vec![row("say \"hi\"\\", "a/b", 3, 2, 1)],
            left_out: 4,
        };
        let text = m.encode(Snapshot::default(), Some(report));
        for line in [
            r#"ensync_queue_ready_events{app="say \"hi\"\\",event="a/b"} 3"#,
            r#"ensync_queue_held_events{app="say \"hi\"\\",event="a/b"} 2"#,
            r#"ensync_queue_deferred_events{app="say \"hi\"\\",event="a/b"} 1"#,
            "ensync_queues_left_out 4",
            "# TYPE ensync_queue_ready_events gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in {text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // The report is for one scrape only.
        assert!(
            !m.encode(Snapshot::default(), None)
                .contains("ensync_queue_")
        );
    }
}
