//! Durable storage of events and queues.
//!
//! [`Store`] is a small transactional interface: a batch of [`WriteOp`]s is committed in
//! one transaction (all or nothing), and a few reads. The node's group commit sits above
//! it (one writer thread hands every waiting operation to [`Store::commit`] at once), so a
//! clustered engine could implement the trait later. [`RedbStore`] is the implementation
//! on an embedded [`redb`] database.
//!
//! Stored per event: the record (recipient, name, block, sender, payload, metadata, time),
//! kept for replay until the retention window passes; while not acknowledged nor discarded
//! it is also *pending* in its queue `(recipient, event name)` under its `partition_block`,
//! with the time it is due (0 = now, later when deferred).
//!
//! Records are written in the packed format ([`encode_packed_record`], version 2): the
//! payload and the two public keys, base64 text on the wire, are kept as the bytes they
//! encode when the text is canonical standard base64 with padding (re-encoding gives the
//! same text back, checked at each write), as text otherwise. Records of the first format
//! (version 1, every text as is; files from before the packed format) are read as well,
//! so such files open and serve as they are; a node older than the packed format reads
//! version 2 records as unreadable (held back), so a store is not taken back to one.
//!
//! Every commit also counts itself: a counter in the file, incremented by each write
//! transaction, and copied after each completed commit to a small *commit record* next to
//! the file ([`COMMIT_RECORD_FILE`]). A store file whose counter is behind its record has
//! lost commits that had completed (a damaged file that redb's crash recovery rolled back,
//! an older copy put in its place) and is refused at open ([`StoreOptions::accept_rollback`]
//! accepts it once, explicitly).

use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

/// Event id -> encoded [`StoredEvent`].
const EVENTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("events");
/// (recipient, event name, block) -> (event id, due epoch ms; 0 = now).
const PENDING: TableDefinition<'_, (&str, &str, u64), (&str, u64)> =
    TableDefinition::new("pending");
/// (recipient, event name) -> last block handed out.
const BLOCKS: TableDefinition<'_, (&str, &str), u64> = TableDefinition::new("blocks");
/// (published epoch ms, event id) -> (), for the retention purge.
const BY_TIME: TableDefinition<'_, (u64, &str), ()> = TableDefinition::new("by_time");
/// The node's own records (apps made through the admin API): key -> value.
const RECORDS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("records");
/// Store-wide values: [`COMMITS`] -> write transactions committed so far.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// The key of the commit counter in [`META`].
const COMMITS: &str = "commits";

/// The store's file name in the data directory.
pub const STORE_FILE: &str = "events.redb";

/// The commit record's file name in the data directory, next to [`STORE_FILE`]: the
/// number of the store's last completed commit, rewritten in place after every commit.
pub const COMMIT_RECORD_FILE: &str = "events.redb.commit";

/// The flag of `ensync node` that accepts a store older than its commit record (named in
/// the refusal).
pub const ACCEPT_ROLLBACK_FLAG: &str = "--accept-store-rollback";

/// The most events one purge operation removes (keeps commits short).
const PURGE_LIMIT: usize = 10_000;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The embedded database failed.
    #[error("storage error: {0}")]
    Db(String),
    /// A stored record could not be decoded.
    #[error("stored record is corrupt: {0}")]
    Corrupt(&'static str),
    /// The store (its writer) has shut down.
    #[error("the store is shut down")]
    Closed,
    /// The store file cannot be used: missing permissions, empty, damaged, of another
    /// format. The node refuses to start on it (and never replaces it).
    #[error("store file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The embedded database failed an internal check while reading or writing (a
    /// damaged file; redb panicked and the panic was contained).
    #[error("the store is damaged: {0}")]
    Damaged(String),
}

/// Runs `f`, turning a panic into [`StoreError::Damaged`].
///
/// redb returns errors for the damage it detects (bad magic, newer format, failed
/// checksums while repairing after a crash), but some damage to a cleanly closed file
/// trips its internal assertions, unwraps and slice indexing instead (seen: a file cut to
/// half its length or to 4096 bytes fails an assertion of the page manager when it is
/// opened; flipped bytes in a B-tree page panic in `types.rs`, `tuple_types.rs`,
/// `buddy_allocator.rs`). redb 3 has no option to make those errors, so every call into
/// it goes through here: a damaged store becomes a clean error, never a panic of the
/// process. (The panic hook still prints redb's message to stderr; what follows is ours.)
fn contain<T>(what: &str, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(StoreError::Damaged(format!(
                "the embedded database failed while {what}: {msg}"
            )))
        }
    }
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.to_string()) }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    std::io::Error
);

/// An event to store, as accepted from a publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Its id (`event_idem`).
    pub id: String,
    /// The recipient app's public key (base64).
    pub recipient: String,
    /// The event name.
    pub name: String,
    /// The publisher's public key (base64).
    pub sender: String,
    /// The encrypted payload envelope (base64 text), never read by the node.
    pub payload: String,
    /// The metadata JSON object text.
    pub metadata: String,
    /// The publisher's `payload_metadata`, if sent.
    pub payload_metadata: Option<String>,
    /// When it was accepted, epoch ms.
    pub published_ms: u64,
}

