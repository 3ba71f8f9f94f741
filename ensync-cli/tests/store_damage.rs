//! The node and damaged storage (issue 13): a store file that is empty or damaged is
//! refused with a message naming it (exit code 1 for the binary), never replaced and
//! never a panic; a record that cannot be read is held back; a failing delivery ends its
//! stream with an error the client sees.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ensync_node::NodeConfig;
use ensync_node::service::{NodeService, PublishRequest, StreamEnd};
use ensync_node::store::{
    ACCEPT_ROLLBACK_FLAG, COMMIT_RECORD_FILE, NewEvent, PendingEntry, RedbStore, STORE_FILE, Store,
    StoreError, StoreOptions, StoredEvent, WriteOp, WriteOutcome,
};
use futures::StreamExt as _;

fn event(i: usize) -> NewEvent {
    NewEvent {
        id: format!("{i:032x}"),
        recipient: "R".into(),
        name: format!("q{}", i % 3),
        sender: "S".into(),
        payload: format!("cGF5bG9hZA{i:0>200}"),
        metadata: format!("{{\"i\":{i}}}"),
        payload_metadata: None,
        published_ms: 1_000 + i as u64,
    }
}

/// What a store holds: its pending entries and every record.
type Contents = (Vec<PendingEntry>, Vec<Option<StoredEvent>>);

const EVENTS: usize = 600;

fn read_all_with(dir: &Path, options: &StoreOptions) -> Result<Contents, StoreError> {
    let store = RedbStore::open_with(dir, options)?;
    let pending = store.pending()?;
    let ids: Vec<String> = (0..EVENTS).map(|i| format!("{i:032x}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    Ok((pending, store.events(&ids)?))
}

fn read_all(dir: &Path) -> Result<Contents, StoreError> {
    read_all_with(dir, &StoreOptions::default())
}

/// A store file with 600 events (every fifth acknowledged), as left by a clean stop
/// (`killed = false`) or by a process killed while it was open (`killed = true`: the
/// bytes are copied while the database is still open, as SIGKILL would leave them),
/// with its commit record as it was then; what it holds at its last commit and at the
/// one before; and the file as it was at that commit before (an older copy).
struct Built {
    bytes: Vec<u8>,
    record: Vec<u8>,
    now: Contents,
    previous: Contents,
    older_bytes: Vec<u8>,
    older_record: Vec<u8>,
}

fn snapshot(store: &RedbStore) -> Contents {
    let ids: Vec<String> = (0..EVENTS).map(|i| format!("{i:032x}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    (store.pending().unwrap(), store.events(&ids).unwrap())
}

/// Writes a store file and (when given) its commit record into `dir`.
fn put(dir: &Path, bytes: Option<&[u8]>, record: Option<&[u8]>) {
    if let Some(b) = bytes {
        std::fs::write(dir.join(STORE_FILE), b).unwrap();
    }
    if let Some(r) = record {
        std::fs::write(dir.join(COMMIT_RECORD_FILE), r).unwrap();
    }
}

fn build(killed: bool) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let mut previous = None;
    let mut older_bytes = Vec::new();
    let mut older_record = Vec::new();
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(50) {
        let ops: Vec<WriteOp> = chunk.iter().map(|i| WriteOp::Publish(event(*i))).collect();
        let out = store.commit(&ops).unwrap();
        let acks: Vec<WriteOp> = chunk
            .iter()
            .zip(out)
            .filter(|(i, _)| *i % 5 == 0)
            .map(|(i, o)| {
                let WriteOutcome::Published { block } = o else {
                    panic!("{o:?}")
                };
                WriteOp::Remove {
                    recipient: "R".into(),
                    name: event(*i).name,
                    block,
                }
            })
            .collect();
        previous = Some(snapshot(&store));
        older_bytes = std::fs::read(dir.path().join(STORE_FILE)).unwrap();
        older_record = std::fs::read(dir.path().join(COMMIT_RECORD_FILE)).unwrap();
        store.commit(&acks).unwrap();
    }
    let (bytes, record) = if killed {
        let bytes = std::fs::read(dir.path().join(STORE_FILE)).unwrap();
        let record = std::fs::read(dir.path().join(COMMIT_RECORD_FILE)).unwrap();
        // Never closed: no clean-shutdown mark (the file lock goes with the process).
        std::mem::forget(store);
        (bytes, record)
    } else {
        drop(store);
        (
            std::fs::read(dir.path().join(STORE_FILE)).unwrap(),
            std::fs::read(dir.path().join(COMMIT_RECORD_FILE)).unwrap(),
        )
    };
    let copy = tempfile::tempdir().unwrap();
    put(copy.path(), Some(&bytes), Some(&record));
    let now = read_all(copy.path()).expect("undamaged store opens");
    assert_eq!(now.0.len(), EVENTS - EVENTS / 5);
    let previous = previous.unwrap();
    assert_ne!(now, previous);
    Built {
        bytes,
        record,
        now,
        previous,
        older_bytes,
        older_record,
    }
}

fn clean() -> &'static Built {
    static C: OnceLock<Built> = OnceLock::new();
    C.get_or_init(|| build(false))
}

fn killed() -> &'static Built {
    static K: OnceLock<Built> = OnceLock::new();
    K.get_or_init(|| build(true))
}

/// What opening a damaged file gave.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Refused with an error naming the file.
    Refused(String),
    /// Opened, every event as before.
    Intact,
}

