//! The node alone: durable publishes/s with group commit vs one commit per event, and
//! the node's peak RSS while a backlog of 1 KB events is queued.
//!
//! Every scenario runs a fresh node in a child process (`serve-node`) on a temporary
//! data directory (`TMPDIR`, which must be on a real disk for the fsyncs to mean
//! anything) and publishes to it over raw tonic (no client-side crypto: the payload is
//! 1 KB of base64 text, as an encrypted envelope would be). The publisher app sends to a
//! second app that never subscribes, so every event stays queued.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ensync_node::dev::DevSetup;
use ensync_node::rpc::en_sync_service_client::EnSyncServiceClient;
use ensync_proto::wire;
use tonic::transport::{Channel, Endpoint};

use crate::nodeproc::{BoxError, FinalStats, NodeProcess};
use crate::report::{Percentiles, Section, fmt_duration, fmt_rate};

/// Arguments of `ensync-bench node`.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// Shorter runs (smoke check of the harness; the numbers mean little).
    #[arg(long)]
    pub quick: bool,
    /// Events queued for the memory measurement.
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent in-flight publishes of the concurrent throughput rows.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Concurrent in-flight publishes while filling the backlog.
    #[arg(long, default_value_t = 256)]
    pub backlog_concurrency: usize,
    /// HTTP/2 connections the concurrent publishers share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// The node's `store_cache_bytes`, in MiB (default: the node's default).
    #[arg(long)]
    pub cache_mib: Option<usize>,
    /// Only the throughput part.
    #[arg(long, conflicts_with = "only_backlog")]
    pub only_throughput: bool,
    /// Only the backlog (memory) part.
    #[arg(long)]
    pub only_backlog: bool,
}

/// Runs the node benchmarks.
pub fn run(args: &NodeArgs) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut sections = Vec::new();
    if !args.only_backlog {
        sections.push(runtime.block_on(throughput(args))?);
    }
    if !args.only_throughput {
        let (memory, space) = runtime.block_on(backlog(args))?;
        sections.push(memory);
        sections.push(space);
    }
    crate::report::finish(&sections, args.json.as_deref())
}

/// 1 KB of envelope text: base64 of 768 bytes.
fn payload() -> String {
    let bytes: Vec<u8> = (0..768u32).map(|i| (i * 31 % 251) as u8).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A node on a fresh data directory with two generated apps (publisher, recipient).
pub(crate) struct Bench {
    /// The node's config and apps.
    pub setup: DevSetup,
}

impl Bench {
    pub(crate) fn new(group_commit: bool, cache_mib: Option<usize>) -> Result<Self, BoxError> {
        let mut setup = DevSetup::generate(2)?;
        setup.config.ws_listen = None;
        setup.config.group_commit = group_commit;
        if let Some(mib) = cache_mib {
            setup.config.store_cache_bytes = mib * 1024 * 1024;
        }
        Ok(Bench { setup })
    }

    pub(crate) fn spawn(&self) -> Result<NodeProcess, BoxError> {
        NodeProcess::spawn(&self.setup.config)
    }
}

/// Publishers on `connections` HTTP/2 connections of one session.
pub(crate) struct Publishers {
    clients: Vec<EnSyncServiceClient<Channel>>,
    client_id: String,
    to: String,
    payload: String,
}

impl Publishers {
    pub(crate) async fn connect(
        node: &NodeProcess,
        bench: &Bench,
        connections: usize,
    ) -> Result<Self, BoxError> {
        let mut clients = Vec::new();
        for _ in 0..connections.max(1) {
            let channel = Endpoint::from_shared(format!("http://{}", node.grpc_addr))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            clients.push(EnSyncServiceClient::new(channel));
        }
        let client_id = clients[0]
            .connect(wire::ConnectRequest {
                access_key: bench.setup.apps[0].access_key.clone(),
            })
            .await?
            .into_inner()
            .client_id;
        Ok(Publishers {
            clients,
            client_id,
            to: bench.setup.apps[1].public_key.clone(),
            payload: payload(),
        })
    }

    /// Runs `concurrency` publish loops; each takes tickets from `tickets` until
    /// `more(ticket)` is false. Returns (published, failed, latencies of the successful
    /// publishes when `latencies`).
    pub(crate) async fn run(
        &self,
        concurrency: usize,
        more: Arc<dyn Fn(u64) -> bool + Send + Sync>,
        progress: Option<u64>,
        latencies: bool,
    ) -> Result<(u64, u64, Vec<Duration>), BoxError> {
        let tickets = Arc::new(AtomicU64::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..concurrency.max(1) {
            let mut client = self.clients[p % self.clients.len()].clone();
            let (tickets, ok, failed, more) =
                (tickets.clone(), ok.clone(), failed.clone(), more.clone());
            let (client_id, to, payload) = (
                self.client_id.clone(),
                self.to.clone(),
                self.payload.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let ticket = tickets.fetch_add(1, Ordering::Relaxed);
                    if !more(ticket) {
                        return samples;
                    }
                    let sent = Instant::now();
                    let r = client
                        .publish_event(wire::PublishEventRequest {
                            client_id: client_id.clone(),
                            event_name: "bench/node".into(),
                            payload: payload.clone(),
                            delivery_to: to.clone(),
                            metadata: "{}".into(),
                            payload_metadata: None,
                        })
                        .await;
                    match r {
                        Ok(r) if r.get_ref().success => {
                            if latencies {
                                samples.push(sent.elapsed());
                            }
                            let n = ok.fetch_add(1, Ordering::Relaxed) + 1;
                            if progress.is_some_and(|every| n % every == 0) {
                                let secs = started.elapsed().as_secs_f64();
                                eprintln!(
                                    "  {n} events published in {secs:.1} s ({:.0}/s)",
                                    n as f64 / secs
                                );
                            }
                        }
                        Ok(r) => {
                            if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("  publish refused: {}", r.get_ref().error_message);
                            }
                        }
                        Err(e) => {
                            if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("  publish failed: {e}");
                            }
                        }
                    }
                }
            }));
        }
        let mut samples = Vec::new();
        for t in tasks {
            samples.extend(t.await?);
        }
        Ok((
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            samples,
        ))
    }
}