/// A stored event: what was published plus its place in its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The event as published.
    pub event: NewEvent,
    /// Its `partition_block` in queue (recipient, name), from 1.
    pub block: u64,
}

/// One write of a batch.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Store a new event at the end of its queue (the store assigns the block).
    Publish(NewEvent),
    /// Take an event out of its queue (acknowledged or discarded); the record stays for replay.
    Remove {
        /// Recipient public key.
        recipient: String,
        /// Event name.
        name: String,
        /// Its block.
        block: u64,
    },
    /// Change when a pending event is due (defer).
    SetDue {
        /// Recipient public key.
        recipient: String,
        /// Event name.
        name: String,
        /// Its block.
        block: u64,
        /// Epoch ms.
        due_ms: u64,
    },
    /// Delete records published before this time that are no longer pending.
    Purge {
        /// Epoch ms.
        before_ms: u64,
    },
    /// Write (`Some`) or delete (`None`) one of the node's own records (apps made
    /// through the admin API), kept apart from the events.
    PutRecord {
        /// The record's key.
        key: String,
        /// Its value.
        value: Option<Vec<u8>>,
    },
}

/// What one [`WriteOp`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The event was stored under this block.
    Published {
        /// Its `partition_block`.
        block: u64,
    },
    /// Whether the pending entry existed.
    Removed(bool),
    /// Whether the pending entry existed.
    DueSet(bool),
    /// How many records were deleted.
    Purged(usize),
    /// A record was written or deleted.
    RecordPut,
}

/// A pending (not yet acknowledged nor discarded) event, as listed at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    /// Recipient public key.
    pub recipient: String,
    /// Event name.
    pub name: String,
    /// Its block.
    pub block: u64,
    /// Its id.
    pub id: String,
    /// When it is due, epoch ms (0 = now).
    pub due_ms: u64,
}

/// Transactional event storage.
pub trait Store: Send + Sync + 'static {
    /// Applies `ops` in one durable transaction: when this returns `Ok`, all of them are on
    /// disk; on `Err`, none is. Returns one outcome per op, in order.
    fn commit(&self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError>;
    /// Every pending event, in (recipient, name, block) order.
    fn pending(&self) -> Result<Vec<PendingEntry>, StoreError>;
    /// Calls `f` with every pending event, in (recipient, name, block) order, without
    /// collecting them (what the node does at start-up, where the backlog may be
    /// millions of events). The default goes through [`Store::pending`].
    fn for_each_pending(&self, f: &mut dyn FnMut(PendingEntry)) -> Result<(), StoreError> {
        for entry in self.pending()? {
            f(entry);
        }
        Ok(())
    }
    /// Reads stored events by id (`None` for unknown ids), in one read transaction.
    fn events(&self, ids: &[&str]) -> Result<Vec<Option<StoredEvent>>, StoreError>;
    /// Every record written by [`WriteOp::PutRecord`], in key order. The default: none
    /// (a store that keeps no records; its `PutRecord` writes must then fail).
    fn records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(Vec::new())
    }
    /// Bytes the store takes on disk, if it knows.
    fn size_bytes(&self) -> Option<u64> {
        None
    }
}

/// How much of the store file one table takes (redb's own counts, see [`StoreSpace`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableSpace {
    /// The table's name in the file.
    pub name: &'static str,
    /// Its entries.
    pub entries: u64,
    /// Bytes of its keys and values.
    pub stored_bytes: u64,
    /// Its leaf pages (the keys and values).
    pub leaf_pages: u64,
    /// Its branch pages (the index above the leaves).
    pub branch_pages: u64,
    /// Bytes of the branch pages' keys and of page headers.
    pub metadata_bytes: u64,
    /// Bytes of its pages that hold nothing (the unused part of each page).
    pub fragmented_bytes: u64,
}

/// Where the bytes of a store file go: [`RedbStore::space`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreSpace {
    /// The file's length.
    pub file_bytes: u64,
    /// What the file takes on the disk (allocated blocks; less than its length where
    /// the database grew the file without writing the new part yet), where the platform
    /// tells.
    pub disk_bytes: Option<u64>,
    /// The database's page size.
    pub page_size: u64,
    /// Pages in use (every table, the database's own tables, pages freed by the last
    /// commits and not yet reusable); the rest of the file is free space.
    pub allocated_pages: u64,
    /// The node's tables.
    pub tables: Vec<TableSpace>,
}

/// How [`RedbStore::open_with`] opens a store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreOptions {
    /// The page cache in bytes (read and write cache together; redb's own default would
    /// be 1 GiB). Default: [`crate::config::DEFAULT_STORE_CACHE_BYTES`].
    pub cache_bytes: usize,
    /// Open the store even when it is older than its commit record says (commits that
    /// had completed are missing), or when the record is unreadable, or when the file is
    /// missing but a record exists (then an empty store is created); the record is then
    /// rewritten for the state opened. Default `false`: such a store is refused. A
    /// one-time decision of the operator (`ensync node --accept-store-rollback`).
    pub accept_rollback: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_bytes: crate::config::DEFAULT_STORE_CACHE_BYTES,
            accept_rollback: false,
        }
    }
}