/// Opens a store file (none: missing) with a commit record (none: missing): must not
/// panic; must be refused naming the file, or give every event of `built` back. Any other
/// contents (e.g. the store as of an earlier commit) fail the test.
fn open_as(bytes: Option<&[u8]>, record: Option<&[u8]>, built: &Built) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), bytes, record);
    let got = std::panic::catch_unwind(|| read_all(dir.path()))
        .unwrap_or_else(|_| panic!("the store panicked on a damaged file"));
    match got {
        Err(e) => {
            let text = e.to_string();
            if matches!(e, StoreError::File { .. }) {
                assert!(text.contains(STORE_FILE), "{text}");
            }
            Outcome::Refused(text)
        }
        Ok(contents) => {
            // Not replaced: the file is still the damaged one (or redb's repair of it).
            assert!(
                std::fs::metadata(dir.path().join(STORE_FILE))
                    .unwrap()
                    .len()
                    > 0
            );
            assert!(
                contents == built.now,
                "a damaged store opened with other contents{}",
                if contents == built.previous {
                    " (as of its previous commit)"
                } else {
                    ""
                }
            );
            Outcome::Intact
        }
    }
}

/// Opens damaged file bytes with the store's commit record.
fn open_damaged(bytes: &[u8], built: &Built) -> Outcome {
    open_as(Some(bytes), Some(&built.record), built)
}

fn flip(b: &mut [u8], at: usize, n: usize) {
    let end = (at + n).min(b.len());
    for x in &mut b[at.min(end)..end] {
        *x ^= 0xA5;
    }
}

type Damage = fn(&mut Vec<u8>);

