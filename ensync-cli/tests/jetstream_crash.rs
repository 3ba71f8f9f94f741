//! The multi-node crash test (issue 15, point 4): a 3-server NATS JetStream cluster on
//! loopback, two `ensync node` processes on one stream, publishers and subscribers of
//! one app on both nodes (the SDK given both URLs, each client its own node first; manual
//! acks, so the test knows which acks succeeded); node A is killed with SIGKILL under
//! publish load, and in the second variant the NATS server leading the stream (and, moved
//! there beforehand, the queue's consumer) is killed with it. Then every event whose
//! publish succeeded is delivered, none whose ack succeeded comes back, the event
//! deferred just before the kill arrives after its delay, what A's subscribers held
//! unacknowledged arrives through B after `ack_wait`, A's subscribers go on through B,
//! and the queue's consumer ends with nothing pending. Each variant prints one line of
//! counts (`cargo test -p ensync-cli --test jetstream_crash -- --nocapture`).
//!
//! Needs `nats-server` (ENSYNC_NATS_SERVER or .venv/bin/nats-server); without it the
//! tests print a note and pass, except under CI, where they fail. Loopback only; every
//! wait is bounded.

#[path = "../../ensync-node/tests/common/nats.rs"]
mod nats;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ensync_node::config::StoreKind;
use ensync_node::dev::DevSetup;
use ensync_tokio::{
    Client, ClientOptions, ConnectionState, EnSyncEngine, EngineOptions, Event, SubscribeOptions,
    Subscription,
};
use futures::StreamExt as _;
use nats::NatsCluster;
use serde_json::json;
use tokio::sync::watch;

const BIN: &str = env!("CARGO_BIN_EXE_ensync");
/// The stream's `ack_wait` in this test (short, so what a dead node held comes back soon).
const ACK_WAIT: Duration = Duration::from_secs(3);
/// The delay of the event deferred just before the kill.
const DEFER_DELAY: Duration = Duration::from_secs(3);
const EVENT: &str = "crash/orders";
const STREAM: &str = "CRASH";
/// Subscriber clients per node, publisher tasks per publishing client.
const SUBSCRIBERS_PER_NODE: usize = 2;
const PUBLISH_TASKS: usize = 3;
/// Events each subscriber of A keeps unacknowledged through the kill.
const HOLD_PER_SUBSCRIBER: usize = 2;
/// Publishing goes on this long after the kill (and until publishes succeed again).
const LOAD_AFTER_KILL: Duration = Duration::from_millis(2500);
/// Bound of the whole wait for the events after the kill.
const RECOVERY_BOUND: Duration = Duration::from_secs(45);

/// Variants run one after the other: they share two cores with everything else.
static SERIAL: Mutex<()> = Mutex::new(());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An `ensync node` process; SIGKILLed on drop.
struct NodeProc {
    child: Child,
    grpc: SocketAddr,
    log: PathBuf,
}

