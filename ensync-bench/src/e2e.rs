//! Publish -> node -> subscriber, for every adapter and the published Python client.
//!
//! One node (a child process, durable group commit, gRPC and WebSocket endpoints) serves
//! every run. Each scenario publishes JSON objects of a given compact size from one
//! publisher client to 1 or 10 recipient apps; each recipient has its own client,
//! subscribed with auto-ack, which decrypts every event. Measured:
//!
//! - **events/s**: deliveries (handler starts) per second, from the first publish call
//!   to the last handler start;
//! - **latency**: from the start of an event's publish call to the start of its
//!   handler, per delivery (p50 / p99 / p999);
//! - the node's CPU time during the scenario.
//!
//! The published Python client (`ensync-sdk` 0.4.4, `scripts/bench_python_e2e.py`) runs
//! the same scenarios against the same node in the same run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ensync_client::{Client, ClientOptions, EngineOptions, PublishOptions};
use ensync_node::dev::{DevApp, DevSetup};
use futures::StreamExt;
use serde::Serialize;

use crate::nodeproc::{BoxError, NodeProcess, process_cpu_time};
use crate::report::{Percentiles, Section, fmt_duration, fmt_rate};

/// Arguments of `ensync-bench e2e`.
#[derive(clap::Args, Debug)]
pub struct E2eArgs {
    /// Shorter runs (smoke check of the harness; the numbers mean little).
    #[arg(long)]
    pub quick: bool,
    /// Adapters to run, comma separated: tokio, h2, blocking, ws, python.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tokio,h2,blocking,ws,python"
    )]
    pub adapters: Vec<String>,
    /// Scenarios to run (ids, comma separated); all when unset.
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// The Python with ensync-sdk 0.4.4 installed (default: $ENSYNC_PYTHON, then
    /// `.venv/bin/python` of the workspace, as built by scripts/python-env.sh).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// The node's `max_in_flight` (unacknowledged events per subscription); the node's
    /// default when unset.
    #[arg(long)]
    pub node_window: Option<usize>,
    /// Longest publishing phase of one scenario, in seconds.
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// How the publisher publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// One publish at a time, each awaited: one publisher at full speed.
    Sequential,
    /// `concurrency` publishes in flight at once.
    Concurrent,
    /// Publishes started at a fixed rate (events/s), each on its own.
    Paced,
}

/// One scenario (also the Python driver's config, serialized as is).
#[derive(Debug, Clone, Serialize)]
struct Scenario {
    id: &'static str,
    #[serde(skip)]
    title: &'static str,
    mode: Mode,
    /// Most events published (the phase also stops after `max_seconds`).
    count: usize,
    concurrency: usize,
    /// Events/s for `Paced`.
    rate: u32,
    payload_bytes: usize,
    recipients: usize,
    max_seconds: f64,
    /// Filled per adapter: the event name.
    event: String,
}

impl Scenario {
    /// The public keys the scenario publishes to: its first `recipients` apps.
    fn recipient_keys<'a>(&self, apps: &'a [DevApp]) -> Vec<&'a str> {
        apps.iter()
            .take(self.recipients)
            .map(|a| a.public_key.as_str())
            .collect()
    }
}

fn scenarios(args: &E2eArgs) -> Vec<Scenario> {
    let (secs, scale) = if args.quick {
        (0.5, 20)
    } else {
        (args.seconds, 1)
    };
    let sc =
        |id, title, mode, count: usize, concurrency, rate, payload_bytes, recipients| Scenario {
            id,
            title,
            mode,
            count: (count / scale).max(10),
            concurrency,
            rate,
            payload_bytes,
            recipients,
            max_seconds: secs,
            event: String::new(),
        };
    let all = vec![
        sc(
            "seq-1k",
            "one publisher at full speed, 1 KB, 1 recipient",
            Mode::Sequential,
            40_000,
            1,
            0,
            1024,
            1,
        ),
        sc(
            "conc64-1k",
            "64 publishes in flight, 1 KB, 1 recipient",
            Mode::Concurrent,
            100_000,
            64,
            0,
            1024,
            1,
        ),
        sc(
            "conc16-64k",
            "16 publishes in flight, 64 KB, 1 recipient",
            Mode::Concurrent,
            20_000,
            16,
            0,
            65_536,
            1,
        ),
        sc(
            "conc64-1k-10r",
            "64 publishes in flight, 1 KB, 10 recipients",
            Mode::Concurrent,
            20_000,
            64,
            0,
            1024,
            10,
        ),
        sc(
            "paced1000-1k",
            "1 000 events/s, 1 KB, 1 recipient",
            Mode::Paced,
            4_000,
            1,
            1000,
            1024,
            1,
        ),
    ];
    all.into_iter()
        .filter(|s| args.scenarios.is_empty() || args.scenarios.iter().any(|id| id == s.id))
        .collect()
}