/// The 22 kinds of damage of issue 13 (12 after a clean stop, 10 after a kill).
fn kinds() -> Vec<(&'static str, bool, Damage)> {
    let trunc0: Damage = |b| b.clear();
    let half: Damage = |b| b.truncate(b.len() / 2);
    let t4096: Damage = |b| b.truncate(4096);
    let minus1: Damage = |b| b.truncate(b.len() - 1);
    let header: Damage = |b| flip(b, 12, 4); // page size
    let slot: Damage = |b| flip(b, 72, 8); // commit slot 0: root page
    let middle: Damage = |b| {
        let at = b.len() / 2;
        flip(b, at, 64)
    };
    let tail: Damage = |b| {
        let at = b.len() - 4096 + 100;
        flip(b, at, 64)
    };
    let zero_page: Damage = |b| {
        let at = (b.len() / 2) & !4095;
        b[at..at + 4096].fill(0);
    };
    let append: Damage =
        |b| b.extend((0..65_536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    let magic: Damage = |b| b[0] = b'x';
    let newer: Damage = |b| {
        // The format version of both commit slots.
        b[64] = 0xFF;
        b[192] = 0xFF;
    };
    let mut v: Vec<(&'static str, bool, Damage)> = vec![
        ("truncated to 0 bytes", false, trunc0),
        ("truncated to half", false, half),
        ("truncated to 4096 bytes", false, t4096),
        ("truncated by 1 byte", false, minus1),
        ("header flipped (page size)", false, header),
        ("commit slot flipped (root page)", false, slot),
        ("64 bytes flipped in the middle", false, middle),
        ("64 bytes flipped in the last page", false, tail),
        ("a middle page zeroed", false, zero_page),
        ("64 KiB of garbage appended", false, append),
        ("bad magic", false, magic),
        ("newer format version", false, newer),
    ];
    for (name, _, f) in v.clone().into_iter().skip(1) {
        if name != "bad magic" {
            v.push((name, true, f));
        }
    }
    v
}

/// The short form of an outcome for the table.
fn row(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Intact => "opens, every event intact".to_owned(),
        Outcome::Refused(why) if why.contains("older than its last completed commit") => {
            "refused: older than its last completed commit".to_owned()
        }
        Outcome::Refused(why) => format!("refused: {}", why.chars().take(100).collect::<String>()),
    }
}

/// Every kind of damage: no panic, a clean refusal naming the file or the same events
/// as before. Prints the table of the node README ("Damaged store files").
#[test]
fn damaged_store_files_are_refused_or_intact() {
    let kinds = kinds();
    assert_eq!(kinds.len(), 22);
    for (name, after_kill, damage) in kinds {
        let built = if after_kill { killed() } else { clean() };
        let mut bytes = built.bytes.clone();
        damage(&mut bytes);
        let outcome = open_damaged(&bytes, built);
        let stop = if after_kill { "SIGKILL" } else { "clean stop" };
        println!("| {name} | {stop} | {} |", row(&outcome));
        if name == "commit slot flipped (root page)" && after_kill {
            // redb's crash recovery falls back to the previous commit, silently (it
            // cannot tell damage from a commit torn by the crash); the commit record
            // shows that commit had completed. Opened as of the previous commit before.
            let Outcome::Refused(why) = &outcome else {
                panic!("{name} after {stop}: {outcome:?}")
            };
            assert!(
                why.contains("older than its last completed commit"),
                "{why}"
            );
            assert!(why.contains(COMMIT_RECORD_FILE), "{why}");
            assert!(why.contains(ACCEPT_ROLLBACK_FLAG), "{why}");
        }
    }
}

/// The commit record against the file: a record behind the file or missing is accepted
/// (the file is the newest state known); a record ahead of the file (an older copy of
/// the file, or a missing file) or unreadable is refused. Prints the second table of
/// the node README.
#[test]
fn the_commit_record_refuses_older_or_missing_files() {
    let c = clean();
    let k = killed();
    let mut damaged = c.record.clone();
    damaged[30] ^= 0x01;
    // The record of the commit before: as after a power loss that lost the last record
    // write (never fsynced), or a crash between a commit and its record write.
    let behind = &c.older_record;
    // (case, file, record, what it held, whether it opens)
    type Case<'a> = (&'a str, Option<&'a [u8]>, Option<&'a [u8]>, &'a Built, bool);
    let cases: Vec<Case<'_>> = vec![
        (
            "no commit record (a store from before it)",
            Some(&c.bytes),
            None,
            c,
            true,
        ),
        (
            "commit record behind the file",
            Some(&c.bytes),
            Some(behind),
            c,
            true,
        ),
        (
            "SIGKILL, commit record as left",
            Some(&k.bytes),
            Some(&k.record),
            k,
            true,
        ),
        (
            "an older copy of the file",
            Some(&c.older_bytes),
            Some(&c.record),
            c,
            false,
        ),
        (
            "file missing, commit record kept",
            None,
            Some(&c.record),
            c,
            false,
        ),
        (
            "commit record with one bit flipped",
            Some(&c.bytes),
            Some(&damaged),
            c,
            false,
        ),
        (
            "commit record truncated to 0 bytes",
            Some(&c.bytes),
            Some(&[]),
            c,
            false,
        ),
    ];
    for (name, bytes, record, built, opens) in cases {
        let outcome = open_as(bytes, record, built);
        println!("| {name} | {} |", row(&outcome));
        match &outcome {
            Outcome::Intact => assert!(opens, "{name}: opened"),
            Outcome::Refused(why) => {
                assert!(!opens, "{name}: {why}");
                assert!(why.contains(COMMIT_RECORD_FILE), "{name}: {why}");
                assert!(why.contains(ACCEPT_ROLLBACK_FLAG), "{name}: {why}");
            }
        }
    }
}