impl NodeProc {
    /// Starts `ensync node --config <config>` (stderr to `log`) and waits for its ready
    /// line.
    fn start(config: &Path, log: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["node", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("node log file"))
            .spawn()
            .expect("spawn ensync node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut seen = Vec::new();
        let grpc = loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(40)) else {
                let _ = child.kill();
                panic!(
                    "no ready line from the node; saw {seen:?}; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            };
            if let Some(rest) = line.strip_prefix("ensync node ready grpc=") {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                break addr.parse().expect("address in the ready line");
            }
            seen.push(line);
        };
        Self {
            child,
            grpc,
            log: log.to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("grpc://{}", self.grpc)
    }

    /// SIGKILL (`Child::kill` sends SIGKILL on Unix): no shutdown, no give-backs.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Where the test is; subscribers act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Publish, deliver, ack.
    Load,
    /// Subscribers of A defer one event and hold a few unacknowledged.
    Armed,
    /// A is dead: subscribers of A try to ack what they held.
    Killed,
    /// Everything stops.
    Stop,
}

struct Publish {
    n: u64,
    started: Instant,
    ended: Instant,
    ok: bool,
}

struct Delivery {
    n: u64,
    idem: String,
    at: Instant,
}

/// What happened, as the clients saw it.
#[derive(Default)]
struct Record {
    publishes: Vec<Publish>,
    deliveries: Vec<Delivery>,
    /// Events whose ack returned success, and when.
    acked: HashMap<String, Instant>,
    /// Acks that failed (around the kill): (subscriber, idem, when, error).
    ack_failed: Vec<(usize, String, Instant, String)>,
    /// Events subscribers of A held unacknowledged through the kill.
    held: Vec<String>,
    /// The deferred event: id, when the defer was asked, whether it succeeded.
    deferred: Option<(String, Instant, Option<bool>)>,
    /// Deliveries to each subscriber after the kill.
    after_kill: HashMap<usize, usize>,
}

type Shared = Arc<Mutex<Record>>;

fn engine_options(extra: &str) -> EngineOptions {
    EngineOptions::default()
        .extra_urls([extra])
        .reconnect_interval(Duration::from_millis(100))
        .max_reconnect_attempts(100)
        .request_timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(3))
        .heartbeat_interval(Duration::from_secs(2))
}

async fn subscriber(
    k: usize,
    on_a: bool,
    mut sub: Subscription,
    rec: Shared,
    mut phase: watch::Receiver<Phase>,
    killed_at: Arc<Mutex<Option<Instant>>>,
) {
    let mut held: Vec<Event> = Vec::new();
    loop {
        let ev = tokio::select! {
            ev = sub.next() => match ev {
                Some(ev) => ev,
                None => break,
            },
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = *phase.borrow_and_update();
                if now == Phase::Stop {
                    break;
                }
                if now == Phase::Killed {
                    // The handling ends after the node died: the acks go to B, which
                    // does not hold these events (they come back after ack_wait).
                    for ev in held.drain(..) {
                        let idem = ev.idem.clone();
                        match ev.ack().await {
                            Ok(()) => {
                                lock(&rec).acked.insert(idem, Instant::now());
                            }
                            Err(e) => lock(&rec).ack_failed.push((k, idem, Instant::now(), e.to_string())),
                        }
                    }
                }
                continue;
            }
        };
        let at = Instant::now();
        let n = ev.payload["n"]
            .as_u64()
            .unwrap_or_else(|| panic!("event without n: {:?}", ev.payload));
        let now = *phase.borrow();
        let idem = ev.idem.clone();
        {
            let mut r = lock(&rec);
            r.deliveries.push(Delivery {
                n,
                idem: idem.clone(),
                at,
            });
            if lock(&killed_at).is_some_and(|k| at > k) {
                *r.after_kill.entry(k).or_default() += 1;
            }
        }
        if on_a && now == Phase::Armed {
            let defer = {
                let mut r = lock(&rec);
                if r.deferred.is_none() {
                    r.deferred = Some((idem.clone(), Instant::now(), None));
                    true
                } else {
                    false
                }
            };
            if defer {
                let ok = ev.defer(DEFER_DELAY, "crash test").await.is_ok();
                if let Some(d) = lock(&rec).deferred.as_mut() {
                    d.2 = Some(ok);
                }
                continue;
            }
            if held.len() < HOLD_PER_SUBSCRIBER {
                lock(&rec).held.push(idem);
                held.push(ev);
                continue;
            }
        }
        match ev.ack().await {
            Ok(()) => {
                lock(&rec).acked.insert(idem, Instant::now());
            }
            Err(e) => lock(&rec)
                .ack_failed
                .push((k, idem, Instant::now(), e.to_string())),
        }
    }
}

async fn publisher(
    client: Client,
    to: String,
    next: Arc<AtomicU64>,
    rec: Shared,
    phase: watch::Receiver<Phase>,
    stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() && *phase.borrow() != Phase::Stop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let r = client
            .publish_with_metadata(EVENT, &[&to], &json!({ "n": n }), &json!({ "n": n }))
            .await;
        lock(&rec).publishes.push(Publish {
            n,
            started,
            ended: Instant::now(),
            ok: r.is_ok(),
        });
    }
}

/// Writes the config of one node of the deployment (own data directory, no WebSocket).
fn write_config(dev: &DevSetup, cluster: &NatsCluster, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("node directory");
    let mut c = dev.config.clone();
    c.store = StoreKind::Jetstream;
    let mut js = cluster.jetstream_config(STREAM);
    js.ack_wait_ms = ACK_WAIT.as_millis() as u64;
    c.jetstream = Some(js);
    c.data_dir = dir.join("data");
    c.ws_listen = None;
    let path = dir.join("node.toml");
    std::fs::write(&path, c.to_toml_string().expect("config as TOML")).expect("write config");
    path
}

async fn client_of(engine: &EnSyncEngine, dev: &DevSetup, app: usize) -> Client {
    let app = &dev.apps[app];
    tokio::time::timeout(
        Duration::from_secs(20),
        engine.create_client(
            &app.access_key,
            ClientOptions::default().app_secret_key(app.secret_key()),
        ),
    )
    .await
    .expect("create_client in time")
    .expect("create_client")
}

