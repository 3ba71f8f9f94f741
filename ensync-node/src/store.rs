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

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

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

/// The store's file name in the data directory.
pub const STORE_FILE: &str = "events.redb";

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

/// [`Store`] on an embedded redb database (`events.redb` in the data directory).
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`, with the default page cache
    /// ([`crate::config::DEFAULT_STORE_CACHE_BYTES`]).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, crate::config::DEFAULT_STORE_CACHE_BYTES)
    }

    /// Opens the store in `dir` ([`STORE_FILE`]) with a page cache of `cache_bytes` (read
    /// and write cache together; redb's own default would be 1 GiB).
    ///
    /// A new, empty store is created only where no file exists. An existing file is
    /// opened and its integrity checked (every page checksum: this reads the whole file
    /// once); one that is empty, unreadable, damaged or of another format is an error
    /// naming the file ([`StoreError::File`]), never replaced nor a panic.
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
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
                     start an empty store in its place: move the file away to start anew"
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
            let txn = db.begin_write()?;
            {
                txn.open_table(EVENTS)?;
                txn.open_table(PENDING)?;
                txn.open_table(BLOCKS)?;
                txn.open_table(BY_TIME)?;
                txn.open_table(RECORDS)?;
            }
            txn.commit()?;
            Ok(db)
        })
        .map_err(|e| match e {
            StoreError::File { .. } => e,
            StoreError::Db(reason) | StoreError::Damaged(reason) => refuse(reason),
            other => refuse(other.to_string()),
        })?;
        Ok(Self { db, path })
    }
}

impl Store for RedbStore {
    fn commit(&self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        contain("committing", || self.commit_inner(ops))
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
    fn commit_inner(&self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut txn = self.db.begin_write()?;
        // redb's default, spelled out: the commit returns once the data is fsynced.
        txn.set_durability(Durability::Immediate)?;
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
        Ok(out)
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
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn encode(ev: &NewEvent, block: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + ev.payload.len() + ev.metadata.len());
    buf.push(1); // format version
    buf.extend_from_slice(&block.to_le_bytes());
    buf.extend_from_slice(&ev.published_ms.to_le_bytes());
    put_str(&mut buf, &ev.recipient);
    put_str(&mut buf, &ev.name);
    put_str(&mut buf, &ev.sender);
    put_str(&mut buf, &ev.payload);
    put_str(&mut buf, &ev.metadata);
    match &ev.payload_metadata {
        Some(pm) => {
            buf.push(1);
            put_str(&mut buf, pm);
        }
        None => buf.push(0),
    }
    buf
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(StoreError::Corrupt("truncated record"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self) -> Result<String, StoreError> {
        let b = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        let len = u32::from_le_bytes(a) as usize;
        let s = self.take(len)?;
        String::from_utf8(s.to_vec()).map_err(|_| StoreError::Corrupt("text is not UTF-8"))
    }
}

fn decode(id: &str, bytes: &[u8]) -> Result<StoredEvent, StoreError> {
    let mut r = Reader(bytes);
    if r.u8()? != 1 {
        return Err(StoreError::Corrupt("unknown record version"));
    }
    let block = r.u64()?;
    let published_ms = r.u64()?;
    let recipient = r.string()?;
    let name = r.string()?;
    let sender = r.string()?;
    let payload = r.string()?;
    let metadata = r.string()?;
    let payload_metadata = match r.u8()? {
        0 => None,
        1 => Some(r.string()?),
        _ => return Err(StoreError::Corrupt("bad payload_metadata flag")),
    };
    Ok(StoredEvent {
        event: NewEvent {
            id: id.to_owned(),
            recipient,
            name,
            sender,
            payload,
            metadata,
            payload_metadata,
            published_ms,
        },
        block,
    })
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