impl StoreOptions {
    /// The defaults with this page cache size.
    pub fn with_cache_bytes(mut self, cache_bytes: usize) -> Self {
        self.cache_bytes = cache_bytes;
        self
    }

    /// The defaults, accepting (or not) a store older than its commit record.
    pub fn with_accept_rollback(mut self, accept: bool) -> Self {
        self.accept_rollback = accept;
        self
    }
}

/// [`Store`] on an embedded redb database (`events.redb` in the data directory), with its
/// commit record (`events.redb.commit`).
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    record: Mutex<CommitRecord>,
}

/// The open commit record file and the highest count written to it.
struct CommitRecord {
    file: File,
    written: u64,
    /// Whether a failed write was logged (logged once; a record that stays behind only
    /// misses a rollback, it never refuses a good store).
    failed: bool,
}

/// The text of the commit record for `commits`: fixed length, so it is rewritten in place
/// with one write; the check value tells a damaged record from a good one.
fn record_text(commits: u64) -> String {
    format!(
        "ensync store commits {commits:020} check {:016x}\n",
        record_check(commits)
    )
}

/// FNV-1a (64 bit) of the counter's bytes and a tag: a check value, not a security measure.
fn record_check(commits: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"ensync-commits".iter().chain(commits.to_le_bytes().iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Reads a commit record: `Ok(None)` when there is none, `Err(why)` when it exists but is
/// not one this store wrote.
fn read_record(path: &Path) -> Result<Option<u64>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let parse = || -> Option<u64> {
        let text = std::str::from_utf8(&bytes).ok()?;
        let rest = text.strip_prefix("ensync store commits ")?;
        let (count, rest) = rest.split_at_checked(20)?;
        let check = rest.strip_prefix(" check ")?.strip_suffix('\n')?;
        let commits: u64 = count.parse().ok()?;
        (check.len() == 16 && u64::from_str_radix(check, 16).ok()? == record_check(commits))
            .then_some(commits)
    };
    parse()
        .map(Some)
        .ok_or_else(|| format!("not a valid commit record ({} bytes)", bytes.len()))
}

/// Writes the record in place: one positioned write, no `fsync` (a record that is stale
/// after a power loss is behind the file, which is accepted).
fn write_record_at_start(file: &File, text: &[u8]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt as _;
        file.write_all_at(text, 0)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek as _, Write as _};
        let mut file = file;
        file.seek(std::io::SeekFrom::Start(0))?;
        file.write_all(text)
    }
}