/// Durable publishes/s, group commit vs one commit per event.
async fn throughput(args: &NodeArgs) -> Result<Section, BoxError> {
    let seconds = if args.quick { 2 } else { args.seconds };
    let mut section = Section::new(
        format!(
            "Durable publishes/s, 1 KB events ({seconds} s per row, {} HTTP/2 connections)",
            args.connections
        ),
        &[
            "commit mode",
            "in flight",
            "events/s",
            "latency p50",
            "latency p99",
            "commits/s",
            "mean batch",
            "node CPU",
            "failed",
        ],
    );
    for group_commit in [true, false] {
        for concurrency in [1, args.concurrency] {
            let mode = if group_commit {
                "group commit"
            } else {
                "one commit per event"
            };
            eprintln!("throughput: {mode}, {concurrency} in flight, {seconds} s");
            let bench = Bench::new(group_commit, args.cache_mib)?;
            let node = bench.spawn()?;
            let conns = if concurrency == 1 {
                1
            } else {
                args.connections
            };
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
            let lat = Percentiles::of(&mut samples);
            let wall = started.elapsed();
            let cpu = node.cpu_time().unwrap_or_default().saturating_sub(cpu0);
            drop(publishers);
            let stats = node.stop()?;
            let secs = wall.as_secs_f64();
            let rate = n as f64 / secs;
            let (commits_s, batch) = commit_figures(&stats, secs);
            section.row(vec![
                mode.into(),
                concurrency.to_string(),
                fmt_rate(rate),
                fmt_duration(lat.p50),
                fmt_duration(lat.p99),
                commits_s,
                batch,
                format!("{:.0} %", 100.0 * cpu.as_secs_f64() / secs),
                failed.to_string(),
            ]);
        }
    }
    section.notes.push(
        "Every publish is answered once its commit is on disk: redb `Durability::Immediate` \
         (fdatasync per commit) in both modes. Commits and batch sizes are the node's own \
         counters (they include the few commits of session setup); node CPU is the node \
         process's user+system time over the run, 100 % = one core. Latency: publish \
         call to its answer, as the publisher sees it."
            .into(),
    );
    Ok(section)
}

fn commit_figures(stats: &FinalStats, secs: f64) -> (String, String) {
    if stats.commits == 0 {
        return ("-".into(), "-".into());
    }
    (
        fmt_rate(stats.commits as f64 / secs),
        format!("{:.1}", stats.committed_ops as f64 / stats.commits as f64),
    )
}