/// A store refused as older than its commit record opens with the acceptance option, as
/// of the commit it holds (never other contents); the record is rewritten, so the next
/// open needs no option.
#[test]
fn an_older_store_opens_when_accepted_and_the_record_follows() {
    let k = killed();
    let mut bytes = k.bytes.clone();
    flip(&mut bytes, 72, 8); // commit slot 0: redb falls back to the previous commit
    let c = clean();
    for (bytes, record, built) in [(&bytes, &k.record, k), (&c.older_bytes, &c.record, c)] {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), Some(bytes), Some(record));
        assert!(read_all(dir.path()).is_err(), "refused without the option");
        let accepted = read_all_with(
            dir.path(),
            &StoreOptions::default().with_accept_rollback(true),
        )
        .expect("opens when accepted");
        assert_eq!(accepted, built.previous, "opened as of the commit it holds");
        assert_eq!(
            read_all(dir.path()).unwrap(),
            built.previous,
            "no option needed again"
        );
    }
    // A missing file with a record: an empty store, only when accepted.
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), None, Some(&k.record));
    assert!(read_all(dir.path()).is_err());
    assert!(!dir.path().join(STORE_FILE).exists(), "nothing created");
    let (pending, _) = read_all_with(
        dir.path(),
        &StoreOptions::default().with_accept_rollback(true),
    )
    .unwrap();
    assert!(pending.is_empty());
    assert!(read_all(dir.path()).is_ok());
}

/// The commit record follows every commit, so a store copied at any point (as a kill
/// would leave it) with its record opens with exactly what was committed, and an older
/// copy of the file put back under a newer record is refused.
#[test]
fn the_commit_record_follows_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let mut copies = Vec::new();
    for i in 0..20 {
        store.commit(&[WriteOp::Publish(event(i))]).unwrap();
        copies.push((
            std::fs::read(dir.path().join(STORE_FILE)).unwrap(),
            std::fs::read(dir.path().join(COMMIT_RECORD_FILE)).unwrap(),
            store.pending().unwrap(),
        ));
    }
    let newest_record = &copies.last().unwrap().1;
    for (i, (bytes, record, pending)) in copies.iter().enumerate() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), Some(bytes), Some(record));
        assert_eq!(
            &RedbStore::open(d.path()).unwrap().pending().unwrap(),
            pending
        );
        if i + 1 < copies.len() {
            let d = tempfile::tempdir().unwrap();
            put(d.path(), Some(bytes), Some(newest_record));
            let err = RedbStore::open(d.path()).unwrap_err().to_string();
            assert!(
                err.contains("older than its last completed commit"),
                "{i}: {err}"
            );
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]
    /// Random damage (bytes flipped at a random place, or a random truncation) to a
    /// store after a clean stop or a kill: never a panic; a refusal or exactly the same
    /// events (`open_damaged` fails on any other contents, an earlier commit's included).
    #[test]
    fn randomly_damaged_store_files_are_refused_or_intact(
        after_kill in proptest::bool::ANY,
        at in 0.0f64..1.0,
        len in 1usize..512,
        xor in 1u8..=255,
        truncate in proptest::bool::weighted(0.25),
    ) {
        let built = if after_kill { killed() } else { clean() };
        let mut bytes = built.bytes.clone();
        let at = ((bytes.len() as f64) * at) as usize;
        if truncate {
            bytes.truncate(at);
        } else {
            let end = (at + len).min(bytes.len());
            for b in &mut bytes[at..end] {
                *b ^= xor;
            }
        }
        // Fails (panics) on a panic of the store, on a refusal that does not name the
        // file, and on any contents but the same events.
        open_damaged(&bytes, built);
    }
}