/// The longest time between `from` and `to` with none of `times` in it.
fn stall(times: impl Iterator<Item = Instant>, from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = times.filter(|t| *t > from && *t <= to).collect();
    times.sort();
    let mut last = from;
    let mut worst = Duration::ZERO;
    for t in times.into_iter().chain([to]) {
        worst = worst.max(t - last);
        last = t;
    }
    worst
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// One variant: kill node A (and with `kill_leader` the stream's leading NATS server)
/// under load; check and print what came of it.
async fn crash(name: &str, kill_leader: bool) {
    let Some(binary) = nats::require_binary(name) else {
        return;
    };
    let wall = Instant::now();
    let mut cluster = NatsCluster::start(&binary, 3).await;
    let dev = DevSetup::generate(2).expect("dev setup");
    let root = tempfile::tempdir().expect("temporary directory");
    let mut node_a = NodeProc::start(
        &write_config(&dev, &cluster, &root.path().join("a")),
        &root.path().join("a.log"),
    );
    let node_b = NodeProc::start(
        &write_config(&dev, &cluster, &root.path().join("b")),
        &root.path().join("b.log"),
    );
    let engine_a = EnSyncEngine::with_options(&node_a.url(), engine_options(&node_b.url()))
        .expect("engine of A");
    let engine_b = EnSyncEngine::with_options(&node_b.url(), engine_options(&node_a.url()))
        .expect("engine of B");

    let rec: Shared = Arc::default();
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (phase_tx, phase_rx) = watch::channel(Phase::Load);
    let (stop_tx, stop_rx) = watch::channel(false);

    // Subscribers of app 2: 0 .. on A, the rest on B.
    let mut sub_clients = Vec::new();
    let mut sub_tasks = Vec::new();
    for k in 0..2 * SUBSCRIBERS_PER_NODE {
        let on_a = k < SUBSCRIBERS_PER_NODE;
        let client = client_of(if on_a { &engine_a } else { &engine_b }, &dev, 1).await;
        let sub = client
            .subscribe_with(EVENT, SubscribeOptions::default().auto_ack(false))
            .await
            .expect("subscribe");
        sub_tasks.push(tokio::spawn(subscriber(
            k,
            on_a,
            sub,
            rec.clone(),
            phase_rx.clone(),
            killed_at.clone(),
        )));
        sub_clients.push(client);
    }
    // Publishers of app 1, one client on each node.
    let next = Arc::new(AtomicU64::new(0));
    let mut pub_clients = Vec::new();
    let mut pub_tasks = Vec::new();
    for engine in [&engine_a, &engine_b] {
        let client = client_of(engine, &dev, 0).await;
        for _ in 0..PUBLISH_TASKS {
            pub_tasks.push(tokio::spawn(publisher(
                client.clone(),
                dev.apps[1].public_key.clone(),
                next.clone(),
                rec.clone(),
                phase_rx.clone(),
                stop_rx.clone(),
            )));
        }
        pub_clients.push(client);
    }

    // The second variant kills the server leading the stream; the queue's consumer is
    // moved there first, so that both lose their leader at once, every run.
    if kill_leader {
        let deadline = Instant::now() + Duration::from_secs(10);
        let queue = loop {
            if let Some(c) = cluster.consumers(STREAM).await.first() {
                break c.0.clone();
            }
            assert!(
                Instant::now() < deadline,
                "the queue's consumer never appeared"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let leader = cluster
            .stream_leader(STREAM)
            .await
            .expect("the stream has a leader");
        cluster
            .move_consumer_leader(STREAM, &queue, leader)
            .await
            .expect("the queue's consumer led by the stream's leader");
    }

    // Load, then arm the subscribers of A (one defer, a few held).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    phase_tx.send_replace(Phase::Armed);
    let armed = Instant::now();
    while armed.elapsed() < Duration::from_secs(10) {
        let ready = {
            let r = lock(&rec);
            r.deferred.as_ref().is_some_and(|d| d.2.is_some())
                && r.held.len() == SUBSCRIBERS_PER_NODE * HOLD_PER_SUBSCRIBER
        };
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Who leads, just before the kill.
    let leader = if kill_leader {
        let leader = cluster.stream_leader(STREAM).await;
        let queue = cluster.consumers(STREAM).await.first().map(|c| c.1);
        assert!(
            leader.is_some() && leader == queue,
            "stream leader {leader:?}, queue's consumer leader {queue:?}"
        );
        leader
    } else {
        None
    };
    // The kill.
    let kill = Instant::now();
    *lock(&killed_at) = Some(kill);
    node_a.kill9();
    if let Some(i) = leader {
        cluster.kill(i);
    }
    phase_tx.send_replace(Phase::Killed);

    // Load goes on until publishes succeed again for a while.
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let since = kill.elapsed();
        let ok_after = lock(&rec)
            .publishes
            .iter()
            .filter(|p| p.ok && p.started > kill)
            .count();
        if (since >= LOAD_AFTER_KILL && ok_after >= 20) || since >= Duration::from_secs(25) {
            break;
        }
    }
    stop_tx.send_replace(true);
    let publishing_stopped = Instant::now();
    for t in pub_tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("publishers stop")
            .expect("publisher task");
    }

    // Every successful publish delivered, what A held back, the deferred one back.
    let deferred_back = |r: &Record| {
        r.deferred.as_ref().is_some_and(|(id, asked, _)| {
            r.deliveries.iter().any(|d| &d.idem == id && d.at > *asked)
        })
    };
    let held_back = |r: &Record| {
        r.held
            .iter()
            .all(|id| r.deliveries.iter().any(|d| &d.idem == id && d.at > kill))
    };
    let all_delivered = |r: &Record| {
        let delivered: HashSet<u64> = r.deliveries.iter().map(|d| d.n).collect();
        r.publishes
            .iter()
            .filter(|p| p.ok)
            .all(|p| delivered.contains(&p.n))
    };
    while kill.elapsed() < RECOVERY_BOUND {
        {
            let r = lock(&rec);
            if all_delivered(&r) && held_back(&r) && deferred_back(&r) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = kill.elapsed();
    // Quiet: anything still coming back (an acked event redelivered by ack_wait) shows.
    tokio::time::sleep(ACK_WAIT + Duration::from_secs(1)).await;
    phase_tx.send_replace(Phase::Stop);
    for t in sub_tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("subscribers stop")
            .expect("subscriber task");
    }
    let states: Vec<ConnectionState> = sub_clients.iter().map(Client::state).collect();
    let consumers = cluster.consumers(STREAM).await;
    for c in pub_clients.iter().chain(&sub_clients) {
        let _ = tokio::time::timeout(Duration::from_secs(10), c.close()).await;
    }

    // The counts.
    let r = lock(&rec);
    let ok: HashSet<u64> = r.publishes.iter().filter(|p| p.ok).map(|p| p.n).collect();
    let failed = r.publishes.iter().filter(|p| !p.ok).count();
    let delivered: HashSet<u64> = r.deliveries.iter().map(|d| d.n).collect();
    let lost: Vec<u64> = ok.difference(&delivered).copied().collect();
    let mut ids_of_n: HashMap<u64, HashSet<&str>> = HashMap::new();
    for d in &r.deliveries {
        ids_of_n.entry(d.n).or_default().insert(&d.idem);
    }
    let republished = ids_of_n.values().filter(|ids| ids.len() > 1).count();
    let acked_before_kill: HashMap<&str, Instant> = r
        .acked
        .iter()
        .filter(|(_, at)| **at < kill)
        .map(|(id, at)| (id.as_str(), *at))
        .collect();
    let acked_again: Vec<&str> = r
        .deliveries
        .iter()
        .filter(|d| r.acked.get(&d.idem).is_some_and(|at| d.at > *at))
        .map(|d| d.idem.as_str())
        .collect();
    let acked_before_kill_again = acked_again
        .iter()
        .filter(|id| acked_before_kill.contains_key(*id))
        .count();
    let held_returns: Vec<Duration> = r
        .held
        .iter()
        .filter_map(|id| {
            r.deliveries
                .iter()
                .filter(|d| &d.idem == id && d.at > kill)
                .map(|d| d.at - kill)
                .min()
        })
        .collect();
    let deferred_delay = r.deferred.as_ref().and_then(|(id, asked, _)| {
        r.deliveries
            .iter()
            .filter(|d| &d.idem == id && d.at > *asked)
            .map(|d| d.at - *asked)
            .min()
    });
    let publish_stall = stall(
        r.publishes.iter().filter(|p| p.ok).map(|p| p.ended),
        kill,
        publishing_stopped,
    );
    // Deliveries resumed: the first delivery of an event published after the kill.
    let started_of: HashMap<u64, Instant> = r.publishes.iter().map(|p| (p.n, p.started)).collect();
    let resumed = r
        .deliveries
        .iter()
        .filter(|d| started_of.get(&d.n).is_some_and(|s| *s > kill))
        .map(|d| d.at - kill)
        .min();
    println!(
        "crash test [{name}{}]: published={} (failed {failed}, stored twice {republished}) \
         delivered={} (deliveries {}) lost={} acked-and-redelivered={} (acked before the \
         kill {}, of them redelivered {acked_before_kill_again}) held-by-A={} \
         redelivered-after-ack_wait={} (first {} after the kill, ack_wait {}) \
         deferred-back-after={} (delay {}) publish-stall={} deliveries-resumed={} after the \
         kill; recovered={} wall={}",
        leader.map_or(String::new(), |i| format!(" (n{i})")),
        ok.len(),
        delivered.len(),
        r.deliveries.len(),
        lost.len(),
        acked_again.len(),
        acked_before_kill.len(),
        r.held.len(),
        held_returns.len(),
        held_returns
            .iter()
            .min()
            .map_or("-".to_owned(), |d| secs(*d)),
        secs(ACK_WAIT),
        deferred_delay.map_or("never".to_owned(), secs),
        secs(DEFER_DELAY),
        secs(publish_stall),
        resumed.map_or("never".to_owned(), secs),
        secs(recovered),
        secs(wall.elapsed()),
    );

    let mut problems = Vec::new();
    if !lost.is_empty() {
        let mut lost = lost.clone();
        lost.sort_unstable();
        problems.push(format!("lost (published, never delivered): {lost:?}"));
    }
    if !acked_again.is_empty() {
        problems.push(format!("acked, then delivered again: {acked_again:?}"));
    }
    if r.held.len() != SUBSCRIBERS_PER_NODE * HOLD_PER_SUBSCRIBER {
        problems.push(format!("A's subscribers held only {:?}", r.held));
    }
    if held_returns.len() != r.held.len() {
        problems.push(format!(
            "held by A at the kill and not delivered again: {:?}",
            r.held
                .iter()
                .filter(|id| !r.deliveries.iter().any(|d| &d.idem == *id && d.at > kill))
                .collect::<Vec<_>>()
        ));
    }
    // By ack_wait, not by a give-back (A died without any); A's last progress report
    // may have been a third of ack_wait before the kill.
    if let Some(early) = held_returns.iter().find(|d| **d < ACK_WAIT / 2) {
        problems.push(format!(
            "an event A held came back {early:?} after the kill, before ack_wait"
        ));
    }
    match (&r.deferred, deferred_delay) {
        (Some((_, _, Some(true))), Some(d)) if d >= DEFER_DELAY => {}
        (d, delay) => problems.push(format!(
            "the deferred event: {:?}, back after {delay:?}",
            d.as_ref().map(|d| (&d.0, d.2))
        )),
    }
    for k in 0..SUBSCRIBERS_PER_NODE {
        if r.after_kill.get(&k).copied().unwrap_or(0) == 0 {
            problems.push(format!("subscriber {k} of A got nothing through B"));
        }
    }
    if states.iter().any(|s| *s != ConnectionState::Connected) {
        problems.push(format!("subscriber clients at the end: {states:?}"));
    }
    if consumers.is_empty() || consumers.iter().any(|c| c.2 != 0 || c.3 != 0) {
        problems.push(format!(
            "the stream's consumers at the end (name, leader, pending, ack pending): \
             {consumers:?}"
        ));
    }
    if !problems.is_empty() {
        let failures: Vec<String> = r
            .ack_failed
            .iter()
            .map(|(k, id, at, e)| {
                let t = at.saturating_duration_since(kill).as_secs_f64();
                format!("sub {k} {id} +{t:.2}s: {}", &e[..e.len().min(60)])
            })
            .collect();
        eprintln!(
            "ack failures ({}):\n{}\n--- node A:\n{}\n--- node B:\n{}",
            failures.len(),
            failures[..failures.len().min(20)].join("\n"),
            node_a.log_tail(),
            node_b.log_tail()
        );
        panic!("{name}: {}", problems.join("\n"));
    }
}

fn run(name: &str, kill_leader: bool) {
    let _serial = lock(&SERIAL);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(crash(name, kill_leader));
}

/// Node A killed under load; the NATS cluster stays whole.
#[test]
fn node_killed_under_load() {
    run("node A killed", false);
}

/// Node A and the NATS server leading the stream killed together under load.
#[test]
fn node_and_stream_leader_killed_under_load() {
    run("node A and the stream leader killed", true);
}