/// What one adapter achieved in one scenario.
#[derive(Debug, Default)]
struct Outcome {
    published: usize,
    delivered: usize,
    expected: usize,
    elapsed: Duration,
    latency: Percentiles,
    node_cpu: Option<Duration>,
    /// CPU time of the client process(es) (publisher and subscribers) over the scenario.
    client_cpu: Option<Duration>,
    error: Option<String>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.delivered as f64 / self.elapsed.as_secs_f64()
        }
    }
}

/// The payload: a compact JSON object of `payload_bytes` carrying a sequence number.
#[derive(Serialize)]
struct Payload<'a> {
    seq: u64,
    pad: &'a str,
}

/// The padding that makes `{"seq":N,"pad":"…"}` `size` bytes long for a 6-digit `N`
/// (a byte or two off for other N: the same for every adapter).
fn padding(size: usize) -> String {
    let overhead = r#"{"seq":100000,"pad":""}"#.len();
    "x".repeat(size.saturating_sub(overhead))
}

/// Publish times and deliveries of one scenario, shared by publisher and handlers.
struct Recorder {
    base: Instant,
    /// Per sequence number: ns since `base` when its publish call started.
    sent: Vec<AtomicU64>,
    samples: Mutex<Vec<Duration>>,
    delivered: AtomicUsize,
    /// ns since `base` of the last handler start.
    last: AtomicU64,
}