fn write_config(dir: &Path) -> PathBuf {
    let kp = ensync_node::keys::generate();
    let text = format!(
        "grpc_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[[apps]]\nname = \"a\"\naccess_key = \"a-access\"\npublic_key = \"{}\"\nsend = [\"*\"]\nreceive = [\"*\"]\n",
        dir.join("data").display(),
        kp.public_key
    );
    let path = dir.join("ensync.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Issue 13, defects 3 and 4: `ensync node` on an empty or damaged store file exits with
/// code 1 and a message naming the file (before: an empty file started an empty node and
/// was re-created; a file cut to half or 4096 bytes, or flipped in the middle, panicked
/// with exit code 101), and leaves the file as it was.
#[test]
fn the_binary_refuses_damaged_store_files_with_exit_code_1() {
    let cases: Vec<(&str, Vec<u8>)> = {
        let clean = &clean().bytes;
        let mut half = clean.clone();
        half.truncate(half.len() / 2);
        let mut t4096 = clean.clone();
        t4096.truncate(4096);
        let mut middle = clean.clone();
        let at = middle.len() / 2;
        flip(&mut middle, at, 64);
        vec![
            ("empty", Vec::new()),
            ("half", half),
            ("4096", t4096),
            ("middle flipped", middle),
        ]
    };
    for (name, bytes) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path());
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join(STORE_FILE), &bytes).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ensync"))
            .args(["node", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "off")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name}: the node started on a damaged store");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(!stdout.contains("ready"), "{name}: {stdout}");
        let ours = stderr
            .lines()
            .find(|l| l.starts_with("ensync: "))
            .unwrap_or_else(|| panic!("{name}: no message: {stderr}"));
        assert!(ours.contains(STORE_FILE), "{name}: {ours}");
        println!("{name}: exit 1, {ours}");
        // Not replaced.
        assert_eq!(
            std::fs::read(data.join(STORE_FILE)).unwrap().len(),
            bytes.len()
        );
    }
}

/// How a run of `ensync node` went: it printed its ready line (then it was killed), or it
/// exited first with this code and stderr.
#[derive(Debug)]
enum Run {
    Ready,
    Exited(Option<i32>, String),
}

