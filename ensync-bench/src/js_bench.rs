//! The JetStream backend beside the embedded one, in the same run (issue 15): durable
//! publishes/s, end-to-end `conc64-1k` events/s, and what a publisher and a subscriber
//! see when the NATS server leading the stream is killed.
//!
//! The bench starts a 3-server NATS cluster on loopback (`nats-server` from
//! `--nats-server`, env `ENSYNC_NATS_SERVER` or the workspace's `.venv`, as
//! scripts/python-env.sh installs it), `sync_interval: always`, 3 replicas: an event is
//! answered as stored once two of the three servers have it on disk. Every node runs
//! in its own process (`serve-node`), each JetStream node on a stream of its own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ensync_client::PublishOptions;
use ensync_node::config::StoreKind;
use ensync_node::dev::DevSetup;
use serde::Serialize;

use crate::node_bench::{Bench, Publishers};
use crate::nodeproc::{BoxError, NodeProcess};
use crate::report::{Percentiles, Section, fmt_duration, fmt_rate};

#[path = "../../ensync-node/tests/common/nats.rs"]
mod nats;

/// Arguments of `ensync-bench jetstream`.
#[derive(clap::Args, Debug)]
pub struct JetStreamArgs {
    /// Shorter runs (smoke check of the harness; the numbers mean little).
    #[arg(long)]
    pub quick: bool,
    /// The `nats-server` binary (default: $ENSYNC_NATS_SERVER, then the workspace's
    /// `.venv/bin/nats-server`).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Seconds of each publish-throughput row.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the JetStream benchmarks.
pub fn run(args: &JetStreamArgs) -> Result<(), BoxError> {
    let binary = match &args.nats_server {
        Some(p) if p.is_file() => p.clone(),
        Some(p) => return Err(format!("--nats-server {}: no such file", p.display()).into()),
        None => nats::binary().ok_or(
            "no nats-server: pass --nats-server, set ENSYNC_NATS_SERVER or run \
             scripts/python-env.sh (it installs .venv/bin/nats-server)",
        )?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    eprintln!("jetstream: starting a 3-server NATS cluster on loopback");
    let mut cluster = runtime.block_on(nats::NatsCluster::start(&binary, 3));
    let mut sections = vec![runtime.block_on(publishes(args, &cluster))?];
    sections.push(end_to_end(args, &cluster)?);
    sections.push(runtime.block_on(leader_kill(args, &mut cluster))?);
    crate::report::finish(&sections, args.json.as_deref())
}

/// A node config on `store` (a stream of its own on `cluster` for JetStream).
fn on_store(setup: &mut DevSetup, jetstream: bool, cluster: &nats::NatsCluster) {
    setup.config.ws_listen = None;
    if jetstream {
        setup.config.store = StoreKind::Jetstream;
        setup.config.jetstream = Some(cluster.jetstream_config(&nats::unique_stream()));
    }
}

fn backend_name(jetstream: bool) -> &'static str {
    if jetstream {
        "JetStream (3 servers, R3)"
    } else {
        "embedded (redb, group commit)"
    }
}

/// Durable publishes/s of 1 KB events over raw gRPC, both backends, 1 and 64 in flight.
async fn publishes(args: &JetStreamArgs, cluster: &nats::NatsCluster) -> Result<Section, BoxError> {
    let seconds = if args.quick { 2 } else { args.seconds };
    let mut section = Section::new(
        format!("Durable publishes/s by backend, 1 KB events ({seconds} s per row)"),
        &[
            "backend",
            "in flight",
            "events/s",
            "latency p50",
            "latency p99",
            "node CPU",
            "failed",
        ],
    );
    for jetstream in [false, true] {
        for concurrency in [1usize, 64] {
            eprintln!(
                "jetstream: publishes on {}, {concurrency} in flight, {seconds} s",
                backend_name(jetstream)
            );
            let mut bench = Bench::new(true, None)?;
            on_store(&mut bench.setup, jetstream, cluster);
            let node = bench.spawn()?;
            let conns = if concurrency == 1 { 1 } else { 4 };
            let publishers = Publishers::connect(&node, &bench, conns).await?;
            let cpu0 = node.cpu_time().unwrap_or_default();
            let started = Instant::now();
            let stop = started + Duration::from_secs(seconds);
            let (n, failed, mut samples) = publishers
                .run(
                    concurrency,
                    Arc::new(move |_| Instant::now() < stop),
                    None,
                    true,
                )
                .await?;
            let secs = started.elapsed().as_secs_f64();
            let cpu = node.cpu_time().unwrap_or_default().saturating_sub(cpu0);
            drop(publishers);
            drop(node);
            let lat = Percentiles::of(&mut samples);
            section.row(vec![
                backend_name(jetstream).into(),
                concurrency.to_string(),
                fmt_rate(n as f64 / secs),
                fmt_duration(lat.p50),
                fmt_duration(lat.p99),
                format!("{:.0} %", 100.0 * cpu.as_secs_f64() / secs),
                failed.to_string(),
            ]);
        }
    }
    section.notes.push(
        "Raw gRPC publishers (no client crypto), 4 HTTP/2 connections for 64 in flight. \
         Embedded: answered after the group commit's fdatasync. JetStream: answered after \
         the stream's ack, i.e. once a majority of the 3 servers has the event \
         (`sync_interval: always`). node CPU is the ensync node process only; the NATS \
         servers share the same 2 cores."
            .into(),
    );
    Ok(section)
}

/// `conc64-1k` end to end on the tokio and h2 adapters against a node of each backend.
fn end_to_end(args: &JetStreamArgs, cluster: &nats::NatsCluster) -> Result<Section, BoxError> {
    let mut section = Section::new(
        "End to end by backend: conc64-1k (64 publishes in flight, 1 KB, 1 recipient, auto-ack)",
        &[
            "backend",
            "adapter",
            "published",
            "delivered",
            "events/s",
            "p50",
            "p99",
            "client CPU/delivery",
            "node CPU/delivery",
        ],
    );
    for jetstream in [false, true] {
        let mut dev = DevSetup::generate(2)?;
        on_store(&mut dev, jetstream, cluster);
        let node = NodeProcess::spawn(&dev.config)?;
        for adapter in ["tokio", "h2"] {
            eprintln!(
                "jetstream: e2e conc64-1k, {adapter} on {}",
                backend_name(jetstream)
            );
            let s =
                crate::e2e::run_scenario_on(adapter, &node, &dev, "conc64-1k", args.quick, 4.0)?;
            if let Some(e) = &s.error {
                section.row(vec![
                    backend_name(jetstream).into(),
                    adapter.into(),
                    format!("error: {e}"),
                ]);
                continue;
            }
            let per = |cpu: Option<Duration>| match cpu {
                Some(cpu) if s.delivered > 0 => fmt_duration(cpu / s.delivered as u32),
                _ => "-".into(),
            };
            section.row(vec![
                backend_name(jetstream).into(),
                adapter.into(),
                s.published.to_string(),
                s.delivered.to_string(),
                fmt_rate(s.rate),
                fmt_duration(s.latency.p50),
                fmt_duration(s.latency.p99),
                per(s.client_cpu),
                per(s.node_cpu),
            ]);
        }
    }
    section.notes.push(
        "The same scenario as the e2e table's conc64-1k, one node process per backend; \
         the clients, the node and (for JetStream) the 3 NATS servers share the 2 cores."
            .into(),
    );
    Ok(section)
}

#[derive(Serialize)]
struct Seq {
    seq: u64,
}

/// Publish results and deliveries of the leader-kill run, in ns since its start.
#[derive(Default)]
struct Timeline {
    /// (completed at, ok) per publish, in completion order.
    publishes: Vec<(u64, bool)>,
    /// (at, seq) per delivery.
    deliveries: Vec<(u64, u64)>,
}

/// The longest gap between consecutive times in `times` (sorted), within `[from, to]`,
/// and where it started.
fn longest_gap(times: &[u64], from: u64, to: u64) -> (Duration, u64) {
    let mut best = (0, from);
    let mut prev = from;
    for &t in times.iter().filter(|&&t| t >= from && t <= to) {
        if t - prev > best.0 {
            best = (t - prev, prev);
        }
        prev = t;
    }
    if to > prev && to - prev > best.0 {
        best = (to - prev, prev);
    }
    (Duration::from_nanos(best.0), best.1)
}

/// Paced publishes (SDK, tokio) to a subscriber on a JetStream node; the NATS server
/// leading the stream is SIGKILLed a few seconds in. Reports the longest stall of
/// publishes and of deliveries, failed publishes, and that nothing published was lost.
async fn leader_kill(
    args: &JetStreamArgs,
    cluster: &mut nats::NatsCluster,
) -> Result<Section, BoxError> {
    let (rate, before, after) = if args.quick {
        (200u64, Duration::from_secs(2), Duration::from_secs(8))
    } else {
        (500u64, Duration::from_secs(3), Duration::from_secs(15))
    };
    let mut dev = DevSetup::generate(2)?;
    on_store(&mut dev, true, cluster);
    let stream = dev
        .config
        .jetstream
        .as_ref()
        .map(|j| j.stream.clone())
        .unwrap_or_default();
    let node = NodeProcess::spawn(&dev.config)?;
    let url = format!("grpc://{}", node.grpc_addr);
    let publisher = crate::e2e::connect("tokio", &url, None, &dev.apps[0]).await?;
    let receiver = crate::e2e::connect("tokio", &url, None, &dev.apps[1]).await?;
    let event = "bench/leader-kill";
    let base = Instant::now();
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let mut sub = receiver.subscribe(event).await?;
    {
        let timeline = timeline.clone();
        sub.on(move |e| {
            let at = base.elapsed().as_nanos() as u64;
            if let Some(seq) = e.payload.get("seq").and_then(|s| s.as_u64()) {
                if let Ok(mut t) = timeline.lock() {
                    t.deliveries.push((at, seq));
                }
            }
            async {}
        });
    }
    let leader = stream_leader(cluster, &stream).await?;
    eprintln!(
        "jetstream: leader kill: {rate} publishes/s for {:?}, then SIGKILL of {leader} (leads the \
         stream), then {:?} more",
        before, after
    );
    let index: usize = leader
        .strip_prefix('n')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("unexpected server name {leader:?}"))?;