impl Recorder {
    fn new(count: usize) -> Arc<Self> {
        Arc::new(Recorder {
            base: Instant::now(),
            sent: (0..count).map(|_| AtomicU64::new(0)).collect(),
            samples: Mutex::new(Vec::with_capacity(count)),
            delivered: AtomicUsize::new(0),
            last: AtomicU64::new(0),
        })
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn publishing(&self, seq: usize) {
        self.sent[seq].store(self.now_ns(), Ordering::Relaxed);
    }

    /// A handler started for `payload`.
    fn delivered(&self, payload: &serde_json::Value) {
        let now = self.now_ns();
        if let Some(seq) = payload.get("seq").and_then(|s| s.as_u64()) {
            if let Some(sent) = self.sent.get(seq as usize) {
                let latency = now.saturating_sub(sent.load(Ordering::Relaxed));
                if let Ok(mut samples) = self.samples.lock() {
                    samples.push(Duration::from_nanos(latency));
                }
            }
        }
        self.last.fetch_max(now, Ordering::Relaxed);
        self.delivered.fetch_add(1, Ordering::Release);
    }

    fn count(&self) -> usize {
        self.delivered.load(Ordering::Acquire)
    }

    fn outcome(&self, published: usize, expected: usize) -> Outcome {
        let mut samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        Outcome {
            published,
            delivered: self.count(),
            expected,
            elapsed: Duration::from_nanos(self.last.load(Ordering::Relaxed)),
            latency: Percentiles::of(&mut samples),
            node_cpu: None,
            client_cpu: None,
            error: None,
        }
    }
}

/// How long to wait for the last deliveries once publishing stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The apps of the run: app 0 publishes, apps 1..=10 receive.
struct Apps {
    publisher: DevApp,
    recipients: Vec<DevApp>,
}

/// Runs the end-to-end benchmarks.
pub fn run(args: &E2eArgs) -> Result<(), BoxError> {
    let dev = DevSetup::generate(11)?;
    let mut config = dev.config.clone();
    if let Some(window) = args.node_window {
        config.max_in_flight = window;
    }
    let node = NodeProcess::spawn(&config)?;
    let mut apps = dev.apps.clone();
    let publisher = apps.remove(0);
    let apps = Apps {
        publisher,
        recipients: apps,
    };
    let grpc_url = format!("grpc://{}", node.grpc_addr);
    let ws_url = node.ws_addr.map(|a| format!("ws://{a}"));
    let scenarios = scenarios(args);
    eprintln!(
        "node pid {} on {grpc_url}; {} scenarios x {:?}",
        node.pid(),
        scenarios.len(),
        args.adapters
    );

    // results[adapter] = [(scenario, outcome)]
    let mut results: Vec<(String, Vec<(Scenario, Outcome)>)> = Vec::new();
    for adapter in &args.adapters {
        let mut rows = Vec::new();
        let outcomes: Result<Vec<(Scenario, Outcome)>, BoxError> = match adapter.as_str() {
            "tokio" | "h2" | "ws" => run_async_adapter(
                adapter,
                &grpc_url,
                ws_url.as_deref(),
                &apps,
                &scenarios,
                &node,
            ),
            "blocking" => run_blocking(&grpc_url, &apps, &scenarios, &node),
            "python" => run_python(args, &grpc_url, &apps, &scenarios, &node),
            other => {
                Err(format!("unknown adapter {other:?} (tokio, h2, blocking, ws, python)").into())
            }
        };
        match outcomes {
            Ok(o) => rows.extend(o),
            Err(e) => {
                eprintln!("{adapter}: {e}");
                for sc in &scenarios {
                    rows.push((
                        sc.clone(),
                        Outcome {
                            error: Some(e.to_string()),
                            ..Outcome::default()
                        },
                    ));
                }
            }
        }
        results.push((adapter.clone(), rows));
    }
    let node_rss = (node.peak_rss_kib(), node.rss_kib());
    drop(node);

    let sections = tables(&results, &scenarios, node_rss);
    crate::report::finish(&sections, None)?;
    if let Some(path) = &args.json {
        let raw: Vec<serde_json::Value> = results
            .iter()
            .flat_map(|(adapter, rows)| rows.iter().map(move |(sc, o)| raw_result(adapter, sc, o)))
            .collect();
        let doc = serde_json::json!({ "sections": sections, "results": raw });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// What one scenario achieved on one adapter, for other benchmarks (the JetStream
/// comparison runs `conc64-1k` against a node of each backend).
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    /// Publishes that succeeded.
    pub published: usize,
    /// Handler starts.
    pub delivered: usize,
    /// Deliveries per second (see the main table's note).
    pub rate: f64,
    /// Publish-to-handler latency.
    pub latency: Percentiles,
    /// The node's CPU time over the scenario.
    pub node_cpu: Option<Duration>,
    /// This process's CPU time (the clients) over the scenario.
    pub client_cpu: Option<Duration>,
    /// The scenario's first error.
    pub error: Option<String>,
}

/// Runs scenario `id` (see [`scenarios`]) once on the async `adapter` against `node`,
/// whose apps are `dev`'s (app 0 publishes, the others receive).
pub(crate) fn run_scenario_on(
    adapter: &str,
    node: &NodeProcess,
    dev: &DevSetup,
    id: &str,
    quick: bool,
    seconds: f64,
) -> Result<Summary, BoxError> {
    let args = E2eArgs {
        quick,
        adapters: vec![adapter.to_owned()],
        scenarios: vec![id.to_owned()],
        python: None,
        node_window: None,
        seconds,
        json: None,
    };
    let scenarios = scenarios(&args);
    if scenarios.is_empty() {
        return Err(format!("no scenario {id:?}").into());
    }
    let mut apps = dev.apps.clone();
    if apps.len() < 2 {
        return Err("a scenario needs a publisher and a recipient app".into());
    }
    let publisher = apps.remove(0);
    let apps = Apps {
        publisher,
        recipients: apps,
    };
    let grpc_url = format!("grpc://{}", node.grpc_addr);
    let ws_url = node.ws_addr.map(|a| format!("ws://{a}"));
    let (_, o) = run_async_adapter(
        adapter,
        &grpc_url,
        ws_url.as_deref(),
        &apps,
        &scenarios,
        node,
    )?
    .pop()
    .ok_or("the scenario did not run")?;
    Ok(Summary {
        published: o.published,
        delivered: o.delivered,
        rate: o.rate(),
        latency: o.latency,
        node_cpu: o.node_cpu,
        client_cpu: o.client_cpu,
        error: o.error,
    })
}

/// One adapter's result in one scenario, as numbers (the JSON's `results`).
fn raw_result(adapter: &str, sc: &Scenario, o: &Outcome) -> serde_json::Value {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    serde_json::json!({
        "adapter": adapter,
        "scenario": sc.id,
        "published": o.published,
        "delivered": o.delivered,
        "expected": o.expected,
        "events_per_second": o.rate(),
        "p50_us": us(o.latency.p50),
        "p99_us": us(o.latency.p99),
        "p999_us": us(o.latency.p999),
        "max_us": us(o.latency.max),
        "client_cpu_us": o.client_cpu.map(us),
        "node_cpu_us": o.node_cpu.map(us),
        "error": o.error,
    })
}

fn tables(
    results: &[(String, Vec<(Scenario, Outcome)>)],
    scenarios: &[Scenario],
    (node_peak_kib, node_rss_kib): (Option<u64>, Option<u64>),
) -> Vec<Section> {
    let mut main = Section::new(
        "End to end: publish -> node -> decrypted in the subscriber's handler (auto-ack)",
        &[
            "scenario",
            "adapter",
            "published",
            "delivered",
            "events/s",
            "p50",
            "p99",
            "p999",
            "max",
            "client CPU/delivery",
            "node CPU/delivery",
        ],
    );
    for sc in scenarios {
        for (adapter, rows) in results {
            let Some((_, o)) = rows.iter().find(|(s, _)| s.id == sc.id) else {
                continue;
            };
            if let Some(e) = &o.error {
                main.row(vec![sc.id.into(), adapter.clone(), format!("error: {e}")]);
                continue;
            }
            let lost = if o.delivered < o.expected {
                format!(" (of {})", o.expected)
            } else {
                String::new()
            };
            main.row(vec![
                sc.id.into(),
                adapter.clone(),
                o.published.to_string(),
                format!("{}{lost}", o.delivered),
                fmt_rate(o.rate()),
                fmt_duration(o.latency.p50),
                fmt_duration(o.latency.p99),
                fmt_duration(o.latency.p999),
                fmt_duration(o.latency.max),
                per_delivery(o.client_cpu, o.delivered),
                per_delivery(o.node_cpu, o.delivered),
            ]);
        }
    }
    main.notes.push(
        "events/s counts deliveries (an event to 10 recipients is 10), from the first publish call to \
         the last handler start; latency is per delivery, from the start of the publish call to the \
         start of the handler; CPU/delivery is a process's CPU time (user + system) over the scenario \
         divided by the deliveries: the client process (publisher and subscribers; the Rust clients \
         share the bench process) and the node process."
            .into(),
    );
    for sc in scenarios {
        main.notes.push(format!("`{}`: {}.", sc.id, sc.title));
    }
    if let (Some(peak), Some(now)) = (node_peak_kib, node_rss_kib) {
        main.notes.push(format!(
            "Node RSS: peak {:.1} MiB over the whole run, {:.1} MiB at its end.",
            peak as f64 / 1024.0,
            now as f64 / 1024.0
        ));
    }

    let mut ratio = Section::new(
        "Against the published Python client (ensync-sdk 0.4.4): events/s, and ours / Python",
        &["scenario", "python", "tokio", "h2", "blocking", "ws"],
    );
    let python = results.iter().find(|(a, _)| a == "python");
    for sc in scenarios {
        let py = python
            .and_then(|(_, rows)| rows.iter().find(|(s, _)| s.id == sc.id))
            .map(|(_, o)| o);
        let py_rate = py.filter(|o| o.error.is_none()).map(Outcome::rate);
        let mut row = vec![
            sc.id.to_string(),
            py_rate.map(fmt_rate).unwrap_or_else(|| "-".into()),
        ];
        for adapter in ["tokio", "h2", "blocking", "ws"] {
            let ours = results
                .iter()
                .find(|(a, _)| a == adapter)
                .and_then(|(_, rows)| rows.iter().find(|(s, _)| s.id == sc.id))
                .map(|(_, o)| o)
                .filter(|o| o.error.is_none());
            row.push(match (ours, py_rate) {
                (Some(o), Some(p)) if p > 0.0 => {
                    format!("{} ({:.1}x)", fmt_rate(o.rate()), o.rate() / p)
                }
                (Some(o), _) => fmt_rate(o.rate()),
                _ => "-".into(),
            });
        }
        ratio.row(row);
    }
    ratio.notes.push(
        "The Python client publishes to several recipients with one envelope each \
         (`useHybridEncryption: False`, as ours does by default): it cannot read the hybrid \
         envelope it writes. Its \"concurrent\" scenarios use `asyncio.gather` over batches of \
         that many publishes, as its own load scripts do."
            .into(),
    );
    vec![main, ratio]
}

// ---------------------------------------------------------------------------
// The async adapters: tokio (tonic), h2 (on a tokio runtime), WebSocket.
// ---------------------------------------------------------------------------

fn engine_options() -> EngineOptions {
    EngineOptions::default()
}

/// A client of `app` on the async `adapter` (tokio, h2 or ws).
pub(crate) async fn connect(
    adapter: &str,
    grpc_url: &str,
    ws_url: Option<&str>,
    app: &DevApp,
) -> Result<Client, BoxError> {
    let options = ClientOptions::default().app_secret_key(app.secret_key());
    let client = match adapter {
        "tokio" => {
            ensync_tokio::EnSyncEngine::with_options(grpc_url, engine_options())?
                .create_client(&app.access_key, options)
                .await?
        }
        "ws" => {
            let url = ws_url.ok_or("the node has no WebSocket endpoint")?;
            ensync_tokio::EnSyncWebSocketEngine::with_options(url, engine_options())?
                .create_client(&app.access_key, options)
                .await?
        }
        "h2" => {
            let runtime = ensync_h2::Runtime::new(
                |task| {
                    tokio::spawn(task);
                },
                tokio::time::sleep,
                |authority: String| async move {
                    let stream = tokio::net::TcpStream::connect(authority).await?;
                    stream.set_nodelay(true)?;
                    Ok(stream)
                },
            );
            ensync_h2::EnSyncEngine::with_options(grpc_url, engine_options(), runtime)?
                .create_client(&app.access_key, options)
                .await?
        }
        other => return Err(format!("not an async adapter: {other}").into()),
    };
    Ok(client)
}

fn run_async_adapter(
    adapter: &str,
    grpc_url: &str,
    ws_url: Option<&str>,
    apps: &Apps,
    scenarios: &[Scenario],
    node: &NodeProcess,
) -> Result<Vec<(Scenario, Outcome)>, BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let publisher = connect(adapter, grpc_url, ws_url, &apps.publisher).await?;
        let mut recipients = Vec::new();
        for app in &apps.recipients {
            recipients.push(connect(adapter, grpc_url, ws_url, app).await?);
        }
        let mut out = Vec::new();
        for sc in scenarios {
            let mut sc = sc.clone();
            sc.event = format!("bench/{adapter}/{}", sc.id);
            eprintln!("{adapter} {} ...", sc.id);
            let mark = CpuMark::now(node);
            let result = run_async_scenario(&publisher, &recipients, &apps.recipients, &sc).await;
            let outcome = mark.finish(node, adapter, &sc, result);
            out.push((sc, outcome));
        }
        for c in std::iter::once(&publisher).chain(&recipients) {
            let _ = c.close().await;
        }
        Ok(out)
    })
}