/// Creates (or replaces) the record with `commits`, durably: a temporary file written and
/// fsynced, renamed over the record, the directory fsynced. Returns the record, open for
/// the in-place writes of later commits.
fn create_record(path: &Path, commits: u64) -> std::io::Result<File> {
    use std::io::Write as _;
    let tmp = path.with_extension("commit.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(record_text(commits).as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    std::fs::OpenOptions::new().write(true).open(path)
}

/// The commit counter in the file (0 for a store from before the counter).
fn file_commits(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_read()?;
    match txn.open_table(META) {
        Ok(t) => Ok(t.get(COMMITS)?.map(|g| g.value()).unwrap_or(0)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Increments the commit counter inside `txn`; returns the new count.
fn count_commit(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(META)?;
    let n = meta.get(COMMITS)?.map(|g| g.value()).unwrap_or(0) + 1;
    meta.insert(COMMITS, n)?;
    Ok(n)
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`, with the default [`StoreOptions`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &StoreOptions::default())
    }

    /// Opens the store in `dir` with a page cache of `cache_bytes` (otherwise the default
    /// [`StoreOptions`]).
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        Self::open_with(dir, &StoreOptions::default().with_cache_bytes(cache_bytes))
    }

    /// Opens the store in `dir` ([`STORE_FILE`], with its [`COMMIT_RECORD_FILE`]).
    ///
    /// A new, empty store is created only where no file exists. An existing file is
    /// opened and its integrity checked (every page checksum: this reads the whole file
    /// once); one that is empty, unreadable, damaged or of another format is an error
    /// naming the file ([`StoreError::File`]), never replaced nor a panic.
    ///
    /// Then the file's commit counter is compared with the commit record. Refused unless
    /// [`StoreOptions::accept_rollback`]: a file behind its record (completed commits are
    /// missing), a record that exists but is unreadable, a missing file whose record
    /// exists. Accepted: a record behind the file (the last commits completed but their
    /// record writes did not reach the disk), no record (a store from before the record,
    /// or a new one: it is created).
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let cache_bytes = options.cache_bytes;
        let accept = options.accept_rollback;
        std::fs::create_dir_all(dir).map_err(|e| StoreError::File {
            path: dir.to_owned(),
            reason: format!("cannot create the data directory: {e}"),
        })?;
        let path = dir.join(STORE_FILE);
        let refuse = |reason: String| StoreError::File {
            path: path.clone(),
            reason,
        };
        let exists = match std::fs::metadata(&path) {
            Ok(m) if !m.is_file() => return Err(refuse("not a regular file".into())),
            Ok(m) if m.len() == 0 => {
                return Err(refuse(
                    "the file is empty (0 bytes), so its events are gone; the node does not \
                     start an empty store in its place: move the file and its commit record \
                     away to start anew"
                        .into(),
                ));
            }
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(refuse(format!("cannot read it: {e}"))),
        };
        if exists {
            // Unreadable (permissions) is an error here, before redb sees the file.
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| refuse(format!("cannot open it for reading and writing: {e}")))?;
        }
        let record_path = dir.join(COMMIT_RECORD_FILE);
        let how_to_accept = format!(
            "to accept the store as it is, start the node once with {ACCEPT_ROLLBACK_FLAG} \
             (or delete {})",
            record_path.display()
        );
        let record = match read_record(&record_path) {
            Ok(r) => r,
            Err(why) if accept => {
                tracing::warn!(record = %record_path.display(), %why,
                    "the store's commit record is unreadable; accepted ({ACCEPT_ROLLBACK_FLAG})");
                None
            }
            Err(why) => {
                return Err(refuse(format!(
                    "its commit record {} is unreadable ({why}), so the node cannot tell \
                     whether the store lost completed commits; {how_to_accept}",
                    record_path.display()
                )));
            }
        };
        if let (false, Some(n)) = (exists, record) {
            if !accept {
                return Err(refuse(format!(
                    "the file is missing but its commit record {} says {n} commits were \
                     completed: its events are gone (moved or deleted?); put the file back, \
                     or, to start an empty store, start the node once with \
                     {ACCEPT_ROLLBACK_FLAG} (or delete the record)",
                    record_path.display()
                )));
            }
            tracing::warn!(file = %path.display(), recorded = n,
                "the store file is missing; an empty store is created ({ACCEPT_ROLLBACK_FLAG})");
        }
        let mut builder = Database::builder();
        builder.set_cache_size(cache_bytes);
        let db = contain("opening the file", || {
            let mut db = if exists {
                builder.open(&path)?
            } else {
                builder.create(&path)?
            };
            if exists && !db.check_integrity()? {
                // redb found a page whose checksum failed and rolled the file back to its
                // last intact commit: say so loudly (a crash does not get here: redb
                // repairs that silently and correctly while opening).
                tracing::error!(
                    file = %path.display(),
                    "the store failed its integrity check and was repaired by rolling \
                     back to its last intact commit; events of the damaged commit may be lost"
                );
            }
            let in_file = file_commits(&db)?;
            match record {
                Some(recorded) if recorded > in_file && !accept => {
                    return Err(refuse(format!(
                        "the file is older than its last completed commit: it holds {in_file} \
                         commits, its commit record {} says {recorded} completed, so the writes \
                         of the last {} of them (publishes and acks already answered) are \
                         missing (a damaged file rolled back by the database's crash recovery, \
                         or an older copy of the file); {how_to_accept}",
                        record_path.display(),
                        recorded - in_file
                    )));
                }
                Some(recorded) if recorded > in_file => {
                    tracing::warn!(file = %path.display(), in_file, recorded,
                        "the store is older than its commit record; accepted \
                         ({ACCEPT_ROLLBACK_FLAG}): the writes of the missing commits are lost");
                }
                Some(_) => {}
                None if exists => tracing::info!(record = %record_path.display(),
                    "the store has no commit record yet; creating it"),
                None => {}
            }
            let txn = db.begin_write()?;
            let commits = {
                txn.open_table(EVENTS)?;
                txn.open_table(PENDING)?;
                txn.open_table(BLOCKS)?;
                txn.open_table(BY_TIME)?;
                txn.open_table(RECORDS)?;
                count_commit(&txn)?
            };
            txn.commit()?;
            Ok((db, commits))
        })
        .map_err(|e| match e {
            StoreError::File { .. } => e,
            StoreError::Db(reason) | StoreError::Damaged(reason) => refuse(reason),
            other => refuse(other.to_string()),
        })?;
        let (db, commits) = db;
        let file = create_record(&record_path, commits).map_err(|e| StoreError::File {
            path: record_path.clone(),
            reason: format!("cannot write the store's commit record: {e}"),
        })?;
        Ok(Self {
            db,
            path,
            record: Mutex::new(CommitRecord {
                file,
                written: commits,
                failed: false,
            }),
        })
    }

    /// Writes `commits` (a commit that completed) to the record, unless a higher count
    /// is there already.
    fn record_commit(&self, commits: u64) {
        let mut rec = self
            .record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if commits <= rec.written {
            return;
        }
        match write_record_at_start(&rec.file, record_text(commits).as_bytes()) {
            Ok(()) => rec.written = commits,
            Err(e) => {
                if !rec.failed {
                    rec.failed = true;
                    tracing::error!(error = %e, file = COMMIT_RECORD_FILE,
                        "cannot update the store's commit record; a later rollback of the \
                         store would go undetected");
                }
            }
        }
    }
}

impl Store for RedbStore {
    fn commit(&self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        let (out, commits) = contain("committing", || self.commit_inner(ops))?;
        self.record_commit(commits);
        Ok(out)
    }

    fn pending(&self) -> Result<Vec<PendingEntry>, StoreError> {
        let mut out = Vec::new();
        self.for_each_pending(&mut |entry| out.push(entry))?;
        Ok(out)
    }

    fn for_each_pending(&self, f: &mut dyn FnMut(PendingEntry)) -> Result<(), StoreError> {
        contain("listing pending events", || self.for_each_pending_inner(f))
    }

    fn events(&self, ids: &[&str]) -> Result<Vec<Option<StoredEvent>>, StoreError> {
        contain("reading events", || self.events_inner(ids))
    }

    fn size_bytes(&self) -> Option<u64> {
        std::fs::metadata(&self.path).ok().map(|m| m.len())
    }

    fn records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        contain("reading records", || {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(RECORDS)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                out.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
    }
}

impl RedbStore {
    /// Where the bytes of the store file go, per table (for benchmarks and operators;
    /// it waits for the writer, as a commit does, and writes nothing).
    pub fn space(&self) -> Result<StoreSpace, StoreError> {
        let meta = std::fs::metadata(&self.path)?;
        #[cfg(unix)]
        let disk_bytes = {
            use std::os::unix::fs::MetadataExt as _;
            Some(meta.blocks() * 512)
        };
        #[cfg(not(unix))]
        let disk_bytes = None;
        contain("measuring the store", || {
            let txn = self.db.begin_write()?;
            let db = txn.stats()?;
            let mut tables = Vec::new();
            fn one(
                name: &'static str,
                table: &impl ReadableTableMetadata,
            ) -> Result<TableSpace, StoreError> {
                let st = table.stats()?;
                Ok(TableSpace {
                    name,
                    entries: table.len()?,
                    stored_bytes: st.stored_bytes(),
                    leaf_pages: st.leaf_pages(),
                    branch_pages: st.branch_pages(),
                    metadata_bytes: st.metadata_bytes(),
                    fragmented_bytes: st.fragmented_bytes(),
                })
            }
            tables.push(one("events", &txn.open_table(EVENTS)?)?);
            tables.push(one("pending", &txn.open_table(PENDING)?)?);
            tables.push(one("by_time", &txn.open_table(BY_TIME)?)?);
            tables.push(one("blocks", &txn.open_table(BLOCKS)?)?);
            tables.push(one("records", &txn.open_table(RECORDS)?)?);
            tables.push(one("meta", &txn.open_table(META)?)?);
            txn.abort()?;
            Ok(StoreSpace {
                file_bytes: meta.len(),
                disk_bytes,
                page_size: db.page_size() as u64,
                allocated_pages: db.allocated_pages(),
                tables,
            })
        })
    }

    /// Commits `ops`; returns their outcomes and the commit's number.
    fn commit_inner(&self, ops: &[WriteOp]) -> Result<(Vec<WriteOutcome>, u64), StoreError> {
        let mut txn = self.db.begin_write()?;
        // redb's default, spelled out: the commit returns once the data is fsynced.
        txn.set_durability(Durability::Immediate)?;
        let commits = count_commit(&txn)?;
        let mut out = Vec::with_capacity(ops.len());
        {
            let mut events = txn.open_table(EVENTS)?;
            let mut pending = txn.open_table(PENDING)?;
            let mut blocks = txn.open_table(BLOCKS)?;
            let mut by_time = txn.open_table(BY_TIME)?;
            let mut records = txn.open_table(RECORDS)?;
            for op in ops {
                match op {
                    WriteOp::Publish(ev) => {
                        let key = (ev.recipient.as_str(), ev.name.as_str());
                        let last = blocks.get(key)?.map(|g| g.value()).unwrap_or(0);
                        let block = last + 1;
                        blocks.insert(key, block)?;
                        let record = encode(ev, block);
                        events.insert(ev.id.as_str(), record.as_slice())?;
                        pending.insert(
                            (ev.recipient.as_str(), ev.name.as_str(), block),
                            (ev.id.as_str(), 0u64),
                        )?;
                        by_time.insert((ev.published_ms, ev.id.as_str()), ())?;
                        out.push(WriteOutcome::Published { block });
                    }
                    WriteOp::Remove {
                        recipient,
                        name,
                        block,
                    } => {
                        let existed = pending
                            .remove((recipient.as_str(), name.as_str(), *block))?
                            .is_some();
                        out.push(WriteOutcome::Removed(existed));
                    }
                    WriteOp::SetDue {
                        recipient,
                        name,
                        block,
                        due_ms,
                    } => {
                        let key = (recipient.as_str(), name.as_str(), *block);
                        let id = pending.get(key)?.map(|g| g.value().0.to_owned());
                        if let Some(id) = &id {
                            pending.insert(key, (id.as_str(), *due_ms))?;
                        }
                        out.push(WriteOutcome::DueSet(id.is_some()));
                    }
                    WriteOp::Purge { before_ms } => {
                        let mut old = Vec::new();
                        for item in by_time.range((0u64, "")..(*before_ms, ""))? {
                            let (k, _) = item?;
                            let (ms, id) = k.value();
                            old.push((ms, id.to_owned()));
                            if old.len() >= PURGE_LIMIT {
                                break;
                            }
                        }
                        let mut purged = 0;
                        for (ms, id) in old {
                            let record = events.get(id.as_str())?.map(|g| g.value().to_vec());
                            if let Some(record) = record {
                                let stored = decode(&id, &record)?;
                                let e = &stored.event;
                                if pending
                                    .get((e.recipient.as_str(), e.name.as_str(), stored.block))?
                                    .is_some()
                                {
                                    // Still undelivered: at-least-once wins over retention.
                                    continue;
                                }
                                events.remove(id.as_str())?;
                            }
                            by_time.remove((ms, id.as_str()))?;
                            purged += 1;
                        }
                        out.push(WriteOutcome::Purged(purged));
                    }
                    WriteOp::PutRecord { key, value } => {
                        match value {
                            Some(v) => {
                                records.insert(key.as_str(), v.as_slice())?;
                            }
                            None => {
                                records.remove(key.as_str())?;
                            }
                        }
                        out.push(WriteOutcome::RecordPut);
                    }
                }
            }
        }
        txn.commit()?;
        Ok((out, commits))
    }

    fn for_each_pending_inner(&self, f: &mut dyn FnMut(PendingEntry)) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PENDING)?;
        for item in table.iter()? {
            let (k, v) = item?;
            let (recipient, name, block) = k.value();
            let (id, due_ms) = v.value();
            f(PendingEntry {
                recipient: recipient.to_owned(),
                name: name.to_owned(),
                block,
                id: id.to_owned(),
                due_ms,
            });
        }
        Ok(())
    }

    fn events_inner(&self, ids: &[&str]) -> Result<Vec<Option<StoredEvent>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        ids.iter()
            .map(|id| match table.get(*id)? {
                Some(g) => decode(id, g.value()).map(Some),
                None => Ok(None),
            })
            .collect()
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_bytes(buf, s.as_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

/// The first byte of a record in the original format ([`encode_record`]: every text as
/// is). Still what the JetStream backend sends, so older nodes read its messages.
const RECORD_V1: u8 = 1;
/// The first byte of a record in the store's packed format ([`encode_packed_record`]):
/// the base64 texts (keys, payload) as the bytes they encode when that gives them back
/// exactly.
const RECORD_V2: u8 = 2;
/// A packed text kept as its UTF-8 bytes.
const TEXT_AS_IS: u8 = 0;
/// A packed text kept as the bytes it encodes in standard base64 with padding.
const TEXT_BASE64: u8 = 1;

/// Writes `s` packed: as the bytes it encodes when it is canonical standard base64 with
/// padding (re-encoding them gives exactly `s` back; 3/4 of the size), else as is.
fn put_packed(buf: &mut Vec<u8>, s: &str) {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    if let Ok(bytes) = STANDARD.decode(s.as_bytes()) {
        // The decoder accepts only canonical padding and trailing bits; the comparison
        // makes "exactly the same text back" a fact, not an assumption about it.
        if STANDARD.encode(&bytes) == s {
            buf.push(TEXT_BASE64);
            put_bytes(buf, &bytes);
            return;
        }
    }
    buf.push(TEXT_AS_IS);
    put_str(buf, s);
}

/// The record of an event, as the JetStream backend sends it as a message body (and as
/// the store kept it before [`encode_packed_record`]): a version byte (1), a u64
/// `header` (the store: the block; JetStream: the id's tag), the publish time, then
/// length-prefixed strings (the id is not in it: the store keys records by id,
/// JetStream derives it from the sequence).
pub(crate) fn encode_record(ev: &NewEvent, header: u64) -> Vec<u8> {
    encode_with(ev, header, false)
}

/// The record of an event as the store keeps it: [`encode_record`]'s layout with
/// version byte 2, and the recipient, sender and payload *packed*: a tag byte, then
/// either the text (tag 0) or, when the text is canonical standard base64 with padding,
/// the bytes it encodes (tag 1; the text is rebuilt exactly by encoding them). A 1 KB
/// payload takes 768 bytes instead of 1 024, a public key 32 instead of 44.
pub(crate) fn encode_packed_record(ev: &NewEvent, header: u64) -> Vec<u8> {
    encode_with(ev, header, true)
}

/// One layout for both versions: `packed` picks version 2 and its packed fields.
fn encode_with(ev: &NewEvent, header: u64, packed: bool) -> Vec<u8> {
    let (version, put_key_or_payload): (u8, fn(&mut Vec<u8>, &str)) = if packed {
        (RECORD_V2, put_packed)
    } else {
        (RECORD_V1, put_str)
    };
    let mut buf = Vec::with_capacity(
        48 + ev.recipient.len()
            + ev.name.len()
            + ev.sender.len()
            + ev.payload.len()
            + ev.metadata.len()
            + ev.payload_metadata.as_ref().map_or(0, String::len),
    );
    buf.push(version);
    buf.extend_from_slice(&header.to_le_bytes());
    buf.extend_from_slice(&ev.published_ms.to_le_bytes());
    put_key_or_payload(&mut buf, &ev.recipient);
    put_str(&mut buf, &ev.name);
    put_key_or_payload(&mut buf, &ev.sender);
    put_key_or_payload(&mut buf, &ev.payload);
    put_str(&mut buf, &ev.metadata);
    put_payload_metadata(&mut buf, ev);
    buf
}

fn put_payload_metadata(buf: &mut Vec<u8>, ev: &NewEvent) {
    match &ev.payload_metadata {
        Some(pm) => {
            buf.push(1);
            put_str(buf, pm);
        }
        None => buf.push(0),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("truncated record");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        let len = u32::from_le_bytes(a) as usize;
        self.take(len)
    }
    fn string(&mut self) -> Result<String, &'static str> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "text is not UTF-8")
    }
    /// A text written by [`put_packed`].
    fn packed(&mut self) -> Result<String, &'static str> {
        use base64::Engine as _;
        match self.u8()? {
            TEXT_AS_IS => self.string(),
            TEXT_BASE64 => Ok(base64::engine::general_purpose::STANDARD.encode(self.bytes()?)),
            _ => Err("bad packed text tag"),
        }
    }
}

/// Reads a record written by [`encode_record`] or [`encode_packed_record`] (told apart
/// by the version byte): its header and the event with `id`. `strict`: bytes after the
/// record are an error too.
pub(crate) fn decode_record(
    id: String,
    bytes: &[u8],
    strict: bool,
) -> Result<(u64, NewEvent), &'static str> {
    let mut r = Reader(bytes);
    let packed = match r.u8()? {
        RECORD_V1 => false,
        RECORD_V2 => true,
        _ => return Err("unknown record version"),
    };
    let text = |r: &mut Reader<'_>| if packed { r.packed() } else { r.string() };
    let header = r.u64()?;
    let published_ms = r.u64()?;
    let recipient = text(&mut r)?;
    let name = r.string()?;
    let sender = text(&mut r)?;
    let payload = text(&mut r)?;
    let metadata = r.string()?;
    let payload_metadata = match r.u8()? {
        0 => None,
        1 => Some(r.string()?),
        _ => return Err("bad payload_metadata flag"),
    };
    if strict && !r.0.is_empty() {
        return Err("trailing bytes after the record");
    }
    let event = NewEvent {
        id,
        recipient,
        name,
        sender,
        payload,
        metadata,
        payload_metadata,
        published_ms,
    };
    Ok((header, event))
}

fn encode(ev: &NewEvent, block: u64) -> Vec<u8> {
    encode_packed_record(ev, block)
}

fn decode(id: &str, bytes: &[u8]) -> Result<StoredEvent, StoreError> {
    let (block, event) = decode_record(id.to_owned(), bytes, false).map_err(StoreError::Corrupt)?;
    Ok(StoredEvent { event, block })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, name: &str, ms: u64) -> NewEvent {
        NewEvent {
            id: id.to_owned(),
            recipient: "R".to_owned(),
            name: name.to_owned(),
            sender: "S".to_owned(),
            payload: "cGF5bG9hZA==".to_owned(),
            metadata: "{}".to_owned(),
            payload_metadata: Some("{\"byte_size\":1}".to_owned()),
            published_ms: ms,
        }
    }

    #[test]
    fn blocks_per_queue_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::open(dir.path()).unwrap();
            let out = s
                .commit(&[
                    WriteOp::Publish(ev("a", "x", 1)),
                    WriteOp::Publish(ev("b", "x", 2)),
                    WriteOp::Publish(ev("c", "y", 3)),
                ])
                .unwrap();
            assert_eq!(
                out,
                vec![
                    WriteOutcome::Published { block: 1 },
                    WriteOutcome::Published { block: 2 },
                    WriteOutcome::Published { block: 1 },
                ]
            );
            let out = s
                .commit(&[
                    WriteOp::Remove {
                        recipient: "R".into(),
                        name: "x".into(),
                        block: 1,
                    },
                    WriteOp::SetDue {
                        recipient: "R".into(),
                        name: "x".into(),
                        block: 2,
                        due_ms: 99,
                    },
                    WriteOp::Remove {
                        recipient: "R".into(),
                        name: "x".into(),
                        block: 7,
                    },
                ])
                .unwrap();
            assert_eq!(
                out,
                vec![
                    WriteOutcome::Removed(true),
                    WriteOutcome::DueSet(true),
                    WriteOutcome::Removed(false)
                ]
            );
        }
        let s = RedbStore::open(dir.path()).unwrap();
        let p = s.pending().unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].id.as_str(), p[0].block, p[0].due_ms), ("b", 2, 99));
        assert_eq!((p[1].id.as_str(), p[1].block, p[1].due_ms), ("c", 1, 0));
        let out = s.commit(&[WriteOp::Publish(ev("d", "x", 4))]).unwrap();
        assert_eq!(out, vec![WriteOutcome::Published { block: 3 }]);
        let got = s.events(&["a", "zz"]).unwrap();
        assert_eq!(got[0].as_ref().unwrap().event, ev("a", "x", 1));
        assert_eq!(got[0].as_ref().unwrap().block, 1);
        assert!(got[1].is_none());
    }

    #[test]
    fn packed_records_give_back_exactly_the_texts() {
        let canonical = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            (0..768u32)
                .map(|i| (i * 31 % 251) as u8)
                .collect::<Vec<u8>>(),
        );
        let key = "RElGRkVSRU5UIEtFWSBPRiAzMiBCWVRFUyAhISEhISE=";
        for payload in [
            canonical.as_str(),
            "cGF5bG9hZA==",
            // Not canonical standard base64 with padding: kept as text.
            "cGF5bG9hZA",
            "cGF5bG9hZB==",
            "cGF5 bG9hZA==",
            "cGF5bG9hZA==\n",
            "cGF5bG9hZA-_",
            "not base64 at all!",
            "",
            "é",
        ] {
            let mut e = ev("id", "x", 7);
            e.payload = payload.to_owned();
            e.recipient = key.to_owned();
            e.sender = "S".to_owned();
            let bytes = encode_packed_record(&e, 42);
            assert_eq!(bytes[0], RECORD_V2);
            let (header, back) = decode_record("id".into(), &bytes, true).unwrap();
            assert_eq!((header, &back), (42, &e), "{payload:?}");
            let v1 = encode_record(&e, 42);
            assert_eq!(v1[0], RECORD_V1);
            assert_eq!(decode_record("id".into(), &v1, true).unwrap(), (42, e));
        }
        let mut e = ev("id", "x", 7);
        e.payload = canonical.clone();
        e.recipient = key.to_owned();
        e.sender = key.to_owned();
        // The payload as its 768 bytes, the keys as their 32: 256 + 2 * 12 bytes less.
        let (v1, v2) = (
            encode_record(&e, 1).len(),
            encode_packed_record(&e, 1).len(),
        );
        assert_eq!(v1 - v2, 256 + 2 * 12 - 3, "{v1} vs {v2}");
        let mut bad = encode_packed_record(&e, 1);
        bad[17] = 9; // the recipient's tag
        assert_eq!(
            decode_record("id".into(), &bad, true),
            Err("bad packed text tag")
        );
    }

    #[test]
    fn records_of_the_first_format_still_read() {
        // A store file from before the packed records: its records are format 1.
        let dir = tempfile::tempdir().unwrap();
        let old = ev("old", "x", 5);
        {
            let s = RedbStore::open(dir.path()).unwrap();
            let txn = s.db.begin_write().unwrap();
            {
                let mut events = txn.open_table(EVENTS).unwrap();
                let record = encode_record(&old, 3);
                events.insert("old", record.as_slice()).unwrap();
                let mut pending = txn.open_table(PENDING).unwrap();
                pending.insert(("R", "x", 3), ("old", 0u64)).unwrap();
                let mut blocks = txn.open_table(BLOCKS).unwrap();
                blocks.insert(("R", "x"), 3u64).unwrap();
                let mut by_time = txn.open_table(BY_TIME).unwrap();
                by_time.insert((5u64, "old"), ()).unwrap();
            }
            count_commit(&txn).unwrap();
            txn.commit().unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        let out = s.commit(&[WriteOp::Publish(ev("new", "x", 6))]).unwrap();
        assert_eq!(out, vec![WriteOutcome::Published { block: 4 }]);
        let got = s.events(&["old", "new"]).unwrap();
        assert_eq!(got[0].as_ref().unwrap().event, old);
        assert_eq!(got[0].as_ref().unwrap().block, 3);
        assert_eq!(got[1].as_ref().unwrap().event, ev("new", "x", 6));
        let pending = s.pending().unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].id, "old");
        // The purge decodes both forms too.
        s.commit(&[
            WriteOp::Remove {
                recipient: "R".into(),
                name: "x".into(),
                block: 3,
            },
            WriteOp::Remove {
                recipient: "R".into(),
                name: "x".into(),
                block: 4,
            },
        ])
        .unwrap();
        let out = s.commit(&[WriteOp::Purge { before_ms: 100 }]).unwrap();
        assert_eq!(out, vec![WriteOutcome::Purged(2)]);
        let space = s.space().unwrap();
        let events = space.tables.iter().find(|t| t.name == "events").unwrap();
        assert_eq!(events.entries, 0);
    }

    #[test]
    fn purge_keeps_pending_events() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        s.commit(&[
            WriteOp::Publish(ev("a", "x", 10)),
            WriteOp::Publish(ev("b", "x", 20)),
            WriteOp::Publish(ev("c", "x", 30)),
        ])
        .unwrap();
        s.commit(&[WriteOp::Remove {
            recipient: "R".into(),
            name: "x".into(),
            block: 1,
        }])
        .unwrap();
        let out = s.commit(&[WriteOp::Purge { before_ms: 25 }]).unwrap();
        // "a" (acked, old) goes; "b" is old but pending; "c" is recent.
        assert_eq!(out, vec![WriteOutcome::Purged(1)]);
        let got = s.events(&["a", "b", "c"]).unwrap();
        assert!(got[0].is_none() && got[1].is_some() && got[2].is_some());
    }
}