fn run_node(config: &Path, extra: &[&str]) -> Run {
    use std::io::{BufRead as _, Read as _};
    let mut child = Command::new(env!("CARGO_BIN_EXE_ensync"))
        .args(["node", "--config", config.to_str().unwrap()])
        .args(extra)
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("ensync node ready") {
                let _ = tx.send(());
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if rx.try_recv().is_ok() {
            let _ = child.kill();
            let _ = child.wait();
            return Run::Ready;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            return Run::Exited(status.code(), stderr);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node neither got ready nor exited in 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ensync node` on a store file older than its commit record (here: an older copy of
/// the file put back) exits with code 1 and a message naming the file, the record and
/// the flag that accepts it; with `--accept-store-rollback` it serves, and later starts
/// need no flag.
#[test]
fn the_binary_refuses_an_older_store_until_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    put(&data, Some(&clean().older_bytes), Some(&clean().record));
    let Run::Exited(code, stderr) = run_node(&config, &[]) else {
        panic!("the node started on a store older than its commit record");
    };
    assert_eq!(code, Some(1), "{stderr}");
    let ours = stderr
        .lines()
        .find(|l| l.starts_with("ensync: "))
        .unwrap_or_else(|| panic!("no message: {stderr}"));
    println!("{ours}");
    for part in [
        STORE_FILE,
        COMMIT_RECORD_FILE,
        "older than its last completed commit",
        "--accept-store-rollback",
    ] {
        assert!(ours.contains(part), "{part} not in: {ours}");
    }
    assert!(matches!(
        run_node(&config, &["--accept-store-rollback"]),
        Run::Ready
    ));
    assert!(matches!(run_node(&config, &[]), Run::Ready));
    // What was accepted is the older copy's queue, exactly.
    let pending = RedbStore::open(&data).unwrap().pending().unwrap();
    assert_eq!(pending, clean().previous.0);
}

/// A store whose reads of some ids fail: with `Corrupt` (a record that cannot be
/// decoded) or by panicking (a store failing outright).
struct Flaky {
    inner: RedbStore,
    bad: Mutex<HashSet<String>>,
    panic: bool,
}

impl Store for Flaky {
    fn commit(&self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        self.inner.commit(ops)
    }
    fn pending(&self) -> Result<Vec<PendingEntry>, StoreError> {
        self.inner.pending()
    }
    fn events(&self, ids: &[&str]) -> Result<Vec<Option<StoredEvent>>, StoreError> {
        if ids.iter().any(|id| self.bad.lock().unwrap().contains(*id)) {
            if self.panic {
                panic!("the test store fails");
            }
            return Err(StoreError::Corrupt("test: damaged record"));
        }
        self.inner.events(ids)
    }
}

async fn flaky_node(panic: bool) -> (NodeService, Arc<Flaky>, String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kp = ensync_node::keys::generate();
    let mut config = NodeConfig::new(dir.path());
    config.apps.push(
        ensync_node::AppConfig::new("a", "a-access", kp.public_key.clone())
            .with_send(["*"])
            .with_receive(["*"]),
    );
    let store = Arc::new(Flaky {
        inner: RedbStore::open(dir.path()).unwrap(),
        bad: Mutex::new(HashSet::new()),
        panic,
    });
    let service = NodeService::new(&config, store.clone()).unwrap();
    let sid = service.connect("a-access").unwrap().client_id;
    (service, store, sid, kp.public_key, dir)
}

async fn publish(service: &NodeService, sid: &str, to: &str, i: usize) -> String {
    service
        .publish(PublishRequest {
            client_id: sid.into(),
            event_name: "d".into(),
            payload: "cGF5bG9hZA==".into(),
            delivery_to: to.into(),
            metadata: format!("{{\"i\":{i}}}"),
            payload_metadata: None,
        })
        .await
        .unwrap()
}

/// Issue 13, deliverable 3: a record that cannot be read is held back (logged) and the
/// events around it are delivered; the stream stays open.
#[tokio::test]
async fn an_unreadable_record_is_held_back_and_the_rest_delivered() {
    let (service, store, sid, key, _dir) = flaky_node(false).await;
    let a = publish(&service, &sid, &key, 0).await;
    let b = publish(&service, &sid, &key, 1).await;
    let c = publish(&service, &sid, &key, 2).await;
    store.bad.lock().unwrap().insert(b.clone());
    let mut s = service.subscribe(&sid, "d").unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let ev = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("delivered")
            .expect("open")
            .expect("an event");
        got.push(ev.idem);
    }
    assert_eq!(got, vec![a, c]);
    assert_eq!(
        service.stats().in_flight,
        2,
        "the unreadable one is not in flight"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.next())
            .await
            .is_err(),
        "the stream stays open"
    );
    service.close().await;
}

/// Issue 13, defect 5: when the delivery task fails (here: the store panics), the stream
/// ends with an error the client sees (before: it went silent), and its events go back
/// to the queue.
#[tokio::test]
async fn a_failing_delivery_ends_its_stream_with_an_error() {
    let (service, store, sid, key, _dir) = flaky_node(true).await;
    let a = publish(&service, &sid, &key, 0).await;
    store.bad.lock().unwrap().insert(a);
    let mut s = service.subscribe(&sid, "d").unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("the stream must not go silent");
    assert_eq!(
        end.map(|r| r.map(|e| e.idem)),
        Some(Err(StreamEnd::DeliveryFailed))
    );
    assert_eq!(service.stats().in_flight, 0);
    assert_eq!(service.stats().ready, 1, "its event is back in the queue");
    service.close().await;
}