/// CPU times of the node and of this process (the Rust clients) when a scenario starts.
struct CpuMark {
    node: Option<Duration>,
    own: Option<Duration>,
}

impl CpuMark {
    fn now(node: &NodeProcess) -> Self {
        CpuMark {
            node: node.cpu_time(),
            own: process_cpu_time(std::process::id()),
        }
    }

    /// The scenario's outcome (its error as an outcome), with the CPU time used since
    /// the mark; reported on stderr.
    fn finish(
        self,
        node: &NodeProcess,
        adapter: &str,
        sc: &Scenario,
        result: Result<Outcome, BoxError>,
    ) -> Outcome {
        let mut outcome = result.unwrap_or_else(|e| Outcome {
            error: Some(e.to_string()),
            ..Outcome::default()
        });
        let since = |start: Option<Duration>, end: Option<Duration>| {
            start.zip(end).map(|(a, b)| b.saturating_sub(a))
        };
        outcome.node_cpu = since(self.node, node.cpu_time());
        outcome.client_cpu = since(self.own, process_cpu_time(std::process::id()));
        report_progress(adapter, sc, &outcome);
        outcome
    }
}

/// CPU time per delivery, for a table.
fn per_delivery(cpu: Option<Duration>, delivered: usize) -> String {
    match cpu {
        Some(cpu) if delivered > 0 => fmt_duration(cpu / delivered as u32),
        _ => "-".into(),
    }
}