    let to: Arc<str> = Arc::from(dev.apps[1].public_key.as_str());
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let total = before + after;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let ok_seqs = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let mut killed_at = None;
    let mut skipped = 0u64;
    let mut seq = 0u64;
    let publisher = Arc::new(publisher);
    while base.elapsed() < total {
        if killed_at.is_none() && base.elapsed() >= before {
            cluster.kill(index);
            killed_at = Some(base.elapsed());
        }
        let due = interval * seq as u32;
        let now = base.elapsed();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        seq += 1;
        // A bounded number in flight: past it, a publish that is due is skipped (and
        // counted), as a paced producer with a bounded buffer would.
        if in_flight.load(Ordering::Relaxed) >= 1024 {
            skipped += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (publisher, timeline, in_flight, ok_seqs, to) = (
            publisher.clone(),
            timeline.clone(),
            in_flight.clone(),
            ok_seqs.clone(),
            to.clone(),
        );
        let s = seq;
        tasks.push(tokio::spawn(async move {
            let r = publisher
                .publish_with(event, &[&*to], &Seq { seq: s }, PublishOptions::default())
                .await;
            let at = base.elapsed().as_nanos() as u64;
            if let Ok(mut t) = timeline.lock() {
                t.publishes.push((at, r.is_ok()));
            }
            if r.is_ok() {
                if let Ok(mut v) = ok_seqs.lock() {
                    v.push(s);
                }
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let published_end = base.elapsed();
    // Drain: everything published must arrive (at most ack_wait after the leader's
    // replacement for what was in flight to the subscriber).
    let ok: Vec<u64> = ok_seqs.lock().map(|v| v.clone()).unwrap_or_default();
    let drain_until = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: std::collections::HashSet<u64> = timeline
            .lock()
            .map(|t| t.deliveries.iter().map(|d| d.1).collect())
            .unwrap_or_default();
        if ok.iter().all(|s| delivered.contains(s)) || Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = sub.unsubscribe().await;
    let _ = publisher.close().await;
    let _ = receiver.close().await;
    drop(node);
    // The cluster is whole again for whatever runs next.
    cluster.restart(index).await;

    let t = timeline.lock().map_err(|_| "timeline poisoned")?;
    let killed_ns = killed_at.unwrap_or_default().as_nanos() as u64;
    let end_ns = published_end.as_nanos() as u64;
    let mut ok_times: Vec<u64> = t.publishes.iter().filter(|p| p.1).map(|p| p.0).collect();
    ok_times.sort_unstable();
    let mut delivery_times: Vec<u64> = t.deliveries.iter().map(|d| d.0).collect();
    delivery_times.sort_unstable();
    let from = killed_ns.saturating_sub(1_000_000_000);
    let (pub_gap, pub_gap_at) = longest_gap(&ok_times, from, end_ns);
    let (del_gap, del_gap_at) = longest_gap(&delivery_times, from, end_ns);
    let failed = t.publishes.iter().filter(|p| !p.1).count();
    let delivered: std::collections::HashSet<u64> = t.deliveries.iter().map(|d| d.1).collect();
    let lost = ok.iter().filter(|s| !delivered.contains(s)).count();
    let duplicates = t.deliveries.len() - delivered.len();
    let rel = |at: u64| (at as f64 - killed_ns as f64) / 1e9;

    let mut section = Section::new(
        format!(
            "Killing the NATS server that leads the stream ({rate} publishes/s, SDK on tokio, \
             auto-ack subscriber)"
        ),
        &["measure", "value"],
    );
    section.row(vec![
        "publishes attempted".into(),
        t.publishes.len().to_string(),
    ]);
    section.row(vec![
        "publishes answered success".into(),
        ok.len().to_string(),
    ]);
    section.row(vec![
        "publishes answered with an error (not stored: the app may retry)".into(),
        failed.to_string(),
    ]);
    section.row(vec![
        "publishes skipped (1 024 already in flight)".into(),
        skipped.to_string(),
    ]);
    section.row(vec![
        "**longest stall of successful publishes**".into(),
        format!(
            "**{:.2} s** (from {:+.2} s after the kill)",
            pub_gap.as_secs_f64(),
            rel(pub_gap_at)
        ),
    ]);
    section.row(vec![
        "**longest stall of deliveries**".into(),
        format!(
            "**{:.2} s** (from {:+.2} s after the kill)",
            del_gap.as_secs_f64(),
            rel(del_gap_at)
        ),
    ]);
    section.row(vec![
        "lost (answered success, never delivered)".into(),
        lost.to_string(),
    ]);
    section.row(vec![
        "delivered twice or more (at-least-once)".into(),
        duplicates.to_string(),
    ]);
    section.notes.push(format!(
        "Server {leader} led the stream and was SIGKILLed {:.1} s in; the other two elect a \
         new leader. A stall is the longest time without a successful publish answer \
         (resp. a delivery), from 1 s before the kill to the end of publishing.",
        killed_at.unwrap_or_default().as_secs_f64()
    ));
    Ok(section)
}

/// The name of the server leading `stream` (`n0`, `n1`, ...), from JetStream itself.
async fn stream_leader(cluster: &nats::NatsCluster, stream: &str) -> Result<String, BoxError> {
    let servers = cluster
        .urls()
        .iter()
        .map(|u| u.parse())
        .collect::<Result<Vec<async_nats::ServerAddr>, _>>()?;
    let client = async_nats::ConnectOptions::new()
        .connect(servers.as_slice())
        .await?;
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = js.get_stream(stream).await?;
        let info = s.info().await?;
        if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
            return Ok(leader);
        }
        if Instant::now() >= deadline {
            return Err(format!("stream {stream} has no leader after 10 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
