//! The node's metrics in the Prometheus text format (`GET /metrics` on the admin
//! endpoint), kept with the `prometheus-client` crate.
//!
//! Totals count what the service did since start (publishes, deliveries, acks, defers,
//! discards, replays, refused requests by operation and reason); gauges are read from the
//! node and its backend when scraped (sessions, subscriptions, in-flight, ready and
//! deferred events, store size); the embedded backend adds its commit latency and batch
//! size histograms.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
        Metrics { registry, ..m }
    }
}

/// The gauges' values at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
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

    /// Everything in the Prometheus text format, with the gauges set from `now`.
    pub fn encode(&self, now: Snapshot) -> String {
        let set = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&self.sessions, now.sessions);
        set(&self.subscriptions, now.subscriptions);
        set(&self.in_flight, now.in_flight);
        set(&self.ready, now.ready);
        set(&self.deferred, now.deferred);
        set(&self.store_bytes, now.store_bytes);
        set(&self.commits, now.commits);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
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
        let text = m.encode(Snapshot {
            sessions: 4,
            ready: 7,
            ..Snapshot::default()
        });
        assert!(text.contains("ensync_publishes_total 2"), "{text}");
        assert!(
            text.contains(r#"ensync_refused_requests_total{op="publish",reason="forbidden"} 1"#),
            "{text}"
        );
        assert!(text.contains("ensync_sessions 4"), "{text}");
        assert!(text.contains("ensync_ready_events 7"), "{text}");
        assert!(
            text.contains("ensync_commit_batch_writes_count 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