fn report_progress(adapter: &str, sc: &Scenario, o: &Outcome) {
    match &o.error {
        Some(e) => eprintln!("  {adapter} {}: error: {e}", sc.id),
        None => eprintln!(
            "  {adapter} {}: {} published, {} delivered, {} events/s, p50 {} p99 {}",
            sc.id,
            o.published,
            o.delivered,
            fmt_rate(o.rate()),
            fmt_duration(o.latency.p50),
            fmt_duration(o.latency.p99)
        ),
    }
}

async fn run_async_scenario(
    publisher: &Client,
    recipients: &[Client],
    recipient_apps: &[DevApp],
    sc: &Scenario,
) -> Result<Outcome, BoxError> {
    let recorder = Recorder::new(sc.count);
    let mut subscriptions = Vec::new();
    for client in recipients.iter().take(sc.recipients) {
        let mut sub = client.subscribe(&sc.event).await?;
        let rec = recorder.clone();
        sub.on(move |event| {
            rec.delivered(&event.payload);
            async {}
        });
        subscriptions.push(sub);
    }
    let to = sc.recipient_keys(recipient_apps);
    let pad = padding(sc.payload_bytes);
    let deadline = Duration::from_secs_f64(sc.max_seconds);
    let publish = |seq: usize| {
        let (rec, to, pad) = (&recorder, &to, &pad);
        async move {
            rec.publishing(seq);
            publisher
                .publish_with(
                    &sc.event,
                    to,
                    &Payload {
                        seq: seq as u64,
                        pad,
                    },
                    PublishOptions::default(),
                )
                .await
        }
    };
    let mut published = 0;
    let mut first_error = None;
    match sc.mode {
        Mode::Sequential => {
            for seq in 0..sc.count {
                if recorder.base.elapsed() >= deadline {
                    break;
                }
                match publish(seq).await {
                    Ok(_) => published += 1,
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        Mode::Concurrent => {
            let results: Vec<_> = futures::stream::iter(0..sc.count)
                .take_while(|_| futures::future::ready(recorder.base.elapsed() < deadline))
                .map(publish)
                .buffer_unordered(sc.concurrency)
                .collect()
                .await;
            for r in results {
                match r {
                    Ok(_) => published += 1,
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        Mode::Paced => {
            let interval = Duration::from_secs_f64(1.0 / f64::from(sc.rate.max(1)));
            let mut pending = futures::stream::FuturesUnordered::new();
            for seq in 0..sc.count {
                let due = interval * seq as u32;
                if due >= deadline {
                    break;
                }
                // Start publishes when due, and drive those in flight meanwhile.
                loop {
                    let now = recorder.base.elapsed();
                    if now >= due {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(due - now) => {}
                        Some(r) = pending.next(), if !pending.is_empty() => match r {
                            Ok(_) => published += 1,
                            Err(e) => { first_error.get_or_insert(e); }
                        },
                    }
                }
                pending.push(publish(seq));
            }
            while let Some(r) = pending.next().await {
                match r {
                    Ok(_) => published += 1,
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
    }
    let expected = published * sc.recipients;
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    while recorder.count() < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut outcome = recorder.outcome(published, expected);
    for sub in subscriptions {
        let _ = sub.unsubscribe().await;
    }
    if let Some(e) = first_error {
        outcome.error = Some(format!("publish failed: {e}"));
    }
    Ok(outcome)
}

// ---------------------------------------------------------------------------
// The blocking client: publisher threads, one receiving thread per recipient.
// ---------------------------------------------------------------------------

fn run_blocking(
    grpc_url: &str,
    apps: &Apps,
    scenarios: &[Scenario],
    node: &NodeProcess,
) -> Result<Vec<(Scenario, Outcome)>, BoxError> {
    let engine = ensync_blocking::Engine::with_options(grpc_url, engine_options())?;
    let connect = |app: &DevApp| {
        engine.create_client(
            &app.access_key,
            ClientOptions::default().app_secret_key(app.secret_key()),
        )
    };
    let publisher = connect(&apps.publisher)?;
    let recipients = apps
        .recipients
        .iter()
        .map(connect)
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for sc in scenarios {
        let mut sc = sc.clone();
        sc.event = format!("bench/blocking/{}", sc.id);
        eprintln!("blocking {} ...", sc.id);
        let mark = CpuMark::now(node);
        let result = run_blocking_scenario(&publisher, &recipients, &apps.recipients, &sc);
        let outcome = mark.finish(node, "blocking", &sc, result);
        out.push((sc, outcome));
    }
    for c in std::iter::once(&publisher).chain(&recipients) {
        let _ = c.close();
    }
    Ok(out)
}

fn run_blocking_scenario(
    publisher: &ensync_blocking::Client,
    recipients: &[ensync_blocking::Client],
    recipient_apps: &[DevApp],
    sc: &Scenario,
) -> Result<Outcome, BoxError> {
    let recorder = Recorder::new(sc.count);
    let to = sc.recipient_keys(recipient_apps);
    let pad = padding(sc.payload_bytes);
    let deadline = Duration::from_secs_f64(sc.max_seconds);
    let mut subscriptions = Vec::new();
    for client in recipients.iter().take(sc.recipients) {
        subscriptions.push(client.subscribe(&sc.event)?);
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let published = AtomicUsize::new(0);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let publish = |seq: usize| {
        recorder.publishing(seq);
        match publisher.publish_with(
            &sc.event,
            &to,
            &Payload {
                seq: seq as u64,
                pad: &pad,
            },
            PublishOptions::default(),
        ) {
            Ok(_) => {
                published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if let Ok(mut slot) = first_error.lock() {
                    slot.get_or_insert(e.to_string());
                }
            }
        }
    };
    std::thread::scope(|scope| {
        // Receivers: each event is acknowledged when dropped (auto-ack).
        let mut receivers = Vec::new();
        for mut sub in subscriptions {
            let (rec, stop) = (&recorder, &stop);
            receivers.push(scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(event) = sub.recv_timeout(Duration::from_millis(20)) {
                        rec.delivered(&event.payload);
                    }
                }
                let _ = sub.unsubscribe();
            }));
        }
        match sc.mode {
            Mode::Sequential => {
                for seq in 0..sc.count {
                    if recorder.base.elapsed() >= deadline {
                        break;
                    }
                    publish(seq);
                }
            }
            Mode::Concurrent => {
                // A thread per publish in flight, sharing the next sequence number.
                let next = AtomicUsize::new(0);
                std::thread::scope(|inner| {
                    for _ in 0..sc.concurrency {
                        inner.spawn(|| {
                            loop {
                                let seq = next.fetch_add(1, Ordering::Relaxed);
                                if seq >= sc.count || recorder.base.elapsed() >= deadline {
                                    break;
                                }
                                publish(seq);
                            }
                        });
                    }
                });
            }
            Mode::Paced => {
                // One thread starting publishes on time; a blocking call that takes
                // longer than the interval delays the next one (reported as latency).
                let interval = Duration::from_secs_f64(1.0 / f64::from(sc.rate.max(1)));
                for seq in 0..sc.count {
                    let due = interval * seq as u32;
                    if due >= deadline {
                        break;
                    }
                    let now = recorder.base.elapsed();
                    if now < due {
                        std::thread::sleep(due - now);
                    }
                    publish(seq);
                }
            }
        }
        let expected = published.load(Ordering::Relaxed) * sc.recipients;
        let drain_until = Instant::now() + DRAIN_TIMEOUT;
        while recorder.count() < expected && Instant::now() < drain_until {
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let published = published.load(Ordering::Relaxed);
    let mut outcome = recorder.outcome(published, published * sc.recipients);
    if let Ok(Some(e)) = first_error.lock().map(|e| e.clone()) {
        outcome.error = Some(format!("publish failed: {e}"));
    }
    Ok(outcome)
}

// ---------------------------------------------------------------------------
// The published Python client.
// ---------------------------------------------------------------------------

fn find_python(args: &E2eArgs) -> Option<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = [
        args.python.clone(),
        std::env::var_os("ENSYNC_PYTHON").map(PathBuf::from),
        Some(workspace.join(".venv/bin/python")),
    ];
    candidates.into_iter().flatten().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import ensync_sdk"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[derive(serde::Deserialize)]
struct PythonResult {
    id: String,
    #[serde(default)]
    published: usize,
    #[serde(default)]
    delivered: usize,
    #[serde(default)]
    seconds: f64,
    #[serde(default)]
    latencies_us: Vec<f64>,
    error: Option<String>,
}

fn run_python(
    args: &E2eArgs,
    grpc_url: &str,
    apps: &Apps,
    scenarios: &[Scenario],
    node: &NodeProcess,
) -> Result<Vec<(Scenario, Outcome)>, BoxError> {
    use std::io::BufRead;

    let python = find_python(args).ok_or(
        "no Python with ensync-sdk found: run scripts/python-env.sh, or pass --python / set ENSYNC_PYTHON",
    )?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_python_e2e.py");
    let app_json = |a: &DevApp| {
        serde_json::json!({
            "access_key": a.access_key,
            "secret_key": a.secret_key(),
            "public_key": a.public_key,
        })
    };
    let scenarios: Vec<Scenario> = scenarios
        .iter()
        .map(|sc| {
            let mut sc = sc.clone();
            sc.event = format!("bench/python/{}", sc.id);
            sc
        })
        .collect();
    let config = serde_json::json!({
        "url": grpc_url,
        "publisher": app_json(&apps.publisher),
        "recipients": apps.recipients.iter().map(app_json).collect::<Vec<_>>(),
        "scenarios": scenarios,
    });
    eprintln!("python ({}) ...", python.display());
    let mut child = std::process::Command::new(&python)
        .arg(&script)
        .arg(config.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or("no stdout of the Python driver")?;
    let mut out = Vec::new();
    let mut cpu0 = node.cpu_time();
    let python_pid = child.id();
    let mut own0 = process_cpu_time(python_pid);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(result) = serde_json::from_str::<PythonResult>(&line) else {
            eprintln!("python: {line}");
            continue;
        };
        let cpu1 = node.cpu_time();
        let own1 = process_cpu_time(python_pid);
        let Some(sc) = scenarios.iter().find(|s| s.id == result.id) else {
            continue;
        };
        let mut samples: Vec<Duration> = result
            .latencies_us
            .iter()
            .map(|us| Duration::from_secs_f64(us.max(0.0) / 1e6))
            .collect();
        let outcome = Outcome {
            published: result.published,
            delivered: result.delivered,
            expected: result.published * sc.recipients,
            elapsed: Duration::from_secs_f64(result.seconds.max(0.0)),
            latency: Percentiles::of(&mut samples),
            // Includes the subscribe/unsubscribe of the scenario: an upper bound.
            node_cpu: cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a)),
            client_cpu: own0.zip(own1).map(|(a, b)| b.saturating_sub(a)),
            error: result.error,
        };
        cpu0 = cpu1;
        own0 = own1;
        report_progress("python", sc, &outcome);
        out.push((sc.clone(), outcome));
    }
    let status = child.wait()?;
    if !status.success() && out.is_empty() {
        return Err(format!("the Python driver failed ({status})").into());
    }
    Ok(out)
}