/// Peak RSS of the node while a backlog is queued, and its restart with that backlog.
/// Also returns where the store's bytes go.
async fn backlog(args: &NodeArgs) -> Result<(Section, Section), BoxError> {
    let n = if args.quick {
        args.backlog.min(20_000)
    } else {
        args.backlog
    };
    let progress = if args.quick { 5_000 } else { 100_000 };
    let bench = Bench::new(true, args.cache_mib)?;
    let cache = bench.setup.config.store_cache_bytes;
    let mut section = Section::new(
        format!(
            "Node memory with {n} queued 1 KB events (store cache {} MiB)",
            cache / (1024 * 1024)
        ),
        &["phase", "value"],
    );
    eprintln!(
        "backlog: publishing {n} events with {} in flight",
        args.backlog_concurrency
    );
    let node = bench.spawn()?;
    let rss_idle = node.rss_kib().unwrap_or(0);
    let publishers = Publishers::connect(&node, &bench, args.connections).await?;
    let started = Instant::now();
    let cpu0 = node.cpu_time().unwrap_or_default();
    let (published, failed, _) = publishers
        .run(
            args.backlog_concurrency,
            Arc::new(move |t| t < n),
            Some(progress),
            false,
        )
        .await?;
    let took = started.elapsed();
    let cpu = node.cpu_time().unwrap_or_default().saturating_sub(cpu0);
    drop(publishers);
    // Let the node settle (its tonic buffers drain) before reading the RSS at rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peak = node.peak_rss_kib().unwrap_or(0);
    let rss_end = node.rss_kib().unwrap_or(0);
    let stats = node.stop()?;
    let disk = dir_size(bench.setup.data_dir());
    let (space, used) = store_space(bench.setup.data_dir(), n)?;

    eprintln!("backlog: restarting the node on the backlog");
    let t0 = Instant::now();
    let node = bench.spawn()?;
    let startup = t0.elapsed();
    let peak_start = node.peak_rss_kib().unwrap_or(0);
    let rss_start = node.rss_kib().unwrap_or(0);
    let after = node.stop()?;

    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    section.row(vec!["node RSS before publishing".into(), mib(rss_idle)]);
    section.row(vec![
        format!("time to publish {published} events"),
        format!(
            "{:.1} s ({:.0} events/s, {} in flight, {failed} failed)",
            took.as_secs_f64(),
            published as f64 / took.as_secs_f64(),
            args.backlog_concurrency
        ),
    ]);
    section.row(vec![
        "node CPU while publishing".into(),
        format!("{:.0} %", 100.0 * cpu.as_secs_f64() / took.as_secs_f64()),
    ]);
    section.row(vec![
        "commits (mean batch)".into(),
        format!(
            "{} ({:.1})",
            stats.commits,
            stats.committed_ops as f64 / stats.commits.max(1) as f64
        ),
    ]);
    section.row(vec![
        "**peak RSS while publishing (VmHWM)**".into(),
        format!("**{}**", mib(peak)),
    ]);
    section.row(vec!["RSS at the end (backlog queued)".into(), mib(rss_end)]);
    section.row(vec![
        "events queued (node's count)".into(),
        stats.ready.to_string(),
    ]);
    section.row(vec![
        "on-disk size (file lengths)".into(),
        format!("{:.1} MiB", disk as f64 / (1024.0 * 1024.0)),
    ]);
    if let Some(used) = used {
        section.row(vec![
            "on-disk size (allocated blocks)".into(),
            format!("{:.1} MiB", used as f64 / (1024.0 * 1024.0)),
        ]);
    }
    section.row(vec![
        "restart: time to ready (loading the queue)".into(),
        format!("{:.2} s", startup.as_secs_f64()),
    ]);
    section.row(vec![
        "restart: peak RSS / RSS when ready".into(),
        format!("{} / {}", mib(peak_start), mib(rss_start)),
    ]);
    section.row(vec![
        "restart: events queued (node's count)".into(),
        after.ready.to_string(),
    ]);
    section.notes.push(format!(
        "Published by {} concurrent publishers over {} HTTP/2 connections to an app that \
         never subscribes; the node runs in its own process; RSS from /proc/PID/status.",
        args.backlog_concurrency, args.connections
    ));
    Ok((section, space))
}

/// Where the store's bytes go after the backlog (the node stopped): redb's counts per
/// table, per event. Returns the table and the store file's allocated bytes.
fn store_space(dir: &Path, events: u64) -> Result<(Section, Option<u64>), BoxError> {
    let store = ensync_node::store::RedbStore::open_with_cache(dir, 32 << 20)?;
    let space = store.space()?;
    drop(store);
    let per = |bytes: u64| format!("{:.0}", bytes as f64 / events.max(1) as f64);
    let page = space.page_size;
    let mut section = Section::new(
        format!("Store file after {events} queued 1 KB events: bytes per event"),
        &[
            "table",
            "entries",
            "stored",
            "pages (leaf + branch)",
            "unused in its pages",
        ],
    );
    let mut in_tables = 0;
    for t in &space.tables {
        let pages = t.leaf_pages + t.branch_pages;
        in_tables += pages;
        section.row(vec![
            t.name.into(),
            t.entries.to_string(),
            per(t.stored_bytes),
            per(pages * page),
            per(t.fragmented_bytes),
        ]);
    }
    section.row(vec![
        "pages in use, all (tables + redb's own + freed, not yet reusable)".into(),
        String::new(),
        String::new(),
        per(space.allocated_pages * page),
        per(space.allocated_pages.saturating_sub(in_tables) * page),
    ]);
    section.row(vec![
        "file length / allocated on disk".into(),
        String::new(),
        String::new(),
        format!(
            "{} / {}",
            per(space.file_bytes),
            space.disk_bytes.map_or("-".into(), per)
        ),
        String::new(),
    ]);
    section.notes.push(format!(
        "redb's own counts (`RedbStore::space`), divided by the {events} events; pages are \
         {page} bytes; \"unused\" is the part of the table's pages holding nothing."
    ));
    Ok((section, space.disk_bytes))
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
